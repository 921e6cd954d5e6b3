"""De-duplication and the train/dev/test split.

Records are grouped by their question (the user turns after cleaning), and a whole group goes to one split, so no
question appears in two splits even when it has several different answers. Sizes are allocated per department
(stratum) by largest remainder, so the totals are exact and each department keeps its share; the order inside a
department is a shuffle seeded by (seed, department), so a run is deterministic for a given seed.
"""

import math
import random
from array import array

from wenzhen.data.config import SplitConfig
from wenzhen.data.records import Message
from wenzhen.errors import WenzhenError

SPLITS = ("train", "dev", "test")
NO_DEPARTMENT = "(none)"


def conversation_key(messages: list[Message], rejected: str | None = None, label: bool | None = None) -> int:
    """Identity of a cleaned conversation for exact de-duplication (roles and texts; a pair's rejected answer and
    a KTO label are part of it)."""
    return hash((tuple(m["role"] for m in messages), tuple(m["content"] for m in messages), rejected, label))


def question_key(messages: list[Message]) -> int:
    """Identity of a conversation's question side: its user turns."""
    return hash(tuple(m["content"] for m in messages if m["role"] == "user"))


class SplitPlanner:
    """Collects question groups per stratum as records are kept, then assigns each group a split."""

    def __init__(self, config: SplitConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self._group_of_question: dict[int, int] = {}
        self._stratum_of_group = array("i")
        self._strata: dict[str, int] = {}

    def add(self, question: int, department: str | None) -> int:
        """The group id of this question, creating the group (in `department`'s stratum) on first sight."""
        group = self._group_of_question.get(question)
        if group is None:
            group = len(self._stratum_of_group)
            self._group_of_question[question] = group
            name = (department or NO_DEPARTMENT) if self.config.stratify else "all"
            self._stratum_of_group.append(self._strata.setdefault(name, len(self._strata)))
        return group

    @property
    def group_count(self) -> int:
        return len(self._stratum_of_group)

    def assign(self) -> bytearray:
        """Split index (0 train, 1 dev, 2 test) of every group."""
        self._group_of_question.clear()
        total = self.group_count
        targets = [self._target("dev", self.config.dev, total), self._target("test", self.config.test, total)]
        if sum(targets) > total:
            raise WenzhenError(
                f"dev + test ({targets[0]} + {targets[1]}) exceed the {total} distinct questions kept; ask for fewer"
            )
        members: list[list[int]] = [[] for _ in self._strata]
        for group, stratum in enumerate(self._stratum_of_group):
            members[stratum].append(group)
        sizes = [len(groups) for groups in members]
        quotas = [_largest_remainder(target, sizes) for target in targets]
        assignment = bytearray(total)
        for name, stratum in self._strata.items():
            groups = members[stratum]
            random.Random(f"{self.seed}:{name}").shuffle(groups)
            dev, test = quotas[0][stratum], quotas[1][stratum]
            for group in groups[:dev]:
                assignment[group] = 1
            for group in groups[dev : dev + test]:
                assignment[group] = 2
        return assignment

    @staticmethod
    def _target(name: str, size: float | int, total: int) -> int:
        return round(size * total) if isinstance(size, float) else int(size)


def _largest_remainder(target: int, sizes: list[int]) -> list[int]:
    """Split `target` over strata in proportion to `sizes`, exactly, never above a stratum's size."""
    total = sum(sizes)
    if not total or not target:
        return [0] * len(sizes)
    shares = [target * size / total for size in sizes]
    quotas = [math.floor(share) for share in shares]
    order = sorted(range(len(sizes)), key=lambda i: (quotas[i] - shares[i], i))
    for index in order[: target - sum(quotas)]:
        quotas[index] += 1
    return [min(quota, size) for quota, size in zip(quotas, sizes, strict=True)]
