"""Build infogain_kernels._C (C++ always, CUDA when available) and install both packages.

Install with ``pip install --no-build-isolation .`` so the extension is compiled
against the torch that is already installed (CPU or CUDA build); this file never
asks pip for torch. ``INFOGAIN_CPU_ONLY=1`` forces a C++-only build.

CUDA: the toolkit is the one torch's extension builder finds
(``torch.utils.cpp_extension.CUDA_HOME``: ``$CUDA_HOME`` / ``$CUDA_PATH``, ``nvcc`` on PATH,
``/usr/local/cuda``). ``TORCH_CUDA_ARCH_LIST`` defaults to the visible GPUs' architectures, or to
"8.0;9.0" (A100, H100/H200) when none is visible. The C++ standard is torch's own (no ``-std``
here: torch's builder adds the one its headers need).
"""
import glob
import os
import shutil
import sys

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
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if nvcc is None or not os.path.exists(nvcc):
        print(f"WARNING: torch {torch.__version__} was built with CUDA {torch.version.cuda}, but no nvcc was "
              f"found (CUDA_HOME={CUDA_HOME!r}; set CUDA_HOME or put nvcc on PATH). Building the C++ (CPU) "
              "kernels only: kv_block_replace will not run on CUDA tensors.", file=sys.stderr)
        return False
    return True


def _default_arch_list() -> str:
    """The visible GPUs' compute capabilities, else A100 + H100/H200."""
    try:
        capabilities = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    except Exception:  # no driver / no device: build for the usual data-centre GPUs
        capabilities = []
    return ";".join(f"{major}.{minor}" for major, minor in capabilities) or "8.0;9.0"


here = os.path.dirname(os.path.abspath(__file__))
cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
cuda_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
headers = sorted(glob.glob(os.path.join("csrc", "*.h")))   # rebuild when they change
with_cuda = _want_cuda() and bool(cuda_sources)

extra_cxx = ["-O3"]
if with_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _default_arch_list())
    print(f"infogain-kernels: building the CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}",
          file=sys.stderr)
    ext = CUDAExtension(
        "infogain_kernels._C",
        sources=cpp_sources + cuda_sources,
        depends=headers,
        define_macros=[("INFOGAIN_WITH_CUDA", "1")],
        extra_compile_args={"cxx": extra_cxx, "nvcc": ["-O3", "--use_fast_math"]},
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
        # python -m infogain lm-eval (the harness model); accelerate: its data-parallel launches.
        "lm-eval": ["lm-eval>=0.4.8", "accelerate"],
        # python -m infogain eval --task math500: graded by math-verify (pinned: its verdicts are the metric).
        "eval": ["math-verify==0.9.0"],
    },
    entry_points={"console_scripts": ["infogain=infogain.apps.cli:main"]},
    zip_safe=False,
)
