"""Real consultation questions from the bundled corpora in `../shared/data`, as the guard's background.

Two disjoint splits: `measure` (Toyhom's 内科 sample CSV, MedicalGPT's SFT sample, DISC-Med's samples) is only
ever used to report the fire rate on real questions; `train` (Toyhom's 内科.txt, HuatuoGPT's Med-dialog and
KUAKE-QIC, Zhongjing's consultations, Huatuo's llama_data, BianQue's example) is mostly-negative background
for the classifier. Texts present in `measure` are removed from `train`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

SPLITS = ("measure", "train")


def _toyhom_csv(data: Path) -> Iterator[str]:
    raw = (
        (data / "toyhom-chinese-medical-dialogue/样例_内科5000-6000.csv")
        .read_bytes()
        .decode("gb18030", "replace")
    )
    for row in csv.DictReader(io.StringIO(raw)):
        yield f"{row['title']}，{row['ask']}"


def _toyhom_txt(data: Path) -> Iterator[str]:
    raw = (data / "toyhom-chinese-medical-dialogue/内科.txt").read_bytes().decode("gb18030", "replace")
    blocks = [block.strip().splitlines() for block in raw.split("\n\n\n") if block.strip()]
    for lines in blocks:
        if lines:
            yield lines[0].replace(",", "，", 1)


def _medicalgpt(data: Path) -> Iterator[str]:
    for line in (data / "medicalgpt-medical-sample/medical_sft_1K_format.jsonl").open(encoding="utf-8"):
        turns = json.loads(line)["conversations"]
        yield next(t["value"] for t in turns if t["from"] == "human")


def _disc_med(data: Path) -> Iterator[str]:
    for item in json.loads((data / "disc-med-sft-sample/cmd_samples.json").read_text(encoding="utf-8")):
        yield item["question"]
    for line in (data / "disc-med-sft-sample/test_examples.jsonl").open(encoding="utf-8"):
        yield next(t["content"] for t in json.loads(line)["conversation"] if t["role"] == "user")


def _huatuo_eval(data: Path) -> Iterator[str]:
    for item in json.loads((data / "huatuogpt-eval/KUAKE-QIC_100.json").read_text(encoding="utf-8")):
        yield item["query"]
    for item in json.loads((data / "huatuogpt-eval/Med-dialog_100.json").read_text(encoding="utf-8")):
        yield item["medical_case"]


def _zhongjing(data: Path) -> Iterator[str]:
    for item in json.loads((data / "zhongjing-eval/CMtMedQA_test.json").read_text(encoding="utf-8")):
        if "history" in item:
            yield from (turn[0] for turn in item["history"][:1])


def _llama_data(data: Path) -> Iterator[str]:
    for line in (data / "huatuo-llama-med-chinese/llama_data.json").open(encoding="utf-8"):
        if line.strip():
            yield json.loads(line)["instruction"]


def _bianque(data: Path) -> Iterator[str]:
    with (data / "bianque-cmedialog-example/cMedialog_example.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            yield row["input"].split("\n")[0].removeprefix("病人：")


READERS = {
    "measure": (_toyhom_csv, _medicalgpt, _disc_med),
    "train": (_toyhom_txt, _huatuo_eval, _zhongjing, _llama_data, _bianque),
}


def consultation_questions(shared_dir: str | Path, split: str) -> list[str]:
    """The distinct non-empty questions of one split, in corpus order."""
    data = Path(shared_dir) / "data"
    texts = dict.fromkeys(t.strip() for reader in READERS[split] for t in reader(data) if t and t.strip())
    if split == "train":
        measured = set(consultation_questions(shared_dir, "measure"))
        texts = dict.fromkeys(t for t in texts if t not in measured)
    return list(texts)
