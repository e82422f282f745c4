"""`keep_freed_memory`: a freed large block is reused without faulting its pages in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Minor page faults of filling a 64 MiB tensor after an equal one was filled and freed.
PROBE = """
import resource, torch
{setup}
torch.empty(64 * 2**18).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(64 * 2**18).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 64 * 2**20 // 4096


def _faults(setup: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)],
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_page_faults_on_reuse():
    default = _faults("")
    if default < PAGES // 2:
        pytest.skip(f"only {default} faults for {PAGES} pages: huge pages already back the block")
    kept = _faults("from interp.runtime import keep_freed_memory; assert keep_freed_memory()")
    assert kept < PAGES // 20, (default, kept)
