"""Each method has one home: its registry entry (peftarena_cli/methods.py) and its own file(s) under
weights/. No other module branches on a method name, and a method defined through the registry
alone (here HRA, entirely inside this test) trains, is formed and is counted like a built-in one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from peftarena_cli import methods

PKG = Path(__file__).resolve().parent.parent / "peftarena_cli"

# Where method names (and PEFT type names) may be written as string literals: the registry and the
# methods' own files. A file that must name a method for a while goes here with the reason beside
# it; the list may only shrink.
HOMES = {
    "methods.py": "the registry",
    "weights/": "the methods' own files (formers, PEFT configs, checks, hooks)",
}


def _in_home(rel: str) -> bool:
    return any(rel == h or (h.endswith("/") and rel.startswith(h)) for h in HOMES)


def method_name_literals(root: Path) -> list[str]:
    """``file:line: literal`` for every string constant equal to a method name or a PEFT type, and
    every comparison with a ``.native`` attribute, in ``root``'s modules outside the homes."""
    names = {n for n in methods.METHODS} | set(methods.peft_types())
    found = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        if _in_home(rel):
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
            elif isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(isinstance(s, ast.Attribute) and s.attr == "native" for s in sides):
                    found.append(f"{rel}:{node.lineno}: compares .native (use the entry's rotates/moves_magnitude)")
    return found


def test_no_module_outside_the_registry_and_weights_names_a_method():
    found = method_name_literals(PKG)
    assert not found, "method names outside their homes (read a registry field instead):\n" + "\n".join(found)


def test_the_scan_sees_a_branch_on_a_method_name(tmp_path):
    # the scan above is only worth something if it finds the branches it forbids
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "x.py").write_text('if name == "oft":\n    pass\n')
    (tmp_path / "runner.py").write_text('if choice.method.name == "adalora":\n    pass\n'
                                        'if entry.native == "rotation":\n    pass\n'
                                        'T = {"LORA"}\n')
    assert sorted(method_name_literals(tmp_path)) == [
        "runner.py:1: 'adalora'", "runner.py:3: compares .native (use the entry's rotates/moves_magnitude)",
        "runner.py:5: 'LORA'"]


def test_training_keeps_only_generic_code():
    # every built-in method's PEFT config, shape check and hooks live in its own file under weights/
    for m in methods.METHODS.values():
        for ref in (m.peft_config, m.check, m.post_wrap, m.on_optimizer_step):
            if ref:
                assert ref.startswith("peftarena_cli.weights."), (m.name, ref)
                assert callable(methods.resolve(ref)), (m.name, ref)
    src = (PKG / "training" / "methods.py").read_text(encoding="utf-8")
    assert "from peft import" not in src.replace("from peft import TaskType", "")


def test_full_fine_tuning_is_the_entry_without_an_adapter():
    full = methods.full_method()
    assert full.is_full and full.peft_type is None and not full.peft_config
    assert [m.name for m in methods.METHODS.values() if m.is_full] == [full.name]


# ---- a toy method through the registry only: HRA (PEFT's HRAConfig), as docs/methods.md adds it

HOOK_CALLS: dict[str, list] = {"check": [], "post_wrap": [], "step": []}


def hra_parts(module: str, w0, ft, device: str, svd) -> dict:
    """W1 = W0 H, H = Π_i (I − 2 û_i û_iᵀ): the former of docs/methods.md, "Adding a method"."""
    import torch

    from peftarena_cli.artifacts.keys import expect_shape, raise_missing
    from peftarena_cli.weights.finetuned import unsupported

    u = ft.modules[module].get("hra_u")
    if u is None:
        raise_missing(module, "hra_u")
    expect_shape(u, (w0.shape[1], None), module, "hra_u")
    if ft.config.get("apply_GS"):
        unsupported(ft, "apply_GS (Gram-Schmidt orthogonalised reflections) is not supported")
    u = u.to(device, torch.float32)
    u = u / u.norm(dim=0)
    h = torch.eye(w0.shape[1], device=device)
    for i in range(u.shape[1]):
        h = h - 2 * (h @ u[:, i:i + 1]) @ u[:, i:i + 1].T
    return {"rotation": h, "form": f"{u.shape[1]} reflections"}


def hra_config(choice, total_steps, model, common):
    from peft import HRAConfig

    return HRAConfig(r=choice.rank, **common)


def hra_check(choice, modules):
    from peftarena_cli.errors import IncompatibleInputs

    HOOK_CALLS["check"].append(len(modules))
    if choice.rank % 2:
        raise IncompatibleInputs(f"--rank {choice.rank} is odd", hint="HRA's symmetric init needs an even rank")


def hra_post_wrap(peft_model):
    HOOK_CALLS["post_wrap"].append(type(peft_model).__name__)


def hra_step(peft_model, step):
    HOOK_CALLS["step"].append(step)


@pytest.fixture
def hra():
    here = __name__ + ":"
    entry = methods.register(methods.Method(
        "hra", "HRA: a chain of r Householder reflections of the input space", 2e-4, 5e-3,
        ("rank", "target_modules"), {"rank": 2}, peft_type="HRA", markers=("hra_u",),
        former=here + "hra_parts", peft_config=here + "hra_config", multiplicative=True,
        check=here + "hra_check", post_wrap=here + "hra_post_wrap", on_optimizer_step=here + "hra_step"))
    for v in HOOK_CALLS.values():
        v.clear()
    yield entry
    del methods.METHODS["hra"]


