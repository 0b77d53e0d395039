"""`peftarena csd` end to end on the tiny model: values vs an independent computation (unbatched
hooks on the plain base model, ΔW from PEFT's merge), stats reuse, shards, bad input."""

import json

import pytest
import torch

from helpers import save_tiny_llama
from references import PROMPTS
from peftarena_cli.artifacts.tables import read_table


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "general.jsonl"
    p.write_text("\n".join(json.dumps({"id": i, "question": q}) for i, q in enumerate(PROMPTS)) + "\n")
    return p


def direct_csd(model_dir, adapter_dir, prompts, module):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32),
                                       str(adapter_dir)).merge_and_unload()
    mods = dict(base.named_modules())
    W0 = mods[module].weight.detach().double()
    dW = dict(merged.named_modules())[module].weight.detach().double() - W0
    hs = []
    h = mods[module].register_forward_pre_hook(lambda m, a: hs.append(a[0][0].double()))
    with torch.no_grad():
        for p in prompts:
            base(input_ids=torch.tensor([tok(p)["input_ids"]]))
    h.remove()
    H = torch.cat(hs)
    e_dw = (H @ dW.T).pow(2).sum(1).mean()
    e_w0 = (H @ W0.T).pow(2).sum(1).mean()
    h2 = H.pow(2).sum(1).mean()
    return {"csd_abs": float(e_dw), "csd_rel": float(e_dw / (e_w0 + 1e-12)),
            "csd_un": float(e_dw / ((dW.pow(2).sum() + 1e-12) * (h2 + 1e-12))), "n": H.shape[0],
            "w0h2": float(e_w0)}


def test_csd_matches_direct_computation_and_stats_are_reusable(cli, tmp_path, tiny_model_dir, tiny_lora_dir, prompt_file):
    out, stats = tmp_path / "csd.parquet", tmp_path / "stats.st"
    code, err = cli("csd", tiny_model_dir, tiny_lora_dir, "--general", prompt_file, "--target", "arith:5",
                    "--save-stats", stats, "-o", out, "-b", "4")
    assert code == 0, err
    df, prov = read_table(out)
    assert len(df) == 14 and prov["command"] == "csd"
    for col in ("csd_abs_general", "csd_rel_general", "csd_un_general", "csd_abs_target", "csd_ratio_abs",
                "n_tokens_general", "delta_fro2"):
        assert col in df.columns
    from peftarena_cli.activations.prompts import load_prompts

    target = load_prompts("arith:5").prompts
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        row = df[df.module == module].iloc[0]
        for role, prompts in (("general", PROMPTS), ("target", target)):
            want = direct_csd(tiny_model_dir, tiny_lora_dir, prompts, module)
            assert row[f"n_tokens_{role}"] == want["n"]
            for k in ("csd_abs", "csd_rel", "csd_un"):
                assert row[f"{k}_{role}"] == pytest.approx(want[k], rel=1e-5), (module, role, k)
            assert row[f"w0h2_{role}"] == pytest.approx(want["w0h2"], rel=1e-5), (module, role)  # E‖W0 h‖²
        assert row["csd_ratio_abs"] == pytest.approx(row["csd_abs_general"] / row["csd_abs_target"], rel=1e-6)
    # reuse: no forward pass, same numbers; α scales csd_abs by α²
    out2 = tmp_path / "csd2.parquet"
    code, err = cli("csd", tiny_model_dir, tiny_lora_dir, "--stats", stats, "--alpha", "0.5", "--alpha", "1", "-o", out2)
    assert code == 0, err
    df2, _ = read_table(out2)
    one = df2[df2.alpha == 1.0].set_index("module")
    half = df2[df2.alpha == 0.5].set_index("module")
    ref = df.set_index("module")
    # the same stats through the same code: equal; α = 0.5 scales B by a power of two, so every product
    # and sum scales exactly (no rounding differs) and α² = 0.25 holds exactly; rtol only as slack
    assert torch.allclose(torch.tensor(one["csd_abs_general"].values), torch.tensor(ref.loc[one.index, "csd_abs_general"].values), rtol=1e-12)
    assert torch.allclose(torch.tensor(half["csd_abs_target"].values), 0.25 * torch.tensor(one["csd_abs_target"].values), rtol=1e-10)


