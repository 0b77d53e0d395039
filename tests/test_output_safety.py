"""Outputs never destroy what is already there: no input replaced by an output (drift, report), no
device node or pipe replaced by a file, no directory output over a special file, and failed writes
(full disk, file size limit, a non-UTF-8 name) as one-line errors. docs/artifacts.md, "Output rules".

Every test that makes a device node makes it in its own tmp_path (``os.mknod``, root only); the one
test that touches the real /dev/null first checks the same write on such a node, and puts /dev/null
back if it is gone."""

from __future__ import annotations

import io
import os
import resource
import select
import shutil
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import run_cli
from report_synth import make_runs

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="making device nodes needs root")
TINY_FT = ["--max-length", "512", "--batch-size", "2", "--steps", "1", "--lr", "1e-3"]
# the text safetensors' writer gives a full disk (the form is checked for real, with a file size
# limit, in test_a_real_failed_safetensors_write_is_one_line)
ENOSPC_TEXT = "Error while serializing: I/O error: No space left on device (os error 28)"


def _snapshot(p: Path) -> dict:
    if p.is_file():
        return {p.name: p.read_bytes()}
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


def _node(path: Path, minor: int) -> Path:
    """A character device with the numbers of /dev/null (minor 3) or /dev/full (minor 7)."""
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    return path


def _is_node(path: Path, minor: int) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, minor)


def _frame(data_or_path):
    from peftarena_cli.artifacts.tables import read_table

    df, _ = read_table(io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path)
    return df


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "internal error" not in stderr and "Traceback" not in stderr, stderr
    return lines[0]


