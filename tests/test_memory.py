"""The one peak-RSS reader: it follows the process's real high-water mark, from /proc or getrusage."""

import builtins
import os
import resource

import numpy as np
import pytest

from peftarena_cli.memory import peak_rss_mib


def _rss_now_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc")
def test_peak_rss_rises_with_a_touched_allocation():
    before = peak_rss_mib()
    now = _rss_now_mib()
    buf = np.ones(256 * 2**20 // 8)  # 256 MiB, every page written
    after = peak_rss_mib()
    del buf
    # The resident set now holds the 256 MiB on top of what it held, so the high-water mark is at
    # least that (less than 64 MiB of slack for pages reused from freed memory), and never below
    # the earlier peak.
    assert after >= max(before, now + 192)
    # Freeing does not lower the peak. The kernel's per-thread RSS counters are synced lazily (up to
    # 64 pages per thread, 256 KiB), so the reading may move by that much: allow 4 MiB.
    assert peak_rss_mib() >= after - 4


def test_falls_back_to_getrusage_without_proc(monkeypatch):
    real_open = builtins.open

    def no_proc(path, *a, **k):
        if str(path).startswith("/proc/"):
            raise OSError("no /proc here")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", no_proc)
    expected = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert abs(peak_rss_mib() - expected) <= 1.0
