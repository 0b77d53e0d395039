"""The batched generation engine: where completions are produced for every evaluation.

One loaded model (a transformers model or a PeftModel, possibly with weights changed in place
between calls) generates completions for many prompts:

* prompts are tokenised once, **sorted by length** and cut into batches (little padding);
* each batch is **left-padded**, with position ids from the attention mask, so a row's tokens see
  exactly what they would see alone;
* decoding is a plain KV-cached loop: greedy (argmax) by default, or temperature sampling;
* prompts that share a long prefix (a BBH subtask's few-shot exemplars, a long system prompt) are
  batched together, and the prefix is **prefilled once** and its KV cache given to every row
  (:func:`shared_prefix_len`, at least ``MIN_SHARED_PREFIX`` tokens); the rows' own suffixes follow,
  left-padded after it, with positions continuing from the prefix; any batch whose rows share a
  shorter head (``MIN_BATCH_PREFIX``, e.g. a chat template's system turn) prefills it once too;
* each row stops at EOS or at any **stop sequence**;
* **continuous batching** (:func:`_decode_stream`): the prompts are a queue; when a quarter of the
  batch has finished, the finished rows are dropped and the next prompts are prefilled and joined
  to the running batch, so it stays full until the queue runs out (a static batch shrinks to its
  longest rows; ``generate`` even keeps computing finished rows until the longest one ends).
  ``continuous=False`` keeps static batches (:func:`_decode_batch`), which models with
  sliding-window cache layers always use;
* the KV cache is **allocated once** for the batch's longest row (prompt + budget) and each step
  writes one position into it (:func:`_prealloc_layer_class`), instead of transformers' default cache that
  concatenates, i.e. copies the whole cache of every layer, at every step;
* sampling draws each row from its **own seeded generator** (seed, prompt index, sample), so a
  sampled completion does not depend on the batch it ran in, the batch size or the process
  (data-parallel ranks, ``evaluation/distributed.py``) that ran it;
* on CPU, the intra-op thread count follows the cores other processes leave free
  (:class:`~peftarena_cli.evaluation.cpu_share.ThreadGovernor`), so a busy machine slows the engine
  in proportion to the CPU it loses instead of collapsing under spin-waiting threads.

:class:`HfBackend` is this engine as a
:class:`~peftarena_cli.evaluation.backend.GenerationBackend`; :func:`generate` takes a model or any
backend.

The result keeps the input order. Core code: no printing; progress goes to ``progress(done,
total, label)``.
"""

from __future__ import annotations

import time

from peftarena_cli.evaluation.backend import Generation, GenerationBackend, encode_prompts, first_stop

__all__ = ["Generation", "GenerationBackend", "HfBackend", "encode_prompts", "generate", "eos_ids",
           "shared_prefix_len", "prefix_groups", "MIN_SHARED_PREFIX", "default_batch_size"]

DEFAULT_BATCH_CPU = 64
DEFAULT_BATCH_GPU = 128
# A batch holds at most this many (prompt + new) token positions, so long few-shot prompts
# (BBH: ~2k tokens) go in smaller batches and the KV cache / prefill activations stay bounded.
MAX_BATCH_TOKENS_CPU = 32_768
MAX_BATCH_TOKENS_GPU = 262_144


def default_batch_size(model) -> int:
    dev = _device(model)
    return DEFAULT_BATCH_GPU if dev.type == "cuda" else DEFAULT_BATCH_CPU


def _device(model):
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if src is None:
            continue
        ids.update(src if isinstance(src, (list, tuple, set)) else [src])
    return {int(i) for i in ids}


