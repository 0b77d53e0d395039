"""Drivers: run the model(s) over a prompt set once and fill the streamed statistics.

* :func:`collect_input_moments` — base model, every selected module's *input*, one forward pass
  per batch → :class:`~peftarena_cli.activations.moments.InputMoments` (for csd);
* :func:`collect_pair_sums` — base + adapter as one PeftModel; per batch one pass with the
  adapter disabled (X0) and one with it enabled (X1), every selected module's *output*, same
  tokens → ``{module: PairSums}`` (for act-geom), plus optional sampled rows for ``--gram-sample``.

Only the transformer body runs (no LM head); padding is excluded by the attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftarena_cli.activations.capture import (ModuleCapture, Tokenized, batches, decoder_of, find_modules, run_until,
                                              tokenize)
from peftarena_cli.activations.moments import InputMoments
from peftarena_cli.activations.pair_sums import PairSums


def _device_of(model):
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def collect_input_moments(model, tokenizer, prompts: list[str], modules: list[str], *, batch_size: int = 16,
                          max_length: int = 512, callback=None, tokenized: Tokenized | None = None,
                          stop_after: str | None = None) -> InputMoments:
    """Second moments of every selected module's input over ``prompts`` (base model). ``stop_after``:
    the selected module that runs last (the rest of each forward pass is skipped)."""
    import torch

    tok = tokenized or tokenize(tokenizer, prompts, max_length)
    dev = _device_of(model)
    body = decoder_of(model)
    mods = find_modules(model, modules)
    m = InputMoments(n_prompts=len(tok.ids), n_truncated=tok.n_truncated)
    cap = ModuleCapture(mods, what="input", dedupe=True, sink=lambda name, h: m.add(name, h), stop_after=stop_after)
    first_shared = None
    done = 0
    with cap, torch.inference_mode():
        for ids, mask in batches(tok, batch_size, _pad_id(tokenizer), dev):
            cap.set_mask(mask)
            run_until(body, cap, input_ids=ids, attention_mask=mask)
            if first_shared is None:
                first_shared = dict(cap.shared)
            elif cap.shared != first_shared:  # pragma: no cover - a model that reallocates inputs
                raise RuntimeError("shared-input grouping changed between batches")
            done += ids.shape[0]
            if callback:
                callback(done, len(tok.ids), f"{int(mask.sum())} tokens")
    m.module_group = {n: (first_shared or {}).get(n, n) for n in modules}
    return m


@dataclass
class GramSample:
    """Rows of X0/X1 at fixed global token indices (the study-style subsampled Gram)."""

    indices: object  # sorted LongTensor of global token positions
    rows0: dict = field(default_factory=dict)
    rows1: dict = field(default_factory=dict)

    @classmethod
    def choose(cls, n_tokens: int, k: int, seed: int) -> "GramSample":
        import torch

        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n_tokens, generator=g)[: min(k, n_tokens)].sort().values
        return cls(idx)

    def take(self, store: dict, name: str, X, offset: int) -> None:
        import torch

        lo = torch.searchsorted(self.indices, offset)
        hi = torch.searchsorted(self.indices, offset + X.shape[0])
        if hi > lo:
            sel = (self.indices[lo:hi] - offset).to(X.device)
            store.setdefault(name, []).append(X[sel].to(torch.float64).cpu())

    def matrices(self, name: str):
        import torch

        return torch.cat(self.rows0[name]), torch.cat(self.rows1[name])


def collect_pair_sums(peft_model, tokenizer, prompts: list[str], modules: list[str], *, batch_size: int = 16,
                      max_length: int = 512, accum_dtype=None, gram_sample: int = 0, seed: int = 0,
                      callback=None, tokenized: Tokenized | None = None, model1=None, stop_after: str | None = None):
    """Streamed act-geom sums for every selected module: ``({module: PairSums}, GramSample|None)``.

    With ``model1=None``, ``peft_model`` is a PEFT-wrapped model: the base outputs come from it with
    the adapter disabled. Otherwise ``peft_model`` is the base model and ``model1`` the fine-tuned
    model (full fine-tuning), run on the same batches. ``stop_after``: the selected module that runs
    last (the rest of each forward pass is skipped).
    """
    import contextlib

    import torch

    tok = tokenized or tokenize(tokenizer, prompts, max_length)
    dev = _device_of(peft_model)
    body = decoder_of(peft_model)
    mods = find_modules(peft_model, modules)
    body1 = body if model1 is None else decoder_of(model1)
    mods1 = mods if model1 is None else find_modules(model1, modules)
    off = peft_model.disable_adapter if model1 is None else contextlib.nullcontext
    dtype = accum_dtype or torch.float64
    sums: dict[str, PairSums] = {}
    sample = GramSample.choose(tok.n_tokens, gram_sample, seed) if gram_sample else None
    x0: dict = {}
    offset = 0

    def sink(name, X1):
        X0 = x0.pop(name)
        ps = sums.get(name)
        if ps is None:
            ps = sums[name] = PairSums.zeros(X1.shape[1], dtype=dtype, device=X1.device)
        ps.add(X0, X1)
        if sample is not None:
            sample.take(sample.rows0, name, X0, offset)
            sample.take(sample.rows1, name, X1, offset)

    cap0 = ModuleCapture(mods, what="output", stop_after=stop_after)
    cap1 = ModuleCapture(mods1, what="output", sink=sink, stop_after=stop_after)
    done = 0
    with torch.inference_mode():
        for ids, mask in batches(tok, batch_size, _pad_id(tokenizer), dev):
            with cap0, off():
                cap0.set_mask(mask)
                run_until(body, cap0, input_ids=ids, attention_mask=mask)
            x0.update(cap0.captured)
            cap0.captured.clear()
            with cap1:
                cap1.set_mask(mask)
                run_until(body1, cap1, input_ids=ids, attention_mask=mask)
            x0.clear()
            offset += int(mask.sum())
            done += ids.shape[0]
            if callback:
                callback(done, len(tok.ids), f"{int(mask.sum())} tokens")
    return {n: sums[n] for n in modules if n in sums}, sample


def collect_projected(model, tokenizer, prompts: list[str], factors: dict, *, batch_size: int = 16,
                      max_length: int = 512, callback=None, tokenized: Tokenized | None = None):
    """:class:`~peftarena_cli.activations.moments.ProjectedMoments` of the base model over ``prompts``
    for ``factors`` = {module: A} (the right factor of each module's ΔW = B A): one pass, every
    module at once; per module only r × r numbers are kept."""
    import torch

    from peftarena_cli.activations.moments import ProjectedMoments

    tok = tokenized or tokenize(tokenizer, prompts, max_length)
    dev = _device_of(model)
    body = decoder_of(model)
    mods = find_modules(model, list(factors))
    pm = ProjectedMoments(n_prompts=len(tok.ids), n_truncated=tok.n_truncated)
    state = {}

    def pre(name, A):
        def hook(mod, args, kwargs=None):
            t = args[0].detach()
            pm.add_input(name, t[state["mask"]] if t.dim() == 3 else t, A)
        return hook

    def post(name):
        def hook(mod, args, out):
            t = (out[0] if isinstance(out, tuple) else out).detach()
            y = t[state["mask"]] if t.dim() == 3 else t
            bias = getattr(mod, "bias", None)
            if bias is None and hasattr(mod, "base_layer"):
                bias = getattr(mod.base_layer, "bias", None)
            y = y.to(torch.float64)
            pm.add_output(name, y - bias.detach().to(y) if bias is not None else y)
        return hook

    handles = []
    try:
        for name, mod in mods.items():
            A = factors[name].to(dev, torch.float64)
            handles.append(mod.register_forward_pre_hook(pre(name, A)))
            handles.append(mod.register_forward_hook(post(name)))
        done = 0
        with torch.inference_mode():
            for ids, mask in batches(tok, batch_size, _pad_id(tokenizer), dev):
                state["mask"] = mask.bool()
                body(input_ids=ids, attention_mask=mask)
                done += ids.shape[0]
                if callback:
                    callback(done, len(tok.ids), f"{int(mask.sum())} tokens")
    finally:
        for h in handles:
            h.remove()
    return pm
