"""The tiny official-layout ChatGLM3 runs on native GlmForCausalLM and matches the official modelling code."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from wenzhen.cli import main
from wenzhen.errors import WenzhenError
from wenzhen.models import load_model
from wenzhen.models.checkpoint import iter_shard

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference(chatglm3_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(chatglm3_dir / "golden/tiny-chatglm3-reference.safetensors"))


def assert_matches_reference(model, reference, prefix: str = "") -> None:
    """Stored logit slices within 1e-4, full-vocab argmax equal everywhere, logsumexp equal."""
    for name in ("random", "prompt"):
        with torch.no_grad():
            logits = model(reference[f"{name}_input_ids"]).logits.float()
        key = f"{prefix}{name}_logits"
        assert (logits[..., :4096] - reference[f"{key}_first4096"]).abs().max() <= TOLERANCE
        assert (logits[..., 64789:64798] - reference[f"{key}_special"]).abs().max() <= TOLERANCE
        assert torch.equal(logits.argmax(-1), reference[f"{key}_argmax"])
        assert (torch.logsumexp(logits, -1) - reference[f"{key}_logsumexp"]).abs().max() <= TOLERANCE


def assert_greedy_matches(model, reference) -> None:
    prompt = reference["prompt_input_ids"]
    out = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False, eos_token_id=None
    )
    assert torch.equal(out, reference["prompt_greedy_24"])


def test_official_layout_matches_official_code(chatglm3_dir, reference):
    loaded = load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu")
    assert type(loaded.model).__name__ == "GlmForCausalLM"
    assert loaded.family.name == "chatglm3"
    assert_matches_reference(loaded.model, reference)
    assert_greedy_matches(loaded.model, reference)


def test_convert_then_plain_transformers_matches(chatglm3_dir, reference, tmp_path):
    out = tmp_path / "converted"
    assert main(["convert", str(chatglm3_dir / "tiny-chatglm3"), str(out), "--dtype", "fp32"]) == 0
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert_matches_reference(plain, reference)
    assert_greedy_matches(plain, reference)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 64795, 64797]
    assert load_model(out, dtype="fp32", device="cpu").family.name == "chatglm3"


def test_convert_keeps_the_official_fp16_weights_exact(chatglm3_dir, reference, tmp_path):
    out = tmp_path / "kept"
    assert main(["convert", str(chatglm3_dir / "tiny-chatglm3"), str(out)]) == 0
    plain = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert plain.dtype == torch.float16
    assert_matches_reference(plain.float(), reference)


def test_convert_to_another_dtype_says_it_rounds(chatglm3_dir, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        main(["convert", str(chatglm3_dir / "tiny-chatglm3"), str(tmp_path / "bf16"), "--dtype", "bfloat16"])
    assert "--dtype bf16 rounds the fp16 weights" in caplog.text
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


def test_safetensors_sharded_official_copy(chatglm3_dir, reference, tmp_path):
    source = chatglm3_dir / "tiny-chatglm3"
    copy = tmp_path / "st"
    copy.mkdir()
    index = json.loads((source / "pytorch_model.bin.index.json").read_text())
    renamed = {}
    for number, shard in enumerate(sorted(set(index["weight_map"].values())), start=1):
        name = f"model-{number:05d}-of-00002.safetensors"
        save_file({k: v.contiguous() for k, v in iter_shard(source / shard)}, str(copy / name))
        renamed[shard] = name
    index["weight_map"] = {k: renamed[v] for k, v in index["weight_map"].items()}
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(source / name, copy / name)
    assert_matches_reference(load_model(copy, dtype="fp32", device="cpu").model, reference)


def test_official_lora_adapter_with_base_override(chatglm3_dir, reference, tmp_path):
    converted = tmp_path / "converted"
    main(["convert", str(chatglm3_dir / "tiny-chatglm3"), str(converted), "--dtype", "fp32"])
    adapter = chatglm3_dir / "tiny-chatglm3-lora-adapter"
    with pytest.raises(WenzhenError, match="--base"):
        load_model(adapter, dtype="fp32", device="cpu")
    loaded = load_model(adapter, base=converted, dtype="fp32", device="cpu")
    assert_matches_reference(loaded.model, reference, prefix="adapter_")
    on_official = load_model(chatglm3_dir / "tiny-chatglm3", adapter=adapter, dtype="fp32", device="cpu")
    assert_matches_reference(on_official.model, reference, prefix="adapter_")


def _copy_model(chatglm3_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(chatglm3_dir / "tiny-chatglm3", target)
    for file in target.iterdir():
        file.chmod(0o644)
    return target


def test_missing_shard_is_named(chatglm3_dir, tmp_path):
    model = _copy_model(chatglm3_dir, tmp_path)
    (model / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(WenzhenError, match=r"pytorch_model-00002-of-00002\.bin"):
        load_model(model, device="cpu")


def test_lfs_pointer_is_explained(chatglm3_dir, tmp_path):
    model = _copy_model(chatglm3_dir, tmp_path)
    (model / "pytorch_model-00001-of-00002.bin").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"
    )
    with pytest.raises(WenzhenError, match="git lfs pull"):
        load_model(model, device="cpu")


def test_corrupt_shard_is_named(chatglm3_dir, tmp_path):
    model = _copy_model(chatglm3_dir, tmp_path)
    shard = model / "pytorch_model-00001-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(WenzhenError, match=r"pytorch_model-00001-of-00002\.bin is truncated or corrupt"):
        load_model(model, device="cpu")


def test_unsupported_model_type(chatglm3_dir, tmp_path):
    model = _copy_model(chatglm3_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["rmsnorm"] = False  # ChatGLM2-style LayerNorm variants are not ChatGLM3
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(WenzhenError, match="rmsnorm"):
        load_model(model, device="cpu")


def test_tokenizer_that_does_not_match_vocab(chatglm3_dir, tmp_path):
    model = _copy_model(chatglm3_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["padded_vocab_size"] = 32000
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(WenzhenError, match="does not match"):
        load_model(model, device="cpu")


def test_env_checks_download_without_loading(chatglm3_dir, tmp_path, capsys):
    assert main(["env", str(chatglm3_dir / "tiny-chatglm3"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["family"] == "chatglm3" and not report["model"]["problems"]
    model = _copy_model(chatglm3_dir, tmp_path)
    (model / "pytorch_model-00002-of-00002.bin").unlink()
    assert main(["env", str(model)]) == 1
    assert "missing" in capsys.readouterr().out