class _FifoReader:
    """Reads a FIFO from a thread. The read end is opened first, without blocking, so the writer's
    open never waits; reading ends when the writer has closed (POLLHUP), or, when no writer ever
    came, at :meth:`finish`."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = bytearray()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        poll = select.poll()
        poll.register(self.fd, select.POLLIN | select.POLLHUP)
        while True:
            events = poll.poll(50)
            for _, ev in events:
                if ev & select.POLLIN:
                    try:
                        chunk = os.read(self.fd, 1 << 16)
                    except BlockingIOError:
                        chunk = None
                    if chunk:
                        self.data += chunk
                        continue
                if ev & select.POLLHUP:
                    return
            if not events and self.stop.is_set():
                return

    def finish(self) -> bytes:
        self.stop.set()
        self.thread.join()
        os.close(self.fd)
        return bytes(self.data)


def _no_model_load(monkeypatch) -> list:
    """Record (and stop) any model load of drift."""
    import peftarena_cli.interpolation.sweep as sweep

    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise RuntimeError("drift loaded a model")

    monkeypatch.setattr(sweep, "open_path_model", refuse)
    return calls


# ---- 1. drift: the output checks of the other commands, before any model is loaded -----------------

def test_drift_onto_the_adapter_weights_is_refused(tiny_model_dir, tiny_lora_dir, tmp_path, cli, monkeypatch):
    ad = tmp_path / "adapter"
    shutil.copytree(tiny_lora_dir, ad)
    snap = _snapshot(ad)
    calls = _no_model_load(monkeypatch)
    r = cli("drift", tiny_model_dir, ad, "--limit", "1", "--sets", "target", "-o", ad / "adapter_model.safetensors")
    assert r.returncode == 1, r.stderr
    assert "inside the input directory" in _one_error_line(r.stderr)
    assert _snapshot(ad) == snap and not calls


def test_drift_onto_the_base_config_is_refused(tiny_model_dir, tiny_lora_dir, tmp_path, cli, monkeypatch):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    snap = _snapshot(base)
    calls = _no_model_load(monkeypatch)
    r = cli("drift", base, tiny_lora_dir, "--limit", "1", "--sets", "target", "-o", base / "config.json")
    assert r.returncode == 1 and _one_error_line(r.stderr)
    assert _snapshot(base) == snap and not calls
    # the base as one .safetensors file, named as the output
    single = tmp_path / "base.safetensors"
    shutil.copy(base / "model.safetensors", single)
    before = single.read_bytes()
    r = cli("drift", single, tiny_lora_dir, "--limit", "1", "--sets", "target", "-o", single)
    assert r.returncode == 1 and "also an input" in _one_error_line(r.stderr)
    assert single.read_bytes() == before and not calls


def _read_only_dir(tmp_path: Path) -> tuple[Path, callable]:
    """A directory that takes no new files, and how to undo it. Root writes into a chmod 0555
    directory, so as root this is /sys (sysfs takes no new files from anyone)."""
    import tempfile

    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro, lambda: ro.chmod(0o755)
    try:
        fd, p = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys"), lambda: None
    os.close(fd)
    os.unlink(p)
    pytest.skip("no directory here refuses root's writes")


def test_drift_into_a_read_only_folder_is_refused_before_the_model_runs(tiny_model_dir, tiny_lora_dir, tmp_path,
                                                                        cli, monkeypatch):
    ro, undo = _read_only_dir(tmp_path)
    calls = _no_model_load(monkeypatch)
    try:
        r = cli("drift", tiny_model_dir, tiny_lora_dir, "--limit", "1", "--sets", "target", "-o", ro / "drift.parquet")
    finally:
        undo()
    assert r.returncode == 1, r.stderr
    assert "cannot write" in _one_error_line(r.stderr) and not calls
    assert not (ro / "drift.parquet").exists()


# ---- 2. special files: a character device or FIFO is written into, never replaced ------------------

def test_a_table_into_a_fifo_is_written_into_it(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    ref = tmp_path / "ref.parquet"
    assert cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", ref).returncode == 0
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = _FifoReader(fifo)
    try:
        r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", fifo)
    finally:
        data = reader.finish()
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert _frame(data).equals(_frame(ref))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("cmd", ["eval-target", "interpolate"])
def test_no_sibling_files_beside_a_fifo_output(cmd, tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    """eval's derived summary and interpolate's per-sample rows go beside -o FILE; beside a pipe
    (or /dev/null) there is no such place: only the main table is written, into the pipe."""
    d = tmp_path / "out"
    d.mkdir()
    fifo = d / "pipe"
    os.mkfifo(fifo)
    args = {"eval-target": ["eval-target", tiny_model_dir, "--adapter", tiny_lora_dir],
            "interpolate": ["interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0,1", "--eval", "target"]}[cmd]
    reader = _FifoReader(fifo)
    try:
        r = cli(*args, "--limit", "1", "--max-new-tokens", "4", "-o", fifo)
    finally:
        data = reader.finish()
    assert r.returncode == 0, r.stderr
    assert [p.name for p in d.iterdir()] == ["pipe"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    df = _frame(data)
    assert (len(df) == 1 and "correct" in df.columns) if cmd == "eval-target" else sorted(df["alpha"]) == [0.0, 1.0]


@ROOT_ONLY
def test_a_table_into_a_character_device_keeps_the_node(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    null = _node(tmp_path / "null", 3)
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", null, "--summary", tmp_path / "s.parquet")
    assert r.returncode == 0, r.stderr
    assert _is_node(null, 3)
    full = _node(tmp_path / "full", 7)
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", full)
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert "cannot write" in line and str(full) in line and "No space left on device" in line
    assert _is_node(full, 7)


@ROOT_ONLY
def test_safetensors_into_a_character_device_keeps_the_node(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    """safetensors' own writer renames a temporary file over its target: a device node would go."""
    null = _node(tmp_path / "null", 3)
    args = [tiny_model_dir, tiny_lora_dir, "--target", "arith:2", "--general", "general:2"]
    r = cli("csd", *args, "-o", tmp_path / "c.parquet", "--save-stats", null)
    assert r.returncode == 0, r.stderr
    assert _is_node(null, 3)
    full = _node(tmp_path / "full", 7)
    r = cli("csd", *args, "-o", tmp_path / "c2.parquet", "--save-stats", full)
    assert r.returncode == 1 and "No space left on device" in _one_error_line(r.stderr)
    assert _is_node(full, 7)