def test_sharded_statistics_merge_to_the_single_run(cli, tmp_path, tiny_model_dir, tiny_lora_dir, prompt_file):
    single = tmp_path / "single.st"
    assert cli("csd", tiny_model_dir, "--general", prompt_file, "--save-stats", single, "-b", "1").returncode == 0
    for k in (1, 2, 3):
        code, err = cli("csd", tiny_model_dir, "--general", prompt_file, "--shard", f"{k}/3",
                        "--save-stats", tmp_path / f"s{k}.st", "-b", "1")
        assert code == 0, err
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert cli("csd", tiny_model_dir, tiny_lora_dir, "--stats", single, "-o", a).returncode == 0
    assert cli("csd", tiny_model_dir, tiny_lora_dir, "--stats", tmp_path / "s1.st", "--stats", tmp_path / "s2.st",
               "--stats", tmp_path / "s3.st", "-o", b).returncode == 0
    da, db = read_table(a)[0], read_table(b)[0]
    assert (da["n_tokens_general"] == db["n_tokens_general"]).all()
    # The shards' sums are the single run's added in another order (float64). Per run, Σhhᵀ errs by
    # γ_n Σ|h_i||h_j| ≤ γ_n √(S_ii S_jj) (Cauchy–Schwarz) and the quadratic form tr(ΔW S ΔWᵀ) by
    # γ_K Σ|ΔW_ai||S_ij||ΔW_aj|, K = 2d + 2r + 8, so E‖ΔW h‖² is within (γ_n + γ_K)·Σ_a(Σ_i|ΔW|_ai √S_ii)²
    # (|ΔW| ≤ s|B||A|), a relative κ·(γ_n + γ_K) with κ measured from the stats; the same for E‖W0 h‖²
    # (csd_rel), E‖h‖² (csd_un: positive terms, γ_n); two runs: twice that.
    from safetensors.torch import load_file

    from float_bounds import gamma
    from peftarena_cli.activations.moments import load_stats

    sets, _ = load_stats(single)
    gen = sets["general"]
    cfg = json.loads((tiny_lora_dir / "adapter_config.json").read_text())
    st = load_file(str(tiny_lora_dir / "adapter_model.safetensors"))
    w0s = load_file(str(tiny_model_dir / "model.safetensors"))
    for i, mod in enumerate(da.module):
        S, n = gen.S(mod), gen.n(mod)
        key = f"base_model.model.{mod}.lora_"
        A, B = (st[key + f"{x}.weight"].double() for x in ("A", "B"))
        r, d = A.shape
        M = cfg["lora_alpha"] / r * (B.abs() @ A.abs())
        W0 = w0s[mod + ".weight"].double()
        sq = S.diagonal().clamp_min(0).sqrt()
        g = gamma(n) + gamma(2 * d + 2 * r + 8)
        k_dw = float((M @ sq).pow(2).sum()) / float(da.csd_abs_general.iloc[i])
        k_w0 = float((W0.abs() @ sq).pow(2).sum() / ((W0 @ S) * W0).sum())
        tol = {"csd_abs_general": 2 * g * k_dw, "csd_rel_general": 2 * g * (k_dw + k_w0),
               "csd_un_general": 2 * (g * k_dw + gamma(n))}
        for c, rel in tol.items():
            x, y = float(da[c].iloc[i]), float(db[c].iloc[i])
            assert rel < 1e-10, (mod, c, rel)  # the bound still makes this a tight comparison
            assert abs(x - y) <= rel * abs(x), (mod, c, x, y, rel)


def test_truncated_prompts_are_counted_not_fatal(cli, tmp_path, tiny_model_dir, tiny_lora_dir, prompt_file):
    out = tmp_path / "t.parquet"
    code, err = cli("csd", tiny_model_dir, tiny_lora_dir, "--general", prompt_file, "--max-length", "8",
                    "-m", "down_proj", "-o", out)
    assert code == 0, err
    assert "were longer than --max-length 8" in err
    df, prov = read_table(out)
    assert len(df) == 2 and set(df.kind) == {"down_proj"}
    assert df["n_tokens_general"].iloc[0] == sum(min(8, len(p.encode()) + 0) for p in PROMPTS)
    assert prov["extra"]["general"]["n_truncated"] > 0


@pytest.mark.parametrize("case", ["empty", "pattern", "mismatch", "other-base-stats", "no-sets"])
def test_bad_input_fails_cleanly_without_output(cli, tmp_path, tiny_model_dir, tiny_lora_dir, prompt_file, foreign_lora, case):
    out = tmp_path / "out.parquet"
    args = ["csd", tiny_model_dir, tiny_lora_dir, "-o", out]
    if case == "empty":
        (tmp_path / "e.txt").write_text("\n  \n")
        args += ["--general", tmp_path / "e.txt"]
        want = "is empty"
    elif case == "pattern":
        args += ["--general", prompt_file, "-m", "qq_proj"]
        want = "matches no linear module"
    elif case == "mismatch":
        args = ["csd", tiny_model_dir, foreign_lora, "--general", prompt_file, "-o", out]
        want = "model.layers.0.self_attn.q_proj"
    elif case == "other-base-stats":
        other = save_tiny_llama(tmp_path / "other", seed=5)
        assert cli("csd", other, "--general", prompt_file, "--save-stats", tmp_path / "o.st").returncode == 0
        args += ["--stats", tmp_path / "o.st"]
        want = "another base model"
    else:
        want = "no prompt set"
    code, err = cli(*args)
    assert code == (2 if case == "no-sets" else 1), err
    assert want in err and "Traceback" not in err
    assert err.startswith("error:") or "\nerror:" in err
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
