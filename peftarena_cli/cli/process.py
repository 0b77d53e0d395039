"""Process-wide settings for a ``peftarena`` command-line process (never applied when peftarena is
used as a library, or when :func:`peftarena_cli.cli.app.main` is called from Python).

Both were measured on ``spectrum`` with a warm base-SVD cache (figures: docs/spectrum.md, "Speed
and memory"):

* **Garbage collection.** ``import torch`` creates about a million long-lived objects. Left to
  the cyclic collector, they are walked by every full collection during the import, during the
  run and again at interpreter exit. torch is imported with the collector
  paused, and the objects alive then are frozen (``gc.freeze``) out of its reach; so are the
  ones alive at exit. Reference counting still frees everything as usual; only cycles among
  frozen objects are never collected, and there are none worth collecting in a process that ends.
* **glibc malloc.** Per-module temporaries of a few MiB are above glibc's initial mmap
  threshold, so each is a fresh mapping whose pages fault in again. A fixed 32 MiB mmap threshold (glibc's maximum) and a 256 MiB trim
  threshold keep freed blocks for reuse. Peak RSS moves by under 5 %.
"""

from __future__ import annotations

import gc

MMAP_THRESHOLD = 32 * 2**20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds; False where there is no glibc (macOS, musl, Windows)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def import_torch_frozen() -> None:
    """Import torch with the cyclic collector paused, then freeze what exists."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        import torch  # noqa: F401
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def before_command() -> None:
    """Called once a command's arguments are parsed, before it runs (``--help`` never gets here)."""
    tune_malloc()
    import_torch_frozen()


def before_exit() -> None:
    """The interpreter's last collections at exit would walk every live object (every object torch made)."""
    gc.freeze()
