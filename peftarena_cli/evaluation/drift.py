"""Output drift: how far a fine-tune's next-token distributions moved from the base's (docs/drift.md).

For each prompt, the base writes its own greedy continuation (up to ``max_new_tokens``, cut after
the first EOS); both models are then teacher-forced on prompt + continuation and the drift is the
mean over continuation positions of KL(p_base ‖ p_tuned). Where an item has a text reference
(arithmetic answers, BBH targets, fact answers), the same is done on prompt + reference
(``source = "reference"``). Forward passes only: no sampling, no scoring.

The base and the fine-tune are the same path model (:mod:`peftarena_cli.interpolation`) at α = 0 and at each
requested α, so one model is loaded, α = 0 gives exactly 0 (the same weights, the same computation),
and a sweep over α costs one more forward pass per α. Core code: no printing; progress goes to
``callback(done, total, label)``.

Rows (one per prompt × α × source): ``alpha, prompt_set, task, id, source, n_tokens, kl``.
"""

from __future__ import annotations

import math

DRIFT_COLUMNS = ["alpha", "prompt_set", "task", "id", "source", "n_tokens", "kl"]
DEFAULT_MAX_NEW_TOKENS = 32
DEFAULT_BATCH = 8
DEFAULT_CHUNK_BYTES = 1 << 30  # the base's log-probabilities kept per chunk of batches (see measure_drift)


def _pad_id(tokenizer) -> int:
    for v in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if v is not None:
            return int(v[0] if isinstance(v, (list, tuple)) else v)
    return 0  # pragma: no cover


def _left_pad(seqs, pad_id, device):
    import torch

    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, L - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def continuation_logprobs(model, prompts_ids, conts, pad_id: int):
    """log p(· | prefix) at each continuation position: a (batch, T, vocab) float32 tensor, T = the
    longest continuation; row i's valid positions are its last len(conts[i]) ones."""
    import torch

    seqs = [p + c for p, c in zip(prompts_ids, conts)]
    dev = next(model.parameters()).device
    ids, mask, pos = _left_pad(seqs, pad_id, dev)
    T = max(len(c) for c in conts)
    with torch.no_grad():
        try:  # the LM head on the last T + 1 positions only, not the whole prompt (a vocabulary-wide matmul each)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=T + 1).logits
        except TypeError:  # a model whose forward has no logits_to_keep
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    return torch.log_softmax(logits[:, -T - 1:-1, :].float(), dim=-1)


def kl_per_prompt(lp_base, lp_tuned, lengths: list[int]) -> list[float]:
    """Mean over each row's valid positions of KL(p_base ‖ p_tuned) = Σ p_b (log p_b − log p_t)."""
    import torch

    kl = (lp_base.exp() * (lp_base - lp_tuned)).sum(-1)  # (batch, T)
    T = kl.shape[1]
    out = []
    for i, n in enumerate(lengths):
        v = kl[i, T - n:]
        out.append(float(torch.clamp(v, min=0.0).mean()) if n else math.nan)
    return out


def _reference_text(ref) -> str | None:
    if isinstance(ref, str) and ref.strip():
        return ref
    if isinstance(ref, (list, tuple)) and ref and isinstance(ref[0], str) and ref[0].strip():
        return ref[0]
    return None


def drift_items(tokenizer, prompt_sets: dict, reference: bool = True) -> list[tuple]:
    """The prompts of ``prompt_sets`` as measured: (set, task, id, prompt ids, reference ids or None,
    prompt text), in the sets' and tasks' order."""
    from peftarena_cli.evaluation.engine import encode_prompts

    items = []
    for set_name, tasks in prompt_sets.items():
        for t in tasks:
            texts = [t.render(tokenizer, it) for it in t.items]
            enc = encode_prompts(tokenizer, texts)
            for it, ids, text in zip(t.items, enc, texts):
                ref = _reference_text(it.reference) if reference else None
                ref_ids = tokenizer(ref, add_special_tokens=False)["input_ids"] if ref else None
                items.append((set_name, t.name, it.id, list(ids), ref_ids or None, text))
    return items


def prompts_fingerprint(items: list[tuple]) -> str:
    """A hash of what the base's side of the drift depends on among the prompts: every prompt's
    set, task, id, token ids and reference token ids, in order."""
    import hashlib
    import json

    h = hashlib.sha256()
    for s, task, iid, ids, ref_ids, _ in items:
        h.update(json.dumps([s, task, str(iid), ids, ref_ids]).encode())
    return h.hexdigest()[:16]


