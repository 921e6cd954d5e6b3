"""Data preparation: raw public medical corpora -> cleaned, de-duplicated, split ChatGLM3 training files."""

from wenzhen.data.config import DataConfig
from wenzhen.data.prepare import prepare
from wenzhen.data.readers import READERS, read_records
from wenzhen.data.report import format_report
from wenzhen.data.sample import sample_corpus_dir, sample_corpus_paths

__all__ = [
    "READERS",
    "DataConfig",
    "format_report",
    "prepare",
    "read_records",
    "sample_corpus_dir",
    "sample_corpus_paths",
]
