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
  left-padded after it, with positions continuing from the prefix;
* each row stops at EOS or at any **stop sequence**; finished rows are **dropped from the batch
  and its KV cache** at once, so a batch gets cheaper as its rows finish (no compute is spent on
  rows that are done, unlike ``generate`` which runs every row until the longest one ends).

The result keeps the input order. Core code: no printing; progress goes to ``progress(done,
total, label)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

DEFAULT_BATCH_CPU = 64
DEFAULT_BATCH_GPU = 128
# A batch holds at most this many (prompt + new) token positions, so long few-shot prompts
# (BBH: ~2k tokens) go in smaller batches and the KV cache / prefill activations stay bounded.
MAX_BATCH_TOKENS_CPU = 32_768
MAX_BATCH_TOKENS_GPU = 262_144


@dataclass
class Generation:
    """Completions in input order: ``texts[i][s]`` is sample ``s`` of prompt ``i``."""

    texts: list[list[str]]
    n_tokens: list[list[int]]            # generated tokens per completion (up to the stop)
    seconds: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0            # tokens actually decoded (greedy samples are computed once)
    extra: dict = field(default_factory=dict)
    token_ids: list[list[list[int]]] = field(default_factory=list)  # generated ids, a final EOS included

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


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


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt. A BOS is added only when the tokenizer adds one and the text
    (e.g. from a chat template) does not already start with it."""
    bos = tokenizer.bos_token
    out = []
    for p in prompts:
        add = not (bos and p.startswith(bos))
        out.append(tokenizer(p, add_special_tokens=add)["input_ids"])
    return out


def _first_stop(text: str, stop: tuple[str, ...]) -> int:
    cut = -1
    for s in stop:
        j = text.find(s)
        if j >= 0 and (cut < 0 or j < cut):
            cut = j
    return cut


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 256, stop=(),
             temperature: float = 0.0, top_p: float = 1.0, n_samples: int = 1, seed: int = 0,
             batch_size: int | None = None, progress=None, label: str = "", share_prefix: bool = True) -> Generation:
    """Generate ``n_samples`` completions for each prompt (see the module docstring).

    Greedy decoding (``temperature == 0``) gives the same completion for every sample, so it is
    computed once per prompt. Completions are cut before the first stop sequence.
    """
    from peftarena_cli.evaluation.vllm_backend import VllmModel

    if isinstance(model, VllmModel):  # the vllm backend generates on its own
        return model.generate(tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop, temperature=temperature,
                              top_p=top_p, n_samples=n_samples, seed=seed, batch_size=batch_size, progress=progress,
                              label=label)
    import torch

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
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    texts: dict[tuple[int, int], str] = {}
    counts: dict[tuple[int, int], int] = {}
    gen_ids: dict[tuple[int, int], list[int]] = {}
    t0 = time.perf_counter()
    done = 0
    tail_len = max((len(s) for s in stop), default=0) + 8
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _batches(order, rows, enc, bs, max_new_tokens, budget, group):
                out_ids = _decode_batch(model, [enc[i] for i, _ in batch], max_new_tokens, eos, stop, tail_len,
                                        tokenizer, pad_id, dev, greedy, temperature, top_p, gen, share_prefix)
                for key, ids in zip(batch, out_ids):
                    text = tokenizer.decode(ids, skip_special_tokens=True)
                    cut = _first_stop(text, stop)
                    texts[key] = text[:cut] if cut >= 0 else text
                    counts[key] = len(ids)
                    gen_ids[key] = ids
                done += len(batch)
                if progress is not None:
                    progress(done, len(rows), label)
    finally:
        if was_training:
            model.train()
    secs = time.perf_counter() - t0
    keys = [[(i, 0 if greedy else s) for s in range(n_samples)] for i in range(len(prompts))]
    return Generation([[texts[k] for k in ks] for ks in keys], [[counts[k] for k in ks] for ks in keys],
                      seconds=secs, prompt_tokens=sum(len(e) for e in enc), generated_tokens=sum(counts.values()),
                      token_ids=[[gen_ids[k] for k in ks] for ks in keys])


MIN_SHARED_PREFIX = 64  # tokens; below this a batch is prefilled as a whole


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


def _batches(order, rows, enc, bs, max_new_tokens, budget, group=None):
    """Consecutive rows of ``order``, at most ``bs`` per batch and at most ``budget`` token
    positions (rows x longest prompt + max_new_tokens); a single row always forms a batch. A batch
    also ends where a prefix group of several prompts begins or ends, so it can share its prefix."""
    group = group or list(range(len(enc)))
    size: dict[int, int] = {}
    for g in group:
        size[g] = size.get(g, 0) + 1
    batch, width = [], 0
    for r in order:
        w = max(width, len(enc[rows[r][0]]) + max_new_tokens)
        g, prev = group[rows[r][0]], group[batch[-1][0]] if batch else None
        new_group = batch and g != prev and (size[g] > 1 or size[prev] > 1)
        if batch and (new_group or len(batch) >= bs or (len(batch) + 1) * w > budget):
            yield batch
            batch, w = [], len(enc[rows[r][0]]) + max_new_tokens
        batch.append(rows[r])
        width = w
    if batch:
        yield batch


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


def _decode_batch(model, seqs, max_new_tokens, eos, stop, tail_len, tokenizer, pad_id, dev, greedy,
                  temperature, top_p, gen, share_prefix: bool = True):
    """Decode one left-padded batch; return each row's generated ids (including a final EOS)."""
    import torch
    from transformers import DynamicCache

    n = len(seqs)
    try:
        cache = DynamicCache(config=getattr(model, "config", None))
    except TypeError:  # pragma: no cover - older transformers
        cache = DynamicCache()
    ck = _cache_kw(model)
    outs = [[] for _ in range(n)]
    active = list(range(n))          # original row index of each live batch row
    p = shared_prefix_len(seqs) if share_prefix else 0
    if p:  # prefill the shared prefix once and give every row its KV cache; then the rows' suffixes
        _forward(model, input_ids=torch.tensor([seqs[0][:p]], dtype=torch.long, device=dev), use_cache=True,
                 position_ids=torch.arange(p, device=dev)[None], **{ck: cache})
        cache.batch_repeat_interleave(n)
    width = max(len(s) for s in seqs) - p
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if len(s) > p:
            ids[r, width - (len(s) - p):] = torch.tensor(s[p:], dtype=torch.long)
            mask[r, width - (len(s) - p):] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    pos = (p + mask.cumsum(-1) - 1).clamp_(min=p)   # positions continue after the prefix (p = 0: none)
    mask = torch.cat([mask.new_ones((n, p)), mask], dim=1)  # [prefix][left-padded rest]
    out = _forward(model, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{ck: cache})
    last_pos = pos[:, -1]
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=dev) if eos else None
    for step in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()
        if greedy:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / float(temperature), dim=-1)
            if top_p < 1.0:
                sp, si = probs.sort(-1, descending=True)
                keep = sp.cumsum(-1) - sp < top_p
                sp = sp * keep
                probs = torch.zeros_like(probs).scatter_(-1, si, sp)
            nxt = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(dev)
        is_eos = torch.isin(nxt, eos_t) if eos_t is not None else torch.zeros_like(nxt, dtype=torch.bool)
        nxt_l = nxt.tolist()
        eos_l = is_eos.tolist()
        keep = []
        for j, r in enumerate(active):
            outs[r].append(nxt_l[j])
            finished = eos_l[j] or step == max_new_tokens - 1
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
            mask = mask.index_select(0, sel)
            nxt = nxt.index_select(0, sel)
            last_pos = last_pos.index_select(0, sel)
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        last_pos = last_pos + 1
        out = _forward(model, input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                       use_cache=True, **{ck: cache})
    return outs
