"""`wenzhen export MODEL --format gguf`: one GGUF file for llama.cpp and Ollama, from a merged model directory or
from a base + LoRA adapter folded in on the way, verified against its source before it appears under its name.

Written in two passes over the source so host memory holds one tensor at a time (the merge's own bound): the first
pass maps every tensor on the meta device (shapes only) to lay out the header, the second streams the real
tensors, folds in the adapter, converts, quantises and appends each one. Tokenizer, chat template and every stop
token go into the metadata, so llama.cpp formats prompts and stops turns like wenzhen's own engine.
"""

import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from transformers import PretrainedConfig

from wenzhen import __version__
from wenzhen.errors import WenzhenError
from wenzhen.export.formats import ordinary_file_mode
from wenzhen.export.gguf_architectures import GGUF_ARCHITECTURES, GGUFArchitecture, stop_ids_metadata
from wenzhen.export.merge import adapter_updates, merged_tensors
from wenzhen.models.adapter import is_adapter_dir, read_adapter_config
from wenzhen.models.family import ModelFamily
from wenzhen.models.loading import detect_family, resolve_base

log = logging.getLogger(__name__)

#: --quant choices: the GGML type of 2-D weights (1-D norms and biases stay F32, as llama.cpp's converter keeps
#: them). q4_k_m needs llama.cpp's own quantiser (`llama-quantize`): the gguf package has no Q4_K quantiser.
QUANTS: dict[str, gguf.GGMLQuantizationType | None] = {
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_k_m": None,
}
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


@dataclass
class GGUFSource:
    """What the GGUF is made of: a model directory and, optionally, an adapter folded in while streaming."""

    model_dir: Path
    family: ModelFamily
    config: PretrainedConfig
    architecture: GGUFArchitecture
    adapter: Path | None = None

    def native_tensors(self, scratch: Path, merged: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """The native tensors, one at a time, with the adapter folded in when `merged` (shapes are the same
        either way, so the layout pass skips the arithmetic)."""
        updates = (
            adapter_updates(self.adapter, self.model_dir, self.family, self.config, scratch)
            if self.adapter and merged
            else {}
        )
        yield from merged_tensors(self.model_dir, self.family, self.config, updates)


@dataclass
class GGUFReport:
    """What `export_gguf` wrote and measured."""

    out_file: Path
    source: Path
    adapter: Path | None
    architecture: str
    quant: str
    tensors: int
    bytes: int
    modelfile: Path | None = None
    verification: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def resolve_source(model: Path, base: str | Path | None) -> GGUFSource:
    """A merged model directory, or an adapter directory whose base is found as `wenzhen merge` finds it."""
    adapter = None
    if is_adapter_dir(model):
        read_adapter_config(model).require_mergeable()
        adapter, model = model, resolve_base(model, base)
    family = detect_family(model)
    config = family.native_config(model)
    key = family.gguf_architecture(config)
    if key not in GGUF_ARCHITECTURES.names():
        raise WenzhenError(
            f"{model} is a {config.model_type} model; the GGUF export writes {', '.join(GGUF_ARCHITECTURES.names())} "
            "models (ChatGLM3 and Llama-family); for others use llama.cpp's convert_hf_to_gguf.py on a merged directory"
        )
    architecture = GGUF_ARCHITECTURES.get(key)
    architecture.check(config)
    return GGUFSource(model, family, config, architecture, adapter)


def ggml_type(name: str, shape: tuple[int, ...], quant: str) -> gguf.GGMLQuantizationType:
    """F32 for vectors; the chosen type for matrices, falling back to F16 where rows do not fill whole blocks (as
    llama.cpp's converter does)."""
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    chosen = QUANTS[quant]
    assert chosen is not None
    block = gguf.GGML_QUANT_SIZES[chosen][0]
    return chosen if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def encoded_nbytes(shape: tuple[int, ...], kind: gguf.GGMLQuantizationType) -> int:
    """Bytes of a tensor of `shape` in GGML type `kind`."""
    if kind == gguf.GGMLQuantizationType.F32:
        return 4 * math.prod(shape)
    if kind == gguf.GGMLQuantizationType.F16:
        return 2 * math.prod(shape)
    return math.prod(gguf.quant_shape_to_byte_shape(shape, kind))


def encode(tensor: torch.Tensor, kind: gguf.GGMLQuantizationType) -> np.ndarray:
    """One tensor as the bytes GGUF stores (quantised with the gguf package's numpy quantisers)."""
    array = tensor.detach().float().numpy()
    if kind == gguf.GGMLQuantizationType.F32:
        return array
    if kind == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, kind)


