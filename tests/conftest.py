"""Test-wide setup: which device the tests run on.

One decision, made here: a GPU is present when ``torch.cuda.is_available()``.

* With CUDA, the Triton kernels run compiled on CUDA tensors; tests request the device through the
  fixtures below and move their (CPU-made, seeded) inputs there.
* Without CUDA, the Triton kernels run on CPU tensors in Triton's interpreter. TRITON_INTERPRET
  must be set before triton is first imported, so it is set here, before anything imports triton
  (importing torch does not).

Fixtures (how a test asks for its device):

* ``device``: where the op's default path runs: "cuda" with a GPU, else "cpu".
* ``backend_device`` (parametrised "reference" / "triton"): runs the test once on each backend,
  with that backend forced, and yields the device the test's inputs must be moved to: "cpu" for the
  reference, "cuda" (compiled) or "cpu" (interpreter) for Triton.
* ``triton_device``: forces nothing, yields the device on which Triton kernels run here (skips
  when they cannot run); ``triton_interpreted`` is its older name.

Tests build inputs on the CPU (seeded ``torch.Generator()``), move them with ``.to(device)``, and
compare results after ``.cpu()``. GPU-only tests (full vocabulary widths, bf16/fp16 Triton, CUDA
graphs, two devices) carry ``@pytest.mark.gpu`` and are skipped without CUDA.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"

# The tests run tiny models and small tensors, where intra-op threading only adds
# synchronisation overhead (10-50x slower on a busy 2-core machine).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def device():
    """The device the ops' default (auto) path runs on here: "cuda" with a GPU, else "cpu"."""
    return DEVICE


@pytest.fixture
def triton_device():
    """The device on which the Triton kernels run here (skip unless they can run)."""
    try:
        import triton  # noqa: F401
    except Exception:
        pytest.skip("triton is not installed")
    if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    return DEVICE


@pytest.fixture
def triton_interpreted(triton_device):
    """Older name of :func:`triton_device`."""
    return triton_device


@pytest.fixture(params=["reference", "triton"])
def backend_device(request):
    """Runs the test on the torch reference, then on the Triton kernels (compiled on CUDA, or
    interpreted on CPU without a GPU); yields the device the test's tensors must live on."""
    from infogain_kernels import use_backend

    device = request.getfixturevalue("triton_device") if request.param == "triton" else "cpu"
    with use_backend(request.param):
        yield device
