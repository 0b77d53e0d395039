"""Attention for one query token per row (the decode step), without SDPA's per-head kernel.

During decoding each row brings one query token and attends to its cached keys. transformers'
``sdpa`` path packs the query heads of a key/value group together (``pack_gqa``) and calls
``scaled_dot_product_attention``, whose CPU kernel is tiled for long queries: on smollm2-135m at
64 rows x 300 cached positions it took ~2.8 ms per layer, 38 % of a decode step (profiled).
Two batched matmuls over the grouped heads do the same arithmetic, (q Kᵀ) · scale, the mask,
softmax, · V, in ~1.4 ms (5 ms against 10 at 700 positions).

:func:`decode_attention` is registered with transformers' ``AttentionInterface`` (and the sdpa mask
with ``AttentionMaskInterface``) as ``"peftarena_decode"``; :func:`fast_decode_attention` switches a
model that uses ``sdpa`` to it for the duration of a generation and back afterwards. Anything
that is not a plain one-token decode (prefill, dropout, soft-capping, attention sinks, a position
bias) goes to transformers' own ``sdpa_attention_forward`` unchanged.

The result equals SDPA's up to float rounding (the order of the sums differs, ~1e-7 relative in
float32), so a greedy completion can only differ at an exact near-tie of two logits; the engine's
tests compare its completions with ``model.generate`` (which uses SDPA).
"""

from __future__ import annotations

import contextlib

NAME = "peftarena_decode"
_REGISTERED = False


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    """transformers' attention-function signature; returns ``(output [b, q, heads, d], None)``."""
    import torch

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (query.shape[2] == 1 and not dropout and kwargs.get("softcap") is None
             and kwargs.get("position_bias") is None and kwargs.get("s_aux") is None
             and kwargs.get("sinks") is None and query.shape[1] % key.shape[1] == 0
             and (attention_mask is None or attention_mask.dim() == 4))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    b, hq, _, d = query.shape
    hkv = key.shape[1]
    scale = float(scaling) if scaling is not None else d ** -0.5
    # query heads j*g .. j*g+g-1 read key/value head j (transformers' repeat_kv layout)
    q = query.reshape(b, hkv, hq // hkv, d) * scale
    scores = torch.matmul(q, key.transpose(-1, -2))                      # b, hkv, g, L
    if attention_mask is not None:
        m = attention_mask[..., -1:, :]                                   # the query's row of the mask
        if m.shape[1] != 1:                                               # a mask per head: group it like q
            m = m.reshape(m.shape[0], hkv, hq // hkv, m.shape[-1])
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, float("-inf"))
        else:
            scores = scores + m
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)                                      # b, hkv, g, dv
    return out.reshape(b, hq, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _REGISTERED = True


def _configs(model):
    seen, out = set(), []
    for m in [model, *model.modules()]:
        cfg = getattr(m, "config", None)
        if cfg is not None and id(cfg) not in seen and hasattr(cfg, "_attn_implementation"):
            seen.add(id(cfg))
            out.append(cfg)
    return out


@contextlib.contextmanager
def fast_decode_attention(model, enabled: bool = True):
    """Within the block, the configs of ``model`` that use ``sdpa`` use :func:`decode_attention`
    instead (others, e.g. eager or flash attention, are left alone); restored on exit."""
    switched = []
    if enabled:
        try:
            register()
        except ImportError:  # pragma: no cover - a transformers without the interfaces
            enabled = False
    if enabled:
        for cfg in _configs(model):
            if getattr(cfg, "_attn_implementation", None) == "sdpa":
                cfg._attn_implementation_internal = NAME
                switched.append(cfg)
    try:
        yield bool(switched)
    finally:
        for cfg in switched:
            cfg._attn_implementation_internal = "sdpa"
