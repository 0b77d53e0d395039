"""`peftarena eval-target` and `peftarena eval-general`: target (plasticity) and general
(stability) scores of a base model and its adapters. The evaluation runs in the core
(:func:`peftarena_cli.evaluation.run.run_eval`); this module parses options, checks the outputs,
shows progress and writes the tables."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from peftarena_cli.cli.common import ChatTemplateOpt, DeviceOpt, DtypeOpt, OutputOpt, SeedOpt
from peftarena_cli.tasks import benchmarks  # the help lists its names (light: no pandas)

BaseArg = typer.Argument(None, metavar="BASE", help="Base model: HF directory, .safetensors file or alias (smollm2-135m). Not needed with --responses.")
AdapterOpt = typer.Option(None, "--adapter", "-a", help="PEFT adapter (directory or .safetensors); repeat it to evaluate several on one loaded base.")
IncludeBaseOpt = typer.Option(False, "--include-base", help="With --adapter: also evaluate the base model itself (model=base rows).")
LimitOpt = typer.Option(None, "--limit", min=1, help=f"Evaluate the first N items ({benchmarks.per_subtask_label()}: per subtask; built-in parts: N prompts).")
GeneralLimitOpt = typer.Option(None, "--limit", help=f"The first N items of every part ({benchmarks.per_subtask_label()}: per subtask), or per part: {benchmarks.limit_example()} (a bare N for the rest).")
BatchOpt = typer.Option(None, "--batch-size", min=1, help="Generation batch size (default 64 on CPU, 128 on CUDA).")
MergeOpt = typer.Option(True, "--merge/--no-merge", help="Merge each adapter into the loaded weights (PEFT's merge, restored afterwards) for speed; --no-merge runs PEFT's unmerged forward.")
BackendOpt = typer.Option("hf", "--backend", help="hf (the built-in batched engine), vllm (optional extra peftarena[vllm], CUDA; LoRA adapters only) or openai (a served model behind an OpenAI-compatible /v1/completions: --base-url; BASE gives the tokenizer and chat template).")
BaseUrlOpt = typer.Option(None, "--base-url", help="--backend openai: the server's address, e.g. http://localhost:8000 (nothing is sent anywhere else).")
ServedModelOpt = typer.Option(None, "--served-model", help="--backend openai: the served model's name (GET /v1/models); default: the server's only model.")
ConcurrencyOpt = typer.Option(8, "--concurrency", min=1, help="--backend openai: requests in flight at once.")
RequestTimeoutOpt = typer.Option(600.0, "--request-timeout", min=0.001, help="--backend openai: seconds one request may take before it is retried.")
RetriesOpt = typer.Option(3, "--retries", min=0, help="--backend openai: retries of a transient failure (refused, reset, timeout, 429, 5xx), with exponential backoff.")
ResponsesOpt = typer.Option(None, "--responses", help="Score completions made elsewhere: a per-sample Parquet from an earlier run, or JSONL with the task's fields (or id/key/prompt) plus 'response'.")
MaxNewOpt = typer.Option(None, "--max-new-tokens", min=1, help="Override the protocol's generation length (recorded in the summary's overrides column).")
ProtocolOpt = typer.Option(None, "--protocol", help="How the real benchmarks are prompted, generated and scored: study (default; the PEFT-Arena study's) or lm-eval (lm-evaluation-harness 0.4.13). Built-in suites keep their own settings. docs/eval.md has the tables.")
PromptTypeOpt = typer.Option("auto", "--prompt-type", help="The study's math prompt: auto (its default, cot in the chat template), boxed (qwen-boxed or llama-boxed by the model's name), or one of cot, qwen-boxed, llama-boxed, qwen25-math-cot. Study protocol, math benchmarks only; recorded in overrides and the provenance.")
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


def _check_backend(backend: str) -> None:
    """A known backend, installed, and not vllm under torchrun; under torchrun the ranks other than
    0 stay quiet and write nothing (rank 0 writes the gathered result; evaluation/distributed.py)."""
    from peftarena_cli.evaluation.distributed import is_writer
    from peftarena_cli.evaluation.run import check_eval_backend

    check_eval_backend(backend)
    if not is_writer():
        from peftarena_cli.cli.common import STATE

        STATE["quiet"] = True


def _run(cfg, output: Optional[Path], summary: Optional[Path]) -> None:
    """The checks in their order (options, outputs, backend; nothing is read or loaded before they
    pass), the evaluation, then the tables: the summary, the headline scores on stderr, the rows."""
    from peftarena_cli.cli.common import Progress, info, warn
    from peftarena_cli.evaluation.run import check_eval, run_eval

    check_eval(cfg)  # --k, the protocol's name and the generation overrides, before any allocation
    _check_outputs(output, summary, [cfg.base, *cfg.adapters, cfg.responses, cfg.spec])
    _check_backend(cfg.backend)
    _write(run_eval(cfg, progress=Progress, log=info, warn=warn), output, summary)


def _write(res, output: Optional[Path], summary: Optional[Path]) -> None:
    import sys

    from peftarena_cli.artifacts.tables import write_table
    from peftarena_cli.cli.common import emit_table, info, print_table
    from peftarena_cli.evaluation.api import GENERAL_AGGREGATES

    prov = res.provenance()
    spath = _summary_path(output, summary)
    summ = res.summary
    if spath is not None:
        write_table(summ, spath, prov)
        info(f"wrote summary to {spath}")
    headline = summ[summ["metric"].isin(["target_score", *GENERAL_AGGREGATES])]
    if not headline.empty:
        print_table(headline[["model", "task", "metric", "value", "ci_low", "ci_high", "protocol"]
                             if "model" in headline.columns else ["task", "metric", "value", "ci_low", "ci_high", "protocol"]],
                    title="scores (percent)", file=sys.stderr)
    emit_table(res.per_sample, output, prov, title=res.command)


def eval_target_cmd(
    base: Optional[str] = BaseArg,
    adapter: Optional[List[str]] = AdapterOpt,
    task: str = typer.Option(benchmarks.DEFAULT_TARGET, "--task", "-t", help=benchmarks.task_help()),
    n_samples: Optional[int] = typer.Option(None, "-n", "--samples", min=1, help="Samples per problem (avg@n; pass@k and maj@k for k <= n). Default: the protocol's (study: 16 on math, else 1)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="0 = greedy; > 0 samples. Default: the protocol's (study: 0.6 on math, else 0)."),
    protocol: Optional[str] = ProtocolOpt,
    chat_template: ChatTemplateOpt = "auto",
    prompt_type: str = PromptTypeOpt,
    k: Optional[str] = typer.Option(None, "--k", help="pass@k / maj@k values, e.g. 1,2,4 (default: powers of 2 up to n)."),
    limit: Optional[int] = LimitOpt,
    include_base: bool = IncludeBaseOpt,
    batch_size: Optional[int] = BatchOpt,
    max_new_tokens: Optional[int] = MaxNewOpt,
    backend: str = BackendOpt,
    base_url: Optional[str] = BaseUrlOpt,
    served_model: Optional[str] = ServedModelOpt,
    concurrency: int = ConcurrencyOpt,
    request_timeout: float = RequestTimeoutOpt,
    retries: int = RetriesOpt,
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

        peftarena eval-target smollm2-135m --backend openai --base-url http://localhost:8000 --limit 100 -o served.parquet
    """
    from peftarena_cli.evaluation.run import EvalConfig

    _run(EvalConfig(kind="target", base=base, adapters=list(adapter or []), include_base=include_base, task=task,
                    limit=limit, n_samples=n_samples, temperature=temperature, ks=k, protocol=protocol,
                    chat_template=chat_template, prompt_type=prompt_type, batch_size=batch_size, max_new_tokens=max_new_tokens, backend=backend, merge=merge,
                    base_url=base_url, served_model=served_model, concurrency=concurrency,
                    request_timeout=request_timeout, retries=retries, responses=responses, device=device, dtype=dtype, seed=seed), output, summary)


