"""spectrum --cache-dir: the base-SVD cache goes where it is told, and a second run reads it back."""

from peftarena_cli.artifacts.tables import read_table


def test_cache_dir_holds_the_base_svd_and_is_reused(cli, tmp_path, tiny_model_dir, tiny_lora_dir):
    cache = tmp_path / "svd-cache"
    outs = []
    for i in range(2):
        out = tmp_path / f"s{i}.parquet"
        r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "--cache-dir", cache, "-o", out)
        assert r.returncode == 0, r.stderr
        outs.append(read_table(out)[0])
        want = "0 hits, 14 misses" if i == 0 else "14 hits, 0 misses"
        assert want in r.stderr, r.stderr
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 14
    assert outs[0].equals(outs[1])
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "--cache-dir", cache, "--no-cache", "-o", tmp_path / "x.parquet")
    assert r.returncode == 2 and "--no-cache" in r.stderr
    (tmp_path / "afile").write_text("x")
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "--cache-dir", tmp_path / "afile", "-o", tmp_path / "x.parquet")
    assert r.returncode == 1 and "is not a directory" in r.stderr and not (tmp_path / "x.parquet").exists()
