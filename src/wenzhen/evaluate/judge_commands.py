"""`wenzhen eval judge` and `wenzhen eval consult`: parse arguments, build the typed config, call the library."""

from __future__ import annotations

import argparse
from typing import Any

from wenzhen.config import validate_config
from wenzhen.errors import WenzhenError
from wenzhen.evaluate.commands import (
    _add_generation_arguments,
    _add_model_arguments,
    _generation_settings,
    _model_options,
)
from wenzhen.evaluate.endpoint import require_endpoint
from wenzhen.evaluate.report import REPORT_MD, EvalReport, format_value


def _add_endpoint_arguments(parser: argparse.ArgumentParser, role: str, flag: str, required: bool) -> None:
    parser.add_argument(
        f"--{flag}-url",
        required=required,
        help=f"base URL of the {role}'s OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1",
    )
    parser.add_argument(
        f"--{flag}-model", required=required, help=f"the model name the {role} endpoint serves"
    )
    parser.add_argument(
        f"--{flag}-key-env",
        default=f"WENZHEN_{flag.upper()}_API_KEY",
        help=f"environment variable holding the {role}'s bearer key (default %(default)s)",
    )
    parser.add_argument(
        f"--{flag}-temperature", type=float, default=0.0, help="sampling temperature (default 0)"
    )
    parser.add_argument(f"--{flag}-max-tokens", type=int, default=512, help="longest reply (default 512)")


def _add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    _add_endpoint_arguments(parser, "judge", "judge", required=False)
    parser.add_argument(
        "--concurrency", type=int, default=4, help="requests to each endpoint at once (default 4)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=6,
        help="retries of a 429 / 5xx / connection error, with exponential backoff (default 6)",
    )
    parser.add_argument(
        "--judge-attempts",
        type=int,
        default=3,
        help="tries per question when the judge's reply is not valid JSON (default 3)",
    )
    parser.add_argument("--cache", help="reply cache folder (default $WENZHEN_CACHE/judge)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the reply cache")


def _endpoint(args: argparse.Namespace, flag: str) -> dict[str, Any]:
    prefix = flag.replace("-", "_")
    return {
        "url": getattr(args, f"{prefix}_url"),
        "model": getattr(args, f"{prefix}_model"),
        "api_key_env": getattr(args, f"{prefix}_key_env"),
        "temperature": getattr(args, f"{prefix}_temperature"),
        "max_tokens": getattr(args, f"{prefix}_max_tokens"),
        "concurrency": args.concurrency,
        "max_retries": args.retries,
    }


def _judge_settings(args: argparse.Namespace) -> dict[str, Any]:
    require_endpoint(args.judge_url, args.judge_model, "judge", "judge")
    return {
        "endpoint": _endpoint(args, "judge"),
        "attempts": args.judge_attempts,
        "cache_dir": args.cache,
        "use_cache": not args.no_cache,
    }


