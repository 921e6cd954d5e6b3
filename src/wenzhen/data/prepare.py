"""`prepare(inputs, out_dir, config)`: raw corpora in, `train/dev/test.jsonl` + `rejects.jsonl` + `report.json` out.

Read top to bottom: pick a reader per input, stream every record through the cleaning rules and exact
de-duplication, measure lengths in batches (in a worker process, overlapping the parsing), spool the kept records,
assign question groups to splits per department, write the splits, and account for every record read.
"""

import contextlib
import json
import logging
import os
import resource
import time
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from wenzhen.data.cleaning import Cleaner
from wenzhen.data.config import DataConfig
from wenzhen.data.lengths import LengthMeter, char_meter, token_meter
from wenzhen.data.readers import Reader, choose_reader
from wenzhen.data.records import Record, output_row
from wenzhen.data.report import Tally, percentiles
from wenzhen.data.split import NO_DEPARTMENT, SPLITS, SplitPlanner, conversation_key, question_key
from wenzhen.errors import WenzhenError
from wenzhen.io import atomic_directory, check_apart, check_replaceable, write_json

log = logging.getLogger(__name__)

CORPUS_SUFFIXES = {".csv", ".json", ".jsonl", ".txt"}
SPOOL = ".kept.jsonl"
# Bounds the records held while waiting for lengths (24 batches of 4,096 records).
# On the 800k-row benchmark this cost about 80 MiB of peak RSS.
MAX_PENDING_BATCHES = 24


@dataclass(slots=True)
class InputPlan:
    """One input file with the reader chosen for it."""

    path: Path
    reader: Reader
    encoding: str


def prepare(
    inputs: Sequence[str | Path], out_dir: str | Path, config: DataConfig, *, force: bool = False
) -> dict:
    """Prepare raw corpora into ChatGLM3 training files in `out_dir`; return the report (also in report.json)."""
    started = time.perf_counter()
    check_apart(out_dir, inputs)
    check_replaceable(Path(out_dir), force)
    plans = plan_inputs(inputs, config.format)
    meter = token_meter(config.length.tokenizer) if config.length.tokenizer else char_meter()
    with atomic_directory(out_dir, force=force, inputs=inputs) as staging:
        run = _Run(config, meter, staging)
        try:
            run.stream(plans)
        finally:
            meter.close()
        splits = run.write_splits()
        report = run.report(plans, splits, time.perf_counter() - started)
        write_json(staging / "report.json", report)
    return report


