"""`wenzhen eval compare`: put the reports of several eval runs (base, adapters, merged) side by side.

Runs are grouped by kind (gen, exam, safety). Within a kind the runs must have measured the same data (same
content hash, same number and selection of samples) unless the caller allows otherwise, in which case the report
says so. Output: `comparison.json`, `comparison.md` and one bar chart PNG per kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wenzhen.errors import WenzhenError
from wenzhen.evaluate.report import (
    EvalReport,
    check_output,
    markdown_table,
    output_directory,
    read_report,
    write_bar_chart,
)
from wenzhen.io import write_json, write_text

COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
KIND_TITLES = {
    "gen": "Generation metrics",
    "exam": "Medical exam accuracy",
    "safety": "Safety probes",
    "judge": "Judged answer quality (1-5)",
    "judge-pairwise": "Pairwise judgment (%)",
    "judge-agreement": "Judge agreement with labelled pairs (%)",
    "consult": "Simulated consultations, judged (1-5)",
}


@dataclass
class Comparison:
    """The side-by-side tables, one per kind, and where the charts were written."""

    data: dict[str, Any]
    markdown: str
    charts: list[str]


def unique_labels(reports: Sequence[EvalReport]) -> list[str]:
    """Each run's label, numbered where two runs share one."""
    labels = [report.label for report in reports]
    return [label if labels.count(label) == 1 else f"{label} #{i + 1}" for i, label in enumerate(labels)]


def data_mismatch(reports: Sequence[EvalReport], labels: Sequence[str]) -> str | None:
    """A sentence naming the runs whose data differ from the first run's, or None."""
    first = reports[0].data
    differing = [
        f"{label} ({report.data.n_evaluated} samples, {report.data.selection}, sha256 {report.data.sha256[:12]})"
        for report, label in zip(reports, labels, strict=True)
        if (report.data.sha256, report.data.n_evaluated, report.data.selection)
        != (first.sha256, first.n_evaluated, first.selection)
    ]
    if not differing:
        return None
    return (
        f"runs differ in data from {labels[0]} ({first.n_evaluated} samples, {first.selection}, sha256 "
        f"{first.sha256[:12]}): " + "; ".join(differing)
    )


def kind_section(reports: Sequence[EvalReport], labels: Sequence[str]) -> dict[str, Any]:
    """The JSON of one kind: metric x run values, samples per run, definitions."""
    names = list(dict.fromkeys(name for report in reports for name in report.metrics))
    return {
        "metrics": {
            name: {label: r.metrics.get(name) for r, label in zip(reports, labels, strict=True)}
            for name in names
        },
        "metric_labels": {
            name: next((r.metric_labels[name] for r in reports if name in r.metric_labels), name)
            for name in names
        },
        "metric_definitions": {
            name: next((r.metric_definitions[name] for r in reports if name in r.metric_definitions), "")
            for name in names
            if any(name in r.metric_definitions for r in reports)
        },
        "n_samples": {label: r.data.n_evaluated for r, label in zip(reports, labels, strict=True)},
        "data": {label: r.data.model_dump() for r, label in zip(reports, labels, strict=True)},
    }


def kind_markdown(
    kind: str, section: dict[str, Any], labels: Sequence[str], chart: str, mismatch: str | None
) -> str:
    """One kind's part of comparison.md."""
    rows = [
        (
            section["metric_labels"][name],
            *(values[label] if values[label] is not None else "-" for label in labels),
        )
        for name, values in section["metrics"].items()
    ]
    samples = ", ".join(f"{label}: {n}" for label, n in section["n_samples"].items())
    first_data = next(iter(section["data"].values()))
    lines = [
        f"## {KIND_TITLES.get(kind, kind)}",
        "",
        f"Data: `{first_data['path']}`; samples per run: {samples}.",
    ]
    if mismatch:
        lines += ["", f"**Warning:** {mismatch}."]
    lines += [
        "",
        markdown_table(["metric", *labels], rows),
        "",
        f"![{kind}]({chart})",
        "",
        "Definitions:",
        "",
    ]
    lines += [f"- **{name}**: {text}" for name, text in section["metric_definitions"].items()]
    return "\n".join(lines)


def compare_runs(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    allow_different_data: bool = False,
    force: bool = False,
) -> Comparison:
    """Read the runs' reports and write the side-by-side comparison into `out_dir`."""
    if not run_dirs:
        raise WenzhenError("no run given; pass the --out folders of two or more `wenzhen eval` runs")
    check_output(out_dir, force, list(run_dirs))
    reports = [read_report(run) for run in run_dirs]
    labels = [report.label for report in reports]
    for kind in {r.kind for r in reports}:
        positions = [i for i, r in enumerate(reports) if r.kind == kind]
        for position, label in zip(positions, unique_labels([reports[i] for i in positions]), strict=True):
            labels[position] = label
    runs = [
        {
            "label": label,
            "kind": r.kind,
            "model": r.model,
            "adapter": r.adapter,
            "run_dir": str(run),
            "device": r.device,
        }
        for r, label, run in zip(reports, labels, run_dirs, strict=True)
    ]
    data: dict[str, Any] = {"runs": runs, "kinds": {}}
    parts = [
        "# Evaluation comparison",
        "",
        markdown_table(
            ["run", "kind", "model", "adapter", "device"],
            [(r["label"], r["kind"], r["model"], r["adapter"] or "-", r["device"]) for r in runs],
        ),
    ]
    charts = []
    kinds = list(dict.fromkeys(r.kind for r in reports))
    with output_directory(out_dir, force, list(run_dirs)) as folder:
        for kind in kinds:
            chosen = [(r, label) for r, label in zip(reports, labels, strict=True) if r.kind == kind]
            kind_reports = [r for r, _ in chosen]
            kind_labels = [label for _, label in chosen]
            mismatch = data_mismatch(kind_reports, kind_labels)
            if mismatch and not allow_different_data:
                raise WenzhenError(
                    f"{mismatch}; evaluate every run on the same data or pass --allow-different-data"
                )
            section = kind_section(kind_reports, kind_labels)
            section["data_mismatch"] = mismatch
            data["kinds"][kind] = section
            chart = f"compare-{kind}.png"
            metric_names = list(section["metrics"])
            write_bar_chart(
                folder / chart,
                KIND_TITLES.get(kind, kind),
                metric_names,
                {label: [section["metrics"][m][label] or 0.0 for m in metric_names] for label in kind_labels},
                "score (x100 / %)",
            )
            charts.append(chart)
            parts += ["", kind_markdown(kind, section, kind_labels, chart, mismatch)]
        markdown = "\n".join(parts) + "\n"
        write_json(folder / COMPARISON_JSON, data)
        write_text(folder / COMPARISON_MD, markdown)
    return Comparison(data, markdown, charts)
