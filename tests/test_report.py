"""`peftarena report`: collection, leaderboard, Pareto frontier, correlations, plots, CLI, bad input."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from report_synth import MODULES, SCORES, make_runs  # noqa: E402

from peftarena_cli.artifacts.tables import read_table, write_table  # noqa: E402
from peftarena_cli.errors import InputNotFound, InvalidArtifact, OutputError, UsageError  # noqa: E402
from peftarena_cli.report.build import build_report, write_report  # noqa: E402
from peftarena_cli.report.collect import collect_results, table_kind  # noqa: E402
from peftarena_cli.report.correlations import average_ranks, correlation_table, pearson, spearman  # noqa: E402
from peftarena_cli.report.leaderboard import build_leaderboard, pareto_mask  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "peft_arena_results.csv"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return make_runs(tmp_path_factory.mktemp("report") / "runs", adapter_numel=(8, 16))


# ------------------------------------------------------------------ pure pieces
def test_pareto_mask_hand_case():
    # (target, general): a dominates c; b and a trade off; d equals a (neither dominates); e is NaN
    t = [50, 40, 45, 50, float("nan"), 30]
    g = [40, 50, 39, 40, 60, 50]
    assert pareto_mask(t, g).tolist() == [True, True, False, True, False, False]


def test_pearson_and_spearman_against_numpy_and_hand_ranks():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=9), rng.normal(size=9)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    # ties share the mean rank: hand-ranked
    xs, ys = [1.0, 2.0, 2.0, 3.0, 7.0], [1.0, 3.0, 2.0, 4.0, 0.5]
    assert average_ranks(xs).tolist() == [1.0, 2.5, 2.5, 4.0, 5.0]
    assert spearman(xs, ys) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4, 5], [2, 4, 3, 5, 1])[0, 1], abs=1e-12)
    assert math.isnan(pearson([1, 2], [2, 3]))  # fewer than 3 points
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # constant


def test_table_kinds_by_columns():
    assert table_kind(["task", "metric", "value", "n"]) == "eval_summary"
    assert table_kind(["alpha", "path", "target", "general", "target_score"]) == "curve"
    assert table_kind(["module", "layer", "kind", "index", "sigma", "p_diag", "delta_p", "energy"]) == "spectrum_index"
    assert table_kind(["module", "effective_rank", "delta_fro"]) == "spectrum_summary"
    assert table_kind(["module", "csd_abs", "csd_rel"]) == "csd"
    assert table_kind(["module", "cka", "raw_residual"]) == "act_geom"
    assert table_kind(["task", "id", "sample", "completion", "correct"]) is None  # per-sample rows
    assert table_kind(["step", "loss"]) is None


# ------------------------------------------------------------------ leaderboard
def test_leaderboard_values_against_direct_computation(runs):
    methods = collect_results([str(runs)])
    assert list(methods)[0] == "base" and set(methods) == set(SCORES)
    lb = build_leaderboard(methods).set_index("method")
    bt, bg, _ = SCORES["base"]
    for name, (t, g, _) in SCORES.items():
        assert lb.loc[name, "target"] == t and lb.loc[name, "general"] == g
        assert lb.loc[name, "target_gain"] == pytest.approx(t - bt)
        assert lb.loc[name, "forgetting"] == pytest.approx(bg - g)
    pts = [(SCORES[n][0], SCORES[n][1]) for n in lb.index]
    brute = [not any(a[0] >= p[0] and a[1] >= p[1] and a != p for a in pts) for p in pts]
    assert lb["pareto"].tolist() == brute
    assert lb.loc["lora", "trainable_params"] == 8 * 4 + 4 * 16  # from the safetensors header
    assert lb.loc["base", "trainable_params"] == 0
    # geometry aggregates, recomputed from the files directly
    spec, _ = read_table(runs / "lora" / "spectrum_summary.parquet")
    assert lb.loc["lora", "spec_delta_fro"] == pytest.approx(math.sqrt((spec["delta_fro"] ** 2).sum()))
    assert lb.loc["lora", "spec_effective_rank"] == pytest.approx(spec["effective_rank"].mean())
    csd, _ = read_table(runs / "lora" / "csd.parquet")
    one = csd[csd["alpha"] == 1.0]  # the fine-tune itself, not the α = 0.5 rows
    assert lb.loc["lora", "csd_un_general"] == pytest.approx(one["csd_un_general"].mean())
    assert lb.loc["lora", "csd_ratio_abs"] == pytest.approx(one["csd_ratio_abs"].mean())
    ag, _ = read_table(runs / "oft" / "act_geom.parquet")
    assert lb.loc["oft", "ag_cka_arith"] == pytest.approx(ag[ag["prompt_set"] == "arith"]["cka"].mean())
    assert math.isnan(lb.loc["base", "spec_delta_fro"])
    # order: base first, then by target descending
    assert list(lb.index) == ["base", "full", "dora", "lora", "oft", "vera"]


def test_module_selection_restricts_geometry(runs):
    lb = build_leaderboard(collect_results([str(runs)]), modules=r"layers\.1\.mlp\.down_proj").set_index("method")
    spec, _ = read_table(runs / "full" / "spectrum_summary.parquet")
    one = spec[spec["module"] == "model.layers.1.mlp.down_proj"]
    assert lb.loc["full", "spec_delta_fro"] == pytest.approx(float(one["delta_fro"].iloc[0]))


def test_correlations_match_numpy(runs):
    lb = build_leaderboard(collect_results([str(runs)]))
    corr = correlation_table(lb).set_index(["metric", "against"])
    tuned = lb[~lb["is_base"]]
    for metric in ("spec_delta_fro", "csd_abs_general", "ag_cka_arith"):
        for against in ("forgetting", "target_gain"):
            row = corr.loc[(metric, against)]
            assert row["n"] == 5
            assert row["pearson"] == pytest.approx(np.corrcoef(tuned[metric], tuned[against])[0, 1], abs=1e-9)
            rx = pd.Series(tuned[metric].to_numpy()).rank().to_numpy()
            ry = pd.Series(tuned[against].to_numpy()).rank().to_numpy()
            assert row["spearman"] == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-9)
    assert corr.loc[("ag_cka_general", "forgetting"), "pearson"] < 0  # more forgetting, lower CKA


def test_labels_and_single_files(runs):
    m = collect_results([f"mine={runs / 'lora'}", str(runs / "base" / "eval_target_summary.parquet"),
                         str(runs / "base" / "eval_general_summary.parquet")])
    assert list(m) == ["base", "mine"]
    lb = build_leaderboard(m).set_index("method")
    assert lb.loc["mine", "target_gain"] == SCORES["lora"][0] - SCORES["base"][0]
    # a method directory given directly is named after itself
    assert list(collect_results([str(runs / "oft")])) == ["oft"]


def test_curves_and_spectrum_collected(runs):
    rep = build_report([str(runs)])
    assert set(rep.curves) == {"lora", "oft"}
    assert rep.spectrum_module == "model.layers.1.mlp.down_proj"  # the middle layer's down_proj
    rep = build_report([str(runs)], spectrum_module="layers.0.self_attn.q_proj")
    assert rep.spectrum_module == "model.layers.0.self_attn.q_proj"


def test_plane_figure_has_points_paths_and_reference_panel(runs):
    from peftarena_cli.report.plots import close, plot_plane

    rep = build_report([str(runs)])
    fig = plot_plane(rep.leaderboard, rep.curves, points=rep.points)
    ax = fig.axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert set(SCORES) <= texts
    assert any(t.startswith("α=") for t in texts)
    # the frontier polyline goes through every Pareto point (methods and curve points), sorted by general score
    front = [line for line in ax.lines if line.get_label() == "Pareto frontier"][0]
    lb = rep.points[rep.points["pareto"]].sort_values("general")
    assert np.allclose(front.get_xdata(), lb["general"]) and np.allclose(front.get_ydata(), lb["target"])
    # each method's label is drawn in its marker's colour (the base's in black), so a label placed
    # nearer a neighbour's marker still names its own point
    from matplotlib.colors import to_rgba

    from peftarena_cli.report.plots import method_colors

    colors = method_colors(list(rep.leaderboard["method"]), "base")
    by_text = {t.get_text(): t for t in ax.texts}
    for name in rep.leaderboard["method"]:
        want = "black" if name == "base" else colors[name]
        assert to_rgba(by_text[name].get_color()) == to_rgba(want), name
    close(fig)
    ref = pd.DataFrame({"method": ["base", "full", "lora_r8"], "target": [30.0, 50.0, 40.0], "general": [50.0, 35.0, 45.0]})
    fig = plot_plane(rep.leaderboard, rep.curves, reference=ref, reference_title="Published")
    assert len(fig.axes) == 2 and {"lora_r8", "full", "base"} <= {t.get_text() for t in fig.axes[1].texts}
    close(fig)


@pytest.mark.skipif(not REFERENCE.is_file(), reason="../shared/reference is absent")
def test_reference_csv_selection():
    from peftarena_cli.report.reference import load_reference, parse_select

    df, title = load_reference(REFERENCE, parse_select("model=llama3.2-3b-instruct,domain=med"))
    raw = pd.read_csv(REFERENCE)
    raw = raw[(raw.regime == "sft") & (raw.model == "llama3.2-3b-instruct") & (raw.domain == "med")]
    assert df.set_index("method")["target"].to_dict() == raw.drop_duplicates("method").set_index("method")["target"].to_dict()
    assert "med" in title
    with pytest.raises(UsageError):
        load_reference(REFERENCE, parse_select("model=nope"))
    with pytest.raises(UsageError):
        parse_select("model")


def test_write_report_is_atomic_and_guards_foreign_dirs(runs, tmp_path, monkeypatch):
    rep = build_report([str(runs)])
    out = tmp_path / "rep"
    write_report(rep, out)
    before = (out / "leaderboard.md").read_text()
    import peftarena_cli.report.plots as plots

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "save_figure", boom)
    with pytest.raises(KeyboardInterrupt):
        write_report(rep, out)
    assert (out / "leaderboard.md").read_text() == before  # previous report intact
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temporary leftovers
    monkeypatch.undo()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    with pytest.raises(OutputError):
        write_report(rep, foreign)
    assert (foreign / "precious.txt").exists()


def test_conflicting_summaries_are_refused(runs, tmp_path):
    d = tmp_path / "two"
    d.mkdir()
    write_table(pd.DataFrame({"task": ["target"], "metric": ["target_score"], "value": [10.0], "n": [5]}), d / "a.parquet")
    write_table(pd.DataFrame({"task": ["target"], "metric": ["target_score"], "value": [20.0], "n": [5]}), d / "b.parquet")
    with pytest.raises(InvalidArtifact, match="target_score"):
        build_leaderboard(collect_results([str(d)]))


def test_library_errors(tmp_path):
    with pytest.raises(InputNotFound):
        collect_results([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArtifact):
        collect_results([str(tmp_path / "empty")])
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InvalidArtifact):
        collect_results([str(tmp_path / "x.csv")])


# ------------------------------------------------------------------ CLI
def test_cli_writes_the_report(cli, runs, tmp_path):
    out = tmp_path / "report"
    args = ["report", runs, "-o", out]
    if REFERENCE.is_file():
        args += ["--reference", REFERENCE]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""  # nothing on stdout: the report is a directory
    names = {p.name for p in out.iterdir()}
    assert {"plane.png", "plane.svg", "spectrum.png", "leaderboard.md", "leaderboard.parquet", "correlations.parquet"} <= names
    assert (out / "plane.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "vera" in (out / "plane.svg").read_text()
    lb, prov = read_table(out / "leaderboard.parquet")
    assert prov["command"] == "report" and "lora" in prov["extra"]["report_inputs"]
    assert lb.set_index("method").loc["full", "forgetting"] == pytest.approx(15.0)
    corr, _ = read_table(out / "correlations.parquet")
    assert list(corr.columns)[:5] == ["metric", "against", "pearson", "spearman", "n"]
    err = r.stderr
    assert "report written to" in err and "full" in err and "+32.00" in err
    md = (out / "leaderboard.md").read_text()
    assert "| full | 96 | 52.00 | 35.00 | +32.00 | +15.00 | – | – | ✓ |" in md  # no shared per-sample rows: no p


def test_multi_model_eval_summary_is_split(tmp_path):
    """eval-target --adapter A --adapter B --include-base writes one summary with a model column."""
    d = tmp_path / "evals"
    d.mkdir()
    rows = [("base", 20.0), ("runs/lora/train/final", 45.0), ("runs/oft/adapter.safetensors", 40.0)]
    write_table(pd.DataFrame({"model": [m for m, _ in rows], "task": "target", "metric": "target_score",
                              "value": [v for _, v in rows], "n": 10}), d / "target.summary.parquet")
    write_table(pd.DataFrame({"model": [m for m, _ in rows], "task": "general", "metric": "general_score",
                              "value": [50.0, 44.0, 48.0], "n": 10}), d / "general.summary.parquet")
    lb = build_leaderboard(collect_results([str(d)])).set_index("method")
    assert lb.loc["lora", "target_gain"] == 25.0 and lb.loc["oft", "forgetting"] == 2.0
    assert lb.loc["base", "is_base"]
    # one adapter (+ base) in a method's own directory: the adapter rows are that method's
    m = tmp_path / "mine"
    m.mkdir()
    write_table(pd.DataFrame({"model": ["base", "x/final"], "task": "target", "metric": "target_score",
                              "value": [20.0, 33.0], "n": 10}), m / "t.parquet")
    lb = build_leaderboard(collect_results([str(m)])).set_index("method")
    assert lb.loc["mine", "target_gain"] == 13.0


@pytest.mark.parametrize("case", ["missing", "empty_dir", "corrupt", "foreign_out", "bad_reference", "bad_select"])
def test_cli_bad_input(cli, case, runs, tmp_path):
    out = tmp_path / "out"
    args = [runs]
    code = 1
    if case == "missing":
        args = [tmp_path / "nope"]
    elif case == "empty_dir":
        (tmp_path / "e").mkdir()
        args = [tmp_path / "e"]
    elif case == "corrupt":
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "eval_summary.parquet").write_bytes(b"PAR1 not really")
        args = [tmp_path / "c" / "eval_summary.parquet"]
    elif case == "foreign_out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "bad_reference":
        (tmp_path / "ref.csv").write_text("method,score\nbase,1\n")
        args += ["--reference", tmp_path / "ref.csv"]
    elif case == "bad_select":
        args += ["--reference-select", "model"]
        code = 2
    r = cli("report", *args, "-o", out)
    assert r.returncode == code, r.stderr
    err = r.stderr
    assert err.startswith("error: ") and "hint: " in err and "Traceback" not in err
    if case == "foreign_out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_manifest_params_and_curve_endpoints(tmp_path):
    import json

    from peftarena_cli.report.build import with_endpoints

    runs = make_runs(tmp_path / "runs", methods=["base", "lora"], with_curve=False)
    (runs / "lora" / "train" / "final").mkdir(parents=True)
    (runs / "lora" / "train" / "manifest.json").write_text(json.dumps({"trainable_params": 2442240}))
    # a curve over interior α only: the report adds the base (α=0) and the method (α=1)
    write_table(pd.DataFrame({"alpha": [0.5], "path": ["native"], "target": [30.0], "general": [47.0]}),
                runs / "lora" / "curve.parquet")
    rep = build_report([str(runs)])
    lb = rep.leaderboard.set_index("method")
    assert lb.loc["lora", "trainable_params"] == 2442240
    c = rep.curves["lora"]
    assert c["alpha"].tolist() == [0.0, 0.5, 1.0]
    assert c["target"].tolist() == [SCORES["base"][0], 30.0, SCORES["lora"][0]]
    assert c["general"].tolist() == [SCORES["base"][1], 47.0, SCORES["lora"][1]]
    assert (c["path"] == "native").all()
    same = with_endpoints(c, rep.leaderboard, "lora")
    assert len(same) == 3  # nothing added twice
    # a second curve file with the general score only, at the same α: joined into one row
    write_table(pd.DataFrame({"alpha": [0.5, 0.5], "path": ["native", "native"], "target": [np.nan, 30.0],
                              "general": [46.0, np.nan]}), runs / "lora" / "curve_parts.parquet")
    (runs / "lora" / "curve.parquet").unlink()
    c = build_report([str(runs)]).curves["lora"]
    assert c["alpha"].tolist() == [0.0, 0.5, 1.0] and c["general"].tolist()[1] == 46.0 and c["target"].tolist()[1] == 30.0


def test_a_model_evaluated_without_adapter_belongs_to_its_directory(tmp_path):
    """eval labels a model run without --adapter "base"; in RUNS/full/ that model is the full fine-tune,
    while the same kind of file given on its own (no NAME=, no method directory) is the base."""
    from report_synth import eval_summaries

    from peftarena_cli.artifacts.tables import Provenance, write_table

    runs = tmp_path / "runs"
    for name, (t, g) in {"base": (10.0, 50.0), "full": (40.0, 30.0)}.items():
        (runs / name).mkdir(parents=True)
        ts, gs = eval_summaries(t, g)
        write_table(ts.assign(model="base"), runs / name / "eval_target_summary.parquet", Provenance(command="eval-target"))
        write_table(gs.assign(model="base"), runs / name / "eval_general_summary.parquet", Provenance(command="eval-general"))
    lb = build_leaderboard(collect_results([str(runs)])).set_index("method")
    assert lb.loc["full", "target"] == 40.0 and lb.loc["base", "target"] == 10.0
    assert lb.loc["full", "forgetting"] == pytest.approx(20.0)
    import shutil

    (tmp_path / "results").mkdir()
    shutil.copy(runs / "base" / "eval_target_summary.parquet", tmp_path / "results" / "base_eval.parquet")
    lone = collect_results([str(tmp_path / "results" / "base_eval.parquet"), f"full={runs / 'full'}"])
    assert set(lone) == {"base", "full"}


def test_report_uses_the_study_fluct_retention_and_recomputes_it_for_old_spectrum_tables():
    """spec_fluct_retention is the mean over modules of the fluctuation of the raw |ΔP_diag(i)|; a
    summary from before fluct_base_retention existed holds the old statistic under the name, so the
    report recomputes it from the per-index table (or leaves it out)."""
    import numpy as np
    import pandas as pd

    from peftarena_cli.report.leaderboard import geometry_columns
    from peftarena_cli.report.plots import spectrum_profiles

    rng = np.random.default_rng(0)
    rows, want = [], []
    for m in ("model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"):
        dp = rng.uniform(0, 1e-3, 12)
        for i in range(12):
            rows.append({"module": m, "index": i, "sigma": 3.0 - 0.1 * i, "p_diag": 3.0 - 0.1 * i + dp[i], "delta_p": dp[i], "energy": 1.0})
        xp = np.pad(dp, 2, mode="reflect")
        want.append(np.mean([abs(dp[i] - xp[i:i + 5].mean()) for i in range(12)]))
    index = pd.DataFrame(rows)
    old = pd.DataFrame({"module": ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"],
                        "effective_rank": [1.0, 2.0], "fluct_retention": [0.5, 0.7]})
    got = geometry_columns({"spectrum_summary": old, "spectrum_index": index})
    assert got["spec_fluct_retention"] == pytest.approx(np.mean(want), rel=1e-12)
    assert "spec_fluct_retention" not in geometry_columns({"spectrum_summary": old})
    new = old.assign(fluct_base_retention=[0.5, 0.7], fluct_retention=want)
    assert geometry_columns({"spectrum_summary": new})["spec_fluct_retention"] == pytest.approx(np.mean(want))
    _, ret, _ = spectrum_profiles(index, "model.layers.0.mlp.down_proj")
    np.testing.assert_array_equal(ret, index.delta_p.to_numpy()[:12])  # the plot reads the raw |ΔP|


def test_join_curves_takes_the_ends_from_the_evals(tmp_path):
    """scripts/join_curves.py --ends: an interior-only sweep gets α = 0 from the base's evals and
    α = 1 from the method's (the leaderboard's values), and rewind's keep-target criterion can pick
    on the joined curve; a sweep that has its ends keeps its own rows."""
    import runpy

    from peftarena_cli.artifacts.tables import Provenance, read_table, write_table
    from peftarena_cli.interpolation.criteria import pick_alpha

    make_runs(tmp_path / "runs", methods=["base", "lora"], with_geometry=False, with_curve=False)
    write_table(pd.DataFrame({"path": ["native"], "alpha": [0.5], "target": [40.0]}), tmp_path / "t.parquet",
                Provenance(command="interpolate"))
    write_table(pd.DataFrame({"path": ["native"], "alpha": [0.5], "general": [49.0]}), tmp_path / "g.parquet",
                Provenance(command="interpolate"))
    script = str(Path(__file__).parents[1] / "scripts" / "join_curves.py")
    argv = sys.argv
    try:
        sys.argv = [script, str(tmp_path / "t.parquet"), str(tmp_path / "g.parquet"),
                    "--ends", str(tmp_path / "runs" / "base"), str(tmp_path / "runs" / "lora"), "-o", str(tmp_path / "c.parquet")]
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv = argv
    curve, _ = read_table(tmp_path / "c.parquet")
    rows = {float(a): (t, g) for a, t, g in zip(curve["alpha"], curve["target"], curve["general"])}
    assert rows == {0.0: SCORES["base"][:2], 0.5: (40.0, 49.0), 1.0: SCORES["lora"][:2]}
    # keep 80% of the gain (20 -> 45): the smallest α whose target >= 20 + 0.8 * 25 = 40 is 0.5
    assert pick_alpha(curve, "keep-target:0.8").alpha == 0.5


def test_a_report_inside_runs_is_not_read_back_as_a_method(cli, tmp_path):
    """make arena writes RUNS/report and reruns `report RUNS` after each method: the second report
    must see the same methods and points as the first, not a method named "report"."""
    import shutil

    runs = make_runs(tmp_path / "runs")
    out = runs / "report"
    r = cli("report", runs, "-o", out)
    assert r.returncode == 0, r.stderr
    first = (out / "leaderboard.md").read_text()
    pts1, _ = read_table(out / "points.parquet")
    shutil.copytree(out, tmp_path / "first")
    r = cli("report", runs, "-o", out)
    assert r.returncode == 0, r.stderr
    pts2, _ = read_table(out / "points.parquet")
    assert "report" not in set(pts2["method"]) and "report" not in (out / "leaderboard.md").read_text().split("## ")[1]
    assert pts2.equals(pts1) and (out / "leaderboard.md").read_text() == first
