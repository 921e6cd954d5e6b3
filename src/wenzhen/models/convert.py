"""`wenzhen convert`: write a model once in transformers' native layout, so later loads are fast and other engines
(vLLM, SGLang) serve it."""

import logging
from pathlib import Path

from wenzhen.io import atomic_directory, check_apart, check_replaceable
from wenzhen.models.loading import is_adapter_dir, load_model, stored_dtype
from wenzhen.runinfo import RunInfo, write_run_info

log = logging.getLogger(__name__)


def convert_model(
    source: str | Path, out_dir: str | Path, *, dtype: str = "source", force: bool = False
) -> Path:
    """Load `source` (any layout wenzhen reads) and save it natively: sharded safetensors, config, tokenizer with
    chat template, generation config with the stop ids, and run.json.

    `dtype` `source` keeps the stored dtype, so a converted official checkpoint still reproduces the official
    model; another dtype rounds the weights, and says so.
    """
    check_apart(out_dir, [source])
    check_replaceable(Path(out_dir), force)
    dtype = output_dtype(Path(source), dtype)
    loaded = load_model(source, dtype=dtype, device="cpu")
    with atomic_directory(out_dir, force=force, inputs=[source]) as staging:
        loaded.model.save_pretrained(staging, max_shard_size="2GB")
        loaded.tokenizer.save_pretrained(staging)
        write_run_info(
            staging,
            RunInfo(
                stage="convert",
                base_model=str(Path(source).resolve()),
                chat_format=loaded.family.name,
                extra={"dtype": dtype},
            ),
        )
    log.info("converted %s -> %s", source, out_dir)
    return Path(out_dir)


def output_dtype(source: Path, requested: str) -> str:
    """The dtype to write: the source's own for `source` (fp32 when unrecorded, which loses nothing), else
    `requested`, with a notice when that rounds the stored weights."""
    stored = None if is_adapter_dir(source) else stored_dtype(source)
    if requested == "source":
        if stored is None:
            log.warning("notice: %s does not record its dtype; writing fp32, which loses nothing", source)
        return stored or "fp32"
    narrower = {"fp32": 32, "fp16": 16, "bf16": 16}
    if stored is not None and requested != stored and narrower[requested] <= narrower[stored]:
        log.warning(
            "notice: --dtype %s rounds the %s weights of %s; leave --dtype out to keep them exact",
            requested,
            stored,
            source,
        )
    return requested
