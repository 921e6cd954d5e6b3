"""The preparation report: counts per input, reason, department and split, cleaning counts, length percentiles."""

from array import array
from collections import Counter, defaultdict
from typing import Any

PERCENTILES = (50, 90, 95, 99)


class Tally:
    """Running counts of one preparation run; `read == kept + duplicates + rejected` must hold at the end."""

    def __init__(self) -> None:
        self.by_source: dict[str, Counter[str]] = defaultdict(Counter)
        self.by_department: dict[str, Counter[str]] = defaultdict(Counter)
        self.reasons: Counter[str] = Counter()
        self.user = array("I")
        self.assistant = array("I")
        self.total = array("I")

    def count(self, outcome: str, source: str, department: str) -> None:
        """Record one outcome ('read', 'kept', 'duplicates', 'rejected', or a split name)."""
        self.by_source[source][outcome] += 1
        self.by_department[department][outcome] += 1

    def totals(self) -> dict[str, int]:
        keys = ("read", "kept", "duplicates", "rejected")
        return {key: sum(counts[key] for counts in self.by_source.values()) for key in keys}


def percentiles(values: array) -> dict[str, int]:
    """p50/p90/p95/p99/max of the lengths (nearest rank); zeros when there are none."""
    if not values:
        return {**{f"p{p}": 0 for p in PERCENTILES}, "max": 0}
    ordered = sorted(values)
    last = len(ordered) - 1
    result = {f"p{p}": ordered[min(last, max(0, round(p / 100 * len(ordered)) - 1))] for p in PERCENTILES}
    result["max"] = ordered[-1]
    return result


def format_report(report: dict[str, Any]) -> str:
    """The short table printed after a run."""
    lines = [
        f"read {report['read']:,}  kept {report['kept']:,}  duplicates {report['duplicates']:,}  "
        f"rejected {report['rejected']:,}  ({report['seconds']:.1f} s, {report['records_per_second']:,.0f} records/s)",
        "splits: " + "  ".join(f"{name} {count:,}" for name, count in report["splits"].items()),
    ]
    if report["rejected_by_reason"]:
        lines.append("rejected by reason:")
        lines += [f"  {reason:<28} {count:>9,}" for reason, count in report["rejected_by_reason"].items()]
    if report["cleaning"]:
        lines.append("cleaning:")
        lines += [f"  {name:<28} {count:>9,}" for name, count in report["cleaning"].items()]
    lines.append(
        f"{'department':<14} {'read':>9} {'kept':>9} {'dup':>7} {'rej':>7} {'train':>9} {'dev':>7} {'test':>7}"
    )
    for name, c in report["departments"].items():
        lines.append(
            f"{name:<14} {c.get('read', 0):>9,} {c.get('kept', 0):>9,} {c.get('duplicates', 0):>7,} "
            f"{c.get('rejected', 0):>7,} {c.get('train', 0):>9,} {c.get('dev', 0):>7,} {c.get('test', 0):>7,}"
        )
    length = report["length"]
    lines.append(f"length ({length['unit']}):")
    for part in ("user", "assistant", "total"):
        lines.append(f"  {part:<10} " + "  ".join(f"{k} {v:,}" for k, v in length[part].items()))
    return "\n".join(lines)
