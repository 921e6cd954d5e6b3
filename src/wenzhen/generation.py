"""The one generation engine under the chat CLI, the web UI, the API and evaluation.

It owns prompt encoding (through the model family), history trimming, the stop tokens, streaming with correct
UTF-8 boundaries, cancellation and batched generation with left padding. Two decoders sit under it:
transformers' `generate` (dynamic KV cache; the CPU default) and `StaticCacheDecoder` (static KV cache with the
one-token step compiled into a CUDA graph; the GPU default). Both use transformers' own logits processors, so a
setting means the same on either; the streamer hands token ids to our incremental decoder, so a multi-byte
character split across byte-fallback tokens is never emitted half-way.
"""

import collections
import inspect
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

import psutil
import torch
from pydantic import Field
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
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
from wenzhen.models.attention import fuse_qkv_projections, use_grouped_sdpa

log = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"
# The slot KV cache takes at most this share of the GPU memory free after loading (the rest: activations,
# CUDA graphs, the prefill of long prompts), or of the available host memory on CPU.
KV_SHARE_OF_FREE_GPU = 0.6
KV_SHARE_OF_FREE_HOST = 0.25
# Sequences decoded at once at most: beyond this a 6B model's step is no longer bound by reading the weights.
MAX_BATCH = 64
# A decode step reads keys and values up to the longest extent (prompt + answer budget) of its rows, rounded up to
# a window (`window_buckets`), not the whole slot: SDPA's masked kernel walks the keys of one sequence and KV head
# on one thread block, so a batch-1 step over all 8,192 positions of a 6B slot ran at 109 tokens/s on an H200.
MIN_WINDOW = 1024
# Requests that arrive together are prefilled in one forward of at most this many (padded) prompt tokens; the rest
# wait for the next iteration, after a decode step, so the running answers stall for one such forward at most.
PREFILL_TOKENS = 4096
# Prompt lengths `ChatEngine.warm_up` prefills once (where they fit the context), for a fast first answer.
PREFILL_WARM_UP_LENGTHS = (128, 512, 2048)
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


