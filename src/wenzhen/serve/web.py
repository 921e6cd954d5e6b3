"""Gradio consultation UI (`wenzhen web`): renders the consultation policy's events (`wenzhen.consultation`).

Tabs: 问诊 (streaming chat with history, stop, regenerate, clear, system prompt, sampling sliders, example
questions and, for ChatGLM3, a tool-calling mode that looks drugs up in the shipped table) and 对比 (two models
answer the same question side by side, e.g. base and fine-tuned). The disclaimer is always on screen; an
emergency banner appears when the policy yields guidance, and the same guidance opens the answer. The guard, the
system prompt, the disclaimer and the tool loop are the policy's, the same as in the API, chat and eval safety.

The conversation the model sees is kept in its own state, apart from what is displayed: the display carries
the guard's additions (emergency guidance, disclaimer) and tool-call cards, which must not be fed back to the
model as if it had said them.
"""

import html
import json
from collections.abc import Iterator
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from wenzhen.consultation import (
    ConsultationPolicy,
    DisclaimerEvent,
    FinalEvent,
    GuidanceEvent,
    StopSwitch,
    TextDeltaEvent,
    ToolCallEvent,
    plain_text,
)
from wenzhen.errors import WenzhenError
from wenzhen.generation import ChatEngine, GenerationSettings, warm_up
from wenzhen.serve.access import AccessGuard, accepted_hosts, hostname
from wenzhen.serve.config import ServingConfig
from wenzhen.serve.tools import tool_schemas

Message = dict[str, Any]
STOPPED_MARK = "……（已停止）"

CSS = """
#emergency-banner {border: 3px solid #c62828; background: #ffebee; border-radius: 8px; padding: 8px 14px;}
#emergency-banner * {color: #b71c1c !important;}
#disclaimer {font-size: 0.9em; color: #555;}
body, .gradio-container {font-family: "WenQuanYi Zen Hei", "Noto Sans CJK SC", sans-serif;}
"""


def banner_update(guidance: GuidanceEvent | None) -> Any:
    """The emergency banner: shown with the policy's guidance when the guard fired, hidden otherwise."""
    if guidance is None:
        return gr.update(value="", visible=False)
    lines = "<br>".join(html.escape(line) for line in guidance.text.splitlines())
    return gr.update(value=f"<div role='alert'>{lines}</div>", visible=True)


def tool_card(name: str, arguments: dict[str, Any], observation: str) -> Message:
    """How a tool call is displayed: a collapsible card with the arguments and the tool's answer."""
    body = (
        f"参数：`{json.dumps(arguments, ensure_ascii=False)}`\n\n"
        f"结果：\n```json\n{json.dumps(json.loads(observation), ensure_ascii=False, indent=1)}\n```"
    )
    return {"role": "assistant", "content": body, "metadata": {"title": f"调用工具 {name}"}}


