"""Parsing and checking the α grid of a path sweep (``0:1:0.1`` or ``0,0.3,1``)."""

from __future__ import annotations

import math

from peftarena_cli.errors import UsageError


def parse_alphas(spec: str, allow_extrapolate: bool = False) -> list[float]:
    """``start:stop:step`` (stop included when the grid lands on it) or a comma list; sorted, unique.

    α outside [0, 1] is refused unless ``allow_extrapolate``.
    """
    s = str(spec).strip()
    try:
        if ":" in s:
            parts = [float(x) for x in s.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise UsageError(f"bad --alphas {spec!r}: need start <= stop and step > 0")
            n = int(math.floor((stop - start) / step + 1e-9))
            vals = [start + i * step for i in range(n + 1)]
        else:
            vals = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"bad --alphas {spec!r}", hint="use start:stop:step (e.g. 0:1:0.1) or a comma list (0,0.5,1)") from None
    vals = sorted({round(v, 10) for v in vals})
    if not vals:
        raise UsageError(f"--alphas {spec!r} gives no points", hint="e.g. --alphas 0:1:0.1")
    check_alphas(vals, allow_extrapolate)
    return vals


def check_alphas(vals: list[float], allow_extrapolate: bool = False) -> None:
    for a in vals:
        if not math.isfinite(a):
            raise UsageError(f"alpha {a} is not a finite number")
        if not allow_extrapolate and not 0.0 <= a <= 1.0:
            raise UsageError(f"alpha {a:g} is outside [0, 1]",
                             hint="pass --allow-extrapolate to go past the base (α<0) or the fine-tune (α>1)")
