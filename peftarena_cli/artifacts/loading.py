"""Loading models for forward passes: transformers model + tokenizer from a model reference,
and a PEFT adapter on top.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftarena_cli.artifacts.adapters import Adapter, check_adapter_fits, check_finite, load_adapter, peft_dir_for
from peftarena_cli.artifacts.safetensors_io import ModelRef, resolve_model
from peftarena_cli.errors import DeviceNotAvailable, IncompatibleInputs, InvalidArtifact, UsageError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def torch_dtype(name: str):
    import torch

    key = DTYPES.get(str(name).lower())
    if key is None:
        raise UsageError(f"unknown dtype {name!r}", hint="use float32, bfloat16 or float16")
    return getattr(torch, key)


def pick_device(device: str = "auto") -> str:
    """``auto`` means CUDA when present, else CPU."""
    import torch

    if device != "auto":
        d = str(device)
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceNotAvailable(f"--device {d}: CUDA is not available on this machine")
        if d.startswith("cuda:"):
            try:
                idx = int(d.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"--device {d!r}: expected cpu, cuda, cuda:N or auto") from None
            if idx >= torch.cuda.device_count():
                raise DeviceNotAvailable(f"--device {d}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        elif d not in ("cpu", "cuda", "mps"):
            raise UsageError(f"unknown --device {d!r}", hint="use cpu, cuda, cuda:N or auto")
        return d

    return "cuda" if torch.cuda.is_available() else "cpu"


def config_dir(ref: ModelRef) -> Path:
    """Where the model's config and tokenizer are read from: the model directory, or a single
    weights file's own directory (it needs a config.json there unless the file's metadata carries
    the config). Raises InvalidArtifact for a bare weights file."""
    if ref.is_single_file:
        d = ref.path.parent
        if (d / "config.json").is_file():
            return d
        from safetensors import safe_open

        with safe_open(str(ref.path), framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise InvalidArtifact(
                f"{str(ref.path)!r} is a bare weights file without a model config",
                hint="this command runs the model: pass an HF model directory (config.json + weights)",
            )
        return d
    if not (ref.path / "config.json").is_file():
        raise InvalidArtifact(f"{str(ref.path)!r} has no config.json", hint="pass a complete HF model directory")
    return ref.path


def load_tokenizer(ref: ModelRef):
    from transformers import AutoTokenizer

    d = config_dir(ref)
    refuse_remote_code(_read_json(d / "tokenizer_config.json"), ref.spec)
    try:
        tok = AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
    except Exception as e:
        raise InvalidArtifact(f"cannot load a tokenizer from {str(d)!r}: {type(e).__name__}: {e}",
                              hint="the model directory needs its tokenizer files") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _read_json(p: Path) -> dict:
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def refuse_remote_code(config: dict, spec) -> None:
    """A model whose config maps its classes to its own Python files (``auto_map``) is refused:
    peftarena never runs code that comes with a model (``trust_remote_code`` is always False), and
    never asks on stdin/stdout whether it may."""
    if isinstance(config, dict) and config.get("auto_map"):
        raise InvalidArtifact(
            f"{str(spec)!r} defines its own model code (auto_map in its config); peftarena never runs a model's code",
            hint="use a model whose architecture transformers implements (e.g. Llama, Qwen2, Mistral)")


def check_loaded_names(model, missing: list[str], unexpected: list[str], spec, mismatched=None) -> None:
    """Missing or unexpected tensor names (a file whose names do not match the architecture would
    otherwise run with random weights) are an error naming a few of them. Keys tied to a loaded
    tensor (``lm_head.weight`` with tied embeddings) and non-persistent buffers are not missing."""
    sd = model.state_dict()
    loaded_ptrs = {t.data_ptr() for k, t in sd.items() if k not in set(missing)}
    missing = sorted(k for k in missing if k in sd and sd[k].data_ptr() not in loaded_ptrs)
    unexpected = sorted(unexpected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
    if mismatched:
        names = [m[0] if isinstance(m, (tuple, list)) else str(m) for m in mismatched]
        problems.append(f"{len(names)} tensor(s) of the wrong shape ({', '.join(names[:3])})")
    if problems:
        raise IncompatibleInputs(
            f"the weights of {str(spec)!r} do not match its architecture: {'; '.join(problems)}",
            hint="pass the model's own weights file (tensor names as transformers saves them) or its HF directory")


def load_model(spec, dtype: str = "float32", device: str = "auto"):
    """Load ``(model, tokenizer, ModelRef)`` for forward passes, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    ref = spec if isinstance(spec, ModelRef) else resolve_model(spec)
    d = config_dir(ref)
    dev = pick_device(device)
    if ref.is_single_file:
        # one weights file: the config beside it (or in its metadata), then the file's tensors, strictly
        from transformers import PretrainedConfig

        if (d / "config.json").is_file():
            cfgd = _read_json(d / "config.json")
        else:
            from safetensors import safe_open

            with safe_open(str(ref.path), framework="pt") as f:
                cfgd = json.loads(f.metadata()["config"])
        refuse_remote_code(cfgd, ref.spec)
        config = AutoConfig.for_model(**cfgd) if "model_type" in cfgd else PretrainedConfig(**cfgd)
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype), trust_remote_code=False)
        from safetensors.torch import load_file

        res = model.load_state_dict(load_file(str(ref.path)), strict=False)
        model.tie_weights()
        check_loaded_names(model, list(res.missing_keys), list(res.unexpected_keys), ref.spec)
    else:
        refuse_remote_code(_read_json(d / "config.json"), ref.spec)
        try:
            model, info = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch_dtype(dtype), trust_remote_code=False,
                                                               output_loading_info=True)
        except (OSError, ValueError) as e:
            raise InvalidArtifact(f"cannot load a model from {ref.spec!r}: {str(e).splitlines()[0] if str(e) else e}") from None
        check_loaded_names(model, list(info.get("missing_keys") or []), list(info.get("unexpected_keys") or []),
                           ref.spec, mismatched=list(info.get("mismatched_keys") or []))

    check_finite(model.named_parameters(), f"model {str(ref.spec)!r}")
    model.to(dev)
    model.eval()
    tok = load_tokenizer(ref)
    return model, tok, ref


