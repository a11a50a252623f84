"""Which implementation an op runs: the Triton kernel, the native C++ CPU kernel or the torch
reference, and how it is called.

Default: CUDA tensors go to Triton; CPU tensors to the native kernels of the compiled extension
(``infogain_kernels._C``) where an op has one, else to the reference. The environment variable
``INFOGAIN_BACKEND=reference|triton|native`` forces one path (with ``TRITON_INTERPRET=1`` the
Triton kernels also run on CPU tensors, fp32 only), and :func:`use_backend` does the same for a
block of code.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

_VALID = ("auto", "reference", "triton", "native")
_local = threading.local()


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton missing or broken
        return False
    return True


def forced_backend() -> str:
    """The backend forced by :func:`use_backend` or ``INFOGAIN_BACKEND`` ("auto" if none)."""
    name = getattr(_local, "backend", None) or os.environ.get("INFOGAIN_BACKEND", "auto") or "auto"
    if name not in _VALID:
        raise ValueError(f"INFOGAIN_BACKEND must be one of {_VALID}, got {name!r}")
    return name


def use_triton(tensor: torch.Tensor) -> bool:
    """True when the op for ``tensor`` should run its Triton kernel."""
    name = forced_backend()
    if name == "reference":
        return False
    if name == "triton":
        if not _triton_available():
            raise RuntimeError("INFOGAIN_BACKEND=triton but triton cannot be imported")
        if tensor.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("the Triton backend needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
        return True
    # Forced "native" or "reference" never sends a tensor to Triton, CUDA ones included.
    return name == "auto" and tensor.device.type == "cuda" and _triton_available()


@functools.lru_cache(maxsize=None)
def _native_available() -> bool:
    try:
        from . import _C  # noqa: F401  (loading the extension registers its ops)
    except ImportError:
        return False
    return all(hasattr(torch.ops.infogain, name) for name in ("_step_stats_cpu", "_row_entropy_cpu", "_gumbel_topk_cpu",
                                                                "_nucleus_cpu"))


def use_native(tensor: torch.Tensor) -> bool:
    """True when the op for ``tensor`` should run its native C++ CPU kernel."""
    name = forced_backend()
    if name == "native":
        if tensor.device.type != "cpu":
            raise RuntimeError(f"INFOGAIN_BACKEND=native runs CPU tensors only, got a tensor on {tensor.device}")
        if not _native_available():
            raise RuntimeError("INFOGAIN_BACKEND=native but the extension infogain_kernels._C has no native CPU "
                               "kernels; rebuild it (python setup.py build_ext --inplace)")
        return True
    return name == "auto" and tensor.device.type == "cpu" and _native_available()


def op_path(tensor: torch.Tensor) -> str:
    """``"triton"``, ``"native"`` or ``"reference"``: the path :func:`use_triton` and :func:`use_native`
    pick for ``tensor``, resolved with one look at the forced backend (ops that run every decoding
    step on tiny tensors ask once, not twice)."""
    name = forced_backend()
    if name == "auto":
        if tensor.device.type == "cpu":
            return "native" if _native_available() else "reference"
        return "triton" if tensor.device.type == "cuda" and _triton_available() else "reference"
    if name == "reference":
        return name
    return "triton" if use_triton(tensor) else "native" if use_native(tensor) else "reference"


@contextlib.contextmanager
def use_backend(name: str):
    """Force ``"reference"``, ``"triton"``, ``"native"`` or ``"auto"`` dispatch inside a ``with`` block."""
    if name not in _VALID:
        raise ValueError(f"backend must be one of {_VALID}, got {name!r}")
    previous = getattr(_local, "backend", None)
    _local.backend = name
    try:
        yield
    finally:
        _local.backend = previous


def call_op(op, impl, *args):
    """Run custom op ``op`` (a ``torch.ops.infogain`` overload packet) whose Python body is ``impl``.

    While something traces -- ``torch.compile``, or a dispatch mode such as
    FakeTensorMode, ``make_fx`` or FlopCounterMode -- the call goes through the
    dispatcher, so the tracer sees one op (with its fake implementation). In plain
    eager mode ``impl`` runs directly: the dispatcher's Python round trip costs
    about 40 us a call, as much as the whole work of a small op.
    """
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return op(*args)
    return impl(*args)


def device_guard(tensor: torch.Tensor):
    """Context manager making ``tensor``'s CUDA device current (a no-op for other devices).

    Triton launches on the *current* device and its current stream, whatever device the
    arguments live on; every Triton launch path runs under the guard of its input so that
    tensors on ``cuda:1`` are processed on ``cuda:1`` while ``cuda:0`` is current.
    """
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for ``n <= 1``): the block sizes of the Triton launches."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _sm_count_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def cuda_sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of the CUDA ``device`` (cached per device: the launchers that split
    rows across programs ask at every call)."""
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


def capturing_cuda_graph(device: torch.device) -> bool:
    """True while a CUDA graph is being captured on ``device``'s current stream.

    During capture the ops cannot read results back to the host, so their
    data-dependent checks (NaN, all -inf rows) are skipped; see each op's docstring.
    """
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def value_checks_enabled(tensor: torch.Tensor) -> bool:
    """Whether an op may run its data-dependent value check (NaN / infinite rows) on ``tensor``,
    one of its outputs, now.

    That check reads a flag back to the host (one synchronisation), which is impossible or
    harmful in three situations, where every op skips it and instead reports bad rows in its
    outputs (each op's docstring says how, e.g. a non-finite entropy):

    * under ``torch.compile`` or ``torch.jit.trace`` (``fullgraph=True`` would fail on the
      data-dependent branch, and without it the graph would break at every op),
    * when ``tensor`` is a fake tensor (FakeTensorMode, ``make_fx`` in fake or symbolic mode):
      it has no values,
    * while a CUDA graph is being captured on ``tensor``'s device.

    Other dispatch modes (FlopCounterMode, debugging modes) run the check as usual. Every op
    with a value check calls this one function, so they all behave alike.
    """
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or _is_fake(tensor)
                or capturing_cuda_graph(tensor.device))


def _is_fake(tensor: torch.Tensor) -> bool:
    """``torch._subclasses.fake_tensor.is_fake``, answered at once for a plain tensor (every call of
    every op asks; the full test costs about 1.5 us): fake tensors are subclasses, or plain tensors
    that wrap one (functionalization, functorch), which the full test unwraps."""
    if (type(tensor) is torch.Tensor and not torch._is_functional_tensor(tensor)
            and not torch._C._functorch.is_functorch_wrapped_tensor(tensor)):
        return False
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(tensor)
