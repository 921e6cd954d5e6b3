"""`wenzhen merge`: the merged directory reproduces base + adapter (official reference logits), in both layouts."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from wenzhen.cli import main
from wenzhen.errors import WenzhenError
from wenzhen.export.merge import merge
from wenzhen.models import load_model

TOLERANCE = 1e-4
STOP_IDS = [2, 64795, 64797]


@pytest.fixture(scope="module")
def reference(chatglm3_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(chatglm3_dir / "golden/tiny-chatglm3-reference.safetensors"))


@pytest.fixture(scope="module")
def tiny(chatglm3_dir: Path) -> Path:
    return chatglm3_dir / "tiny-chatglm3"


@pytest.fixture(scope="module")
def official_adapter(chatglm3_dir: Path) -> Path:
    return chatglm3_dir / "tiny-chatglm3-lora-adapter"


def max_reference_error(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> float:
    """Largest difference to the official code's adapter logits; argmax must agree over the full vocabulary."""
    worst = 0.0
    for name in ("random", "prompt"):
        with torch.no_grad():
            logits = model(reference[f"{name}_input_ids"]).logits.float()
        key = f"adapter_{name}_logits"
        assert torch.equal(logits.argmax(-1), reference[f"{key}_argmax"])
        worst = max(
            worst,
            float((logits[..., :4096] - reference[f"{key}_first4096"]).abs().max()),
            float((logits[..., 64789:64798] - reference[f"{key}_special"]).abs().max()),
            float((torch.logsumexp(logits, -1) - reference[f"{key}_logsumexp"]).abs().max()),
        )
    return worst


