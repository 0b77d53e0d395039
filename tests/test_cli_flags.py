"""One meaning per short flag across commands, and the spellings that changed meaning still work for
one release, with a deprecation warning."""

from __future__ import annotations

import typer.main

from peftarena_cli.cli.app import app

# a short flag may stand for differently named long options only where they mean the same thing
SAME_MEANING = {"-t": {"--task", "--target"}}  # the target task (csd names it --target beside --general)


def _short_flags() -> dict[str, dict[str, str]]:
    """short flag -> {command path: the long option it stands for} over every visible option."""
    out: dict[str, dict[str, str]] = {}

    def walk(cmd, path):
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {sub_name}".strip())
        for p in getattr(cmd, "params", []):
            if getattr(p, "hidden", False) or not hasattr(p, "opts"):
                continue
            names = list(p.opts) + list(p.secondary_opts)
            longs = [n for n in names if n.startswith("--")]
            for n in names:
                if len(n) == 2 and n.startswith("-"):
                    out.setdefault(n, {})[path] = longs[0] if longs else n
    walk(typer.main.get_command(app), "")
    return out


def test_each_short_flag_has_one_meaning():
    flags = _short_flags()
    assert flags["-m"] and set(flags["-m"].values()) == {"--modules"}  # finetune's -m is hidden now
    assert set(flags["-s"].values()) == {"--suite"}  # spectrum's -s is hidden now
    for short, by_cmd in flags.items():
        longs = set(by_cmd.values())
        assert len(longs) == 1 or longs <= SAME_MEANING.get(short, set()), (short, by_cmd)


def test_finetune_dash_m_still_means_method_with_a_warning(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    r = cli("finetune", tiny_model_dir, "-o", out, "-m", "nosuchmethod", "--steps", "1")
    assert r.returncode != 0 and "nosuchmethod" in r.stderr  # -m reached --method
    assert "-m is deprecated here: use --method" in r.stderr
    r = cli("finetune", tiny_model_dir, "-o", out, "-m", "lora", "--method", "oft", "--steps", "1")
    assert r.returncode == 2 and "-m and --method both given" in r.stderr
    assert not out.exists()


def test_spectrum_dash_s_still_writes_the_summary_with_a_warning(cli, tiny_model_dir, tiny_lora_dir, tmp_path):
    from peftarena_cli.artifacts.tables import read_table

    s = tmp_path / "s.parquet"
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", tmp_path / "i.parquet", "-s", s)
    assert r.returncode == 0, r.stderr
    assert "-s is deprecated here: use --summary" in r.stderr
    df, _ = read_table(s)
    assert len(df) == df["module"].nunique() > 0  # one row per module: the summary table
