"""Test-wide setup.

Without a GPU the Triton kernels run in the interpreter: TRITON_INTERPRET must be
set before triton is first imported, so it is set here, before anything else.
"""
import os
import shutil

if "TRITON_INTERPRET" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()

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
def triton_interpreted():
    """Skip unless the Triton kernels can run here (GPU, or the CPU interpreter)."""
    try:
        import triton  # noqa: F401
    except Exception:
        pytest.skip("triton is not installed")
    if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(params=["reference", "triton"])
def backend_device(request):
    """Runs the test on the torch reference, then on the Triton kernels (interpreted on CPU
    without a GPU); yields the device the test's tensors must live on."""
    from infogain_kernels import use_backend

    device = request.getfixturevalue("triton_interpreted") if request.param == "triton" else "cpu"
    with use_backend(request.param):
        yield device

