"""Regimes and the training path: what a run's manifest says about it, and its checkpoints' scores.

* :func:`run_info` — the training method and regime (``sft`` / ``rlvr``) of a method directory, read
  from the finetune run's ``manifest.json`` (so runs made outside ``make`` are recognised too);
* :func:`path_samples` — the per-sample rows of a method directory's ``path/`` sub-directory: evals
  of its trajectory checkpoints (``eval-target`` / ``eval-general`` with one ``--adapter`` per
  checkpoint), each row given the training ``step`` of its checkpoint (the base is step 0);
* :func:`path_table` — per method and step: pass@k of the sampled target eval and the general
  score, each with its 95 % interval (docs/report.md, "Path diagnostics");
* :func:`regime_comparison` — SFT against RLVR per training method: the paired difference of their
  forgetting and of their gain, on the items both evaluated.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

PATH_DIR = "path"
_STEP = re.compile(r"checkpoint-(\d+)")


def run_info(directory: Path | None, adapter: Path | None = None) -> dict:
    """{"regime": "sft" | "rlvr" | None, "train_method": name or None, "steps": int or None} of a method
    directory, from its finetune manifest; Nones when there is no manifest."""
    from peftarena_cli.report.collect import read_manifest

    man = read_manifest(directory, adapter)
    if not man:
        return {"regime": None, "train_method": None, "steps": None}
    cfg = man.get("config") or {}
    meth = man.get("method") or {}
    return {"regime": cfg.get("regime"), "train_method": meth.get("name") or cfg.get("method"),
            "steps": man.get("last_step") or cfg.get("steps")}


def step_of(label: str) -> int | None:
    """The training step of an eval's ``model`` label: ``base`` is 0, ``.../checkpoint-N`` is N."""
    s = str(label)
    if s == "base":
        return 0
    m = _STEP.findall(s)
    return int(m[-1]) if m else None


def path_samples(directory: Path | None):
    """Per-sample rows of ``DIR/path/*.parquet`` with a ``step`` column (rows whose model label names no
    step are dropped), or None when there are none."""
    import pandas as pd

    from peftarena_cli.artifacts.tables import read_table
    from peftarena_cli.report.collect import samples_kind

    if directory is None or not (Path(directory) / PATH_DIR).is_dir():
        return None
    frames = []
    for f in sorted((Path(directory) / PATH_DIR).glob("*.parquet")):
        try:
            df, _ = read_table(f)
        except Exception:
            continue
        if samples_kind(df.columns) != "samples":
            continue
        labels = df["model"].astype(str) if "model" in df.columns else pd.Series(["base"] * len(df), index=df.index)
        df = df.assign(step=[step_of(x) for x in labels])
        frames.append(df[df["step"].notna()])
    if not frames:
        return None
    out = pd.concat(frames, ignore_index=True)
    out["step"] = out["step"].astype(int)
    return out


def _split(df):
    from peftarena_cli.report.uncertainty import split_measures

    from peftarena_cli import stats

    scorers = stats.task_scorers(df)
    general = [t for t, sc in scorers.items() if stats.is_general_scorer(sc)]
    return df[~df["task"].astype(str).isin(general)], split_measures(df).get("general")


def step_scores(df, ks=None) -> list[dict]:
    """Rows {metric, value, low, high, n} (percent) for one step's per-sample rows: pass@k of the target
    rows (k <= samples per item; the 95 % interval is item-mean normal over problems, as eval's summary)
    and the general score (its own interval, docs/eval.md)."""
    from peftarena_cli import stats
    from peftarena_cli.evaluation.metrics import per_item_values

    rows = []
    target, general = _split(df)
    if len(target):
        n_s = int(target.groupby(["task", "id"]).size().min())
        wanted = sorted({k for k in (ks or [2 ** i for i in range(11)]) if k <= n_s} | {1})
        for k in wanted:
            vals = []
            for _, g in target.groupby("task", sort=True):
                vals += per_item_values(g, f"pass@{k}")
            iv = stats.mean_normal(np.asarray(vals, float)).scaled(100.0)
            rows.append({"metric": f"pass@{k}", "value": iv.value, "low": iv.low, "high": iv.high, "n": len(vals),
                         "samples": n_s})
    if general is not None:
        iv = general.interval().scaled(100.0)
        rows.append({"metric": "general", "value": iv.value, "low": iv.low, "high": iv.high, "n": general.n_items,
                     "samples": 1})
    return rows


