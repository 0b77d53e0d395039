"""``--limit`` of the general suite: one number for every part, or one per part (docs/eval.md).

Light on purpose (no pandas): the CLI and interpolate's checks parse it before anything is loaded.
"""

from __future__ import annotations

from peftarena_cli.errors import UsageError
from peftarena_cli.tasks import benchmarks

LIMIT_PARTS = benchmarks.limit_parts()  # the parts a per-part --limit can name (tasks/benchmarks.py)


def parse_limit(text) -> int | dict | None:
    """``--limit`` of the general suite: ``N`` (every part), or per part, ``ifeval=280,bbh=200,facts=357``,
    optionally with a bare ``N`` for the parts not named (``250,facts=357``). Returns None, an int or
    a dict ``{part: N}`` (``"*"``: the parts not named). Usage errors name the bad entry."""
    if text is None or isinstance(text, (int, dict)):
        return text
    out: dict = {}
    for entry in [e.strip() for e in str(text).split(",") if e.strip()]:
        name, eq, num = entry.rpartition("=") if "=" in entry else ("*", "", entry)
        name = name.strip()
        parts = benchmarks.limit_parts()
        if name != "*" and name not in parts:
            raise UsageError(f"--limit: unknown part {name!r} in {text!r}", hint=f"parts: {', '.join(parts)}")
        if name in out:
            raise UsageError(f"--limit: part {name!r} given twice in {text!r}")
        try:
            n = int(num)
        except ValueError:
            raise UsageError(f"--limit: {entry!r} is not a whole number", hint=f"e.g. --limit 300 or --limit {benchmarks.limit_example(2)}") from None
        if n < 1:
            raise UsageError(f"--limit: {entry!r} must be at least 1")
        out[name] = n
    if not out:
        return None
    return out["*"] if list(out) == ["*"] else out


def part_limit(limit, part: str) -> int | None:
    """The limit of one part (a name of :data:`LIMIT_PARTS`, or a target task: those take the bare N
    only)."""
    if isinstance(limit, dict):
        return limit.get(part, limit.get("*"))
    return limit


