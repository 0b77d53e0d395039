"""`--max-memory` for csd and act-geom: a budget that forces several module groups (several passes
over the prompts) gives the single-pass tables bit for bit; bad budgets fail before any work."""

import pandas as pd
import pytest

from peftarena_cli.activations import ActGeomConfig, CsdConfig, run_act_geom, run_csd
from peftarena_cli.activations.budget import BudgetTooSmall, Unit, parse_size, plan_groups
from peftarena_cli.artifacts.tables import read_table
from peftarena_cli.errors import UsageError


@pytest.mark.parametrize("text,want", [("12G", 12 * 1024 ** 3), ("12GiB", 12 * 1024 ** 3), ("12gb", 12 * 1024 ** 3),
                                       ("800M", 800 * 1024 ** 2), ("1.5T", int(1.5 * 1024 ** 4)), ("4096K", 4096 * 1024),
                                       ("1000B", 1000), (" 2 g ", 2 * 1024 ** 3)])
def test_sizes_parse_in_binary_units(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["12", "12GG", "12X", "G", "-3G", "0G", "12 gigs", "1iB", ""])
def test_unit_typos_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_size(text)


def test_packing_keeps_order_and_fits():
    units = [Unit([f"m{i}"], hold=h, work=w) for i, (h, w) in enumerate([(10, 5), (10, 30), (40, 5), (5, 5), (5, 5)])]
    plan = plan_groups(units, 50, what="t")
    assert [n for g in plan.groups for n in g] == [f"m{i}" for i in range(5)]
    assert plan.groups == [["m0", "m1"], ["m2", "m3"], ["m4"]] and all(p <= 50 for p in plan.peaks)
    with pytest.raises(BudgetTooSmall) as e:
        plan_groups(units, 44, what="t")
    assert e.value.needed == 45 and "'m2'" in str(e.value) and "smallest budget" in str(e.value)
    with pytest.raises(BudgetTooSmall, match="--save-sums"):
        plan_groups(units, 60, what="t", keep_all=True, keep_all_reason="--save-sums")


def _smallest_budget(run, cfg_type, **kw):
    """Run with a 1-byte budget: the error names the smallest budget that would do."""
    with pytest.raises(BudgetTooSmall) as e:
        run(cfg_type(max_memory=1, **kw))
    assert e.value.needed > 1
    return e.value.needed


def test_csd_in_several_groups_equals_one_pass(tiny_model_dir, tiny_lora_dir):
    kw = dict(base=str(tiny_model_dir), adapter=str(tiny_lora_dir), general="arith:6", target="arith:5",
              batch_size=4, alphas=(0.5, 1.0), form="stats")
    one = run_csd(CsdConfig(**kw))
    assert one.plan.passes == 1
    capped = run_csd(CsdConfig(max_memory=_smallest_budget(run_csd, CsdConfig, **kw), **kw))
    assert capped.plan.passes >= 3
    # modules reading one input (q/k/v, gate/up) stay in one group: they share one S
    for g in capped.plan.groups:
        kinds = {n.rsplit(".", 1)[-1] for n in g}
        assert not ({"q_proj", "k_proj", "v_proj"} & kinds) or {"q_proj", "k_proj", "v_proj"} <= kinds
    pd.testing.assert_frame_equal(one.table, capped.table, check_exact=True)
    assert len(one.table) == 28


def test_act_geom_in_several_groups_equals_one_pass(tiny_model_dir, tiny_lora_dir):
    kw = dict(base=str(tiny_model_dir), adapter=str(tiny_lora_dir), prompts=["arith:6", "arith:4"], batch_size=4,
              gram_sample=12)
    one = run_act_geom(ActGeomConfig(**kw))
    assert one.plan.passes == 1
    capped = run_act_geom(ActGeomConfig(max_memory=_smallest_budget(run_act_geom, ActGeomConfig, **kw), **kw))
    assert capped.plan.passes >= 4
    pd.testing.assert_frame_equal(one.table, capped.table, check_exact=True)
    assert one.table.prompt_set.nunique() == 2 and len(one.table) == 28


