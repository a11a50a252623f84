"""Fused decoding ops for lookahead samplers of diffusion language models.

One public function per op. CUDA tensors run the Triton kernel (or the CUDA
extension), CPU tensors the native C++ kernel of the extension where the op has
one (``csrc/``), else the torch reference; ``INFOGAIN_BACKEND`` or
:func:`use_backend` force a path. Every op is also registered as a
``torch.library`` custom op under ``torch.ops.infogain``.
"""
from ._backend import use_backend
from .gumbel_sample import gumbel_sample
from .gumbel_topk import gumbel_topk
from .kv_block_replace import kv_block_replace
from .lm_head_entropy import lm_head_entropy
from .lookahead_objective import lookahead_objective
from .sample_logprob import sample_logprob
from .step_stats import StepStats, step_stats
from .token_stats import token_stats
from .topk_logprobs import topk_logprobs

__version__ = "0.1.0"

__all__ = [
    "gumbel_sample",
    "gumbel_topk",
    "kv_block_replace",
    "lm_head_entropy",
    "lookahead_objective",
    "sample_logprob",
    "step_stats",
    "token_stats",
    "topk_logprobs",
    "use_backend",
]
