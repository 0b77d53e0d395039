"""Method defaults follow the PEFT-Arena study's training code; rsLoRA and LoRA+ train and are analysable.

The table below is the study's value of each default with where its code sets it (repository
Sphere-AI-Lab/PEFT-Arena: run.py, train/train_sft.sh, train/peft_arena_verl/trainer/fsdp_sft_trainer.py,
train/peft_arena_verl/trainer/config/sft_trainer.yaml, configs/train/*.yaml). Where ours differ on
purpose, the row carries our value and the reason (docs/methods.md, "Defaults and the study's").
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from peftarena_cli import methods
from peftarena_cli.training import methods as training_methods

RUN = "run.py"
SH = "train/train_sft.sh"
TRAINER = "train/peft_arena_verl/trainer/fsdp_sft_trainer.py"

# The study's LoRA-family defaults: rank 8, alpha 16, dropout 0.05 (run.py:270-272, train_sft.sh:33-35),
# target modules all-linear (sft_trainer.yaml:63), SFT learning rate 2e-4 (run.py:28, train_sft.sh:27).
LORA = {"rank": (8, RUN + ":270"), "alpha": (16, RUN + ":271"), "dropout": (0.05, RUN + ":272"),
        "target_modules": ("all-linear", "sft_trainer.yaml:63"), "lr": (2e-4, RUN + ":28")}

# method -> field -> (the study's value, its source) or (the study's value, its source, ours, why ours differs)
STUDY = {
    "lora": {**LORA, "init": (True, "sft_trainer.yaml:51 init_lora_weights")},
    "dora": {**LORA, "use_dora": (True, SH + ":134")},
    "rslora": {**LORA, "use_rslora": (True, SH + ":138; " + TRAINER + ":182")},
    "loraplus": {**LORA, "loraplus_lr_ratio": (16, TRAINER + ":544")},
    "pissa": {**LORA, "init": ("pissa", RUN + ":286 (a pre-initialised adapter, --peft_adapter_path)",
                               "pissa", "the study's init script is not in its repository; PEFT's own pissa init")},
    "milora": {**LORA, "init": ("milora", RUN + ":286 (a pre-initialised adapter, --peft_adapter_path)",
                                True, "PEFT has no milora init: B = 0 in the config, set by milora_init after wrapping")},
    "adalora": {**LORA,
                # AdaLoraConfig(r=lora_rank) (fsdp_sft_trainer.py:154-162) ignores r: PEFT's init_r 12, target_r 8
                "rank": (8, TRAINER + ":156 (target_r, PEFT default)"),
                "init_r": (12, "PEFT AdaLoraConfig default init_r"),
                "tinit": (0, "PEFT default; the study never calls update_and_allocate (no rank reallocation)",
                          10, "ours reallocates ranks between 10 % and 80 % of the steps (AdaLoRA's point)")},
    "vera": {"rank": (256, RUN + ":279"), "dropout": (0.05, SH + ":181"), "lr": (2e-4, RUN + ":28"),
             "target_modules": ("all-linear", "sft_trainer.yaml:63")},
    "ia3": {"lr": (2e-4, RUN + ":28"), "target_modules": ("all-linear", "sft_trainer.yaml:63"),
            "feedforward_modules": (["down_proj"], TRAINER + ":174")},
    "oft": {"block_size": (16, RUN + ":275"), "dropout": (0.0, TRAINER + ":210 (OFTConfig's module_dropout default)"),
            "lr": (2e-4, RUN + ":28"), "target_modules": ("all-linear", "sft_trainer.yaml:63")},
    "miss": {"rank": (8, TRAINER + ":145"), "dropout": (0.05, TRAINER + ":146"), "lr": (2e-4, RUN + ":28"),
             "target_modules": ("all-linear", "sft_trainer.yaml:63")},
    "keeplora": dict(LORA),  # train_sft.sh:128-132, 141 (lora_variant=keeplora, the LoRA family's shape)
    "full": {"lr": (5e-5, "configs/train/sft_full_qwen_math.yaml:22")},
}
# registry methods the study does not train (their defaults are ours alone)
NOT_IN_STUDY = {"boft", "coft"}


def _ours(name: str, tiny_model) -> dict:
    """Every default of ``name`` as `peftarena finetune` would train it: the resolved choice and the
    PEFT config its builder makes (100 steps)."""
    ch = training_methods.resolve_method(name)
    got = {"lr": ch.lr, "rank": ch.rank, "alpha": ch.alpha, "block_size": ch.block_size,
           "target_modules": ch.target_modules}
    got.update({k: v for k, v in ch.method.defaults.items() if k not in got})
    cfg = training_methods.peft_config(ch, 100, tiny_model)
    if cfg is None:
        return got
    d = cfg.to_dict()
    for key in ("lora_dropout", "vera_dropout", "miss_dropout", "module_dropout"):
        if key in d:
            got["dropout"] = d[key]
    got.update({"use_rslora": d.get("use_rslora"), "use_dora": d.get("use_dora"), "init": d.get("init_lora_weights"),
                "init_r": d.get("init_r"), "tinit": d.get("tinit"), "feedforward_modules": d.get("feedforward_modules")})
    if d.get("peft_type") == "ADALORA":
        got["rank"] = d["target_r"]
        got["tinit"] = round(100 * d["tinit"] / d["total_step"])  # in percent of the steps
    if d.get("lora_alpha") is not None and "alpha" in ch.method.takes:
        assert d["lora_alpha"] == ch.alpha  # the config trains with the resolved alpha
    return got


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)


@pytest.mark.parametrize("name", list(STUDY))
def test_defaults_follow_the_study(name, tiny_model):
    if name not in methods.METHODS:
        pytest.skip(f"{name} is not in this registry")
    ours = _ours(name, tiny_model)
    for field, row in STUDY[name].items():
        study, source = row[0], row[1]
        want = row[2] if len(row) > 2 else study
        got = ours.get(field)
        if field == "feedforward_modules":
            got = sorted(got or [])
        assert got == want, f"{name}.{field}: ours {got!r}, the study's {study!r} ({source})"


def test_every_method_of_the_study_has_a_row_and_the_docs_table_names_them():
    from pathlib import Path

    assert set(methods.METHODS) - set(STUDY) <= NOT_IN_STUDY, "a new method needs its row in STUDY"
    doc = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    section = doc.split("## Defaults and the study's", 1)[1].split("\n## ", 1)[0]
    head = next(line for line in section.splitlines() if line.startswith("| method"))
    col = [c.strip() for c in head.split("|")[1:-1]].index("lr (ours = study's)")
    rows = {c[0].strip("`"): c for c in ([x.strip() for x in line.split("|")[1:-1]]
                                         for line in section.splitlines() if line.startswith("| `"))}
    for m in methods.METHODS.values():
        assert m.name in rows, f"docs/methods.md defaults table lacks {m.name}"
        assert float(rows[m.name][col]) == m.lr, f"docs/methods.md: {m.name}'s lr is {m.lr:g}, its row says otherwise"


def test_rank_override_keeps_the_scaling_rule_of_each_method():
    # LoRA keeps alpha/r; rsLoRA keeps alpha (its scaling alpha/sqrt(r) is the rank-stabilised one)
    assert training_methods.resolve_method("lora", rank=32).alpha == 16 / 8 * 32
    assert training_methods.resolve_method("rslora", rank=32).alpha == 16
    assert training_methods.resolve_method("rslora", rank=32, alpha=4).alpha == 4


def test_old_adapters_of_the_previous_defaults_still_read(tiny_model_dir, tmp_path):
    """Adapters written under the previous defaults (OFT blocks of 32, PiSSA alpha 8) are read by their
    own config: the block size from the saved generator's length, the scaling from lora_alpha."""
    from peft import LoraConfig, OFTConfig

    from helpers import make_adapter
    from peftarena_cli.artifacts.safetensors_io import WeightSource
    from peftarena_cli.weights import iter_module_deltas, open_finetuned

    base = WeightSource(tiny_model_dir / "model.safetensors")
    oft = make_adapter(tiny_model_dir, OFTConfig(r=0, oft_block_size=32, target_modules=["q_proj"]), tmp_path / "oft",
                       scale=0.01)
    md = next(iter_module_deltas(base, open_finetuned(oft)))
    assert md.method == "oft" and md.rot_blocks.shape[-1] == 32
    lora = make_adapter(tiny_model_dir, LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa",
                                                   target_modules=["q_proj"]), tmp_path / "pissa8")
    md = next(iter_module_deltas(base, open_finetuned(lora)))
    assert md.method == "pissa"
    from safetensors.torch import load_file

    sd = load_file(str(lora / "adapter_model.safetensors"))
    raw_b = next(v for k, v in sd.items() if k.endswith(md.name + ".lora_B.weight"))
    # the residual form's factors are [s·B, −U_r Σ_r] with s = alpha / r = 2 from the saved config (the new
    # default alpha 16 would give 4): multiplying by 2 is exact in float32
    torch.testing.assert_close(md.factors[0][:, :4], raw_b * 2, rtol=0, atol=0)


