"""Checkpoint folders: written atomically, found again for `AUTO_RESUME` (`yes`, a step number, or a path).

transformers writes `checkpoint-N` in place, so a crash while saving leaves a half-written folder that a later
resume would pick. wenzhen's trainer writes it under `.staging/` and renames it into place when every file is on
disk; a folder named `checkpoint-N` is therefore always complete.
"""

import json
import os
import re
import shutil
from pathlib import Path

from wenzhen.errors import WenzhenError

STAGING = ".staging"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = [
        path
        for path in output_dir.iterdir()
        if path.is_dir() and CHECKPOINT.match(path.name) and (path / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda path: int(CHECKPOINT.match(path.name).group(1)))  # type: ignore[union-attr]


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: official `yes` (newest), a step number N, a path, or nothing."""
    if resume is None or resume.strip().lower() in ("", "no", "false"):
        return None
    choice = resume.strip()
    checkpoints = complete_checkpoints(output_dir)
    if choice.lower() == "yes":
        return checkpoints[-1] if checkpoints else None
    if choice.isdigit():
        wanted = output_dir / f"checkpoint-{int(choice)}"
        if wanted in checkpoints:
            return wanted
        have = ", ".join(path.name.split("-")[1] for path in checkpoints) or "none"
        raise WenzhenError(
            f"{wanted} is not a saved checkpoint (saved steps: {have}); pass one of them, `yes` for the newest, "
            "or leave AUTO_RESUME out to start over"
        )
    path = Path(choice)
    if (path / STATE_FILE).is_file():
        return path
    raise WenzhenError(f"AUTO_RESUME {choice!r} is neither yes/no, a step number nor a checkpoint folder")


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder` to disk before it is published by a rename."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def publish(staged: Path, target: Path) -> None:
    """Rename a complete staged folder onto `target` (replacing an older folder of the same step)."""
    fsync_tree(staged)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, target)


def rotate_checkpoints(output_dir: Path, keep: int | None, best: str | None = None) -> None:
    """Delete the oldest checkpoints beyond `keep` (never the newest or the best one), each atomically.

    A checkpoint is first renamed into `.staging/` and only then deleted, so a kill during the deletion leaves
    staging debris (cleared at the next start) instead of a half-deleted `checkpoint-N` that a resume would pick.
    """
    if keep is None or keep <= 0:
        return
    checkpoints = complete_checkpoints(output_dir)
    protected = {checkpoints[-1].resolve()} if checkpoints else set()
    if best is not None:
        protected.add(Path(best).resolve())
    excess = len(checkpoints) - max(keep, len(protected))
    doomed = [path for path in checkpoints if path.resolve() not in protected][: max(excess, 0)]
    trash = output_dir / STAGING
    for checkpoint in doomed:
        trash.mkdir(exist_ok=True)
        moved = trash / f"deleting-{checkpoint.name}"
        shutil.rmtree(moved, ignore_errors=True)
        os.replace(checkpoint, moved)
        shutil.rmtree(moved, ignore_errors=True)


def finished_step(checkpoint: Path, max_steps: int, num_train_epochs: float) -> int | None:
    """The step at which `checkpoint`'s run ended, when resuming it with these limits would train no further."""
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    step = int(state.get("global_step", 0))
    if max_steps > 0:
        return step if step >= max_steps else None
    planned = int(state.get("max_steps", 0))
    if num_train_epochs > float(state.get("num_train_epochs", 0)):
        return None
    return step if planned and step >= planned else None
