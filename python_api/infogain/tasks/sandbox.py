"""Run generated code in a separate, limited process and grade it (the code graders).

The pass rule. A test program passes only when it *ran to its end*: the code
is executed with ``exec`` in a fresh namespace (the semantics of OpenAI's
human-eval harness: the program is not ``__main__``, so an
``if __name__ == "__main__":`` block never runs), and only after ``exec``
returns does the harness copy a random per-run token, which the grader wrote
into an inherited pipe and which is read only then, to a second pipe. The
grader counts a pass when exactly that token arrives. Exit status never counts:
``sys.exit(0)``, ``raise SystemExit``, ``os._exit(0)``, an ``atexit`` hook or a
``sys.excepthook`` end the program without the token. (A program that
deliberately reads the harness's file descriptors could still forge it; this
guards against wrong and careless code, not against an adversary.)

Containment, chosen per run from what the kernel allows an unprivileged user
(:func:`isolation` reports what was in force; a warning is given once when
part of it is missing):

* process tree: new user + PID + network namespaces when unprivileged user
  namespaces work. The program then runs as PID 1 of its own namespace, and the
  kernel kills every process in it (new sessions, double forks included) when
  that process ends. Otherwise the harness's supervisor process is a child
  subreaper (``PR_SET_CHILD_SUBREAPER``): orphans are reparented to it, not to
  init, so killing its descendants, repeatedly, until none are left, reaches
  them all. A cgroup would do either job but needs delegation that an ordinary
  user rarely has.
* memory: ``RLIMIT_AS`` per process (an allocation past it raises
  ``MemoryError`` at once) and, for the tree as a whole, the grader sums the
  resident memory of every process in the tree every few milliseconds and kills
  the tree above the limit (so a burst can overshoot it for one poll interval,
  by at most one per-process limit per process).
* files: Landlock (Linux 5.13+, no privileges needed) allows writes only inside
  the run's temporary directory (and to ``/dev/null``); without Landlock, writes
  go wherever the grading user may write.
* network: the empty network namespace (only a down loopback), else Landlock's
  TCP rules (ABI 4+), and in any case ``socket``'s connecting functions are
  replaced by ones that raise.
* a wall-clock timeout and a CPU-time limit, a file-size limit, no core dumps,
  an empty environment but ``PATH``, the temporary directory as working and
  home directory, stdin at end of file, output captured.
"""
from __future__ import annotations

import ctypes
import inspect
import json
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

# Output kept from a run (its end), and the part of it a grade's detail shows.
_OUTPUT_LIMIT = 2000
_DETAIL_LIMIT = 300
_POLL_S = 0.02
_MAX_PROCESSES = 256
# Tests set this to False to exercise the path taken where the kernel allows no isolation.
_TRY_ISOLATION = True

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWPID = 0x20000000
_PR_SET_NO_NEW_PRIVS = 38
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
# Landlock filesystem rights that change something (bit positions from linux/landlock.h), by ABI version.
_LL_WRITE_FILE, _LL_TRUNCATE = 1 << 1, 1 << 14
_LL_WRITES_ABI1 = _LL_WRITE_FILE | sum(1 << bit for bit in range(4, 13))  # remove_*, make_*
_LL_REFER = 1 << 13

# The harness (after the /proc walk, see _harness_source): runs as the child's program. It forks the candidate (PID 1 of the new PID namespace
# when there is one), waits for it, then kills whatever is left of the tree. Its arguments: token fd,
# result fd, "check" or "script" (whether a clean SystemExit counts as reaching the end).
_HARNESS_MAIN = r'''
import ctypes, os, signal, sys, traceback
token_fd, result_fd, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)

def kill_tree():
    for _ in range(100):
        pids = _descendants(os.getpid(), _children_map())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, 0)[0] > 0:
                pass
        except ChildProcessError:
            pass

def end(*_):
    kill_tree()
    os._exit(1)

libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of the candidate come back here
parent = os.getpid()
signal.signal(signal.SIGTERM, end)
pid = os.fork()
if pid:
    os.close(token_fd)
    os.close(result_fd)
    while True:
        try:
            if os.waitpid(-1, 0)[0] == pid:
                break
        except ChildProcessError:
            break
    kill_tree()
    os._exit(0)

libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the supervisor
if os.getppid() not in (parent, 0):  # 0: PID 1 of a new namespace
    os._exit(1)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
read, write = os.read, os.write
os.set_inheritable(token_fd, False)
os.set_inheritable(result_fd, False)
import socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while grading generated code")
for _name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_server"):
    setattr(socket, _name, _no_network)
class _Socket(socket.socket):
    connect = connect_ex = bind = sendto = _no_network
socket.socket = _Socket
del _name, _Socket, _no_network
sys.argv = ["program.py"]
with open("program.py", encoding="utf-8") as fh:
    source = fh.read()
reached_end = False
try:
    exec(compile(source, "program.py", "exec"), {})
    reached_end = True
except SystemExit as exc:
    if mode == "script" and exc.code in (None, 0):
        reached_end = True
    else:
        print("program ended with SystemExit(%r) before its end" % (exc.code,), file=sys.stderr)
except BaseException:
    kind, error, trace = sys.exc_info()
    traceback.print_exception(kind, error, trace.tb_next)  # from the program's first frame
if reached_end:
    write(result_fd, read(token_fd, 64))
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except Exception:
        pass
os._exit(0)
'''