_first_stop = first_stop  # (older name)


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 256, stop=(),
             temperature: float = 0.0, top_p: float = 1.0, n_samples: int = 1, seed: int = 0,
             batch_size: int | None = None, progress=None, label: str = "", share_prefix: bool = True,
             adapt_threads: bool = True, row_ids: list[int] | None = None, continuous: bool = True) -> Generation:
    """Generate ``n_samples`` completions for each prompt (see the module docstring).

    ``model`` is a transformers / PEFT model (the built-in engine) or any
    :class:`~peftarena_cli.evaluation.backend.GenerationBackend`, which then generates on its own.
    Greedy decoding (``temperature == 0``) gives the same completion for every sample, so it is
    computed once per prompt. Completions are cut before the first stop sequence.
    ``adapt_threads``: on CPU, follow the free cores (:mod:`~peftarena_cli.evaluation.cpu_share`).
    ``row_ids``: the prompts' indices in a larger set (a data-parallel shard), which seed sampling.
    """
    if isinstance(model, HfBackend):
        return model.generate(tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop, temperature=temperature,
                              top_p=top_p, n_samples=n_samples, seed=seed, batch_size=batch_size, progress=progress,
                              label=label, row_ids=row_ids)
    if isinstance(model, GenerationBackend):  # e.g. the vllm backend: it generates on its own
        return model.generate(tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop, temperature=temperature,
                              top_p=top_p, n_samples=n_samples, seed=seed, batch_size=batch_size, progress=progress,
                              label=label)
    return HfBackend(model, share_prefix=share_prefix, adapt_threads=adapt_threads, continuous=continuous).generate(
        tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop, temperature=temperature, top_p=top_p,
        n_samples=n_samples, seed=seed, batch_size=batch_size, progress=progress, label=label, row_ids=row_ids)


class HfBackend(GenerationBackend):
    """The built-in batched engine over one loaded transformers / PEFT model (module docstring)."""

    name = "hf"

    def __init__(self, model, share_prefix: bool = True, adapt_threads: bool = True, continuous: bool = True):
        self.model = model
        self.share_prefix = share_prefix
        self.adapt_threads = adapt_threads
        self.continuous = continuous

    def generate(self, tokenizer, prompts: list[str], *, max_new_tokens: int = 256, stop=(),
                 temperature: float = 0.0, top_p: float = 1.0, n_samples: int = 1, seed: int = 0,
                 batch_size: int | None = None, progress=None, label: str = "", row_ids=None, **_) -> Generation:
        import torch

        from peftarena_cli.evaluation.cpu_share import ThreadGovernor

        model, share_prefix = self.model, self.share_prefix
        stop = tuple(s for s in (stop or ()) if s)
        greedy = temperature is None or temperature <= 0
        n_run = 1 if greedy else int(n_samples)
        bs = int(batch_size or default_batch_size(model))
        dev = _device(model)
        budget = MAX_BATCH_TOKENS_GPU if dev.type == "cuda" else MAX_BATCH_TOKENS_CPU
        enc = encode_prompts(tokenizer, prompts)
        rows = [(i, s) for i in range(len(prompts)) for s in range(n_run)]
        group = prefix_groups(enc) if share_prefix else list(range(len(enc)))
        longest: dict[int, int] = {}
        for i, g in enumerate(group):
            longest[g] = max(longest.get(g, 0), len(enc[i]))
        # longest first, rows of one prefix group together (a batch then shares its prefix)
        order = sorted(range(len(rows)), key=lambda r: (-longest[group[rows[r][0]]], group[rows[r][0]],
                                                         -len(enc[rows[r][0]]), r))
        eos = eos_ids(model, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos) if eos else 0)
        ids_of = list(row_ids) if row_ids is not None else list(range(len(prompts)))
        texts: dict[tuple[int, int], str] = {}
        counts: dict[tuple[int, int], int] = {}
        gen_ids: dict[tuple[int, int], list[int]] = {}
        t0 = time.perf_counter()
        done = 0
        tail_len = max((len(s) for s in stop), default=0) + 8
        was_training = model.training
        model.eval()
        gov = ThreadGovernor(enabled=self.adapt_threads and dev.type == "cpu")
        continuous = self.continuous and continuous_ok(model)
        try:
            with torch.inference_mode():
                if continuous:
                    units = ([rows[r] for r in run] for run in _streams(order, rows, group))
                else:
                    units = _batches(order, rows, enc, bs, max_new_tokens, budget, group)
                for batch in units:
                    gens = None if greedy else [_row_generator(seed, ids_of[i], s) for i, s in batch]
                    seqs = [enc[i] for i, _ in batch]
                    if continuous:
                        tell = None if progress is None else (lambda k, d=done: progress(d + k, len(rows), label))
                        out_ids = _decode_stream(model, seqs, max_new_tokens, eos, stop, tail_len, tokenizer, dev,
                                                 greedy, temperature, top_p, gens, bs, budget, share_prefix,
                                                 gov.poll, tell)
                    else:
                        out_ids = _decode_batch(model, seqs, max_new_tokens, eos, stop, tail_len, tokenizer, pad_id,
                                                dev, greedy, temperature, top_p, gens, share_prefix, gov.poll)
                    for key, ids in zip(batch, out_ids):
                        text = tokenizer.decode(ids, skip_special_tokens=True)
                        cut = first_stop(text, stop)
                        texts[key] = text[:cut] if cut >= 0 else text
                        counts[key] = len(ids)
                        gen_ids[key] = ids
                    done += len(batch)
                    if progress is not None:
                        progress(done, len(rows), label)
        finally:
            gov.close()
            if was_training:
                model.train()
        secs = time.perf_counter() - t0
        extra = {"backend": "hf", "batching": "continuous" if continuous else "static"}
        if gov.history:  # the thread counts the governor chose
            extra["threads"] = sorted({h[2] for h in gov.history})
        keys = [[(i, 0 if greedy else s) for s in range(n_samples)] for i in range(len(prompts))]
        return Generation([[texts[k] for k in ks] for ks in keys], [[counts[k] for k in ks] for ks in keys],
                          seconds=secs, prompt_tokens=sum(len(e) for e in enc), generated_tokens=sum(counts.values()),
                          token_ids=[[gen_ids[k] for k in ks] for ks in keys], extra=extra)


