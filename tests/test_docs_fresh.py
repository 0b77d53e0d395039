"""The generated CLI reference and shell completions must match the code (run `make docs`)."""

from pathlib import Path

import pytest

from peftarena_cli.cli.docgen import ROOT, generated_files


@pytest.mark.parametrize("rel,text", sorted(generated_files().items()))
def test_generated_file_is_current(rel, text):
    p = ROOT / rel
    assert p.is_file(), f"{rel} is missing: run `make docs`"
    assert p.read_text() == text, f"{rel} is stale: run `make docs` and commit the result"


def test_every_command_has_a_docs_page():
    import typer

    from peftarena_cli.cli.app import app

    docs = {p.name for p in Path(ROOT, "docs").glob("*.md")}
    text = "\n".join(Path(ROOT, "docs", d).read_text() for d in docs)
    for name in typer.main.get_command(app).commands:
        assert f"peftarena {name}" in text, f"docs/ never mentions `peftarena {name}`"


def test_bash_completion_completes_subcommands(tmp_path):
    import subprocess

    script = (ROOT / "completions" / "peftarena.bash").read_text()
    probe = script + '\nCOMP_WORDS=(peftarena models p); COMP_CWORD=2; _peftarena; echo "${COMPREPLY[@]}"\n'
    r = subprocess.run(["bash", "-c", probe], capture_output=True, text=True)
    assert r.stdout.split() == ["path", "pull"]