# ---- rsLoRA and LoRA+: trainable, merged as PEFT merges, analysable

@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A 2-step rsLoRA and a 2-step LoRA+ run (`peftarena finetune`'s core) at a learning rate that moves
    the factors visibly."""
    from peftarena_cli.training.runner import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("trained")
    out = {}
    for m in ("rslora", "loraplus"):
        res = finetune(FinetuneConfig(base=str(tiny_model_dir), output=str(root / m), method=m, steps=2, batch_size=2,
                                      save_every=2, lr=1e-2, seed=0, argv=["test"]))
        assert res.steps == 2
        out[m] = root / m / "final"
    return out


def test_rslora_merged_weights_equal_peft_merge_on_every_module(trained, tiny_model_dir):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from peftarena_cli.artifacts.safetensors_io import WeightSource
    from peftarena_cli.weights import iter_module_deltas, open_finetuned

    ad = trained["rslora"]
    cfg = json.loads((ad / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is True and cfg["r"] == 8 and cfg["lora_alpha"] == 16 and cfg["lora_dropout"] == 0.05
    s = 16 / math.sqrt(8)  # rsLoRA's scaling; LoRA's would be 16 / 8
    base_model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    w0s = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
    merged = PeftModel.from_pretrained(base_model, str(ad)).merge_and_unload().state_dict()
    sd = load_file(str(ad / "adapter_model.safetensors"))
    ft = open_finetuned(ad)
    assert ft.method == "rslora"
    mds = list(iter_module_deltas(WeightSource(tiny_model_dir / "model.safetensors"), ft))
    linear = [k[: -len(".weight")] for k, v in w0s.items() if v.ndim == 2 and "layers." in k]
    assert sorted(md.name for md in mds) == sorted(linear)  # every linear module of the decoder layers
    eps = torch.finfo(torch.float32).eps
    for md in mds:
        key = md.name + ".weight"
        a = next(v for k, v in sd.items() if k.endswith(md.name + ".lora_A.weight"))
        b = next(v for k, v in sd.items() if k.endswith(md.name + ".lora_B.weight"))
        hand = s * (b.double() @ a.double())  # the update by hand, in float64
        d_peft = merged[key].double() - w0s[key].double()
        d_ours = md.dense().double()
        # float32 on both sides: the product's r = 8 terms and the scaling (r + 2 roundings per entry) and, for
        # PEFT, the addition to W0 and the subtraction here (one rounding of |W0| each)
        bound = (8 + 4) * eps * (float((s * b.abs().double() @ a.abs().double()).norm()) + 2 * float(w0s[key].norm()))
        assert float((d_ours - hand).norm()) <= bound, md.name
        assert float((d_peft - hand).norm()) <= bound, md.name
        assert float(hand.norm()) > 100 * bound, f"{md.name}: training moved too little for the check to tell"


def test_loraplus_optimizer_gives_b_ratio_times_the_learning_rate_sgd(tiny_model_dir):
    """One SGD step with the LoRA+ optimizer: A moves by -lr·∂L/∂A, B by -16·lr·∂L/∂B (by hand)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftarena_cli.weights.lora import loraplus_optimizer

    ch = training_methods.resolve_method("loraplus")
    ratio = ch.method.defaults["loraplus_lr_ratio"]
    assert ratio == 16
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    torch.manual_seed(0)
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "down_proj"],
                                         init_lora_weights=False))  # B ≠ 0 so that A gets a gradient too
    lr = 1e-3
    opt = loraplus_optimizer(ch, pm, torch.optim.SGD, {"lr": lr}, 0.0)
    named = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in named.items()}
    ids = torch.tensor([[5, 70, 80, 90, 100, 33, 44, 120]])
    pm(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in named.items()}
    opt.step()
    eps = torch.finfo(torch.float32).eps
    n_a = n_b = 0
    for n, p in named.items():
        step = ratio * lr if "lora_B" in n else lr
        want = before[n] - step * grads[n]
        # SGD's p - step·g in float32: one rounding of the product and one of the difference per entry
        assert (p.detach() - want).abs().max() <= 2 * eps * (before[n].abs() + step * grads[n].abs()).max(), n
        assert grads[n].abs().max() > 0, n
        n_a += "lora_A" in n
        n_b += "lora_B" in n
    assert n_a == n_b > 0
    lrs = sorted({g["lr"] for g in opt.param_groups if g["params"]})
    assert lrs == [lr, ratio * lr]