class SlotKVCache:
    """Keys and values of up to `slots` sequences of up to `length` tokens each, one slot per request.

    Why not transformers' `StaticCache`: it writes every row of a batch at the same cache positions, which holds
    for a left-padded batch that starts together but not for requests that join a running batch at different
    lengths. Here each row writes its new key and value at its own position (one indexed store per layer), so the
    rows of one decode step can be at any length. Two modes, set by the batcher before each model call: `prefill`
    writes the prompts of a left-padded batch of requests into their slots (`_PrefillPlan` says which token goes
    where) and attends over the prompts alone; `decode` writes one token per row of slots `0..batch-1` at
    `positions` and attends over the first `len(columns)` positions of the rows' slots (the window: a step never
    reads the unused tail of a slot; the mask hides what a row has not reached). Each slot holds one position more
    than `length`, so that no window is the whole slot: a window over the whole slot is a contiguous view, and the
    compiler specialised the step on that (a recompilation per batch size, 30-60 s each on a 6B model).
    Implements the part of transformers' cache interface their attention layers call (`update`).
    """

    def __init__(
        self, config: Any, slots: int, length: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        layers, kv_heads, head_dim = kv_cache_shape(config)
        shape = (slots, kv_heads, length + 1, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.slots, self.length = slots, length
        self.prefill: _PrefillPlan | None = None
        self.positions: torch.Tensor | None = None
        self.columns: torch.Tensor | None = None

    def mark_static(self) -> None:
        """Tell the compiler the tensors live at fixed addresses (CUDA graphs then read them in place)."""
        for tensor in [*self.keys, *self.values]:
            torch._dynamo.mark_static_address(tensor)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values of layer `layer_idx`; return what the layer attends over."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.prefill is not None:
            plan = self.prefill
            keys[plan.slots, :, plan.targets] = key_states[plan.rows, :, plan.sources]
            values[plan.slots, :, plan.targets] = value_states[plan.rows, :, plan.sources]
            return key_states, value_states
        assert self.positions is not None and self.columns is not None
        batch, window = key_states.shape[0], self.columns.shape[0]
        rows = torch.arange(batch, device=key_states.device)
        keys[rows, :, self.positions] = key_states[:, :, 0]
        values[rows, :, self.positions] = value_states[:, :, 0]
        return keys[:batch, :, :window], values[:batch, :, :window]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Unused by the batcher (it passes positions and masks itself); part of the cache interface."""
        return 0


def kv_cache_shape(config: Any) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a transformers decoder config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes a decode step runs at: powers of two from 2 up to `max_batch`, and `max_batch` itself (1 only
    when there is a single slot).

    Why no bucket of 1: the compiler specialises a dimension of size 1, so a batch-1 step was a second compilation
    (30-60 s of the warm-up for a 6B model), and one sequence decodes as fast in a batch of two (its free row reads
    the same weights: on an H200 a step of 8 rows took 4.56 ms, one of 1 row 4.79 ms)."""
    sizes = [1 << i for i in range(1, max_batch.bit_length()) if 1 << i <= max_batch] or [1]
    return sizes if sizes[-1] == max_batch else [*sizes, max_batch]


def window_buckets(length: int) -> list[int]:
    """Key lengths a decode step attends over: `MIN_WINDOW` times powers of four below `length`, and `length`.

    Few of them on purpose: each is a recorded CUDA graph per batch bucket, and should the compiler specialise on
    a window (the window is compiled as a dynamic size), a recompilation."""
    sizes = [size for size in (MIN_WINDOW << 2 * i for i in range(16)) if size < length]
    return [*sizes, length]


@dataclass
class _PrefillPlan:
    """One forward over the prompts of several requests, left-padded to the longest (so every row's last token is
    the batch's last column, the one whose logits are kept), and where each real token's key and value go: batch
    row `rows[i]`, column `sources[i]` into slot `slots[i]` at position `targets[i]`."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor  # [batch, 1, query, key], True = attend
    rows: torch.Tensor
    sources: torch.Tensor
    slots: torch.Tensor
    targets: torch.Tensor

    @classmethod
    def build(cls, prompts: list[list[int]], slots: list[int], device: torch.device) -> "_PrefillPlan":
        """The plan for `prompts` going into `slots`."""
        width = max(len(prompt) for prompt in prompts)
        pads = torch.tensor([width - len(prompt) for prompt in prompts])
        input_ids = torch.zeros((len(prompts), width), dtype=torch.long)  # id 0 pads; the mask hides it
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        columns = torch.arange(width)
        real = columns[None, :] >= pads[:, None]
        causal = columns[:, None] >= columns[None, :]
        # A padding position attends to itself alone: a query row with no key at all would give NaN.
        mask = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool)[None]
        rows, sources = real.nonzero(as_tuple=True)
        plan = cls(
            input_ids,
            (columns[None, :] - pads[:, None]).clamp(min=0),
            mask[:, None],
            rows,
            sources,
            torch.tensor(slots)[rows],
            sources - pads[rows],
        )
        return cls(*(getattr(plan, name).to(device) for name in plan.__dataclass_fields__))


@dataclass(eq=False)
class _Request:
    """One generation inside the batcher: its prompt, settings and where its tokens go."""

    prompt: list[int]
    settings: GenerationSettings
    stop_ids: frozenset[int]
    stop_event: threading.Event
    out: "queue.Queue[Any]" = field(default_factory=queue.Queue)
    slot: int = -1
    generated: int = 0
    sequence: torch.Tensor | None = None  # prompt + answer on the device, for the repetition penalty
    processors: LogitsProcessorList = field(default_factory=LogitsProcessorList)
    generator: torch.Generator | None = None

    @property
    def group(self) -> tuple[Any, ...] | None:
        """Rows with the same key are chosen together in one batched call; None = on its own (needs its own
        sequence or random generator)."""
        if self.settings.repetition_penalty != 1.0 or self.generator is not None:
            return None
        if self.settings.temperature <= 0:
            return ("greedy",)
        return ("sample", self.settings.temperature, self.settings.top_p)


@dataclass
class _ThreadCall:
    """A function to run on the batcher thread, and where its result goes."""

    function: Callable[[], Any]
    done: "Future[Any]"

    def run(self) -> None:
        try:
            self.done.set_result(self.function())
        except Exception as exc:  # handed to the caller waiting on the future
            self.done.set_exception(exc)


def _prepare_cudagraph_thread() -> None:
    """Give this thread the per-thread state that torch's CUDA-graph trees keep for the thread that imported them.

    Why: `torch._inductor.cudagraph_trees` sets its tree-manager containers at import, on a thread-local object,
    so a compiled step called on any other plain thread fails (`assert torch._C._is_key_in_tls(...)` in `get_obj`,
    torch 2.11); each engine runs its batcher on its own thread (a web UI comparing two models has two). Newer
    torch initialises the state itself, which this leaves alone.
    """
    from torch._inductor import cudagraph_trees

    local = cudagraph_trees.local
    if not hasattr(local, "tree_manager_containers") and not torch._C._is_key_in_tls(
        "tree_manager_containers"
    ):
        local.tree_manager_containers = {}
        local.tree_manager_locks = collections.defaultdict(threading.Lock)


class ContinuousBatcher:
    """Continuous batching over a slot KV cache: requests join the running batch after their prefill and leave
    it when they finish, each with its own settings, stop tokens, stream and cancellation.

    Why our own loop rather than `model.generate`: generate runs one batch from start to end, so a request that
    arrives while another decodes waits for it, and eight patients share one sequence's speed. Here one thread
    owns the model: each iteration chooses the next token of every running row (rows with equal settings in one
    call, through transformers' own logits processors), prefills requests that arrived, launches the next decode
    step for all rows, and only then waits for the chosen tokens on the host, so the GPU computes step n+1 while
    the host streams token n and checks stops (a finished row costs at most one wasted step). On GPU the
    one-token step is compiled with CUDA graphs, one graph per batch-size bucket (`batch_buckets`), the batch
    dimension compiled once as dynamic; on CPU the same loop runs eagerly. Rows keep their slot for their
    lifetime; a step runs over slots `0..bucket-1`, and free slots inside the bucket compute a discarded row.
    """

    def __init__(
        self,
        model: Any,
        slots: int,
        length: int,
        compile_step: bool,
        fuse_qkv: bool = True,
        matmul_decode: bool = False,
    ) -> None:
        self.model = model
        use_grouped_sdpa(model, matmul_decode)
        if fuse_qkv:
            fuse_qkv_projections(model)
        # transformers 5.24 renamed the model's `past_key_values` argument to `cache` (the old name warns).
        self.cache_argument = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )
        self.device = next(model.parameters()).device
        self.slots, self.length = slots, length
        self.buckets = batch_buckets(slots)
        self.windows = window_buckets(length)
        self.cache: SlotKVCache | None = None
        self.compiled = compile_step
        self.step = (
            torch.compile(self._decode_step, mode="reduce-overhead") if compile_step else self._decode_step
        )
        self.top_k = self._sampling_top_k()
        self._incoming: queue.Queue[list[_Request] | _ThreadCall] = queue.Queue()
        self._backlog: collections.deque[_Request] = collections.deque()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.rows: list[_Request | None] = [None] * slots

    # --- the public side: any thread ---

    def submit(self, requests: list[_Request]) -> None:
        """Queue requests; they join the batch together at the next step."""
        self._start_thread()
        self._incoming.put(requests)

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wenzhen-batcher", daemon=True)
                self._thread.start()

    @property
    def active(self) -> int:
        """Rows decoding now."""
        return sum(row is not None for row in self.rows)

    # --- the batcher thread ---

    def _sampling_top_k(self) -> int:
        """The model's top_k, else the 50 that transformers' `generate` applies when a model sets none."""
        top_k = getattr(self.model.generation_config, "top_k", None)
        return TRANSFORMERS_DEFAULT_TOP_K if top_k is None else int(top_k)

    def _allocate(self) -> None:
        dtype = next(self.model.parameters()).dtype
        self.cache = SlotKVCache(self.model.config, self.slots, self.length, dtype, self.device)
        if self.compiled:
            self.cache.mark_static()
        self.tokens = torch.zeros(self.slots, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(self.slots, dtype=torch.long, device=self.device)
        self.columns = torch.arange(self.length + 1, device=self.device)  # + 1: see SlotKVCache

    def _run(self) -> None:
        if self.compiled:
            _prepare_cudagraph_thread()
        with torch.inference_mode():
            if self.cache is None:
                self._allocate()
            pending: tuple[torch.Tensor, list[_Request]] | None = None
            while True:
                try:
                    pending = self._iteration(pending)
                except Exception as exc:  # handed to every caller waiting on a row; the loop serves on
                    self._fail_all(exc)
                    pending = None

    def _iteration(
        self, pending: tuple[torch.Tensor, list[_Request]] | None
    ) -> tuple[torch.Tensor, list[_Request]] | None:
        """Choose tokens from the last step, admit newcomers, launch the next step, then stream and retire."""
        chosen: list[tuple[list[_Request], torch.Tensor]] = []
        if pending is not None:
            logits, launched = pending
            alive = [row for row in launched if self.rows[row.slot] is row]
            if alive:
                chosen.append((alive, self._choose(logits, alive)))
            self.positions[: self._bucket(launched)] += 1
        admitted = self._admit(block=not chosen)
        if admitted:
            chosen.append((admitted, self._prefill(admitted)))
        if not chosen:
            return None
        for rows, tokens in chosen:  # each row's next input is the token just chosen for it
            self.tokens[self._slot_index(rows)] = tokens
        host = [(rows, self._to_host(tokens)) for rows, tokens in chosen]
        copied = self._record()
        running = [row for row in self.rows if row is not None]
        next_pending = self._launch(running) if running else None
        if copied is not None:
            copied.synchronize()
        for rows, tokens in host:
            for row, token in zip(rows, tokens.tolist(), strict=True):
                self._deliver(row, token)
        return next_pending

    def _bucket(self, rows: list[_Request]) -> int:
        needed = max(row.slot for row in rows) + 1
        return next(size for size in self.buckets if size >= needed)

    def _window(self, rows: list[_Request]) -> int:
        needed = max(len(row.prompt) + row.settings.max_new_tokens for row in rows)
        return next((size for size in self.windows if size >= needed), self.length)

    def _slot_index(self, rows: list[_Request]) -> torch.Tensor | slice:
        slots = [row.slot for row in rows]
        if slots == list(range(len(slots))):
            return slice(0, len(slots))
        return torch.tensor(slots, device=self.device)

    def _admit(self, block: bool) -> list[_Request]:
        """Give free slots to waiting requests, oldest first (waiting for one when nothing runs), as many as one
        prefill of `PREFILL_TOKENS` padded tokens takes (at least one)."""
        while True:
            try:
                item = self._incoming.get(block=block and not self._backlog)
            except queue.Empty:
                break
            if isinstance(item, _ThreadCall):
                item.run()
                continue
            self._backlog.extend(item)
            block = False
        for request in [r for r in self._backlog if r.stop_event.is_set()]:
            self._backlog.remove(request)  # cancelled while waiting: never prefilled
            request.out.put(None)
        admitted: list[_Request] = []
        width = 0
        while self._backlog and None in self.rows:
            width = max(width, len(self._backlog[0].prompt))
            if admitted and width * (len(admitted) + 1) > PREFILL_TOKENS:
                break
            request = self._backlog.popleft()
            request.slot = self.rows.index(None)
            self.rows[request.slot] = request
            admitted.append(request)
        return admitted

    def _prefill(self, requests: list[_Request]) -> torch.Tensor:
        """Run the prompts into the requests' slots in one forward; each request's first token.

        Why one forward: requests arriving together (eight patients sending at once) were prefilled one after
        another, so the last one's first token waited for all the others' prompts; one forward over all of them
        reads the weights once and fills the GPU."""
        assert self.cache is not None
        plan = _PrefillPlan.build([r.prompt for r in requests], [r.slot for r in requests], self.device)
        self.cache.prefill = plan
        try:
            logits = (
                self.model(
                    input_ids=plan.input_ids,
                    position_ids=plan.position_ids,
                    attention_mask=plan.mask,
                    **{self.cache_argument: self.cache},
                    use_cache=True,
                    logits_to_keep=1,
                )
                .logits[:, -1, :]
                .float()
            )
        finally:
            self.cache.prefill = None
        for request in requests:
            settings = request.settings
            request.processors = settings.logits_processors(self.top_k)
            if settings.seed is not None:
                request.generator = torch.Generator(self.device).manual_seed(settings.seed)
            if settings.repetition_penalty != 1.0:
                request.sequence = torch.tensor([request.prompt], device=self.device)
        lengths = torch.tensor([len(r.prompt) for r in requests], device=self.device)
        self.positions[self._slot_index(requests)] = lengths
        return self._choose(logits, requests, rows_are_slots=False)

    def _decode_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, columns: torch.Tensor
    ) -> torch.Tensor:
        assert self.cache is not None
        # Free slots inside the bucket count on past their window: keep their discarded row inside it.
        positions = positions.clamp(max=columns.shape[0] - 1)
        mask = columns[None, :] <= positions[:, None]
        self.cache.positions, self.cache.columns = positions, columns
        logits = self.model(
            input_ids=tokens[:, None],
            position_ids=positions[:, None],
            attention_mask=mask[:, None, None, :],
            **{self.cache_argument: self.cache},
            use_cache=True,
            logits_to_keep=1,
        ).logits
        # A graph's outputs are overwritten by its next replay: hand back a copy in fp32 for the processors.
        return logits[:, -1, :].float()

    def _launch(self, rows: list[_Request]) -> tuple[torch.Tensor, list[_Request]]:
        return self._step_at(self._bucket(rows), self._window(rows)), rows

    def _step_at(self, bucket: int, window: int) -> torch.Tensor:
        """One decode step over slots `0..bucket-1`, attending over `window` positions."""
        tokens, positions, columns = self.tokens[:bucket], self.positions[:bucket], self.columns[:window]
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
            # One compilation serves every batch bucket (a bucket of 1 exists only with a single slot) and every
            # window; CUDA graphs are then recorded per (batch bucket, window).
            if bucket > 1:
                torch._dynamo.maybe_mark_dynamic(tokens, 0)
                torch._dynamo.maybe_mark_dynamic(positions, 0)
            torch._dynamo.maybe_mark_dynamic(columns, 0)
        return self.step(tokens, positions, columns)

    def record_graphs(self, max_batch: int, progress: Callable[[str], None] | None) -> None:
        """Record the step's CUDA graphs for every batch bucket that `max_batch` rows need and every window (runs
        on the batcher thread, when no request is decoding: the steps write only into free slots)."""
        if any(row is not None for row in self.rows):
            return
        needed = next((size for size in self.buckets if size >= max_batch), self.buckets[-1])
        for bucket in [size for size in self.buckets if size <= needed]:
            if progress is not None:
                progress(f"warming up: CUDA graphs for batch {bucket} of {needed}, windows {self.windows}")
            for window in self.windows:
                for _ in range(3):  # cudagraph trees: a warm-up run, the recording, a first replay
                    self._step_at(bucket, window)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def call_on_thread(self, function: Callable[[], Any]) -> Any:
        """Run `function` on the batcher thread between two steps (CUDA graphs belong to the thread that recorded
        them) and return its result."""
        done: Future[Any] = Future()
        self._start_thread()
        self._incoming.put(_ThreadCall(function, done))
        return done.result()

    def _choose(
        self, logits: torch.Tensor, rows: list[_Request], rows_are_slots: bool = True
    ) -> torch.Tensor:
        """Next token of each row; `logits` rows are slots (a decode step) or `rows` in order (a prefill)."""
        scores = logits[self._slot_index(rows)] if rows_are_slots else logits
        groups: dict[tuple[Any, ...] | None, list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(row.group, []).append(index)
        if len(groups) == 1 and None not in groups:
            return self._choose_group(scores, rows[0])
        tokens = torch.empty(len(rows), dtype=torch.long, device=self.device)
        for key, members in groups.items():
            if key is None:
                for index in members:
                    tokens[index] = self._choose_own(scores[index : index + 1], rows[index])[0]
            else:
                where = torch.tensor(members, device=self.device)
                tokens[where] = self._choose_group(scores[where], rows[members[0]])
        return tokens

    def _choose_group(self, scores: torch.Tensor, like: _Request) -> torch.Tensor:
        """Rows with the same settings and no per-row state: one batched call (temperature, top-k/p)."""
        if like.settings.temperature <= 0:
            return scores.argmax(dim=-1)
        scores = like.processors(None, scores)  # these warpers ignore input_ids
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)

    def _choose_own(self, scores: torch.Tensor, row: _Request) -> torch.Tensor:
        """A row with its own state: the repetition penalty reads its sequence, a seed its own generator."""
        if row.sequence is not None:
            scores = row.processors(row.sequence, scores)
        elif row.settings.temperature > 0:
            scores = row.processors(None, scores)
        if row.settings.temperature > 0:
            probs = torch.softmax(scores, dim=-1)
            token = torch.multinomial(probs, num_samples=1, generator=row.generator).squeeze(1)
        else:
            token = scores.argmax(dim=-1)
        if row.sequence is not None:
            row.sequence = torch.cat([row.sequence, token[:, None]], dim=1)
        return token

    def _to_host(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.to("cpu", non_blocking=True) if tokens.device.type == "cuda" else tokens

    def _record(self) -> torch.cuda.Event | None:
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    def _deliver(self, row: _Request, token: int) -> None:
        """Stream one token to its request; retire the row when it stops, reaches its budget or is cancelled."""
        if self.rows[row.slot] is not row:
            return
        row.generated += 1
        row.out.put([token])
        if token in row.stop_ids or row.generated >= row.settings.max_new_tokens or row.stop_event.is_set():
            self._retire(row)

    def _retire(self, row: _Request) -> None:
        self.rows[row.slot] = None
        row.out.put(None)

    def _fail_all(self, exc: Exception) -> None:
        for row in self.rows:
            if row is not None:
                self.rows[row.slot] = None
                row.out.put(exc)
                row.out.put(None)


class ChatEngine:
    """Generation for one loaded model."""

    def __init__(
        self,
        loaded: LoadedModel,
        max_context: int | None = None,
        static_cache: bool | None = None,
        max_batch: int | None = None,
        fuse_qkv: bool = True,
        matmul_decode: bool = False,
    ) -> None:
        self.loaded = loaded
        self.fuse_qkv = fuse_qkv
        # Decode attention through two matmuls instead of SDPA (`models.attention.matmul_decode_attention`);
        # opt-in until measured on a GPU (benchmarks/generate_speed.py, variant wenzhen-matmul).
        self.matmul_decode = matmul_decode
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
        # transformers' generate (the path with `static_cache=False`, kept for callers that want it, such as
        # evaluation during training) is not safe to drive from several threads at once: it runs on this one
        # long-lived worker thread.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wenzhen-generate")
        # The default: continuous batching over a slot KV cache, its step compiled into CUDA graphs on GPU.
        self.static_cache = _takes_slot_cache(self.model) if static_cache is None else static_cache
        self.max_batch = max_batch or default_max_batch(self.model, self.max_context)
        self.batcher: ContinuousBatcher | None = None
        self._shrink_said = False

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
        `max_new_tokens` fits the context window; what cannot be dropped stays, and the answer budget then shrinks
        (`answer_budget`). Only a prompt that alone fills the context is refused."""
        kept = list(messages)
        budget = self.max_context - max_new_tokens
        while len(self.encode(kept, tools)) > budget:
            droppable = [i for i, m in enumerate(kept[:-1]) if m["role"] != "system"]
            if not droppable:
                break
            del kept[droppable[0]]
            # Drop a whole exchange: an orphaned assistant answer would confuse the model.
            if droppable[0] < len(kept) - 1 and kept[droppable[0]]["role"] == "assistant":
                del kept[droppable[0]]
        self.answer_budget(len(self.encode(kept, tools)), max_new_tokens)
        return kept

    def answer_budget(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """The answer tokens that fit beside the prompt: `max_new_tokens`, or fewer when the context is short
        (said once per engine in the log); a prompt that leaves no room is refused."""
        room = self.max_context - prompt_tokens
        if room < 1:
            raise WenzhenError(
                f"the message is too long for the context window: {prompt_tokens} prompt tokens of "
                f"{self.max_context}; shorten it"
            )
        if room < max_new_tokens and not self._shrink_said:
            self._shrink_said = True
            log.warning(
                "the answer budget shrinks to what fits the %d-token context window (here %d tokens instead of "
                "max_new_tokens=%d); said once",
                self.max_context,
                room,
                max_new_tokens,
            )
        return min(room, max_new_tokens)

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
        budget = self.answer_budget(len(prompt), settings.max_new_tokens)
        settings = settings.model_copy(update={"max_new_tokens": budget})
        stop_event = stop_event or threading.Event()
        chat_stream = ChatStream(iter(()))
        chat_stream.deltas = self._stream_deltas(chat_stream, prompt, settings, tools, stop_event)
        return chat_stream

    def _start(
        self, prompts: list[list[int]], settings: GenerationSettings, stop_event: threading.Event
    ) -> list["queue.Queue[Any]"]:
        """Start generating each prompt; one queue per prompt receives lists of new ids, an exception if generation
        failed, and None at the end."""
        if self.static_cache:
            if self.batcher is None:
                length = self.max_context
                self.batcher = ContinuousBatcher(
                    self.model,
                    self.max_batch,
                    length,
                    self.device.type == "cuda",
                    self.fuse_qkv,
                    self.matmul_decode,
                )
            stop_ids = frozenset(self.stop_ids)
            requests = [_Request(prompt, settings, stop_ids, stop_event) for prompt in prompts]
            self.batcher.submit(requests)
            return [request.out for request in requests]
        streamer = _IdQueue() if len(prompts) == 1 else None
        done: queue.Queue[Any] = streamer.queue if streamer is not None else queue.Queue()

        def run() -> None:
            try:
                rows = self._generate_with_transformers(prompts, settings, stop_event, streamer)
                if streamer is None:
                    done.put(rows)
            except Exception as exc:  # re-raised in the consuming thread
                done.put(exc)
            if streamer is not None:
                streamer.end()

        self._worker.submit(run)
        if streamer is not None:
            return [done]
        return _split_rows(done, len(prompts))

    def _stream_deltas(
        self,
        chat_stream: ChatStream,
        prompt: list[int],
        settings: GenerationSettings,
        tools: Any,
        stop_event: threading.Event,
    ) -> Iterator[str]:
        (chunks,) = self._start([prompt], settings, stop_event)
        text = _TextDeltas(self._decode)
        emitted = ""
        drained = False
        try:
            for chunk in _id_chunks(chunks):
                delta = text.add(chunk)
                if not emitted:
                    delta = delta.lstrip()
                if delta:
                    yield delta
                    emitted += delta
            drained = True
        finally:
            # The consumer stopped iterating before the end (client gone): stop the generation, free its slot.
            if not drained:
                stop_event.set()
        ids = text.ids
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
        """Answer several conversations at once (they join the running batch together)."""
        settings = settings or GenerationSettings()
        prompts = [self.encode(self.trim_history(c, settings.max_new_tokens)) for c in conversations]
        budget = min(self.answer_budget(len(p), settings.max_new_tokens) for p in prompts)
        settings = settings.model_copy(update={"max_new_tokens": budget})
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
    ) -> list[list[int]]:
        """Each prompt's new ids, up to and including a stop token (the lowest level; batched generation and the
        benchmarks use it)."""
        outputs = []
        for chunks in self._start(prompts, settings, stop_event or threading.Event()):
            outputs.append([token for chunk in _id_chunks(chunks) for token in chunk])
        return outputs

    def warm_up(self, max_batch: int | None = None, progress: Callable[[str], None] | None = None) -> float:
        """Compile the decode step and record its CUDA graphs for every batch-size bucket up to `max_batch`
        (default: all) and every attention window, so that the first real request is as fast as the hundredth;
        seconds taken."""
        started = time.perf_counter()
        if not self.static_cache:
            return 0.0

        def say(line: str) -> None:  # every line with the seconds since the warm-up began
            if progress is not None:
                progress(f"{line} ({time.perf_counter() - started:.0f} s)")

        say("warming up: a first request (compiles the decode step on GPU)")
        prompt = self.encode([{"role": "user", "content": "你好"}])
        settings = GenerationSettings(max_new_tokens=4, temperature=0)
        limit = min(max_batch or self.max_batch, self.max_batch)
        saved, self.stop_ids = self.stop_ids, []  # decode the same number of tokens every time
        try:
            # A real request compiles the step, once for every batch bucket and window.
            self.generate_token_ids([prompt] * min(2, limit), settings)
            batcher = self.batcher
            assert batcher is not None
            if batcher.compiled:
                say("warming up: the decode step is compiled")
                batcher.call_on_thread(lambda: batcher.record_graphs(limit, say))
            say(
                f"warming up: prefills of {', '.join(map(str, PREFILL_WARM_UP_LENGTHS))} tokens where they fit"
            )
            # Prefills of consultation-sized prompts, so that the first real prompt finds the kernels for its size
            # loaded and the allocator grown (the first answer after /health had its first token after 750 ms).
            for length in PREFILL_WARM_UP_LENGTHS:
                if length < self.max_context // 2:
                    ids = (prompt * (length // len(prompt) + 1))[:length]
                    self.generate_token_ids([ids], settings.model_copy(update={"max_new_tokens": 1}))
        finally:
            self.stop_ids = saved
        return time.perf_counter() - started

    @torch.inference_mode()
    def _generate_with_transformers(
        self,
        prompts: list[list[int]],
        settings: GenerationSettings,
        stop_event: threading.Event,
        streamer: BaseStreamer | None,
    ) -> list[list[int]]:
        """Left-padded batch through transformers' `generate` (dynamic KV cache), one batch at a time."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention[row, width - len(prompt) :] = 1
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        output = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            eos_token_id=self.stop_ids or None,
            pad_token_id=self.pad_id,
            stopping_criteria=StoppingCriteriaList([_Cancelled(stop_event)]),
            streamer=streamer,
            **settings.generate_kwargs(),
        )
        return [self._strip_after_stop(row[width:].tolist()) for row in output.cpu()]


class _TextDeltas:
    """The text a growing answer adds, decoding only its last few tokens each time.

    Why: decoding the whole answer at every token costs time growing with its length, per token and per client,
    on the server's one interpreter; here each step decodes the tokens since the last emitted text plus the chunk
    before them (the context a tokenizer needs to place spaces and join byte tokens), as streaming servers do.
    A character split across byte tokens decodes to U+FFFD and waits for its remaining bytes.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] were emitted last time and give the context
        self.read = 0

    def add(self, new_ids: list[int]) -> str:
        """Append ids; the text they complete (may be empty)."""
        self.ids.extend(new_ids)
        before = self.decode(self.ids[self.prefix : self.read])
        after = self.decode(self.ids[self.prefix :])
        if after.endswith(REPLACEMENT_CHAR) or len(after) <= len(before) or not after.startswith(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]


def _id_chunks(chunks: "queue.Queue[Any]") -> Iterator[list[int]]:
    """New ids from a generation's queue until its end, raising its error; lists already waiting are joined, so
    a reader that fell behind (a busy server streaming to many clients) decodes and sends once for several tokens
    instead of once per token."""
    pending: list[int] = []
    while True:
        item = chunks.get() if not pending else _next_waiting(chunks)
        if isinstance(item, list):
            pending += item
            continue
        if pending:
            yield pending
            pending = []
        if item is _NOTHING_WAITING:
            continue
        if isinstance(item, BaseException):
            raise item
        return


_NOTHING_WAITING = object()


def _next_waiting(chunks: "queue.Queue[Any]") -> Any:
    try:
        return chunks.get_nowait()
    except queue.Empty:
        return _NOTHING_WAITING


def _split_rows(done: "queue.Queue[Any]", count: int) -> list["queue.Queue[Any]"]:
    """Per-row queues for a batch generated in one piece: each gets its row (or the error) then None."""
    outcome = done.get()
    queues: list[queue.Queue[Any]] = []
    for index in range(count):
        row: queue.Queue[Any] = queue.Queue()
        row.put(outcome if isinstance(outcome, BaseException) else outcome[index])
        row.put(None)
        queues.append(row)
    return queues


def default_max_batch(model: Any, length: int) -> int:
    """How many sequences of `length` tokens fit in the KV budget: a share of the free GPU memory (or of the
    available host memory on CPU), capped at `MAX_BATCH`."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers"):
        return 1
    layers, kv_heads, head_dim = kv_cache_shape(config)
    parameter = next(model.parameters())
    per_slot = 2 * layers * kv_heads * head_dim * length * parameter.element_size()
    if parameter.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(parameter.device)
        budget = free * KV_SHARE_OF_FREE_GPU
    else:
        budget = psutil.virtual_memory().available * KV_SHARE_OF_FREE_HOST
    return max(1, min(MAX_BATCH, int(budget // per_slot)))


def warm_up(engine: ChatEngine, max_batch: int, out: TextIO = sys.stdout) -> float:
    """`engine.warm_up` with progress lines on `out` and the time it took (what the servers and the chat print
    before they report ready); seconds."""

    def progress(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    seconds = engine.warm_up(max_batch, progress)
    out.write(f"warmed up in {seconds:.1f} s: decode ready for up to {max_batch} concurrent answers\n")
    out.flush()
    return seconds


def _takes_slot_cache(model: Any) -> bool:
    """Whether the model attends over a cache the batcher passes in: not when a prompt-learning adapter (prefix
    tuning) supplies its own past keys and values; those decode through transformers' generate."""
    config = getattr(model, "active_peft_config", None)
    return not bool(getattr(config, "is_prompt_learning", False))
