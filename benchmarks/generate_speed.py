"""Prefill latency and decode speed of ChatGLM3-6B (random weights, same shapes) on one GPU.

Variants, all greedy, same prompts, run in one process:
- `baseline`: plain `model.generate` with transformers' defaults (SDPA attention, dynamic cache);
- `eager`: the same with eager attention;
- `sdpa-no-cudnn`: SDPA with the cuDNN backend disabled (it re-plans at every new sequence length);
- `hf-static`: `model.generate(cache_implementation="static")`, transformers' own compiled static-cache decode;
- `wenzhen`: `ChatEngine.generate_token_ids`, the path chat/web/API use (`ContinuousBatcher`: slot KV cache,
  the step compiled into CUDA graphs per batch-size bucket, q/k/v fused into one projection);
- `wenzhen-unfused`: the same with the three projections left apart;
- `wenzhen-matmul`: `wenzhen` with decode attention through two matmuls (`ChatEngine(matmul_decode=True)`).
Decode batches 1, 8 and 32 for the `wenzhen` variants (`--batches` picks fewer), 1 and 8 for the others. With
`--profile`, a kernel profile of 32 batch-1 decode steps on `wenzhen`. Also
the HBM roofline for batch-1 decode: bytes of weights per token / measured device copy bandwidth. Writes
`benchmarks/results/generate_speed{--suffix}.{json,md}` with the card, after every variant (a variant that fails
is recorded with its error and the others still run).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import GlmForCausalLM

from wenzhen.generation import ChatEngine, GenerationSettings
from wenzhen.models.chatglm3 import ChatGLM3Family, glm_config_from_official
from wenzhen.models.chatglm3_tokenizer import build_chatglm3_tokenizer
from wenzhen.models.loading import LoadedModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from profiling import format_profile, profile_steps  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT.parent / "shared" / "chatglm3" / "chatglm3-6b-config.json"
# The figures are for a GPU; on CPU the script runs end to end at tiny size (`--config` of the tiny model) as a check.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    """Wait for queued GPU work (nothing to wait for on CPU)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth() -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus written."""
    src = torch.randn(1 << (30 if DEVICE == "cuda" else 24), device=DEVICE, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    synchronize()
    return 2 * src.numel() * 2 * 10 / (time.perf_counter() - start)


def build_model(attn: str, config_path: Path) -> GlmForCausalLM:
    config = glm_config_from_official(json.loads(config_path.read_text()))
    config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = GlmForCausalLM(config).to(torch.bfloat16)
    return model.eval()


def prefill_ms(model: GlmForCausalLM, prompt: torch.Tensor) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(prompt)
        synchronize()
        start = time.perf_counter()
        for _ in range(10):
            model(prompt)
        synchronize()
    return (time.perf_counter() - start) / 10 * 1000


def decode_rate(generate, batch: int, new_tokens: int) -> float:
    """Aggregate decode tokens/s: (time(prompt + N tokens) - time(prompt + 1 token)) over N-1 steps x batch."""
    generate(batch, 8)  # warm-up (and compilation for the static cache path)
    generate(batch, new_tokens)
    synchronize()
    start = time.perf_counter()
    generate(batch, 1)
    synchronize()
    one = time.perf_counter() - start
    start = time.perf_counter()
    generate(batch, new_tokens)
    synchronize()
    full = time.perf_counter() - start
    return batch * (new_tokens - 1) / (full - one)


def profile_decode(engine: ChatEngine, prompt_tokens: int, new_tokens: int) -> dict:
    """Kernel profile of 32 decode steps of the step one sequence runs (the smallest batch bucket) at the
    benchmark's attention window (after warm-up). The steps run on the batcher thread, which owns their CUDA graphs; the profiler runs on this thread (the GPU's kernels
    are seen from any thread), and on the batcher thread when it saw no kernel that way."""
    batcher = engine.batcher
    assert batcher is not None
    window = next(size for size in batcher.windows if size >= prompt_tokens + new_tokens)

    def steps() -> None:
        for _ in range(32):
            batcher._step_at(batcher.buckets[0], window)

    summary = profile_steps(lambda: batcher.call_on_thread(steps), 1)
    if not summary["kernel_ms"]:
        summary = batcher.call_on_thread(lambda: profile_steps(steps, 1))
    return {"profile": summary, "profile_window": window}


def measure(variant: str, args: argparse.Namespace, prompts: torch.Tensor) -> tuple[dict, int]:
    """One variant's row (prefill, decode rates, peak memory, profile) and its model's weight bytes."""
    torch.backends.cuda.enable_cudnn_sdp(variant != "sdpa-no-cudnn")
    model = build_model("eager" if variant == "eager" else "sdpa", args.config)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if variant.startswith("wenzhen"):
        tokenizer = build_chatglm3_tokenizer(args.tokenizer or args.config.parent / "tokenizer.model")
        loaded = LoadedModel(model, tokenizer, ChatGLM3Family(), ROOT)
        engine = ChatEngine(
            loaded,
            static_cache=True,
            fuse_qkv=variant != "wenzhen-unfused",
            matmul_decode=variant == "wenzhen-matmul",
        )
        engine.stop_ids = []  # random weights: decode a fixed number of tokens

        def generate(batch: int, n: int) -> None:
            settings = GenerationSettings(max_new_tokens=n, temperature=0)
            engine.generate_token_ids(prompts[:batch].tolist(), settings)

    else:
        cache = {"cache_implementation": "static"} if variant == "hf-static" else {}

        def generate(batch: int, n: int) -> None:
            with torch.inference_mode():
                model.generate(
                    prompts[:batch],
                    attention_mask=torch.ones_like(prompts[:batch]),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                    **cache,
                )

    started = time.perf_counter()
    row: dict = {"variant": variant, "prefill_512_ms": prefill_ms(model, prompts[:1])}
    batches = args.batches or ([1, 8, 32] if variant.startswith("wenzhen") else [1, 8])
    for batch in batches:
        row[f"decode_b{batch}_tok_s"] = decode_rate(generate, batch, args.new_tokens)
        print(f"{variant} batch {batch} done at {time.perf_counter() - started:.0f} s", flush=True)
    row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
    if variant in ("wenzhen", "wenzhen-matmul") and args.profile:
        try:
            row |= profile_decode(engine, args.prompt_tokens, args.new_tokens)
        except Exception as exc:  # the figures above stand without a profile
            row["profile_error"] = f"{type(exc).__name__}: {exc}"
    return row, weight_bytes


def rate(row: dict, key: str) -> str:
    """A tokens/s cell, or - when the variant did not measure it."""
    return f"{row[key]:.1f}" if key in row else "-"


def write(report: dict, results: Path, suffix: str) -> str:
    """The JSON and the markdown table; returns the markdown."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"generate_speed{suffix}.json").write_text(json.dumps(report, indent=2))
    roofline = report["roofline_b1_tok_s"]
    lines = [
        f"# Generation speed, ChatGLM3-6B shapes, random bf16 weights — {report['card']}, torch {report['torch']}",
        "",
        f"Copy bandwidth {report['copy_bandwidth_tb_s']:.2f} TB/s; weights {report['weight_bytes'] / 1e9:.2f} GB; "
        f"batch-1 decode roofline {roofline:.0f} tokens/s. Prompt {report['prompt_tokens']} tokens, "
        f"{report['new_tokens']} new tokens, greedy.",
        "",
        "| variant | prefill 512 ms | decode b1 tok/s | % roofline | decode b8 tok/s (aggregate) | b8 / b1 "
        "| decode b32 tok/s | b32 / b1 | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'][:200]} | | | | | | | |")
            continue
        b1 = r["decode_b1_tok_s"]
        ratios = [f"{r[k] / b1:.1f}" if k in r else "-" for k in ("decode_b8_tok_s", "decode_b32_tok_s")]
        lines.append(
            f"| {r['variant']} | {r['prefill_512_ms']:.1f} | {b1:.1f} | {100 * b1 / roofline:.0f}% | "
            f"{rate(r, 'decode_b8_tok_s')} | {ratios[0]} | {rate(r, 'decode_b32_tok_s')} | {ratios[1]} | "
            f"{r['peak_gpu_gib']:.1f} |"
        )
    for r in report["rows"]:
        if "profile" in r:
            lines += [
                "",
                format_profile(
                    f"{r['variant']}, 32 batch-1 decode steps over a {r['profile_window']}-key window",
                    r["profile"],
                ),
            ]
    text = "\n".join(lines) + "\n"
    (results / f"generate_speed{suffix}.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--config", type=Path, default=CONFIG, help="official config.json giving the shapes")
    parser.add_argument(
        "--variants", nargs="+", default=["baseline", "hf-static", "wenzhen", "wenzhen-unfused"]
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the results files")
    parser.add_argument("--suffix", default="", help="results file name suffix, e.g. -h200")
    parser.add_argument("--batches", type=int, nargs="+", help="decode batch sizes (default: 1 8 32)")
    parser.add_argument("--profile", action="store_true", help="profile batch-1 decode steps of wenzhen")
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer.model (default: beside --config)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    prompts = torch.randint(100, 60000, (32, args.prompt_tokens), device=DEVICE)
    bandwidth = copy_bandwidth()
    report: dict = {
        "card": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU",
        "torch": torch.__version__,
        "copy_bandwidth_tb_s": bandwidth / 1e12,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "rows": [],
    }
    text = ""
    for variant in args.variants:
        try:
            row, weight_bytes = measure(variant, args, prompts)
        except Exception as exc:  # recorded in the results; the next variant still runs
            row = {"variant": variant, "error": f"{type(exc).__name__}: {exc}"}
        else:
            report |= {"weight_bytes": weight_bytes, "roofline_b1_tok_s": bandwidth / weight_bytes}
        report["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if "roofline_b1_tok_s" in report:
            text = write(report, args.results, args.suffix)
    print(text)


if __name__ == "__main__":
    main()
