"""Capturing module activations: module selection, tokenisation, and forward hooks.

Every selected module is hooked at once, so one forward pass per prompt batch captures all of
them. Batches are right-padded and the attention mask removes padding positions, so a token's
activations are the same as in an unbatched run (positions start at 0 for every prompt).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from peftarena_cli.errors import IncompatibleInputs

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def linear_module_names(model) -> list[str]:
    """Names of the ``nn.Linear`` modules inside decoder layers (base-model naming)."""
    import torch

    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and _LAYER.search(name):
            out.append(name)
    return out


@dataclass
class Tokenized:
    ids: list[list[int]]
    n_truncated: int  # prompts cut to max_length
    n_tokens: int


def tokenize(tokenizer, prompts: list[str], max_length: int) -> Tokenized:
    """Token ids per prompt (no padding), cut to ``max_length`` tokens; truncation is counted."""
    ids, cut = [], 0
    for p in prompts:
        t = tokenizer(p, add_special_tokens=True)["input_ids"]
        if len(t) > max_length:
            cut += 1
            t = t[:max_length]
        if not t:
            t = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
        ids.append(list(t))
    return Tokenized(ids, cut, sum(len(t) for t in ids))


def batches(tok: Tokenized, batch_size: int, pad_id: int, device="cpu"):
    """Yield ``(input_ids, attention_mask)`` right-padded batches, in prompt order."""
    import torch

    for i in range(0, len(tok.ids), batch_size):
        chunk = tok.ids[i:i + batch_size]
        L = max(len(t) for t in chunk)
        ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), L), dtype=torch.long)
        for j, t in enumerate(chunk):
            ids[j, : len(t)] = torch.tensor(t, dtype=torch.long)
            mask[j, : len(t)] = 1
        yield ids.to(device), mask.to(device)


def decoder_of(model):
    """The transformer body (no LM head) to run for activations, or the model itself."""
    inner = model
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    body = getattr(inner, "model", None)
    import torch

    return body if isinstance(body, torch.nn.Module) and hasattr(body, "layers") else inner


def find_modules(model, names: list[str]) -> dict[str, object]:
    """Map base-model module names to the modules of ``model`` (plain or PEFT-wrapped)."""
    table = dict(model.named_modules())
    out = {}
    for n in names:
        for cand in (n, f"base_model.model.{n}", f"model.{n}"):
            if cand in table:
                out[n] = table[cand]
                break
        else:
            raise IncompatibleInputs(f"module {n!r} is missing from the model", hint="check base and adapter")
    return out


class StopForward(Exception):
    """Raised by a capture hook once the last module it needs has run: the rest of the forward pass
    is skipped (a pass for the first layers' modules costs only those layers)."""


def run_until(body, capture, **inputs) -> None:
    """``body(**inputs)``, ended early by ``capture``'s :class:`StopForward` when it has a ``stop_after``."""
    try:
        body(**inputs)
    except StopForward:
        pass


@dataclass
class ModuleCapture:
    """Forward hooks on named modules; after each forward, ``captured[name]`` is the (tokens × d)
    activation with padding removed (``what`` = "input" or "output").

    ``sink(name, X)`` if given is called instead of storing (to reduce sums on the fly). Inputs
    shared by several modules (q/k/v, gate/up) are captured once: ``shared[name]`` is the name of
    the module whose captured input it reuses. With ``stop_after`` (a module name), the forward pass
    stops with :class:`StopForward` once that module has been captured (run it with :func:`run_until`).
    """

    modules: dict
    what: str = "output"
    dtype: object = None
    sink: object = None
    dedupe: bool = False
    stop_after: str | None = None
    captured: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)
    _mask: object = None
    _handles: list = field(default_factory=list)
    _ptrs: dict = field(default_factory=dict)

    def __enter__(self):
        for name, mod in self.modules.items():
            if self.what == "input":
                h = mod.register_forward_pre_hook(self._make_pre(name))
            else:
                h = mod.register_forward_hook(self._make_post(name))
            self._handles.append(h)
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._ptrs = {}
        return False

    def set_mask(self, attention_mask) -> None:
        self._mask = attention_mask.bool()
        self._ptrs = {}

    def _take(self, name, t):
        x = t[self._mask] if t.dim() == 3 else t
        if self.dtype is not None:
            x = x.to(self.dtype)
        if self.sink is not None:
            self.sink(name, x)
        else:
            self.captured[name] = x

    def _make_pre(self, name):
        def hook(mod, args, kwargs=None):
            t = args[0]
            if self.dedupe:
                key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
                hit = self._ptrs.get(key)
                if hit is not None:
                    self.shared[name] = hit[0]
                    self._maybe_stop(name)
                    return None
                # keep the tensor alive until the next batch so its address cannot be reused by
                # another module's input within this forward pass
                self._ptrs[key] = (name, t)
                self.shared.pop(name, None)
            self._take(name, t.detach())
            self._maybe_stop(name)
            return None

        return hook

    def _maybe_stop(self, name) -> None:
        if name == self.stop_after:
            raise StopForward(name)

    def _make_post(self, name):
        def hook(mod, args, out):
            t = out[0] if isinstance(out, tuple) else out
            self._take(name, t.detach())
            self._maybe_stop(name)
            return None

        return hook


@dataclass
class Probe:
    """What one tiny forward pass tells about the selected modules: the order they run in, which
    read the same input tensor (``group``: module -> the first module reading its input), and their
    weight shapes (``shape``: module -> (d_out, d_in))."""

    order: list
    group: dict
    shape: dict


def probe_modules(model, names: list[str], token_id: int = 0) -> Probe:
    """Run ``model``'s body on two tokens with input hooks on ``names`` (no statistics)."""
    import torch

    mods = find_modules(model, names)
    order: list = []
    cap = ModuleCapture(mods, what="input", dedupe=True, sink=lambda name, h: order.append(name))
    dev = next(model.parameters()).device
    ids = torch.full((1, 2), int(token_id), dtype=torch.long, device=dev)
    mask = torch.ones_like(ids)
    # hooks of shared inputs do not call the sink: record every module as it runs
    seen: list = []
    handles = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.append(n)) for n, m in mods.items()]
    try:
        with cap, torch.inference_mode():
            cap.set_mask(mask)
            decoder_of(model)(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    run = [n for i, n in enumerate(seen) if n not in seen[:i]]
    run += [n for n in names if n not in run]  # a module the pass did not reach keeps the name order
    group = {n: cap.shared.get(n, n) for n in names}
    shape = {n: tuple(getattr(m, "weight").shape) for n, m in mods.items()}
    return Probe(run, group, shape)
