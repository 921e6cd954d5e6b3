"""The GPU workflow script's time keeping: shares of the budget, a hung step ended at its timeout with its children,
the steady rate read back from a cut-short training log."""

import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from gpu_workflow import PLANNED_SECONDS, Budget, bar_rate, run_step, weight_loads


def test_a_step_may_use_what_earlier_steps_left_but_not_the_later_steps_share():
    budget = Budget(120, ["env", "data", "convert"])
    later = (
        120
        * (PLANNED_SECONDS["data"] + PLANNED_SECONDS["convert"])
        / sum(PLANNED_SECONDS[s] for s in ("env", "data", "convert"))
    )
    assert abs(budget.start("env") - (120 - later)) < 1
    budget.skip("data")  # data did not run: its share goes to the steps after it
    assert budget.start("convert") > 120 - later


def test_a_hung_step_and_its_children_end_at_the_timeout(tmp_path: Path):
    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    started = time.monotonic()
    row = run_step("hang", [sys.executable, "-c", child], tmp_path, timeout=3)
    assert time.monotonic() - started < 30
    assert row.returncode is None and row.note.startswith("timed out after 3 s")
    sleepers = [
        p for p in psutil.process_iter(["cmdline"]) if "time.sleep(60)" in " ".join(p.info["cmdline"] or [])
    ]
    assert not [p for p in sleepers if p.status() != psutil.STATUS_ZOMBIE]


def test_the_steady_rate_is_read_from_the_bar_only_past_the_warm_up(tmp_path: Path):
    log = tmp_path / "train.log"
    log.write_text(
        "train:  36%|###| 4/11 [03:26<03:17, 28.28s/step, tok/s=239, loss=11.8]\r"
        "train:  45%|###| 5/11 [03:26<01:50, 18.37s/step, tok/s=20,705, loss=11.7]\r"
        "train:  55%|###| 6/11 [03:27<01:01, 12.39s/step, tok/s=20,794, loss=11.7]\r"
    )
    assert bar_rate(log) == (20794.0, 6)
    log.write_text("train:  36%|###| 4/11 [03:26<03:17, 28.28s/step, tok/s=239, loss=11.8]\r")
    assert bar_rate(log) is None


def test_each_finished_weight_load_is_counted_once(tmp_path: Path):
    log = tmp_path / "merge.log"
    log.write_text(
        "Loading weights:   0%|  | 0/311 [00:00<?, ?it/s]\rLoading weights: 100%|##| 311/311 [00:04<00:00, 69.42it/s]\n"
        "merging\nLoading weights:  50%|#| 155/311 [00:30<00:30]\rLoading weights: 100%|##| 311/311 [01:02<00:00]\n"
    )
    assert weight_loads(log) == [4, 62]
