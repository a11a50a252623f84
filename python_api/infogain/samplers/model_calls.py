"""The sampler's calls of the model: what the model can do (cache modes, a lookahead on hidden
states, which keywords its methods take), and every forward of a run with the cache-mode switches
and the one post-processing of logits that all of them share."""
from __future__ import annotations

import inspect
from typing import Dict, List, Optional, Tuple

import torch


def supports_cache(model) -> bool:
    """Whether ``model`` implements ``prefill`` and ``forward_window`` (the cache modes)."""
    from ..models.base import DiffusionLM

    for method in ("prefill", "forward_window"):
        if not callable(getattr(model, method, None)):
            return False
        if isinstance(model, DiffusionLM) and getattr(type(model), method) is getattr(DiffusionLM, method):
            return False
    return True


def exposes_hidden_states(model, mode: str) -> bool:
    """Whether the lookahead of ``mode`` can run on ``model``'s hidden states: an
    ``infogain.models`` DiffusionLM that implements the hidden-state forward the mode uses and
    the LM head weight, and keeps the plain head ``logits = hidden @ lm_head_weight.T``."""
    from ..models.base import DiffusionLM

    if not isinstance(model, DiffusionLM):
        return False
    model_type = type(model)
    implemented = ("hidden_states" if mode == "none" else "window_hidden_states", "lm_head_weight")
    return (all(getattr(model_type, name) is not getattr(DiffusionLM, name) for name in implemented)
            and model_type.logits_from_hidden is DiffusionLM.logits_from_hidden)


def _takes(method, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


class ModelCalls:
    """The model calls of one run (one per ``generate``): full forwards, prefill, window forwards.

    Args:
        model: the sampler's model.
        mode: the run's cache mode (``none``, ``prefix``, ``dual`` or ``block_causal``).
        attention: bool [B, T], the mask the model receives, or None when no prompt is padded (the
            model then neither applies nor reads one).
        gen_start, block_length: the generation region's first column and the block size.
        block_causal: the model is block causal (full forwards receive ``gen_start``/``block_length``).
        mask_id: its logit is set to -inf in every forward (it is never a prediction).
        penalized_ids, eos_penalty: subtracted from those ids' logits in every forward (0: none).

    ``cache`` holds the model's cache once :meth:`prefill` ran. The keywords the model's methods
    take are inspected once per run here, not per call.
    """

    def __init__(self, model, mode: str, attention: Optional[torch.Tensor], gen_start: int, block_length: int,
                 block_causal: bool, mask_id: int, penalized_ids: List[int], eos_penalty: float):
        self.model = model
        self.mode = mode
        self.attention = attention
        self.gen_start = gen_start
        self.length = block_length
        self.block_causal = block_causal
        self.mask_id = mask_id
        self.penalized_ids = penalized_ids
        self.eos_penalty = eos_penalty
        self.cache = None
        # Value checks of the model (token-id range, mask inspection) cost host syncs: the run's
        # first call keeps them (the canvas holds the prompts then); later canvases only hold
        # tokens drawn from the model's own logits, so later calls skip them.
        self.first_call = True
        self._accepts: Dict[Tuple[str, str], bool] = {}
        self._head_bias: Optional[torch.Tensor] = None

    def accepts(self, method_name: str, parameter: str) -> bool:
        """Whether the model's method ``method_name`` takes ``parameter`` (inspected once per run)."""
        key = (method_name, parameter)
        accepts = self._accepts.get(key)
        if accepts is None:
            accepts = self._accepts[key] = _takes(getattr(self.model, method_name, self.model), parameter)
        return accepts

    def _check_kwargs(self, method_name: str) -> dict:
        """``check_values=False`` for every call after the first, when the model's method accepts it."""
        if self.first_call:
            self.first_call = False
            return {}
        return {"check_values": False} if self.accepts(method_name, "check_values") else {}

    def logits(self, output) -> torch.Tensor:
        """The logits of a model call, post-processed identically for every forward."""
        logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
            raise TypeError("the model must return logits [B, T, V] (a tensor or an object with .logits)")
        if self.mask_id < logits.shape[-1]:
            # A committed mask token would stay "masked" forever: the mask id is never a prediction.
            logits[..., self.mask_id] = float("-inf")
        if self.eos_penalty:
            # In place on the model's fresh output: the penalty is part of every forward (incl. lookahead).
            for token in self.penalized_ids:
                logits[..., token] -= self.eos_penalty
        return logits

    def head_bias(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        """[V] float32 bias for ``lm_head_entropy`` that equals :meth:`logits`' post-processing:
        -inf at the mask id, ``-eos_penalty`` at the penalised ids (built once per run)."""
        if self._head_bias is None:
            bias = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            if self.mask_id < vocab_size:
                bias[self.mask_id] = float("-inf")
            if self.eos_penalty:
                for token in self.penalized_ids:
                    bias[token] -= self.eos_penalty
            self._head_bias = bias
        return self._head_bias

    def full(self, ids: torch.Tensor, rows: Optional[torch.Tensor], keep: slice, hidden: bool = False):
        """Full forward of ``ids``, the canvas rows ``rows`` (device index; None = all rows): the
        post-processed logits, or with ``hidden`` the model's aligned final hidden states, of the
        positions ``keep`` only (a model whose method takes ``keep`` computes only those)."""
        attention = self.attention
        if attention is not None and rows is not None:
            attention = attention[rows]
        kwargs = {"attention_mask": attention}
        if self.block_causal:
            kwargs.update(gen_start=self.gen_start, block_length=self.length)
        method_name = "hidden_states" if hidden else "forward"
        kwargs.update(self._check_kwargs(method_name))
        sliced = self.accepts(method_name, "keep")
        if sliced:
            kwargs["keep"] = keep
        output = (self.model.hidden_states if hidden else self.model)(ids, **kwargs)
        if not hidden:
            output = self.logits(output)
        return output if sliced else output[:, keep]

    def window(self, window_ids: torch.Tensor, start: int, cache_rows, hidden: bool = False, read=None,
               write: bool = False):
        """Window forward against :attr:`cache` (logits, or with ``hidden`` the aligned hidden
        states). ``cache_rows``: a host sequence of ints (the model lays out the groups on the host,
        no read-back), or None for one window row per cache row, in order. ``read``: see
        ``window_hidden_states`` (passed when the model takes it). ``write``: append the window's
        K/V to the cache (block-causal)."""
        method = "window_hidden_states" if hidden else "forward_window"
        extra = {"read": read} if read is not None and self.accepts(method, "read") else {}
        if write:
            extra["write"] = True
        output = getattr(self.model, method)(
            window_ids, start=start, cache=self.cache, mode=self.mode, attention_mask=self.attention,
            cache_rows=None if cache_rows is None else tuple(cache_rows), **extra, **self._check_kwargs(method))
        return output if hidden else self.logits(output)

    def prefill(self, canvas: torch.Tensor, prefill_start: int, keep: slice) -> torch.Tensor:
        """Prefill the cache from ``canvas`` (its layout starting at ``prefill_start``); returns the
        post-processed logits of the positions ``keep`` (only those are computed when the model can)."""
        sliced = self.accepts("prefill", "keep")
        logits, self.cache = self.model.prefill(
            canvas, self.attention, mode=self.mode, start=prefill_start, gen_start=self.gen_start,
            block_length=self.length, **({"keep": keep} if sliced else {}), **self._check_kwargs("prefill"))
        return self.logits(logits if sliced else logits[:, keep])
