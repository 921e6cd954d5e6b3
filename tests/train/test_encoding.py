"""The SFT encoding: official ChatGLM3 ids and loss mask, eos kept on truncation, chat-template masking."""

import json
from pathlib import Path

import pytest

from wenzhen.errors import WenzhenError
from wenzhen.models import detect_family, load_tokenizer
from wenzhen.train.encoding import IGNORE, encode_conversation, encode_rows

CONVERSATION = [
    {"role": "system", "content": "你是一名医生。"},
    {"role": "user", "content": "头痛怎么办"},
    {"role": "assistant", "content": "多休息。"},
    {"role": "user", "content": "还要注意什么"},
    {"role": "assistant", "content": "按时复诊。"},
]


@pytest.fixture(scope="module")
def chatglm3(chatglm3_dir: Path):
    model_dir = chatglm3_dir / "tiny-chatglm3"
    return detect_family(model_dir), load_tokenizer(model_dir)


@pytest.fixture(scope="module")
def golden(chatglm3_dir: Path) -> list[dict]:
    lines = (chatglm3_dir / "golden" / "sft_examples.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def budget(example: dict) -> int:
    return example["max_input_length"] + example["max_output_length"] + 1


def test_official_truncation_reproduces_the_golden_file_id_for_id(chatglm3, golden):
    family, tokenizer = chatglm3
    for example in golden:
        samples, report = encode_rows([example], family, tokenizer, budget(example), "official")
        if all(label == IGNORE for label in example["labels"]):
            # The official demo trains on this sample with loss 0; wenzhen skips it and counts it.
            assert samples == [] and report.skipped_no_labels == 1
            continue
        assert samples[0].input_ids == example["input_ids"]
        assert samples[0].labels == example["labels"]


def test_keep_eos_differs_only_where_the_official_cut_drops_the_eos(chatglm3, golden):
    family, tokenizer = chatglm3
    eos = tokenizer.eos_token_id
    for example in golden:
        samples, _ = encode_rows([example], family, tokenizer, budget(example), "keep_eos")
        if not samples:
            continue
        sample = samples[0]
        assert len(sample.input_ids) == len(example["input_ids"])
        assert sample.input_ids[-1] == eos
        assert sample.input_ids[:-1] == example["input_ids"][:-1]
        assert sample.labels[:-1] == example["labels"][:-1]
        cut_inside_answer = example["labels"][-1] != IGNORE
        assert sample.labels[-1] == (eos if cut_inside_answer else IGNORE)


def test_answer_less_samples_are_skipped_and_counted(chatglm3):
    family, tokenizer = chatglm3
    rows = [
        {
            "conversations": [
                {"role": "user", "content": "头痛" * 50},
                {"role": "assistant", "content": "休息"},
            ]
        },
        {"conversations": [{"role": "user", "content": "只有问题"}]},
        {"conversations": CONVERSATION},
        "not an object",
    ]
    samples, report = encode_rows(rows, family, tokenizer, max_length=40)
    assert len(samples) == report.kept == 1
    assert report.skipped_no_labels == 1 and report.skipped_invalid == 2
    assert any("row 2" in problem and "no assistant" in problem for problem in report.problems)


def test_chatglm3_multi_turn_labels_each_answer_and_the_role_token_that_ends_it(chatglm3):
    family, tokenizer = chatglm3
    sample = encode_conversation(family, tokenizer, CONVERSATION)
    user, assistant = (tokenizer.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>"))
    labelled = [token for token in sample.labels if token != IGNORE]
    # Two answers; the first ends with <|user|>, the last with eos; the role token <|assistant|> is never a label.
    assert labelled.count(user) == 1 and labelled[-1] == tokenizer.eos_token_id
    assert assistant not in labelled
    assert tokenizer.decode([t for t in labelled if t not in (user, tokenizer.eos_token_id)]).replace(
        " ", ""
    ) == "\n多休息。\n按时复诊。".replace(" ", "")


def test_chat_template_masking_labels_answers_and_end_of_turn_only(tiny_llama_dir: Path):
    family, tokenizer = detect_family(tiny_llama_dir), load_tokenizer(tiny_llama_dir)
    sample = encode_conversation(family, tokenizer, CONVERSATION)
    text = tokenizer.decode([t for t in sample.labels if t != IGNORE])
    assert text == "多休息。<|im_end|>\n按时复诊。<|im_end|>\n"
    assert sample.input_ids == family.encode_prompt(tokenizer, CONVERSATION, add_generation_prompt=False)
    assert sample.input_ids[-2] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_truncated_chat_template_sample_ends_with_the_end_of_turn_token(tiny_llama_dir: Path):
    family, tokenizer = detect_family(tiny_llama_dir), load_tokenizer(tiny_llama_dir)
    full = encode_conversation(family, tokenizer, CONVERSATION)
    samples, report = encode_rows(
        [{"conversations": CONVERSATION}], family, tokenizer, len(full.input_ids) - 3
    )
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert report.truncated == 1
    assert samples[0].input_ids[-1] == im_end and samples[0].labels[-1] == im_end


def test_a_template_that_rewrites_history_is_refused(tiny_llama_dir: Path, tmp_path: Path):
    family, tokenizer = detect_family(tiny_llama_dir), load_tokenizer(tiny_llama_dir)
    # Like templates that drop earlier reasoning: the last message renders differently from earlier ones.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['content'] }}{% else %}{{ m['role'] }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>{% endif %}"
    )
    with pytest.raises(WenzhenError, match="prefix-stable"):
        encode_conversation(family, tokenizer, CONVERSATION)
