"""The consultation policy: the one place where the guard, its guidance, the system prompt, the disclaimer and the
tool loop are combined with a model's answer.

`ConsultationPolicy.respond(messages, settings)` yields typed events in a fixed order:

    GuidanceEvent?  (the guard fired: emergency guidance, before any word of the model)
    ToolCallEvent*  (the model called a tool; the policy runs registered tools itself when asked to)
    TextDeltaEvent* (the model's answer as it streams)
    DisclaimerEvent? (the configured disclaimer, after the answer)
    FinalEvent      (the verdict, the turns to keep in the conversation, token counts, why it ended)

`wenzhen chat`, the web UI, the API (streaming and not) and `wenzhen eval safety` only render these events, so
what `eval safety` measures is what is served. The answers come from an `AnswerSource`: the local `ChatEngine`,
or an OpenAI-compatible engine behind `wenzhen api --upstream` (`serve/upstream.py`).
"""

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wenzhen import safety
from wenzhen.generation import ChatResult, ChatStream, GenerationSettings
from wenzhen.models import Message
from wenzhen.serve.tools import call_tool


class AnswerSource(Protocol):
    """What generates answers: `generation.ChatEngine` or `serve.upstream.UpstreamSource`."""

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings | None = None,
        tools: list[dict[str, Any]] | None = None,
        stop_event: threading.Event | None = None,
    ) -> ChatStream:
        """Start generating; iterating yields text deltas, then `result` holds the finished answer."""
        ...

    def generate_batch(
        self, conversations: list[list[Message]], settings: GenerationSettings | None = None
    ) -> list[ChatResult]:
        """Answer several conversations at once."""
        ...


@dataclass(frozen=True)
class GuidanceEvent:
    """The guard fired: this guidance is shown before the answer."""

    text: str
    categories: tuple[str, ...]


@dataclass(frozen=True)
class TextDeltaEvent:
    """The next piece of the model's answer."""

    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    """The model called a tool; `observation` is the tool's JSON answer when the policy ran it, None when the
    caller runs it (the API returns the call to its client)."""

    name: str
    arguments: dict[str, Any]
    observation: str | None


@dataclass(frozen=True)
class DisclaimerEvent:
    """The disclaimer shown after the answer."""

    text: str


@dataclass(frozen=True)
class FinalEvent:
    """The turn is over. `turns` are what joins the model's conversation: the model's own words and tool turns,
    never the guidance or the disclaimer, so the model is not fed boilerplate as if it had said it."""

    verdict: safety.GuardVerdict
    text: str
    turns: tuple[Message, ...]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: (
        str  # "stop", "length", "cancelled", "tool_calls" (a call left to the caller), "tool_rounds"
    )
    tool_call: dict[str, Any] | None = None


ConsultationEvent = GuidanceEvent | TextDeltaEvent | ToolCallEvent | DisclaimerEvent | FinalEvent


class StopSwitch:
    """The stop button of one turn, which may run several generations (tool rounds).

    Each generation gets its own stop event, because an engine may set a finished generation's event itself;
    `pressed` remembers that the user asked to stop, so no further generation of the turn starts.
    """

    def __init__(self) -> None:
        self.pressed = False
        self._event = threading.Event()

    def next_event(self) -> threading.Event:
        """The stop event for the next generation (already set if stop was pressed)."""
        self._event = threading.Event()
        if self.pressed:
            self._event.set()
        return self._event

    def press(self) -> None:
        """Stop the running generation and any later one in this turn."""
        self.pressed = True
        self._event.set()


def plain_text(event: ConsultationEvent) -> str:
    """The event's part of the answer as plain text: guidance and a blank line, the delta, a blank line and the
    disclaimer; nothing for tool calls and the final event. Joined, these are `safety.apply`'s layout."""
    if isinstance(event, GuidanceEvent):
        return f"{event.text}\n\n"
    if isinstance(event, TextDeltaEvent):
        return event.text
    if isinstance(event, DisclaimerEvent):
        return f"\n\n{event.text}"
    return ""


def answer_text(events: Sequence[ConsultationEvent]) -> str:
    """The whole answer as the user reads it."""
    return "".join(plain_text(event) for event in events)


