"""Broken weight files and remote code: one sentence naming the file and the fix, from `wenzhen env` and loaders."""

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wenzhen.cli import main
from wenzhen.errors import WenzhenError
from wenzhen.models import load_model
from wenzhen.models.weights import verify_weight_file


@pytest.fixture
def safetensors_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(64, 32), "b": torch.ones(7, dtype=torch.bfloat16)}, str(path))
    return path


def test_a_whole_safetensors_file_passes(safetensors_file: Path) -> None:
    assert verify_weight_file(safetensors_file) is None


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda data: data[:-1], "truncated"),
        (lambda data: data[: len(data) * 9 // 10], "truncated"),
        (lambda data: data + b"\0", "longer than its header says"),
        (lambda data: data[:5], "shorter than a safetensors header"),
        (lambda data: b"\xff" * 8 + data[8:], "header claims"),
        (lambda data: data[:8] + b"#" + data[9:], "not valid JSON"),
        (lambda data: b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n", "git lfs pull"),
    ],
)
def test_damaged_safetensors_files_are_named(safetensors_file: Path, damage, words: str) -> None:
    safetensors_file.write_bytes(damage(safetensors_file.read_bytes()))
    problem = verify_weight_file(safetensors_file)
    assert problem is not None and words in problem and str(safetensors_file) in problem


def test_offsets_that_do_not_fit_the_dtype_are_named(safetensors_file: Path) -> None:
    data = safetensors_file.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + length].replace(b'"shape":[64,32]', b'"shape":[64,31]')
    assert header != data[8 : 8 + length]
    safetensors_file.write_bytes(data[:8] + header + data[8 + length :])
    assert "tensor 'a'" in (verify_weight_file(safetensors_file) or "")


def test_torch_zip_checkpoints_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(1000)}, path)
    assert zipfile.is_zipfile(path) and verify_weight_file(path) is None
    path.write_bytes(path.read_bytes()[:-200])
    assert "truncated or corrupt" in (verify_weight_file(path) or "")


@pytest.fixture(scope="module")
def native_fp32(chatglm3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ChatGLM3 converted to a native float32 safetensors directory."""
    out = tmp_path_factory.mktemp("native") / "tiny-native"
    assert main(["convert", str(chatglm3_dir / "tiny-chatglm3"), str(out), "--dtype", "fp32"]) == 0
    return out


def test_env_and_loader_name_a_slightly_truncated_fp32_file(
    native_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: `wenzhen env` called 5% missing a complete download (10% tolerance, fp16 assumed for fp32 files)
    # and loading it ended in a raw SafetensorError traceback.
    model = tmp_path / "m"
    shutil.copytree(native_fp32, model)
    weights = sorted(model.glob("*.safetensors"))[0]
    weights.write_bytes(weights.read_bytes()[: int(weights.stat().st_size * 0.95)])
    assert main(["env", str(model)]) == 1
    out = capsys.readouterr().out
    assert weights.name in out and "truncated" in out and "download complete" not in out
    with pytest.raises(WenzhenError, match="truncated"):
        load_model(model, device="cpu")


def test_env_reports_a_whole_native_directory_complete(
    native_fp32: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["env", str(native_fp32), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["model"]
    assert not report["problems"] and all(shard["complete"] for shard in report["shards"])


def test_a_native_lfs_pointer_is_named(native_fp32: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(native_fp32, model)
    weights = sorted(model.glob("*.safetensors"))[0]
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(WenzhenError, match="git lfs pull"):
        load_model(model, device="cpu")


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_broken_adapter_weights_are_named(chatglm3_dir: Path, tmp_path: Path, damage: str) -> None:
    # Before: a truncated adapter ended in a SafetensorError traceback, a missing one in peft's own error.
    adapter = tmp_path / "adapter"
    shutil.copytree(chatglm3_dir / "tiny-chatglm3-lora-adapter", adapter)
    weights = adapter / "adapter_model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        weights.unlink()
    with pytest.raises(WenzhenError, match="adapter_model") as raised:
        load_model(chatglm3_dir / "tiny-chatglm3", adapter=adapter, device="cpu")
    assert ("truncated" if damage == "truncate" else "no adapter_model.safetensors") in str(raised.value)


def _custom_code_model(folder: Path, marker: Path) -> Path:
    folder.mkdir()
    config = {
        "model_type": "wenzhen_custom",
        "auto_map": {
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomModel",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\n"
    code += "class CustomConfig(PretrainedConfig):\n    model_type = 'wenzhen_custom'\n"
    (folder / "configuration_custom.py").write_text(code)
    (folder / "modeling_custom.py").write_text(code)
    save_file({"w": torch.zeros(4)}, str(folder / "model.safetensors"))
    return folder


def test_remote_code_is_refused_and_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Before: transformers asked at a terminal whether to run the folder's Python (and ran it on "y"); without a
    # terminal the user got two tracebacks.
    marker = tmp_path / "code-ran"
    model = _custom_code_model(tmp_path / "custom", marker)
    with pytest.raises(WenzhenError, match=r"configuration_custom\.py, modeling_custom\.py") as raised:
        load_model(model, device="cpu")
    assert "never runs" in str(raised.value)
    assert main(["env", str(model)]) == 2
    assert "never runs" in capsys.readouterr().err
    assert not marker.exists()