def training_run_with_eval(official_adapter: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The adapter inside a training run folder (run.json naming a base on another machine, summary.json) and an
    eval run folder with a report."""
    from wenzhen.evaluate.report import DataInfo, EvalReport, write_report
    from wenzhen.runinfo import RunInfo, write_run_info

    run = tmp_path / "run"
    shutil.copytree(official_adapter, run / "final")
    write_run_info(
        run,
        RunInfo(
            stage="train",
            base_model="/elsewhere/chatglm3-6b",
            config={"lr": 1e-4},
            extra={"data_dir": "/d/med"},
        ),
    )
    (run / "summary.json").write_text(json.dumps({"steps": 30, "final_loss": 1.25, "final_eval_loss": 1.5}))
    evaluation = tmp_path / "eval"
    data = DataInfo(path="/d/med/test.jsonl", sha256="0", n_available=10, n_evaluated=10, selection="all")
    report = EvalReport(
        kind="gen", label="merged", model="m", data=data, metrics={"rouge-l": 21.5}, metric_definitions={}
    )
    write_report(evaluation, report, "")
    return run / "final", evaluation


def test_official_adapter_merges_to_reference_logits_with_plain_transformers(
    tiny, official_adapter, reference, tmp_path, capsys
):
    out = tmp_path / "merged"
    adapter, evaluation = training_run_with_eval(official_adapter, tmp_path)
    args = ["merge", str(adapter), "--out-dir", str(out), "--base", str(tiny), "--dtype", "fp32"]
    assert main([*args, "--eval", str(evaluation)]) == 0
    assert "verified: max |logit diff|" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(model).__name__ == "GlmForCausalLM"
    assert max_reference_error(model, reference) <= TOLERANCE
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == STOP_IDS
    tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "孩子发烧怎么办"}]
    loaded = load_model(out, dtype="fp32", device="cpu")
    assert loaded.family.name == "chatglm3"
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)[
        "input_ids"
    ]
    assert list(templated) == loaded.family.encode_prompt(loaded.tokenizer, messages)
    card = (out / "README.md").read_text()
    assert str(adapter) in card and str(tiny) in card and "r=8, alpha=32" in card
    assert (
        "`/d/med`" in card and "final eval loss 1.5" in card and "| gen | merged | rouge-l | 21.5 |" in card
    )
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "merge" and run["extra"]["verification"]["max_abs_logit_diff"] <= TOLERANCE


def test_chatglm3_layout_round_trips(tiny, official_adapter, reference, tmp_path):
    out = tmp_path / "official"
    merge(official_adapter, out, base=tiny, dtype="fp32", export_format="chatglm3")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "chatglm" and config["multi_query_group_num"] == 2
    assert (out / "tokenizer.model").read_bytes() == (tiny / "tokenizer.model").read_bytes()
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert "transformer.encoder.layers.1.self_attention.query_key_value.weight" in names
    assert "transformer.rotary_pos_emb.inv_freq" in names
    assert not any("q_proj" in name for name in names)
    assert max_reference_error(load_model(out, dtype="fp32", device="cpu").model, reference) <= TOLERANCE


def test_own_native_adapter_matches_peft_merge_in_small_shards(tiny, tmp_path):
    """A wenzhen-style adapter (q/v/gate_up on the native model, rsLoRA) merged into a converted base, written in
    shards small enough that q, k and v of one layer land in different shards."""
    converted = tmp_path / "converted"
    assert main(["convert", str(tiny), str(converted), "--dtype", "fp32"]) == 0
    base = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["q_proj", "v_proj", "gate_up_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(base, config)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    ids = torch.tensor([[64790, 64792, 64795, 30910, 13, 34211, 64796]])
    with torch.no_grad():
        expected = peft_model.merge_and_unload()(ids).logits
    for layout in ("hf", "chatglm3"):
        out = tmp_path / layout
        # verify=False: the comparison with peft's own merge below is the stronger check here.
        report = merge(
            adapter,
            out,
            base=converted,
            dtype="fp32",
            export_format=layout,
            max_shard_bytes=200_000,
            verify=False,
        )
        assert report.shards > 3 and report.merged_weights == 6
        merged = load_model(out, dtype="fp32", device="cpu").model
        with torch.no_grad():
            assert (merged(ids).logits - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize(("layout", "embedding"), [("hf", "model.embed_tokens.weight"), ("chatglm3", None)])
def test_default_bf16_merge_is_verified(tiny, official_adapter, tmp_path, layout, embedding):
    report = merge(official_adapter, tmp_path / "bf16", base=tiny, export_format=layout)
    assert report.dtype == "bfloat16" and report.verification is not None
    assert report.verification["max_abs_logit_diff"] <= report.verification["tolerance"]
    embedding = embedding or "transformer.embedding.word_embeddings.weight"
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as handle:
        assert handle.get_tensor(embedding).dtype == torch.bfloat16
        if layout == "chatglm3":
            # Rounded to bf16 the 6B's frequencies fail the loader's check; they stay fp32.
            assert handle.get_tensor("transformer.rotary_pos_emb.inv_freq").dtype == torch.float32


def test_a_merge_that_loses_the_adapter_fails_verification_and_writes_nothing(
    tiny, official_adapter, tmp_path, capsys, monkeypatch
):
    """Were the updates scaled to nothing, the merged model would be the base: the check must refuse it."""
    monkeypatch.setattr("wenzhen.export.merge.lora_scaling", lambda *args: 0.0)
    out = tmp_path / "broken"
    assert main(["merge", str(official_adapter), "--out-dir", str(out), "--base", str(tiny)]) == 2
    assert "verification failed" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_base_recorded_on_another_machine_needs_base(official_adapter, tmp_path, capsys):
    assert main(["merge", str(official_adapter), "--out-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "/data/models/chatglm3-6b" in error and "--base" in error


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peft_type": "PREFIX_TUNING"}, "only LoRA"),
        ({"use_dora": True}, "DoRA"),
        (None, "no adapter_config.json"),
    ],
)
def test_bad_adapter_directory_is_explained(tiny, official_adapter, tmp_path, change, message):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    if change is not None:
        config = json.loads((official_adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps(config | change))
    with pytest.raises(WenzhenError, match=message):
        merge(adapter, tmp_path / "out", base=tiny)


def test_base_mismatch_is_explained(tiny, official_adapter, tmp_path):
    """A one-layer base lacks the weights the adapter changes in layer 1."""
    shallow = tmp_path / "shallow"
    main(["convert", str(tiny), str(shallow), "--dtype", "fp32"])
    config = json.loads((shallow / "config.json").read_text())
    (shallow / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 1}))
    state = load_file(str(shallow / "model.safetensors"))
    from safetensors.torch import save_file

    save_file({k: v for k, v in state.items() if ".layers.1." not in k}, str(shallow / "model.safetensors"))
    with pytest.raises(WenzhenError, match=r"does not have .*--base"):
        merge(official_adapter, tmp_path / "out", base=shallow)
    assert not (tmp_path / "out").exists()


def test_chatglm3_layout_needs_a_chatglm3_base(tmp_path):
    from wenzhen.export.formats import EXPORT_FORMATS, ExportContext
    from wenzhen.models.hf import HFChatFamily

    context = ExportContext(tmp_path, HFChatFamily(), torch.float32)
    with pytest.raises(WenzhenError, match="--format hf"):
        EXPORT_FORMATS.get("chatglm3").check(context)


def test_hf_family_adapter_with_embedding_lora_and_modules_to_save(chatglm3_dir, tmp_path):
    """A generic (non-ChatGLM3) chat model: LoRA on the embedding and on linear layers, a trained full copy of the
    final norm (modules_to_save); the merge equals peft's and passes its own verification."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base_dir = tmp_path / "llama"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=65024,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(base_dir)
    load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu").tokenizer.save_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "down_proj", "embed_tokens"],
        modules_to_save=["model.norm"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(base, lora)
    with torch.no_grad():
        peft_model.base_model.model.model.norm.modules_to_save["default"].weight.mul_(1.5)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    ids = torch.tensor([[64790, 64792, 64795, 30910, 13, 34211, 64796]])
    with torch.no_grad():
        expected = peft_model.merge_and_unload()(ids).logits
    report = merge(adapter, tmp_path / "merged", base=base_dir, dtype="fp32")
    assert load_model(tmp_path / "merged", dtype="fp32", device="cpu").family.name == "hf"
    assert report.merged_weights == 2 * 2 + 1 + 1 and report.verification is not None
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        assert (merged(ids).logits - expected).abs().max() <= TOLERANCE
