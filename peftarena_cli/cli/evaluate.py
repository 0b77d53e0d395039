"""`peftarena eval-target` and `peftarena eval-general`: target (plasticity) and general
(stability) scores of a base model and its adapters. The computations live in
``peftarena_cli.evaluation``; this module parses options, loads the model once, and writes tables."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from peftarena_cli.cli.common import DeviceOpt, DtypeOpt, OutputOpt, SeedOpt
from peftarena_cli.tasks import benchmarks  # the help lists its names (light: no pandas)

BaseArg = typer.Argument(None, metavar="BASE", help="Base model: HF directory, .safetensors file or alias (smollm2-135m). Not needed with --responses.")
AdapterOpt = typer.Option(None, "--adapter", "-a", help="PEFT adapter (directory or .safetensors); repeat it to evaluate several on one loaded base.")
IncludeBaseOpt = typer.Option(False, "--include-base", help="With --adapter: also evaluate the base model itself (model=base rows).")
LimitOpt = typer.Option(None, "--limit", min=1, help="Evaluate the first N items (BBH: per subtask; built-in parts: N prompts).")
GeneralLimitOpt = typer.Option(None, "--limit", help="The first N items of every part (BBH: per subtask), or per part: ifeval=280,bbh=200,facts=357 (a bare N for the rest).")
BatchOpt = typer.Option(None, "--batch-size", min=1, help="Generation batch size (default 64 on CPU, 128 on CUDA).")
MergeOpt = typer.Option(True, "--merge/--no-merge", help="Merge each adapter into the loaded weights (PEFT's merge, restored afterwards) for speed; --no-merge runs PEFT's unmerged forward.")
BackendOpt = typer.Option("hf", "--backend", help="hf (the built-in batched engine) or vllm (optional extra peftarena[vllm], CUDA; LoRA adapters only).")
ResponsesOpt = typer.Option(None, "--responses", help="Score completions made elsewhere: a per-sample Parquet from an earlier run, or JSONL with the task's fields (or id/key/prompt) plus 'response'.")
MaxNewOpt = typer.Option(None, "--max-new-tokens", min=1, help="Override the protocol's generation length (recorded in the summary's overrides column).")
ProtocolOpt = typer.Option(None, "--protocol", help="How the real benchmarks are prompted, generated and scored: study (default; the PEFT-Arena study's) or lm-eval (lm-evaluation-harness 0.4.13). Built-in suites keep their own settings. docs/eval.md has the tables.")
SummaryOpt = typer.Option(None, "--summary", help="Write the summary table (task, metric, value, n) here; default with -o: OUT with suffix .summary.parquet.")


def _summary_path(output: Optional[Path], summary: Optional[Path]) -> Optional[Path]:
    if summary is not None:
        return summary
    from peftarena_cli.artifacts.atomic import is_stream

    if output is not None and str(output) != "-" and not is_stream(output):  # nothing beside /dev/null or a pipe
        return output.with_name(output.stem + ".summary" + (".csv" if output.suffix.lower() == ".csv" else ".parquet"))
    return None


def _check_outputs(output, summary, inputs) -> None:
    """Before any work: no output (nor the derived summary) may overwrite or sit inside an input."""
    from peftarena_cli.artifacts.guard import check_outputs

    check_outputs({"-o": output, "--summary": _summary_path(output, summary)}, inputs, tables=("-o", "--summary"))


def _check_k_option(k) -> None:
    """--k is a comma list of positive integers (checked against -n later)."""
    if k is None:
        return
    from peftarena_cli.errors import UsageError

    parts = [x.strip() for x in str(k).split(",")]  # an empty entry (1,,2) is refused, not skipped
    if not all(x.isdigit() and int(x) >= 1 for x in parts):
        raise UsageError(f"--k {k!r}: expected positive integers such as 1,2,4", hint="e.g. --k 1,4 (each k <= -n)")


def _check_backend(backend: str) -> None:
    """A known backend, installed, and not vllm under torchrun; under torchrun the ranks other than
    0 stay quiet and write nothing (rank 0 writes the gathered result; evaluation/distributed.py)."""
    from peftarena_cli.errors import UsageError
    from peftarena_cli.evaluation.distributed import check_backend, is_writer, mark_writer

    check_backend(backend)
    mark_writer()
    if not is_writer():
        from peftarena_cli.cli.common import STATE

        STATE["quiet"] = True
    if backend == "hf":
        return
    if backend != "vllm":
        raise UsageError(f"unknown backend {backend!r}", hint="use hf or vllm")
    from peftarena_cli.evaluation.vllm_backend import import_vllm

    import_vllm()  # a clear error before anything is loaded when it is not installed


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load_for_backend(base, dtype, device, backend, seed):
    """(model, tokenizer, ref): the HF model, or a vLLM engine standing in for it."""
    from peftarena_cli.artifacts.loading import load_model

    if backend != "vllm":
        return load_model(base, dtype=dtype, device=device)
    from peftarena_cli.artifacts.loading import config_dir, load_tokenizer
    from peftarena_cli.artifacts.safetensors_io import resolve_model
    from peftarena_cli.evaluation.vllm_backend import VllmModel

    ref = resolve_model(base)
    return VllmModel(config_dir(ref), dtype="auto" if dtype in (None, "auto") else dtype, seed=seed), load_tokenizer(ref), ref


def _run_models(base, adapters, include_base, device, dtype, evaluate, what: str, backend: str = "hf", seed: int = 0,
                merge: bool = True):
    """Load the base once; evaluate it and/or each adapter in turn (merged into the weights by PEFT's
    merge unless ``merge`` is false). Yields (model label, per_sample, summary, stats, prov inputs)."""
    import time
    from contextlib import ExitStack

    from peftarena_cli.artifacts.loading import applied_adapter
    from peftarena_cli.cli.common import Progress, info

    if adapters:
        # every adapter must fit the base before anything is loaded or evaluated (headers only)
        from peftarena_cli.artifacts.adapters import check_adapter_fits, load_adapter
        from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model

        base_weights = WeightSource.from_ref(resolve_model(base))
        for label in adapters:
            check_adapter_fits(load_adapter(label), base_weights, base, label)
    t = time.perf_counter()
    model, tok, ref = _load_for_backend(base, dtype, device, backend, seed)
    info(f"loaded {base} in {time.perf_counter() - t:.1f} s" + (" (vllm)" if backend == "vllm" else ""))
    from peftarena_cli.activations.moments import weights_fingerprint

    # base_weights: a fingerprint of the weights themselves (the path identity is the same for two
    # checkpoints of one architecture), so report can tell results of different bases apart
    inputs = {"base": (base, ref.identity()), "base_weights": (base, weights_fingerprint(ref))}
    runs = (["base"] if include_base or not adapters else []) + list(adapters or [])
    for i, label in enumerate(runs):
        if backend == "vllm":
            from peftarena_cli.artifacts.adapters import load_adapter

            ad = None if label == "base" else load_adapter(label)
            if ad is not None:
                inputs[f"adapter{i}"] = (label, ad.identity())
            model.use_adapter(ad, name=f"a{i}")
            m = model
        elif label == "base":
            m = model
        else:
            from peftarena_cli.artifacts.adapters import load_adapter

            ad = load_adapter(label)
            inputs[f"adapter{i}"] = (label, ad.identity())
        stats: dict = {}
        t = time.perf_counter()
        with ExitStack() as stack:
            if label != "base" and backend != "vllm":
                # PEFT's merge into the loaded weights, restored afterwards (docs/eval.md, "Adapters")
                m = stack.enter_context(applied_adapter(model, ad, adapter_name=f"a{i}", merge=merge))
            with Progress(f"{what} {label}") as bar:
                ps, summ = evaluate(m, tok, bar.callback, stats)
        secs = time.perf_counter() - t
        info(f"{label}: {stats.get('generated_tokens', 0)} tokens in {secs:.1f} s "
             f"({stats.get('tokens_per_second', 0.0):.1f} tok/s), peak RSS {_peak_rss_mib():.0f} MiB")
        yield label, ps, summ, inputs


def _finish(frames, summaries, output, summary, command, seed, dtype, device, inputs, extra):
    import sys

    import pandas as pd

    from peftarena_cli.artifacts.tables import Provenance, write_table
    from peftarena_cli.cli.common import emit_table, info, print_table, warn
    from peftarena_cli.evaluation.api import GENERAL_AGGREGATES

    per = pd.concat(frames, ignore_index=True)
    summ = pd.concat(summaries, ignore_index=True)
    # the protocols and overrides that produced the rows go into the provenance of both tables
    extra = dict(extra, protocols=sorted({str(p) for p in summ["protocol"].dropna() if p}),
                 overrides=sorted({str(o) for o in summ["overrides"].dropna() if o}))
    moved = summ[(summ["protocol"] != summ["generated_under"]) & (summ["generated_under"] != "external")]
    if not moved.empty:
        r = moved.iloc[0]
        warn(f"re-scored under {r['protocol']}, but the completions were generated under {r['generated_under']} "
             "(prompts and budgets differ); the summary's generated_under column says so")
    from peftarena_cli.evaluation.distributed import world

    prov = Provenance(command=command, seed=seed, dtype=dtype, device=device,
                      extra=dict(extra, world_size=world()[1]))  # > 1: a torchrun data-parallel run
    for role, (spec, ident) in inputs.items():
        prov.add_input(role, spec, ident)
    spath = _summary_path(output, summary)
    if spath is not None:
        write_table(summ, spath, prov)
        info(f"wrote summary to {spath}")
    headline = summ[summ["metric"].isin(["target_score", *GENERAL_AGGREGATES])]
    if not headline.empty:
        print_table(headline[["model", "task", "metric", "value", "ci_low", "ci_high", "protocol"]
                             if "model" in headline.columns else ["task", "metric", "value", "ci_low", "ci_high", "protocol"]],
                    title="scores (percent)", file=sys.stderr)
    emit_table(per, output, prov, title=command)


def _responses(path: Path):
    from peftarena_cli.errors import InputNotFound

    if not path.exists():
        raise InputNotFound(f"no such responses file: {str(path)!r}", hint="pass a per-sample .parquet or a .jsonl with a response field")
    if path.suffix == ".parquet":
        from peftarena_cli.artifacts.tables import read_table

        return read_table(path)[0], None
    from peftarena_cli.tasks.sources import read_records

    records = read_records(path)
    _check_response_types(path, records)
    return None, records


def _check_response_types(path: Path, records: list) -> None:
    """Each record's ``response`` is a string (the completion): a number, list or null would be
    scored as an empty completion, wrong. Refused with the line of a JSONL file (the record elsewhere)."""
    from peftarena_cli.errors import DataError
    from peftarena_cli.evaluation.api import json_kind

    bad = next((j for j, r in enumerate(records)
                if isinstance(r, dict) and "response" in r and not isinstance(r["response"], str)), None)
    if bad is None:
        return
    where = f"record {bad}"
    if path.suffix == ".jsonl":  # read_records skips blank lines: count them back
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        where = f"line {[i for i, line in enumerate(lines, 1) if line.strip()][bad]}"
    raise DataError(f"{str(path)!r} {where}: 'response' is {json_kind(records[bad]['response'])}, not a string",
                    hint="each line's response is the completion text, a JSON string")


def _target_from_responses(task: str, path: Path, records, limit, seed):
    """The task whose items the responses answer: regenerated (arith), loaded from NAME=PATH, or
    built from the responses file itself (its records carry the task's fields)."""
    from peftarena_cli.tasks.sources import split_spec
    from peftarena_cli.tasks.target_tasks import load_target_task

    name, p = split_spec(task)
    if name == "arith":
        return load_target_task("arith", limit=max(limit or 0, len(records), 100), seed=seed), False
    if p:
        return load_target_task(task, limit=None, seed=seed), False
    if records and set(records[0]) <= {"id", "key", "prompt", "response"}:  # no task fields: match the hub task
        return load_target_task(name, limit=None, seed=seed), False
    return load_target_task(f"{name}={path}", limit=None, seed=seed), True


def eval_target_cmd(
    base: Optional[str] = BaseArg,
    adapter: Optional[List[str]] = AdapterOpt,
    task: str = typer.Option("arith", "--task", "-t", help=benchmarks.task_help()),
    n_samples: Optional[int] = typer.Option(None, "-n", "--samples", min=1, help="Samples per problem (avg@n; pass@k and maj@k for k <= n). Default: the protocol's (study: 16 on math, else 1)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="0 = greedy; > 0 samples. Default: the protocol's (study: 0.6 on math, else 0)."),
    protocol: Optional[str] = ProtocolOpt,
    k: Optional[str] = typer.Option(None, "--k", help="pass@k / maj@k values, e.g. 1,2,4 (default: powers of 2 up to n)."),
    limit: Optional[int] = LimitOpt,
    include_base: bool = IncludeBaseOpt,
    batch_size: Optional[int] = BatchOpt,
    max_new_tokens: Optional[int] = MaxNewOpt,
    backend: str = BackendOpt,
    merge: bool = MergeOpt,
    responses: Optional[Path] = ResponsesOpt,
    summary: Optional[Path] = SummaryOpt,
    output: OutputOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    seed: SeedOpt = 0,
) -> None:
    """Target-task score (plasticity): per-sample Parquet plus a summary with avg@n, pass@k, maj@k,
    strict/flexible accuracy and target_score.

    Example:

        peftarena eval-target smollm2-135m --adapter adapter/ --limit 100 -o target.parquet

        peftarena eval-target smollm2-135m --task gsm8k=gsm8k_test.jsonl -n 4 --temperature 0.7 --k 1,4 -o gsm8k.parquet

        peftarena eval-target --task gsm8k --responses answers.jsonl -o rescored.parquet
    """
    from peftarena_cli.errors import DataError, UsageError

    _check_k_option(k)
    from peftarena_cli.evaluation.protocols import check_generation_options, get_protocol  # (evaluation/ imports pandas: not at --help)

    get_protocol(protocol)  # an unknown name is a usage error listing the known ones
    check_generation_options(max_new_tokens, n_samples, temperature)  # bounded before any allocation
    _check_outputs(output, summary, [base, *(adapter or []), responses, task])
    _check_backend(backend)
    if responses is not None:
        from peftarena_cli.evaluation.api import rescore_table, score_responses

        df, recs = _responses(responses)
        if df is not None:
            per, summ = rescore_table(df, ks=k, kind="target", protocol=protocol)
        else:
            t, aligned = _target_from_responses(task, responses, recs, limit, seed)
            if aligned:
                recs = [dict(r, id=it.id) for r, it in zip(recs, t.items)]
            per, summ = score_responses(t, recs, ks=k, kind="target", protocol=protocol)
        _finish([per], [summ], output, summary, "eval-target", seed, None, None,
                {"responses": (str(responses), "")}, {"task": task, "responses": str(responses), "protocol": protocol})
        return
    if base is None:
        raise UsageError("missing BASE model", hint="pass a base model, or --responses FILE to score completions")
    from peftarena_cli.artifacts.loading import pick_device
    from peftarena_cli.evaluation.api import _check_ks, evaluate_target, load_target_tasks

    # validate before loading the model: the tasks, the protocol's reach and the overrides
    tasks = load_target_tasks(task, limit, seed, protocol, n_samples, temperature, max_new_tokens)
    if not tasks:  # pragma: no cover
        raise DataError("empty task")
    _check_ks(k, min(t.n_samples for t in tasks))
    if any(t.n_samples > 1 and t.temperature <= 0 for t in tasks):
        from peftarena_cli.cli.common import warn

        warn("-n > 1 with greedy decoding gives identical samples; pass --temperature > 0 to sample")
    from peftarena_cli.evaluation.distributed import setup_device

    dev = setup_device(pick_device(device))  # under torchrun: cuda:LOCAL_RANK

    def run(m, tok, cb, stats):
        return evaluate_target(m, tok, task=tasks[0] if len(tasks) == 1 else task, limit=limit, n_samples=n_samples,
                               temperature=temperature, ks=k, seed=seed, batch_size=batch_size, progress=cb, stats=stats,
                               max_new_tokens=max_new_tokens, protocol=protocol)

    frames, summaries, inputs = [], [], {}
    for label, ps, summ, inputs in _run_models(base, adapter, include_base, dev, dtype, run, "eval-target", backend, seed, merge):
        ps.insert(0, "model", label)
        summ.insert(0, "model", label)
        frames.append(ps)
        summaries.append(summ)
    _finish(frames, summaries, output, summary, "eval-target", seed, dtype, dev, inputs,
            {"task": task, "n_samples": n_samples, "temperature": temperature, "limit": limit, "protocol": protocol})


def eval_general_cmd(
    base: Optional[str] = BaseArg,
    adapter: Optional[List[str]] = AdapterOpt,
    suite: str = typer.Option("builtin", "--suite", "-s", help=benchmarks.suite_help()),
    limit: Optional[str] = GeneralLimitOpt,
    include_base: bool = IncludeBaseOpt,
    batch_size: Optional[int] = BatchOpt,
    max_new_tokens: Optional[int] = MaxNewOpt,
    protocol: Optional[str] = ProtocolOpt,
    backend: str = BackendOpt,
    merge: bool = MergeOpt,
    responses: Optional[Path] = ResponsesOpt,
    summary: Optional[Path] = SummaryOpt,
    output: OutputOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    seed: SeedOpt = 0,
) -> None:
    """General-ability score (stability): IFEval (instruction-level strict), BBH (subtask average),
    NQ-open (exact match) and their mean, general_score; per-sample Parquet plus a summary.

    Example:

        peftarena eval-general smollm2-135m --adapter adapter/ -o general.parquet

        peftarena eval-general smollm2-135m --suite ifeval=input_data.jsonl,bbh=BIG-Bench-Hard/,nq_open=NQ-open.dev.jsonl --limit 20 -o real.parquet

        peftarena eval-general smollm2-135m --limit ifeval=280,bbh=200,facts=357 -o general.parquet

        peftarena eval-general --suite ifeval=input_data.jsonl --responses input_response_data.jsonl -o ifeval.parquet
    """
    from peftarena_cli.errors import DataError, UsageError

    from peftarena_cli.evaluation.protocols import check_generation_options, get_protocol  # (evaluation/ imports pandas: not at --help)

    get_protocol(protocol)  # an unknown name is a usage error listing the known ones
    check_generation_options(max_new_tokens)  # bounded before any allocation
    _check_outputs(output, summary, [base, *(adapter or []), responses, suite])
    _check_backend(backend)
    from peftarena_cli.evaluation.api import evaluate_general, load_general_tasks, parse_limit, part_limit

    parse_limit(limit)  # a malformed --limit is a usage error before anything is read
    if responses is not None:
        from peftarena_cli.evaluation.api import rescore_table, score_responses

        df, recs = _responses(responses)
        if df is not None:
            per, summ = rescore_table(df, kind="general", protocol=protocol)
        else:
            parts = [s for s in suite.split(",") if s.strip()]
            if len(parts) != 1:
                raise UsageError("--responses JSONL scores one suite part at a time", hint="pass e.g. --suite ifeval=input_data.jsonl")
            name, _, p = parts[0].partition("=")
            aligned = False
            own_fields = {"ifeval": ("instruction_id_list", "kwargs"), "nq_open": ("question", "answer")}
            if name in ("ifeval", "bbh", "nq_open") and not p:
                if name == "bbh":
                    raise DataError("BBH responses need the BBH folder for targets", hint="pass --suite bbh=DIR")
                if recs and all(f in recs[0] for f in own_fields[name]):
                    t = load_general_tasks(f"{name}={responses}", protocol=protocol)[0]  # the records carry the task's fields
                    aligned = True
                else:  # e.g. IFEval's input_response_data.jsonl (prompt, response): match the hub task by prompt
                    t = load_general_tasks(name, protocol=protocol)[0]
            else:
                lim = part_limit(parse_limit(limit), name.partition(".")[2] or "*")
                t = load_general_tasks(parts[0], limit=max(lim or 0, len(recs)) if name.startswith("builtin") else None,
                                       seed=seed, protocol=protocol)[0]
            if aligned:
                recs = [dict(r, id=it.id) for r, it in zip(recs, t.items)]
            per, summ = score_responses(t, recs, kind="general")
        _finish([per], [summ], output, summary, "eval-general", seed, None, None,
                {"responses": (str(responses), "")}, {"suite": suite, "responses": str(responses), "protocol": protocol})
        return
    if base is None:
        raise UsageError("missing BASE model", hint="pass a base model, or --responses FILE to score completions")
    from peftarena_cli.artifacts.loading import pick_device

    load_general_tasks(suite, limit, seed, protocol, max_new_tokens)  # validate before loading the model
    from peftarena_cli.evaluation.distributed import setup_device

    dev = setup_device(pick_device(device))  # under torchrun: cuda:LOCAL_RANK

    def run(m, tok, cb, stats):
        return evaluate_general(m, tok, suite=suite, limit=limit, seed=seed, batch_size=batch_size, progress=cb, stats=stats,
                                max_new_tokens=max_new_tokens, protocol=protocol)

    frames, summaries, inputs = [], [], {}
    for label, ps, summ, inputs in _run_models(base, adapter, include_base, dev, dtype, run, "eval-general", backend, seed, merge):
        ps.insert(0, "model", label)
        summ.insert(0, "model", label)
        frames.append(ps)
        summaries.append(summ)
    _finish(frames, summaries, output, summary, "eval-general", seed, dtype, dev, inputs,
            {"suite": suite, "limit": limit, "protocol": protocol})


def register(app: typer.Typer) -> None:
    app.command("eval-target")(eval_target_cmd)
    app.command("eval-general")(eval_general_cmd)
