"""Build a same-shape ChatGLM3 checkpoint with random weights in the official layout (for GPU benchmarks).

The 6B shapes come from `../shared/chatglm3/chatglm3-6b-config.json`; the files are written the way the official
download ships them: fp16 `pytorch_model-0000N-of-0000M.bin` shards plus `pytorch_model.bin.index.json` (or
safetensors), official parameter names, and `tokenizer.model`.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "chatglm3"


def official_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every official parameter name with its shape."""
    hidden, ffn, vocab = config["hidden_size"], config["ffn_hidden_size"], config["padded_vocab_size"]
    head_dim = config["kv_channels"]
    qkv_rows = config["num_attention_heads"] * head_dim + 2 * config["multi_query_group_num"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {"transformer.embedding.word_embeddings.weight": (vocab, hidden)}
    for layer in range(config["num_layers"]):
        prefix = f"transformer.encoder.layers.{layer}."
        shapes |= {
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "self_attention.query_key_value.weight": (qkv_rows, hidden),
            prefix + "self_attention.query_key_value.bias": (qkv_rows,),
            prefix + "self_attention.dense.weight": (hidden, config["num_attention_heads"] * head_dim),
            prefix + "post_attention_layernorm.weight": (hidden,),
            prefix + "mlp.dense_h_to_4h.weight": (2 * ffn, hidden),
            prefix + "mlp.dense_4h_to_h.weight": (hidden, ffn),
        }
    shapes["transformer.encoder.final_layernorm.weight"] = (hidden,)
    shapes["transformer.output_layer.weight"] = (vocab, hidden)
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Norm weights near 1, everything else small normal noise (so activations stay finite in fp16)."""
    noise = torch.randn(shape, generator=generator, device=generator.device)
    if name.endswith("layernorm.weight"):
        return (1 + 0.02 * noise).half()
    return (0.02 * noise).half()


def build(
    out_dir: Path, config_path: Path, shards: int, fmt: str, seed: int = 0, device: str = "cpu"
) -> Path:
    """Write the checkpoint; returns `out_dir`."""
    config = json.loads(config_path.read_text())
    shapes = official_shapes(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(shapes)
    per_shard = -(-len(names) // shards)
    generator = torch.Generator(device).manual_seed(seed)
    weight_map = {}
    suffix = "bin" if fmt == "bin" else "safetensors"
    stem = "pytorch_model" if fmt == "bin" else "model"
    for index in range(shards):
        chunk = names[index * per_shard : (index + 1) * per_shard]
        file = f"{stem}-{index + 1:05d}-of-{shards:05d}.{suffix}"
        tensors = {name: random_tensor(name, shapes[name], generator).cpu() for name in chunk}
        if fmt == "bin":
            torch.save(tensors, out_dir / file)
        else:
            save_file(tensors, str(out_dir / file))
        weight_map |= dict.fromkeys(chunk, file)
        del tensors
    index_name = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (out_dir / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(config_path.parent / "tokenizer.model", out_dir / "tokenizer.model")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--config", type=Path, default=SHARED / "chatglm3-6b-config.json")
    parser.add_argument("--shards", type=int, default=7)
    parser.add_argument("--format", choices=["bin", "safetensors"], default="bin")
    parser.add_argument(
        "--device", default="cpu", help="where to draw the random numbers (cuda: much faster)"
    )
    args = parser.parse_args()
    build(args.out_dir, args.config, args.shards, args.format, device=args.device)
    print(f"wrote {args.out_dir}")


if __name__ == "__main__":
    main()
