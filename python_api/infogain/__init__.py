"""infogain: diffusion-LM models, the Info-Gain / LookUM samplers, baselines and EIS.

Built on the fused ops of :mod:`infogain_kernels`.
"""
__version__ = "0.1.0"
