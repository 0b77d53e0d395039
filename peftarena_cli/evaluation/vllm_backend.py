"""The optional vLLM generation backend (``--backend vllm``; ``pip install 'peftarena[vllm]'``).

:class:`VllmModel` is a :class:`~peftarena_cli.evaluation.backend.GenerationBackend`, like the built-in
engine (:class:`~peftarena_cli.evaluation.engine.HfBackend`): it stands in for the Hugging Face model in
:func:`~peftarena_cli.evaluation.api.evaluate_target` and :func:`~peftarena_cli.evaluation.api.evaluate_general`;
:func:`~peftarena_cli.evaluation.engine.generate` hands it the prompts and it returns the same
:class:`~peftarena_cli.evaluation.backend.Generation`.
Everything else (prompt rendering with the HF tokenizer's chat template, stop sequences, scoring) is
shared with the default engine, so the two backends differ only in how tokens are decoded.

* The engine is built once per base model; adapters are LoRA requests on it (``enable_lora``), so
  several ``--adapter`` runs reuse the loaded base, as with the HF backend.
* vLLM serves LoRA-family adapters only (LoRA, rsLoRA, PiSSA/MiLoRA saved in PEFT's converted
  form). Other PEFT types (OFT, VeRA, IA3, ...) are refused with a hint; evaluate them with the
  HF backend.
* Prompts are passed as token ids (encoded by the HF tokenizer exactly as the HF engine does), so
  both backends see the same tokens. Greedy decoding runs one sample per prompt, like the HF engine.
"""

from __future__ import annotations

import time
from pathlib import Path

from peftarena_cli.errors import InvalidArtifact, MissingDependency, UnsupportedMethod
from peftarena_cli.evaluation.backend import Generation, GenerationBackend, encode_prompts, first_stop
from peftarena_cli.methods import METHODS, method_name


def import_vllm():
    """The vllm module, or a MissingDependency that says how to get it."""
    try:
        import vllm
    except ImportError:
        raise MissingDependency("the vllm backend needs the vllm package, which is not installed",
                                hint="pip install 'peftarena[vllm]' on a CUDA machine, or use --backend hf") from None
    return vllm


class VllmModel(GenerationBackend):
    """A vLLM engine over one base model; ``use_adapter`` switches the LoRA applied to later generations."""

    name = "vllm"

    def __init__(self, model_dir: str | Path, dtype: str = "auto", seed: int = 0, max_lora_rank: int = 64,
                 max_model_len: int | None = None, **engine_kw):
        vllm = import_vllm()
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise InvalidArtifact(f"{str(model_dir)!r} is not an HF model directory (no config.json)",
                                  hint="the vllm backend loads a model directory; use --backend hf for a single weights file")
        kw = dict(model=str(model_dir), tokenizer=str(model_dir), dtype=dtype, seed=int(seed),
                  enable_lora=True, max_lora_rank=int(max_lora_rank))
        if max_model_len:
            kw["max_model_len"] = int(max_model_len)
        kw.update(engine_kw)
        kw["trust_remote_code"] = False  # never run a model directory's own code (docs/artifacts.md)
        self.llm = vllm.LLM(**kw)
        self.max_lora_rank = int(max_lora_rank)
        self.lora_request = None
        self._keep: list = []  # temporary adapter directories, alive as long as the engine
        self._next_id = 1

    def use_adapter(self, adapter=None, name: str | None = None) -> None:
        """Apply ``adapter`` (an :class:`~peftarena_cli.artifacts.adapters.Adapter`) to later generations; None = the base."""
        if adapter is None:
            self.lora_request = None
            return
        from peftarena_cli.artifacts.adapters import peft_dir_for

        cfg = adapter.config or {}
        entry = METHODS.get(method_name(cfg) or "")  # from the config: what vLLM will be asked to load
        if entry is None or not entry.serves(self.name):
            # a variant of a PEFT type (DoRA) is named as such, a plain one by its PEFT type
            what = entry.label if entry is not None and entry.detect is not None else adapter.peft_type
            raise UnsupportedMethod(f"the vllm backend serves LoRA adapters only, not {what} ({adapter.path})",
                                    hint="evaluate this adapter with --backend hf")
        rank = int(cfg.get("r") or 0)
        ranks = [int(v) for v in (cfg.get("rank_pattern") or {}).values()]
        if max([rank, *ranks]) > self.max_lora_rank:
            raise UnsupportedMethod(f"LoRA rank {max([rank, *ranks])} is above the vllm engine's max_lora_rank {self.max_lora_rank}",
                                    hint="use --backend hf, or raise max_lora_rank")
        from vllm.lora.request import LoRARequest

        d, td = peft_dir_for(adapter)
        if td is not None:
            self._keep.append(td)
        self.lora_request = LoRARequest(name or f"adapter{self._next_id}", self._next_id, str(d))
        self._next_id += 1

    def generate(self, tokenizer, prompts: list[str], *, max_new_tokens: int = 256, stop=(), temperature: float = 0.0,
                 top_p: float = 1.0, n_samples: int = 1, seed: int = 0, batch_size=None, progress=None, label: str = "",
                 **_):
        """Completions for every prompt, in the HF engine's :class:`Generation` layout."""
        import vllm

        stop = tuple(s for s in (stop or ()) if s)
        greedy = temperature is None or temperature <= 0
        n_run = 1 if greedy else int(n_samples)
        params = vllm.SamplingParams(n=n_run, temperature=0.0 if greedy else float(temperature),
                                     top_p=1.0 if greedy else float(top_p), max_tokens=int(max_new_tokens),
                                     stop=list(stop) or None, seed=int(seed))
        enc = encode_prompts(tokenizer, prompts)
        t0 = time.perf_counter()
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in enc], params,
                                 lora_request=self.lora_request, use_tqdm=False)
        secs = time.perf_counter() - t0
        texts, counts, generated = [], [], 0
        for out in outs:
            t_i, n_i = [], []
            for o in out.outputs[:n_run]:
                text = o.text
                cut = first_stop(text, stop)
                t_i.append(text[:cut] if cut >= 0 else text)
                n_i.append(len(o.token_ids))
                generated += len(o.token_ids)
            if greedy:
                t_i, n_i = t_i * n_samples, n_i * n_samples
            texts.append(t_i)
            counts.append(n_i)
        if len(texts) != len(prompts):  # pragma: no cover - vLLM returns one output per prompt
            raise RuntimeError(f"vllm returned {len(texts)} outputs for {len(prompts)} prompts")
        if progress is not None:
            progress(len(prompts) * n_run, len(prompts) * n_run, label)
        return Generation(texts, counts, seconds=secs, prompt_tokens=sum(len(e) for e in enc),
                          generated_tokens=generated, extra={"backend": "vllm"})