PATH_COLUMNS = ["method", "train_method", "regime", "step", "metric", "value", "low", "high", "n", "samples"]


def path_table(methods: dict, base_name: str = "base", infos: dict | None = None):
    """Per method (with a ``path/`` directory) and step: pass@k and the general score with intervals.
    The base's ``path/`` evals (step 0) start every method's path. Empty frame when nobody has one."""
    import pandas as pd

    infos = infos or {}
    base_rows = []
    if base_name in methods:
        bdf = path_samples(methods[base_name].directory)
        if bdf is not None:
            base_rows = step_scores(bdf[bdf["step"] == 0])
    rows = []
    for name, m in methods.items():
        if name == base_name:
            continue
        df = path_samples(m.directory)
        if df is None:
            continue
        info = infos.get(name) or run_info(m.directory, m.adapter)
        common = {"method": name, "train_method": info.get("train_method") or name, "regime": info.get("regime")}
        if not (df["step"] == 0).any():
            rows += [{**common, "step": 0, **r} for r in base_rows]
        for step, g in df.groupby("step", sort=True):
            rows += [{**common, "step": int(step), **r} for r in step_scores(g)]
    return pd.DataFrame(rows, columns=PATH_COLUMNS)


def trajectories(table, anchor: tuple[float, float] | None = None) -> dict:
    """{method: DataFrame(step, target, general, target_low, ...)} for the plane: target = pass@1 of the
    sampled path eval, general = the path's general score, one row per step that has both.

    With ``anchor`` = the base's (target, general) point on the plane and a step 0 in the path, each
    trajectory is shifted so that its step 0 sits on that point: it then shows the *change* along
    training (measured on the path's own items and sampling) starting from the base's star, instead of
    absolute values on a smaller item set that would start elsewhere. ``anchored`` says which."""
    import math

    import pandas as pd

    out = {}
    if table is None or not len(table):
        return out
    for name, g in table.groupby("method", sort=False):
        t = g[g["metric"] == "pass@1"].set_index("step")
        ge = g[g["metric"] == "general"].set_index("step")
        steps = sorted(set(t.index) & set(ge.index))
        if len(steps) < 2:
            continue
        df = pd.DataFrame({"step": steps, "target": [float(t.loc[s, "value"]) for s in steps],
                           "general": [float(ge.loc[s, "value"]) for s in steps],
                           "target_low": [float(t.loc[s, "low"]) for s in steps],
                           "target_high": [float(t.loc[s, "high"]) for s in steps],
                           "general_low": [float(ge.loc[s, "low"]) for s in steps],
                           "general_high": [float(ge.loc[s, "high"]) for s in steps]})
        df["anchored"] = False
        if anchor is not None and steps[0] == 0 and all(math.isfinite(float(v)) for v in anchor):
            dt, dg = float(anchor[0]) - df["target"].iloc[0], float(anchor[1]) - df["general"].iloc[0]
            for c in ("target", "target_low", "target_high"):
                df[c] = df[c] + dt
            for c in ("general", "general_low", "general_high"):
                df[c] = df[c] + dg
            df["anchored"] = True
        out[name] = df
    return out


REGIME_COLUMNS = ["train_method", "sft", "rlvr", "what", "sft_value", "rlvr_value", "diff", "low", "high", "p",
                  "test", "significant", "n"]


