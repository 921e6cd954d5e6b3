"""SIGKILL and resume: the same loss trajectory and the same final adapter as a run never interrupted."""

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from wenzhen.errors import WenzhenError
from wenzhen.train.callbacks import read_metrics
from wenzhen.train.checkpoints import STAGING, complete_checkpoints, resolve_resume, rotate_checkpoints
from wenzhen.train.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from interrupted_run import resume_config

DRIVER = Path(__file__).with_name("interrupted_run.py")


def run(data_dir: Path, model_dir: Path, out: Path, mode: str, kill_at: int, resume: str | None = None):
    command = [sys.executable, str(DRIVER), str(data_dir), str(model_dir), str(out), mode, str(kill_at)]
    return subprocess.run(
        [*command, *([resume] if resume else [])], capture_output=True, text=True, timeout=600
    )


def losses(out: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_metrics(out / "metrics.jsonl") if "loss" in row}


def max_weight_diff(first: Path, second: Path) -> float:
    a, b = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def test_sigkill_while_saving_and_after_saving_then_resume_matches_an_uninterrupted_run(
    data_dir: Path, tiny_llama_dir: Path, tmp_path: Path
):
    reference = train(data_dir, tiny_llama_dir, resume_config(str(tmp_path / "uninterrupted")))
    out = tmp_path / "run"

    # 1. Killed while writing checkpoint-6: only checkpoint-3 is complete, the half-written one sits in staging.
    killed = run(data_dir, tiny_llama_dir, out, "during-save", 6)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / STAGING / "checkpoint-6").is_dir() and not (out / "checkpoint-6").exists()
    assert [path.name for path in complete_checkpoints(out)] == ["checkpoint-3"]

    # 2. Resumed from checkpoint-3 (`yes` = newest complete), killed right after checkpoint-6 is complete.
    killed = run(data_dir, tiny_llama_dir, out, "after-save", 6, "yes")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [path.name for path in complete_checkpoints(out)] == ["checkpoint-3", "checkpoint-6"]
    assert not (out / "final").exists()

    # 3. Resumed from checkpoint-6 by number, runs to the end.
    finished = run(data_dir, tiny_llama_dir, out, "after-save", 99, "6")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert not (out / STAGING).exists()
    expected, got = losses(reference.output_dir), losses(out)
    assert sorted(got) == sorted(expected) == list(range(1, 9))
    loss_diff = max(abs(expected[step] - got[step]) for step in expected)
    weight_diff = max_weight_diff(reference.final_dir, out / "final")
    print(f"resume: max loss diff {loss_diff:.3g}, max adapter weight diff {weight_diff:.3g}")
    assert loss_diff <= 1e-6
    assert weight_diff <= 1e-6


def test_auto_resume_argument(tmp_path: Path):
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-9").mkdir()  # no trainer_state.json: not a checkpoint
    assert resolve_resume(tmp_path, "yes") == tmp_path / "checkpoint-6"
    assert resolve_resume(tmp_path, "3") == tmp_path / "checkpoint-3"
    assert resolve_resume(tmp_path, None) is None and resolve_resume(tmp_path, "no") is None
    assert resolve_resume(tmp_path / "empty", "yes") is None
    with pytest.raises(WenzhenError, match="saved steps: 3, 6"):
        resolve_resume(tmp_path, "9")
    with pytest.raises(WenzhenError, match="neither yes/no"):
        resolve_resume(tmp_path, "maybe")


def _fake_checkpoints(run: Path, steps: list[int]) -> None:
    for step in steps:
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        for name in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json"):
            (folder / name).write_text(name)


def test_a_kill_during_checkpoint_rotation_leaves_no_half_deleted_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: transformers' rotation deleted checkpoint-N in place, so a kill midway left a folder with its
    # trainer_state.json but without its weights, which `AUTO_RESUME N` (or `yes`, had it been the newest) took.
    _fake_checkpoints(tmp_path, [1, 2, 3, 4])
    real_rmtree = shutil.rmtree

    def killed_midway(path: Any, ignore_errors: bool = False) -> None:
        weights = Path(path) / "adapter_model.safetensors"
        if weights.exists():
            weights.unlink()
            raise KeyboardInterrupt  # the process dies after deleting one file
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        rotate_checkpoints(tmp_path, keep=2)
    monkeypatch.undo()
    for checkpoint in complete_checkpoints(tmp_path):
        assert (checkpoint / "adapter_model.safetensors").exists(), f"{checkpoint.name} is half deleted"
    # The next rotation finishes the job; the debris lies in staging, which every run start clears.
    rotate_checkpoints(tmp_path, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-4"]
    assert not any(p.name.startswith("checkpoint-") for p in (tmp_path / STAGING).iterdir())


def test_rotation_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    _fake_checkpoints(tmp_path, [1, 2, 3, 4, 5])
    rotate_checkpoints(tmp_path, keep=2, best=str(tmp_path / "checkpoint-1"))
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-5"]
    rotate_checkpoints(tmp_path, keep=None)
    assert len(complete_checkpoints(tmp_path)) == 2


def test_resuming_a_finished_run_leaves_it_alone_and_a_larger_max_steps_continues(
    data_dir: Path, tiny_llama_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: AUTO_RESUME yes on a finished run trained one step past max_steps and replaced final/.
    out = tmp_path / "run"
    config = resume_config(str(out))
    config.training_args.max_steps = 3
    train(data_dir, tiny_llama_dir, config)
    final = out / "final" / "adapter_model.safetensors"
    before = (final.read_bytes(), final.stat().st_mtime_ns)
    result = train(data_dir, tiny_llama_dir, config, "yes")
    assert "already finished at step 3" in caplog.text
    assert (final.read_bytes(), final.stat().st_mtime_ns) == before
    assert result.summary["steps"] == 3 and max(losses(out)) == 3
    config.training_args.max_steps = 5
    result = train(data_dir, tiny_llama_dir, config, "yes")
    assert result.summary["steps"] == 5 and max(losses(out)) == 5
    assert final.read_bytes() != before[0]