def attach_adapter(model, adapter: Adapter | str, adapter_name: str = "default", is_trainable: bool = False,
                   base_spec=None):
    """Wrap ``model`` with a PEFT adapter (PEFT's own code path, so forward passes match PEFT).

    An adapter naming modules the model lacks is refused first (PEFT would drop those tensors with a
    warning); ``base_spec`` names the model in that error."""
    from peft import PeftModel

    ad = adapter if isinstance(adapter, Adapter) else load_adapter(adapter)
    check_adapter_fits(ad, model, base_spec)
    d, keep = peft_dir_for(ad)
    try:
        if hasattr(model, "peft_config"):
            model.load_adapter(str(d), adapter_name=adapter_name, is_trainable=is_trainable)
            model.set_adapter(adapter_name)
            return model
        return PeftModel.from_pretrained(model, str(d), adapter_name=adapter_name, is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError) as e:
        raise IncompatibleInputs(f"adapter {str(ad.path)!r} does not fit the model: {str(e).splitlines()[0]}") from None
    finally:
        if keep is not None:
            keep.cleanup()


def _tuner_base_layers(peft_model):
    """The base layers that PEFT's tuner layers wrap (the modules a merge writes into)."""
    out = []
    for _, mod in peft_model.named_modules():
        base = getattr(mod, "base_layer", None)
        if base is not None and hasattr(mod, "merge") and not hasattr(base, "base_layer"):
            out.append(base)
    return out


class applied_adapter:
    """``with applied_adapter(model, adapter) as m:`` — the adapter merged into ``model``'s weights by
    PEFT's own merge (``merge_and_unload``), so evaluation runs at the base model's speed (PEFT's
    unmerged forward re-forms OFT's rotation and DoRA's norm at every call); on exit the touched
    weights are restored bit for bit, so one loaded base serves several adapters in turn.

The context manager's ``merged`` attribute says whether the merge happened: a PEFT type that cannot merge is used unmerged
    (PEFT's forward), and so is every adapter with ``merge=False``. On exit PEFT's layers are
    removed either way, so adapters of different PEFT types can follow one another on one base. Only
    the wrapped layers' weights are copied (for LoRA on every linear module of smollm2: 116 MiB),
    never the whole model.
    """

    def __init__(self, model, adapter: Adapter | str, adapter_name: str = "default", merge: bool = True):
        self.model, self.adapter, self.adapter_name, self.merge = model, adapter, adapter_name, merge
        self.merged, self._saved, self._wrapped = False, [], None

    def __enter__(self):
        wrapped = attach_adapter(self.model, self.adapter, adapter_name=self.adapter_name)
        if not self.merge:
            self._wrapped = wrapped
            return wrapped
        self._saved = [(layer, {k: v.detach().clone() for k, v in layer.named_parameters(recurse=False)})
                       for layer in _tuner_base_layers(wrapped)]
        try:
            out = wrapped.merge_and_unload(safe_merge=True)
        except (NotImplementedError, ValueError, AttributeError, TypeError):
            # a partial merge must not leak into the unmerged forward: restore, drop PEFT's layers
            # (their merged flags included) and attach afresh
            self._restore()
            base = wrapped.unload()
            self._wrapped = attach_adapter(base, self.adapter, adapter_name=self.adapter_name)
            return self._wrapped
        self.merged = True
        return out

    def _restore(self):
        import torch

        with torch.no_grad():
            for layer, params in self._saved:
                for k, v in params.items():
                    getattr(layer, k).copy_(v)
        self._saved = []

    def __exit__(self, *exc):
        if self.merged:
            self._restore()
        elif self._wrapped is not None:
            self._wrapped.unload()  # PEFT removes its layers; the base weights were never changed
        return False
