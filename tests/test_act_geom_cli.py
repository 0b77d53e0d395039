"""`peftarena act-geom` end to end on the tiny model: table contents vs a direct dense computation,
shards merged == single run, prompt-file formats, bad input."""

import json

import pytest

from references import PROMPTS, dense_reference, direct_outputs
from peftarena_cli.artifacts.tables import read_table

METRICS = ("raw_residual", "procrustes_residual", "procrustes_improvement", "gram_distortion", "cka",
           "cos_drift", "log_norm_ratio", "pca_dist_32", "pca_dist_64", "n_tokens")


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("p")
    (d / "a.txt").write_text("\n".join(PROMPTS) + "\n")
    (d / "b.json").write_text(json.dumps({"examples": [{"input": p, "target": "x"} for p in PROMPTS[:3]]}))
    import pandas as pd

    pd.DataFrame({"query": PROMPTS[3:], "n": range(3)}).to_parquet(d / "c.parquet")
    (d / "d.jsonl").write_text("\n".join(json.dumps({"body": p}) for p in PROMPTS[:2]))
    return d


def test_table_matches_dense_computation(cli, tmp_path, tiny_model_dir, tiny_lora_dir, prompt_files):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "g.parquet"
    code, err = cli("act-geom", tiny_model_dir, tiny_lora_dir, "-p", prompt_files / "a.txt",
                    "-p", prompt_files / "b.json", "-p", prompt_files / "c.parquet", "--gram-sample", "40", "-o", out, "-b", "3")
    assert code == 0, err
    df, prov = read_table(out)
    assert prov["command"] == "act-geom"
    assert list(df.prompt_set.unique()) == ["a", "b", "c"] and len(df) == 3 * 14
    for c in METRICS + ("prompt_set", "module", "layer", "kind", "gram_distortion_sampled", "pca_gap_32"):
        assert c in df.columns
    assert (df.gram_sample_tokens == 40).all()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(tiny_lora_dir)).merge_and_unload()
    names = ["model.layers.0.mlp.gate_proj", "model.layers.1.self_attn.o_proj"]
    X0 = direct_outputs(base, tok, PROMPTS, names)
    X1 = direct_outputs(merged, tok, PROMPTS, names)
    for name in names:
        row = df[(df.prompt_set == "a") & (df.module == name)].iloc[0]
        want = dense_reference(X0[name], X1[name], ks=(32, 64))
        assert row.n_tokens == X0[name].shape[0]
        for k, v in want.items():
            if k == "pca_dist_64" and X0[name].shape[1] <= 64:
                assert row[k] != row[k]
                continue
            # float32 forward passes (batched here, unbatched there): agreement to float32 rounding
            assert row[k] == pytest.approx(v, rel=2e-4, abs=1e-6), (name, k)
    # sampled and exact Gram distortion measure the same thing on this model
    assert df.gram_distortion_sampled.corr(df.gram_distortion) > 0.9


def test_shards_merged_equal_single_run(cli, tmp_path, tiny_model_dir, tiny_lora_dir, prompt_files):
    single = tmp_path / "single.parquet"
    assert cli("act-geom", tiny_model_dir, tiny_lora_dir, "-p", prompt_files / "a.txt", "-m", "*.layers.1.*",
               "-b", "1", "-o", single).returncode == 0
    for k in (1, 2):
        code, err = cli("act-geom", tiny_model_dir, tiny_lora_dir, "-p", prompt_files / "a.txt", "-m", "*.layers.1.*",
                        "-b", "1", "--shard", f"{k}/2", "--save-sums", tmp_path / f"s{k}.st")
        assert code == 0, err
    merged = tmp_path / "merged.parquet"
    code, err = cli("act-geom", "--sums", tmp_path / "s1.st", "--sums", tmp_path / "s2.st", "-o", merged)
    assert code == 0, err
    a, b = read_table(single)[0], read_table(merged)[0]
    assert list(a.module) == list(b.module) and len(a) == 7
    # The merged sums are the single run's added in another order: equal up to float64 rounding.
    # Each metric may differ by its rounding bound (float_bounds.act_geom_bounds: γ_n·Σ|term| per sum,
    # carried through the formula; Davis–Kahan for the PCA distance, whose bound is up to 3e-5 here where
    # a covariance's λ_64 is 1e-9 of its λ_max), not by a tolerance that one machine's BLAS happens to meet.
    from float_bounds import act_geom_bounds
    from peftarena_cli.activations.pair_sums import merge_sums_files

    sums, _ = merge_sums_files([tmp_path / "s1.st", tmp_path / "s2.st"])
    for i, mod in enumerate(a.module):
        bound = act_geom_bounds(sums["a"][mod], ks=(32, 64))
        for c in METRICS:
            x, y = float(a[c].iloc[i]), float(b[c].iloc[i])
            if x != x or y != y:
                assert x != x and y != y, (mod, c)  # NaN (k >= d, or a rank below k) in both
                continue
            # the bound is small enough that the comparison still means something
            assert bound[c] <= 1e-4 * max(abs(x), 1.0), (mod, c, bound[c])
            assert abs(x - y) <= bound[c], (mod, c, x, y, bound[c])


