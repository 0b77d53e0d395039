"""Parsing and checking the α grid of a path sweep (``0:1:0.1`` or ``0,0.3,1``)."""

from __future__ import annotations

import math

from peftarena_cli.errors import UsageError

MAX_POINTS = 1001
"""The most α points one grid may have (``0:1:0.001`` is the finest unit grid); checked before
any list is built, so a typo such as ``0:1:1e-9`` is refused at once instead of filling memory."""


def parse_alphas(spec: str, allow_extrapolate: bool = False, option: str = "--alphas") -> list[float]:
    """``start:stop:step`` (stop included when the grid lands on it) or a comma list; sorted, unique.

    α outside [0, 1] is refused unless ``allow_extrapolate``; more than :data:`MAX_POINTS` points
    are refused.
    """
    s = str(spec).strip()
    try:
        if ":" in s:
            parts = [float(x) for x in s.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not all(math.isfinite(x) for x in parts):
                raise UsageError(f"bad {option} {spec!r}: start, stop and step must be finite numbers")
            if step <= 0 or stop < start:
                raise UsageError(f"bad {option} {spec!r}: need start <= stop and step > 0")
            count = (stop - start) / step + 1e-9
            if not math.isfinite(count) or math.floor(count) + 1 > MAX_POINTS:
                raise UsageError(f"{option} {spec!r} gives more than {MAX_POINTS} points",
                                 hint=f"use a coarser step: at most {MAX_POINTS} points per sweep")
            n = int(math.floor(count))
            vals = [start + i * step for i in range(n + 1)]
        else:
            if s.count(",") + 1 > MAX_POINTS:
                raise UsageError(f"{option} lists more than {MAX_POINTS} points", hint=f"at most {MAX_POINTS} points per sweep")
            vals = [float(x) for x in s.split(",")]  # an empty entry (0,,1) is a typo: float('') refuses it
    except ValueError:
        raise UsageError(f"bad {option} {spec!r}", hint="use start:stop:step (e.g. 0:1:0.1) or a comma list (0,0.5,1)") from None
    vals = sorted({round(v, 10) for v in vals})
    if not vals:
        raise UsageError(f"{option} {spec!r} gives no points", hint="e.g. --alphas 0:1:0.1")
    check_alphas(vals, allow_extrapolate, option=option)
    return vals


def check_alphas(vals: list[float], allow_extrapolate: bool = False, option: str = "--alpha") -> None:
    for a in vals:
        if not math.isfinite(a):
            raise UsageError(f"{option} {a} is not a finite number", hint="pass a number such as 0.5")
        if not allow_extrapolate and not 0.0 <= a <= 1.0:
            raise UsageError(f"{option} {a:g} is outside [0, 1]",
                             hint="pass --allow-extrapolate to go past the base (α<0) or the fine-tune (α>1)")
