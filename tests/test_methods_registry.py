"""The one method registry (peftarena_cli.methods): every entry is complete, its facts are true of the
adapters PEFT writes, and the layers that used to keep their own lists read it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from paths_helpers import build_adapter

from peftarena_cli import methods

ROOT = Path(__file__).resolve().parents[1]


def test_every_entry_is_complete_and_its_former_resolves():
    for m in methods.METHODS.values():
        assert m.name == m.name.lower() and m.summary and m.lr > 0 and m.arena_lr > 0
        assert callable(methods.load_former(m)), m.name
        assert (m.peft_config == "") == (m.name == "full") and (not m.peft_config or callable(methods.resolve(m.peft_config)))
        assert (m.peft_type is None) == (m.name == "full")
        assert bool(m.markers) == (m.peft_type is not None)
        assert (m.native is None) == (not m.scaled), m.name
        assert m.native is None or m.native in methods.NATIVE_KINDS
        assert not m.linear or m.native == "scale", m.name
    assert methods.peft_types() == ("LORA", "ADALORA", "VERA", "IA3", "OFT", "BOFT", "MISS")


@pytest.mark.parametrize("config, metadata, want", [
    ({"peft_type": "LORA"}, None, "lora"),
    ({"peft_type": "LORA", "use_dora": True}, None, "dora"),
    ({"peft_type": "LORA", "init_lora_weights": "pissa_niter_4"}, None, "pissa"),
    ({"peft_type": "LORA", "init_lora_weights": "milora"}, None, "milora"),
    ({"peft_type": "LORA", "init_lora_weights": "pissa", "use_dora": True}, None, "dora"),
    # a PiSSA adapter saved converted reads as a plain LoRA; peftarena's metadata names it
    ({"peft_type": "LORA", "init_lora_weights": True}, {"method": "pissa"}, "pissa"),
    # a declared name of another PEFT type is not believed
    ({"peft_type": "LORA"}, {"method": "oft"}, "lora"),
    ({"peft_type": "OFT"}, None, "oft"),
    ({"peft_type": "PREFIX_TUNING"}, None, None),
])
def test_method_name(config, metadata, want):
    assert methods.method_name(config, metadata) == want


def test_arena_learning_rates_come_from_the_registry(capsys):
    assert methods.main(["lr", "vera"]) == 0
    assert float(capsys.readouterr().out) == methods.get_method("vera").arena_lr
    assert methods.main(["lr", "nope"]) == 1 and "unknown method" in capsys.readouterr().err
    # arena.mk repeats no learning rate: every finetune it would run gets the registry's arena_lr,
    # and LR_<method> on the make command line still overrides one
    import shutil
    import subprocess
    import sys

    if shutil.which("make") is None:
        pytest.skip("no make")
    names = ["full", "lora", "vera", "oft"]
    cmd = ["make", "-n", "--no-print-directory", "arena-stages", "RUNS=/nonexistent-runs", f"METHODS={' '.join(names)}",
           "INTERP=", f"PY={sys.executable}", "LR_oft=0.123"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    got = dict(re.findall(r"finetune \S+ -o /nonexistent-runs/(\w+)/train .*?--lr (\S+)", out))
    assert {n: float(v) for n, v in got.items()} == {**{n: methods.get_method(n).arena_lr for n in names}, "oft": 0.123}


def test_module_of_key_uses_every_registry_marker():
    from peftarena_cli.artifacts.keys import module_of_key

    for m in methods.METHODS.values():
        for marker in m.markers:
            key = f"base_model.model.model.layers.3.mlp.up_proj.{marker}.weight"
            assert module_of_key(key) == ("model.layers.3.mlp.up_proj", f"{marker}.weight")
    assert module_of_key("base_model.vera_A") is None


@pytest.mark.parametrize("method", ["lora", "dora", "vera", "miss", "oft"])
def test_native_path_linearity_flag_is_true_of_the_update(tiny_model_dir, tmp_path, method):
    """The registry's ``linear``: ΔW of the natively scaled adapter at α = 0.4 is 0.4 ΔW(1) exactly when
    the flag says so (ΔW formed by the method's former, independently of the path code's own check)."""
    import torch

    from peftarena_cli.artifacts.adapters import load_adapter, save_adapter
    from peftarena_cli.artifacts.safetensors_io import resolve_model
    from peftarena_cli.interpolation.native import base_row_norms_from_weights, magnitude_modules, scale_adapter_tensors
    from peftarena_cli.weights import iter_module_deltas, open_finetuned
    from peftarena_cli.artifacts.safetensors_io import WeightSource

    ad_dir = build_adapter(tiny_model_dir, method, tmp_path / method)
    ad = load_adapter(ad_dir)
    base = WeightSource.from_ref(resolve_model(str(tiny_model_dir)))
    norms = None
    if method == "dora":
        from peftarena_cli.artifacts.keys import base_key

        norms = base_row_norms_from_weights(lambda m: base.get(base_key(base, m)), magnitude_modules(ad.tensors))
    ad.tensors = scale_adapter_tensors(ad.config, ad.tensors, 0.4, base_row_norms=norms)
    save_adapter(ad, tmp_path / "scaled")
    one = {md.name: md.dense() for md in iter_module_deltas(base, open_finetuned(ad_dir))}
    part = {md.name: md.dense() for md in iter_module_deltas(base, open_finetuned(tmp_path / "scaled"))}
    linear = all(torch.allclose(part[n], 0.4 * one[n], rtol=1e-4, atol=1e-6) for n in one)
    assert linear == methods.get_method(method).linear


def test_one_method_name_in_every_table(tiny_model_dir, tmp_path):
    """A PiSSA adapter saved converted (a plain LoRA config; peftarena's metadata names the method)
    is `pissa` in spectrum's method column and in the interpolation curve's, and the report joins
    that curve to the method."""
    from report_synth import eval_summaries

    from peftarena_cli.artifacts.adapters import load_adapter, save_adapter
    from peftarena_cli.artifacts.tables import Provenance, write_table
    from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model
    from peftarena_cli.interpolation.interpolate import InterpolateConfig, interpolate
    from peftarena_cli.report.build import build_report
    from peftarena_cli.weights import iter_module_deltas, open_finetuned

    ad = load_adapter(build_adapter(tiny_model_dir, "lora", tmp_path / "lora"))
    save_adapter(ad, tmp_path / "pissa-adapter", extra_metadata={"method": "pissa"})
    ft = open_finetuned(tmp_path / "pissa-adapter")
    base = WeightSource.from_ref(resolve_model(str(tiny_model_dir)))
    assert {md.method for md in iter_module_deltas(base, ft)} == {"pissa"}  # spectrum's column
    res = interpolate(InterpolateConfig(base=str(tiny_model_dir), finetuned=str(tmp_path / "pissa-adapter"),
                                        alphas="0,0.5,1", device="cpu"))
    assert set(res.curve["method"]) == {"pissa"} and res.path == "native"
    runs = tmp_path / "runs"
    for name, (t, g) in {"base": (20.0, 50.0), "pissa": (40.0, 45.0)}.items():
        (runs / name).mkdir(parents=True)
        ts, gs = eval_summaries(t, g)
        write_table(ts, runs / name / "eval_target_summary.parquet", Provenance(command="eval-target"))
        write_table(gs, runs / name / "eval_general_summary.parquet", Provenance(command="eval-general"))
    write_table(res.curve.assign(target=[20.0, 30.0, 40.0], general=[50.0, 48.0, 45.0]),
                runs / "pissa" / "curve.parquet", Provenance(command="interpolate"))
    assert set(build_report([str(runs)]).curves) == {"pissa"}


def test_sweep_checkpoints_keep_the_method_name(tiny_model_dir, tmp_path):
    """A native-path checkpoint of a PiSSA adapter (saved converted) still reads as pissa."""
    from peftarena_cli.artifacts.adapters import load_adapter, save_adapter
    from peftarena_cli.interpolation.interpolate import InterpolateConfig, interpolate
    from peftarena_cli.weights import open_finetuned

    ad = load_adapter(build_adapter(tiny_model_dir, "lora", tmp_path / "lora"))
    save_adapter(ad, tmp_path / "pissa-adapter", extra_metadata={"method": "pissa"})
    interpolate(InterpolateConfig(base=str(tiny_model_dir), finetuned=str(tmp_path / "pissa-adapter"), alphas="0.5",
                                  save_checkpoints=str(tmp_path / "ckpt"), device="cpu"))
    assert open_finetuned(tmp_path / "ckpt" / "alpha-0.5000").method == "pissa"


@pytest.mark.parametrize("target,extra,want_jobs,want_threads", [
    # regime sets: RL_JOBS=2 by default, 1 where nvidia-smi is found (one GPU's memory)
    ("arena-regimes-run", ["REGIMES=rlvr"], 1 if shutil.which("nvidia-smi") else 2,
     None if shutil.which("nvidia-smi") else 2),
    ("arena-regimes-run", ["REGIMES=rlvr", "RL_JOBS=1"], 1, None),
    ("arena-regimes-run", ["REGIMES=rlvr", "RL_JOBS=3", "NCORES=2"], 3, 1),  # at least one thread a job
    ("arena-run", [], 1, None),                               # the SFT arena: one job at a time
    ("arena-run", ["ARENA_JOBS=2"], 2, 2),
])
def test_arena_jobs_split_the_cores(target, extra, want_jobs, want_threads):
    """arena.mk's JOBS knobs: the stage sub-make runs with -jN, and each job with cores/N intra-op threads
    (OMP_NUM_THREADS) only when N > 1; one job keeps torch's own thread count."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make")
    cmd = ["make", "-n", "--no-print-directory", target, "MAKE=echo make", "NCORES=4", *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if "arena-stages" in x)
    jobs = re.search(r" -j(\d+) --output-sync=line ", line)
    threads = re.match(r"OMP_NUM_THREADS=(\d+) ", line)
    assert (int(jobs.group(1)) if jobs else 1) == want_jobs
    assert (int(threads.group(1)) if threads else None) == want_threads
