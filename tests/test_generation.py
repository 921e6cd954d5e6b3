"""The one generation engine: stop tokens, streaming, cancellation, trimming, batches, through both decoders."""

import threading

import pytest

from wenzhen.errors import WenzhenError
from wenzhen.generation import ChatEngine, GenerationSettings
from wenzhen.models import load_model

GREEDY = GenerationSettings(max_new_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def tiny(chatglm3_dir):
    return load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu")


@pytest.fixture(scope="module", params=[False, True], ids=["generate", "static-cache"])
def engine(tiny, request):
    return ChatEngine(tiny, static_cache=request.param)


@pytest.mark.parametrize(
    "settings",
    [
        GREEDY,
        GenerationSettings(max_new_tokens=20, temperature=0, repetition_penalty=1.3),
        GenerationSettings(max_new_tokens=20, temperature=0.9, top_p=0.7, seed=3),
    ],
    ids=["greedy", "repetition-penalty", "seeded-sampling"],
)
def test_static_cache_decoder_gives_generates_tokens(tiny, settings):
    prompts = [[64790, 64792, 64795, 30910, 13, 42, 17, 99], [64790, 64792, 64795, 30910, 13, 7]]
    dynamic = ChatEngine(tiny, static_cache=False)
    static = ChatEngine(tiny, static_cache=True)
    assert static.generate_token_ids(prompts, settings) == dynamic.generate_token_ids(prompts, settings)
    assert static.decoder is not None and static.decoder.cache_shape == (2, 256)
    # A new batch size gets a new cache; a repeated request reuses it from a clean state.
    for _ in range(2):
        single = static.generate_token_ids(prompts[1:], settings)
        assert single == dynamic.generate_token_ids(prompts[1:], settings)
    assert static.decoder.cache_shape == (1, 256)


def test_stop_ids_are_the_official_three(engine):
    assert engine.stop_ids == [2, 64795, 64797]


def test_stream_concatenates_to_the_final_text(engine):
    stream = engine.stream([{"role": "user", "content": "孩子发烧怎么办"}], GREEDY)
    deltas = list(stream)
    assert len(deltas) > 1
    assert stream.result is not None
    assert "".join(deltas) == stream.result.text
    assert stream.result.completion_tokens == 12 and stream.result.finish_reason == "length"
    assert stream.result.prompt_tokens == 10


def test_greedy_is_deterministic_and_batch_agrees_with_single(engine):
    messages = [{"role": "user", "content": "我头痛"}]
    single = engine.generate(messages, GREEDY)
    assert engine.generate(messages, GREEDY).text == single.text
    batch = engine.generate_batch([messages, [{"role": "user", "content": "孩子发烧三天了怎么办"}]], GREEDY)
    assert batch[0].text == single.text


def test_cancel_stops_generation(engine):
    event = threading.Event()
    stream = engine.stream(
        [{"role": "user", "content": "你好"}], GenerationSettings(max_new_tokens=200), stop_event=event
    )
    for _ in stream:
        event.set()
    assert stream.result is not None
    assert stream.result.finish_reason == "cancelled"
    assert stream.result.completion_tokens < 200


def test_trim_history_drops_oldest_turns_but_keeps_system(engine):
    long_turn = "头痛" * 150
    messages = [{"role": "system", "content": "你是医生"}]
    for _ in range(4):
        messages += [{"role": "user", "content": long_turn}, {"role": "assistant", "content": long_turn}]
    messages.append({"role": "user", "content": "现在怎么办"})
    kept = engine.trim_history(messages, max_new_tokens=64)
    assert kept[0]["role"] == "system" and kept[-1] == messages[-1]
    assert len(kept) < len(messages)
    assert engine.count_prompt_tokens(kept) + 64 <= engine.max_context


def test_a_single_message_too_long_is_a_clear_error(engine):
    with pytest.raises(WenzhenError, match="too long"):
        engine.trim_history([{"role": "user", "content": "痛" * 2000}], max_new_tokens=64)
