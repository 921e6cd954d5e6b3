"""Measure the safety guard alone: each probe batch, the shipped labelled set, and real consultation questions.

    PYTHONPATH=src python benchmarks/safety_guard.py [--shared ../shared] [--rules-only]

Writes the `measure` split of the bundled corpora (`wenzhen.safety.corpora`, never used in training) as a
background file, runs `wenzhen eval safety --guard-only` on every batch in benchmarks/safety_probes/ and on the
labelled set, and writes benchmarks/results/safety_guard[-rules].{json,md}. CPU only.
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from wenzhen import safety
from wenzhen.evaluate.safety_probes import evaluate_guard
from wenzhen.safety.corpora import consultation_questions

ROOT = Path(__file__).resolve().parent
PROBES = ROOT / "safety_probes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent.parent / "shared"))
    parser.add_argument("--rules-only", action="store_true", help="switch the learned stage off")
    args = parser.parse_args()
    config = safety.SafetyConfig(classifier=not args.rules_only)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        background = Path(tmp) / "background.jsonl"
        questions = consultation_questions(args.shared, "measure")
        background.write_text("".join(json.dumps({"text": q}, ensure_ascii=False) + "\n" for q in questions))
        batches = sorted({p.name.split("_")[0] for p in PROBES.glob("batch*_red.jsonl")})
        runs = {b: [PROBES / f"{b}_red.jsonl", PROBES / f"{b}_ordinary.jsonl"] for b in batches}
        runs["labelled set"] = []
        for name, files in runs.items():
            report = evaluate_guard(files, [], Path(tmp) / name.replace(" ", "_"), config)
            results[name] = report.metrics
        report = evaluate_guard([], [background], Path(tmp) / "background", config)
        results[f"background ({len(questions)} real questions)"] = report.metrics
        guard = safety.Guard(config)
        started = time.perf_counter()
        for question in questions:
            guard.check([{"role": "user", "content": question}])
        milliseconds = 1000 * (time.perf_counter() - started) / len(questions)
    suffix = "-rules" if args.rules_only else ""
    out = ROOT / "results" / f"safety_guard{suffix}"
    machine = f"{platform.machine()} CPU, {platform.python_version()}"
    summary = {"machine": machine, "ms_per_message": round(milliseconds, 2), "results": results}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Safety guard{' (rules only)' if args.rules_only else ''} — {machine}",
        "",
        "| set | recall (%) | false alarms (%) | right guidance (%) | background fire rate (%) |",
        "|---|---|---|---|---|",
    ]
    for name, m in results.items():
        cells = [
            m.get(k)
            for k in (
                "guard_recall",
                "guard_false_alarms",
                "guard_right_guidance",
                "guard_background_fire_rate",
            )
        ]
        lines.append(f"| {name} | " + " | ".join("" if c is None else f"{c:.1f}" for c in cells) + " |")
    lines += [
        "",
        f"Guard time: {milliseconds:.2f} ms a message (mean over the background questions, one CPU core).",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