class ConsultationPolicy:
    """The safety settings and the tool loop in front of one `AnswerSource`."""

    def __init__(
        self, source: AnswerSource, config: safety.SafetyConfig | None = None, max_tool_rounds: int = 3
    ) -> None:
        self.source = source
        self.config = config or safety.SafetyConfig()
        self.guard = safety.get_guard(self.config)
        self.max_tool_rounds = max_tool_rounds

    @property
    def disclaimer(self) -> str:
        """The configured disclaimer ('' = none)."""
        return self.config.disclaimer

    def model_messages(self, messages: Sequence[Message], system_prompt: str | None = None) -> list[Message]:
        """The conversation the model sees: the caller's own system message if it has one, else `system_prompt`
        ('' = none), else the configured safety system prompt."""
        if system_prompt is None:
            return safety.with_system_prompt(list(messages), self.config)
        if any(m.get("role") == "system" for m in messages) or not system_prompt.strip():
            return list(messages)
        return [{"role": "system", "content": system_prompt}, *messages]

    def respond(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        *,
        tools: list[dict[str, Any]] | None = None,
        run_tools: bool = False,
        stop: StopSwitch | None = None,
        system_prompt: str | None = None,
    ) -> Iterator[ConsultationEvent]:
        """One assistant turn as events (see the module docstring).

        With `tools` the answer is held back until it is known not to be a tool call (ChatGLM3 only reveals that
        at the end of its turn), so a call's raw text is never shown as an answer. With `run_tools` the policy
        runs registered tools and feeds their results back, up to `max_tool_rounds` calls; otherwise the first
        call ends the turn and is the caller's to run.
        """
        verdict = self.guard.check(messages)
        stop = stop or StopSwitch()
        conversation = self.model_messages(messages, system_prompt)
        turns: list[Message] = []
        prompt_tokens = completion_tokens = 0
        for round_index in range(self.max_tool_rounds + 1 if run_tools else 1):
            # The source is asked first so that an upstream refusal surfaces before anything is shown.
            stream = self.source.stream([*conversation, *turns], settings, tools, stop.next_event())
            if round_index == 0 and verdict.fired:
                yield GuidanceEvent(verdict.emergency_text, verdict.categories)
            for delta in stream:
                if not tools:
                    yield TextDeltaEvent(delta)
            result = stream.result
            assert result is not None
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens
            call = None if result.finish_reason == "cancelled" else result.tool_call
            if call is None:
                if tools and result.text:
                    yield TextDeltaEvent(result.text)
                turns.append({"role": "assistant", "content": result.text})
                yield from self._close(verdict, result.text, turns, prompt_tokens, completion_tokens, result)
                return
            turns.append(
                {
                    "role": "assistant",
                    "metadata": call["name"],
                    "content": json.dumps(call["arguments"], ensure_ascii=False),
                }
            )
            if not run_tools or round_index == self.max_tool_rounds:
                break
            observation = call_tool(call["name"], call["arguments"])
            yield ToolCallEvent(call["name"], call["arguments"], observation)
            turns.append({"role": "observation", "content": observation})
        if run_tools:
            notice = f"（已达到工具调用上限 {self.max_tool_rounds} 次）"
            yield TextDeltaEvent(notice)
            if self.disclaimer:
                yield DisclaimerEvent(self.disclaimer)
            yield FinalEvent(
                verdict, notice, tuple(turns[:-1]), prompt_tokens, completion_tokens, "tool_rounds"
            )
            return
        assert call is not None
        yield ToolCallEvent(call["name"], call["arguments"], None)
        yield FinalEvent(verdict, "", tuple(turns), prompt_tokens, completion_tokens, "tool_calls", call)

    def _close(
        self,
        verdict: safety.GuardVerdict,
        text: str,
        turns: list[Message],
        prompt_tokens: int,
        completion_tokens: int,
        result: ChatResult,
    ) -> Iterator[ConsultationEvent]:
        if self.disclaimer:
            yield DisclaimerEvent(self.disclaimer)
        yield FinalEvent(verdict, text, tuple(turns), prompt_tokens, completion_tokens, result.finish_reason)

    def respond_batch(
        self, conversations: Sequence[Sequence[Message]], settings: GenerationSettings
    ) -> list[list[ConsultationEvent]]:
        """The events of one turn for each conversation, generated together in one batch (no tools)."""
        prompted = [self.model_messages(messages) for messages in conversations]
        results = self.source.generate_batch(prompted, settings)
        answers = []
        for messages, result in zip(conversations, results, strict=True):
            verdict = self.guard.check(messages)
            events: list[ConsultationEvent] = []
            if verdict.fired:
                events.append(GuidanceEvent(verdict.emergency_text, verdict.categories))
            if result.text:
                events.append(TextDeltaEvent(result.text))
            turn = ({"role": "assistant", "content": result.text},)
            events += self._close(
                verdict, result.text, list(turn), result.prompt_tokens, result.completion_tokens, result
            )
            answers.append(events)
        return answers
