"""DPO LoRA throughput against the project's SFT LoRA throughput, on one GPU, in one run (issue #17's target).

ChatGLM3-6B shapes with random weights (as benchmarks/train_throughput.py), real Toyhom consultations encoded by
the project (`wenzhen data prepare` output). Both runs go through `wenzhen.train.train` with the same LoRA
(r=8, alpha 32 on q/k/v), the same length budget (256 + 512) and bf16:

* `sft`: the shipped recipe's path: packed batches of 4 conversations, no checkpointing;
* `dpo`: `method: dpo` on pairs built from the same consultations (chosen = the doctor's answer, rejected =
  another consultation's answer: the contents do not matter for speed, the lengths are real), 4 pairs a step,
  reference = the adapter disabled.

After `--warmup` steps, `--steps` steps are timed. SFT tokens/s counts non-padding input tokens; DPO tokens/s counts
prompt + chosen + rejected tokens (each prompt once) from TRL's non-padding count (which sees the prompt twice,
once per answer) scaled by the data set's exact ratio of the two; the raw sequence rate is reported too. Peak GPU
memory (allocated) of each run. Writes benchmarks/results/dpo_throughput.{json,md}.

    python benchmarks/dpo_throughput.py --config gpu/chatglm3-6b-config.json --tokenizer gpu/tokenizer.model \
        --data gpu/toyhom.jsonl
"""

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import GlmForCausalLM, TrainerCallback

from wenzhen.config import validate_config
from wenzhen.errors import WenzhenError
from wenzhen.io import read_jsonl, write_jsonl
from wenzhen.models.chatglm3 import glm_config_from_official
from wenzhen.models.chatglm3_tokenizer import build_chatglm3_tokenizer
from wenzhen.train.config import TrainConfig
from wenzhen.train.trainer import train

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


class StepTimer(TrainerCallback):
    """Wall time and TRL/transformers' non-padding token count between the end of warm-up and the last step."""

    def __init__(self, warmup: int, steps: int, device: str) -> None:
        self.warmup, self.last, self.device = warmup, warmup + steps, device
        self.marks: dict[int, tuple[float, int]] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step in (self.warmup, self.last):
            if self.device == "cuda":
                torch.cuda.synchronize()
            self.marks[state.global_step] = (time.perf_counter(), int(state.num_input_tokens_seen))

    def rate(self) -> tuple[float, float]:
        """(tokens per second, seconds per step) over the timed steps."""
        (t0, n0), (t1, n1) = self.marks[self.warmup], self.marks[self.last]
        return (n1 - n0) / (t1 - t0), (t1 - t0) / (self.last - self.warmup)


def build_data(conversations: list[dict], folder: Path, seed: int) -> None:
    """SFT conversations and pairs (chosen: the conversation's answer; rejected: another conversation's)."""
    folder.mkdir(parents=True, exist_ok=True)
    single = [row for row in conversations if row["conversations"][-1]["role"] == "assistant"]
    answers = [row["conversations"][-1]["content"] for row in single]
    shuffled = answers[:]
    random.Random(seed).shuffle(shuffled)
    pairs = [
        {"conversations": row["conversations"][:-1], "chosen": chosen, "rejected": rejected}
        for row, chosen, rejected in zip(single, answers, shuffled, strict=True)
        if chosen != rejected
    ]
    write_jsonl(folder / "sft.jsonl", single)
    write_jsonl(folder / "pairs.jsonl", pairs)


