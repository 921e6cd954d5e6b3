"""The one report format every eval command writes, and its markdown and PNG renderings.

A run folder holds `report.json` (an `EvalReport`), `report.md` (the same for people) and the command's own files
(predictions, per-question answers). The folder is built under a temporary name and renamed when complete, so an
interrupted run never leaves a half-written report that `wenzhen eval compare` could pick up.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from wenzhen import __version__
from wenzhen.errors import WenzhenError
from wenzhen.io import atomic_directory, check_apart, check_replaceable, write_json, write_text

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


class DataInfo(BaseModel):
    """Which data a report measured: compare refuses to silently mix runs on different data."""

    path: str
    sha256: str
    n_available: int
    n_evaluated: int
    selection: str


class EvalReport(BaseModel):
    """What one eval command measured, for one model (base, adapter or merged)."""

    kind: str  # "gen", "exam" or "safety"
    label: str
    model: str
    adapter: str | None = None
    data: DataInfo
    settings: dict[str, Any] = {}
    metrics: dict[str, float]
    metric_labels: dict[str, str] = {}
    metric_definitions: dict[str, str]
    breakdown: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    notes: list[str] = []
    device: str = ""
    elapsed_s: float = 0.0
    created: str = ""
    wenzhen_version: str = __version__


def file_sha256(path: Path) -> str:
    """Content hash of a data file, or of every file under a data directory (names included)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def output_directory(
    out_dir: str | Path, force: bool, inputs: Sequence[Any] = ()
) -> AbstractContextManager[Path]:
    """A staging directory renamed onto `out_dir` when the block succeeds (see `wenzhen.io.atomic_directory`)."""
    return atomic_directory(out_dir, force=force, inputs=_paths(inputs))


def check_output(out_dir: str | Path, force: bool, inputs: Sequence[Any] = ()) -> None:
    """Refuse, before any work is done, an output folder that overlaps an input or that --force may not replace
    (the final rename would refuse it anyway)."""
    check_apart(out_dir, _paths(inputs))
    check_replaceable(Path(out_dir), force)


def _paths(inputs: Sequence[Any]) -> list[str | Path]:
    """The inputs that are paths (an evaluation may be handed a loaded engine instead of a model folder)."""
    return [item for item in inputs if isinstance(item, str | Path)]


def write_report(folder: Path, report: EvalReport, markdown: str) -> EvalReport:
    """Write `report.json` and `report.md` into `folder`, stamping the time; return the stamped report."""
    if not report.created:
        report = report.model_copy(update={"created": _dt.datetime.now(_dt.timezone.utc).isoformat()})
    write_json(folder / REPORT_JSON, report.model_dump(mode="json"))
    write_text(folder / REPORT_MD, markdown)
    return report


def read_report(run_dir: str | Path) -> EvalReport:
    """The `report.json` of an eval run folder, with a clear error for anything else."""
    folder = Path(run_dir)
    file = folder / REPORT_JSON if folder.is_dir() else folder
    if not file.is_file():
        raise WenzhenError(f"{folder} has no {REPORT_JSON}; pass the --out folder of a `wenzhen eval` run")
    try:
        return EvalReport.model_validate(json.loads(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise WenzhenError(f"{file} is not a wenzhen eval report ({first}); run the eval again") from None


def format_value(value: float) -> str:
    """Scores with two decimals (counts are ints and printed as they are)."""
    return f"{value:.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats get two decimals."""

    def cell(value: Any) -> str:
        text = format_value(value) if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: EvalReport, title: str, sections: Sequence[str] = ()) -> str:
    """The report for people: what was measured on what, the numbers, then the metric definitions."""
    header = [
        f"# {title}: {report.label}",
        "",
        f"- model: `{report.model}`" + (f" + adapter `{report.adapter}`" if report.adapter else ""),
        f"- data: `{report.data.path}` (sha256 {report.data.sha256[:12]}), {report.data.n_evaluated} of "
        f"{report.data.n_available} samples ({report.data.selection})",
        f"- device: {report.device or 'unknown'}; {report.elapsed_s:.1f} s",
        "- settings: " + ", ".join(f"{key}={value}" for key, value in report.settings.items()),
        "",
        "## Results",
        "",
        markdown_table(
            ["metric", "value"],
            [(report.metric_labels.get(name, name), value) for name, value in report.metrics.items()],
        ),
    ]
    if report.counts:
        header += ["", markdown_table(["count", "n"], list(report.counts.items()))]
    body = [*header, *(f"\n{section}" for section in sections)]
    if report.notes:
        body += ["", "## Notes", "", *(f"- {note}" for note in report.notes)]
    body += [
        "",
        "## Metric definitions",
        "",
        *(f"- **{k}**: {v}" for k, v in report.metric_definitions.items()),
    ]
    return "\n".join(body) + "\n"


def write_bar_chart(
    path: Path, title: str, groups: Sequence[str], series: dict[str, Sequence[float]], ylabel: str
) -> None:
    """A grouped bar chart PNG: one group per metric, one bar per run; written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(series), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(series)) * 0.6 + 2), 4.5))
    for index, (name, values) in enumerate(series.items()):
        positions = [g + index * width - 0.4 + width / 2 for g in range(len(groups))]
        bars = axes.bar(positions, values, width=width, label=name)
        axes.bar_label(bars, fmt="%.1f", fontsize=7)
    axes.set_xticks(range(len(groups)), groups, rotation=20, ha="right", fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    staging = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(staging, dpi=120)
    plt.close(figure)
    staging.replace(path)


def progress_bar(total: int, description: str, unit: str = "sample") -> Any:
    """A tqdm progress bar on stderr (use as a context manager, advance with `.update(n)`)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True)
