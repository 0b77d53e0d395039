"""Reliability: never destroy an input, never run foreign code, never use the network unasked, never
silently compute on garbage. One test (or a few) per defect; each fails on the code before the fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import run_cli

TINY_FT = ["--max-length", "512", "--batch-size", "2", "--steps", "1", "--lr", "1e-3"]


def _lora_file(tiny_lora_dir, tmp_path) -> Path:
    """A single-file adapter (config embedded), as peftarena writes them."""
    from peftarena_cli.artifacts.adapters import load_adapter, save_adapter

    p = tmp_path / "a.safetensors"
    save_adapter(load_adapter(tiny_lora_dir), p)
    return p


def _snapshot(p: Path) -> dict:
    if p.is_file():
        return {p.name: p.read_bytes()}
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


# ---- 1. an output that is also an input -----------------------------------------------------------

def test_spectrum_output_onto_its_adapter_is_refused(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    ad = _lora_file(tiny_lora_dir, tmp_path)
    before = ad.read_bytes()
    r = cli("spectrum", tiny_model_dir, ad, "-o", ad)
    assert r.returncode == 1, r.stderr
    assert "also an input" in r.stderr
    assert ad.read_bytes() == before


def test_output_inside_an_input_directory_is_refused(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    snap = _snapshot(tiny_lora_dir)
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", tiny_lora_dir / "spectrum.parquet")
    assert r.returncode == 1 and "inside the input directory" in r.stderr
    assert _snapshot(tiny_lora_dir) == snap


def test_csd_save_stats_onto_the_base_is_refused(tiny_model_dir, tmp_path, cli):
    base = tmp_path / "base.safetensors"
    shutil.copy(tiny_model_dir / "model.safetensors", base)
    before = base.read_bytes()
    r = cli("csd", base, "--target", "arith:4", "--save-stats", base)
    assert r.returncode == 1 and "also an input" in r.stderr, r.stderr
    assert base.read_bytes() == before


def test_eval_target_output_onto_adapter_and_derived_summary_suffix(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    ad = _lora_file(tiny_lora_dir, tmp_path)
    before = ad.read_bytes()
    r = cli("eval-target", tiny_model_dir, "--adapter", ad, "--limit", "1", "-o", ad)
    assert r.returncode == 1 and "also an input" in r.stderr, r.stderr
    assert ad.read_bytes() == before
    assert not (tmp_path / "a.summary.safetensors").exists()
    from peftarena_cli.cli.evaluate import _summary_path

    # the derived summary of any -o is a Parquet (or CSV) name, never e.g. .safetensors
    assert _summary_path(Path("x/out.safetensors"), None) == Path("x/out.summary.parquet")
    assert _summary_path(Path("x/out.csv"), None) == Path("x/out.summary.csv")


def test_table_output_onto_a_non_parquet_file_or_weights_name_is_refused(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    notes = tmp_path / "notes.dat"
    notes.write_text("my notes")
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", notes)
    assert r.returncode == 1 and "not a Parquet table" in r.stderr
    assert notes.read_text() == "my notes"
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", tmp_path / "new.safetensors")
    assert r.returncode == 1 and not (tmp_path / "new.safetensors").exists()


def test_finetune_onto_the_base_directory_is_refused(tiny_model_dir, tmp_path, cli):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    snap = _snapshot(base)
    r = cli("finetune", base, "-o", base, "--overwrite", *TINY_FT)
    assert r.returncode == 1 and "also an input" in r.stderr, r.stderr
    assert _snapshot(base) == snap


def test_rewind_onto_its_adapter_is_refused(tiny_lora_dir, tmp_path, cli):
    ad = _lora_file(tiny_lora_dir, tmp_path)
    before = ad.read_bytes()
    r = cli("rewind", ad, "--alpha", "0.5", "-o", ad, "--overwrite")
    assert r.returncode == 1 and "also an input" in r.stderr
    assert ad.read_bytes() == before


# ---- 2. --alphas bound ------------------------------------------------------------------------------

def test_alphas_grid_is_bounded_before_allocation():
    from peftarena_cli.errors import UsageError
    from peftarena_cli.interpolation.alphas import MAX_POINTS, parse_alphas

    t = time.perf_counter()
    with pytest.raises(UsageError, match="more than"):
        parse_alphas("0:1:1e-9")
    assert time.perf_counter() - t < 1.0
    assert len(parse_alphas("0:1:0.001")) == MAX_POINTS
    with pytest.raises(UsageError):
        parse_alphas("0:inf:1", allow_extrapolate=True)


def test_interpolate_alphas_bomb_exits_2_at_once(tiny_model_dir, tiny_lora_dir, cli):
    r = cli("interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0:1:1e-9")
    assert r.returncode == 2 and "--alphas" in r.stderr


def test_layers_range_is_bounded():
    from peftarena_cli.cli.spectrum import parse_layers
    from peftarena_cli.errors import UsageError

    with pytest.raises(UsageError):
        parse_layers(["0-100000000000"])


# ---- 3. strict loading ------------------------------------------------------------------------------

def _renamed_single_file(tiny_model_dir, tmp_path) -> Path:
    from safetensors.torch import load_file, save_file

    d = tmp_path / "renamed"
    shutil.copytree(tiny_model_dir, d)
    sd = load_file(str(d / "model.safetensors"))
    save_file({k.replace("model.", "transformer.", 1): v for k, v in sd.items()}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    return d / "model.safetensors"


def test_single_file_with_foreign_tensor_names_is_refused(tiny_model_dir, tiny_lora_dir, tmp_path):
    from peftarena_cli.artifacts.loading import load_model
    from peftarena_cli.errors import IncompatibleInputs

    f = _renamed_single_file(tiny_model_dir, tmp_path)
    with pytest.raises(IncompatibleInputs, match="missing tensor.*unexpected tensor.*transformer\\."):
        load_model(str(f), device="cpu")
    # a bare file with its config in the metadata goes through load_state_dict: strict as well
    from safetensors.torch import load_file, save_file

    cfg = (tiny_model_dir / "config.json").read_text()
    bare = tmp_path / "bare" / "m.safetensors"
    bare.parent.mkdir()
    save_file(load_file(str(f)), str(bare), metadata={"format": "pt", "config": cfg})
    with pytest.raises(IncompatibleInputs, match="missing tensor"):
        load_model(str(bare), device="cpu")
    m, _tok, _ = load_model(str(tiny_model_dir), device="cpu")  # the real one still loads (tied lm_head)
    assert m is not None


def test_eval_target_on_foreign_names_exits_1(tiny_model_dir, tmp_path, cli):
    f = _renamed_single_file(tiny_model_dir, tmp_path)
    r = cli("eval-target", f, "--limit", "1", "-o", tmp_path / "t.parquet")
    assert r.returncode == 1 and "do not match its architecture" in r.stderr, r.stderr


def test_header_dtype_must_match_byte_size(tmp_path):
    import struct

    import torch
    from safetensors.torch import save_file

    from peftarena_cli.artifacts.safetensors_io import check_safetensors
    from peftarena_cli.errors import InvalidArtifact

    p = tmp_path / "w.safetensors"
    save_file({"x": torch.ones(4, 4, dtype=torch.float32)}, str(p))
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["x"]["dtype"] = "F16"  # 64 bytes relabelled as 16 half floats would be 32 bytes
    hb = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    p.write_bytes(raw[:8] + hb + raw[8 + n:])
    with pytest.raises(InvalidArtifact, match="holds 64 bytes"):
        check_safetensors(p)


def _nan_adapter(tiny_lora_dir, tmp_path) -> Path:
    import torch

    from peftarena_cli.artifacts.adapters import load_adapter, save_adapter

    ad = load_adapter(tiny_lora_dir)
    k = next(k for k in ad.tensors if "lora_B" in k)
    ad.tensors[k] = ad.tensors[k].clone()
    ad.tensors[k][0, 0] = float("nan")
    p = tmp_path / "nan.safetensors"
    save_adapter(ad, p)
    return p


@pytest.mark.parametrize("cmd", ["eval-target", "rewind", "act-geom", "spectrum"])
def test_nan_adapter_one_policy(cmd, tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    bad = _nan_adapter(tiny_lora_dir, tmp_path)
    out = tmp_path / "out.parquet"
    args = {
        "eval-target": ["eval-target", tiny_model_dir, "--adapter", bad, "--limit", "1", "-o", out],
        "rewind": ["rewind", bad, "--alpha", "0.5", "-o", tmp_path / "r.safetensors"],
        "act-geom": ["act-geom", tiny_model_dir, bad, "-p", "arith:2", "-o", out],
        "spectrum": ["spectrum", tiny_model_dir, bad, "-o", out],
    }[cmd]
    r = cli(*args)
    assert r.returncode == 1, r.stderr
    assert "NaN or Inf" in r.stderr and "internal error" not in r.stderr
    assert not out.exists() and not (tmp_path / "r.safetensors").exists()


# ---- 4/5. network, foreign code -----------------------------------------------------------------------

def test_mistyped_local_path_is_not_a_hub_lookup(tmp_path, monkeypatch):
    from peftarena_cli.artifacts import safetensors_io as weights
    from peftarena_cli.errors import InputNotFound

    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(weights, "download_hub_model", lambda s: pytest.fail("tried the hub"))
    with pytest.raises(InputNotFound, match="no such file or directory: 'runs/lora'"):
        weights.resolve_model("runs/lora")


def test_hub_failure_says_no_such_local_path(monkeypatch):
    import huggingface_hub

    from peftarena_cli.artifacts import safetensors_io as weights
    from peftarena_cli.errors import ModelNotAvailable

    def boom(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    with pytest.raises(ModelNotAvailable, match="no such local path 'nosuchorg-x/model'; tried the .*hub as well"):
        weights.resolve_model("nosuchorg-x/model")


def test_telemetry_is_off_in_a_peftarena_process(tmp_path):
    code = ("import os, sys\nfrom peftarena_cli.cli.app import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('HF_HUB_DISABLE_TELEMETRY'), os.environ.get('DO_NOT_TRACK'))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.stdout.strip().splitlines()[-1] == "1 1"


def test_auto_map_model_is_refused_without_prompting(tiny_model_dir, tmp_path):
    d = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "ran"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    r = run_cli("eval-target", d, "--limit", "1", "-o", tmp_path / "t.parquet", input_bytes=b"y\n")
    assert r.returncode == 1, r.stderr
    assert b"auto_map" in r.stderr and r.stdout == b""
    assert not marker.exists()


SOCKET_GUARD = """
import socket, sys
_real = socket.socket
class _Guard(_real):
    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None and family in (socket.AF_INET, socket.AF_INET6, -1):
            with open(%r, "a") as f:
                f.write("socket %%s %%s\\n" %% (family, " ".join(sys.argv[-3:])))
        super().__init__(family, type, proto, fileno)
