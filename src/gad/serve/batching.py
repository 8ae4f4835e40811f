"""Generation for ``gad serve-teacher``: chat requests that arrive together share one ``model.generate`` call.

``transformers serve`` generates one request at a time. Its continuous batching (``--continuous-batching``) does run
on CPU and gives the same greedy answers, but it takes ``do_sample``, temperature and top-p from the first request for
the whole server and draws every request from one random stream: a temperature-0 request next to a temperature-0.7 one,
or a request's ``seed``, would not hold. Here every request keeps its own settings:

- requests waiting when the generation thread becomes free (and those arriving soon after, see QUIET_S) are
  left-padded into one batch, decoded greedily by ``model.generate``;
- :class:`RowSampler`, a logits processor, turns each sampling row into a draw from its own temperature / top-k /
  top-p distribution with its own random generator (Gumbel-max: ``argmax(log p + Gumbel noise)`` is a sample from
  ``p``), seeded by the request's ``seed``; so an answer depends on its seed, not on the requests batched with it;
- :class:`RowBudget` stops each row at its own ``max_tokens``.

Batches run on the one generation thread that ``transformers serve`` already uses, so one generation at a time uses
all torch threads; requests this module cannot batch (streaming, stop strings, beam search, sampling warpers other
than temperature / top-k / top-p) run there too, one at a time, exactly as before.

With batching or without (:class:`TeacherGenerateManager`, ``--no-batching``), two guards hold for every request:

- a prompt over ``max_prompt_tokens`` (counted after the chat template) is refused with 413 before it is generated;
- a request whose client has disconnected (:data:`client_gone`, set by the server for each request) is dropped if it
  has not started, and its row stopped (:class:`ClientGone`) if it has: on a CPU an abandoned long answer would
  otherwise hold the one generation thread, and every request behind it, for minutes.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import HTTPException
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cli.serving.utils import GenerateManager

logger = logging.getLogger(__name__)

# Set per request (per row); every other field of the generation config must be the same across a batch.
ROW_FIELDS = frozenset({"do_sample", "temperature", "top_k", "top_p", "max_new_tokens"})
# Applied by generate only when it samples, or ending a row where RowBudget cannot see it: such a request runs alone.
SOLO_FIELDS = ("stop_strings", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff", "guidance_scale")
# Inputs a text-only batch can carry (a multimodal request brings pixel values and the like).
TEXT_INPUTS = frozenset({"input_ids", "attention_mask"})
# Requests sent together reach the generation thread spread over milliseconds (HTTP parsing, chat templates), more on
# a busy machine: a batch waits until none arrived for QUIET_S, and at most MAX_WAIT_S, before it starts.
QUIET_S = 0.02
MAX_WAIT_S = 0.1
MAX_BATCH = 32
# The prompt limit when neither --max-prompt-tokens nor the model's config (max_position_embeddings) gives one.
DEFAULT_MAX_PROMPT_TOKENS = 4096
# The status of an answer nobody reads (the client disconnected), as nginx logs it: "client closed request".
CLIENT_CLOSED = 499

# Set by the server for each chat request (its context is inherited by the handler's task): the event is set once the
# client has disconnected. None outside a request (direct use of a manager): never considered gone.
client_gone: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("gad_client_gone", default=None)


class Refused(HTTPException):
    """An error answer with an OpenAI-style error ``code`` (the server writes it as ``{"error": {...}}``)."""

    def __init__(self, status_code: int, message: str, code: str):
        super().__init__(status_code=status_code, detail=message)
        self.code = code


def disconnected() -> Refused:
    return Refused(CLIENT_CLOSED, "the client disconnected before its answer was ready", "client_disconnected")


@dataclass
class Row:
    """One request of a batch: its prompt tokens, its generation config, and its random generator (None: greedy)."""

    prompt: list[int]
    config: GenerationConfig
    generator: torch.Generator | None = None
    gone: threading.Event | None = None  # set once the row's client has disconnected: the row is stopped


@dataclass
class _Request(Row):
    request_id: str = ""
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = field(default=None, repr=False)


def batchable(config: GenerationConfig) -> bool:
    """Whether a request with this config can share a batch (greedy or plain sampling, one answer, no stop strings)."""
    one_beam = (config.num_beams or 1) == 1 and (config.num_return_sequences or 1) == 1
    plain = config.penalty_alpha is None and config.constraints is None and config.force_words_ids is None
    return one_beam and plain and all(getattr(config, name, None) is None for name in SOLO_FIELDS)


def batch_key(config: GenerationConfig) -> str:
    """Requests with equal keys can share a batch: their configs differ at most in the per-row fields."""
    shared = {name: value for name, value in config.to_dict().items() if name not in ROW_FIELDS}
    return repr(sorted(shared.items()))


def warpers(config: GenerationConfig) -> list[LogitsProcessor]:
    """The temperature / top-k / top-p warpers ``generate`` would apply when sampling with ``config``."""
    out: list[LogitsProcessor] = []
    if config.temperature is not None and config.temperature != 1.0:
        out.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k is not None and config.top_k > 0:
        out.append(TopKLogitsWarper(config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        out.append(TopPLogitsWarper(config.top_p))
    return out


class RowSampler(LogitsProcessor):
    """Makes greedy decoding sample the rows that ask for it, each with its own warpers and generator."""

    def __init__(self, rows: list[Row]):
        self.rows = [
            (index, warpers(row.config), row.generator) for index, row in enumerate(rows) if row.generator is not None
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, row_warpers, generator in self.rows:
            ids, row_scores = input_ids[row : row + 1], scores[row : row + 1]
            for warper in row_warpers:
                row_scores = warper(ids, row_scores)
            log_probs = row_scores.log_softmax(dim=-1)
            # -log(Exp(1)) is Gumbel noise; the clamp keeps a zero draw from turning into +inf.
            noise = torch.empty_like(log_probs).exponential_(generator=generator).clamp_min(1e-20).log().neg()
            scores[row] = (log_probs + noise)[0]
        return scores


class RowBudget(StoppingCriteria):
    """Stops each row once it has ``limits[row]`` new tokens (``generate`` itself knows one limit per batch)."""

    def __init__(self, prompt_length: int, limits: list[int], device: torch.device):
        self.prompt_length = prompt_length
        self.limits = torch.tensor(limits, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_length) >= self.limits


class ClientGone(StoppingCriteria):
    """Stops the rows whose client has disconnected; ``stopped_after[row]`` is how many new tokens the row had then.

    ``gone`` has one event (or None: never gone) per request; a request with several beams or return sequences has
    that many consecutive rows in ``input_ids``, all stopped together."""

    def __init__(self, prompt_length: int, gone: list[threading.Event | None]):
        self.prompt_length, self.gone = prompt_length, gone
        self.stopped_after: dict[int, int] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        for row, event in enumerate(self.gone):
            if row not in self.stopped_after and _is_set(event):
                self.stopped_after[row] = input_ids.shape[1] - self.prompt_length
        stopped = torch.zeros(len(self.gone), dtype=torch.bool)
        stopped[list(self.stopped_after)] = True
        return stopped.repeat_interleave(input_ids.shape[0] // len(self.gone)).to(input_ids.device)


def _is_set(event: threading.Event | None) -> bool:
    return event is not None and event.is_set()


def eos_ids(config: GenerationConfig) -> set[int]:
    eos = config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def generate_batch(model: Any, rows: list[Row]) -> list[list[int]]:
    """The new tokens of each row (up to and including its EOS, at most its ``max_new_tokens``), in one call.

    The rows' configs must have equal :func:`batch_key`; the first one gives the shared settings. A row whose client
    disconnects (``Row.gone``) is stopped there: its answer is what it had by then."""
    limits = [row.config.max_new_tokens for row in rows]
    shared = copy.deepcopy(rows[0].config)
    # Greedy for the whole batch: RowSampler does the sampling, row by row.
    shared.do_sample, shared.temperature, shared.top_k, shared.top_p = False, None, None, None
    shared.max_new_tokens = max(limits)
    eos = eos_ids(shared)
    if shared.pad_token_id is None:
        shared.pad_token_id = min(eos) if eos else 0
    width = max(len(row.prompt) for row in rows)
    gone = ClientGone(width, [row.gone for row in rows])
    input_ids = torch.full((len(rows), width), shared.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):  # left padding: every row's next token comes at the same position
        input_ids[index, width - len(row.prompt) :] = torch.tensor(row.prompt)
        attention_mask[index, width - len(row.prompt) :] = 1
    sequences = model.generate(
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        generation_config=shared,
        logits_processor=LogitsProcessorList([RowSampler(rows)]),
        stopping_criteria=StoppingCriteriaList([RowBudget(width, limits, model.device), gone]),
    )
    return [
        _cut(sequences[index, width:].tolist(), gone.stopped_after.get(index, limit), eos)
        for index, limit in enumerate(limits)
    ]


def _cut(tokens: list[int], limit: int, eos: set[int]) -> list[int]:
    """A row's own answer: after its EOS or its limit, ``generate`` only pads it while other rows go on."""
    tokens = tokens[:limit]
    for position, token in enumerate(tokens):
        if token in eos:
            return tokens[: position + 1]
    return tokens