def plan_inputs(inputs: Sequence[str | Path], format_name: str | None) -> list[InputPlan]:
    """Resolve every input (directories expand to their corpus files) and its reader, before any work starts."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
        else:
            files.append(path)
    if not files:
        raise WenzhenError(
            f"no corpus files found in {', '.join(map(str, inputs))}; pass CSV, JSON, JSONL or txt files"
        )
    plans = []
    for path in files:
        reader, encoding = choose_reader(path, format_name)
        plans.append(InputPlan(path, reader, encoding))
    return plans


class _Run:
    """State of one preparation run: cleaner, de-duplication set, split planner, tallies, open output files."""

    def __init__(self, config: DataConfig, meter: LengthMeter, staging: Path) -> None:
        self.config = config
        self.meter = meter
        self.staging = staging
        self.cleaner = Cleaner(config.cleaning)
        self.planner = SplitPlanner(config.split, config.seed)
        self.tally = Tally()
        self.cpu_started = time.process_time()
        self.seen: set[int] = set()
        # Per kept record, compactly: its question group and its department's index (800k records -> ~5 MiB).
        self.group_of_kept = array("i")
        self.department_of_kept = array("H")
        self.department_index: dict[str, int] = {}
        self.system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []

    def stream(self, plans: list[InputPlan]) -> None:
        """Read, clean and de-duplicate every record; measure and spool the survivors batch by batch."""
        limit = self.config.length.batch_size
        # Batches out for measuring, oldest first. Several may be in flight so parsing runs ahead while the worker
        # starts (it imports the tokenizer's libraries) instead of waiting for each batch in turn.
        pending: deque[tuple[Future[list[int]], list[Record]]] = deque()
        with (
            open(self.staging / "rejects.jsonl", "w", encoding="utf-8", errors="backslashreplace") as rejects,
            open(
                self.staging / "duplicates.jsonl", "w", encoding="utf-8", errors="backslashreplace"
            ) as duplicates,
            open(self.staging / SPOOL, "w", encoding="utf-8") as spool,
        ):
            self.rejects, self.duplicates, self.spool = rejects, duplicates, spool
            batch: list[Record] = []
            for record in self._records(plans):
                if self._admit(record):
                    batch.append(record)
                if len(batch) >= limit:
                    pending.append((self.meter.submit(_texts(batch)), batch))
                    batch = []
                    while pending and (len(pending) > MAX_PENDING_BATCHES or pending[0][0].done()):
                        self._finish(*pending.popleft())
            if batch:
                pending.append((self.meter.submit(_texts(batch)), batch))
            while pending:
                self._finish(*pending.popleft())

    def _records(self, plans: list[InputPlan]) -> Iterator[Record]:
        progress = tqdm(
            unit=" rec", desc="preparing", disable=None if self.config.progress else True, mininterval=0.5
        )
        with progress:
            for plan in plans:
                log.info("reading %s as %s (%s)", plan.path, plan.reader.name, plan.encoding)
                for record in plan.reader.read(plan.path, plan.encoding):
                    progress.update()
                    yield record

    def _admit(self, record: Record) -> bool:
        """Count the record as read; reject or drop it as a duplicate, or return True to measure it."""
        department = record.department or NO_DEPARTMENT
        self.tally.count("read", record.source, department)
        reason = record.error or self.cleaner.clean(record)
        if reason is not None:
            self._reject(record, reason)
            return False
        if self.system and record.messages[0]["role"] != "system":
            record.messages = self.system + record.messages
        if self.config.dedup:
            key = conversation_key(record.messages, record.rejected, record.label)
            if key in self.seen:
                self.tally.count("duplicates", record.source, department)
                self._write(
                    self.duplicates, {"source": record.source, "line": record.line, "raw": record.raw}
                )
                return False
            self.seen.add(key)
        return True

    def _reject(self, record: Record, reason: str) -> None:
        code = reason.split(":", 1)[0]
        self.tally.reasons[code] += 1
        self.tally.count("rejected", record.source, record.department or NO_DEPARTMENT)
        line = {
            "source": record.source,
            "line": record.line,
            "reason": code,
            "detail": reason,
            "raw": record.raw,
        }
        self._write(self.rejects, line)

    @staticmethod
    def _write(handle: IO[str], row: dict[str, Any]) -> None:
        handle.write(json.dumps(row, ensure_ascii=False))
        handle.write("\n")

    def _finish(self, future: "Future[list[int]]", batch: list[Record]) -> None:
        """Apply the length limits with the measured lengths and spool the records that pass."""
        lengths = iter(future.result())
        limits = self.config.length
        for record in batch:
            user = assistant = system = 0
            reason = None
            for message in record.messages:
                size = next(lengths)
                role = message["role"]
                if role == "user":
                    user += size
                    reason = reason or _turn_limit(size, limits.min_user, limits.max_user, "user")
                elif role == "assistant":
                    assistant += size
                    reason = reason or _turn_limit(size, limits.min_assistant, limits.max_assistant, "answer")
                else:
                    system += size
            if record.rejected is not None:
                size = next(lengths)
                assistant += size
                reason = reason or _turn_limit(size, limits.min_assistant, limits.max_assistant, "answer")
            total = user + assistant + system
            if reason is None and limits.max_total is not None and total > limits.max_total:
                reason = f"too_long_total: {total} {self.meter.unit} > {limits.max_total}"
            if reason is not None:
                self._reject(record, reason)
                continue
            self._keep(record, user, assistant, total)

    def _keep(self, record: Record, user: int, assistant: int, total: int) -> None:
        department = record.department or NO_DEPARTMENT
        self.tally.count("kept", record.source, department)
        self.tally.user.append(user)
        self.tally.assistant.append(assistant)
        self.tally.total.append(total)
        group = self.planner.add(question_key(record.messages), record.department)
        self.group_of_kept.append(group)
        self.department_of_kept.append(
            self.department_index.setdefault(department, len(self.department_index))
        )
        row = output_row(record.messages, record.rejected, record.label)
        self.spool.write(json.dumps(row, ensure_ascii=False))
        self.spool.write("\n")

    def write_splits(self) -> dict[str, int]:
        """Assign question groups to splits and copy each spooled line into its split file."""
        assignment = self.planner.assign()
        counts = dict.fromkeys(SPLITS, 0)
        with contextlib.ExitStack() as stack:
            handles = [
                stack.enter_context(open(self.staging / f"{name}.jsonl", "w", encoding="utf-8"))
                for name in SPLITS
            ]
            spool = stack.enter_context(open(self.staging / SPOOL, encoding="utf-8"))
            per_department = [[0, 0, 0] for _ in self.department_index]
            for line, group, department in zip(
                spool, self.group_of_kept, self.department_of_kept, strict=True
            ):
                split = assignment[group]
                handles[split].write(line)
                per_department[department][split] += 1
        for name, index in self.department_index.items():
            for split_name, count in zip(SPLITS, per_department[index], strict=True):
                self.tally.by_department[name][split_name] = count
                counts[split_name] += count
        os.unlink(self.staging / SPOOL)
        return counts

    def report(self, plans: list[InputPlan], splits: dict[str, int], seconds: float) -> dict[str, Any]:
        """The run's report; raises if any record read is unaccounted for."""
        totals = self.tally.totals()
        if totals["read"] != totals["kept"] + totals["duplicates"] + totals["rejected"]:
            raise RuntimeError(f"records lost in preparation: {totals}")
        if sum(splits.values()) != totals["kept"]:
            raise RuntimeError(f"split sizes {splits} do not add up to the {totals['kept']} kept records")
        keys = ("read", "kept", "duplicates", "rejected")
        return {
            **totals,
            "rejected_by_reason": dict(self.tally.reasons.most_common()),
            "splits": splits,
            "inputs": [
                {
                    "path": str(plan.path),
                    "format": plan.reader.name,
                    "encoding": plan.encoding,
                    **{key: self.tally.by_source[str(plan.path)][key] for key in keys},
                }
                for plan in plans
            ],
            "departments": {
                name: dict(counts)
                for name, counts in sorted(
                    self.tally.by_department.items(), key=lambda item: -item[1]["read"]
                )
            },
            "cleaning": dict(sorted(self.cleaner.counts.items())),
            "rules": self.cleaner.names,
            "length": {
                **self.meter.describe(),
                "user": percentiles(self.tally.user),
                "assistant": percentiles(self.tally.assistant),
                "total": percentiles(self.tally.total),
            },
            "config": self.config.model_dump(mode="json"),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpu_seconds": round(time.process_time() - self.cpu_started, 1),
            "seconds": round(seconds, 2),
            "records_per_second": round(totals["read"] / seconds, 1) if seconds else 0.0,
        }


def _texts(batch: list[Record]) -> list[str]:
    """Every text to measure, record by record: its messages, then a pair's rejected answer."""
    texts = []
    for record in batch:
        texts += [message["content"] for message in record.messages]
        if record.rejected is not None:
            texts.append(record.rejected)
    return texts


def _turn_limit(size: int, minimum: int, maximum: int | None, what: str) -> str | None:
    if size < minimum:
        return f"too_short_{what}: {size} < {minimum}"
    if maximum is not None and size > maximum:
        return f"too_long_{what}: {size} > {maximum}"
    return None