def measure_drift(path_model, tokenizer, prompt_sets: dict, alphas: list[float], *,
                  max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = DEFAULT_BATCH,
                  reference: bool = True, callback=None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                  continuations: list | None = None, record: list | None = None):
    """Drift rows for ``prompt_sets`` = {set name: [Task, ...]} at each α of ``alphas``.

    ``path_model`` has ``set_alpha(a)`` and ``model`` (see :mod:`peftarena_cli.interpolation.inplace`); α = 0
    is the base. Returns a DataFrame with :data:`DRIFT_COLUMNS`.

    ``continuations``: the base's greedy continuations (token ids), one per prompt in the order of
    :func:`drift_items`, used instead of generating them (the base's sequential part; its
    log-probabilities are one teacher-forced pass and are recomputed, so α = 0 stays exactly 0).
    ``record``: a list that receives the continuations used, in that order.
    """
    import pandas as pd

    from peftarena_cli.evaluation.engine import generate

    model = path_model.model
    pad = _pad_id(tokenizer)
    items = drift_items(tokenizer, prompt_sets, reference)  # (set, task, id, prompt ids, reference ids, text)
    if continuations is not None and len(continuations) != len(items):
        raise ValueError(f"{len(continuations)} continuations for {len(items)} prompts")
    if record is not None:
        record[:] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i][3]))
    rows = []
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    # Batches go in chunks: the base's side of every batch of a chunk is computed at α = 0 and kept,
    # then each α is set once for the whole chunk, instead of twice per batch (setting α writes W(α)
    # into every adapted module: on a merged path model, one PEFT merge each). A chunk's kept
    # log-probabilities are bounded by ``chunk_bytes``.
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 50_000)
    per_batch = batch_size * (max_new_tokens + 1) * vocab * 4 * (2 if reference else 1)
    chunk = max(1, int(chunk_bytes // max(per_batch, 1)))
    done = 0
    for c0 in range(0, len(batches), chunk):
        kept = []  # per batch: (idx, prompts, jobs, base log-probs per source)
        path_model.set_alpha(0.0)  # the base's greedy continuations, from the evaluation engine
        for idx in batches[c0:c0 + chunk]:
            prompts = [items[i][3] for i in idx]
            if continuations is not None:
                conts = [list(continuations[i]) for i in idx]
            else:
                conts = [ids[0] for ids in generate(model, tokenizer, [items[i][5] for i in idx],
                                                     max_new_tokens=max_new_tokens, batch_size=len(idx)).token_ids]
            if record is not None:
                for i, c in zip(idx, conts):
                    record[i] = [int(t) for t in c]
            jobs = [("greedy", list(range(len(idx))), conts)]
            with_ref = [k for k, i in enumerate(idx) if items[i][4]]
            if with_ref:
                jobs.append(("reference", with_ref, [items[idx[k]][4] for k in with_ref]))
            base_lp = {src: continuation_logprobs(model, [prompts[k] for k in ks], cs, pad) for src, ks, cs in jobs}
            kept.append((idx, prompts, jobs, base_lp))
        for a in alphas:
            path_model.set_alpha(float(a))
            for idx, prompts, jobs, base_lp in kept:
                for src, ks, cs in jobs:
                    lp = continuation_logprobs(model, [prompts[k] for k in ks], cs, pad)
                    kls = kl_per_prompt(base_lp[src], lp, [len(c) for c in cs])
                    for k, c, v in zip(ks, cs, kls):
                        s, task, iid = items[idx[k]][:3]
                        rows.append({"alpha": float(a), "prompt_set": s, "task": task, "id": iid, "source": src,
                                     "n_tokens": len(c), "kl": v})
        done += len(kept)
        if callback:
            callback(done, len(batches), "drift")
    df = pd.DataFrame(rows, columns=DRIFT_COLUMNS)
    return df.sort_values(["alpha", "prompt_set", "source", "task", "id"], kind="stable").reset_index(drop=True)


def drift_summary(df):
    """Mean drift per (alpha, prompt_set, source) with its 95 % interval over prompts (items are the unit)."""
    import pandas as pd

    from peftarena_cli import stats

    rows = []
    for (a, s, src), g in df.groupby(["alpha", "prompt_set", "source"], sort=True):
        iv = stats.mean_normal(g["kl"].to_numpy(float), estimator="item-mean normal", bounds=(0.0, math.inf))
        rows.append({"alpha": a, "prompt_set": s, "source": src, "kl": iv.value, "se": iv.se, "ci_low": iv.low,
                     "ci_high": iv.high, "n": iv.n, "note": iv.note})
    return pd.DataFrame(rows)
