"""The glibc malloc settings of the entry points (infogain._runtime.allocator)."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from infogain._runtime import allocator as _allocator

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings apply to glibc only")

# Allocate and free three 4 MiB tensors per cycle and count the page faults: with glibc's defaults
# freed blocks of this size go back to the kernel and every new one faults in (and zeroes) its pages.
_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from infogain._runtime import allocator as _allocator

    def faults(cycles=20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(cycles):
            tensors = [torch.ones(1 << 20) for _ in range(3)]
            del tensors
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    kept = _allocator.keep_freed_memory()
    faults(40)   # the first cycles grow the heap past the small objects allocated meanwhile
    print(kept, faults())
""")


@glibc_only
def test_freed_activations_are_reused_without_page_faults():
    env = {k: v for k, v in os.environ.items() if k not in _allocator._USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    assert kept == "True"
    assert int(faults) < 64, f"{faults} page faults in 20 cycles of 12 MiB (one cycle maps ~3000 pages)"


@glibc_only
def test_applies_once_and_leaves_user_settings_alone(monkeypatch):
    monkeypatch.setattr(_allocator, "_applied", False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert _allocator.keep_freed_memory() is False   # the user's own glibc tuning applies
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    assert _allocator.keep_freed_memory() is True
    assert _allocator.keep_freed_memory() is True
