"""The one generation engine: stop tokens, streaming, cancellation, trimming, batches, through both decoders."""

import threading

import pytest

from wenzhen import generation
from wenzhen.errors import WenzhenError
from wenzhen.generation import ChatEngine, GenerationSettings, batch_buckets, window_buckets
from wenzhen.models import load_model

GREEDY = GenerationSettings(max_new_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def tiny(chatglm3_dir):
    return load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu")


@pytest.fixture(scope="module", params=[False, True], ids=["generate", "static-cache"])
def engine(tiny, request):
    return ChatEngine(tiny, static_cache=request.param)


PROMPTS = [[64790, 64792, 64795, 30910, 13, 42, 17, 99], [64790, 64792, 64795, 30910, 13, 7]]


@pytest.mark.parametrize(
    "settings",
    [GREEDY, GenerationSettings(max_new_tokens=20, temperature=0, repetition_penalty=1.3)],
    ids=["greedy", "repetition-penalty"],
)
def test_continuous_batching_gives_generates_tokens(tiny, settings):
    dynamic = ChatEngine(tiny, static_cache=False)
    batched = ChatEngine(tiny, static_cache=True, max_batch=4)
    assert batched.generate_token_ids(PROMPTS, settings) == dynamic.generate_token_ids(PROMPTS, settings)
    for _ in range(2):  # a slot reused by the next request starts clean
        assert batched.generate_token_ids(PROMPTS[1:], settings) == dynamic.generate_token_ids(
            PROMPTS[1:], settings
        )


def test_matmul_decode_attention_gives_generates_tokens(chatglm3_dir):
    model = load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu")
    expected = ChatEngine(model, static_cache=False).generate_token_ids(PROMPTS, GREEDY)
    engine = ChatEngine(model, static_cache=True, max_batch=4, matmul_decode=True)
    assert engine.generate_token_ids(PROMPTS, GREEDY) == expected
    assert engine.generate_token_ids(PROMPTS[:1], GREEDY) == expected[:1]


def test_a_request_joining_mid_decode_gets_its_own_answer(tiny):
    reference = ChatEngine(tiny, static_cache=False)
    settings = GenerationSettings(max_new_tokens=40, temperature=0)
    alone = [reference.generate_token_ids([p], settings)[0] for p in PROMPTS]
    engine = ChatEngine(tiny, static_cache=True, max_batch=4)
    engine.stop_ids = []  # decode all 40 tokens, so the first request is still running when the second joins
    (first,) = engine._start([PROMPTS[0]], settings, threading.Event())
    seen = [first.get() for _ in range(5)]
    assert engine.batcher is not None and engine.batcher.active == 1
    second = engine.generate_token_ids([PROMPTS[1]], GenerationSettings(max_new_tokens=12, temperature=0))
    rest = []
    while (chunk := first.get()) is not None:
        rest.append(chunk)
    assert [token for chunk in seen + rest for token in chunk] == alone[0]
    assert second[0] == alone[1][:12]
    assert engine.batcher.active == 0


def _prefill_shapes(model):
    """Record the (rows, width) of every forward over more than one token (a prefill); returns the list and the
    hook's handle."""
    shapes = []

    def record(module, args, kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            shapes.append(tuple(kwargs["input_ids"].shape))

    return shapes, model.register_forward_pre_hook(record, with_kwargs=True)


def test_requests_arriving_together_are_prefilled_in_one_forward(tiny, monkeypatch):
    reference = ChatEngine(tiny, static_cache=False)
    prompts = [*PROMPTS, PROMPTS[0][:5]]
    alone = [reference.generate_token_ids([p], GREEDY)[0] for p in prompts]
    engine = ChatEngine(tiny, static_cache=True, max_batch=4)
    shapes, hook = _prefill_shapes(tiny.model)
    try:
        assert engine.generate_token_ids(prompts, GREEDY) == alone
        assert shapes == [(3, 8)]  # left-padded to the longest prompt
        # Over the token budget, the rest wait for the next iteration (after a decode step), still exact.
        shapes.clear()
        monkeypatch.setattr(generation, "PREFILL_TOKENS", 16)
        assert engine.generate_token_ids(prompts, GREEDY) == alone
        assert shapes == [(2, 8), (1, 5)]
    finally:
        hook.remove()


def test_warm_up_prefills_consultation_sized_prompts_that_fit(tiny):
    engine = ChatEngine(tiny, static_cache=True, max_batch=4)
    shapes, hook = _prefill_shapes(tiny.model)
    try:
        assert engine.warm_up() >= 0
    finally:
        hook.remove()
    fitting = [n for n in generation.PREFILL_WARM_UP_LENGTHS if n < engine.max_context // 2]
    assert fitting and shapes[1:] == [(1, n) for n in fitting]
    assert shapes[0][0] == 2  # the first request: two prompts in one prefill
    assert engine.batcher is not None and engine.batcher.active == 0


def test_each_request_keeps_its_own_settings_and_seed(tiny):
    engine = ChatEngine(tiny, static_cache=True, max_batch=4)
    seeded = GenerationSettings(max_new_tokens=16, temperature=0.9, top_p=0.7, seed=3)
    alone = engine.generate_token_ids(PROMPTS[:1], seeded)
    # Beside a greedy row and an unseeded sampled row, the seeded row draws the same tokens as alone.
    unseeded = seeded.model_copy(update={"seed": None})
    rows = [PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    queues = [
        engine._start([rows[0]], seeded, threading.Event())[0],
        engine._start([rows[1]], GREEDY, threading.Event())[0],
        engine._start([rows[2]], unseeded, threading.Event())[0],
    ]
    answers = []
    for chunks in queues:
        ids = []
        while (chunk := chunks.get()) is not None:
            ids.extend(chunk)
        answers.append(ids)
    assert answers[0] == alone[0]
    assert answers[1] == ChatEngine(tiny, static_cache=False).generate_token_ids(PROMPTS[1:], GREEDY)[0]


def test_more_requests_than_slots_wait_and_all_finish(tiny):
    engine = ChatEngine(tiny, static_cache=True, max_batch=2)
    outputs = engine.generate_token_ids(PROMPTS * 3, GREEDY)
    reference = ChatEngine(tiny, static_cache=False)
    assert outputs == [reference.generate_token_ids([p], GREEDY)[0] for p in PROMPTS * 3]


def test_a_cancelled_request_frees_its_slot(tiny):
    engine = ChatEngine(tiny, static_cache=True, max_batch=2)
    engine.stop_ids = []
    event = threading.Event()
    stream = engine.stream(
        [{"role": "user", "content": "你好"}], GenerationSettings(max_new_tokens=300), stop_event=event
    )
    for _ in stream:
        event.set()
    assert stream.result is not None and stream.result.finish_reason == "cancelled"
    assert engine.batcher is not None and engine.batcher.active == 0


def test_max_batch_defaults_from_the_memory_budget(tiny):
    engine = ChatEngine(tiny)
    assert 1 < engine.max_batch <= 64
    assert batch_buckets(engine.max_batch)[-1] == engine.max_batch
    assert batch_buckets(24) == [2, 4, 8, 16, 24] and batch_buckets(1) == [1] and batch_buckets(2) == [2]
    assert window_buckets(8192) == [1024, 4096, 8192] and window_buckets(512) == [512]


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


def test_the_answer_budget_shrinks_to_what_fits(engine):
    messages = [{"role": "user", "content": "头痛"}]
    prompt = engine.count_prompt_tokens(messages)
    assert engine.trim_history(messages, max_new_tokens=engine.max_context) == messages
    result = engine.generate(messages, GenerationSettings(max_new_tokens=engine.max_context, temperature=0))
    assert result.prompt_tokens + result.completion_tokens <= engine.max_context
    assert engine.answer_budget(prompt, engine.max_context) == engine.max_context - prompt
    with pytest.raises(WenzhenError, match="too long"):
        engine.answer_budget(engine.max_context, 1)
