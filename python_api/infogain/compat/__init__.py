"""Fused drop-in replacements for the diffusion-LM decoding code people already run.

One call per code base swaps its slow pieces for the fused ops with the same results at
temperature 0 (the same distribution above it):

* :mod:`infogain.compat.fast_dllm`: NVlabs Fast-dLLM ``llada/generate.py``
  (``get_transfer_index``, ``add_gumbel_noise``);
* :mod:`infogain.compat.llada`: LLaDA's official ``generate.py`` (``generate``);
* :mod:`infogain.compat.dllm_info_gain`: the dllm Info-Gain pipeline's ``core``
  (``compute_entropy``, ``score_candidates``).

Each module's ``patch(module)`` takes the user's imported module, checks the signatures it replaces
and returns the names it swapped. Import the submodule you need; nothing is imported here.
"""