def test_loraplus_first_adam_step_moves_b_at_ratio_times_lr(cli, tiny_model_dir, tmp_path):
    """End to end through the trainer: B starts at 0, and Adam's first step moves each entry by
    lr_B·|g|/(|g| + 1e-8) ≤ lr_B; for the largest gradient entry (≫ 1e-8 here) that is lr_B to
    within 1e-3. So max|B| after one step is 16·lr for LoRA+ and lr for LoRA."""
    from safetensors.torch import load_file

    lr = 1e-3
    got = {}
    for m in ("lora", "loraplus"):
        r = cli("finetune", tiny_model_dir, "-o", tmp_path / m, "--method", m, "--steps", "1", "--batch-size", "2",
                "--lr", str(lr), "--lr-scheduler", "constant", "--warmup-steps", "0", "--seed", "0")
        assert r.returncode == 0, r.stderr
        sd = load_file(str(tmp_path / m / "final" / "adapter_model.safetensors"))
        got[m] = max(float(v.abs().max()) for k, v in sd.items() if "lora_B" in k)
    assert lr * (1 - 1e-3) <= got["lora"] <= lr * (1 + 1e-6)
    assert 16 * lr * (1 - 1e-3) <= got["loraplus"] <= 16 * lr * (1 + 1e-6)
    man = json.loads((tmp_path / "loraplus" / "manifest.json").read_text())
    assert man["method"]["method"] == "loraplus"


