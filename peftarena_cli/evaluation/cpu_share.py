"""Intra-op threads from the CPU this process actually gets (the engine on a shared machine).

PyTorch's OpenMP threads spin-wait at the end of every parallel region. When another process
holds one of the cores, the thread that shares that core is descheduled for whole time slices while
its partner spins, and a decode step made of hundreds of small parallel regions slows down by an
order of magnitude (measured: 15x on 2 cores with one competing process), far more than the
share of CPU that was lost.

:class:`ThreadGovernor` measures, over the last ``interval`` seconds, how many cores *other*
processes used: the machine's busy time from ``/proc/stat`` minus this process's own CPU time
(``time.process_time``, all its threads). The intra-op thread count becomes the cores left
(rounded, at least 1, at most the count the caller had set) and is re-decided every ``interval``
seconds, so the engine follows the load up and down; the caller's setting is restored at the end.
Where ``/proc/stat`` is unreadable (not Linux) it changes nothing.
"""

from __future__ import annotations

import os
import time

_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (user, nice, system, irq, softirq,
    steal), summed over CPUs; None where ``/proc/stat`` is unreadable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(v) < 4:
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v) - idle) / _CLK


def machine_cpus() -> int:
    return os.cpu_count() or 1


def threads_for(others: float, cpus: int, cap: int) -> int:
    """Intra-op threads when other processes use ``others`` cores of ``cpus``: the cores left,
    rounded to the nearest whole core, between 1 and ``cap``."""
    free = cpus - max(0.0, others)
    return max(1, min(int(cap), int(free + 0.5)))


class ThreadGovernor:
    """Sets torch's intra-op thread count from the cores other processes leave free (module
    docstring). ``poll()`` is cheap (a clock read) between decisions; ``close()`` restores the
    caller's count. ``history`` records (seconds since start, others' cores, threads) per decision."""

    def __init__(self, interval: float = 1.0, enabled: bool = True):
        import torch

        self._torch = torch
        self.saved = torch.get_num_threads()
        self.cap = self.saved
        try:
            self.cap = min(self.cap, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            pass
        self.cpus = machine_cpus()
        self.interval = float(interval)
        self.enabled = enabled and self.cap > 1 and machine_busy_seconds() is not None
        self.history: list[tuple[float, float, int]] = []
        self._t0 = time.monotonic()
        self._mark()

    def _mark(self) -> None:
        self._t = time.monotonic()
        self._busy = machine_busy_seconds() if self.enabled else None
        self._own = time.process_time()

    def poll(self) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        dt = now - self._t
        if dt < self.interval:
            return
        busy, own = machine_busy_seconds(), time.process_time()
        if busy is None or self._busy is None:
            return
        others = ((busy - self._busy) - (own - self._own)) / dt
        want = threads_for(others, self.cpus, self.cap)
        if want != self._torch.get_num_threads():
            self._torch.set_num_threads(want)
        self.history.append((round(now - self._t0, 2), round(others, 2), want))
        self._t, self._busy, self._own = now, busy, own

    def close(self) -> None:
        if self._torch.get_num_threads() != self.saved:
            self._torch.set_num_threads(self.saved)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
