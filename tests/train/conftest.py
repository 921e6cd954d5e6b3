"""Fixtures for the training tests: tiny models of two architectures and a small consultation data set."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

QUESTIONS = [
    ("孩子发烧三十八度半怎么办", "先物理降温，多喝水；超过三十九度或精神差请就医。"),
    ("高血压能吃党参吗", "可以少量服用，注意监测血压，最好咨询医生。"),
    ("最近总是失眠", "建议规律作息，睡前少看手机，必要时到睡眠专科就诊。"),
    ("咳嗽有黄痰是什么原因", "多见于细菌感染，建议查血常规，必要时使用抗生素。"),
    ("胃痛饭后加重", "可能是胃溃疡或胃炎，建议做胃镜检查，少吃辛辣。"),
    ("头痛伴恶心呕吐", "需要警惕颅内问题，请尽快到急诊做头颅检查。"),
    ("皮肤瘙痒起红疹", "可能是过敏，避免接触过敏原，可口服抗组胺药。"),
    ("腰痛腿麻", "可能是腰椎间盘突出，建议做核磁共振检查。"),
    ("血糖偏高怎么控制", "控制饮食，规律运动，定期复查血糖和糖化血红蛋白。"),
    ("经常口腔溃疡", "注意休息，补充维生素，反复发作请到口腔科就诊。"),
    ("眼睛干涩发红", "减少用眼时间，可以使用人工泪液，持续不缓解看眼科。"),
    ("膝盖疼上下楼加重", "可能是骨关节炎，减少爬楼，必要时拍片检查。"),
    ("小孩拉肚子", "注意补液防止脱水，口服补液盐，便中带血要就医。"),
    ("心慌胸闷", "建议做心电图检查，排除心律失常和冠心病。"),
    ("过敏性鼻炎反复发作", "避免过敏原，可以使用鼻用激素，坚持规范治疗。"),
    ("孕妇感冒能吃药吗", "孕期用药需谨慎，多休息多喝水，请在医生指导下用药。"),
]


def conversations(count: int = 16, start: int = 0) -> list[dict]:
    """`count` single- and two-turn consultations in the official `{"conversations": [...]}` format."""
    rows = []
    for index in range(start, start + count):
        question, answer = QUESTIONS[index % len(QUESTIONS)]
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if index % 3 == 0:
            turns = [{"role": "system", "content": "你是一名耐心的医生。"}, *turns]
        if index % 4 == 1:
            turns += [
                {"role": "user", "content": "还需要注意什么"},
                {"role": "assistant", "content": "按时复诊。"},
            ]
        rows.append({"conversations": turns})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.json (16 conversations) and dev.json (4), JSON Lines as the official demo reads them."""
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "train.json", conversations(16))
    write_jsonl(folder / "dev.json", conversations(4, start=3))
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a locally trained byte-level BPE tokenizer and a ChatML chat template."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [text for question, answer in QUESTIONS for text in (question, answer)] + [
        "system user assistant"
    ]
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML
    )
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_glm():
    """A seeded two-layer GlmForCausalLM (vocabulary 300) for loss and packing checks."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(0)
    config = GlmConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        pad_token_id=0,
    )
    return GlmForCausalLM(config)
