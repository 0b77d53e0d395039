"""Peak resident memory of this process, the one reader every command and benchmark uses."""

from __future__ import annotations


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB: ``VmHWM`` of /proc/self/status where the kernel
    has it (Linux), else ``getrusage``'s ``ru_maxrss`` (KiB on Linux; the fallback for other systems)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