class TeacherGenerateManager(GenerateManager):
    """``transformers serve``'s one-at-a-time generation manager, with the prompt limit and disconnected clients'
    generations stopped (see the module docstring). ``max_prompt_tokens=None``: the model's context length."""

    def __init__(self, *, max_prompt_tokens: int | None = None):
        super().__init__()
        self.max_prompt_tokens = max_prompt_tokens

    def check_prompt(self, model: Any, inputs: dict) -> None:
        """Refuse (413) a prompt over the limit: generating it would take the generation thread for a long while,
        or fail past the model's context."""
        length = inputs["input_ids"].shape[-1]
        limit = self.max_prompt_tokens or _context_length(model)
        if length > limit:
            raise Refused(
                413,
                f"the prompt is {length} tokens after the chat template (the hidden system prompt included), over "
                f"this server's limit of {limit} tokens (--max-prompt-tokens; the default is the model's context "
                "length): shorten the conversation, or restart gad serve-teacher with a larger --max-prompt-tokens",
                "prompt_too_long",
            )

    def generate_streaming(
        self,
        model: Any,
        processor: Any,
        inputs: dict,
        gen_config: GenerationConfig,
        request_id: str,
        response_parser: Any = None,
    ) -> tuple[asyncio.Queue, Any]:
        # A disconnected streaming client is already handled by transformers serve (its streamer cancels generate).
        self.check_prompt(model, inputs)
        return super().generate_streaming(model, processor, inputs, gen_config, request_id, response_parser)

    async def generate_non_streaming(
        self, model: Any, processor: Any, inputs: dict, gen_config: GenerationConfig, request_id: str
    ) -> tuple[str, int, torch.Tensor]:
        self.check_prompt(model, inputs)
        return await self._generate(model, processor, inputs, gen_config, request_id)

    async def _generate(
        self, model: Any, processor: Any, inputs: dict, gen_config: GenerationConfig, request_id: str
    ) -> tuple[str, int, torch.Tensor]:
        """``GenerateManager.generate_non_streaming``'s generation, with :class:`ClientGone` as a stopping criterion."""
        gone = client_gone.get()
        prompt_length = inputs["input_ids"].shape[-1]
        stop = ClientGone(prompt_length, [gone])
        kwargs = {**inputs, "generation_config": gen_config, "tokenizer": processor}
        kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
        if hasattr(model, "has_talker"):  # audio-capable models need generate's text-only mode
            kwargs["generation_mode"] = "text"
        sequences = await self.async_submit(_generate_unless_gone, model, gone, request_id, kwargs)
        if stop.stopped_after:
            _log_stopped(request_id, stop.stopped_after[0], gen_config.max_new_tokens)
            raise disconnected()
        generated = sequences[0, prompt_length:]
        return processor.decode(generated, skip_special_tokens=True), prompt_length, generated


