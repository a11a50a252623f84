"""Build infogain_kernels._C (C++ always, CUDA when available) and install both packages.

Install with ``pip install --no-build-isolation .`` so the extension is compiled
against the torch that is already installed (CPU or CUDA build); this file never
asks pip for torch. ``INFOGAIN_CPU_ONLY=1`` forces a C++-only build.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - explained to the user
    raise SystemExit(
        "infogain-kernels builds against an installed torch: install torch first, then "
        "`pip install --no-build-isolation .`"
    ) from exc


def _want_cuda() -> bool:
    if os.environ.get("INFOGAIN_CPU_ONLY", "0") not in ("", "0"):
        return False
    if torch.version.cuda is None:
        return False
    nvcc = os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc")
    return os.path.exists(nvcc) or shutil.which("nvcc") is not None


here = os.path.dirname(os.path.abspath(__file__))
cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
cuda_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
headers = sorted(glob.glob(os.path.join("csrc", "*.h")))   # rebuild when they change
with_cuda = _want_cuda() and bool(cuda_sources)

extra_cxx = ["-O3", "-std=c++17"]
if with_cuda:
    ext = CUDAExtension(
        "infogain_kernels._C",
        sources=cpp_sources + cuda_sources,
        depends=headers,
        define_macros=[("INFOGAIN_WITH_CUDA", "1")],
        extra_compile_args={"cxx": extra_cxx, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
    )
else:
    ext = CppExtension("infogain_kernels._C", sources=cpp_sources, depends=headers,
                       extra_compile_args={"cxx": extra_cxx})

setup(
    name="infogain-kernels",
    version="0.1.0",
    description="Fused decoding kernels and lookahead samplers (Info-Gain, LookUM, EIS) for diffusion LMs",
    packages=find_packages(include=["infogain_kernels", "infogain_kernels.*"])
    + find_packages("python_api", include=["infogain", "infogain.*"]),
    package_dir={"infogain": "python_api/infogain"},
    package_data={"infogain": ["assets/*", "assets/*/*", "configs/*.yaml"]},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    python_requires=">=3.9",
    # matplotlib: the demo (the main command) writes its chart as a PNG.
    install_requires=["torch>=2.4", "safetensors", "transformers>=4.45", "tqdm", "numpy", "matplotlib", "pyyaml"],
    extras_require={
        "triton": ["triton>=3.0"],
        "flash-attn": ["flash-attn>=2.6"],
        "test": ["pytest", "pytest-benchmark", "scipy", "hypothesis"],
        # python -m infogain.lm_eval (the harness model); accelerate: its data-parallel launches.
        "lm-eval": ["lm-eval>=0.4.8", "accelerate"],
    },
    entry_points={"console_scripts": ["infogain=infogain.cli:main"]},
    zip_safe=False,
)
