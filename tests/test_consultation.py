"""The consultation policy's events: order, what joins the conversation, system prompt, batch and stop."""

from pathlib import Path

import pytest

from wenzhen import safety
from wenzhen.consultation import (
    ConsultationPolicy,
    DisclaimerEvent,
    FinalEvent,
    GuidanceEvent,
    StopSwitch,
    TextDeltaEvent,
    answer_text,
)
from wenzhen.generation import ChatEngine, GenerationSettings
from wenzhen.models import load_model
from wenzhen.safety import SafetyConfig

GREEDY = GenerationSettings(max_new_tokens=6, temperature=0)
SITE_SAFETY = SafetyConfig(
    emergency_number="999", disclaimer="本院提示：AI回答仅供参考。", system_prompt="你是本院的问诊助手。"
)
SINGLE_TURN = [
    [{"role": "user", "content": "我爸突然胸口剧痛，满头大汗"}],
    [{"role": "user", "content": "我不想活了，已经攒了一瓶安眠药"}],
    [{"role": "user", "content": "最近总是失眠，白天没精神，该怎么调理？"}],
]
CONVERSATIONS = SINGLE_TURN


@pytest.fixture(scope="module")
def policy(chatglm3_dir: Path) -> ConsultationPolicy:
    engine = ChatEngine(load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu"))
    return ConsultationPolicy(engine, SITE_SAFETY)


def test_events_come_in_order_and_keep_only_the_models_words(policy: ConsultationPolicy) -> None:
    events = list(policy.respond(CONVERSATIONS[0], GREEDY))
    kinds = [type(event) for event in events]
    assert kinds[0] is GuidanceEvent and kinds[-2:] == [DisclaimerEvent, FinalEvent]
    assert set(kinds[1:-2]) == {TextDeltaEvent}
    final = events[-1]
    assert isinstance(final, FinalEvent) and final.completion_tokens == GREEDY.max_new_tokens
    deltas = "".join(e.text for e in events if isinstance(e, TextDeltaEvent))
    assert final.turns == ({"role": "assistant", "content": final.text},) and deltas.strip() == final.text
    assert answer_text(events) == safety.apply(final.verdict, final.text).replace(
        safety.DISCLAIMER, SITE_SAFETY.disclaimer
    )


def test_system_prompt_is_the_configured_one_unless_the_caller_gives_one(policy: ConsultationPolicy) -> None:
    user = [{"role": "user", "content": "头痛"}]
    assert policy.model_messages(user)[0] == {"role": "system", "content": SITE_SAFETY.system_prompt}
    assert policy.model_messages(user, system_prompt="") == user
    own = [{"role": "system", "content": "你是儿科医生"}, *user]
    assert policy.model_messages(own) == own and policy.model_messages(own, system_prompt="x") == own


def test_batch_answers_are_the_streamed_answers(policy: ConsultationPolicy) -> None:
    batch = policy.respond_batch(SINGLE_TURN, GREEDY)
    streamed = [list(policy.respond(messages, GREEDY)) for messages in SINGLE_TURN]
    assert [answer_text(events) for events in batch] == [answer_text(events) for events in streamed]


def test_a_stopped_turn_ends_cancelled(policy: ConsultationPolicy) -> None:
    switch = StopSwitch()
    switch.press()
    final = list(
        policy.respond(SINGLE_TURN[2], GenerationSettings(max_new_tokens=50, temperature=0), stop=switch)
    )[-1]
    assert (
        isinstance(final, FinalEvent) and final.finish_reason == "cancelled" and final.completion_tokens < 50
    )