@pytest.mark.parametrize("method", ["rslora", "loraplus"])
def test_new_methods_are_analysable_by_spectrum_and_interpolate(method, trained, tiny_model_dir, tmp_path, cli):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from peftarena_cli.artifacts.tables import read_table

    ad = trained[method]
    r = cli("spectrum", tiny_model_dir, ad, "--table", "summary", "-o", tmp_path / "summary.parquet")
    assert r.returncode == 0, r.stderr
    df, prov = read_table(tmp_path / "summary.parquet")
    assert len(df) and set(df["method"]) == {method} and prov["extra"]["method"] == method

    r = cli("interpolate", tiny_model_dir, ad, "--alphas", "0,0.5,1", "--save-checkpoints", tmp_path / "ck",
            "-o", tmp_path / "curve.parquet")
    assert r.returncode == 0, r.stderr
    curve, _ = read_table(tmp_path / "curve.parquet")
    assert set(curve["method"]) == {method} and set(curve["path"]) == {"native"}
    # the native path scales B by α and keeps A: the α = 0.5 checkpoint, tensor by tensor
    orig = load_file(str(ad / "adapter_model.safetensors"))
    half = tmp_path / "ck" / "alpha-0.5000" / "adapter_model.safetensors"
    got = load_file(str(half))
    for k, v in orig.items():
        torch.testing.assert_close(got[k], 0.5 * v if "lora_B" in k else v, rtol=0, atol=0)
    with safe_open(str(half), "pt") as f:
        assert f.metadata().get("method") == method


