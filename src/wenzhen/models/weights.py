"""Checking weight files without loading them: each file's header and exact byte length.

A download can leave a Git LFS pointer (cloned without git-lfs), a truncated file (interrupted) or a file whose
header is garbage; loaders would fail later with a raw library traceback, and a size estimate from the parameter
count cannot tell. This reads only headers: a safetensors file's 8-byte length, its JSON header and the tensors'
data offsets (the file must end exactly where the last tensor does), and a PyTorch zip checkpoint's central
directory (which sits at the very end, so a truncated file has none). Used by `wenzhen env`, every model and
adapter loader, and by anyone else who needs it (`verify_weight_file` / `check_weight_files`).
"""

import json
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path

from wenzhen.errors import WenzhenError

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
ZIP_MAGIC = b"PK\x03\x04"
# A safetensors header is a few MB even for the largest models; a bigger length means the first bytes are garbage.
MAX_SAFETENSORS_HEADER = 100 * 2**20
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
DOWNLOAD_AGAIN = "download it again"


def verify_weight_file(path: Path) -> str | None:
    """A sentence naming what is wrong with one weight file and the fix, or None when it is whole."""
    if not path.is_file():
        return f"{path} is missing; {DOWNLOAD_AGAIN}"
    with open(path, "rb") as handle:
        head = handle.read(len(LFS_POINTER_PREFIX))
    if head == LFS_POINTER_PREFIX:
        return (
            f"{path} is a Git LFS pointer, not the weights (the repository was cloned without git-lfs); run "
            f"`git lfs install && git lfs pull` in {path.parent} or download that file again"
        )
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    if head.startswith(ZIP_MAGIC):
        return _torch_zip_problem(path)
    return None  # a legacy (pre-zip) torch pickle: only reading it tells


def check_weight_files(paths: Iterable[Path]) -> None:
    """Raise the first problem `verify_weight_file` finds among `paths` as a WenzhenError."""
    for path in paths:
        problem = verify_weight_file(path)
        if problem is not None:
            raise WenzhenError(problem)


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    truncated = f"{path} is truncated or corrupt"
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"{truncated} ({size} bytes, shorter than a safetensors header); {DOWNLOAD_AGAIN}"
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > min(size - 8, MAX_SAFETENSORS_HEADER):
            return f"{truncated} (its header claims {header_length} bytes of {size}); {DOWNLOAD_AGAIN}"
        try:
            header = json.loads(handle.read(header_length))
        except (ValueError, UnicodeDecodeError):
            return f"{truncated} (its header is not valid JSON); {DOWNLOAD_AGAIN}"
    if not isinstance(header, dict):
        return f"{truncated} (its header is not a JSON object); {DOWNLOAD_AGAIN}"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _tensor_problem(entry)
        if problem is not None:
            return f"{truncated} (tensor {name!r}: {problem}); {DOWNLOAD_AGAIN}"
        end = max(end, entry["data_offsets"][1])
    expected = 8 + header_length + end
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        return (
            f"{path} is {what}: {size:,} bytes where its header needs exactly {expected:,}; {DOWNLOAD_AGAIN}"
        )
    return None


def _tensor_problem(entry: object) -> str | None:
    """Why one header entry is malformed: offsets that do not match its dtype and shape, or missing fields."""
    if not isinstance(entry, dict):
        return "not an object"
    offsets, shape, dtype = entry.get("data_offsets"), entry.get("shape"), entry.get("dtype")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and o >= 0 for o in offsets)
        and isinstance(shape, list)
        and all(isinstance(d, int) and d >= 0 for d in shape)
    ):
        return "malformed offsets or shape"
    if dtype not in DTYPE_BYTES:
        return None if isinstance(dtype, str) else "no dtype"  # a dtype newer than this table: offsets only
    elements = 1
    for dimension in shape:
        elements *= dimension
    if offsets[1] - offsets[0] != elements * DTYPE_BYTES[dtype]:
        return f"{offsets[1] - offsets[0]} bytes for {elements} {dtype} values"
    return None


def _torch_zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return f"{path} is truncated or corrupt (its zip directory is unreadable); {DOWNLOAD_AGAIN}"
    size = path.stat().st_size
    if any(member.header_offset + member.compress_size > size for member in members):
        return f"{path} is truncated (a tensor's data runs past its {size:,} bytes); {DOWNLOAD_AGAIN}"
    if not any(member.filename.endswith("data.pkl") for member in members):
        return f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl); {DOWNLOAD_AGAIN}"
    return None
