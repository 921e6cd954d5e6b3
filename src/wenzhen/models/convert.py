"""`wenzhen convert`: write a model once in transformers' native layout, so later loads are fast and other engines
(vLLM, SGLang) serve it."""

import logging
from pathlib import Path

from wenzhen.io import atomic_directory, check_apart, check_replaceable
from wenzhen.models.loading import load_model
from wenzhen.runinfo import RunInfo, write_run_info

log = logging.getLogger(__name__)


def convert_model(
    source: str | Path, out_dir: str | Path, *, dtype: str = "bf16", force: bool = False
) -> Path:
    """Load `source` (any layout wenzhen reads) and save it natively: sharded safetensors, config, tokenizer with
    chat template, generation config with the stop ids, and run.json."""
    check_apart(out_dir, [source])
    check_replaceable(Path(out_dir), force)
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
