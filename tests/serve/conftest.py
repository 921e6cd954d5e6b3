"""Fixtures for the server tests: real `wenzhen api` / `wenzhen web` processes on a free loopback port."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tool_model import build_tool_model

STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_server(
    args: list[str], ready_url: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Start `wenzhen ARGS` in its own process group, wait until `ready_url` answers, stop it afterwards."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"wenzhen-server-{os.getpid()}-{time.time_ns()}.log"
    with open(log, "w+", encoding="utf-8") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "wenzhen", *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    output.seek(0)
                    pytest.fail(f"server exited with {process.returncode}:\n{output.read()}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=2).status_code < 500:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not answer {ready_url} within {STARTUP_TIMEOUT_S}s")
                time.sleep(0.3)
            process.base_url = ready_url.rsplit("/", 1)[0]  # type: ignore[attr-defined]
            process.log_path = log  # type: ignore[attr-defined]
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def tiny_model(chatglm3_dir: Path) -> Path:
    """The shared tiny ChatGLM3 (random weights, official layout)."""
    return chatglm3_dir / "tiny-chatglm3"


@pytest.fixture(scope="session")
def tool_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ChatGLM3 trained to call `lookup_drug` (see tool_model.py)."""
    return build_tool_model(tiny_model, tmp_path_factory.mktemp("tool-model") / "tiny-chatglm3-tools")