def _row_generator(seed: int, item: int, sample: int):
    """The sampling generator of one row: a function of (seed, prompt index, sample) only."""
    import torch

    mixed = (int(seed) * 0x9E3779B1 + int(item) * 0x85EBCA77 + int(sample) * 0xC2B2AE3D) % (2 ** 63 - 1)
    return torch.Generator(device="cpu").manual_seed(mixed)


# Continuous batching refills the batch when 1/REFILL_PART of its rows are free (finished rows are
# dropped then too): fewer refills copy the KV cache less often, more keep the batch fuller.
REFILL_PART = 4
MIN_SHARED_PREFIX = 64  # tokens; prompts sharing at least this many are batched together (prefix groups)
# Within any batch, a common prefix of at least this many tokens (a chat template's head and system
# prompt: 24 tokens for SmolLM2) is prefilled once; batching itself does not change.
MIN_BATCH_PREFIX = 16


def shared_prefix_len(seqs: list[list[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """Tokens that every row of a batch starts with (few-shot exemplars, a system prompt), kept
    below the shortest row so each row has a suffix; 0 when a single row or fewer than ``minimum``."""
    if len(seqs) < 2:
        return 0
    first, p = seqs[0], min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        k = 0
        while k < p and s[k] == first[k]:
            k += 1
        p = k
        if p < minimum:
            return 0
    return p


def prefix_groups(enc: list[list[int]], minimum: int = MIN_SHARED_PREFIX) -> list[int]:
    """A group id per prompt: prompts whose token ids share at least ``minimum`` leading tokens with
    a lexicographic neighbour are one group (e.g. one BBH subtask's few-shot prompts); others are
    alone in theirs."""
    idx = sorted(range(len(enc)), key=lambda i: enc[i])
    group, g = [0] * len(enc), -1
    for j, i in enumerate(idx):
        if j == 0 or shared_prefix_len([enc[idx[j - 1]], enc[i]], minimum) == 0:
            g += 1
        group[i] = g
    return group


def _streams(order, rows, group):
    """Consecutive runs of ``order`` that may be decoded together: a run ends where a prefix group
    of several prompts begins or ends (so a run either shares its prefix or holds only prompts
    that share none with the others)."""
    size: dict[int, int] = {}
    for g in group:
        size[g] = size.get(g, 0) + 1
    run, prev = [], None
    for r in order:
        g = group[rows[r][0]]
        if run and g != prev and (size[g] > 1 or size[prev] > 1):
            yield run
            run = []
        run.append(r)
        prev = g
    if run:
        yield run


def _batches(order, rows, enc, bs, max_new_tokens, budget, group=None):
    """The static batches (``continuous=False``): consecutive rows of each :func:`_streams` run, at
    most ``bs`` per batch and at most ``budget`` token positions (rows x longest prompt +
    max_new_tokens); a single row always forms a batch."""
    group = group or list(range(len(enc)))
    for run in _streams(order, rows, group):
        batch, width = [], 0
        for r in run:
            w = max(width, len(enc[rows[r][0]]) + max_new_tokens)
            if batch and (len(batch) >= bs or (len(batch) + 1) * w > budget):
                yield [rows[x] for x in batch]
                batch, w = [], len(enc[rows[r][0]]) + max_new_tokens
            batch.append(r)
            width = w
        if batch:
            yield [rows[x] for x in batch]


def _cache_kw(model) -> str:
    """transformers >= 5.x names the KV cache argument ``cache``; older versions ``past_key_values``."""
    import inspect

    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(m.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _forward(model, **kw):
    try:
        return model(**kw, logits_to_keep=1)
    except TypeError:
        return model(**kw)


_PREALLOC_LAYER = None  # the class below, built on first use (transformers is imported lazily)


def _prealloc_layer_class():
    """A DynamicLayer whose keys/values live in buffers allocated once for the batch's longest row:
    ``update`` writes the new positions in place and returns views of the filled part, so a decode
    step no longer copies the whole cache (DynamicLayer's ``torch.cat``). Dropping rows copies the
    filled part of the kept rows once."""
    global _PREALLOC_LAYER
    if _PREALLOC_LAYER is not None:
        return _PREALLOC_LAYER
    from transformers.cache_utils import DynamicLayer

    class PreallocLayer(DynamicLayer):
        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = int(capacity)
            self.n = 0

        def lazy_initialization(self, key_states, value_states):
            b, h, _, d = key_states.shape
            self.device = key_states.device
            self._k = key_states.new_empty((b, h, self.capacity, d))
            self._v = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
            self.n = 0
            self.keys, self.values = self._k[:, :, :0], self._v[:, :, :0]
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            s = key_states.shape[-2]
            end = self.n + s
            if end > self._k.shape[2]:  # more than planned (should not happen): grow
                self._resize(self._k.shape[0], max(end, 2 * self._k.shape[2]))
            self._k[:, :, self.n:end] = key_states
            self._v[:, :, self.n:end] = value_states
            self.n = end
            self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
            return self.keys, self.values

        def _resize(self, rows: int, capacity: int, index=None, repeats: int = 1):
            k, v = self._k[:, :, :self.n], self._v[:, :, :self.n]
            if index is not None:
                k, v = k.index_select(0, index), v.index_select(0, index)
            nk = k.new_empty((rows, k.shape[1], capacity, k.shape[3]))
            nv = v.new_empty((rows, v.shape[1], capacity, v.shape[3]))
            if repeats > 1:
                k, v = k.repeat_interleave(repeats, dim=0), v.repeat_interleave(repeats, dim=0)
            nk[:, :, :self.n] = k
            nv[:, :, :self.n] = v
            self._k, self._v = nk, nv
            self.keys, self.values = nk[:, :, :self.n], nv[:, :, :self.n]

        def adopt(self, k, v, n: int) -> None:
            """Take ``k`` / ``v`` (rows, heads, capacity, dim) as the buffers, ``n`` positions filled."""
            self._k, self._v, self.n = k, v, int(n)
            self.device = k.device
            self.keys, self.values = k[:, :, :self.n], v[:, :, :self.n]
            self.is_initialized = True

        def get_seq_length(self) -> int:
            return self.n if self.is_initialized else 0

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized:
                self._resize(self._k.shape[0] * repeats, self._k.shape[2], repeats=repeats)

        def batch_select_indices(self, indices) -> None:
            if self.is_initialized:
                self._resize(int(indices.shape[0]), self._k.shape[2], index=indices)

        def crop(self, tokens_to_remove: int) -> None:  # pragma: no cover - not used by the engine
            raise NotImplementedError

        def reset(self) -> None:  # pragma: no cover - not used by the engine
            self.n = 0
            self.is_initialized = False

    _PREALLOC_LAYER = PreallocLayer
    return PreallocLayer


def _new_cache(model, capacity: int):
    """A DynamicCache whose full-attention layers are pre-allocated for ``capacity`` positions
    (sliding-window layers, if any, keep transformers' own)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=getattr(model, "config", None))
    except TypeError:  # pragma: no cover - older transformers
        cache = DynamicCache()
    layer_cls = _prealloc_layer_class()
    layers = getattr(cache, "layers", None)
    if layers:
        for j, layer in enumerate(layers):
            if type(layer) is DynamicLayer:
                layers[j] = layer_cls(capacity)
    elif layers is not None and getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        cache.layer_class_to_replicate = lambda: layer_cls(capacity)
    return cache


def _decode_batch(model, seqs, max_new_tokens, eos, stop, tail_len, tokenizer, pad_id, dev, greedy,
                  temperature, top_p, gens, share_prefix: bool = True, tick=None):
    """Decode one left-padded batch; return each row's generated ids (including a final EOS).
    ``gens``: one torch.Generator per row when sampling; ``tick()`` is called once per step."""
    import torch

    n = len(seqs)
    p = shared_prefix_len(seqs, MIN_BATCH_PREFIX) if share_prefix else 0
    width = max(len(s) for s in seqs) - p
    cache = _new_cache(model, p + width + max_new_tokens)
    ck = _cache_kw(model)
    outs = [[] for _ in range(n)]
    active = list(range(n))          # original row index of each live batch row
    if p:  # prefill the shared prefix once and give every row its KV cache; then the rows' suffixes
        _forward(model, input_ids=torch.tensor([seqs[0][:p]], dtype=torch.long, device=dev), use_cache=True,
                 position_ids=torch.arange(p, device=dev)[None], **{ck: cache})
        cache.batch_repeat_interleave(n)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if len(s) > p:
            ids[r, width - (len(s) - p):] = torch.tensor(s[p:], dtype=torch.long)
            mask[r, width - (len(s) - p):] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    pos = (p + mask.cumsum(-1) - 1).clamp_(min=p)   # positions continue after the prefix (p = 0: none)
    # the attention mask for the whole batch, allocated once: [prefix][left-padded rest][new tokens]
    full = torch.ones((n, p + width + max_new_tokens), dtype=mask.dtype, device=dev)
    full[:, p:p + width] = mask
    cur = p + width
    out = _forward(model, input_ids=ids, attention_mask=full[:, :cur], position_ids=pos, use_cache=True, **{ck: cache})
    last_pos = pos[:, -1]
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=dev) if eos else None
    for step in range(max_new_tokens):
        if tick is not None:
            tick()
        nxt = _pick(out.logits[:, -1, :], greedy, temperature, top_p, gens, active, dev)
        nxt_l = nxt.tolist()
        eos_l = torch.isin(nxt, eos_t).tolist() if eos_t is not None else [False] * len(nxt_l)
        keep = []
        last = step == max_new_tokens - 1
        for j, r in enumerate(active):
            outs[r].append(nxt_l[j])
            finished = eos_l[j] or last
            if not finished and stop:
                tail = tokenizer.decode(outs[r][-tail_len:], skip_special_tokens=True)
                finished = any(s in tail for s in stop)
            if not finished:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):
            sel = torch.tensor(keep, dtype=torch.long, device=dev)
            cache.batch_select_indices(sel)
            full = full.index_select(0, sel)
            nxt = nxt.index_select(0, sel)
            last_pos = last_pos.index_select(0, sel)
            active = [active[j] for j in keep]
        cur += 1
        last_pos = last_pos + 1
        out = _forward(model, input_ids=nxt[:, None], attention_mask=full[:, :cur], position_ids=last_pos[:, None],
                       use_cache=True, **{ck: cache})
    return outs


def _pick(logits, greedy, temperature, top_p, gens, row_of, dev):
    """The next token of each batch row: argmax, or a draw from row ``row_of[j]``'s own generator."""
    import torch

    if greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / float(temperature), dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(-1, descending=True)
        keep = sp.cumsum(-1) - sp < top_p
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter_(-1, si, sp)
    probs = probs.cpu()
    return torch.cat([torch.multinomial(probs[j], 1, generator=gens[r]) for j, r in enumerate(row_of)]).to(dev)


def continuous_ok(model) -> bool:
    """Whether every layer of the model's KV cache is the engine's pre-allocated one (the stream
    decoder moves rows between such buffers; sliding-window layers keep the static batches)."""
    layer_cls = _prealloc_layer_class()
    cache = _new_cache(model, 1)
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(isinstance(x, layer_cls) for x in layers)


class _Stream:
    """One stream's decoding state: a batch of live (and not yet dropped finished) rows over one
    pre-allocated KV cache, refilled from a queue of prompts as rows finish (:func:`_decode_stream`)."""

    def __init__(self, model, seqs, max_new_tokens, prefix_len, dev):
        self.model, self.seqs, self.max_new, self.p, self.dev = model, seqs, max_new_tokens, prefix_len, dev
        self.ck = _cache_kw(model)
        self.cache = None
        self.rows: list[int] = []        # the prompt (index into seqs) of each batch row
        self.nxt = self.last_pos = self.full = None
        self.cur = 0                     # filled cache positions (same for every batch row)
        self.prefix = None               # per layer (k, v) of the shared prefix, 1 row

    def _prefix_kv(self):
        import torch

        if self.prefix is None:
            cache = _new_cache(self.model, self.p)
            _forward(self.model, input_ids=torch.tensor([self.seqs[0][:self.p]], dtype=torch.long, device=self.dev),
                     position_ids=torch.arange(self.p, device=self.dev)[None], use_cache=True, **{self.ck: cache})
            self.prefix = [(x._k[:, :, :self.p], x._v[:, :, :self.p]) for x in cache.layers]
        return self.prefix

    def prefill(self, new_rows):
        """Prefill ``new_rows`` (stream rows) in a cache of their own; returns (cache, width, logits,
        last positions, attention mask over the width)."""
        import torch

        p, seqs = self.p, self.seqs
        width = max(len(seqs[r]) for r in new_rows) - p
        n = len(new_rows)
        cache = _new_cache(self.model, p + width)
        if p:
            for layer, (k, v) in zip(cache.layers, self._prefix_kv()):
                kb = k.new_empty((n, k.shape[1], p + width, k.shape[3]))
                vb = v.new_empty((n, v.shape[1], p + width, v.shape[3]))
                kb[:, :, :p] = k
                vb[:, :, :p] = v
                layer.adopt(kb, vb, p)
        ids = torch.full((n, width), 0, dtype=torch.long)
        mask = torch.zeros((n, p + width), dtype=torch.long)
        mask[:, :p] = 1
        for j, r in enumerate(new_rows):
            s = seqs[r][p:]
            ids[j, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[j, p + width - len(s):] = 1
        ids, mask = ids.to(self.dev), mask.to(self.dev)
        pos = (p + mask[:, p:].cumsum(-1) - 1).clamp_(min=p)
        out = _forward(self.model, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                       **{self.ck: cache})
        return cache, p + width, out.logits[:, -1, :], pos[:, -1], mask

    def occupied(self, j: int, outs) -> int:
        """Cache positions batch row ``j`` uses: its prompt and the generated tokens already fed."""
        r = self.rows[j]
        return len(self.seqs[r]) + len(outs[r]) - 1

    def merge(self, keep, new_rows, new_cache, new_w, new_nxt, new_pos, new_mask, outs):
        """The kept batch rows and the prefilled new ones in one cache. Every row's columns are the
        shared prefix (``p``, at the left, as prefilled) and its own tail (suffix and generated
        tokens, contiguous, ending at the current position): the prefix stays at [0, p), the tails
        are right-aligned at the end of the longest one (shorter rows left-padded with masked zeros
        between prefix and tail), and columns no row uses any more are cut."""
        import torch

        if not keep and not new_rows:              # everything finished: an empty batch
            self.rows, self.cache, self.full, self.cur, self.nxt, self.last_pos = [], None, None, 0, None, None
            return
        p = self.p
        t_old = max((self.occupied(j, outs) - p for j in keep), default=0)   # tails of the kept rows
        t_new = new_w - p if new_rows else 0
        w = p + max(t_old, t_new)
        cap = w + self.max_new + 1
        n_keep, n = len(keep), len(keep) + len(new_rows)
        layers = [] if self.cache is None else self.cache.layers
        sel = torch.tensor(keep, dtype=torch.long, device=self.dev) if n_keep else None
        src_new = new_cache.layers if new_cache is not None else [None] * len(layers)
        merged = _new_cache(self.model, cap)
        c = self.cur
        for dst, lo, ln in zip(merged.layers, layers or [None] * len(src_new), src_new):
            src = ln if ln is not None else lo
            k = src._k.new_empty((n, src._k.shape[1], cap, src._k.shape[3]))
            v = src._v.new_empty((n, src._v.shape[1], cap, src._v.shape[3]))
            for buf, old, new in ((k, None if lo is None else lo._k, None if ln is None else ln._k),
                                  (v, None if lo is None else lo._v, None if ln is None else ln._v)):
                if n_keep:
                    kept = old.index_select(0, sel)
                    buf[:n_keep, :, :p] = kept[:, :, :p]
                    buf[:n_keep, :, p:w - t_old] = 0
                    buf[:n_keep, :, w - t_old:w] = kept[:, :, c - t_old:c]
                if new is not None:
                    buf[n_keep:, :, :p] = new[:, :, :p]
                    buf[n_keep:, :, p:w - t_new] = 0
                    buf[n_keep:, :, w - t_new:w] = new[:, :, p:new_w]
            dst.adopt(k, v, w)
        full = torch.ones((n, cap), dtype=torch.long, device=self.dev)
        full[:, :w] = 0
        parts_nxt, parts_pos = [], []
        if n_keep:
            fk = self.full.index_select(0, sel)
            full[:n_keep, :p] = fk[:, :p]
            full[:n_keep, w - t_old:w] = fk[:, c - t_old:c]
            parts_nxt.append(self.nxt.index_select(0, sel))
            parts_pos.append(self.last_pos.index_select(0, sel))
        if new_rows:
            full[n_keep:, :p] = new_mask[:, :p]
            full[n_keep:, w - t_new:w] = new_mask[:, p:new_w]
            parts_nxt.append(new_nxt)
            parts_pos.append(new_pos)
        self.rows = [self.rows[j] for j in keep] + list(new_rows)
        self.cache, self.full, self.cur = merged, full, w
        self.nxt, self.last_pos = torch.cat(parts_nxt), torch.cat(parts_pos)

    def step(self):
        """Feed every batch row's pending token; returns the logits of the next one."""
        self.cur += 1
        self.last_pos = self.last_pos + 1
        out = _forward(self.model, input_ids=self.nxt[:, None], attention_mask=self.full[:, :self.cur],
                       position_ids=self.last_pos[:, None], use_cache=True, **{self.ck: self.cache})
        return out.logits[:, -1, :]


def _decode_stream(model, seqs, max_new_tokens, eos, stop, tail_len, tokenizer, dev, greedy, temperature,
                   top_p, gens, bs, budget, share_prefix=True, tick=None, finished=None):
    """Decode every prompt of ``seqs`` (one :func:`_streams` run, longest first) with **continuous
    batching**: at most ``bs`` rows (and ``budget`` token positions) are decoded together; a row
    that finishes stays in the batch, masked, until a quarter of the batch is free, when the
    finished rows are dropped and the next prompts of the queue are prefilled (from the shared
    prefix's KV when the run has one) and joined to the batch. So the batch stays nearly full until
    the queue runs out, instead of shrinking to its longest rows as a static batch does, and the
    KV cache is copied once per refill instead of at every step where a row ends.
    ``gens``: one generator per prompt when sampling. ``finished(k)``: k prompts are done.
    Returns each prompt's generated ids (including a final EOS)."""
    import torch

    p = shared_prefix_len(seqs, MIN_BATCH_PREFIX) if share_prefix else 0
    st = _Stream(model, seqs, max_new_tokens, p, dev)
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=dev) if eos else None
    outs: list[list[int]] = [[] for _ in seqs]
    done: set[int] = set()         # prompts finished
    head = 0                       # next prompt to admit

    def settle(logits, rows):
        """Pick the next token of each batch row (prompts ``rows``); record the prompts that end."""
        nxt = _pick(logits, greedy, temperature, top_p, gens, rows, dev)
        nxt_l = nxt.tolist()
        eos_l = torch.isin(nxt, eos_t).tolist() if eos_t is not None else [False] * len(nxt_l)
        for j, r in enumerate(rows):
            if r in done:
                continue
            outs[r].append(nxt_l[j])
            end = eos_l[j] or len(outs[r]) >= max_new_tokens
            if not end and stop:
                tail = tokenizer.decode(outs[r][-tail_len:], skip_special_tokens=True)
                end = any(x in tail for x in stop)
            if end:
                done.add(r)
        return nxt

    while True:
        live = [j for j, r in enumerate(st.rows) if r not in done]
        n_rows, n_live, left = len(st.rows), len(live), len(seqs) - head
        new_rows: list[int] = []
        if left:
            w_est = max([len(seqs[head])] + [st.occupied(j, outs) for j in live])
            max_rows = max(1, min(bs, budget // (w_est + max_new_tokens)))
            want = min(max_rows - n_live, left)
            if want > 0 and (n_live == 0 or want >= min(max(1, max_rows // REFILL_PART), left)):
                new_rows = list(range(head, head + want))
                head += want
        dead = n_rows - n_live
        if new_rows:
            cache, w, logits, pos, mask = st.prefill(new_rows)
            nxt = settle(logits, new_rows)
            st.merge(live, new_rows, cache, w, nxt, pos, mask, outs)
        elif dead and (n_live == 0 or dead >= max(1, n_rows // REFILL_PART)):
            st.merge(live, [], None, 0, None, None, None, outs)
        if finished is not None and (new_rows or dead):
            finished(len(done))
        if all(r in done for r in st.rows):
            if head >= len(seqs):
                break
            continue
        if tick is not None:
            tick()
        st.nxt = settle(st.step(), st.rows)
    if finished is not None:
        finished(len(done))
    return outs