def eval_general_cmd(
    base: Optional[str] = BaseArg,
    adapter: Optional[List[str]] = AdapterOpt,
    suite: str = typer.Option("builtin", "--suite", "-s", help=benchmarks.suite_help()),
    limit: Optional[str] = GeneralLimitOpt,
    include_base: bool = IncludeBaseOpt,
    batch_size: Optional[int] = BatchOpt,
    max_new_tokens: Optional[int] = MaxNewOpt,
    protocol: Optional[str] = ProtocolOpt,
    chat_template: ChatTemplateOpt = "auto",
    backend: str = BackendOpt,
    base_url: Optional[str] = BaseUrlOpt,
    served_model: Optional[str] = ServedModelOpt,
    concurrency: int = ConcurrencyOpt,
    request_timeout: float = RequestTimeoutOpt,
    retries: int = RetriesOpt,
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
    from peftarena_cli.evaluation.run import EvalConfig

    _run(EvalConfig(kind="general", base=base, adapters=list(adapter or []), include_base=include_base, suite=suite,
                    limit=limit, protocol=protocol, chat_template=chat_template, batch_size=batch_size, max_new_tokens=max_new_tokens,
                    backend=backend, merge=merge, base_url=base_url, served_model=served_model, concurrency=concurrency,
                    request_timeout=request_timeout, retries=retries, responses=responses, device=device, dtype=dtype,
                    seed=seed),
         output, summary)


def register(app: typer.Typer) -> None:
    app.command("eval-target")(eval_target_cmd)
    app.command("eval-general")(eval_general_cmd)
