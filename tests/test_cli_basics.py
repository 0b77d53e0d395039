"""CLI conventions: fast --help without torch, one-line errors and exit codes, stdout rules."""

import io
import os
import pty
import subprocess
import sys

import pytest

from helpers import run_cli

CHECK_NO_TORCH = r"""
import runpy, sys
sys.argv = ["peftarena", *sys.argv[1:]]
try:
    runpy.run_module("peftarena_cli", run_name="__main__")
except SystemExit:
    pass
heavy = [m for m in ("torch", "transformers", "pandas", "peft", "pyarrow") if m in sys.modules]
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\n")
"""


def _commands():
    import typer

    from peftarena_cli.cli.app import app

    root = typer.main.get_command(app)
    return [[]] + [[name] for name in root.commands]


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "root")
def test_help_does_not_import_heavy_modules(path):
    r = subprocess.run([sys.executable, "-c", CHECK_NO_TORCH, *path, "--help"], capture_output=True, text=True)
    assert "Usage:" in r.stdout
    assert "Example" in r.stdout, f"--help of {path} shows no example"
    assert "HEAVY=\n" in r.stderr, r.stderr


def test_version():
    from peftarena_cli import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.decode().strip() == f"peftarena {__version__}"


def test_usage_error_exit_2():
    r = run_cli("no-such-command")
    assert r.returncode == 2
    assert b"No such command" in r.stderr


def test_handled_error_one_line_exit_1():
    r = run_cli("models", "path", "nope-model")
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert lines[0] == "error: unknown model alias 'nope-model'"
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in r.stderr.decode()
    assert r.stdout == b""


def test_debug_env_shows_traceback():
    r = run_cli("models", "path", "nope-model", env={"PEFTARENA_DEBUG": "1"})
    assert r.returncode != 0 and b"Traceback" in r.stderr


def test_table_to_pipe_is_parquet_with_provenance(tmp_path):
    import pyarrow.parquet as pq

    r = run_cli("models", "list", "--parquet")  # models list alone prints a table, also on a pipe
    assert r.returncode == 0 and r.stdout[:4] == b"PAR1"
    t = pq.read_table(io.BytesIO(r.stdout))
    assert "name" in t.column_names and "smollm2-135m" in t.column("name").to_pylist()


def test_table_on_terminal_is_readable_text():
    """With a terminal on stdout the tool prints a table and never binary."""
    pid, fd = pty.fork()
    if pid == 0:  # child: stdout/stderr are the pty
        os.execv(sys.executable, [sys.executable, "-m", "peftarena_cli", "models", "list"])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"PAR1" not in out and b"smollm2-135m" in out


def test_refuse_binary_to_terminal(monkeypatch):
    from peftarena_cli.cli import common
    from peftarena_cli.errors import UsageError

    monkeypatch.setattr(common, "stdout_is_terminal", lambda: True)
    with pytest.raises(UsageError, match="refusing to write"):
        common.refuse_binary_to_terminal("an adapter")


@pytest.mark.slow
def test_models_pull_and_path_real_default(smollm2_dir, tmp_path):
    """The cached conversion equals a direct GGUF load, and `models path` points at it."""
    import torch
    from transformers import AutoModelForCausalLM

    from peftarena_cli import registry
    from peftarena_cli.artifacts.loading import load_model

    r = run_cli("models", "path", "smollm2-135m")
    assert r.returncode == 0 and r.stdout.decode().strip() == str(smollm2_dir)
    model, tok, ref = load_model("smollm2-135m", device="cpu")
    gguf = registry.gguf_path(registry.get_spec("smollm2-135m"))
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, direct(ids).logits, atol=1e-4)
    assert tok.chat_template


CHECK_PROCESS_SETTINGS = r"""
import gc, runpy, sys
sys.argv = ["peftarena", *sys.argv[1:]]
try:
    runpy.run_module("peftarena_cli", run_name="__main__")
except SystemExit as e:
    code = e.code
sys.stderr.write(f"CODE={code} FROZEN={gc.get_freeze_count()} ENABLED={gc.isenabled()}\n")
"""


def test_command_process_freezes_torch_only_at_the_entry_point(tiny_model_dir, tiny_lora_dir, tmp_path):
    """As `peftarena ...`, torch's objects are frozen out of the collector's reach (which is left
    enabled); from Python, main(argv) changes nothing about the caller's collector."""
    import gc

    from peftarena_cli.cli.app import main

    out = tmp_path / "s.parquet"
    r = subprocess.run([sys.executable, "-c", CHECK_PROCESS_SETTINGS, "--quiet", "spectrum", str(tiny_model_dir),
                        str(tiny_lora_dir), "-o", str(out)], capture_output=True, text=True)
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("CODE=0 ") and line.endswith(" ENABLED=True"), r.stderr
    assert int(line.split("FROZEN=")[1].split()[0]) > 100_000  # torch alone leaves ~10⁶ objects
    assert out.is_file()

    before = gc.get_freeze_count()
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "spectrum", str(tiny_model_dir), str(tiny_lora_dir), "-o", str(tmp_path / "t.parquet")])
    assert e.value.code == 0
    assert gc.get_freeze_count() == before and gc.isenabled()


CHECK_MALLOC = r"""
import resource, sys
import torch
if sys.argv[1] == "tuned":
    from peftarena_cli.cli.process import tune_malloc
    assert tune_malloc()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(50):  # MiB-sized temporaries, each a little larger than the last, freed at once
    torch.ones(2**20 + 1024 * i).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_malloc_reuses_freed_blocks_instead_of_faulting_them_in_again():
    """glibc's default threshold adapts only to sizes already freed, so each larger block is a
    fresh mapping whose pages fault in again; tuned, freed blocks are reused."""

    def faults(mode):
        r = subprocess.run([sys.executable, "-c", CHECK_MALLOC, mode], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return int(r.stdout)

    plain, tuned = faults("plain"), faults("tuned")
    assert plain > 40 * 1024, plain  # ~1,000 page faults per 4 MiB block
    assert tuned < plain / 4, (plain, tuned)  # measured: 52.5k against 2k–9k
