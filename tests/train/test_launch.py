"""`wenzhen train` starts one worker per GPU when no launcher was typed, and leaves launched runs alone."""

import json
from pathlib import Path

import pytest

from wenzhen.errors import WenzhenError
from wenzhen.train.launch import decide_launch, launch_workers, select_gpus

OFFICIAL = Path(__file__).parent / "official_configs"


def test_every_visible_gpu_gets_a_worker():
    decision = decide_launch(None, False, {}, 4)
    assert (decision.workers, decision.visible_devices) == (4, "0,1,2,3")


def test_cuda_visible_devices_and_gpus_restrict_the_workers():
    assert decide_launch(None, False, {"CUDA_VISIBLE_DEVICES": "3,5"}, 2).visible_devices == "3,5"
    assert decide_launch("1", False, {"CUDA_VISIBLE_DEVICES": "3,5"}, 2).visible_devices == "3"
    assert decide_launch("0,2", False, {}, 4).visible_devices == "0,2"
    # One GPU of several still runs as a worker that sees only it (never the Trainer's DataParallel).
    assert decide_launch("1", False, {}, 2).workers == 1


@pytest.mark.parametrize(
    "environ",
    [
        {"LOCAL_RANK": "0", "WORLD_SIZE": "2"},
        {"TORCHELASTIC_RUN_ID": "x"},
        {"ACCELERATE_MIXED_PRECISION": "bf16"},
    ],
)
def test_a_run_under_torchrun_or_accelerate_is_left_alone(environ):
    assert decide_launch(None, False, environ, 8).workers == 0


def test_one_gpu_or_the_cpu_trains_in_this_process():
    assert decide_launch(None, False, {}, 1).workers == 0
    assert decide_launch(None, True, {}, 8).workers == 0
    assert decide_launch(None, False, {}, 0).workers == 0


@pytest.mark.parametrize("text", ["3", "0", "x", "0,0", "0,7"])
def test_a_bad_gpu_selection_names_the_fix(text):
    with pytest.raises(WenzhenError, match="--gpus"):
        select_gpus(text, 2)


def test_gpus_without_gpus_is_refused():
    with pytest.raises(WenzhenError, match="--gpus needs GPUs"):
        decide_launch("2", True, {}, 0)


@pytest.mark.slow
def test_two_workers_through_the_elastic_launcher_train_one_run_over_gloo(
    data_dir: Path, tiny_llama_dir: Path, tmp_path: Path
):
    out = tmp_path / "run"
    argv = [
        "train",
        str(data_dir),
        str(tiny_llama_dir),
        str(OFFICIAL / "lora.yaml"),
        "--cpu",
        "--output-dir",
        str(out),
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--set",
        "max_input_length=48",
        "--set",
        "max_output_length=48",
        "--set",
        "training_args.save_strategy=no",
        "--set",
        "training_args.eval_strategy=no",
    ]
    launch_workers(2, argv)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert (out / "final" / "adapter_config.json").is_file()