def regime_comparison(methods: dict, lb, base_name: str = "base"):
    """SFT against RLVR for each training method that has both: forgetting (sft − rlvr: positive = RLVR
    forgets less) and target gain (rlvr − sft), each a paired difference on the items both evaluated
    (the base cancels: forgetting_sft − forgetting_rlvr = general_rlvr − general_sft). Returns
    (DataFrame, notes)."""
    import pandas as pd

    from peftarena_cli.report.uncertainty import compare, method_measures

    rows, notes = [], []
    if "regime" not in lb.columns:
        return pd.DataFrame(columns=REGIME_COLUMNS), notes
    tuned = lb[~lb["is_base"]]
    for tm, g in tuned.groupby("train_method", sort=True):
        sft = g[g["regime"] == "sft"]
        rl = g[g["regime"] == "rlvr"]
        if sft.empty or rl.empty:
            continue
        a, b = str(sft["method"].iloc[0]), str(rl["method"].iloc[0])
        ma, mb = method_measures(methods[a]), method_measures(methods[b])
        for what, kind, x, y, names, col in (("forgetting (sft − rlvr)", "general", mb.get("general"), ma.get("general"), (b, a), "forgetting"),
                                             ("target gain (rlvr − sft)", "target", mb.get("target"), ma.get("target"), (b, a), "target_gain")):
            res, note = compare(x, y, names=names)
            va, vb = float(sft[col].iloc[0]), float(rl[col].iloc[0])
            if note:
                notes.append(f"{tm}: {what} not paired: {note}")
            rows.append({"train_method": tm, "sft": a, "rlvr": b, "what": what, "sft_value": va, "rlvr_value": vb,
                         "diff": res.diff if res is not None else ((va - vb) if col == "forgetting" else (vb - va)),
                         "low": res.low if res is not None else math.nan, "high": res.high if res is not None else math.nan,
                         "p": res.p_value if res is not None else math.nan, "test": res.test if res is not None else "",
                         "significant": bool(res.significant) if res is not None else False,
                         "n": (x.n_items if x is not None else math.nan)})
    return pd.DataFrame(rows, columns=REGIME_COLUMNS), notes


def regime_markdown(cmp, path=None) -> list[str]:
    """Markdown lines: the SFT-vs-RLVR table, and pass@k at the first and last step of each path."""
    from peftarena_cli.report.uncertainty import _p

    lines = []
    if cmp is not None and len(cmp):
        lines += ["", "## SFT against RLVR, per method", "",
                  "Paired on the same items (the base cancels): forgetting (sft − rlvr) > 0 means RLVR forgets less; "
                  "target gain (rlvr − sft) > 0 means RLVR gains more. `*` = significant at 95%.", "",
                  "| method | comparison | SFT | RLVR | difference ± 95% | p | n |", "|---|---|---|---|---|---|---|"]
        for r in cmp.to_dict("records"):
            hw = (r["high"] - r["low"]) / 2 if math.isfinite(r["low"]) else math.nan
            d = f"{r['diff']:+.2f}" + (f" ± {hw:.2f}" if math.isfinite(hw) else "") + (" *" if r["significant"] else "")
            lines.append(f"| {r['train_method']} | {r['what']} | {r['sft_value']:+.2f} | {r['rlvr_value']:+.2f} | {d} | "
                         f"{_p(r['p']) if math.isfinite(r['p']) else '–'} | {r['n'] if r['n'] == r['n'] else '–'} |")
    if path is not None and len(path):
        ks = [m for m in path["metric"].unique() if str(m).startswith("pass@")]
        ks = sorted(ks, key=lambda m: int(m[5:]))
        lines += ["", "## Along training (path diagnostics)", "",
                  "Target pass@k of sampled completions and the general score at each saved checkpoint (step 0 = the "
                  "base), value ± 95% half-width over items; plot: `passk.png`.", ""]
        cols = ks + ["general"]
        lines.append("| method | regime | step | " + " | ".join(cols) + " |")
        lines.append("|---|---|---|" + "---|" * len(cols))
        for (name, step), g in path.groupby(["method", "step"], sort=False):
            cells = []
            for c in cols:
                r = g[g["metric"] == c]
                if r.empty:
                    cells.append("–")
                    continue
                r = r.iloc[0]
                cells.append(f"{r['value']:.1f} ± {(r['high'] - r['low']) / 2:.1f}")
            lines.append(f"| {name} | {g['regime'].iloc[0] or '–'} | {step} | " + " | ".join(cells) + " |")
    return lines