def write_metadata(writer: gguf.GGUFWriter, source: GGUFSource, quant: str, name: str) -> None:
    """General keys, hyper-parameters, vocabulary, chat template and stop tokens."""
    tokenizer = source.family.load_tokenizer(source.model_dir)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_description(f"exported by wenzhen {__version__} from {source.model_dir.name}")
    writer.add_file_type(FILE_TYPES[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    source.architecture.write_hyperparameters(writer, source.config)
    source.architecture.write_vocabulary(writer, tokenizer, source.model_dir, source.config)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise WenzhenError(f"the tokenizer of {source.model_dir} has no eos token")
    stop_ids_metadata(writer, source.family, tokenizer, int(eos))
    writer.add_chat_template(source.architecture.chat_template(tokenizer))


def tensor_plan(source: GGUFSource, quant: str, scratch: Path) -> list[tuple[str, tuple[int, ...], Any]]:
    """(GGUF name, shape, GGML type) of every output tensor, from a pass over the source on the meta device."""
    shapes = ((name, tensor.to("meta")) for name, tensor in source.native_tensors(scratch, merged=False))
    plan = []
    for name, tensor in source.architecture.gguf_tensors(shapes, source.config):
        shape = tuple(int(size) for size in tensor.shape)
        plan.append((name, shape, ggml_type(name, shape, quant)))
    return plan


def write_gguf(source: GGUFSource, file: Path, quant: str, name: str, scratch: Path) -> tuple[int, int]:
    """Write the whole file, one tensor in memory at a time; returns (tensors, bytes)."""
    plan = tensor_plan(source, quant, scratch)
    writer = gguf.GGUFWriter(file, source.architecture.name)
    write_metadata(writer, source, quant, name)
    for tensor_name, shape, kind in plan:
        raw_dtype = None if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else kind
        numpy_dtype = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}
        writer.add_tensor_info(
            tensor_name,
            gguf.quant_shape_to_byte_shape(shape, kind) if raw_dtype else shape,
            np.dtype(numpy_dtype.get(kind, np.uint8)),
            encoded_nbytes(shape, kind),
            raw_dtype=raw_dtype,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    written = 0
    stream = source.architecture.gguf_tensors(source.native_tensors(scratch), source.config)
    for (planned, shape, kind), (tensor_name, tensor) in zip(plan, stream, strict=True):
        if planned != tensor_name or tuple(tensor.shape) != shape:
            raise WenzhenError(f"the model changed while it was exported ({tensor_name}); export it again")
        data = encode(tensor, kind)
        writer.write_tensor_data(data)
        written += data.nbytes
        del tensor, data
    writer.close()
    return len(plan), written


def export_gguf(
    model: str | Path,
    out_file: str | Path,
    *,
    base: str | Path | None = None,
    quant: str = "f16",
    ollama: bool = False,
    verify: bool = True,
    tolerance: float | None = None,
    force: bool = False,
) -> GGUFReport:
    """Write `model` (a merged directory, or an adapter folded into its base) as one GGUF file.

    With `verify` the file is read back and its logits compared with the source's on fixed prompts before it gets
    its final name; with `ollama` a Modelfile is written beside it.
    """
    from wenzhen.export.ollama import write_modelfile
    from wenzhen.export.verify import verify_gguf

    if quant not in QUANTS:
        raise WenzhenError(f"unknown --quant {quant!r}; use one of {', '.join(QUANTS)}")
    if QUANTS[quant] is None:
        raise WenzhenError(
            "--quant q4_k_m needs llama.cpp's own quantiser (the gguf Python package has none for Q4_K): export "
            "f16, then run `llama-quantize MODEL-f16.gguf MODEL-q4_k_m.gguf Q4_K_M`"
        )
    out = Path(out_file)
    if out.exists() and not force:
        raise WenzhenError(f"{out} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise WenzhenError(f"the folder of --out, {out.parent}, does not exist; create it first")
    source = resolve_source(Path(model), base)
    staging = out.with_name(f".{out.name}.partial")
    try:
        with tempfile.TemporaryDirectory(prefix="wenzhen-gguf-") as scratch:
            tensors, size = write_gguf(source, staging, quant, out.stem, Path(scratch))
            ordinary_file_mode(staging)
            report = GGUFReport(
                out, source.model_dir, source.adapter, source.architecture.name, quant, tensors, size
            )
            if verify:
                report.verification = verify_gguf(source, staging, quant, tolerance)
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    if ollama:
        report.modelfile = write_modelfile(source, out)
    log.info("wrote %s", out)
    return report