def _context_length(model: Any) -> int:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None) or DEFAULT_MAX_PROMPT_TOKENS


def _generate_unless_gone(model: Any, gone: threading.Event | None, request_id: str, kwargs: dict) -> Any:
    """``model.generate(**kwargs)`` on the generation thread, unless the client left while the request waited."""
    if _is_set(gone):
        _log_dropped(request_id)
        raise disconnected()
    return model.generate(**kwargs)


def _log_dropped(request_id: str) -> None:
    logger.info("request %s: the client disconnected before its generation started; dropped", request_id)


def _log_stopped(request_id: str, generated: int, limit: int | None) -> None:
    logger.info(
        "request %s: the client disconnected; its generation stopped after %d of at most %s new tokens",
        request_id,
        generated,
        limit,
    )


class BatchedGenerateManager(TeacherGenerateManager):
    """:class:`TeacherGenerateManager`, with non-streaming text requests generated in batches.

    ``seeds`` maps a request id to the request's ``seed`` (the chat handler fills it in): the batch needs it per row,
    where ``transformers serve`` would only reseed the global generator.
    """

    def __init__(
        self,
        *,
        max_prompt_tokens: int | None = None,
        max_batch: int = MAX_BATCH,
        quiet: float = QUIET_S,
        max_wait: float = MAX_WAIT_S,
    ):
        super().__init__(max_prompt_tokens=max_prompt_tokens)
        self.max_batch, self.quiet, self.max_wait = max_batch, quiet, max_wait
        self.seeds: dict[str, int | None] = {}
        self._pending: list[_Request] = []
        self._lock = threading.Lock()

    async def _generate(
        self, model: Any, processor: Any, inputs: dict, gen_config: GenerationConfig, request_id: str
    ) -> tuple[str, int, torch.Tensor]:
        text_only = set(inputs.keys()) <= TEXT_INPUTS and not hasattr(model, "has_talker")  # no audio-capable model
        if not (text_only and inputs["input_ids"].shape[0] == 1 and batchable(gen_config)):
            return await super()._generate(model, processor, inputs, gen_config, request_id)
        loop = asyncio.get_running_loop()
        prompt = inputs["input_ids"][0].tolist()
        generator = self._generator(model, gen_config, self.seeds.get(request_id))
        request = _Request(prompt, gen_config, generator, client_gone.get(), request_id, loop, loop.create_future())
        with self._lock:
            self._pending.append(request)
        self.submit(self._drain, model)  # after the batch running now, on the one generation thread
        generated = await request.future
        text = processor.decode(generated, skip_special_tokens=True)
        return text, len(prompt), torch.tensor(generated, dtype=torch.long)

    @staticmethod
    def _generator(model: Any, config: GenerationConfig, seed: int | None) -> torch.Generator | None:
        if not config.do_sample:
            return None
        generator = torch.Generator(device=model.device)
        # Without a seed, draw one from torch's global generator, so that the server's --seed still fixes a run.
        generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ())))
        return generator

    def _drain(self, model: Any) -> None:
        """Generate what is pending, one batch per group of compatible configs (runs on the generation thread)."""
        groups: dict[str, list[_Request]] = {}
        for request in self._collect():
            groups.setdefault(batch_key(request.config), []).append(request)
        for group in groups.values():
            self._run(model, group)

    def _collect(self) -> list[_Request]:
        """Take up to ``max_batch`` pending requests, after waiting (at most ``max_wait``) until no more arrive."""
        deadline = time.monotonic() + self.max_wait
        seen = -1
        with self._lock:
            count = len(self._pending)
        while 0 < count < self.max_batch and count != seen and time.monotonic() < deadline:
            seen = count
            time.sleep(self.quiet)
            with self._lock:
                count = len(self._pending)
        with self._lock:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        return batch

    def _run(self, model: Any, group: list[_Request]) -> None:
        # Checked as each group starts, not as the batch is collected: the groups before it may have run for minutes.
        waiting = []
        for request in group:
            if _is_set(request.gone):
                _log_dropped(request.request_id)
                request.loop.call_soon_threadsafe(_settle, request.future, None, disconnected())
            else:
                waiting.append(request)
        if not waiting:
            return
        group = waiting
        started = time.perf_counter()
        try:
            outputs = generate_batch(model, group)
        except Exception as error:  # every request of the batch gets the error (a 500), the server goes on
            for request in group:
                request.loop.call_soon_threadsafe(_settle, request.future, None, error)
            return
        logger.info(
            "generated a batch of %d (%d new tokens) in %.2f s",
            len(group),
            sum(map(len, outputs)),
            time.perf_counter() - started,
        )
        for request, output in zip(group, outputs, strict=True):
            if _is_set(request.gone):
                _log_stopped(request.request_id, len(output), request.config.max_new_tokens)
                request.loop.call_soon_threadsafe(_settle, request.future, None, disconnected())
            else:
                request.loop.call_soon_threadsafe(_settle, request.future, output, None)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the request's task was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def install(
    generation_state: Any, *, batching: bool = True, max_prompt_tokens: int | None = None
) -> TeacherGenerateManager:
    """Make ``transformers serve`` use one :class:`BatchedGenerateManager` (``batching=False``: one
    :class:`TeacherGenerateManager`) for sequential (non-CB) generation.

    One manager is enough: ``gad serve-teacher`` pins the server to one model.
    """
    manager_class = BatchedGenerateManager if batching else TeacherGenerateManager
    manager = manager_class(max_prompt_tokens=max_prompt_tokens)
    get_manager = generation_state.get_manager

    def teacher_manager(model_id: str, use_cb: bool = False) -> Any:
        return get_manager(model_id, use_cb=True) if use_cb else manager

    generation_state.get_manager = teacher_manager
    return manager
