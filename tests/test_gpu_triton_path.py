"""The GPU lane really runs the package's kernels on CUDA tensors, not the torch reference.

If CUDA tensors fell back to the reference (``import triton`` failing, a leftover
``INFOGAIN_BACKEND=reference``), every GPU test that does not force a backend would compare the
reference with itself and pass. Two guards:

* the session refuses to start in that state (``conftest.gpu_lane_problems``); the tests here check
  that logic on any machine by simulating a CUDA machine without Triton;
* on a GPU, every public op is profiled: with the default dispatch its CUDA tensors must launch one
  of the package's own kernels (a Triton ``@jit`` function of any ``infogain_kernels`` module, or the
  extension's kernel for ``kv_block_replace``), and the same call with the reference forced must
  launch none of them (so the detector tells the two paths apart). Kernels are recognised by name,
  found by scanning the loaded ``infogain_kernels`` modules: no file or function list to keep.
"""
import importlib
import os
import pkgutil
import sys

import pytest
import torch

import conftest
import infogain_kernels
from infogain_kernels import use_backend
from test_cuda_graphs import flat, op_calls  # one fixed, capture-safe call per public op

# Kernels of the CUDA extension (csrc/), which some ops launch instead of a Triton kernel.
EXTENSION_KERNELS = ("kv_block_replace_kernel",)
# Ops whose only CUDA path is the extension's kernel (no torch reference to force).
OPS_WITHOUT_REFERENCE = ("kv_block_replace",)


def public_ops():
    return sorted(name for name in infogain_kernels.__all__ if name != "use_backend")


# ----------------------------------------------------------------------------- any machine


def test_gpu_lane_problems_names_a_cuda_machine_without_triton():
    missing = ImportError("No module named 'triton'")
    assert conftest.gpu_lane_problems(False, missing, "reference") == []   # CPU: the reference is expected
    assert conftest.gpu_lane_problems(True, None, None) == []
    assert conftest.gpu_lane_problems(True, None, "auto") == []
    (problem,) = conftest.gpu_lane_problems(True, missing, None)
    assert "import triton" in problem and "No module named 'triton'" in problem
    (problem,) = conftest.gpu_lane_problems(True, None, "reference")
    assert "INFOGAIN_BACKEND=reference" in problem
    assert len(conftest.gpu_lane_problems(True, missing, "triton")) == 2


def test_session_exits_on_a_simulated_cuda_machine_without_triton(monkeypatch):
    """The branch a CUDA machine without Triton takes: pytest.exit (a failed run), not a skip."""
    monkeypatch.setattr(conftest, "HAS_CUDA", True)
    monkeypatch.setattr(conftest, "triton_import_error", lambda: ImportError("simulated"))
    monkeypatch.delenv("INFOGAIN_BACKEND", raising=False)
    with pytest.raises(pytest.exit.Exception, match="import triton") as exited:
        conftest.pytest_sessionstart(None)
    assert exited.value.returncode == pytest.ExitCode.USAGE_ERROR
    # The Triton fixture fails instead of skipping, should a test reach it.
    with pytest.raises(pytest.fail.Exception, match="import triton"):
        conftest.triton_device.__wrapped__()


def test_session_exits_on_a_simulated_cuda_machine_with_a_forced_backend(monkeypatch):
    monkeypatch.setattr(conftest, "HAS_CUDA", True)
    monkeypatch.setattr(conftest, "triton_import_error", lambda: None)
    monkeypatch.setenv("INFOGAIN_BACKEND", "reference")
    with pytest.raises(pytest.exit.Exception, match="INFOGAIN_BACKEND=reference"):
        conftest.pytest_sessionstart(None)
    monkeypatch.delenv("INFOGAIN_BACKEND")
    conftest.pytest_sessionstart(None)   # nothing wrong: the session goes on


def test_the_profiled_calls_cover_every_public_op():
    """A new op must get a call in test_cuda_graphs.op_calls, and so a Triton-path check here."""
    assert sorted(op_calls("cpu")) == public_ops()