def test_plan_is_printed_and_bad_budgets_fail_before_any_work(cli, tmp_path, tiny_model_dir, tiny_lora_dir, monkeypatch):
    out = tmp_path / "g.parquet"
    r = cli("act-geom", tiny_model_dir, tiny_lora_dir, "-p", "arith:4", "--max-memory", "64M", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "act-geom memory plan: 14 modules in 1 group(s)" in r.stderr and "budget 64.0 MiB (--max-memory)" in r.stderr
    assert read_table(out)[1]["extra"]["memory_plan"]["groups"] == 1

    import peftarena_cli.activations.collect as collect

    def no_work(*a, **k):
        raise AssertionError("collection started")

    monkeypatch.setattr(collect, "collect_pair_sums", no_work)
    monkeypatch.setattr(collect, "collect_input_moments", no_work)
    bad = tmp_path / "bad.parquet"
    for cmd in (["act-geom", tiny_model_dir, tiny_lora_dir, "-p", "arith:4"],
                ["csd", tiny_model_dir, tiny_lora_dir, "--general", "arith:4"]):
        r = cli(*cmd, "--max-memory", "1K", "-o", bad)
        assert r.returncode == 1, r.stderr
        assert "the smallest budget that would do is" in r.stderr and "--max-memory" in r.stderr
        assert "Traceback" not in r.stderr and not bad.exists()
        r = cli(*cmd, "--max-memory", "12GG", "-o", bad)
        assert r.returncode == 2 and "expected a size with a unit" in r.stderr, r.stderr
    # saving the sums needs every module at once: a budget for one group only is refused
    r = cli("act-geom", tiny_model_dir, tiny_lora_dir, "-p", "arith:4", "--max-memory", "8M", "--save-sums",
            tmp_path / "s.st", "-o", bad)
    assert r.returncode == 1 and "--save-sums holds every module at once" in r.stderr, r.stderr
    assert not (tmp_path / "s.st").exists() and not bad.exists()


def test_csd_projected_form_equals_the_statistics_form(tiny_model_dir, tiny_lora_dir):
    """For one low-rank adapter, r × r statistics of A h (one pass, no S) give the S tables: csd_abs to
    float64 rounding, E‖W0 h‖² from the base's float32 outputs to float32 rounding. `auto` takes
    this form where S needs more than one pass."""
    kw = dict(base=str(tiny_model_dir), adapter=str(tiny_lora_dir), general="arith:6", target="arith:5",
              batch_size=4, alphas=(0.5, 1.0))
    stats = run_csd(CsdConfig(form="stats", **kw)).table
    proj = run_csd(CsdConfig(form="projected", **kw)).table
    assert set(stats.csd_form) == {"stats"} and set(proj.csd_form) == {"projected"}
    assert list(stats.columns) == list(proj.columns) and list(stats.module) == list(proj.module)
    for c in stats.columns.drop("csd_form"):
        if stats[c].dtype.kind == "f":
            tol = 1e-5 if ("rel" in c or "w0h2" in c) else 1e-6  # the dense path's ΔW is float32
            assert (abs(stats[c] - proj[c]) <= tol * abs(stats[c])).all(), c
        else:
            assert (stats[c] == proj[c]).all(), c
    need = _smallest_budget(run_csd, CsdConfig, **{**kw, "form": "stats"})
    auto = run_csd(CsdConfig(max_memory=need, **kw))
    assert auto.plan is None and set(auto.table.csd_form) == {"projected"}
    pd.testing.assert_frame_equal(auto.table, proj, check_exact=True)
    with pytest.raises(UsageError, match="--form projected"):
        run_csd(CsdConfig(form="projected", keep_stats=True, **kw))