socket.socket = _Guard
_gai = socket.getaddrinfo
def _getaddrinfo(host, *a, **k):
    with open(%r, "a") as f:
        f.write("dns %%s\\n" %% host)
    return _gai(host, *a, **k)
socket.getaddrinfo = _getaddrinfo
"""


def test_no_command_opens_a_socket_on_local_paths(tiny_model_dir, tiny_lora_dir, tmp_path):
    """Every command, run on local paths in a subprocess whose socket creation and DNS lookups are
    logged (sitecustomize), opens no network socket and resolves no name."""
    log = tmp_path / "net.log"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SOCKET_GUARD % (str(log), str(log)))
    env = {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "",
           "PEFTARENA_HOME": str(tmp_path / "home")}
    env = {k: v for k, v in env.items()}
    run = tmp_path / "run"
    steps = [
        ["finetune", tiny_model_dir, "-o", run, *TINY_FT],
        ["eval-target", tiny_model_dir, "--adapter", run / "final", "--limit", "1", "--max-new-tokens", "4",
         "-o", tmp_path / "target.parquet"],
        ["eval-general", tiny_model_dir, "--adapter", run / "final", "--limit", "1", "--max-new-tokens", "4",
         "-o", tmp_path / "general.parquet"],
        ["spectrum", tiny_model_dir, run / "final", "-o", tmp_path / "spectrum.parquet"],
        ["csd", tiny_model_dir, run / "final", "--target", "arith:2", "--general", "general:2", "-o", tmp_path / "csd.parquet"],
        ["act-geom", tiny_model_dir, run / "final", "-p", "arith:2", "-o", tmp_path / "act.parquet"],
        ["interpolate", tiny_model_dir, run / "final", "--alphas", "0,1", "--eval", "target", "--limit", "1",
         "--max-new-tokens", "4", "-o", tmp_path / "curve.parquet"],
        ["rewind", run / "final", "--alpha", "0.5", "-o", tmp_path / "rewound.safetensors"],
    ]
    for args in steps:
        r = run_cli(*args, env=env)
        assert r.returncode == 0, (args[0], r.stderr.decode()[-2000:])
    methods = tmp_path / "results" / "lora"
    methods.mkdir(parents=True)
    shutil.copy(tmp_path / "target.parquet", methods / "eval_target.parquet")
    shutil.copy(tmp_path / "general.parquet", methods / "eval_general.parquet")
    r = run_cli("report", tmp_path / "results", "-o", tmp_path / "report", env=env)
    assert r.returncode in (0, 1), r.stderr.decode()[-2000:]  # what it says about 2 rows is report's business
    assert not log.exists(), log.read_text()


# ---- 7. numeric options ------------------------------------------------------------------------------

@pytest.mark.parametrize("args,option", [
    (["eval-target", "B", "--limit", "-3"], "--limit"),
    (["eval-target", "B", "--limit", "0"], "--limit"),
    (["eval-general", "B", "--limit", "-3"], "--limit"),
    (["eval-target", "B", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["eval-target", "B", "--batch-size", "0"], "--batch-size"),
    (["eval-general", "B", "--batch-size", "-1"], "--batch-size"),
    (["eval-target", "B", "--temperature", "-1"], "--temperature"),
    (["eval-target", "B", "-n", "0"], "-n"),
    (["eval-target", "B", "--k", "abc"], "--k"),
    (["csd", "B", "A", "--target", "arith", "--alpha", "nan"], "--alpha"),
    (["csd", "B", "A", "--target", "arith", "--alpha", "100"], "--alpha"),
    (["interpolate", "B", "A", "--limit", "0"], "--limit"),
])
def test_numeric_options_exit_2_naming_the_option(args, option, cli):
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert option in r.stderr, r.stderr


# ---- 8/9. run directories, locks, provenance, stale temporaries -----------------------------------------

def test_failed_finetune_leaves_nothing_and_rerun_works(tiny_model_dir, tmp_path, cli):
    out = tmp_path / "runs" / "lora" / "train"  # parents missing too (README step 1)
    r = cli("finetune", tiny_model_dir, "-o", out, "--max-length", "4", "--batch-size", "2", "--steps", "1")
    assert r.returncode == 1, r.stderr
    assert not out.exists() and not (tmp_path / "runs").exists()
    r = cli("finetune", tiny_model_dir, "-o", out, *TINY_FT)
    assert r.returncode == 0, r.stderr
    assert (out / "final").is_dir()


def test_second_finetune_writer_is_refused(tiny_model_dir, tmp_path):
    from peftarena_cli.training.checkpoints import RunLock
    from peftarena_cli.errors import OutputError

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from peftarena_cli.training.checkpoints import RunLock
        RunLock(Path({str(out)!r})).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"pid {holder.pid}"):
            RunLock(out).acquire()
        r = run_cli("finetune", tiny_model_dir, "-o", out, *TINY_FT)
        assert r.returncode == 1 and f"pid {holder.pid}" in r.stderr.decode(), r.stderr.decode()
    finally:
        holder.kill()
        holder.wait()
    RunLock(out).acquire().release()  # the kernel dropped the dead holder's lock


def test_rewind_refuses_a_curve_of_another_adapter(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    import pandas as pd

    from peftarena_cli.artifacts.tables import Provenance, write_table

    other = _nan_adapter(tiny_lora_dir, tmp_path)  # any other file: a different identity
    curve = tmp_path / "curve.parquet"
    prov = Provenance(command="interpolate")
    prov.add_input("finetuned", str(other), "0123456789abcdef")
    write_table(pd.DataFrame({"alpha": [0.0, 1.0], "target": [0.1, 0.5], "general": [0.5, 0.4], "path": "native"}),
                curve, prov)
    r = cli("rewind", tiny_lora_dir, "--curve", curve, "--pick", "max-target", "-o", tmp_path / "out")
    assert r.returncode == 1 and "another fine-tune" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_interpolate_checkpoints_of_another_sweep_are_not_mixed(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    from peft import LoraConfig

    from helpers import make_adapter

    ck = tmp_path / "points"
    r = cli("interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0,1", "--save-checkpoints", ck,
            "-o", tmp_path / "c1.parquet")
    assert r.returncode == 0, r.stderr
    other = make_adapter(tiny_model_dir, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], lora_dropout=0.0),
                         tmp_path / "other", seed=5)
    r = cli("interpolate", tiny_model_dir, other, "--alphas", "0.5", "--save-checkpoints", ck, "-o", tmp_path / "c2.parquet")
    assert r.returncode == 1 and "another sweep" in r.stderr, r.stderr
    assert sorted(p.name for p in ck.glob("alpha-*")) == ["alpha-0.0000", "alpha-1.0000"]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "alpha-0.5000").mkdir()
    r = cli("interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0", "--save-checkpoints", junk)
    assert r.returncode == 1 and "not a peftarena sweep" in r.stderr


def test_stale_tmp_of_a_killed_writer_is_cleaned(tmp_path):
    from peftarena_cli.artifacts.atomic import atomic_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".tmp-smollm2-135m.{pid}.abcd1234"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    old_style = tmp_path / ".tmp-smollm2-135m.zz9x8y7w"
    old_style.mkdir()
    os.utime(old_style, (time.time() - 3 * 86400,) * 2)
    live = tmp_path / f".tmp-smollm2-135m.{os.getppid()}.live0000"  # a running writer's: kept
    live.mkdir()
    with atomic_dir(tmp_path / "smollm2-135m", overwrite=True) as t:
        (t / "config.json").write_text("{}")
    assert not stale.exists() and not old_style.exists() and live.exists()


# ---- 10. expected I/O failures are user errors ---------------------------------------------------------

@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_is_refused_before_the_work(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", ro / "s.parquet")
    finally:
        ro.chmod(0o755)
    assert r.returncode == 1 and "not writable" in r.stderr and "internal error" not in r.stderr


@pytest.mark.parametrize("cmd", ["eval-target", "spectrum"])
def test_table_output_in_a_missing_directory_is_refused_before_the_work(cmd, tiny_model_dir, tiny_lora_dir,
                                                                      tmp_path, cli, monkeypatch):
    """-o (and eval's derived --summary) in a directory that does not exist: exit 1 before any model is
    loaded (the atomic writer would refuse it only after the whole evaluation), nothing created."""
    import peftarena_cli.artifacts.loading as loading

    out = tmp_path / "no" / "such" / "t.parquet"
    args = ([tiny_model_dir, "--adapter", tiny_lora_dir, "--limit", "1"] if cmd == "eval-target"
            else [tiny_model_dir, tiny_lora_dir])
    r = cli(cmd, *args, "-o", out)
    assert r.returncode == 1, r.stderr
    assert "does not exist" in r.stderr and "create the directory first" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "no").exists()
    # the --summary of eval alone in a missing directory is refused too
    r = cli("eval-target", tiny_model_dir, "--limit", "1", "-o", tmp_path / "t.parquet",
            "--summary", tmp_path / "gone" / "s.parquet")
    assert r.returncode == 1 and "--summary" in r.stderr and not (tmp_path / "t.parquet").exists()


def test_disk_full_and_refused_pickle_are_user_errors(monkeypatch, capsys):
    import errno
    import pickle

    from peftarena_cli.cli import app

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.parquet")

    def pickled():
        raise pickle.UnpicklingError("Weights only load failed")

    import typer

    for exc, text in ((full, "No space left on device"), (pickled, "refused to load a pickled file")):
        cmd = typer.Typer()
        cmd.command("boom")(exc)
        cmd.command("noop")(lambda: None)
        monkeypatch.setattr(app, "app", cmd)
        with pytest.raises(SystemExit) as e:
            app.main(["boom"])
        err = capsys.readouterr().err
        assert e.value.code == 1 and text in err and "internal error" not in err, err


def test_cuda_without_cuda_is_a_user_error(tiny_model_dir, tiny_lora_dir, cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "--device", "cuda", "-o", "-")
    assert r.returncode == 1 and "CUDA is not available" in r.stderr and "internal error" not in r.stderr


# ---- 11. newcomer snags --------------------------------------------------------------------------------

def test_quiet_after_the_subcommand_and_in_its_help(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    r = cli("spectrum", "--help")
    assert "--quiet" in r.stdout.decode()
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", tmp_path / "s.parquet", "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = cli("eval-target", tiny_model_dir, "--limit", "1", "--max-new-tokens", "2", "-o", tmp_path / "t.parquet", "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # no score table, no log lines
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", tmp_path / "s2.parquet")
    assert "wrote" in r.stderr  # -q does not stick to later invocations in the same process


def test_models_list_on_a_pipe_is_a_table():
    r = run_cli("models", "list")
    assert r.returncode == 0 and not r.stdout.startswith(b"PAR1") and b"smollm2-135m" in r.stdout
    r = run_cli("models", "list", "--parquet")
    assert r.returncode == 0 and r.stdout.startswith(b"PAR1")


def test_quiet_silences_library_bars_after_transformers_is_loaded(tiny_model_dir, tmp_path, cli):
    """A second invocation in one process: transformers, already imported, must still go quiet."""
    r = cli("eval-target", tiny_model_dir, "--limit", "1", "--max-new-tokens", "2", "-o", tmp_path / "a.parquet")
    assert r.returncode == 0
    r = cli("eval-target", tiny_model_dir, "--limit", "1", "--max-new-tokens", "2", "-o", tmp_path / "t.parquet", "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