def test_the_kernel_names_are_found():
    pytest.importorskip("triton")
    names = package_kernel_names()
    # @jit helpers (device functions) are listed too; they are never launched, so never matched.
    assert sum(name.endswith("_kernel") for name in names) >= 5, names


# ----------------------------------------------------------------------------- GPU


def package_kernel_names():
    """Names of the Triton kernels defined in the modules of ``infogain_kernels`` (every module is
    imported first, wherever it lives; an autotuned or heuristics-wrapped kernel is unwrapped to its
    ``@jit`` function, compiled or, under TRITON_INTERPRET=1, interpreted)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for info in pkgutil.walk_packages(infogain_kernels.__path__, "infogain_kernels."):
        importlib.import_module(info.name)
    names = set()
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("infogain_kernels") or module is None:
            continue
        for value in vars(module).values():
            while not isinstance(value, (JITFunction, InterpretedFunction)) and hasattr(value, "fn") \
                    and value is not value.fn:
                value = value.fn
            if isinstance(value, (JITFunction, InterpretedFunction)):
                names.add(value.fn.__name__)
    return names


def launched_kernels(call):
    """Names of the CUDA kernels ``call()`` launches (torch.profiler, CUDA activity)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        flat(call())
        torch.cuda.synchronize()
    return {event.name for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA}


def ours(kernels, triton_names):
    # Older Triton versions append a signature suffix to the kernel's name; demangled C++ names carry
    # their namespace and parameter list.
    return {k for k in kernels
            if any(k.startswith(name) for name in triton_names) or any(e in k for e in EXTENSION_KERNELS)}


@pytest.mark.gpu
@pytest.mark.parametrize("name", public_ops())
def test_cuda_tensors_take_the_package_kernels(name):
    assert os.environ.get("INFOGAIN_BACKEND", "auto") in ("", "auto"), "a forced backend would hide the default path"
    call = op_calls("cuda")[name]
    generator = torch.Generator(device="cuda").manual_seed(0)
    call(generator)                        # compile outside the profile
    triton_names = package_kernel_names()
    assert triton_names, "no Triton kernel found in the infogain_kernels modules"
    default = launched_kernels(lambda: call(generator))
    assert ours(default, triton_names), f"{name} on CUDA launched none of the package's kernels: {sorted(default)}"
    if name in OPS_WITHOUT_REFERENCE:
        return
    with use_backend("reference"):
        reference = launched_kernels(lambda: call(generator))
    # The positive control: the reference path launches kernels, and none of them counts as ours.
    assert reference and not ours(reference, triton_names), sorted(reference)


# ----------------------------------------------------------------------------- the GPU check


def test_gpu_check_stages_run_without_a_forced_backend(monkeypatch):
    from infogain.apps import gpu_check

    monkeypatch.setenv("INFOGAIN_BACKEND", "reference")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    env = gpu_check._environment()
    assert "INFOGAIN_BACKEND" not in env and "TRITON_INTERPRET" not in env


def test_gpu_check_sweep_bound_rejects_dropped_columns():
    """At V = 126,464 an entropy near 11 nats may be off by about 7e-4 (float32 arithmetic), not by
    the 8e-3 that dropping 1,000 columns (0.8% of the mass) costs; a probability near 5e-4 by a
    relative 3e-5 (the old bound, 1e-4 + 1e-3 |value|, allowed 20%)."""
    from infogain.apps import gpu_check

    entropy = torch.full((4,), 11.0, dtype=torch.float64)
    assert gpu_check._compare((entropy + 1e-5,), (entropy,), 126464) is None
    assert "above its bound" in (gpu_check._compare((entropy + 8e-3,), (entropy,), 126464) or "accepted")
    probability = torch.full((4,), 5e-4, dtype=torch.float64)
    assert gpu_check._compare((probability * (1 + 1e-6),), (probability,), 126464) is None
    assert gpu_check._compare((probability * 1.01,), (probability,), 126464) is not None