def run(kind: str, model_dir: Path, data: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One timed training run through `wenzhen.train.train`."""
    config: dict[str, Any] = {
        "data_config": {"train_file": "sft.jsonl" if kind == "sft" else "pairs.jsonl", "val_file": None},
        "max_input_length": 256,
        "max_output_length": 512,
        "training_args": {
            "output_dir": str(work / kind),
            "max_steps": args.warmup + args.steps,
            "learning_rate": 5e-5,
            "per_device_train_batch_size": args.batch,
            "save_strategy": "no",
            "logging_steps": 1000,
            "bf16": args.device == "cuda",
            "use_cpu": args.device == "cpu",
        },
        "peft_config": {"peft_type": "LORA", "r": 8, "lora_alpha": 32, "lora_dropout": 0.1},
    }
    if kind == "dpo":
        config["method"] = "dpo"
        config["preference"] = {"max_eval_pairs": 1}
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer(args.warmup, args.steps, args.device)
    result = train(data, model_dir, validate_config(TrainConfig, config), callbacks=[timer])
    rate, step_seconds = timer.rate()
    row = {
        "sequence_tokens_per_second": round(rate, 1),
        "seconds_per_step": round(step_seconds, 3),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if args.device == "cuda"
        else None,
    }
    if kind == "dpo":
        encoded = json.loads((work / kind / "preference.json").read_text())["train"]
        row["pairs"] = encoded["kept"]
        row["pair_tokens"] = encoded["tokens"]
    row["summary_tokens_per_second"] = result.summary.get(
        "tokens_per_second", result.summary.get("pair_tokens_per_second")
    )
    return row


def prompt_share(data: Path, model_dir: Path) -> float:
    """Σ(prompt + chosen + rejected) / Σ(2 prompt + chosen + rejected) over the encoded pairs, exactly."""
    from wenzhen.models.chatglm3 import ChatGLM3Family
    from wenzhen.models.loading import load_tokenizer
    from wenzhen.train.preference import encode_answer, read_examples

    tokenizer = load_tokenizer(model_dir)
    family = ChatGLM3Family()
    examples, _ = read_examples(read_jsonl(data / "pairs.jsonl"), "pairs.jsonl")
    once = twice = 0
    for example in examples:
        try:
            prompt, chosen = encode_answer(family, tokenizer, example.prompt, example.chosen, 256, 512)
            rejected = encode_answer(family, tokenizer, example.prompt, str(example.rejected), 256, 512)[1]
        except WenzhenError:  # skipped by training as well (prompt over budget)
            continue
        once += len(prompt) + len(chosen) + len(rejected)
        twice += 2 * len(prompt) + len(chosen) + len(rejected)
    return once / twice


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, required=True, help="official chatglm3 config.json (6B shapes)"
    )
    parser.add_argument("--tokenizer", type=Path, required=True, help="ChatGLM3 tokenizer.model")
    parser.add_argument("--data", type=Path, required=True, help="JSONL conversations (wenzhen data prepare)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dpo-throughput"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4, help="conversations (SFT) or pairs (DPO) per step")
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke test at tiny size")
    parser.add_argument("--out", type=Path, default=RESULTS / "dpo_throughput")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.work / "model"
    if not (model_dir / "config.json").is_file():
        torch.manual_seed(0)
        config = glm_config_from_official(json.loads(args.config.read_text()))
        with torch.device(args.device):
            model = GlmForCausalLM(config).to(torch.bfloat16 if args.device == "cuda" else torch.float32)
        model.save_pretrained(model_dir)
        build_chatglm3_tokenizer(args.tokenizer).save_pretrained(model_dir)
        del model
    data = args.work / "data"
    build_data(read_jsonl(args.data), data, seed=0)

    report: dict[str, Any] = {
        "card": torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (smoke test, tiny model)",
        "torch": torch.__version__,
        "batch": args.batch,
        "timed_steps": args.steps,
        "runs": {},
    }
    for kind in ("sft", "dpo"):
        report["runs"][kind] = run(kind, model_dir, data, args.work, args)
        print(kind, report["runs"][kind], file=sys.stderr, flush=True)
    share = prompt_share(data, model_dir)
    dpo = report["runs"]["dpo"]
    dpo["prompt_once_share"] = round(share, 4)
    dpo["pair_tokens_per_second"] = round(dpo["sequence_tokens_per_second"] * share, 1)
    sft_rate = report["runs"]["sft"]["sequence_tokens_per_second"]
    report["dpo_over_sft"] = round(dpo["pair_tokens_per_second"] / sft_rate, 3) if sft_rate else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# DPO vs SFT LoRA throughput ({report['card']}, torch {report['torch']})",
        "",
        "| run | tokens/s | s/step | peak GPU GiB |",
        "|---|---|---|---|",
        f"| SFT LoRA, {args.batch} conversations packed | {sft_rate:,.0f} | "
        f"{report['runs']['sft']['seconds_per_step']} | {report['runs']['sft']['peak_gpu_gib']} |",
        f"| DPO LoRA, {args.batch} pairs (prompt+chosen+rejected) | {dpo['pair_tokens_per_second']:,.0f} | "
        f"{dpo['seconds_per_step']} | {dpo['peak_gpu_gib']} |",
        "",
        f"DPO / SFT: {report['dpo_over_sft']} (target >= 0.5). DPO sequence tokens (prompt counted per answer): "
        f"{dpo['sequence_tokens_per_second']:,.0f}/s.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