@dataclass(frozen=True)
class RunResult:
    """``passed``: the program ran to its end within the limits; ``status``: ``passed``, ``failed``
    (an exception, an early exit or a crash), ``timeout``, ``memory`` (the process tree went over the
    memory limit), ``processes`` (too many processes) or ``error`` (could not start); ``output``: the
    end of stdout + stderr."""

    passed: bool
    status: str
    output: str


# ---- isolation --------------------------------------------------------------------------------

_last_isolation: Optional[Dict[str, object]] = None
_warned = False


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _landlock(workdir: str, libc) -> int:
    """Allow changes to the filesystem only under ``workdir``, deny TCP (ABI 4+) and signals out of the
    tree (ABI 6+); returns the ABI version in force (0: none)."""
    abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)
    if abi < 1:
        return 0
    fs = _LL_WRITES_ABI1 | (_LL_REFER if abi >= 2 else 0) | (_LL_TRUNCATE if abi >= 3 else 0)
    net = 0b11 if abi >= 4 else 0          # bind and connect TCP
    scoped = 0b11 if abi >= 6 else 0       # abstract unix sockets and signals
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return 0

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    try:
        for path, rights in ((workdir, fs), ("/dev/null", fs & (_LL_WRITE_FILE | _LL_TRUNCATE))):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = PathBeneath(rights, fd)
                if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) != 0:
                    return 0
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return 0
        return abi if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) == 0 else 0
    finally:
        os.close(ruleset)


