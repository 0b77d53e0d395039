"""Multiple choice by log-likelihood, as lm-evaluation-harness scores its ``multiple_choice`` tasks
(medmcqa, medqa_4options, pubmedqa under the ``lm-eval`` protocol).

For each (context, continuation) pair the context and the whole string are tokenised, the
continuation's tokens are the whole string's tokens after the context's (lm-eval's
``_encode_pair``; white space at the end of the context moves to the continuation), and the
score is the sum of the continuation tokens' log-probabilities given everything before them.
All choices of one item go through the model as one right-padded batch: padding sits after every
real token, so causal attention never sees it.
"""

from __future__ import annotations


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    from peftarena_cli.evaluation.engine import encode_prompts

    whole = encode_prompts(tokenizer, [context + continuation])[0]
    ctx = encode_prompts(tokenizer, [context])[0]
    return ctx, whole[len(ctx):]


def choice_logliks(model, tokenizer, contexts: list[str], choices: list[list[str]], progress=None, label: str = ""):
    """``out[i][j]`` = log P(choices[i][j] | contexts[i]) (float64 sums), and the token counts."""
    import torch

    from peftarena_cli.evaluation.engine import _device

    dev = _device(model)
    was_training = model.training
    model.eval()
    out, lens = [], []
    try:
        with torch.inference_mode():
            for i, (ctx, conts) in enumerate(zip(contexts, choices)):
                pairs = [encode_pair(tokenizer, ctx, c) for c in conts]
                seqs = [c + k for c, k in pairs]
                width = max(len(s) for s in seqs)
                ids = torch.zeros((len(seqs), width), dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for r, s in enumerate(seqs):
                    ids[r, :len(s)] = torch.tensor(s)
                    mask[r, :len(s)] = 1
                logp = torch.log_softmax(model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.double(), -1)
                row = []
                for r, (c, k) in enumerate(pairs):
                    pos = torch.arange(len(c) - 1, len(c) + len(k) - 1)
                    row.append(float(logp[r, pos, torch.tensor(k)].sum()))
                out.append(row)
                lens.append([len(k) for _, k in pairs])
                if progress is not None:
                    progress(i + 1, len(contexts), label)
    finally:
        if was_training:
            model.train()
    return out, lens
