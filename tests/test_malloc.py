"""The CLI's process reuses freed memory instead of faulting a large allocation's pages in anew each time."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
if sys.argv[1] == "1":
    from xaibatch.cli import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
bytearray(40 << 20)
before = faults()
for _ in range(20):
    bytearray(40 << 20)  # 40 MB, as a batch's activations: past glibc's 32 MiB, an mmap of its own
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_large_allocation_freed_is_reused():
    def faults(keep: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, keep], capture_output=True, text=True, check=True)
        return int(out.stdout)

    assert faults("0") > 20 * (40 << 20) // 4096 // 2  # the system's default: each one faulted in anew
    assert faults("1") < 1000