def register(commands: Any) -> None:
    """Add `eval judge` and `eval consult` to the `eval` subcommands."""
    judge = commands.add_parser(
        "judge",
        help="a judge model scores the answers on a medical rubric, compares two runs, or is itself checked",
        description="The model answers held-out questions (same readers as `eval gen`); a judge behind any "
        "OpenAI-compatible endpoint scores each answer 1-5 on medical accuracy, safety, helpful next steps, no "
        "dosing without a doctor and clarity, with a reason, as validated JSON (asked again when malformed). "
        "--against RUN judges each answer against that run's answer, in both orders, and reports win/tie/loss "
        "with 95% intervals. --agreement (no MODEL) checks the judge on wenzhen's 50 labelled answer pairs. "
        "Replies are cached on disk, so a rerun costs nothing.",
        epilog="Writes report.json, report.md, judge.png and answers.jsonl into --out; see docs/evaluation.md.",
    )
    _add_model_arguments(judge, model_required=False)
    _add_generation_arguments(judge)
    judge.add_argument(
        "--data", help="questions (.jsonl or .json array), e.g. a test split or CMtMedQA_test.json"
    )
    judge.add_argument("--limit", type=int, help="judge a random subset of N questions (drawn with --seed)")
    judge.add_argument(
        "--against", help="an earlier `eval judge` / `eval gen` run on the same data: pairwise mode"
    )
    judge.add_argument(
        "--agreement",
        action="store_true",
        help="judge wenzhen's labelled pairs and report how often the judge is right",
    )
    judge.add_argument("--agreement-pairs", help="another labelled-pairs JSONL file for --agreement")
    _add_judge_arguments(judge)
    judge.set_defaults(handler=_run_judge)

    consult = commands.add_parser(
        "consult",
        help="the model consults simulated patients (CMB-Clin cases); a judge scores each transcript",
        description="A patient model behind an OpenAI-compatible endpoint plays each clinical case, telling only "
        "the chief complaint and revealing facts when asked; the model is the doctor for up to --max-turns turns "
        "(all consultations batched). The judge scores proactive questioning, accuracy of the final advice and "
        "safety. Cases: CMB-Clin (../shared/data/cmb-clin/CMB-test-qa.json) or {medical_case, doctor_diagnosis}.",
        epilog="Writes report.json, report.md, consult.png and transcripts.jsonl into --out.",
    )
    _add_model_arguments(consult)
    _add_generation_arguments(consult)
    consult.add_argument(
        "--cases", required=True, help="case file, e.g. ../shared/data/cmb-clin/CMB-test-qa.json"
    )
    consult.add_argument("--limit", type=int, help="only the first N cases")
    consult.add_argument(
        "--max-turns", type=int, default=4, help="most doctor turns per consultation (default 4)"
    )
    _add_endpoint_arguments(consult, "patient", "patient", required=True)
    _add_judge_arguments(consult)
    consult.set_defaults(handler=_run_consult)


def _print_summary(report: EvalReport, out: str) -> None:
    values = ", ".join(f"{name}={format_value(value)}" for name, value in report.metrics.items())
    print(f"{report.label}: {values}")
    failures = report.counts.get("judge_failures", 0)
    print(f"report: {out}/{REPORT_MD} ({report.data.n_evaluated} samples, {failures} failed judgments)")


def _run_judge(args: argparse.Namespace) -> int:
    from wenzhen.evaluate.judge import (
        JudgeEvalConfig,
        JudgeSettings,
        evaluate_agreement,
        evaluate_judged,
        evaluate_pairwise,
    )

    if args.agreement:
        if args.model or args.data or args.against:
            raise WenzhenError("--agreement checks the judge alone; leave out MODEL, --data and --against")
        settings = validate_config(JudgeSettings, _judge_settings(args), source="command line")
        report = evaluate_agreement(args.out, settings, args.agreement_pairs, force=args.force)
        _print_summary(report, args.out)
        return 0
    if not args.model or not args.data:
        raise WenzhenError("pass MODEL and --data (or --agreement to check the judge alone)")
    config = validate_config(
        JudgeEvalConfig,
        {
            "model": _model_options(args),
            "label": args.label,
            "limit": args.limit,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "generation": _generation_settings(args),
            "judge": _judge_settings(args),
        },
        source="command line",
    )
    if args.against:
        report = evaluate_pairwise(args.model, args.data, args.against, args.out, config, force=args.force)
    else:
        report = evaluate_judged(args.model, args.data, args.out, config, force=args.force)
    _print_summary(report, args.out)
    return 0


def _run_consult(args: argparse.Namespace) -> int:
    from wenzhen.evaluate.consult import ConsultConfig, evaluate_consultation

    config = validate_config(
        ConsultConfig,
        {
            "model": _model_options(args),
            "label": args.label,
            "limit": args.limit,
            "max_turns": args.max_turns,
            "batch_size": args.batch_size,
            "generation": _generation_settings(args),
            "patient": _endpoint(args, "patient"),
            "judge": _judge_settings(args),
        },
        source="command line",
    )
    _print_summary(
        evaluate_consultation(args.model, args.cases, args.out, config, force=args.force), args.out
    )
    return 0
