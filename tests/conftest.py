"""Shared fixtures: the `../shared` reference material, skipped with a reason where it is absent."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` beside the repository; tests that need it skip when it is missing."""
    if not SHARED.is_dir():
        pytest.skip(f"reference material not found at {SHARED} (CI places it beside the repository)")
    return SHARED


@pytest.fixture(scope="session")
def chatglm3_dir(shared_dir: Path) -> Path:
    """`../shared/chatglm3`: the real tokenizer, tiny official-layout model, adapter and golden outputs."""
    return shared_dir / "chatglm3"
