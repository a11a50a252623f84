"""The one interface every diffusion LM of this package implements.

The samplers (``infogain.samplers``) drive models only through this interface,
so LLaDA, Dream and SDAR look the same to them. Conventions:

* ``logits[:, i]`` is the prediction for canvas position ``i`` (Dream's
  one-position shift is applied inside the model).
* The canvas is ``[B, T]`` token ids. Prompts of different lengths are LEFT
  padded; ``attention_mask [B, T]`` (bool, True = real token) marks the padding.
  Position ids are ``cumsum(attention_mask) - 1`` (padding positions clamp to 0)
  and padded keys are never attended to.
* KV caches are :class:`KVCache`: per layer ``[B, H_kv, T_cap, D]``, keys after
  RoPE (and after qk-norm for SDAR).

Three cache modes (``mode`` argument):

``"prefix"``
    :meth:`DiffusionLM.prefill` runs the full canvas once and keeps the K/V of
    positions ``[0, start)``. :meth:`forward_window` then forwards the suffix
    ``[start, T)`` against that cache (the window is every position from
    ``start`` to the end of the canvas).
``"dual"``
    :meth:`prefill` keeps the K/V of the whole canvas ``[0, T)``.
    :meth:`forward_window` forwards the block ``[start, start + W)``; its queries
    see the cached keys outside the window and the window's own fresh keys.
    ``write=True`` writes the fresh window K/V into the cache (block replacement,
    through ``infogain_kernels.kv_block_replace``).
``"block_causal"`` (SDAR's exact cache)
    Attention is block-causal: the prompt ``[0, gen_start)`` is one segment, then
    every generation block of ``block_length`` positions is a segment; a query
    sees keys of its own segment and of earlier segments. :meth:`prefill` caches
    the prompt; :meth:`forward_window` forwards the current block ``[start,
    start + W)`` against the cache ``[0, start)``; ``write=True`` appends the
    window's K/V (call it once the block is fully decoded).

``"sub_block"`` (window forwards only; Fast-dLLM v2's sub-block cache)
    On a "block_causal" cache whose last written block holds the window ``[start, start + W)``
    (``start + W <= cache.length``): the window attends to every cached key except its own
    columns, which its fresh keys replace (the rest of its block as last written). Read-only. A
    "block_causal" window may also start before ``cache.length`` (at the last written block's
    start): it then reads the cache ``[0, start)`` only, and ``write=True`` ends the cache with it.

Candidate lookahead without copying the cache: :meth:`forward_window` takes
``cache_rows [R]`` (long): window row ``r`` reads the cache of batch row
``cache_rows[r]``. N candidates of one prompt are N window rows that share one
cache row; the implementation must never materialise a per-candidate copy of the
cache (lookahead memory must not grow with N x cache size).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    """Architecture-independent facts the samplers need (plus the arch's own config)."""

    arch: str                      # "llada" | "dream" | "sdar" | "llada2" | "sdar_moe" | "fast_dllm_v2"
    vocab_size: int                # width of the logits
    mask_token_id: int
    eos_token_id: Optional[int]
    pad_token_id: Optional[int]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    block_causal: bool = False     # True for SDAR and LLaDA2: full forwards take block_length (SDAR also gen_start)
    # Block-causal models: "prompt" (SDAR: the prompt is one segment, blocks count from gen_start) or
    # "position" (LLaDA2: segment = position // block_length in each row, so the prompt's last block
    # is decoded together with the first generated tokens).
    block_anchor: str = "prompt"
    block_length: Optional[int] = None   # the model's own block length (LLaDA2: 32), the default
    extra: dict = field(default_factory=dict)  # the raw config.json


@dataclass
class KVCache:
    """Per-layer keys/values, each ``[B, H_kv, T_cap, D]``; ``length`` valid positions."""

    keys: List[torch.Tensor]
    values: List[torch.Tensor]
    length: int
    # Recorded by ``prefill`` (optional for other producers of caches):
    token_ids: Optional[torch.Tensor] = None       # [B, T] canvas ids the cache was built from
    attention_mask: Optional[torch.Tensor] = None  # [B, T] bool canvas mask (window forwards default to it)
    mode: Optional[str] = None                     # the cache mode it was built for

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]


