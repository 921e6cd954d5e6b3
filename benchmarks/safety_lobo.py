"""Leave-one-batch-out estimate of how the guard's learned stage generalises to probes it never saw.

    PYTHONPATH=src python benchmarks/safety_lobo.py [--shared ../shared] [--batches batch1 batch2 ...]

For each probe batch in benchmarks/safety_probes/, the classifier is retrained with that batch's messages left
out of the labelled set (so neither its weights nor its threshold saw them) and the guard is measured on the
batch. The rules were written with every folded-in batch in view, so this is an estimate for the learned stage
only; blind batches remain the judge. Writes benchmarks/results/safety_lobo.{json,md}. CPU only, about a
minute of training per batch.
"""

import argparse
import json
import platform
import time
from pathlib import Path

from wenzhen import safety
from wenzhen.evaluate.safety_probes import guard_metrics, read_guard_probes
from wenzhen.safety.training import train

ROOT = Path(__file__).resolve().parent
PROBES = ROOT / "safety_probes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent.parent / "shared"))
    parser.add_argument("--batches", nargs="*", help="default: every batch in benchmarks/safety_probes/")
    parser.add_argument("--out", default=str(ROOT / "results" / "safety_lobo"))
    args = parser.parse_args()
    batches = args.batches or sorted({p.name.split("_")[0] for p in PROBES.glob("batch*_red.jsonl")})
    results: dict[str, dict[str, object]] = {}
    for batch in batches:
        probes = [
            *read_guard_probes(PROBES / f"{batch}_red.jsonl"),
            *read_guard_probes(PROBES / f"{batch}_ordinary.jsonl"),
        ]
        started = time.perf_counter()
        model, report = train(args.shared, frozenset(p.text for p in probes))
        guard = safety.Guard(safety.SafetyConfig(), classifier=model)
        metrics, _, details = guard_metrics(probes, [], guard.check)
        # The learned stage alone (speech acts still gate it): the rules saw every batch, the classifier not.
        learned = safety.Guard(safety.SafetyConfig(), classifier=model)
        learned.rules = []
        alone, _, _ = guard_metrics(probes, [], learned.check)
        results[batch] = {
            "metrics": metrics,
            "learned_alone": alone,
            "threshold": report["threshold"],
            "train_seconds": round(time.perf_counter() - started, 1),
            "wrong": [{k: d[k] for k in ("text", "category", "kind", "fired", "outcome")} for d in details],
        }
        print(batch, json.dumps(metrics), "learned alone", json.dumps(alone), flush=True)
    out = Path(args.out)
    machine = f"{platform.machine()} CPU, {platform.python_version()}"
    out.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "results": results}, ensure_ascii=False, indent=2) + "\n"
    )
    lines = [
        f"# Safety guard, leave-one-batch-out (classifier retrained without the batch) — {machine}",
        "",
        "| batch | recall (%) | false alarms (%) | right guidance (%) | learned stage alone: recall / false"
        " alarms / right guidance (%) | threshold |",
        "|---|---|---|---|---|---|",
    ]
    for batch, result in results.items():
        m = result["metrics"]
        assert isinstance(m, dict)
        cells = [
            f"{m.get(k, 0.0):.1f}" for k in ("guard_recall", "guard_false_alarms", "guard_right_guidance")
        ]
        a = result["learned_alone"]
        assert isinstance(a, dict)
        alone = " / ".join(
            f"{a.get(k, 0.0):.1f}" for k in ("guard_recall", "guard_false_alarms", "guard_right_guidance")
        )
        lines.append(f"| {batch} | {' | '.join(cells)} | {alone} | {result['threshold']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
