"""`wenzhen web` in a real browser: Debian chromium driven by Playwright against the tiny models on CPU.

Screenshots are saved under tests/artifacts/ (git-ignored) for a person to look at.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import free_port, running_server
from wenzhen import safety
from wenzhen.serve.web import STOPPED_MARK

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ANSWER_TIMEOUT_MS = 90_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium missing: run `make system-deps`"),
]


def _web_config(directory: Path, max_new_tokens: int = 200, temperature: float = 0.8) -> Path:
    config = directory / "web.yaml"
    settings = {"generation": {"max_new_tokens": max_new_tokens, "temperature": temperature}}
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def web_url(tiny_model: Path, chatglm3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The UI on the tiny model, comparing it with itself plus the shared LoRA adapter."""
    port = free_port()
    args = [
        "web",
        str(tiny_model),
        "--compare",
        str(tiny_model),
        "--compare-adapter",
        str(chatglm3_dir / "tiny-chatglm3-lora-adapter"),
        "--port",
        str(port),
        "--config",
        str(_web_config(tmp_path_factory.mktemp("web"))),
    ]
    with running_server(
        args, f"http://127.0.0.1:{port}/", env={"GRADIO_ANALYTICS_ENABLED": "False"}
    ) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


def _open(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#question textarea", timeout=ANSWER_TIMEOUT_MS)
    return page


def _ask(page: Any, question: str) -> None:
    page.fill("#question textarea", question)
    page.click("#send")


def _wait_for_text(page: Any, selector: str, text: str) -> str:
    page.wait_for_function(
        "([sel, text]) => { const el = document.querySelector(sel); return el && el.innerText.includes(text); }",
        arg=[selector, text],
        timeout=ANSWER_TIMEOUT_MS,
    )
    return str(page.inner_text(selector))


def test_question_gets_a_streamed_answer_with_disclaimer(browser: Any, web_url: str) -> None:
    page = _open(browser, web_url)
    assert safety.DISCLAIMER in page.inner_text("#disclaimer")
    _ask(page, "最近总是失眠，白天没精神，该怎么调理？")
    page.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('失眠')")
    lengths = []
    deadline = time.monotonic() + ANSWER_TIMEOUT_MS / 1000
    while safety.DISCLAIMER not in (text := page.inner_text("#chatbot")) and time.monotonic() < deadline:
        lengths.append(len(text))
        time.sleep(0.05)
    assert safety.DISCLAIMER in page.inner_text("#chatbot")
    assert len(set(lengths)) >= 3, f"the answer did not arrive in pieces: {sorted(set(lengths))}"
    assert not page.is_visible("#emergency-banner")
    page.screenshot(path=str(ARTIFACTS / "web_chat.png"), full_page=True)
    page.click("#regenerate")
    page.wait_for_timeout(300)
    _wait_for_text(page, "#chatbot", safety.DISCLAIMER)
    assert page.inner_text("#chatbot").count("失眠") == 1, "regenerate must not repeat the question"
    page.click("#clear")
    page.wait_for_function(
        "(d) => !document.querySelector('#chatbot').innerText.includes(d)", arg=safety.DISCLAIMER
    )
    page.close()


def test_stop_ends_the_answer_early(browser: Any, web_url: str) -> None:
    page = _open(browser, web_url)
    _ask(page, "请详细讲讲高血压的日常管理")
    page.wait_for_function("() => document.querySelector('#chatbot').innerText.length > 60")
    page.click("#stop")
    stopped = _wait_for_text(page, "#chatbot", STOPPED_MARK)
    assert safety.DISCLAIMER in stopped, "a stopped answer still carries the disclaimer"
    page.wait_for_timeout(500)
    assert page.inner_text("#chatbot") == stopped, "the answer kept growing after stop"
    page.close()


def test_red_flag_shows_the_emergency_banner(browser: Any, web_url: str) -> None:
    page = _open(browser, web_url)
    _ask(page, "我爸突然胸口剧痛，满头大汗，怎么办")
    page.wait_for_selector("#emergency-banner", state="visible", timeout=ANSWER_TIMEOUT_MS)
    banner = page.inner_text("#emergency-banner")
    assert "120" in banner and "胸痛" in banner
    chat = _wait_for_text(page, "#chatbot", safety.DISCLAIMER)
    answer = chat.split("怎么办", 1)[1]
    assert answer.strip().startswith("⚠️"), "the emergency guidance must open the answer"
    page.screenshot(path=str(ARTIFACTS / "web_emergency.png"), full_page=True)
    page.close()


def test_compare_mode_answers_side_by_side(browser: Any, web_url: str) -> None:
    page = _open(browser, web_url)
    page.get_by_role("tab", name="对比").click()
    page.fill("#compare-question textarea", "孩子3岁，发烧38.5度，需要去医院吗？")
    page.click("#compare-send")
    left = _wait_for_text(page, "#compare-left", safety.DISCLAIMER)
    right = _wait_for_text(page, "#compare-right", safety.DISCLAIMER)
    assert "tiny-chatglm3" in left and "tiny-chatglm3-lora-adapter" in right
    assert STOPPED_MARK not in left + right, "both answers run to their end"
    page.screenshot(path=str(ARTIFACTS / "web_compare.png"), full_page=True)
    page.close()


def test_tool_mode_looks_a_drug_up(browser: Any, tool_model: Path, tmp_path: Path) -> None:
    port = free_port()
    # The tiny model's context is 512 tokens: the tool schemas and the drug table's answer leave room for 48.
    # Greedy decoding: the model was trained to make exactly this call.
    config = _web_config(tmp_path, max_new_tokens=48, temperature=0.0)
    args = ["web", str(tool_model), "--port", str(port), "--config", str(config)]
    with running_server(
        args, f"http://127.0.0.1:{port}/", env={"GRADIO_ANALYTICS_ENABLED": "False"}
    ) as server:
        page = _open(browser, server.base_url)
        page.check("#tools input")
        _ask(page, "胃溃疡能吃布洛芬吗")
        chat = _wait_for_text(page, "#chatbot", "调用工具 lookup_drug")
        chat = _wait_for_text(page, "#chatbot", safety.DISCLAIMER)
        assert "调用工具 lookup_drug" in chat
        assert "非甾体抗炎药" in chat, "the card shows the drug table's answer"
        page.screenshot(path=str(ARTIFACTS / "web_tools.png"), full_page=True)
        page.close()
