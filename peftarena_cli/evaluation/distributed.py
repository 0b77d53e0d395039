"""Data-parallel evaluation on plain torch: ``torchrun --nproc_per_node N peftarena eval-target ...``.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) every evaluation call of the API
(:func:`~peftarena_cli.evaluation.api.evaluate_target`, ``evaluate_general``, and so
``interpolate --eval``) shards its items over the ranks:

* rank ``r`` of ``N`` takes items ``r, r + N, r + 2N, ...`` of each task (strided, so the lengths
  the engine sorts by are spread evenly), generates their completions with the usual engine, and
  all ranks gather every item's completion with ``all_gather_object`` (:func:`sharded_map`);
* the gathered completions are put back in item order, so every rank holds exactly the
  single-process result: the same per-sample rows in the same order, the same summary. Greedy
  completions do not depend on the batch a prompt ran in (tests/test_eval_engine.py); sampled ones
  are seeded per (seed, item, sample), so they do not depend on the rank either;
* only rank 0 writes files or stdout (:func:`~peftarena_cli.artifacts.atomic.discard_writes` is
  set on the other ranks), and the tables' provenance records ``world_size``;
* more ranks than items: the idle ranks generate nothing and still gather (the right answer);
* a rank that dies: the others stop at the next gather with :class:`ProcessGroupError` (or are
  stopped by torchrun first); rank 0 writes only after the last gather, so no partial output is
  written;
* the process group is created on first use: gloo on CPU, nccl when the model is on CUDA (each
  rank on ``cuda:LOCAL_RANK``, :func:`setup_device`);
* a :class:`~peftarena_cli.evaluation.backend.GenerationBackend` other than the built-in engine
  (vLLM, which has its own scale-out) is refused under torchrun.
"""

from __future__ import annotations

import os
from datetime import timedelta

from peftarena_cli.errors import IncompatibleInputs, ProcessGroupError

TIMEOUT_S = float(os.environ.get("PEFTARENA_DIST_TIMEOUT", "3600"))  # a gather waits this long for a slow rank


def world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (torchrun sets RANK and WORLD_SIZE)."""
    try:
        n = int(os.environ.get("WORLD_SIZE", "1"))
        r = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise ProcessGroupError("RANK / WORLD_SIZE in the environment are not integers",
                                hint="launch with torchrun, or unset them") from None
    if n < 1 or not 0 <= r < n:
        raise ProcessGroupError(f"RANK {r} is outside WORLD_SIZE {n}", hint="launch with torchrun, or unset them")
    return r, n


def is_distributed() -> bool:
    return world()[1] > 1


def is_writer() -> bool:
    """Whether this process writes outputs: always, except on ranks other than 0 of a torchrun run."""
    return world()[0] == 0


def check_backend(backend: str) -> None:
    """Refuse a generation backend that does not shard under torchrun (vLLM scales out on its own)."""
    if backend != "hf" and is_distributed():
        raise IncompatibleInputs(f"--backend {backend} cannot run under torchrun (WORLD_SIZE={world()[1]})",
                                 hint=f"run --backend {backend} as one process (it uses its own parallelism), "
                                      "or use the default hf backend under torchrun")


def setup_device(device: str) -> str:
    """The device this rank should load on: ``cuda:LOCAL_RANK`` for CUDA under torchrun (made the
    current device), else ``device`` unchanged. Also marks the ranks other than 0 as non-writers."""
    if not is_distributed():
        return device
    mark_writer()
    if str(device).startswith("cuda"):
        import torch

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available() and local < torch.cuda.device_count():
            torch.cuda.set_device(local)
            return f"cuda:{local}"
    return device


def mark_writer() -> None:
    """Under torchrun, make the ranks other than 0 discard their writes (rank 0 writes the one copy)."""
    if not is_distributed():
        return
    from peftarena_cli.artifacts.atomic import discard_writes

    discard_writes(not is_writer())


def _group(device_type: str):
    """The default process group, created on first use (gloo on CPU, nccl on CUDA)."""
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise ProcessGroupError("this torch has no torch.distributed", hint="run as one process")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=TIMEOUT_S))
        except Exception as e:  # a launcher variable missing, a port taken, a peer gone
            raise ProcessGroupError(f"cannot join the torchrun process group ({backend}): {_one_line(e)}",
                                    hint="launch with torchrun --nproc_per_node N peftarena ...") from None
    mark_writer()
    return dist


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]


def sharded_map(n_items: int, compute, device_type: str = "cpu") -> tuple[list, list]:
    """Compute ``compute(indices) -> (values, stats)`` on this rank's share of ``range(n_items)``
    (strided) and gather every rank's values into item order on every rank. Returns ``(values,
    stats of every rank)``; one process: ``compute(all indices)`` as is."""
    rank, n = world()
    if n == 1:
        vals, st = compute(list(range(n_items)))
        return list(vals), [st]
    mine = list(range(rank, n_items, n))
    vals, st = compute(mine)
    dist = _group(device_type)
    got: list = [None] * n
    try:
        dist.all_gather_object(got, (rank, mine, list(vals), st))
    except Exception as e:  # a rank died or timed out: no partial result anywhere
        raise ProcessGroupError(f"rank {rank} of {n}: a data-parallel gather failed ({_one_line(e)})") from None
    out: list = [None] * n_items
    stats = [None] * n
    for r, idx, v, s in got:
        for i, x in zip(idx, v):
            out[i] = x
        stats[r] = s
    return out, stats


def generate(model, tokenizer, prompts: list[str], **kw):
    """:func:`peftarena_cli.evaluation.engine.generate`, sharded over the torchrun ranks (module
    docstring); one process: the engine's call as is."""
    from peftarena_cli.evaluation.backend import Generation, GenerationBackend
    from peftarena_cli.evaluation.engine import HfBackend, _device
    from peftarena_cli.evaluation.engine import generate as engine_generate

    rank, n = world()
    if n == 1:
        return engine_generate(model, tokenizer, prompts, **kw)
    if isinstance(model, GenerationBackend) and not isinstance(model, HfBackend):
        check_backend(getattr(model, "name", type(model).__name__))
    progress, label = kw.pop("progress", None), kw.get("label", "")
    total = len(prompts) * (1 if (kw.get("temperature") or 0) <= 0 else int(kw.get("n_samples", 1)))
    share = n  # this rank's progress, scaled to the whole (each rank does about 1/n)

    def cb(done, _t=None, lab=label):
        if progress is not None:
            progress(min(total, done * share), total, lab)

    def compute(idx):
        g = engine_generate(model, tokenizer, [prompts[i] for i in idx], row_ids=idx, progress=cb, **kw)
        vals = [(t, c, ids) for t, c, ids in zip(g.texts, g.n_tokens, g.token_ids or [[] for _ in idx])]
        return vals, {"seconds": g.seconds, "prompt_tokens": g.prompt_tokens, "generated_tokens": g.generated_tokens}

    dev = _device(model) if not isinstance(model, GenerationBackend) else None
    vals, stats = sharded_map(len(prompts), compute, dev.type if dev is not None else "cpu")
    if progress is not None:
        progress(total, total, label)
    return Generation([v[0] for v in vals], [v[1] for v in vals],
                      seconds=max(s["seconds"] for s in stats),
                      prompt_tokens=sum(s["prompt_tokens"] for s in stats),
                      generated_tokens=sum(s["generated_tokens"] for s in stats),
                      token_ids=[v[2] for v in vals], extra={"backend": "hf", "world_size": n})