@ROOT_ONLY
def test_dev_null_as_output_discards_it(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    # the same write on a node of our own first: if that one is replaced, /dev/null is not tried
    own = _node(tmp_path / "null", 3)
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", own)
    if not (r.returncode == 0 and _is_node(own, 3)):
        pytest.fail(f"-o onto a character device replaces it (rc {r.returncode}); /dev/null not tried")
    assert _is_node(Path("/dev/null"), 3)
    try:
        r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", "/dev/null")
        ok = _is_node(Path("/dev/null"), 3)
    finally:
        if not _is_node(Path("/dev/null"), 3):  # put the machine's /dev/null back
            os.unlink("/dev/null")
            _node(Path("/dev/null"), 3)
            os.chmod("/dev/null", 0o666)
    assert r.returncode == 0 and ok, r.stderr


def test_a_socket_is_refused_as_an_output(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    sock_path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(sock_path))
        r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", sock_path)
        assert r.returncode == 1 and "is a socket" in _one_error_line(r.stderr)
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        s.close()


@ROOT_ONLY
def test_a_block_device_is_refused_as_an_output(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    blk = tmp_path / "blk"
    os.mknod(blk, 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", blk)
    assert r.returncode == 1 and "is a block device" in _one_error_line(r.stderr)
    assert stat.S_ISBLK(os.lstat(blk).st_mode)


def test_directory_outputs_onto_a_special_file_are_refused(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    specials = [fifo] + ([_node(tmp_path / "null", 3)] if os.geteuid() == 0 else [])
    runs = make_runs(tmp_path / "runs", methods=["base", "lora"])
    for sp in specials:
        for args in (["rewind", tiny_lora_dir, "--alpha", "0.5", "-o", sp],
                     ["rewind", tiny_lora_dir, "--alpha", "0.5", "-o", sp, "--overwrite"],
                     ["report", runs, "-o", sp],
                     ["finetune", tiny_model_dir, "-o", sp, *TINY_FT]):
            r = cli(*args)
            assert r.returncode == 1, (args, r.stderr)
            _one_error_line(r.stderr)
            mode = os.lstat(sp).st_mode
            assert stat.S_ISFIFO(mode) if sp == fifo else _is_node(sp, 3), args
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["pipe", "runs"] + (["null"] if len(specials) > 1 else []))


# ---- 3. report: the report directory is never an input, nor holds one --------------------------------

def _previous_report(tmp_path: Path, cli) -> Path:
    runs = make_runs(tmp_path / "prev-runs", methods=["base", "lora"])
    out = tmp_path / "prev-report"
    r = cli("report", runs, "-o", out)
    assert r.returncode == 0, r.stderr
    return out


def test_report_onto_an_input_directory_is_refused(tmp_path, cli):
    prev = _previous_report(tmp_path, cli)
    runs = make_runs(tmp_path / "runs", methods=["base", "lora"])
    d = runs / "lora"
    for f in prev.iterdir():  # D holds an earlier report and its result tables
        shutil.copy(f, d / f.name)
    snap = _snapshot(runs)
    r = cli("report", f"base={runs / 'base'}", f"lora={d}", "-o", d)
    assert r.returncode == 1 and "also an input" in _one_error_line(r.stderr)
    assert _snapshot(runs) == snap


def test_report_over_a_directory_holding_an_input_is_refused(tmp_path, cli):
    prev = _previous_report(tmp_path, cli)
    top = make_runs(tmp_path / "top", methods=["base", "lora"])
    for f in prev.iterdir():  # a report at the top, results below it
        shutil.copy(f, top / f.name)
    snap = _snapshot(top)
    r = cli("report", f"base={top / 'base'}", f"lora={top / 'lora'}", "-o", top)
    assert r.returncode == 1 and "contains the input" in _one_error_line(r.stderr)
    assert _snapshot(top) == snap


def test_report_over_a_report_holding_other_files_is_refused(tmp_path, cli):
    prev = _previous_report(tmp_path, cli)
    shutil.copy(prev / "leaderboard.parquet", prev / "my_results.parquet")
    (prev / "notes.txt").write_text("kept beside the report\n")
    snap = _snapshot(prev)
    runs = make_runs(tmp_path / "runs", methods=["base", "lora"])
    r = cli("report", runs, "-o", prev)
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert "my_results.parquet" in line and "notes.txt" in line
    assert _snapshot(prev) == snap
    # a report alone is still replaced
    (prev / "notes.txt").unlink()
    (prev / "my_results.parquet").unlink()
    assert cli("report", runs, "-o", prev).returncode == 0


# ---- 4. failed writes are one-line errors ---------------------------------------------------------------

@pytest.fixture
def full_safetensors(monkeypatch):
    """safetensors' file writer fails as on a full disk."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError(ENOSPC_TEXT)

    monkeypatch.setattr(safetensors.torch, "save_file", full)


@pytest.mark.parametrize("cmd", ["rewind", "csd", "finetune"])
def test_a_full_disk_during_a_safetensors_write_is_one_line(cmd, full_safetensors, tiny_model_dir, tiny_lora_dir,
                                                             tmp_path, cli):
    out = tmp_path / "out"
    args = {"rewind": ["rewind", tiny_lora_dir, "--alpha", "0.5", "-o", out],
            "csd": ["csd", tiny_model_dir, tiny_lora_dir, "--target", "arith:2", "--general", "general:2",
                    "-o", tmp_path / "c.parquet", "--save-stats", tmp_path / "stats.safetensors"],
            "finetune": ["finetune", tiny_model_dir, "-o", out, *TINY_FT]}[cmd]
    r = cli(*args)
    assert r.returncode == 1, r.stderr
    line = _one_error_line(r.stderr)
    assert "cannot write" in line and "No space left on device" in line
    assert "free disk space" in r.stderr
    assert not (tmp_path / "stats.safetensors").exists()
    if cmd == "rewind":
        assert not out.exists()
    if cmd == "finetune":
        assert not list(out.glob("checkpoint-*/adapter_model.safetensors"))


def test_a_full_svd_cache_only_costs_speed(full_safetensors, tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    r = cli("spectrum", tiny_model_dir, tiny_lora_dir, "--cache-dir", tmp_path / "svd", "-o", tmp_path / "s.parquet")
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "ref.parquet"
    assert cli("spectrum", tiny_model_dir, tiny_lora_dir, "--no-cache", "-o", ref).returncode == 0
    assert _frame(tmp_path / "s.parquet").equals(_frame(ref))
    assert not list((tmp_path / "svd").glob("*.safetensors"))


def test_a_real_failed_safetensors_write_is_one_line(tiny_lora_dir, tmp_path):
    """A file size limit makes the kernel refuse the write inside safetensors' own (Rust) writer."""
    limit = 4096  # below the tiny adapter's weights
    assert (tiny_lora_dir / "adapter_model.safetensors").stat().st_size > 2 * limit

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if k != "PEFTARENA_DEBUG"}
    out = tmp_path / "rw"
    r = subprocess.run([sys.executable, "-m", "peftarena_cli", "rewind", str(tiny_lora_dir), "--alpha", "0.5",
                        "-o", str(out)], capture_output=True, env=env, preexec_fn=small_files, timeout=900)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    line = _one_error_line(err)
    assert "cannot write" in line and str(out) in line and os.strerror(27) in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_non_utf8_output_name_is_written(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    """As from bash, -o $'\\xff.parquet': a process of its own, whose stderr shows the name escaped."""
    ref = tmp_path / "ref.parquet"
    assert cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", ref).returncode == 0
    name = os.fsdecode(b"\xff.parquet")
    r = run_cli("spectrum", tiny_model_dir, tiny_lora_dir, "-o", tmp_path / name)
    assert r.returncode == 0, r.stderr.decode()
    assert b"\xff.parquet" in os.listdir(os.fsencode(tmp_path))
    assert _frame((tmp_path / name).read_bytes()).equals(_frame(ref))


def test_error_messages_show_plain_paths(tmp_path):
    from peftarena_cli.artifacts.tables import read_table
    from peftarena_cli.errors import InvalidArtifact

    bad = tmp_path / "not.parquet"
    bad.write_bytes(b"plain text")
    with pytest.raises(InvalidArtifact) as e:
        read_table(bad)
    assert "PosixPath" not in str(e.value) and repr(str(bad)) in str(e.value)