class ConsultationUI:
    """The UI's behaviour, independent of the widgets: each handler takes and returns plain values."""

    def __init__(self, engines: list[ChatEngine], config: ServingConfig) -> None:
        self.engines = engines
        self.config = config
        self.policies = [ConsultationPolicy(e, config.safety, config.max_tool_rounds) for e in engines]
        self._switches: dict[str, StopSwitch] = {}
        self.max_length = max(16, engines[0].max_context // 2)

    @property
    def tools_supported(self) -> bool:
        """Whether the main model's family can call tools."""
        return self.engines[0].family.supports_tools

    def settings(
        self, max_length: float, top_p: float, temperature: float, penalty: float
    ) -> GenerationSettings:
        """Sampling settings from the sliders."""
        return self.config.generation.model_copy(
            update={
                "max_new_tokens": int(max_length),
                "top_p": float(top_p),
                "temperature": float(temperature),
                "repetition_penalty": float(penalty),
            }
        )

    def _new_switch(self, request: gr.Request | None) -> StopSwitch:
        """A fresh stop switch for this browser session's turn (the stop button presses it)."""
        switch = StopSwitch()
        self._switches[getattr(request, "session_hash", None) or "local"] = switch
        return switch

    def stop(self, request: gr.Request) -> None:
        """Stop this session's running generation at the next token."""
        switch = self._switches.get(getattr(request, "session_hash", None) or "local")
        if switch is not None:
            switch.press()

    def answer(
        self,
        side: int,
        system: str,
        conversation: list[Message],
        display: list[Message],
        settings: GenerationSettings,
        use_tools: bool,
        stop: StopSwitch,
    ) -> Iterator[GuidanceEvent | None]:
        """Render the policy's events for one assistant turn of model `side` into `display`, and its turns into
        `conversation`; yields the guidance (or None) after every visible change."""
        engine = self.engines[side]
        tools = tool_schemas() if use_tools and engine.family.supports_tools else None
        guidance: GuidanceEvent | None = None
        prefix, text, disclaimer = (
            "",
            "",
            "",
        )  # prefix: the guidance, until a tool card takes it out of the answer
        display.append({"role": "assistant", "content": ""})
        events = self.policies[side].respond(
            conversation, settings, tools=tools, run_tools=True, stop=stop, system_prompt=system
        )
        for event in events:
            if isinstance(event, GuidanceEvent):
                guidance, prefix = event, plain_text(event)
            elif isinstance(event, TextDeltaEvent):
                text += event.text
            elif isinstance(event, DisclaimerEvent):
                disclaimer = plain_text(event)
            elif isinstance(event, ToolCallEvent):
                assert event.observation is not None
                card = tool_card(event.name, event.arguments, event.observation)
                if prefix:
                    display[-1] = {"role": "assistant", "content": prefix.strip()}
                    display.append(card)
                    prefix = ""
                else:
                    display[-1] = card
                display.append({"role": "assistant", "content": ""})
                yield guidance
                continue
            elif isinstance(event, FinalEvent):
                conversation.extend(event.turns)
                text = text.strip() + (STOPPED_MARK if event.finish_reason == "cancelled" else "")
            display[-1] = {"role": "assistant", "content": prefix + text + disclaimer}
            yield guidance

    def chat(
        self,
        message: str,
        display: list[Message],
        conversation: list[Message],
        system: str,
        max_length: float,
        top_p: float,
        temperature: float,
        penalty: float,
        use_tools: bool,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        """Send the textbox's question and stream the answer."""
        if not message.strip():
            yield display, display, conversation, gr.update(), message
            return
        display = [*display, {"role": "user", "content": message}]
        conversation = [*conversation, {"role": "user", "content": message}]
        yield from self._stream_turn(
            display, conversation, system, (max_length, top_p, temperature, penalty), use_tools, request
        )

    def regenerate(
        self,
        display: list[Message],
        conversation: list[Message],
        system: str,
        max_length: float,
        top_p: float,
        temperature: float,
        penalty: float,
        use_tools: bool,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        """Drop the last answer (with its tool calls) and answer the last question again."""
        last_user = max((i for i, m in enumerate(conversation) if m["role"] == "user"), default=None)
        shown_user = max((i for i, m in enumerate(display) if m["role"] == "user"), default=None)
        if last_user is None or shown_user is None:
            yield display, display, conversation, gr.update(), ""
            return
        display, conversation = display[: shown_user + 1], conversation[: last_user + 1]
        yield from self._stream_turn(
            display, conversation, system, (max_length, top_p, temperature, penalty), use_tools, request
        )

    def _stream_turn(
        self,
        display: list[Message],
        conversation: list[Message],
        system: str,
        sliders: tuple[float, float, float, float],
        use_tools: bool,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        stop = self._new_switch(request)
        settings = self.settings(*sliders)
        try:
            # A user error (e.g. the conversation no longer fits the context) is shown as a Gradio toast.
            for guidance in self.answer(0, system, conversation, display, settings, use_tools, stop):
                yield display, display, conversation, banner_update(guidance), ""
        except WenzhenError as exc:
            raise gr.Error(str(exc)) from None
        finally:
            # Reached too when Gradio cancels this generator (clear, closed tab): end the generation.
            stop.press()

    def clear(self) -> tuple[Any, ...]:
        """Empty conversation, no banner."""
        return [], [], [], gr.update(value="", visible=False), ""

    def compare(
        self,
        question: str,
        system: str,
        max_length: float,
        top_p: float,
        temperature: float,
        penalty: float,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        """Both models answer the same question (one after the other, streaming), side by side."""
        if not question.strip() or len(self.engines) < 2:
            yield gr.update(), gr.update(), gr.update()
            return
        conversation = [{"role": "user", "content": question}]
        columns: list[list[Message]] = [[dict(conversation[0])], [dict(conversation[0])]]
        stop = self._new_switch(request)
        settings = self.settings(max_length, top_p, temperature, penalty)
        try:
            for side in range(2):
                if stop.pressed:
                    break
                for guidance in self.answer(
                    side, system, list(conversation), columns[side], settings, False, stop
                ):
                    yield columns[0], columns[1], banner_update(guidance)
        finally:
            stop.press()


def build_ui(ui: ConsultationUI, names: list[str]) -> gr.Blocks:
    """The Gradio Blocks app."""
    config = ui.config
    with gr.Blocks(title=config.title) as demo:
        gr.Markdown(f"## {config.title}")
        gr.Markdown(f"⚕️ {config.safety.disclaimer}", elem_id="disclaimer")
        banner = gr.HTML(visible=False, elem_id="emergency-banner")
        with gr.Accordion("设置", open=False):
            system = gr.Textbox(
                config.safety.system_prompt, label="系统提示词", lines=3, elem_id="system-prompt"
            )
            with gr.Row():
                default_length = min(config.generation.max_new_tokens, ui.max_length)
                max_length = gr.Slider(1, ui.max_length, default_length, step=1, label="最大生成长度")
                top_p = gr.Slider(0.05, 1.0, config.generation.top_p, step=0.05, label="top_p")
                temperature = gr.Slider(
                    0.0, 2.0, config.generation.temperature, step=0.05, label="temperature"
                )
                penalty = gr.Slider(
                    1.0, 2.0, config.generation.repetition_penalty, step=0.05, label="重复惩罚"
                )
        sliders = [max_length, top_p, temperature, penalty]
        with gr.Tab("问诊", elem_id="tab-chat"):
            display_state = gr.State([])
            conversation_state = gr.State([])
            chatbot = gr.Chatbot(label=names[0], height=460, elem_id="chatbot", buttons=["copy"])
            with gr.Row():
                message = gr.Textbox(
                    placeholder="请描述您的症状或问题……", show_label=False, scale=6, elem_id="question"
                )
                send = gr.Button("发送", variant="primary", scale=1, elem_id="send")
            with gr.Row():
                stop = gr.Button("停止", elem_id="stop")
                regenerate = gr.Button("重新生成", elem_id="regenerate")
                clear = gr.Button("清空", elem_id="clear")
                use_tools = gr.Checkbox(
                    False,
                    label="工具模式（药品查询）",
                    interactive=ui.tools_supported,
                    info=None if ui.tools_supported else "此模型不支持工具调用",
                    elem_id="tools",
                )
            gr.Examples(config.examples, inputs=message, label="示例问题")
        outputs = [chatbot, display_state, conversation_state, banner, message]
        chat_inputs = [message, display_state, conversation_state, system, *sliders, use_tools]
        events = [
            message.submit(ui.chat, chat_inputs, outputs),
            send.click(ui.chat, chat_inputs, outputs),
            regenerate.click(ui.regenerate, chat_inputs[1:], outputs),
        ]
        # The stop button ends the generation through the engine's stop event, so the partial answer is kept
        # and finished (marked as stopped, with the disclaimer) rather than cut off mid-update.
        stop.click(ui.stop)
        clear.click(ui.clear, None, outputs, cancels=events)
        if len(names) > 1:
            with gr.Tab("对比", elem_id="tab-compare"):
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="同一个问题，两个模型分别回答",
                        show_label=False,
                        scale=6,
                        elem_id="compare-question",
                    )
                    ask = gr.Button("对比", variant="primary", scale=1, elem_id="compare-send")
                with gr.Row():
                    left = gr.Chatbot(label=names[0], height=420, elem_id="compare-left")
                    right = gr.Chatbot(label=names[1], height=420, elem_id="compare-right")
            question.submit(ui.compare, [question, system, *sliders], [left, right, banner])
            ask.click(ui.compare, [question, system, *sliders], [left, right, banner])
    return demo


def access_middleware(host: str, config: ServingConfig) -> Middleware:
    """Refuse foreign Hosts (DNS rebinding) and pages of other sites (CSRF): Gradio only withholds CORS headers
    from other origins, which still lets their requests run, and never checks the Host."""
    hosts = accepted_hosts(host, config.access.allowed_hosts)
    return Middleware(
        AccessGuard,
        hosts=hosts,
        origin_allowed=lambda origin: hostname(origin) in hosts,
        host_fix="add it to access.allowed_hosts in --config",
        origin_fix="open the UI at its own address, or add that host to access.allowed_hosts in --config",
    )


def run_web(
    model: str,
    config: ServingConfig,
    *,
    adapter: str | None = None,
    base: str | None = None,
    compare: str | None = None,
    compare_adapter: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    dtype: str | None = None,
) -> None:
    """Load the model(s) and serve the UI until interrupted."""
    from wenzhen.models import load_model

    loaded = [load_model(model, adapter=adapter, base=base, device=device, dtype=dtype)]
    if compare or compare_adapter:
        loaded.append(
            load_model(compare or model, adapter=compare_adapter, base=base, device=device, dtype=dtype)
        )
    names = [m.name for m in loaded]
    if len(names) == 2 and names[0] == names[1]:
        names = [f"A: {names[0]}", f"B: {names[1]}"]
    engines = [ChatEngine(m) for m in loaded]
    ui = ConsultationUI(engines, config)
    demo = build_ui(ui, names)
    # Visitors' answers decode together in each engine's running batch, up to what its KV cache holds; the UI
    # answers only once every step they will use is compiled (ready means ready).
    concurrency = min(engine.max_batch for engine in engines)
    for engine in engines:
        warm_up(engine, concurrency)
    demo.queue(default_concurrency_limit=concurrency)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        show_error=True,
        quiet=True,
        theme=gr.themes.Default(font=["WenQuanYi Zen Hei", "sans-serif"], font_mono=["monospace"]),
        css=CSS,
        footer_links=[],
        app_kwargs={"middleware": [access_middleware(host, config)]},
    )
    print(f"wenzhen web: serving {' vs '.join(names)} on http://{host}:{port}", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()
