"""Fixed-length packed rows: every sample placed once, no cross-sample attention, same loss as one by one."""

import torch
from transformers import default_data_collator

from wenzhen.train.encoding import IGNORE, EncodedSample
from wenzhen.train.loss import sparse_logits_loss
from wenzhen.train.packing import pack_rows


def samples(count: int = 12) -> list[EncodedSample]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for index in range(count):
        length = 5 + index * 3 % 17
        ids = torch.randint(3, 200, (length,), generator=generator).tolist()
        labels = [IGNORE] * (length // 2) + ids[length // 2 :]
        out.append(EncodedSample(input_ids=ids, labels=labels))
    return out


def test_every_sample_lands_once_in_rows_of_the_given_length():
    data = samples()
    rows = pack_rows(data, row_tokens=40, seed=1, pad_id=0)
    assert all(len(row["input_ids"]) == 40 for row in rows)
    total = sum(len(s.input_ids) for s in data)
    real = sum(sum(1 for t in row["input_ids"] if t != 0) for row in rows)
    assert real == total
    assert (
        len(rows) == -(-total // 40) or len(rows) == -(-total // 40) + 1
    )  # best-fit wastes at most a row here


def test_packed_rows_give_the_mean_loss_of_the_samples_run_alone(tiny_glm):
    model = tiny_glm.eval()
    model.config.use_cache = False  # as in training: a KV cache switches packed-sequence masking off
    data = samples(6)
    rows = pack_rows(data, row_tokens=48, seed=0, pad_id=0)
    batch = default_data_collator(rows)
    packed = sparse_logits_loss(model, batch)
    total, count = 0.0, 0
    for sample in data:
        ids = torch.tensor([sample.input_ids])
        labels = torch.tensor([[IGNORE, *sample.labels[1:]]])
        n = int((labels[:, 1:] != IGNORE).sum())
        total += model(input_ids=ids, labels=labels).loss.item() * n
        count += n
    assert abs(packed.item() - total / count) < 1e-5


def test_train_with_fixed_rows_and_sparse_logits_through_the_cli(data_dir, chatglm3_dir, tmp_path):
    import json

    from wenzhen.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(data_dir),
            str(chatglm3_dir / "tiny-chatglm3"),
            "configs/lora.yaml",
            "--output-dir",
            str(out),
            "--max-steps",
            "3",
            "--cpu",
            "--set",
            "performance.row_tokens=1100",
            "--set",
            "training_args.per_device_train_batch_size=1",
            "--set",
            "training_args.gradient_accumulation_steps=1",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["tokens"] > 0
    assert (out / "final" / "adapter_config.json").is_file()
