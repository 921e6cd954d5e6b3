"""`wenzhen chat`: a terminal chat on the one generation engine (`ChatEngine`), with the safety guard.

Streaming, stop tokens and history trimming are the engine's; this module only reads lines, handles the slash
commands, prints the stream and keeps the conversation. The disclaimer is shown once at start; when the guard finds
a red flag in the user's messages its emergency guidance is printed before the model's answer. The history keeps
the model's own words (not the guard's text), so the model is never fed its own boilerplate.
"""

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from wenzhen import safety
from wenzhen.generation import ChatEngine, ChatResult, GenerationSettings
from wenzhen.models import Message

COMMANDS_HELP = (
    "命令 commands: /clear 清空对话 (forget the conversation) · /system TEXT 设置系统提示并清空 (set the system "
    "prompt and clear; empty removes it) · /history 查看对话 (show the conversation) · /help · /exit 退出"
)
USER_PROMPT = "用户> "
ASSISTANT_LABEL = "助手> "


@dataclass
class Conversation:
    """The system prompt and the turns so far (the system prompt is never trimmed away)."""

    system_prompt: str | None
    turns: list[Message] = field(default_factory=list)

    def messages(self) -> list[Message]:
        """OpenAI-style messages, system first."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, *self.turns]

    def keep(self, messages: list[Message]) -> None:
        """Replace the turns with what survived trimming."""
        self.turns = [m for m in messages if m["role"] != "system"]


def stream_answer(
    engine: ChatEngine, messages: list[Message], settings: GenerationSettings, out: TextIO
) -> ChatResult | None:
    """Print the guard's emergency guidance (if any), then the answer as it streams; None when interrupted."""
    verdict = safety.check(messages)
    out.write(safety.answer_prefix(verdict))
    stop = threading.Event()
    stream = engine.stream(messages, settings, stop_event=stop)
    try:
        for delta in stream:
            out.write(delta)
            out.flush()
    except KeyboardInterrupt:
        stop.set()
        for _ in stream:  # let the engine finish cancelling so the model is free for the next turn
            pass
        out.write("\n[stopped]\n")
        return None
    out.write("\n")
    return stream.result


def format_stats(result: ChatResult, seconds: float, max_context: int) -> str:
    """One line on what the answer cost: prompt and answer tokens against the context window, speed, why it ended."""
    speed = result.completion_tokens / seconds if seconds > 0 else 0.0
    return (
        f"[prompt {result.prompt_tokens} + answer {result.completion_tokens} tokens of {max_context}, "
        f"{speed:.1f} tokens/s, {result.finish_reason}]"
    )


def format_history(conversation: Conversation) -> str:
    """The conversation as the model sees it, one message per line."""
    lines = [f"[{m['role']}] {m['content']}" for m in conversation.messages()]
    return "\n".join(lines) if lines else "(empty)"


def chat_turn(
    engine: ChatEngine,
    conversation: Conversation,
    text: str,
    settings: GenerationSettings,
    out: TextIO,
    show_stats: bool = True,
    label: str = ASSISTANT_LABEL,
) -> ChatResult | None:
    """Ask one question in the conversation; the answer joins the history unless it was interrupted."""
    messages = [*conversation.messages(), {"role": "user", "content": text}]
    kept = engine.trim_history(messages, settings.max_new_tokens)
    if len(kept) < len(messages):
        out.write(f"[dropped the {len(messages) - len(kept)} oldest messages to fit the context window]\n")
    out.write(label)
    started = time.monotonic()
    result = stream_answer(engine, kept, settings, out)
    if result is None:
        return None
    conversation.keep([*kept, {"role": "assistant", "content": result.text}])
    if show_stats:
        out.write(format_stats(result, time.monotonic() - started, engine.max_context) + "\n")
    out.flush()
    return result


def handle_command(line: str, conversation: Conversation, out: TextIO) -> bool:
    """Run a slash command; returns False when the user wants to leave."""
    command, _, argument = line.partition(" ")
    if command in ("/exit", "/quit"):
        return False
    if command == "/clear":
        conversation.turns.clear()
        out.write("[conversation cleared]\n")
    elif command == "/system":
        conversation.system_prompt = argument.strip() or None
        conversation.turns.clear()
        out.write(
            f"[system prompt {'set' if conversation.system_prompt else 'removed'}; conversation cleared]\n"
        )
    elif command == "/history":
        out.write(format_history(conversation) + "\n")
    else:
        out.write(COMMANDS_HELP + "\n")
    return True


def run_repl(
    engine: ChatEngine,
    settings: GenerationSettings,
    system_prompt: str | None,
    read_line: Callable[[str], str] = input,
    out: TextIO | None = None,
    show_stats: bool = True,
) -> int:
    """The interactive loop: disclaimer, then lines until /exit or end of input."""
    out = out or sys.stdout
    out.write(f"{safety.DISCLAIMER}\n{engine.loaded.name} · {COMMANDS_HELP}\n")
    out.flush()
    conversation = Conversation(system_prompt)
    while True:
        try:
            line = read_line(USER_PROMPT).strip()
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n")
            continue
        if not line:
            continue
        if line.startswith("/"):
            if not handle_command(line, conversation, out):
                return 0
            continue
        chat_turn(engine, conversation, line, settings, out, show_stats)


def one_shot(
    engine: ChatEngine,
    prompt: str,
    settings: GenerationSettings,
    system_prompt: str | None,
    out: TextIO,
    notes: TextIO,
) -> ChatResult | None:
    """Answer one prompt (the official `inference_hf.py`): the disclaimer on `notes` (stderr), then emergency
    guidance if needed and the answer on `out`, so a script can capture the answer alone."""
    notes.write(safety.DISCLAIMER + "\n")
    return chat_turn(engine, Conversation(system_prompt), prompt, settings, out, show_stats=False, label="")
