"""Run untrusted generated code in a separate, limited process (the code graders).

:func:`run_python` writes the program into a fresh temporary directory and runs
it with the same interpreter in isolated mode (``-I``: no user site, no
``PYTHONPATH``), never in the caller's process:

* a wall-clock timeout (the whole process group is killed when it passes) and a
  CPU-time limit;
* an address-space limit (``resource.RLIMIT_AS``), a file-size limit and no
  core dumps;
* no network: the child enters new user and network namespaces when the kernel
  allows it (then it has no interface but a down loopback), and in any case a
  prelude replaces ``socket``'s connecting functions with ones that raise;
* an empty environment but ``PATH``, the temporary directory as working and
  home directory, stdin closed, output captured and truncated.

It is a guard against accidents (infinite loops, memory blow-ups, stray
downloads, files written in the wrong place), not a security boundary against
deliberately hostile code: run evaluations of untrusted models in a container.
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Kept short so that a failing test's message fits in a results line.
_OUTPUT_LIMIT = 2000

_PRELUDE = '''\
import socket as _infogain_socket
def _infogain_no_network(*args, **kwargs):
    raise OSError("network access is disabled while grading generated code")
for _infogain_name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_server"):
    setattr(_infogain_socket, _infogain_name, _infogain_no_network)
class _InfogainSocket(_infogain_socket.socket):
    connect = connect_ex = bind = sendto = _infogain_no_network
_infogain_socket.socket = _InfogainSocket
'''

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class RunResult:
    """``passed``: exit status 0 within the limits; ``status``: ``passed``, ``failed`` (non-zero exit),
    ``timeout`` or ``error`` (could not start); ``output``: the end of stdout + stderr."""

    passed: bool
    status: str
    output: str


def _limit_child(timeout_s: float, memory_bytes: int) -> None:
    """Runs in the child between fork and exec: namespaces and resource limits."""
    import resource

    try:  # best effort: unprivileged user namespaces may be disabled
        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    except Exception:
        pass
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    cpu = int(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(source: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> RunResult:
    """Run ``source`` as a Python program in a limited child process (see the module docstring)."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
        raise ValueError(f"memory_mb must be an int >= 64, got {memory_mb!r}")
    with tempfile.TemporaryDirectory(prefix="infogain-grade-") as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(_PRELUDE + "\n" + source + "\n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir, "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1"}
        memory = memory_mb << 20
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", path], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=lambda: _limit_child(timeout_s, memory))
        except OSError as exc:
            return RunResult(False, "error", f"could not start the grader: {exc}")
        try:
            out, _ = proc.communicate(timeout=timeout_s)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            # The program may have started children: kill its whole session.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, _ = proc.communicate()
            status = "timeout"
        text = out.decode("utf-8", errors="replace")[-_OUTPUT_LIMIT:]
        return RunResult(status == "passed", status, text)


_FENCED = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n(.*?)(?:```|\Z)", re.S)
_DEFINES = re.compile(r"^\s*(def|class|import|from)\s", re.M)


def extract_code(text: str) -> str:
    """The code of a generation: the first fenced block that defines something, else the text before any fence.

    A completion that continues a prompt (an indented function body) has no
    opening fence; a chat answer usually wraps a whole function in one.
    """
    for block in _FENCED.findall(text):
        if _DEFINES.search(block):
            return block
    return text.split("```")[0]


def grade_program(program: str, generation: str, options) -> "Grade":
    """Run a code task's test ``program`` under ``options``' limits (a :class:`~.base.PromptOptions`)."""
    from .base import Grade

    result = run_python(program, timeout_s=options.code_timeout_s, memory_mb=options.code_memory_mb)
    return Grade(answer=extract_code(generation), correct=result.passed,
                 detail=None if result.passed else f"{result.status}: {result.output[-300:]}")
