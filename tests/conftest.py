"""Test-wide setup: which device the tests run on.

One decision, made here: a GPU is present when ``torch.cuda.is_available()``.

* With CUDA, the Triton kernels run compiled on CUDA tensors; tests request the device through the
  fixtures below and move their (CPU-made, seeded) inputs there.
* Without CUDA, the Triton kernels run on CPU tensors in Triton's interpreter. TRITON_INTERPRET
  must be set before triton is first imported, so it is set here, before anything imports triton
  (importing torch does not).

With CUDA, the session refuses to start (``pytest.exit``, not a skip) when ``import triton`` fails
or ``INFOGAIN_BACKEND`` forces a path: either would send CUDA tensors to the torch reference, and
every GPU test that does not force a backend would compare the reference with itself and pass
(:func:`gpu_lane_problems`; ``tests/test_gpu_triton_path.py`` checks it on any machine).

Fixtures (how a test asks for its device):

* ``device``: where the op's default path runs: "cuda" with a GPU, else "cpu".
* ``backend_device`` (parametrised "reference" / "triton"): runs the test once on each backend,
  with that backend forced, and yields the device the test's inputs must be moved to: "cpu" for the
  reference, "cuda" (compiled) or "cpu" (interpreter) for Triton.
* ``triton_device``: forces nothing, yields the device on which Triton kernels run here (skips
  when they cannot run on a CPU-only machine); ``triton_interpreted`` is its older name.

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


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A front end's main() applies the package's thread policy in-process: give the next test the
    thread count the suite chose, so no test depends on which one ran before it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def triton_import_error():
    """Why ``import triton`` fails here (the exception), or None when it works."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a missing or broken install: both leave CUDA tensors on the reference
        return exc
    return None


def gpu_lane_problems(has_cuda, triton_error, forced_backend):
    """What would make this machine's GPU tests run the torch reference on CUDA tensors: Triton not
    importable (``triton_error``) or a backend forced through ``INFOGAIN_BACKEND``
    (``forced_backend``, its value). Empty without CUDA, where nothing expects the Triton path."""
    if not has_cuda:
        return []
    problems = []
    if triton_error is not None:
        problems.append(f"CUDA is available but `import triton` fails ({type(triton_error).__name__}: "
                        f"{triton_error}); CUDA tensors would run the torch reference and the GPU tests would "
                        "compare it with itself. Install triton for this torch.")
    if forced_backend not in (None, "", "auto"):
        problems.append(f"INFOGAIN_BACKEND={forced_backend} is set; it forces every op's path, so the GPU tests "
                        "would not test the default (Triton) path. Unset it (`make test-gpu` and "
                        "`python -m infogain gpu-check` clear it).")
    return problems


def pytest_sessionstart(session):
    problems = gpu_lane_problems(HAS_CUDA, triton_import_error() if HAS_CUDA else None,
                                 os.environ.get("INFOGAIN_BACKEND"))
    if problems:
        pytest.exit("the GPU lane cannot test the Triton kernels:\n" + "\n".join(problems),
                    returncode=pytest.ExitCode.USAGE_ERROR)


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
    """The device on which the Triton kernels run here (skip on a CPU-only machine where they cannot;
    with CUDA a missing triton is an error, see :func:`gpu_lane_problems`)."""
    error = triton_import_error()
    if error is not None:
        if HAS_CUDA:
            pytest.fail(f"CUDA is available but `import triton` fails: {error}")
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
