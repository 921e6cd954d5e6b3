"""The record every run folder carries, so later stages read it back instead of asking again.

`run.json` holds the stage that wrote the folder, the base model path, the chat format and the resolved config.
"""

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from wenzhen import __version__
from wenzhen.io import write_json

RUN_FILE = "run.json"


class RunInfo(BaseModel):
    """What produced a run folder."""

    stage: str
    base_model: str | None = None
    chat_format: str | None = None
    config: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    wenzhen_version: str = __version__
    created: str = ""


def write_run_info(folder: str | Path, info: RunInfo) -> None:
    """Write `run.json` into `folder` atomically, stamping the time."""
    stamped = info.model_copy(update={"created": info.created or _dt.datetime.now(_dt.UTC).isoformat()})
    write_json(Path(folder) / RUN_FILE, stamped.model_dump(mode="json"))


def read_run_info(folder: str | Path) -> RunInfo | None:
    """The folder's `run.json`, or None when it has none (a folder not made by wenzhen)."""
    file = Path(folder) / RUN_FILE
    if not file.is_file():
        return None
    return RunInfo.model_validate(json.loads(file.read_text(encoding="utf-8")))
