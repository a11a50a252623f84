"""The CUDA half of the compile lane: ``csrc/`` compiled with nvcc for sm_80 and sm_90 and linked as
``setup.py`` would with CUDA, on a machine without a GPU, with each kernel's resource usage read
back by the lane's ``cuobjdump`` (see :mod:`._aot` for the Triton half and the budgets).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Optional

from ._aot import RESOURCE_USAGE, cuobjdump_path


def find_nvcc() -> Optional[str]:
    """nvcc where torch's extension builder looks (CUDA_HOME / CUDA_PATH, PATH, /usr/local/cuda)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [os.path.join(home, "bin", "nvcc")] if home else []
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.path.exists(c)), None)


def torch_cxx_standard() -> str:
    """The C++ standard torch's extension builder compiles with ("c++20" for torch 2.13)."""
    import torch.utils.cpp_extension as cpp_extension

    with open(cpp_extension.__file__) as f:
        versions = re.findall(r"-std=c\+\+(\d+)", f.read())
    return f"c++{max(int(v) for v in versions)}" if versions else "c++17"


def compile_csrc(workdir: str, archs=("80", "90"), nvcc: Optional[str] = None) -> dict:
    """Compile ``csrc/`` with nvcc for ``archs`` and link it into a shared library, as setup.py
    would with CUDA (against the installed torch's headers; torch's own symbols stay unresolved).

    Returns ``{"library": path, "kernels": {name: {"registers", "stack_bytes", ...}}}``; raises
    ``subprocess.CalledProcessError`` with the compiler output on an error."""
    import torch.utils.cpp_extension as cpp_extension

    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = sorted(os.path.join(root, "csrc", f) for f in os.listdir(os.path.join(root, "csrc"))
                     if f.endswith((".cpp", ".cu")))
    import sysconfig

    includes = [f"-I{p}" for p in (*cpp_extension.include_paths(), sysconfig.get_paths()["include"])]
    # The CPU torch wheel ships c10/cuda headers without the CMake-generated config header.
    common = ["-O3", f"-std={torch_cxx_standard()}", "-DINFOGAIN_WITH_CUDA=1", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
              "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H", "-Xcompiler", "-fPIC", *includes]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    compiles = {}
    for source in sources:   # side by side: each translation unit parses torch's headers
        obj = os.path.join(workdir, os.path.basename(source) + ".o")
        extra = gencode + ["--use_fast_math"] if source.endswith(".cu") else ["-x", "c++"]
        argv = [nvcc, "-c", source, "-o", obj, *common, *extra]
        compiles[obj] = (argv, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for argv, proc in compiles.values():
        stdout, stderr = proc.communicate()
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, argv, stdout, stderr)
    objects = list(compiles)
    library = os.path.join(workdir, "_C.so")
    subprocess.run([nvcc, "-shared", *gencode, *objects, "-o", library], capture_output=True, text=True, check=True)
    usage = subprocess.run([cuobjdump_path(), "-res-usage", library], capture_output=True, text=True,
                           check=True).stdout
    kernels = {}
    for m in re.finditer(r"Function (\S+):\s*\n\s*" + RESOURCE_USAGE.pattern, usage):
        registers, stack, shared, local = (int(g) for g in m.groups()[1:])
        kernels.setdefault(m.group(1), []).append(
            dict(registers=registers, stack_bytes=stack, shared_bytes=shared, local_bytes=local))
    return dict(library=library, kernels=kernels)