class DiffusionLM(nn.Module):
    """Base class of the cache-aware models. Subclasses implement the three methods."""

    config: ModelConfig

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        *,
        gen_start: Optional[int] = None,
        block_length: Optional[int] = None,
        check_values: bool = True,
    ) -> torch.Tensor:
        """Full forward of the canvas ``input_ids [B, T]`` -> logits ``[B, T, V]``.

        ``gen_start`` / ``block_length`` define SDAR's block-causal segments and are
        ignored by bidirectional models. Any object mapping ``input_ids`` to logits
        this way works with the samplers' ``cache="none"`` mode.

        ``check_values`` (all three methods): True checks token ids against the
        vocabulary and drops an all-True mask, which reads tensors back to the host;
        False trusts the ids and applies a given mask as is (pass None for "no
        padding"), so the call never synchronises. The samplers check the first call
        of a run and pass False afterwards.

        Optional: a ``keep`` argument (a slice of positions; logits ``[B, len(keep), V]``
        equal to ``forward(...)[:, keep]``, also on ``hidden_states``). The samplers pass
        the positions they read when the signature has it (:class:`Transformer
        <infogain.models.transformer.Transformer>` then skips most of its last layer).
        """
        raise NotImplementedError

    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        *,
        mode: str,
        start: int,
        gen_start: Optional[int] = None,
        block_length: Optional[int] = None,
        check_values: bool = True,
    ) -> "tuple[torch.Tensor, KVCache]":
        """Full forward that also builds the cache for ``mode``.

        Returns the full-canvas logits ``[B, T, V]`` and the cache: positions
        ``[0, start)`` for "prefix" and "block_causal", ``[0, T)`` for "dual".
        For "block_causal" the logits are those of the block-causal forward.
        Optional, as for :meth:`forward`: a ``keep`` slice (logits of those positions only,
        the cache unchanged); the samplers pass the block when the signature has it.
        """
        raise NotImplementedError

    def forward_window(
        self,
        window_ids: torch.Tensor,
        *,
        start: int,
        cache: KVCache,
        mode: str,
        attention_mask: Optional[torch.Tensor] = None,
        cache_rows: "Optional[torch.Tensor | Tuple[int, ...]]" = None,
        write: bool = False,
        check_values: bool = True,
    ) -> torch.Tensor:
        """Forward the window ``window_ids [R, W]`` (canvas positions ``[start, start+W)``).

        ``attention_mask`` is the canvas mask ``[B, T]`` of the cache's batch rows
        (row ``cache_rows[r]`` applies to window row ``r``); ``cache_rows`` defaults
        to ``arange(R)`` (then R must equal the cache's batch size). It is a long
        tensor (read back once to group the rows) or a tuple of ints (grouped on the
        host, no synchronisation). Candidate rows that share a cache row read it once,
        without copying it. ``write`` is
        allowed only without ``cache_rows`` (candidates never write the cache).
        Returns logits ``[R, W, V]``.
        """
        raise NotImplementedError

    # The hidden-state forwards, so that a fused LM head + entropy (``lm_head_entropy``) can skip
    # the logits: ``forward(...) == logits_from_hidden(hidden_states(...))`` and
    # ``forward_window(...) == logits_from_hidden(window_hidden_states(...))``, the hidden states
    # aligned to positions as the logits are (Dream's shift applied). The samplers' lookahead uses
    # them when a subclass implements them and keeps the plain head below.
    def hidden_states(self, *args, **kwargs) -> torch.Tensor:  # pragma: no cover - optional
        raise NotImplementedError

    def window_hidden_states(self, *args, **kwargs) -> torch.Tensor:  # pragma: no cover - optional
        """Same arguments as :meth:`forward_window`; returns ``[R, W, hidden]``."""
        raise NotImplementedError

    @property
    def lm_head_weight(self) -> torch.Tensor:  # pragma: no cover - optional
        """``[V, hidden]``."""
        raise NotImplementedError

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head: ``hidden @ lm_head_weight.T`` in the model's dtype."""
        return F.linear(hidden, self.lm_head_weight)
