"""Wall time of the eval commands on one model: full CMMLU-medical exam, a generation subset, safety probes.

With a same-shape ChatGLM3-6B of random weights (benchmarks/random_chatglm3.py) the scores are meaningless (about
25% exam accuracy, gibberish answers that run to max_new_tokens, so generation is timed at its worst case); the
times say how long a user's real 6B evaluation takes on that machine. `eval gen` runs with the static KV cache off
and on. Writes `eval_speed.{json,md}` with the machine it ran on into `--results` (committed copies are named by card).
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from wenzhen.evaluate.exam import ExamConfig, evaluate_exam
from wenzhen.evaluate.generation import GenEvalConfig, evaluate_generation
from wenzhen.evaluate.loading import ModelOptions, open_engine
from wenzhen.evaluate.safety_probes import SafetyConfig, evaluate_safety
from wenzhen.generation import GenerationSettings

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """CPU / GPU description for the results file."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {platform.machine()}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, {platform.platform()}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="model directory")
    parser.add_argument("--exam", required=True, help="CMMLU-layout folder")
    parser.add_argument("--consultations", required=True, help="eval file for eval gen and the safety probes")
    parser.add_argument("--out", type=Path, required=True, help="folder for the eval reports")
    parser.add_argument("--gen-samples", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--safety-per-source", type=int, default=32)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    started = time.perf_counter()
    engine = open_engine(args.model, ModelOptions(dtype="auto", device="auto"))
    load_s = time.perf_counter() - started
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0.0)
    rows = []

    exam = evaluate_exam(
        engine, args.exam, args.out / "exam", ExamConfig(batch_size=args.batch_size), force=True
    )
    rows.append(
        ("eval exam, all subjects, 0 and 5 shots", exam.data.n_evaluated * 2, "questions", exam.elapsed_s)
    )
    gen_config = GenEvalConfig(limit=args.gen_samples, batch_size=args.batch_size, generation=settings)
    default_static = engine.static_cache
    for static in (False, True):
        engine.static_cache = static  # the engine's own switch: the same loaded weights serve both runs
        gen = evaluate_generation(engine, args.consultations, args.out / "gen", gen_config, force=True)
        what = f"eval gen, {args.max_new_tokens} new tokens max, static KV cache {'on' if static else 'off'}"
        rows.append((what, gen.data.n_evaluated, "samples", gen.elapsed_s))
    engine.static_cache = default_static
    safety_config = SafetyConfig(
        limit=args.safety_per_source, batch_size=args.batch_size, generation=settings
    )
    safety = evaluate_safety(engine, [args.consultations], args.out / "safety", safety_config, force=True)
    rows.append(
        (
            f"eval safety, 2 sides, {args.max_new_tokens} new tokens max, static KV cache "
            f"{'on' if default_static else 'off'}",
            safety.data.n_evaluated * 2,
            "answers",
            safety.elapsed_s,
        )
    )

    result = {
        "machine": machine(),
        "model": args.model,
        "dtype": str(next(engine.model.parameters()).dtype),
        "load_s": round(load_s, 2),
        "batch_size": args.batch_size,
        "runs": [
            {"what": w, "items": n, "unit": u, "seconds": s, "per_second": round(n / s, 2)}
            for w, n, u, s in rows
        ],
        "exam_accuracy": exam.metrics,
        "gen_stopped_by_length": gen.counts["stopped_by_length"],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "eval_speed.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"# Eval speed: {args.model}",
        "",
        f"Machine: {result['machine']}; {result['dtype']}; batch {args.batch_size}; model load {result['load_s']} s",
        "",
        "| run | items | seconds | items/s |",
        "|---|---|---|---|",
        *(
            f"| {r['what']} | {r['items']} {r['unit']} | {r['seconds']} | {r['per_second']} |"
            for r in result["runs"]
        ),
        "",
        f"Exam accuracy (random weights, chance is 25%): {json.dumps(exam.metrics)}; "
        f"answers cut at max_new_tokens: {result['gen_stopped_by_length']} of {gen.data.n_evaluated}.",
    ]
    (args.results / "eval_speed.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