def test_text_key_detection_and_override(cli, tmp_path, tiny_model_dir, tiny_lora_dir, prompt_files):
    from peftarena_cli.activations.prompts import load_prompts
    from peftarena_cli.errors import DataError

    assert load_prompts(str(prompt_files / "b.json")).prompts == PROMPTS[:3]
    assert load_prompts(str(prompt_files / "c.parquet")).prompts == PROMPTS[3:]
    assert load_prompts("arith:4").prompts[0].endswith("?")
    for name in ("general", "ifeval", "bbh", "facts"):  # the evaluation package's built-in suites
        ps = load_prompts(f"{name}:3")
        assert len(ps.prompts) == 3 and ps.source == f"builtin:{name}" and all(p.strip() for p in ps.prompts)
    with pytest.raises(DataError, match="no text key"):
        load_prompts(str(prompt_files / "d.jsonl"))
    assert load_prompts(str(prompt_files / "d.jsonl"), text_key="body").prompts == PROMPTS[:2]
    out = tmp_path / "k.parquet"
    code, err = cli("act-geom", tiny_model_dir, tiny_lora_dir, "-p", prompt_files / "d.jsonl", "--text-key", "body",
                    "-m", "q_proj", "-o", out)
    assert code == 0, err
    assert len(read_table(out)[0]) == 2


@pytest.mark.parametrize("case", ["empty", "pattern", "mismatch", "shard-no-save", "bad-key"])
def test_bad_input_fails_cleanly_without_output(cli, tmp_path, tiny_model_dir, tiny_lora_dir, prompt_files, foreign_lora, case):
    out = tmp_path / "out.parquet"
    args = ["act-geom", tiny_model_dir, tiny_lora_dir, "-o", out]
    code_want = 1
    if case == "empty":
        (tmp_path / "e.jsonl").write_text("")
        args += ["-p", tmp_path / "e.jsonl"]
        want = "is empty"
    elif case == "pattern":
        args += ["-p", prompt_files / "a.txt", "-m", "attn.*"]
        want = "matches no linear module"
    elif case == "mismatch":
        args = ["act-geom", tiny_model_dir, foreign_lora, "-p", prompt_files / "a.txt", "-o", out]
        want = "does not fit"
    elif case == "shard-no-save":
        args += ["-p", prompt_files / "a.txt", "--shard", "1/2"]
        want, code_want = "--save-sums", 2
    else:
        args += ["-p", prompt_files / "d.jsonl", "--text-key", "nope"]
        want = "has no key 'nope'"
    code, err = cli(*args)
    assert code == code_want, err
    assert want in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_full_finetune_equals_its_adapter(cli, tmp_path, tiny_model_dir, tiny_lora_dir, prompt_files):
    """A full fine-tuned model (here: the LoRA merged into the base and saved as a model) gives the
    same table as the adapter itself: the second model runs on the same batches."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    full = tmp_path / "full"
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(tiny_lora_dir)).merge_and_unload()
    merged.save_pretrained(str(full))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(full))
    outs = {}
    for name, ft in (("adapter", tiny_lora_dir), ("full", full)):
        outs[name] = tmp_path / f"{name}.parquet"
        code, err = cli("act-geom", tiny_model_dir, ft, "-p", prompt_files / "a.txt", "-o", outs[name], "-b", "3")
        assert code == 0, err
    a, _ = read_table(outs["adapter"])
    f, prov = read_table(outs["full"])
    assert len(f) == len(a) == 14
    assert prov["inputs"]["adapter"].split("@")[-1] != prov["inputs"]["base"].split("@")[-1]
    for c in METRICS:
        assert f[c].to_numpy() == pytest.approx(a[c].to_numpy(), rel=2e-4, abs=1e-6, nan_ok=True), c


def test_full_finetune_of_another_architecture_is_refused(cli, tmp_path, tiny_model_dir, prompt_files):
    from helpers import save_tiny_llama

    other = save_tiny_llama(tmp_path / "other", hidden=32)
    out = tmp_path / "g.parquet"
    code, err = cli("act-geom", tiny_model_dir, other, "-p", prompt_files / "a.txt", "-o", out)
    assert code == 1 and "error: module 'model.layers.0.self_attn.q_proj': shape" in err, err
    assert not out.exists()


def test_txt_prompts_are_stripped_per_line_and_blank_lines_skipped(cli, tmp_path, tiny_model_dir, tiny_lora_dir):
    """A .txt file with padded lines and blank lines gives the token counts of the stripped file."""
    from peftarena_cli.activations.prompts import read_prompt_file

    stripped = tmp_path / "stripped.txt"
    stripped.write_text("\n".join(PROMPTS[:4]) + "\n")
    padded = tmp_path / "padded.txt"
    padded.write_text("\n".join(f"  \t{p}   " for p in PROMPTS[:2]) + "\n\n   \n" + "\n".join(f" {p}\t" for p in PROMPTS[2:4]) + "\r\n")
    assert read_prompt_file(padded) == read_prompt_file(stripped) == PROMPTS[:4]
    counts = []
    for f in (stripped, padded):
        out = tmp_path / f"{f.stem}.parquet"
        code, err = cli("act-geom", tiny_model_dir, tiny_lora_dir, "-p", f, "-m", "model.layers.1.mlp.down_proj", "-o", out)
        assert code == 0, err
        counts.append(int(read_table(out)[0].n_tokens.iloc[0]))
    assert counts[0] == counts[1] > 0
