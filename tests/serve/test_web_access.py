"""`wenzhen web` answers only to its own Host names and to its own pages (no browser needed)."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import free_port, running_server


@pytest.fixture(scope="module")
def web_url(tiny_model: Path) -> Iterator[str]:
    port = free_port()
    args = ["web", str(tiny_model), "--port", str(port)]
    with running_server(
        args, f"http://127.0.0.1:{port}/", env={"GRADIO_ANALYTICS_ENABLED": "False"}
    ) as server:
        yield server.base_url


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"host": "evil.example"}, 403),
        ({"host": "evil.example:7860"}, 403),
        ({"origin": "https://evil.example"}, 403),
        ({"origin": "null"}, 403),
        ({}, 200),
        ({"host": "localhost"}, 200),
    ],
)
def test_foreign_hosts_and_other_sites_pages_are_refused(
    web_url: str, headers: dict[str, str], status: int
) -> None:
    # Before: Gradio served any Host (DNS rebinding) and ran other sites' requests, only withholding CORS headers.
    assert httpx.get(f"{web_url}/config", headers=headers, timeout=30).status_code == status
    join = httpx.post(f"{web_url}/gradio_api/queue/join", json={}, headers=headers, timeout=30)
    assert (join.status_code == 403) == (status == 403)
