"""`keep_freed_memory`: in a loop of large allocations, freed pages are reused, not faulted in."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Minor page faults of each of 12 cycles of allocating, filling and freeing 64 MiB, as a
# study allocates a trace per sequence. The heap needs a few cycles to hold a hole that fits
# the aligned request (4 at most in 20 runs); after that the same pages serve every cycle.
PROBE = """
import resource, torch
{setup}
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(64 * 2**18).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-4:]))
"""
PAGES = 64 * 2**20 // 4096


def _late_faults(setup: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)],
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_page_faults_in_a_loop_of_large_blocks():
    default = _late_faults("")
    if default < 2 * PAGES:
        pytest.skip(f"{default} faults over 4 x {PAGES} pages: huge pages already back them")
    kept = _late_faults("from interp.runtime import keep_freed_memory\n"
                        "assert keep_freed_memory()")
    assert kept < PAGES // 20, (default, kept)
