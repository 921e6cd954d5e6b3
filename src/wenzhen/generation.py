"""The one generation engine under the chat CLI, the web UI, the API and evaluation.

It owns prompt encoding (through the model family), history trimming, the stop tokens, streaming with correct
UTF-8 boundaries, cancellation and batched generation with left padding. Two decoders sit under it:
transformers' `generate` (dynamic KV cache; the CPU default) and `StaticCacheDecoder` (static KV cache with the
one-token step compiled into a CUDA graph; the GPU default). Both use transformers' own logits processors, so a
setting means the same on either; the streamer hands token ids to our incremental decoder, so a multi-byte
character split across byte-fallback tokens is never emitted half-way.
"""

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StaticCache,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

from wenzhen.config import StrictModel
from wenzhen.errors import WenzhenError
from wenzhen.models import LoadedModel, Message
from wenzhen.models.attention import use_grouped_sdpa

REPLACEMENT_CHAR = "\ufffd"
# Static KV caches are sized in steps of this many tokens, so requests of similar length share one compiled graph.
CACHE_BUCKET = 256
TRANSFORMERS_DEFAULT_TOP_K = 50


class GenerationSettings(StrictModel):
    """Sampling options; temperature 0 means greedy decoding."""

    max_new_tokens: int = Field(512, ge=1, le=32768, description="most tokens to generate")
    temperature: float = Field(0.6, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(0.8, gt=0.0, le=1.0, description="nucleus sampling mass")
    repetition_penalty: float = Field(1.0, ge=0.5, le=2.0, description="1.0 = off")
    seed: int | None = Field(None, description="fixes sampling for reproducible answers")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.generate`."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature > 0:
            kwargs |= {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        else:
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return kwargs

    def logits_processors(self, top_k: int | None) -> LogitsProcessorList:
        """transformers' own processors, in `generate`'s order, for decoders that run their own loop.

        `top_k` is the model's generation-config default, which `generate` applies when sampling.
        """
        processors = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.temperature > 0:
            processors.append(TemperatureLogitsWarper(self.temperature))
            if top_k:
                processors.append(TopKLogitsWarper(top_k))
            if self.top_p < 1.0:
                processors.append(TopPLogitsWarper(self.top_p))
        return processors


@dataclass
class ChatResult:
    """One finished answer."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (a stop token), "length" (max_new_tokens) or "cancelled"
    tool_call: dict[str, Any] | None = None
    raw_text: str = ""


class _Cancelled(StoppingCriteria):
    """Stops generation when the caller sets the event (client disconnected, stop button)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class _IdQueue(BaseStreamer):
    """Receives new token ids from `generate` (the first call carries the prompt, which is skipped)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)


@dataclass
class ChatStream:
    """Iterate to receive text deltas; `result` is set once iteration ends."""

    deltas: Iterator[str]
    result: ChatResult | None = field(default=None)

    def __iter__(self) -> Iterator[str]:
        return self.deltas


class StaticCacheDecoder:
    """Decoding over a static KV cache, the one-token step compiled into a CUDA graph on GPU.

    Why our own loop rather than `model.generate(cache_implementation="static")`: that compiles the same step, but
    its per-token Python (processor and criteria objects, cache and mask bookkeeping, growing-mask shapes) and a
    host sync before every next step kept ChatGLM3-6B at 117 tokens/s at batch 1 on an H100, 49% of the
    weight-streaming roofline (benchmarks/results/generate_speed.md). Here a token costs one graph replay and the
    logits processors, and the host reads token n while the GPU already computes step n+1. The cache is sized in
    `CACHE_BUCKET` steps and kept between requests, and the attention mask is a fixed-size buffer, so shapes (and
    the graph) stay the same; grouped-query attention runs without copying keys and values per query head
    (`wenzhen.models.attention`).
    """

    def __init__(self, model: Any, compile_step: bool) -> None:
        self.model = model
        use_grouped_sdpa(model)
        self.cache: StaticCache | None = None
        self.cache_shape: tuple[int, int] = (0, 0)
        self.compiled = compile_step
        self.step = self._forward_step
        if compile_step:
            self.step = torch.compile(self._forward_step, mode="reduce-overhead")

    def _forward_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache_position: torch.Tensor,
        mask: torch.Tensor,
        cache: StaticCache,
    ) -> torch.Tensor:
        logits = self.model(
            input_ids=tokens,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=cache,
            cache_position=cache_position,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        # A graph's outputs are overwritten by its next replay: hand back a copy in fp32 for the processors.
        return logits[:, -1, :].float()

    def _sampling_top_k(self) -> int:
        """The model's top_k, else the 50 that transformers' `generate` applies when a model sets none."""
        top_k = getattr(self.model.generation_config, "top_k", None)
        return TRANSFORMERS_DEFAULT_TOP_K if top_k is None else int(top_k)

    def _cache_for(self, batch: int, length: int) -> StaticCache:
        size = -(-length // CACHE_BUCKET) * CACHE_BUCKET
        if self.cache is None or self.cache_shape[0] != batch or self.cache_shape[1] < length:
            self.cache = None  # free the old one before allocating
            self.cache = StaticCache(config=self.model.config, max_cache_len=size)
            self.cache_shape = (batch, size)
        else:
            self.cache.reset()
        return self.cache

    def generate(
        self,
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        settings: GenerationSettings,
        stop_ids: list[int],
        pad_id: int,
        stop_event: threading.Event,
        streamer: BaseStreamer | None,
    ) -> torch.Tensor:
        """New tokens [batch, n] for left-padded `input_ids`; rows that stopped early are padded with `pad_id`."""
        batch, width = input_ids.shape
        device = input_ids.device
        cache = self._cache_for(batch, width + settings.max_new_tokens)
        mask = torch.ones((batch, self.cache_shape[1]), dtype=torch.long, device=device)
        mask[:, :width] = attention
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        processors = settings.logits_processors(self._sampling_top_k())
        stops = torch.tensor(stop_ids or [-1], device=device)
        logits = self._forward_step(input_ids, positions, torch.arange(width, device=device), mask, cache)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        sequence = input_ids
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        next_positions = positions[:, -1:] + 1
        cache_position = torch.tensor([width], device=device)
        new_tokens = []
        for step in range(settings.max_new_tokens):
            tokens = self._choose(processors(sequence, logits), settings.temperature > 0)
            tokens = torch.where(finished, pad_id, tokens)
            new_tokens.append(tokens)
            sequence = torch.cat([sequence, tokens[:, None]], dim=1)
            finished = finished | torch.isin(tokens, stops)
            # Queue the token's copy to the host, then the next step, and only then wait for the copy: the GPU
            # computes step n+1 while the host streams token n and checks for a stop (one step may be wasted).
            host_tokens, all_finished, copied = self._to_host(tokens, finished)
            last = step + 1 == settings.max_new_tokens
            if not last:
                logits = self._launch_step(tokens, next_positions, cache_position, mask, cache)
                next_positions = next_positions + 1
                cache_position = cache_position + 1
            if copied is not None:
                copied.synchronize()
            if streamer is not None:
                streamer.put(host_tokens)
            if bool(all_finished) or stop_event.is_set() or last:
                break
        if streamer is not None:
            streamer.end()
        return torch.stack(new_tokens, dim=1)

    @staticmethod
    def _to_host(
        tokens: torch.Tensor, finished: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
        """Start copying the tokens and the all-finished flag to (pinned) host memory; on GPU also an event
        that completes with the copies."""
        if tokens.device.type != "cuda":
            return tokens, finished.all(), None
        host_tokens = tokens.to("cpu", non_blocking=True)
        all_finished = finished.all().to("cpu", non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return host_tokens, all_finished, copied

    def _launch_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache_position: torch.Tensor,
        mask: torch.Tensor,
        cache: StaticCache,
    ) -> torch.Tensor:
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        return self.step(tokens[:, None], positions, cache_position, mask, cache)

    @staticmethod
    def _choose(scores: torch.Tensor, sample: bool) -> torch.Tensor:
        if sample:
            return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        return scores.argmax(dim=-1)


class ChatEngine:
    """Generation for one loaded model."""

    def __init__(
        self, loaded: LoadedModel, max_context: int | None = None, static_cache: bool | None = None
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.family = loaded.family
        config = getattr(self.model, "config", None)
        self.max_context = max_context or int(getattr(config, "max_position_embeddings", 4096) or 4096)
        stops = set(self.family.stop_token_ids(self.tokenizer))
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        stops |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.stop_ids = sorted(stops)
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        )
        # transformers models are not safe to drive from several threads at once, and CUDA-graph replays belong to
        # the thread that recorded them: every generation runs on this one long-lived worker thread.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wenzhen-generate")
        # The static-cache decoder compiles its step into a CUDA graph: measured in benchmarks/generate_speed.py,
        # it is the default on GPU; on CPU, where compilation does not pay, transformers' generate decodes.
        self.static_cache = (self.device.type == "cuda") if static_cache is None else static_cache
        self.decoder: StaticCacheDecoder | None = None

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def encode(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Prompt ids ending with the assistant's turn, through the family's one chat formatter."""
        if not messages:
            raise WenzhenError("a chat request needs at least one message")
        return self.family.encode_prompt(self.tokenizer, messages, tools=tools, add_generation_prompt=True)

    def count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        """Length of the encoded prompt."""
        return len(self.encode(messages, tools))

    def trim_history(
        self, messages: list[Message], max_new_tokens: int, tools: list[dict[str, Any]] | None = None
    ) -> list[Message]:
        """Drop the oldest turns (never system messages, never the last message) until the prompt plus
        `max_new_tokens` fits the context window."""
        kept = list(messages)
        budget = self.max_context - max_new_tokens
        while len(self.encode(kept, tools)) > budget:
            droppable = [i for i, m in enumerate(kept[:-1]) if m["role"] != "system"]
            if not droppable:
                raise WenzhenError(
                    f"the message is too long for the context window ({self.max_context} tokens with "
                    f"{max_new_tokens} for the answer); shorten it or lower max_new_tokens"
                )
            del kept[droppable[0]]
            # Drop a whole exchange: an orphaned assistant answer would confuse the model.
            if droppable[0] < len(kept) - 1 and kept[droppable[0]]["role"] == "assistant":
                del kept[droppable[0]]
        return kept

    def _finish(
        self, raw: str, prompt_tokens: int, ids: list[int], max_new: int, cancelled: bool, tools: Any
    ) -> ChatResult:
        ended_on_stop = bool(ids) and ids[-1] in self.stop_ids
        reason = "cancelled" if cancelled else "stop" if ended_on_stop or len(ids) < max_new else "length"
        tool_call = self.family.parse_tool_call(raw) if tools else None
        completion = len(ids) - (1 if ended_on_stop else 0)
        return ChatResult(raw.strip(), prompt_tokens, completion, reason, tool_call, raw)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i not in self.stop_ids], skip_special_tokens=True)

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings | None = None,
        tools: list[dict[str, Any]] | None = None,
        stop_event: threading.Event | None = None,
    ) -> ChatStream:
        """Start generating; iterate the returned stream for text deltas (leading whitespace dropped)."""
        settings = settings or GenerationSettings()
        messages = self.trim_history(messages, settings.max_new_tokens, tools)
        prompt = self.encode(messages, tools)
        stop_event = stop_event or threading.Event()
        chat_stream = ChatStream(iter(()))
        chat_stream.deltas = self._stream_deltas(chat_stream, prompt, settings, tools, stop_event)
        return chat_stream

    def _stream_deltas(
        self,
        chat_stream: ChatStream,
        prompt: list[int],
        settings: GenerationSettings,
        tools: Any,
        stop_event: threading.Event,
    ) -> Iterator[str]:
        streamer = _IdQueue()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self._generate_token_ids([prompt], settings, stop_event, streamer)
            except BaseException as exc:  # re-raised in the consuming thread below
                errors.append(exc)
                streamer.end()

        worker = self._worker.submit(run)
        ids: list[int] = []
        emitted = ""
        drained = False
        try:
            while (chunk := streamer.queue.get()) is not None:
                ids.extend(chunk)
                text = self._decode(ids).lstrip()
                if text.endswith(REPLACEMENT_CHAR):
                    continue  # a character split across byte tokens: wait for its remaining bytes
                if len(text) > len(emitted) and text.startswith(emitted):
                    yield text[len(emitted) :]
                    emitted = text
            drained = True
        finally:
            # The consumer stopped iterating before the end (client gone): tell generate to stop too.
            if not drained:
                stop_event.set()
            worker.result()
        if errors:
            raise errors[0]
        raw = self._decode(ids)
        cancelled = (
            stop_event.is_set()
            and not (ids and ids[-1] in self.stop_ids)
            and len(ids) < settings.max_new_tokens
        )
        chat_stream.result = self._finish(raw, len(prompt), ids, settings.max_new_tokens, cancelled, tools)
        final = chat_stream.result.text
        if final.startswith(emitted) and len(final) > len(emitted):
            yield final[len(emitted) :]

    def generate(
        self,
        messages: list[Message],
        settings: GenerationSettings | None = None,
        tools: list[dict[str, Any]] | None = None,
        stop_event: threading.Event | None = None,
    ) -> ChatResult:
        """The whole answer at once."""
        chat_stream = self.stream(messages, settings, tools, stop_event)
        for _ in chat_stream:
            pass
        assert chat_stream.result is not None
        return chat_stream.result

    def generate_batch(
        self, conversations: list[list[Message]], settings: GenerationSettings | None = None
    ) -> list[ChatResult]:
        """Answer several conversations in one left-padded batch."""
        settings = settings or GenerationSettings()
        prompts = [self.encode(self.trim_history(c, settings.max_new_tokens)) for c in conversations]
        outputs = self.generate_token_ids(prompts, settings)
        results = []
        for prompt, row in zip(prompts, outputs, strict=True):
            ids = self._strip_after_stop(row)
            results.append(
                self._finish(self._decode(ids), len(prompt), ids, settings.max_new_tokens, False, None)
            )
        return results

    def _strip_after_stop(self, row: list[int]) -> list[int]:
        for position, token in enumerate(row):
            if token in self.stop_ids:
                return row[: position + 1]
        return row

    def generate_token_ids(
        self,
        prompts: list[list[int]],
        settings: GenerationSettings,
        stop_event: threading.Event | None = None,
        streamer: BaseStreamer | None = None,
    ) -> list[list[int]]:
        """Left-pad prompt ids, generate on the engine's worker thread, and return each row's new ids (the lowest
        level; batched generation and the benchmarks use it)."""
        return self._worker.submit(self._generate_token_ids, prompts, settings, stop_event, streamer).result()

    @torch.inference_mode()
    def _generate_token_ids(
        self,
        prompts: list[list[int]],
        settings: GenerationSettings,
        stop_event: threading.Event | None = None,
        streamer: BaseStreamer | None = None,
    ) -> list[list[int]]:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention[row, width - len(prompt) :] = 1
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        if self.static_cache:
            if self.decoder is None:
                self.decoder = StaticCacheDecoder(self.model, compile_step=self.device.type == "cuda")
            new = self.decoder.generate(
                input_ids,
                attention,
                settings,
                self.stop_ids,
                self.pad_id,
                stop_event or threading.Event(),
                streamer,
            )
            return new.cpu().tolist()
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            eos_token_id=self.stop_ids or None,
            pad_token_id=self.pad_id,
            stopping_criteria=StoppingCriteriaList([_Cancelled(stop_event or threading.Event())]),
            streamer=streamer,
            **settings.generate_kwargs(),
        )
        return [row[width:].tolist() for row in output.cpu()]
