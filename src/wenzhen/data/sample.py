"""The sample corpus shipped with wenzhen for the demo and the docs (written for this project, fictional)."""

from importlib import resources
from pathlib import Path

SAMPLE_FILES = ("consultations.csv", "conversations.jsonl")


def sample_corpus_dir() -> Path:
    """The folder holding the bundled sample corpus (package data)."""
    return Path(str(resources.files("wenzhen") / "resources" / "sample_corpus"))


def sample_corpus_paths() -> list[Path]:
    """The raw files of the bundled sample corpus, ready to pass to `prepare`."""
    folder = sample_corpus_dir()
    return [folder / name for name in SAMPLE_FILES]
