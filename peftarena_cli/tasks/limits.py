"""``--limit`` of the general suite: one number for every part, or one per part (docs/eval.md).

Light on purpose (no pandas): the CLI and interpolate's checks parse it before anything is loaded.
"""

from __future__ import annotations

from peftarena_cli.errors import UsageError

LIMIT_PARTS = ("ifeval", "bbh", "facts", "nq_open")  # the parts a per-part --limit can name


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
        if name != "*" and name not in LIMIT_PARTS:
            raise UsageError(f"--limit: unknown part {name!r} in {text!r}", hint=f"parts: {', '.join(LIMIT_PARTS)}")
        if name in out:
            raise UsageError(f"--limit: part {name!r} given twice in {text!r}")
        try:
            n = int(num)
        except ValueError:
            raise UsageError(f"--limit: {entry!r} is not a whole number", hint="e.g. --limit 300 or --limit ifeval=280,bbh=200") from None
        if n < 1:
            raise UsageError(f"--limit: {entry!r} must be at least 1")
        out[name] = n
    if not out:
        return None
    return out["*"] if list(out) == ["*"] else out


def part_limit(limit, part: str) -> int | None:
    """The limit of one part (``"ifeval"``, ``"bbh"``, ``"facts"``, ``"nq_open"``, or a target task:
    those take the bare N only)."""
    if isinstance(limit, dict):
        return limit.get(part, limit.get("*"))
    return limit