# ---- a run started under the previous defaults resumes with them

def test_a_run_started_under_old_defaults_resumes_with_its_own(tiny_model_dir, tmp_path, monkeypatch):
    """OFT's default block size changed from 32 to 16: a run started with 32 (the default then) resumes
    with 32, the block size its checkpoints were saved with, not today's 16."""
    import dataclasses

    from safetensors.torch import load_file

    from peftarena_cli.training.runner import FinetuneConfig, finetune

    out = tmp_path / "oft"

    def cfg(**kw):
        return FinetuneConfig(base=str(tiny_model_dir), output=str(out), method="oft", steps=4, save_every=2,
                              batch_size=2, seed=0, argv=["t"], **kw)

    old = dataclasses.replace(methods.METHODS["oft"], defaults={"block_size": 32})
    monkeypatch.setitem(methods.METHODS, "oft", old)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg(), _interrupt_after=2)
    monkeypatch.undo()
    assert methods.get_method("oft").defaults["block_size"] == 16
    notes = []
    res = finetune(cfg(resume=True), log=notes.append)
    assert res.resumed_from == 2 and res.steps == 4
    assert any("block_size 32" in n for n in notes), notes
    sd = load_file(str(out / "final" / "adapter_model.safetensors"))
    gen = next(v for k, v in sd.items() if k.endswith("oft_R.weight"))
    assert gen.shape[-1] == 32 * 31 // 2  # the upper triangle of a 32 x 32 block
    assert json.loads((out / "manifest.json").read_text())["method"]["block_size"] == 32


def test_as_started_takes_what_the_command_line_left_to_the_defaults():
    ch = training_methods.resolve_method("pissa")
    assert (ch.alpha, ch.dropout) == (16, 0.05)
    # a manifest of the previous defaults (alpha 8, no dropout recorded: every method trained without)
    rec = {"method": "pissa", "rank": 8, "alpha": 8, "block_size": None, "lr": 2e-4}
    got, changed = training_methods.as_started(ch, rec, {"rank": None, "alpha": None, "block_size": None, "lr": None})
    assert (got.alpha, got.dropout, changed) == (8, 0.0, ["alpha", "dropout"])
    # a value given on the command line wins (the run key then says whether it is the same run)
    ch = training_methods.resolve_method("pissa", alpha=32)
    got, changed = training_methods.as_started(ch, rec, {"alpha": 32})
    assert got.alpha == 32 and changed == ["dropout"]
    # another method's record is not applied
    ch = training_methods.resolve_method("lora")
    assert training_methods.as_started(ch, rec, {}) == (ch, [])


def test_new_methods_in_make_arena_and_sweeps(capsys):
    """rsLoRA and LoRA+ run in `make arena ARENA_METHODS=...` at their registry arena_lr, and sweeps
    take their grids from it (0.33, 1, 3 times 5e-4)."""
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    for name in ("rslora", "loraplus"):
        assert methods.main(["lr", name]) == 0 and float(capsys.readouterr().out) == 5e-4
        assert methods.sweep_lrs(name) == [1.65e-4, 5e-4, 1.5e-3]
    if shutil.which("make") is None:
        pytest.skip("no make")
    root = Path(__file__).resolve().parents[1]
    cmd = ["make", "-n", "--no-print-directory", "arena-stages", "RUNS=/nonexistent-runs", "METHODS=rslora loraplus",
           "INTERP=", f"PY={sys.executable}"]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True).stdout
    got = dict(re.findall(r"finetune \S+ -o /nonexistent-runs/(\w+)/train .*?--lr (\S+)", out))
    assert {k: float(v) for k, v in got.items()} == {"rslora": 5e-4, "loraplus": 5e-4}
    assert "--method rslora" in out and "--method loraplus" in out
