"""Published points to overlay on the plane, read from a CSV the user passes (never bundled).

Format (as ``reference/peft_arena_results.csv`` of the PEFT-Arena figures):
``regime, method, model, domain, target, general[, source]``; one row per published point, the
base model's row has ``method = base``. A selection such as ``regime=sft,model=qwen2.5-7b,domain=math``
picks one panel's worth of points.
"""

from __future__ import annotations

from pathlib import Path

from peftarena_cli.errors import InputNotFound, InvalidArtifact, UsageError

REQUIRED = ("method", "target", "general")
DEFAULT_SELECT = {"regime": "sft", "domain": "math"}


def parse_select(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise UsageError(f"bad reference selection {part!r}", hint="write KEY=VALUE[,KEY=VALUE], e.g. model=qwen2.5-7b,domain=math")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_reference(path: str | Path, select: dict[str, str] | None = None):
    """Rows of the reference CSV matching ``select`` (defaults: SFT, math, the file's first model).

    Returns ``(DataFrame with method/target/general, title)``.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"no such reference file: {str(path)!r}")
    try:
        df = pd.read_csv(p)
    except Exception as e:
        raise InvalidArtifact(f"{str(path)!r} is not a readable CSV ({type(e).__name__})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InvalidArtifact(f"reference file {str(path)!r} lacks column(s) {', '.join(missing)}",
                              hint="expected columns regime, method, model, domain, target, general")
    sel = {k: v for k, v in DEFAULT_SELECT.items() if k in df.columns}
    if "model" in df.columns and len(df):
        sel["model"] = str(df["model"].iloc[0])
    sel.update(select or {})
    for k in sel:
        if k not in df.columns:
            raise UsageError(f"reference file has no column {k!r} to select on")
    out = df
    for k, v in sel.items():
        out = out[out[k].astype(str) == v]
    if out.empty:
        raise UsageError(f"no reference rows match {','.join(f'{k}={v}' for k, v in sel.items())}",
                         hint="check --reference-select against the file's columns")
    out = out.drop_duplicates("method", keep="first")
    title = "Published: " + ", ".join(str(v) for v in sel.values())
    return out[["method", "target", "general"]].reset_index(drop=True), title