def test_a_toy_method_defined_through_the_registry_trains_and_its_w1_is_peft_merge(hra, tiny_model_dir, tmp_path, cli):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model
    from peftarena_cli.weights import iter_module_deltas, open_finetuned

    # the entry's check runs before training: an odd rank is refused, nothing is trained
    r = cli("finetune", tiny_model_dir, "-o", tmp_path / "odd", "--method", "hra", "--rank", "3", "--steps", "2")
    assert r.returncode == 1 and "--rank 3 is odd" in r.stderr
    assert HOOK_CALLS["post_wrap"] == [] and HOOK_CALLS["step"] == []

    out = tmp_path / "run"
    r = cli("finetune", tiny_model_dir, "-o", out, "--method", "hra", "--steps", "2", "--save-every", "2",
            "--batch-size", "2", "--lr", "5e-3", "--seed", "0")
    assert r.returncode == 0, r.stderr
    # the hooks: the check saw the targeted modules, post_wrap ran once on the wrapped model, the
    # step hook after each of the 2 optimizer steps
    assert HOOK_CALLS["check"][-1] > 0
    assert HOOK_CALLS["post_wrap"] == ["PeftModelForCausalLM"]
    steps = HOOK_CALLS["step"]
    assert len(steps) == 2 and steps[1] == steps[0] + 1

    ft = open_finetuned(out / "final")
    assert ft.method == "hra" and ft.peft_type == "HRA"
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(out / "final")).merge_and_unload().state_dict()
    mds = list(iter_module_deltas(WeightSource.from_ref(resolve_model(str(tiny_model_dir))), ft))
    assert mds and all(md.method == "hra" for md in mds)
    eps = torch.finfo(torch.float32).eps
    for md in mds:
        w1 = md.w1().cpu()
        want = merged[md.name + ".weight"]
        # both sides apply the same r = 2 reflections to W0 in float32: each reflection is a rank-1
        # update with an inner product over `in` terms, so the difference is below r·in·eps·‖W0‖
        # (a factor 4 for the normalisation of û and the two orders of summation)
        bound = 4 * 2 * want.shape[1] * eps * float(want.norm())
        assert float((w1 - want).norm()) <= bound, md.name
    # training moved the weights (the comparison is not between two copies of W0)
    base_sd = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).state_dict()
    assert max(float((merged[md.name + ".weight"] - base_sd[md.name + ".weight"]).norm()) for md in mds) > 0


def test_registry_names_what_vllm_serves(tmp_path):
    from peftarena_cli.artifacts.adapters import Adapter
    from peftarena_cli.errors import UnsupportedMethod
    from peftarena_cli.evaluation.vllm_backend import VllmModel

    served = {m.name for m in methods.METHODS.values() if m.serves("vllm") and not m.is_full}
    assert {"lora", "pissa", "milora", "rslora", "loraplus"} <= served and not served & {"dora", "oft", "vera"}
    model = VllmModel.__new__(VllmModel)  # the gate runs before any engine call
    model.max_lora_rank, model.lora_request, model._keep, model._next_id = 64, None, [], 1

    def refusal(config):
        try:
            model.use_adapter(Adapter(config={"r": 4, **config}, path=tmp_path))
        except UnsupportedMethod as e:
            return str(e)
        except Exception:
            return None  # past the gate (no vllm engine here)
        return None

    assert "not DoRA" in refusal({"peft_type": "LORA", "use_dora": True})
    assert "not OFT" in refusal({"peft_type": "OFT"})
    rs = {"peft_type": "LORA", "use_rslora": True}
    assert refusal(rs) is None
    # an entry re-registered with the HF backend only takes its adapters off vllm, nothing else edited
    builtin = methods.get_method("rslora")
    methods.register(methods.Method("rslora", "rsLoRA: LoRA with alpha/sqrt(r) scaling", 2e-4, 1e-3,
                                    peft_type="LORA", detect=lambda c: bool(c.get("use_rslora")),
                                    markers=("lora_A", "lora_B"), former="peftarena_cli.weights.lora:lora_parts"),
                     replace=True)
    try:
        assert "not rsLoRA" in refusal(rs)
    finally:
        methods.register(builtin, replace=True)
    assert refusal(rs) is None


def test_trainable_count_leaves_out_the_registry_frozen_tensors(tiny_model_dir, tmp_path):
    import math

    import torch
    from peft import VeraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from helpers import make_adapter
    from peftarena_cli.report.leaderboard import count_trainable_params

    assert set(methods.get_method("vera").frozen) <= set(methods.frozen_keys())
    cfg = VeraConfig(r=8, target_modules=["q_proj", "v_proj"], save_projection=True)
    path = make_adapter(tiny_model_dir, cfg, tmp_path / "vera")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    pm = get_peft_model(base, VeraConfig(r=8, target_modules=["q_proj", "v_proj"], save_projection=True))
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
        saved = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert saved > trainable  # the projections are saved, so leaving them out matters
    assert count_trainable_params(path) == trainable
