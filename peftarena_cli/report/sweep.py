"""The sweep report: `peftarena report SWEEP_RUNS -o DIR` on a folder laid out by `make sweep`
(scripts/sweep.mk; docs/report.md, "Sweeps").

Layout. ``SWEEP_RUNS/base/`` holds the base's per-sample evals (``eval_target.parquet``,
``eval_general.parquet``); each grid point is ``SWEEP_RUNS/<method>/lr<LR>/s<SEED>/`` with its finetune
run in ``train/`` (``manifest.json``: seed, lr, steps, base identity, trainable parameters, peak memory,
training time) and its own per-sample evals. :func:`sweep_root` recognises the layout.

What is computed (:func:`build_sweep_report`), all from the per-sample rows:

* per point and seed, the per-item paired differences against the base
  (:func:`~peftarena_cli.report.sweep_stats.item_differences`: gain = run − base on the target items,
  forgetting = base − run on the general items; the scores themselves as differences from zero), so
  that the tests stay paired on items within a seed;
* per configuration (method, lr, steps): the seed means with the seed-and-item interval
  (:func:`~peftarena_cli.report.sweep_stats.seed_item_interval`), the between-seed SD, the item-only
  interval, the seeds present and missing, and the cost columns from the manifests;
* per method, its Pareto frontier over its configurations' seed means, forgetting read at matched
  gains with intervals, and every method pair's comparison with Holm-adjusted p-values
  (:func:`~peftarena_cli.report.sweep_stats.pairwise_comparisons`).

Refused (IncompatibleInputs): points trained or evaluated on different base models, scored under
different protocols, evaluated in different model dtypes (the provenance's ``dtype``; evals that
record none are not compared), or evaluated on different items. Excluded, each listed with its reason: points
whose training diverged (``diverged.json`` from scripts/sweep_train.py, or ``status: "diverged"`` in
the manifest), points the drift screen sent to no general eval (``screen.json``, status "screened
out"; :mod:`peftarena_cli.report.screen`), points without both evals (not run yet, interrupted). A configuration that lost a seed
stays in, with ``n_seeds`` and ``missing_seeds`` saying which.

Core code: no printing; :func:`write_sweep_report` writes the report directory atomically.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from peftarena_cli import stats
from peftarena_cli.errors import IncompatibleInputs, InvalidArtifact
from peftarena_cli.report import sweep_stats as ss

LR_DIR = re.compile(r"lr(.+)")
SEED_DIR = re.compile(r"s(\d+)")
EVAL_FILES = {"target": "eval_target.parquet", "general": "eval_general.parquet"}
DIVERGED_MARKER = "diverged.json"
MEASURES = (("target", "target score"), ("general", "general score"), ("gain", "target gain"),
            ("forgetting", "forgetting"))


# ---------------------------------------------------------------- layout
def _point_dirs(root: Path) -> list[tuple[str, str, str, Path]]:
    """(method, lr dir name, seed dir name, path) of every ``<method>/lr<LR>/s<SEED>/`` under ``root``."""
    out = []
    for m in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for lr in sorted(p for p in m.iterdir() if p.is_dir() and LR_DIR.fullmatch(p.name)):
            for s in sorted((p for p in lr.iterdir() if p.is_dir() and SEED_DIR.fullmatch(p.name)),
                            key=lambda p: int(p.name[1:])):
                out.append((m.name, lr.name, s.name, s))
    return out


def is_sweep(path) -> bool:
    """Whether ``path`` is a folder laid out by `make sweep` (at least one <method>/lr<LR>/s<SEED>/)."""
    p = Path(path)
    return p.is_dir() and bool(_point_dirs(p))


def sweep_root(specs: list[str]) -> Path | None:
    """The sweep folder when ``specs`` name one (and nothing else), else None. A sweep folder given
    beside other results is a usage error: a sweep report is built from its folder alone."""
    from peftarena_cli.errors import UsageError

    hits = [s for s in specs if "=" not in str(s) and is_sweep(Path(s).expanduser())]
    if not hits:
        return None
    if len(specs) > 1:
        raise UsageError(f"{hits[0]!r} is a sweep folder (<method>/lr<LR>/s<SEED>/) and is reported on its own",
                         hint=f"run `peftarena report {hits[0]} -o DIR` without other results")
    return Path(hits[0]).expanduser()


# ---------------------------------------------------------------- reading one point
@dataclass
class Run:
    """One grid point (one seed of one configuration) as found on disk."""

    method: str
    lr: float
    seed: int
    steps: float
    path: Path
    status: str  # "used", "diverged", "screened out", "no results"
    reason: str = ""
    manifest: dict | None = None
    tables: dict = field(default_factory=dict)  # kind -> (DataFrame, provenance, file)

    @property
    def label(self) -> str:
        return f"{self.method} lr={self.lr:g} seed {self.seed}"


def _read_json(p: Path) -> dict | None:
    if not p.is_file():
        return None
    try:
        v = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InvalidArtifact(f"{str(p)!r} is not readable JSON ({e})",
                              hint="the file is corrupt: remove the point's directory and re-run `make sweep`") from None
    return v if isinstance(v, dict) else None


def _num(v, default=math.nan) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return default
    return v


def seconds_per_step(man: dict | None) -> float:
    """Training seconds per optimizer step from a finetune manifest: ``train_seconds`` covers the
    steps of the last session (from the last ``resumed`` step, or 0, to ``last_step``)."""
    if not man or man.get("status") != "complete":
        return math.nan
    t, last = _num(man.get("train_seconds")), _num(man.get("last_step"))
    resumed = man.get("resumed") or [0]
    n = last - _num(resumed[-1], 0.0)
    return t / n if math.isfinite(t) and n > 0 else math.nan


def _screened_out(path: Path) -> str | None:
    """The configuration that screened the point at ``path`` out, by the sweep's ``screen.json``
    (scripts/sweep_screen.py); None when there is no screen or it selected the point."""
    from peftarena_cli.report.screen import SCREEN_FILE

    root = path.parents[2]
    screen = _read_json(root / SCREEN_FILE)
    rel = path.relative_to(root).as_posix()
    if not screen or rel not in (screen.get("screened_out") or []):
        return None
    return next((c.get("dominated_by") for c in screen.get("configs") or [] if rel in (c.get("points") or [])), "?")


def read_run(method: str, lr_name: str, seed_name: str, path: Path) -> Run:
    from peftarena_cli.artifacts.tables import read_table

    man = _read_json(path / "train" / "manifest.json")
    cfg = (man or {}).get("config") or {}
    lr = _num(cfg.get("lr"), _num(LR_DIR.fullmatch(lr_name).group(1)))
    seed = int(_num(cfg.get("seed"), float(seed_name[1:])))
    steps = _num(cfg.get("steps"))
    run = Run(str(cfg.get("method") or method), lr, seed, steps, path, "used", manifest=man)
    div = _read_json(path / DIVERGED_MARKER)
    if div is not None or (man or {}).get("status") == "diverged":
        d = div or man
        run.status = "diverged"
        run.reason = f"training diverged at step {d.get('stopped_at_step')}: {d.get('stop_reason')}"
        return run
    missing = [f for f in EVAL_FILES.values() if not (path / f).is_file()]
    if missing == [EVAL_FILES["general"]]:
        by = _screened_out(path)
        if by is not None:
            run.status = "screened out"
            run.reason = f"screened out by the drift screen (dominated by {by}): no general eval"
            return run
    if missing:
        run.status = "no results"
        state = (man or {}).get("status")
        run.reason = f"no {' / '.join(missing)}" + (f" (training {state})" if state and state != "complete" else "")
        return run
    for kind, f in EVAL_FILES.items():
        df, prov = read_table(path / f)
        run.tables[kind] = (df, prov, path / f)
    return run


def _measure(df, kind: str, f: Path) -> stats.Measure:
    from peftarena_cli.report.collect import samples_kind
    from peftarena_cli.report.uncertainty import split_measures

    if samples_kind(df.columns) != "samples":
        raise InvalidArtifact(f"{str(f)!r} is not a per-sample eval table (it needs task, id, sample, completion, correct)",
                              hint="point eval-target / eval-general's -o at it (the per-sample rows, not --summary)")
    m = split_measures(df).get(kind)
    if m is None or not m.n_items:
        raise InvalidArtifact(f"{str(f)!r} holds no {kind} items", hint=f"it should be eval-{kind}'s per-sample output")
    return m


def _zero(m: stats.Measure) -> stats.Measure:
    return stats.Measure(m.kind, [replace(s, y=np.zeros_like(s.y, dtype=float)) for s in m.strata])


def _row(a: stats.Measure, b: stats.Measure, order: list, names) -> np.ndarray:
    """Per-item a − b in points, on the items in ``order`` (so every seed's row lines up)."""
    keys, c = ss.item_differences(a, b, names)
    idx = {k: i for i, k in enumerate(keys)}
    return 100.0 * c[np.array([idx[k] for k in order], dtype=int)]


# ---------------------------------------------------------------- consistency checks
def _check_same_base(base_tables: dict, runs: list[Run], base_name: str) -> None:
    """Every eval's provenance and every manifest name one base model (per identity scheme)."""
    from peftarena_cli.report.collect import base_identities

    first: dict[str, tuple[str, str]] = {}  # scheme -> (identity, where)

    def see(scheme, ident, where):
        ref = first.setdefault(scheme, (ident, where))
        if ref[0] != ident:
            raise IncompatibleInputs(f"the sweep mixes base models: {ref[1]} and {where} name different bases "
                                     f"(identity {ref[0]} vs {ident})",
                                     hint="a sweep compares methods on one base model: keep one base per sweep folder "
                                          "(SWEEP_RUNS=...) and re-run the odd points")

    for kind, (_, prov, f) in base_tables.items():
        for scheme, ident, _ in base_identities(prov, base_name, base_name):
            see(scheme, ident, repr(str(f)))
    for r in runs:
        for kind, (_, prov, f) in r.tables.items():
            for scheme, ident, _ in base_identities(prov, r.method, base_name):
                see(scheme, ident, repr(str(f)))
        ident = ((r.manifest or {}).get("base") or {}).get("identity")
        if ident:
            see("manifest", str(ident), repr(str(r.path / "train" / "manifest.json")))


def eval_dtype(prov: dict) -> str | None:
    """The model dtype an eval table's provenance records (``--dtype``; None when it records none,
    e.g. completions scored from ``--responses``)."""
    v = (prov or {}).get("dtype")
    return str(v) if v else None


def _check_dtype(base_tables: dict, runs: list[Run], base_name: str) -> str | None:
    """Every eval that records a dtype records the same one (a sweep is scored in one precision:
    bfloat16 and float32 greedy completions differ on some items, so a gain across the two would
    partly be the precision's). Returns that dtype (None when no eval records one)."""
    first = None  # (dtype, where)
    tables = [(f"the base's {k} eval", v) for k, v in base_tables.items()]
    tables += [(f"{r.label}'s {k} eval", v) for r in runs for k, v in r.tables.items()]
    for where, (_, prov, f) in tables:
        d = eval_dtype(prov)
        if d is None:
            continue
        if first is None:
            first = (d, where)
        elif d != first[0]:
            raise IncompatibleInputs(f"the sweep mixes model dtypes: {where} ran in {d} ({str(f)!r}), "
                                     f"{first[1]} in {first[0]}",
                                     hint="evaluate every point and the base with one --dtype (SWEEP_EVAL_DTYPE); "
                                          "re-run the odd evals or use another SWEEP_RUNS")
    return first[0] if first else None


def task_protocols(df) -> dict[str, str]:
    """{task: "scorer (protocol)"} of a per-sample table: the scorer (stats.task_scorers) and the
    ``protocol`` its first row's ``meta`` names (eval writes e.g. "builtin@1"; "" when absent)."""
    out = {}
    for task, sc in stats.task_scorers(df).items():
        proto = ""
        if "meta" in df.columns:
            try:
                proto = str(json.loads(df.loc[df["task"].astype(str) == task, "meta"].iloc[0]).get("protocol") or "")
            except (TypeError, ValueError, AttributeError, IndexError):
                proto = ""
        out[task] = f"{sc} ({proto})" if proto else sc
    return out


def _check_protocol(base_df, df, kind: str, where: str) -> None:
    a, b = task_protocols(base_df), task_protocols(df)
    if a != b:
        t = sorted(t for t in set(a) | set(b) if a.get(t) != b.get(t))[0]
        raise IncompatibleInputs(f"the sweep mixes protocols: {where}'s {kind} eval scores {t!r} as "
                                 f"{b.get(t, 'absent')!r}, the base's as {a.get(t, 'absent')!r}",
                                 hint="evaluate every point and the base with the same --task/--suite and --protocol")


# ---------------------------------------------------------------- the report
@dataclass
class SweepReport:
    configs: object  # DataFrame: one row per configuration (method, lr, steps)
    runs: object  # DataFrame: one row per point directory, used or excluded
    frontiers: object  # DataFrame: frontier_table (per configuration, on its method's frontier)
    matched: object  # DataFrame: matched_gain_table
    pairs: object  # DataFrame: pairwise_comparisons
    vertices: dict  # method -> [(gain, forgetting, key)]
    base: tuple  # (target, general) of the base, points
    notes: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    representatives: dict = field(default_factory=dict)
    screen: dict = field(default_factory=dict)  # the drift screen: table, agreement, note (empty: no drift)
    paths: list = field(default_factory=list)  # sweep_paths.SweepPath: grid runs' interpolation paths


def _fmt_lr(v: float) -> str:
    return f"{v:g}"


def _representative(method: str, keys_lr: list[tuple[str, float, int]]) -> tuple[str, str]:
    """The configuration a method is compared by in the gain / forgetting pairs, fixed before any
    result is read: the one whose lr is nearest (in log) to the registry's arena_lr (the arena's own
    setting), more seeds first; a method the registry does not know: its median lr."""
    from peftarena_cli.methods import METHODS

    m = METHODS.get(method.lower())
    lrs = sorted(lr for _, lr, _ in keys_lr)
    ref, why = ((m.arena_lr, f"lr nearest the registry's arena_lr {m.arena_lr:g}") if m is not None
                else (lrs[(len(lrs) - 1) // 2], "median lr (method not in the registry)"))
    best = min(keys_lr, key=lambda x: (abs(math.log(x[1] / ref)) if x[1] > 0 and ref > 0 else math.inf, -x[2]))
    return best[0], why


def build_sweep_report(root, base_name: str = "base", k_levels: int = 5) -> SweepReport:
    import pandas as pd

    from peftarena_cli.artifacts.tables import read_table

    root = Path(root)
    base_dir = root / base_name
    base_tables = {}
    for kind, f in EVAL_FILES.items():
        if not (base_dir / f).is_file():
            raise InvalidArtifact(f"sweep {str(root)!r} has no base {kind} eval ({str(base_dir / f)!r})",
                                  hint="gains and forgetting are paired against the base: run `make sweep` "
                                       "(it evaluates the base once), or eval-target / eval-general the base model there")
        df, prov = read_table(base_dir / f)
        base_tables[kind] = (df, prov, base_dir / f)
    base_m = {k: _measure(df, k, f) for k, (df, _, f) in base_tables.items()}
    order = {k: ss.item_differences(m, _zero(m))[0] for k, m in base_m.items()}

    runs = [read_run(*p) for p in _point_dirs(root)]
    used = [r for r in runs if r.status == "used"]
    _check_same_base(base_tables, runs, base_name)
    dtype = _check_dtype(base_tables, runs, base_name)
    notes: list[str] = []
    if dtype is not None and dtype != "float32":
        notes.append(f"every eval ran in {dtype} (SWEEP_EVAL_DTYPE); float32 is the reference precision")
    # per point and seed: rows of per-item values (points), on the base's item order
    rows: dict[tuple, dict] = {}
    seen: dict[tuple, Run] = {}
    for r in used:
        key = (r.method, r.lr, r.steps, r.seed)
        if key in seen:
            raise IncompatibleInputs(f"{str(seen[key].path)!r} and {str(r.path)!r} are both {r.label} "
                                     f"(steps {r.steps:g}) by their manifests",
                                     hint="each configuration and seed is one directory <method>/lr<LR>/s<SEED>/: "
                                          "remove or move the copy")
        seen[key] = r
        rm = {}
        for kind, (df, _, f) in r.tables.items():
            _check_protocol(base_tables[kind][0], df, kind, r.label)
            rm[kind] = _measure(df, kind, f)
        try:
            for kind in EVAL_FILES:
                stats.check_same_items(rm[kind], base_m[kind], (r.label, base_name))
            rows[(r.method, r.lr, r.steps, r.seed)] = {
                "target": _row(rm["target"], _zero(rm["target"]), order["target"], (r.label, "zero")),
                "general": _row(rm["general"], _zero(rm["general"]), order["general"], (r.label, "zero")),
                "gain": _row(rm["target"], base_m["target"], order["target"], (r.label, base_name)),
                "forgetting": _row(base_m["general"], rm["general"], order["general"], (base_name, r.label)),
            }
        except IncompatibleInputs as e:
            raise IncompatibleInputs(f"the sweep mixes item sets: {r.label} ({str(r.path)!r}) is not on the base's "
                                     f"items: {e.message}",
                                     hint="evaluate every point and the base with the same --limit, --seed and task "
                                          "files (SWEEP_TARGET_LIMIT / SWEEP_GENERAL_LIMIT unchanged)") from None
    all_seeds = sorted({r.seed for r in runs})
    by_seed = {(r.method, r.lr, r.steps, r.seed): r for r in runs}

    # configurations
    cfgs: dict[tuple, list[int]] = {}
    for (m, lr, steps, seed) in rows:
        cfgs.setdefault((m, lr, steps), []).append(seed)
    multi_steps = len({k[2] for k in cfgs if math.isfinite(k[2])}) > 1
    base_t = 100.0 * base_m["target"].value()
    base_g = 100.0 * base_m["general"].value()
    crow, points = [], []
    for (m, lr, steps), seeds in sorted(cfgs.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        seeds = sorted(seeds)
        key = f"{m} lr={_fmt_lr(lr)}" + (f" steps={steps:g}" if multi_steps else "")
        mats = {k: np.vstack([rows[(m, lr, steps, s)][k] for s in seeds]) for k, _ in MEASURES}
        missing = [s for s in all_seeds if s not in seeds]
        why_missing = []
        for s in missing:
            r = by_seed.get((m, lr, steps, s)) or next((x for x in runs if (x.method, x.lr, x.seed) == (m, lr, s)), None)
            why_missing.append(f"seed {s} " + (f"excluded ({r.reason})" if r is not None else "not run"))
        mans = [by_seed[(m, lr, steps, s)].manifest or {} for s in seeds]
        row = {"method": m, "lr": lr, "steps": steps, "key": key, "seeds": ",".join(map(str, seeds)),
               "n_seeds": len(seeds), "missing_seeds": ",".join(map(str, missing))}
        for k, _ in MEASURES:
            res = ss.seed_item_interval(mats[k])
            iv = res.interval
            row.update({k: iv.value, f"{k}_low": iv.low, f"{k}_high": iv.high, f"{k}_se": iv.se,
                        f"{k}_seed_sd": res.seed_sd, f"{k}_item_low": res.item_only.low,
                        f"{k}_item_high": res.item_only.high, f"{k}_n_items": res.n_items})
            if k in ("gain", "forgetting"):
                row[f"{k}_p"] = res.p_value
        row["trainable_params"] = float(np.nanmean([_num(x.get("trainable_params")) for x in mans])) if any(
            "trainable_params" in x for x in mans) else math.nan
        rss = [_num(x.get("peak_rss_mb")) for x in mans]
        gpu = [_num(x.get("peak_gpu_mb")) for x in mans]
        sps = [seconds_per_step(x) for x in mans]
        row["peak_rss_mb"] = max((v for v in rss if math.isfinite(v)), default=math.nan)
        row["peak_gpu_mb"] = max((v for v in gpu if math.isfinite(v)), default=math.nan)
        fin = [v for v in sps if math.isfinite(v)]
        row["s_per_step"] = float(np.mean(fin)) if fin else math.nan
        note = "; ".join(why_missing)
        if len(seeds) == 1:
            note = "; ".join(x for x in (note, ss.ONE_SEED_NOTE) if x)
        row["note"] = note
        crow.append(row)
        points.append(ss.SweepPoint(key, m, mats["gain"], mats["forgetting"], lr=lr, seeds=tuple(seeds)))
        if missing:
            notes.append(f"{key}: {len(seeds)} of {len(all_seeds)} seeds ({'; '.join(why_missing)})")
    configs = pd.DataFrame(crow)
    run_rows = [{"method": r.method, "lr": r.lr, "seed": r.seed, "steps": r.steps,
                 "path": str(r.path), "used": r.status == "used", "status": r.status, "reason": r.reason,
                 "trainable_params": _num((r.manifest or {}).get("trainable_params")),
                 "peak_rss_mb": _num((r.manifest or {}).get("peak_rss_mb")),
                 "s_per_step": seconds_per_step(r.manifest)} for r in runs]
    runs_df = pd.DataFrame(run_rows, columns=["method", "lr", "seed", "steps", "path", "used", "status", "reason",
                                              "trainable_params", "peak_rss_mb", "s_per_step"])
    for r in runs:
        if r.status != "used":
            notes.append(f"excluded {r.label} ({r.path}): {r.reason}")
    if not points:
        raise InvalidArtifact(f"sweep {str(root)!r} has no grid point with both evals",
                              hint="run `make sweep` (or finish it): each point needs eval_target.parquet and "
                                   "eval_general.parquet")
    fr = ss.frontier_table(points)
    configs["frontier"] = configs["key"].map(dict(zip(fr["key"], fr["frontier"]))).astype(bool)
    verts = ss.method_frontiers(points)
    matched = ss.matched_gain_table(points, k=k_levels)
    if not len(matched):
        notes.append("forgetting at matched gain: the methods' frontiers share no range of target gain")
    methods = list(dict.fromkeys(p.method for p in points))
    reps, why = {}, {}
    for m in methods:
        reps[m], why[m] = _representative(m, [(p.key, p.lr, p.gain.shape[0]) for p in points if p.method == m])
    pairs = (ss.pairwise_comparisons(points, representative=reps, levels=matched["target_gain"].drop_duplicates()
                                     .to_numpy(float), k=k_levels)
             if len(methods) >= 2 else pd.DataFrame(columns=ss.PAIR_COLUMNS))
    from peftarena_cli.report.sweep_paths import path_matched, read_paths

    cfg_key = {(m, lr, st): k for m, lr, st, k in zip(configs["method"], configs["lr"], configs["steps"], configs["key"])}
    paths, pnotes = read_paths(used, base_m, order, _row, _zero,
                               lambda r: cfg_key.get((r.method, r.lr, r.steps), r.label), dtype=dtype)
    notes += pnotes
    matched["source"] = "grid"
    pm = path_matched(paths, matched["target_gain"].drop_duplicates().to_numpy(float))
    if pm is not None and len(pm):
        matched = pd.concat([matched, pm], ignore_index=True).sort_values("target_gain", kind="stable",
                                                                           ignore_index=True)
    inputs = {"base": [str(f) for _, _, f in base_tables.values()]}
    for r in used:
        inputs.setdefault(r.method, []).extend(str(f) for _, _, f in r.tables.values())
    return SweepReport(configs=configs, runs=runs_df, frontiers=fr, matched=matched, pairs=pairs, vertices=verts,
                       base=(base_t, base_g), notes=notes, inputs=inputs,
                       representatives={m: (reps[m], why[m]) for m in methods}, paths=paths,
                       screen=screen_report(root, base_name, configs, used))


# ---------------------------------------------------------------- the drift screen
def screen_frame(root, base_name: str = "base"):
    """The per-configuration screen inputs of a sweep folder (method, key, lr, steps, seeds, points,
    gain, drift, drift_low, drift_high), from every point that has ``eval_target.parquet`` and
    ``drift.parquet`` and did not diverge; ``points`` lists each configuration's point paths
    (``<method>/lr<LR>/s<SEED>``). None when no point has both files."""
    import pandas as pd

    from peftarena_cli.artifacts.tables import read_table
    from peftarena_cli.report.screen import DRIFT_FILE, drift_vector

    root = Path(root)
    bf = root / base_name / EVAL_FILES["target"]
    if not bf.is_file():
        raise InvalidArtifact(f"sweep {str(root)!r} has no base target eval ({str(bf)!r})",
                              hint="the screen's gains are paired against the base: run the base's eval-target first")
    bdf, _ = read_table(bf)
    base_t = _measure(bdf, "target", bf)
    order = ss.item_differences(base_t, _zero(base_t))[0]
    per: dict[tuple, dict] = {}
    for m, lr_name, seed_name, path in _point_dirs(root):
        run = read_run(m, lr_name, seed_name, path)
        if run.status == "diverged":
            continue
        tf, df_ = path / EVAL_FILES["target"], path / DRIFT_FILE
        if not (tf.is_file() and df_.is_file()):
            continue
        tdf, _ = read_table(tf)
        rm = _measure(tdf, "target", tf)
        try:
            gain = _row(rm, base_t, order, (run.label, base_name))
        except IncompatibleInputs as e:
            raise IncompatibleInputs(f"the screen mixes item sets: {run.label} is not on the base's target items: "
                                     f"{e.message}", hint="evaluate every point and the base with the same "
                                                          "SWEEP_TARGET_LIMIT") from None
        keys, kl = drift_vector(read_table(df_)[0], repr(str(df_)))
        c = per.setdefault((run.method, run.lr, run.steps), {"seeds": [], "points": [], "gain": [], "kl": [],
                                                             "keys": keys, "where": run.label})
        if keys != c["keys"]:
            raise IncompatibleInputs(f"the screen mixes drift prompts: {run.label} and {c['where']} measured drift "
                                     "on different prompts",
                                     hint="measure every point's drift with the same settings (SWEEP_DRIFT_LIMIT, "
                                          "one --base-continuations file)")
        c["seeds"].append(run.seed)
        c["points"].append(f"{m}/{lr_name}/{seed_name}")
        c["gain"].append(gain)
        c["kl"].append(kl)
    if not per:
        return None
    multi_steps = len({k[2] for k in per if math.isfinite(k[2])}) > 1
    rows = []
    for (m, lr, steps), c in sorted(per.items(), key=lambda kv: kv[0]):
        kl = np.vstack(c["kl"])
        kl = kl[:, np.isfinite(kl).all(axis=0)]  # a prompt whose continuation was empty has no drift
        iv = ss.seed_item_interval(kl).interval
        rows.append({"method": m, "key": f"{m} lr={lr:g}" + (f" steps={steps:g}" if multi_steps else ""),
                     "lr": lr, "steps": steps, "seeds": ",".join(map(str, sorted(c["seeds"]))),
                     "points": sorted(c["points"]), "gain": float(np.vstack(c["gain"]).mean()),
                     "drift": iv.value, "drift_low": iv.low, "drift_high": iv.high})
    return pd.DataFrame(rows)


def build_screen(root, base_name: str = "base") -> dict:
    """The drift screen of a sweep folder as written to ``screen.json``
    (:func:`peftarena_cli.report.screen.screen_document`)."""
    from peftarena_cli.report.screen import DRIFT_FILE, screen_document

    df = screen_frame(root, base_name)
    if df is None:
        raise InvalidArtifact(f"sweep {str(root)!r} has no point with both eval_target.parquet and {DRIFT_FILE}",
                              hint="run the screen's stages first (make sweep SCREEN=1)")
    return screen_document(df)


def screen_report(root: Path, base_name: str, configs, used: list[Run]) -> dict:
    """The drift screen of the sweep (peftarena_cli.report.screen) when its points have drift tables:
    {"table", "agreement", "note"}. The agreement with the full evaluation's frontiers is computed only
    where both exist for every point: each point the screen reads has its general eval too (a sweep run
    with SCREEN=0 and drift, or a screened sweep whose remaining points were evaluated since)."""
    from peftarena_cli.report.screen import screen_agreement, screen_table

    sf = screen_frame(root, base_name)
    if sf is None:
        return {}
    t = screen_table(sf)
    screened = {p for ps in t["points"] for p in ps}
    full = {r.path.relative_to(root).as_posix() for r in used}
    if screened == full and set(t["key"]) <= set(configs["key"]):
        return {"table": t, "agreement": screen_agreement(t, dict(zip(configs["key"], configs["frontier"]))), "note": ""}
    return {"table": t, "agreement": None,
            "note": f"agreement not computed: the full general eval covers {len(screened & full)} of the screen's "
                    f"{len(screened)} points (it needs every screened point fully evaluated)"}


# ---------------------------------------------------------------- markdown
def _f(v, signed=False, nd=2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"


def _ci(lo, hi) -> str:
    return f"[{_f(lo, True)}, {_f(hi, True)}]" if math.isfinite(lo) and math.isfinite(hi) else "–"


def _p(p) -> str:
    if p is None or not math.isfinite(p):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def sweep_markdown(rep: SweepReport) -> str:
    from peftarena_cli.report.leaderboard import _fmt_params

    c = rep.configs
    out = ["# Sweep: methods × learning rates × seeds", "",
           f"Base: target {rep.base[0]:.2f}, general {rep.base[1]:.2f}. Every value is the mean over seeds of the "
           "per-seed score; [brackets]: 95 % seed-and-item interval (crossed seeds × items); seed SD: SD of the "
           "per-seed values; item CI: the interval with the seeds held fixed (items only). Gain = run − base "
           "(target), forgetting = base − run (general), paired on items within each seed.", "",
           "## Configurations", "",
           "| method | lr | steps | seeds | target | general | gain [95% CI] | gain seed SD | gain item CI | p (gain) "
           "| forgetting [95% CI] | forg. seed SD | forg. item CI | p (forg.) | frontier | note |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in c.to_dict("records"):
        out.append(" | ".join([
            f"| {r['method']}", _fmt_lr(r["lr"]), _f(r["steps"], nd=0), f"{r['seeds']} (n={r['n_seeds']})",
            f"{_f(r['target'])} {_ci(r['target_low'], r['target_high'])}",
            f"{_f(r['general'])} {_ci(r['general_low'], r['general_high'])}",
            f"{_f(r['gain'], True)} {_ci(r['gain_low'], r['gain_high'])}", _f(r["gain_seed_sd"]),
            _ci(r["gain_item_low"], r["gain_item_high"]), _p(r["gain_p"]),
            f"{_f(r['forgetting'], True)} {_ci(r['forgetting_low'], r['forgetting_high'])}",
            _f(r["forgetting_seed_sd"]), _ci(r["forgetting_item_low"], r["forgetting_item_high"]),
            _p(r["forgetting_p"]), "✓" if r["frontier"] else "", (r["note"] or "").replace("|", "/")]) + " |")
    out += ["", "## Cost (from the training manifests)", "",
            "| method | lr | steps | trainable params | peak RSS (MiB, max over seeds) | peak GPU (MiB) | s / step (mean over seeds) |",
            "|---|---|---|---|---|---|---|"]
    for r in c.to_dict("records"):
        out.append(f"| {r['method']} | {_fmt_lr(r['lr'])} | {_f(r['steps'], nd=0)} | {_fmt_params(r['trainable_params'])} "
                   f"| {_f(r['peak_rss_mb'], nd=0)} | {_f(r['peak_gpu_mb'], nd=0)} | {_f(r['s_per_step'], nd=3)} |")
    out += ["", "## Per-method frontiers", "",
            "Each method's Pareto set over its configurations' seed means (gain ≥, forgetting ≤), by gain:", ""]
    for m, v in rep.vertices.items():
        out.append(f"- **{m}**: " + " → ".join(f"{k.split(' ', 1)[1] if ' ' in k else k} (gain {g:+.2f}, "
                                               f"forgetting {f:+.2f})" for g, f, k in v))
    out += ["", "## Forgetting at matched gain", ""]
    if len(rep.matched):
        out += ["Read piecewise-linearly between the two frontier configurations that bracket the gain, never "
                "extrapolated; interval: the seed-and-item contrast of those two configurations."
                + (" Rows named `<method> path (...)` are read off that run's interpolation path (its Pareto set "
                   "over α; one seed: item interval)." if rep.paths else ""), "",
                "| target gain | method | forgetting [95% CI] | between | note |", "|---|---|---|---|---|"]
        for r in rep.matched.to_dict("records"):
            betw = (r["left"] if r["left"] == r["right"] else f"{r['left']} ~ {r['right']} (t={r['t']:.2f})") if r["reached"] else "–"
            out.append(f"| {r['target_gain']:+.2f} | {r['method']} | {_f(r['forgetting'], True)} "
                       f"{_ci(r['ci_low'], r['ci_high'])} | {betw} | {(r['reason'] or '').replace('|', '/')} |")
    else:
        out.append("The methods' frontiers share no range of target gain: no matched-gain reading.")
    out += ["", "## Method pairs (Holm-adjusted within each measure)", ""]
    if len(rep.pairs):
        out += ["Target gain and forgetting compare each method's representative configuration: "
                + "; ".join(f"{m}: {k} ({w})" for m, (k, w) in rep.representatives.items()) + ".", "",
                "| measure | at gain | a − b | a point | b point | difference [95% CI] | p | p (Holm) | significant |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in rep.pairs.to_dict("records"):
            tg = _f(r["target_gain"], True)
            out.append(f"| {r['measure']} | {tg} | {r['a']} − {r['b']} | {r['a_point'] or '–'} | {r['b_point'] or '–'} "
                       f"| {_f(r['diff'], True)} {_ci(r['ci_low'], r['ci_high'])} | {_p(r['p_value'])} "
                       f"| {_p(r['p_holm'])} | {'✓' if r['significant'] else ''} |")
    else:
        out.append("One method only: no pairs.")
    if rep.screen:
        out += ["", "## Drift screen", "",
                "Per configuration: target gain (seed mean) and output drift on general prompts (seed mean of the "
                "per-prompt KL, nats/token, [95% seed-and-item interval]). A configuration is screened out when "
                "another of its method has gain ≥ and a drift interval wholly below its own; the screen frontier "
                "is the Pareto set in (gain ≥, drift ≤).", "",
                "| configuration | gain | drift [95% CI] | screen frontier | kept | dominated by | full frontier |",
                "|---|---|---|---|---|---|---|"]
        ff = dict(zip(c["key"], c["frontier"]))
        for r in rep.screen["table"].to_dict("records"):
            full = "✓" if ff.get(r["key"]) else ("" if r["key"] in ff else "–")
            out.append(f"| {r['key']} | {_f(r['gain'], True)} | {_f(r['drift'], nd=4)} "
                       f"[{_f(r['drift_low'], nd=4)}, {_f(r['drift_high'], nd=4)}] | {'✓' if r['screen_frontier'] else ''} "
                       f"| {'✓' if r['kept'] else ''} | {r['dominated_by'] or ''} | {full} |")
        a = rep.screen.get("agreement")
        out.append("")
        if a:
            out.append(f"**Screen agreement:** the screen frontier equals the full frontier for {a['methods_equal']} of "
                       f"{a['methods']} methods ({100 * a['agreement']:.0f} %); the screen kept "
                       f"{a['full_frontier_kept']} of the {a['full_frontier_configs']} full-frontier configurations "
                       f"(recall {_f(100 * a['recall'], nd=0)} %).")
        else:
            out.append(f"Screen agreement: {rep.screen.get('note')}.")
    from peftarena_cli.report.sweep_paths import paths_markdown

    out += paths_markdown(rep.paths)
    out += ["", "## Points", "", "| method | lr | seed | steps | used | reason | path |", "|---|---|---|---|---|---|---|"]
    for r in rep.runs.to_dict("records"):
        out.append(f"| {r['method']} | {_fmt_lr(r['lr'])} | {r['seed']} | {_f(r['steps'], nd=0)} | "
                   f"{'yes' if r['used'] else '**excluded**'} | {(r['reason'] or '').replace('|', '/')} | {r['path']} |")
    if rep.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in rep.notes]
    return "\n".join(out) + "\n"


def summary_frame(configs):
    """A narrow view of the configurations for a terminal: name, seeds, gain and forgetting with
    their intervals, frontier."""
    import pandas as pd

    return pd.DataFrame({
        "configuration": configs["key"], "seeds": configs["seeds"],
        "gain [95% CI]": [f"{_f(v, True)} {_ci(lo, hi)}" for v, lo, hi in
                          zip(configs["gain"], configs["gain_low"], configs["gain_high"])],
        "forgetting [95% CI]": [f"{_f(v, True)} {_ci(lo, hi)}" for v, lo, hi in
                                zip(configs["forgetting"], configs["forgetting_low"], configs["forgetting_high"])],
        "frontier": ["✓" if f else "" for f in configs["frontier"]]})


# ---------------------------------------------------------------- the plane
def plot_sweep_plane(rep: SweepReport):
    """General score (x) against target score (y): every configuration's seed means with their
    seed-and-item intervals, the base, and one frontier line per method through its frontier points."""
    from peftarena_cli.report.plots import _mpl, method_colors

    plt = _mpl()
    c = rep.configs
    methods = list(dict.fromkeys(c["method"]))
    colors = method_colors(methods, base_name="\0")
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    bt, bg = rep.base
    ax.plot([bg], [bt], marker="*", ms=16, color="black", ls="none", label="base", zorder=5)
    for m in methods:
        d = c[c["method"] == m]
        col = colors[m]
        ax.errorbar(d["general"], d["target"],
                    xerr=[d["general"] - d["general_low"], d["general_high"] - d["general"]],
                    yerr=[d["target"] - d["target_low"], d["target_high"] - d["target"]],
                    fmt="o", color=col, ms=6, elinewidth=0.8, capsize=2, alpha=0.9, label=m, zorder=4)
        v = rep.vertices.get(m, [])
        if v:
            ax.plot([bg - f for _, f, _ in v], [bt + g for g, _, _ in v], "-", color=col, lw=1.8, zorder=3)
        for r in d.to_dict("records"):
            ax.annotate(f"{_fmt_lr(r['lr'])}" + ("" if r["n_seeds"] > 1 else " (1 seed)"), (r["general"], r["target"]),
                        xytext=(5, 4), textcoords="offset points", fontsize=7, color=col)
    if rep.paths:
        from peftarena_cli.report.sweep_paths import draw_paths

        draw_paths(ax, rep.paths, colors)
    # scores are percentages: bars that run past 0 or 100 (few seeds, t quantiles) are cut at the frame
    lo_x, hi_x = ax.get_xlim()
    lo_y, hi_y = ax.get_ylim()
    ax.set_xlim(max(lo_x, -2.0), min(hi_x, 102.0))
    ax.set_ylim(max(lo_y, -2.0), min(hi_y, 102.0))
    ax.set_xlabel("general score (seed mean; stability →)")
    ax.set_ylabel("target score (seed mean; plasticity ↑)")
    ax.set_title("Sweep: configurations (labelled by lr) and per-method frontiers"
                 + (";\ninterpolation paths dashed (α labelled)" if rep.paths else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- writing
def write_sweep_report(rep: SweepReport, out_dir, provenance=None) -> list[Path]:
    """Write the sweep report into ``out_dir`` (replaced as a whole, only when it is empty or a previous
    report), atomically."""
    from peftarena_cli.artifacts.atomic import atomic_dir, atomic_write_text
    from peftarena_cli.artifacts.tables import write_table
    from peftarena_cli.report.build import _default_permissions, check_report_dir
    from peftarena_cli.report.plots import close, save_figure

    out_dir = Path(out_dir)
    check_report_dir(out_dir)
    if provenance is not None:
        provenance.extra.setdefault("report_inputs", rep.inputs)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        write_table(rep.configs, tmp / "leaderboard.parquet", provenance)
        write_table(rep.runs, tmp / "sweep_runs.parquet", provenance)
        write_table(rep.frontiers, tmp / "sweep_frontiers.parquet", provenance)
        write_table(rep.matched, tmp / "sweep_matched_gain.parquet", provenance)
        write_table(rep.pairs, tmp / "sweep_pairs.parquet", provenance)
        if rep.paths:
            from peftarena_cli.report.sweep_paths import paths_frame

            write_table(paths_frame(rep.paths), tmp / "sweep_paths.parquet", provenance)
        if rep.screen:
            t = rep.screen["table"].copy()
            t["points"] = [",".join(p) for p in t["points"]]
            a = rep.screen.get("agreement") or {}
            t["full_frontier"] = t["key"].map(dict(zip(rep.configs["key"], rep.configs["frontier"])))
            t["agreement"] = a.get("agreement", math.nan)
            t["recall"] = a.get("recall", math.nan)
            write_table(t, tmp / "sweep_screen.parquet", provenance)
        atomic_write_text(tmp / "leaderboard.md", sweep_markdown(rep))
        fig = plot_sweep_plane(rep)
        save_figure(fig, tmp / "plane.png")
        save_figure(fig, tmp / "plane.svg")
        close(fig)
        written = sorted(p.name for p in tmp.iterdir())
        _default_permissions(tmp)
    return [out_dir / n for n in written]
