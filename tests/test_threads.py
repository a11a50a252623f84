"""The CPU thread policy of the demo, the CLI and the benchmarks (infogain._runtime.threads)."""
import pytest
import torch

from infogain._runtime import threads as _threads


def test_flag_then_environment_then_free_cores(monkeypatch):
    monkeypatch.delenv(_threads.ENV_VAR, raising=False)
    monkeypatch.setattr(_threads, "physical_cores", lambda: 6)
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: 6)
    monkeypatch.setattr(_threads, "busy_cpus_now", lambda: None)   # no present-time check here
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (1.2, 0.0, 0.0))   # this process only
    assert _threads.choose_threads() == 6
    assert _threads.choose_threads(num_parameters=_threads.TINY_WORK - 1) == 1
    assert _threads.choose_threads(num_parameters=1000, tokens_per_forward=_threads.TINY_WORK // 1000) == 6
    assert _threads.choose_threads(local_processes=2) == 3
    assert _threads.choose_threads(local_processes=4) == 1
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (4.0, 0.0, 0.0))   # three other busy cores
    assert _threads.choose_threads() == 3
    # Processes of one run on this machine share the free cores (at least 1 each); a flag or the
    # variable is per process.
    assert _threads.choose_threads(local_processes=2) == 1
    assert _threads.choose_threads(local_processes=8) == 1
    assert _threads.choose_threads(2, local_processes=8) == 2
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (40.0, 0.0, 0.0))
    assert _threads.choose_threads() == 1
    monkeypatch.setenv(_threads.ENV_VAR, "3")
    assert _threads.choose_threads(num_parameters=10) == 3   # the environment overrides the tiny-model rule
    assert _threads.choose_threads(2) == 2                   # the flag overrides everything
    assert _threads.choose_threads(local_processes=4) == 3   # so does the variable


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_values_name_their_source(monkeypatch, value):
    monkeypatch.setenv(_threads.ENV_VAR, value)
    with pytest.raises(ValueError, match=_threads.ENV_VAR):
        _threads.choose_threads()
    with pytest.raises(ValueError, match="--threads"):
        _threads.choose_threads(0)


def test_apply_sets_torch_threads(monkeypatch):
    monkeypatch.delenv(_threads.ENV_VAR, raising=False)
    before = torch.get_num_threads()
    try:
        assert _threads.apply_threads(2) == 2 and torch.get_num_threads() == 2
        assert _threads.apply_threads(num_parameters=1000) == 1
    finally:
        torch.set_num_threads(before)


def test_load_average_is_checked_against_the_present(monkeypatch):
    """A load average that remembers finished work does not cost threads; work running now does."""
    monkeypatch.setattr(_threads, "physical_cores", lambda: 4)
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: 8)           # two hyper-threads per core
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    busy = {"now": 0.1}
    calls = []

    def busy_now():
        calls.append(1)
        return busy["now"]

    monkeypatch.setattr(_threads, "busy_cpus_now", busy_now)
    assert _threads.free_cores() == 4          # the run that raised the average has ended
    busy["now"] = 4.0                          # four busy hyper-threads: two cores
    assert _threads.free_cores() == 2
    busy["now"] = 8.0                          # the present says more than the average: the average wins
    assert _threads.free_cores() == 2
    busy["now"] = None                         # no /proc/stat: the average alone
    assert _threads.free_cores() == 2
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (1.0, 0.0, 0.0))
    calls.clear()
    assert _threads.free_cores() == 4 and not calls   # nothing else running: no need to look


def test_busy_cpus_now_reads_the_machine():
    busy = _threads.busy_cpus_now(0.05)
    if busy is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= busy <= (torch.multiprocessing.cpu_count() or 1) + 1e-6


def test_physical_cores_is_positive():
    assert 1 <= _threads.physical_cores() <= (torch.multiprocessing.cpu_count() or 1)


def test_local_processes_come_from_the_launcher(monkeypatch):
    """Under torchrun / accelerate launch the policy shares the free cores among this machine's processes of
    the run (LOCAL_WORLD_SIZE, else WORLD_SIZE), and eval's process layout reads the same variables."""
    from infogain.evaluation.runner import Dist

    for name in ("LOCAL_WORLD_SIZE", "WORLD_SIZE", "RANK", "LOCAL_RANK", _threads.ENV_VAR):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_threads, "free_cores", lambda: 4)
    assert _threads.local_world_size() == 1 and _threads.choose_threads() == 4
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert _threads.local_world_size() == 4 and _threads.choose_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")   # two machines, two processes each
    assert _threads.local_world_size() == 2 and _threads.choose_threads() == 2
    assert _threads.choose_threads(local_processes=1) == 4   # an explicit count wins
    assert Dist.from_env().local_world_size == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE='two' is not an integer"):
        _threads.choose_threads()
