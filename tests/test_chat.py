"""`wenzhen chat`: streaming, history, trimming, slash commands and the guard, in process and through a terminal."""

import io
import re
import sys
import time
from pathlib import Path

import pexpect
import pytest

from wenzhen import safety
from wenzhen.chat import Conversation, chat_turn, run_repl, stream_answer
from wenzhen.consultation import ConsultationPolicy
from wenzhen.generation import ChatEngine, GenerationSettings
from wenzhen.models import load_model

GREEDY = GenerationSettings(max_new_tokens=8, temperature=0)
WENZHEN = Path(sys.executable).parent / "wenzhen"
STATS = re.compile(r"\[prompt (\d+) \+ answer (\d+) tokens of (\d+)")


@pytest.fixture(scope="module")
def engine(chatglm3_dir):
    return ChatEngine(load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu"), max_context=120)


@pytest.fixture(scope="module")
def policy(engine):
    return ConsultationPolicy(engine)


class Recorder(io.StringIO):
    """Keeps every write separately, to see that the answer arrives in pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_answer_streams_in_pieces(policy):
    out = Recorder()
    result = stream_answer(policy, [{"role": "user", "content": "我头痛"}], GREEDY, out)
    assert result is not None and result.completion_tokens == 8
    pieces = [w for w in out.writes if w and w != "\n"]
    assert len(pieces) > 1 and "".join(pieces) == result.text


def test_red_flag_gets_emergency_guidance_before_the_answer(policy):
    out = io.StringIO()
    messages = [{"role": "user", "content": "我胸口剧痛，大汗淋漓"}]
    stream_answer(policy, messages, GREEDY, out)
    assert out.getvalue().startswith(safety.answer_prefix(safety.check(messages)))
    assert safety.EMERGENCY_HEADER in out.getvalue()


def test_history_is_trimmed_oldest_first_and_keeps_the_system_prompt(engine, policy):
    conversation = Conversation("你是医生")
    out = io.StringIO()
    for turn in range(8):
        chat_turn(policy, engine, conversation, f"第{turn}个问题：头痛发烧咳嗽怎么办", GREEDY, out)
    messages = conversation.messages()
    assert "oldest messages to fit the context window" in out.getvalue()
    assert messages[0] == {"role": "system", "content": "你是医生"}
    assert messages[1]["role"] == "user" and messages[1]["content"] != "第0个问题：头痛发烧咳嗽怎么办"
    assert messages[-2]["content"] == "第7个问题：头痛发烧咳嗽怎么办" and messages[-1]["role"] == "assistant"
    assert engine.count_prompt_tokens(messages[:-1]) + GREEDY.max_new_tokens <= engine.max_context


def test_repl_commands_in_process(engine, policy):
    lines = iter(
        ["你好", "/history", "/system 你是儿科医生", "/history", "/clear", "/history", "/exit", "never"]
    )
    out = io.StringIO()
    assert run_repl(policy, engine, GREEDY, None, read_line=lambda _: next(lines), out=out) == 0
    text = out.getvalue()
    assert text.startswith(safety.DISCLAIMER)
    assert "[user] 你好" in text and "[system prompt set; conversation cleared]" in text
    assert "[system] 你是儿科医生" in text and text.rstrip().endswith("[system] 你是儿科医生")


def test_terminal_session_streams_keeps_history_and_honours_commands(chatglm3_dir):
    command = [str(chatglm3_dir / "tiny-chatglm3"), "--temperature", "0", "--max-new-tokens", "120"]
    child = pexpect.spawn(str(WENZHEN), ["chat", *command, "--dtype", "fp32"], encoding="utf-8", timeout=120)
    try:
        child.expect_exact(safety.DISCLAIMER)
        child.expect_exact("用户> ")

        def ask(text: str) -> tuple[int, int]:
            child.sendline(text)
            child.expect_exact("助手> ")
            child.expect(STATS)
            prompt, answer = int(child.match.group(1)), int(child.match.group(2))
            child.expect_exact("用户> ")
            return prompt, answer

        # Streaming: with a long answer the first characters arrive before the closing stats line. The batched
        # engine writes 120 tiny-model tokens in about 0.3 s on a quiet 2-core CPU, so the gap checked is 0.1 s;
        # without streaming the whole answer and the stats line arrive together.
        child.sendline("请详细说说感冒")
        child.expect_exact("助手> ")
        child.read_nonblocking(size=1, timeout=60)
        first_text = time.monotonic()
        child.expect(STATS)
        assert int(child.match.group(2)) == 120 and time.monotonic() - first_text > 0.1
        child.expect_exact("用户> ")
        # Ctrl-C stops an answer half-way and keeps the session.
        child.sendline("再说说发烧")
        child.expect_exact("助手> ")
        child.read_nonblocking(size=1, timeout=60)
        child.sendintr()
        child.expect_exact("[stopped]")
        child.expect_exact("用户> ")
        child.sendline("/history")
        child.expect_exact("用户> ")
        assert "请详细说说感冒" in child.before and "再说说发烧" not in child.before
        child.sendline("/system")
        child.expect_exact("[system prompt removed; conversation cleared]")
        child.expect_exact("用户> ")
        first_prompt, first_answer = ask("我头痛")
        second_prompt, _ = ask("我头痛")
        # The second prompt carries the first question and answer: the history is kept.
        assert second_prompt > first_prompt + first_answer
        child.sendline("/history")
        child.expect(r"\[user\] 我头痛.*\[assistant\].*\[user\] 我头痛.*\[assistant\]")
        child.expect_exact("用户> ")
        child.sendline("/clear")
        child.expect_exact("[conversation cleared]")
        child.expect_exact("用户> ")
        assert ask("我头痛")[0] == first_prompt
        child.sendline("/system 你是医生")
        child.expect_exact("[system prompt set; conversation cleared]")
        child.expect_exact("用户> ")
        assert ask("我头痛")[0] > first_prompt  # the new system prompt leads the conversation
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_one_shot_prints_one_answer_with_an_official_adapter(chatglm3_dir):
    import subprocess

    model = [
        str(chatglm3_dir / "tiny-chatglm3"),
        "--adapter",
        str(chatglm3_dir / "tiny-chatglm3-lora-adapter"),
    ]
    done = subprocess.run(
        [str(WENZHEN), "chat", *model, "--prompt", "我头痛", "--temperature", "0", "--max-new-tokens", "6"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    assert safety.DISCLAIMER in done.stderr and safety.DISCLAIMER not in done.stdout
    assert done.stdout.strip() and "用户>" not in done.stdout


def test_bad_sampling_option_is_a_clear_error(chatglm3_dir, capsys):
    from wenzhen.cli import main

    assert main(["chat", str(chatglm3_dir / "tiny-chatglm3"), "--temperature", "5"]) == 2
    assert "temperature" in capsys.readouterr().err