def _enter_sandbox(workdir: str, timeout_s: float, memory_bytes: int, report_fd: int) -> None:
    """Runs in the child between fork and exec: resource limits, namespaces, Landlock; writes what
    held to ``report_fd`` (each step is best effort: the kernel may refuse it)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    cpu = int(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    namespaces = _TRY_ISOLATION and libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID) == 0
    if namespaces:
        try:  # keep the same ids inside, so that files in workdir stay writable
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as fh:
                    fh.write(text)
        except OSError:
            pass
    try:
        abi = _landlock(workdir, libc) if _TRY_ISOLATION else 0
    except Exception:
        abi = 0
    os.write(report_fd, json.dumps({"namespaces": namespaces, "landlock_abi": abi}).encode())


def _describe(report: Dict[str, object]) -> Dict[str, object]:
    ns, abi = bool(report.get("namespaces")), int(report.get("landlock_abi") or 0)  # type: ignore[arg-type]
    return {
        "process_tree": "pid-namespace" if ns else "subreaper",
        "memory": "rlimit-as per process + tree-wide rss polling",
        "filesystem": "landlock (writes only in the temporary directory)" if abi else "none",
        "network": ("network-namespace" if ns else "landlock-tcp" if abi >= 4 else "none")
                   + " + socket functions disabled",
        "landlock_abi": abi,
    }


def _record(report: Dict[str, object]) -> None:
    global _last_isolation, _warned
    _last_isolation = _describe(report)
    if not _warned and (_last_isolation["filesystem"] == "none" or not report.get("namespaces")):
        _warned = True
        warnings.warn(f"the code sandbox runs with partial isolation on this machine: {_last_isolation}",
                      RuntimeWarning, stacklevel=3)


def isolation() -> Dict[str, object]:
    """What contained the graded programs (the last run's, or a probe run's): for ``summary.json``."""
    if _last_isolation is None:
        run_python("pass", timeout_s=5.0)
    return dict(_last_isolation or _describe({}))


# ---- the process tree -------------------------------------------------------------------------

def _children_map() -> Dict[int, List[int]]:
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    return children


def _descendants(root: int, children: Dict[int, List[int]]) -> List[int]:
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found


def _tree(root: int) -> List[int]:
    """``root`` (when alive) and all its descendants."""
    alive = [root] if os.path.exists(f"/proc/{root}") else []
    return alive + _descendants(root, _children_map())


def _harness_source() -> str:
    """The harness program: the /proc walk shared with the grader, then :data:`_HARNESS_MAIN`."""
    shared = "".join(inspect.getsource(f) + "\n" for f in (_children_map, _descendants))
    return "from __future__ import annotations\nfrom typing import Dict, List\n" + shared + _HARNESS_MAIN


def _resident_bytes(pids: List[int]) -> int:
    page, total = os.sysconf("SC_PAGE_SIZE"), 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the supervisor's descendants, then the supervisor, until nothing of the tree is left."""
    for _ in range(100):
        pids = [p for p in _tree(proc.pid) if p != proc.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not pids:
            break
        time.sleep(0.005)
    try:
        proc.kill()
    except OSError:
        pass
    proc.wait()


# ---- running ----------------------------------------------------------------------------------

def _check_limits(source: object, timeout_s: object, memory_mb: object) -> None:
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
        raise ValueError(f"memory_mb must be an int >= 64, got {memory_mb!r}")


def _watch(proc: subprocess.Popen, result_r: int, deadline: float, memory: int):
    """Collect output and the result until the supervisor ends; returns (status, output, result)."""
    out, result, status = bytearray(), b"", None
    stdout = proc.stdout.fileno()  # type: ignore[union-attr]
    streams = [stdout, result_r]
    while status is None:
        ready, _, _ = select.select(streams, [], [], _POLL_S)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                streams.remove(fd)
            elif fd == stdout:
                out += chunk
                del out[:-4 * _OUTPUT_LIMIT]
            else:
                result = (result + chunk)[:128]
        if proc.poll() is not None:
            status = "ended"
        elif time.monotonic() > deadline:
            status = "timeout"
        else:
            tree = _tree(proc.pid)
            if len(tree) > _MAX_PROCESSES:
                status = "processes"
            elif _resident_bytes(tree) > memory:
                status = "memory"
    _kill_tree(proc)
    # Whatever is still buffered; a detached writer that escaped cannot hold this up.
    for fd in streams:
        end = time.monotonic() + 0.2
        while time.monotonic() < end and select.select([fd], [], [], 0.02)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            if fd == stdout:
                out += chunk
            else:
                result = (result + chunk)[:128]
    return status, bytes(out), result


def run_python(source: str, *, timeout_s: float = 10.0, memory_mb: int = 1024,
               clean_exit_passes: bool = True) -> RunResult:
    """Run ``source`` in a limited child process (see the module docstring).

    It passes when it runs to its end; with ``clean_exit_passes`` (a script's meaning) also when it
    raises ``SystemExit`` with status 0. Graders use :func:`grade_program`, where it does not.
    """
    _check_limits(source, timeout_s, memory_mb)
    token = secrets.token_hex(16).encode()
    with tempfile.TemporaryDirectory(prefix="infogain-grade-") as workdir:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as fh:
            fh.write(source)
        harness = os.path.join(workdir, "harness.py")
        with open(harness, "w", encoding="utf-8") as fh:
            fh.write(_harness_source())
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir, "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1"}
        memory = memory_mb << 20
        token_r, token_w = os.pipe()
        result_r, result_w = os.pipe()
        report_r, report_w = os.pipe()
        os.write(token_w, token)
        os.close(token_w)
        mode = "script" if clean_exit_passes else "check"
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", harness, str(token_r), str(result_w), mode], cwd=workdir, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True, pass_fds=(token_r, result_w),
                preexec_fn=lambda: _enter_sandbox(workdir, timeout_s, memory, report_w))
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in (token_r, result_r, result_w, report_r, report_w):
                os.close(fd)
            return RunResult(False, "error", f"could not start the program: {exc}")
        for fd in (token_r, result_w, report_w):
            os.close(fd)
        try:
            report = json.loads(os.read(report_r, 4096) or b"{}")
        except ValueError:
            report = {}
        os.close(report_r)
        _record(report)
        try:
            status, out, result = _watch(proc, result_r, time.monotonic() + timeout_s, memory)
        finally:
            os.close(result_r)
            proc.stdout.close()  # type: ignore[union-attr]
        text = out.decode("utf-8", errors="replace")[-_OUTPUT_LIMIT:]
        if result == token:  # the token means the end was reached, whatever happened afterwards
            return RunResult(True, "passed", text)
        return RunResult(False, "failed" if status == "ended" else status, text)


# ---- grading ----------------------------------------------------------------------------------

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
    """Grade a code task's test ``program`` (it passes when it runs to its end) under ``options``'
    limits (a :class:`~.base.PromptOptions`). ``detail`` holds at most a short, labelled excerpt of
    the program's output."""
    from .base import Grade

    result = run_python(program, timeout_s=options.code_timeout_s, memory_mb=options.code_memory_mb,
                        clean_exit_passes=False)
    detail = None
    if not result.passed:
        excerpt = result.output[-_DETAIL_LIMIT:]
        detail = f"{result.status}; end of program output ({len(excerpt)} chars): {excerpt}"
    return Grade(answer=extract_code(generation), correct=result.passed, detail=detail)
