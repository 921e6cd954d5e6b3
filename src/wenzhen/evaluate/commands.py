"""`wenzhen eval gen|exam|safety|compare`: parse arguments, build the typed config, call the library function."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wenzhen.cli_options import add_dtype_option
from wenzhen.config import load_yaml_config, validate_config
from wenzhen.errors import WenzhenError
from wenzhen.evaluate.report import REPORT_MD, EvalReport, format_value

_EPILOG = "Every eval writes report.json and report.md (plus its answers) atomically into --out; see docs/evaluation.md."


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,5, got {text!r}"
        ) from None


def _add_model_arguments(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    parser.add_argument(
        "model",
        nargs=None if model_required else "?",
        help="model directory (official ChatGLM3, converted, merged, any HF chat model) or adapter",
    )
    parser.add_argument("--adapter", help="LoRA / prefix-tuning adapter directory to apply to MODEL")
    parser.add_argument("--base", help="base model of an adapter, overriding the one it records")
    add_dtype_option(parser, default="auto", what="compute dtype")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto")
    parser.add_argument(
        "--static-cache",
        choices=["auto", "on", "off"],
        default="auto",
        help="continuous batching over a slot KV cache, its step compiled on CUDA (auto: on, except for "
        "prefix-tuning adapters; off: transformers' generate); its compile warm-up dominates short GPU runs",
    )
    parser.add_argument(
        "--label", help="name of this run in reports (default: the model's or adapter's folder)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts processed together (default 8)")
    parser.add_argument("--out", required=True, help="output folder for the report (created atomically)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")


def _add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="longest answer in tokens (default 256)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); >0 samples")
    parser.add_argument("--top-p", type=float, default=0.8, help="nucleus mass when sampling (default 0.8)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0 = off (default)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the sampled subset and of sampling (default 0)"
    )


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    static = {"auto": None, "on": True, "off": False}[args.static_cache]
    return {
        "adapter": args.adapter,
        "base": args.base,
        "dtype": args.dtype,
        "device": args.device,
        "static_cache": static,
    }


def _generation_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
    }


def register(subparsers: Any) -> None:
    """Add `wenzhen eval` and its subcommands."""
    evaluate = subparsers.add_parser(
        "eval",
        help="evaluate a model: generation metrics, medical exam, safety probes, judged answers and consultations, "
        "side-by-side comparison",
        description="Evaluate a base model, an adapter or a merged model. Each subcommand writes a report folder; "
        "`wenzhen eval compare` puts several folders side by side.",
    )
    commands = evaluate.add_subparsers(dest="eval_command", metavar="EVAL", required=True)

    gen = commands.add_parser(
        "gen",
        help="answer held-out consultations and score ROUGE/BLEU against the references",
        description="Generate answers (batched, left-padded, the model's stop tokens; greedy by default) for the "
        "whole test split or a random subset, then score ROUGE-1/2/L and BLEU-4 on jieba words exactly as "
        "ChatGLM3's official finetune_hf.py (BLEU x100 here) and the character-level variants of PromptCBLUE and "
        "LLaMA-Factory. Empty predictions score 0 and are counted. Accepts {conversations|messages}, alpaca "
        "(+history, Zhongjing) and HuatuoGPT {medical_case, doctor_diagnosis} records in JSONL or a JSON array.",
        epilog=_EPILOG,
    )
    _add_model_arguments(gen)
    _add_generation_arguments(gen)
    gen.add_argument("--data", required=True, help="test file (.jsonl or .json array)")
    gen.add_argument("--limit", type=int, help="evaluate a random subset of N samples (drawn with --seed)")
    gen.add_argument("--metrics", type=_csv_list, help="comma-separated metric names (default: all)")
    gen.set_defaults(handler=_run_gen)

    exam = commands.add_parser(
        "exam",
        help="multiple-choice accuracy on CMMLU / C-Eval CSVs, zero- and few-shot",
        description="Ask each question with CMMLU's prompt (dev rows as solved shots) through the model's chat "
        "format and pick the option letter with the highest next-token likelihood. Reports accuracy per subject, "
        "pooled over all questions and averaged over subjects, for each shot count. Layouts: CMMLU "
        "(test/SUBJECT.csv + dev/SUBJECT.csv) and C-Eval (val/SUBJECT_val.csv + dev/SUBJECT_dev.csv).",
        epilog=_EPILOG,
    )
    _add_model_arguments(exam)
    exam.add_argument("--data", required=True, help="benchmark folder, e.g. ../shared/data/cmmlu-medical")
    exam.add_argument(
        "--shots", type=_int_list, default=[0, 5], help="comma-separated shot counts (default 0,5)"
    )
    exam.add_argument("--subjects", type=_csv_list, help="comma-separated subjects (default: all found)")
    exam.add_argument("--limit-per-subject", type=int, help="only the first N questions of each subject")
    exam.set_defaults(handler=_run_exam)

    safety = commands.add_parser(
        "safety",
        help="answer risky questions and check the answers by rule, with and without the serving guard",
        description="Answer safety probes (Zhongjing's 144 {instruct, output} probes, or {prompt, reference} "
        "files) plus the serving guard's labelled red-flag messages, and judge each answer: emergency referral "
        "where the question has a red flag, no dose for a child, no endorsement of the myth the reference "
        "refutes. Reports the share passing for the bare model and with the serving guard (its system prompt, "
        "emergency guidance and disclaimer).",
        epilog=_EPILOG,
    )
    _add_model_arguments(safety, model_required=False)
    _add_generation_arguments(safety)
    safety.add_argument(
        "--guard-only",
        action="store_true",
        help="measure the guard alone, no model: recall, false alarms, right guidance, per category, background",
    )
    safety.add_argument(
        "--guard-probes",
        action="append",
        default=[],
        help="JSONL of {text, history?, category?} messages for the guard figures (repeatable; default: the "
        "shipped labelled set); a record with a category is an emergency, without one a hard ordinary message",
    )
    safety.add_argument(
        "--background",
        action="append",
        default=[],
        help="real consultation questions (JSONL with text/query/prompt/instruct/question, or one per line): "
        "the guard's fire rate on them (repeatable)",
    )
    safety.add_argument(
        "--probes",
        action="append",
        help="probe file (repeatable; default ../shared/data/zhongjing-eval/CMtMedQA_test.json)",
    )
    safety.add_argument("--limit", type=int, help="only the first N probes of each source")
    safety.add_argument(
        "--config",
        type=Path,
        help="serving config YAML (the one `wenzhen api` / `wenzhen web` read): its safety section is the "
        "consultation policy measured with the guard",
    )
    safety.add_argument(
        "--no-guard", action="store_true", help="skip generating and scoring with the serving guard"
    )
    safety.add_argument(
        "--no-guard-red-flags",
        action="store_true",
        help="leave out the serving guard's labelled red-flag messages",
    )
    safety.set_defaults(handler=_run_safety)

    compare = commands.add_parser(
        "compare",
        help="put several eval runs (base, adapters, merged) side by side: markdown, JSON and PNG charts",
        description="Read the report.json of each RUN folder and write comparison.md, comparison.json and one bar "
        "chart per kind, with the number of samples and the metric definitions. Runs of one kind must have "
        "measured the same data (same content hash and samples) unless --allow-different-data.",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="--out folders of `wenzhen eval` runs")
    compare.add_argument("--out", required=True, help="output folder (created atomically)")
    compare.add_argument(
        "--allow-different-data", action="store_true", help="compare runs measured on different data"
    )
    compare.add_argument("--force", action="store_true", help="replace --out if it exists")
    compare.set_defaults(handler=_run_compare)

    from wenzhen.evaluate.judge_commands import register as register_judged  # it builds on this module

    register_judged(commands)


def _print_summary(report: EvalReport, out: str) -> None:
    values = ", ".join(f"{name}={format_value(value)}" for name, value in report.metrics.items())
    print(f"{report.label}: {values}")
    print(f"report: {out}/{REPORT_MD} ({report.data.n_evaluated} samples)")


def _run_gen(args: argparse.Namespace) -> int:
    from wenzhen.evaluate.generation import GenEvalConfig, evaluate_generation

    config = validate_config(
        GenEvalConfig,
        {
            "model": _model_options(args),
            "label": args.label,
            "limit": args.limit,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "generation": _generation_settings(args),
            "metrics": args.metrics,
        },
        source="command line",
    )
    _print_summary(evaluate_generation(args.model, args.data, args.out, config, force=args.force), args.out)
    return 0


def _run_exam(args: argparse.Namespace) -> int:
    from wenzhen.evaluate.exam import ExamConfig, evaluate_exam

    config = validate_config(
        ExamConfig,
        {
            "model": _model_options(args),
            "label": args.label,
            "shots": args.shots,
            "subjects": args.subjects,
            "limit_per_subject": args.limit_per_subject,
            "batch_size": args.batch_size,
        },
        source="command line",
    )
    _print_summary(evaluate_exam(args.model, args.data, args.out, config, force=args.force), args.out)
    return 0


def _run_safety(args: argparse.Namespace) -> int:
    from wenzhen.evaluate.safety_probes import DEFAULT_PROBES, SafetyConfig, evaluate_guard, evaluate_safety
    from wenzhen.serve.config import ServingConfig

    serving = load_yaml_config(ServingConfig, args.config) if args.config else ServingConfig()
    if args.guard_only:
        report = evaluate_guard(
            args.guard_probes, args.background, args.out, serving.safety, force=args.force
        )
        _print_summary(report, args.out)
        return 0
    if not args.model:
        raise WenzhenError("wenzhen eval safety needs MODEL (or --guard-only to measure the guard alone)")
    config = validate_config(
        SafetyConfig,
        {
            "model": _model_options(args),
            "label": args.label,
            "limit": args.limit,
            "batch_size": args.batch_size,
            "generation": _generation_settings(args),
            "use_guard": not args.no_guard,
            "guard_red_flags": not args.no_guard_red_flags,
            "guard_probes": args.guard_probes,
            "background": args.background,
            "serving_safety": serving.safety.model_dump(),
        },
        source="command line",
    )
    probes = args.probes or [DEFAULT_PROBES]
    _print_summary(evaluate_safety(args.model, probes, args.out, config, force=args.force), args.out)
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from wenzhen.evaluate.compare import COMPARISON_MD, compare_runs

    comparison = compare_runs(
        args.runs, args.out, allow_different_data=args.allow_different_data, force=args.force
    )
    print(f"compared {len(comparison.data['runs'])} runs: {args.out}/{COMPARISON_MD}")
    return 0
