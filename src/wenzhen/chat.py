"""`wenzhen chat`: a terminal chat rendering the consultation policy's events (`wenzhen.consultation`).

Streaming, stop tokens and history trimming are the engine's; the guard, its guidance and the system prompt are
the policy's; this module only reads lines, handles the slash commands, prints the events and keeps the
conversation. The disclaimer is shown once at start (in one-shot mode on stderr) rather than after every answer
of a terminal session; the guard's guidance is printed before the model's answer. The history keeps the turns the
policy hands back (the model's own words, not the guard's text), so the model is never fed its own boilerplate.
"""

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from wenzhen.consultation import (
    ConsultationPolicy,
    FinalEvent,
    GuidanceEvent,
    StopSwitch,
    TextDeltaEvent,
    plain_text,
)
from wenzhen.generation import ChatEngine, GenerationSettings
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
    policy: ConsultationPolicy, messages: list[Message], settings: GenerationSettings, out: TextIO
) -> FinalEvent | None:
    """Print the guidance (if the guard fired), then the answer as it streams; None when interrupted.

    `messages` carry the session's own system prompt, if any (resolved from --system or the config at start, and
    changed by /system), so the policy adds none of its own.
    """
    switch = StopSwitch()
    events = policy.respond(messages, settings, stop=switch, system_prompt="")
    final = None
    try:
        for event in events:
            if isinstance(event, GuidanceEvent | TextDeltaEvent):
                out.write(plain_text(event))
                out.flush()
            elif isinstance(event, FinalEvent):
                final = event
    except KeyboardInterrupt:
        switch.press()
        for _ in events:  # let the engine finish cancelling so the model is free for the next turn
            pass
        out.write("\n[stopped]\n")
        return None
    out.write("\n")
    return final


def format_stats(result: FinalEvent, seconds: float, max_context: int) -> str:
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
    policy: ConsultationPolicy,
    engine: ChatEngine,
    conversation: Conversation,
    text: str,
    settings: GenerationSettings,
    out: TextIO,
    show_stats: bool = True,
    label: str = ASSISTANT_LABEL,
) -> FinalEvent | None:
    """Ask one question in the conversation; the answer joins the history unless it was interrupted."""
    messages = [*conversation.messages(), {"role": "user", "content": text}]
    kept = engine.trim_history(messages, settings.max_new_tokens)
    if len(kept) < len(messages):
        out.write(f"[dropped the {len(messages) - len(kept)} oldest messages to fit the context window]\n")
    out.write(label)
    started = time.monotonic()
    result = stream_answer(policy, kept, settings, out)
    if result is None:
        return None
    conversation.keep([*kept, *result.turns])
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
    policy: ConsultationPolicy,
    engine: ChatEngine,
    settings: GenerationSettings,
    system_prompt: str | None,
    read_line: Callable[[str], str] = input,
    out: TextIO | None = None,
    show_stats: bool = True,
) -> int:
    """The interactive loop: disclaimer, then lines until /exit or end of input."""
    out = out or sys.stdout
    out.write(f"{policy.disclaimer}\n{engine.loaded.name} · {COMMANDS_HELP}\n")
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
        chat_turn(policy, engine, conversation, line, settings, out, show_stats)


def one_shot(
    policy: ConsultationPolicy,
    engine: ChatEngine,
    prompt: str,
    settings: GenerationSettings,
    system_prompt: str | None,
    out: TextIO,
    notes: TextIO,
) -> FinalEvent | None:
    """Answer one prompt (the official `inference_hf.py`): the disclaimer on `notes` (stderr), then the guidance
    if the guard fired and the answer on `out`, so a script can capture the answer alone."""
    if policy.disclaimer:
        notes.write(policy.disclaimer + "\n")
    conversation = Conversation(system_prompt)
    return chat_turn(policy, engine, conversation, prompt, settings, out, show_stats=False, label="")
