"""Reading checkpoint directories shard by shard, with clear errors for the ways downloads go wrong.

Official ChatGLM3 downloads come as `pytorch_model-0000N-of-0000M.bin` or `model-0000N-of-0000M.safetensors`
shards plus an index. A `git clone` without git-lfs leaves ~130-byte pointer files instead of weights; an
interrupted download leaves a shard missing or truncated. Each case gets one sentence that names the file and the fix.
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from wenzhen.errors import WenzhenError
from wenzhen.models.weights import check_weight_files

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class CheckpointFiles:
    """The weight files of a model directory, in index order, and what the index says about them."""

    directory: Path
    shards: list[Path]
    index: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Bytes on disk over all shards."""
        return sum(shard.stat().st_size for shard in self.shards)


def find_checkpoint(directory: str | Path, *, verify: bool = True) -> CheckpointFiles:
    """Locate the weight shards of `directory`, refusing missing shards and (with `verify`) any shard whose
    header or byte length is wrong (see `wenzhen.models.weights`)."""
    root = Path(directory)
    if not root.is_dir():
        raise WenzhenError(f"model directory {root} does not exist; pass the folder that holds config.json")
    for name in INDEX_FILES:
        index_path = root / name
        if index_path.is_file():
            check_weight_files([index_path])  # a Git LFS pointer instead of the index
            try:
                weight_map: dict[str, str] = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise WenzhenError(
                    f"{index_path} is not a valid checkpoint index ({exc}); download it again"
                ) from None
            names = list(dict.fromkeys(weight_map.values()))
            missing = [shard for shard in names if not (root / shard).is_file()]
            if missing:
                raise WenzhenError(
                    f"{root} is incomplete: shard {missing[0]} named in {name} is missing"
                    f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; download the missing files"
                )
            shards = [root / shard for shard in names]
            if verify:
                check_weight_files(shards)
            return CheckpointFiles(root, shards, weight_map)
    for name in SINGLE_FILES:
        single = root / name
        if single.is_file():
            if verify:
                check_weight_files([single])
            return CheckpointFiles(root, [single])
    raise WenzhenError(
        f"no weights found in {root}: expected {' or '.join(INDEX_FILES)} with shards, or {' or '.join(SINGLE_FILES)}"
    )


def iter_shard(shard: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from one shard; `.bin` files are read with weights_only=True and memory-mapped."""
    try:
        if shard.suffix == ".safetensors":
            with safe_open(str(shard), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                    yield name, handle.get_tensor(name)
        else:
            state = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()
            del state
    except WenzhenError:
        raise
    except Exception as exc:
        raise WenzhenError(
            f"cannot read shard {shard} ({type(exc).__name__}: {str(exc)[:120]}); the file is corrupt or truncated, "
            "download it again"
        ) from None


def sha256_of(path: Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
