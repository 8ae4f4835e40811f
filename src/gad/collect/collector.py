"""A teacher collection run: every prompt answered exactly once, resumable, and exported as a training file.

The cache is the source of truth: a response is committed to it the moment it arrives, so a crash, a ``kill -9`` or a
rerun with more prompts only asks for what is missing. The output file is rebuilt from the cache at the end of every
run (atomically), so it is the same whether the run went through in one go or was interrupted and resumed.

Output rows (JSONL): ``id``, ``prompt`` (chat messages), ``teacher_response``, ``metadata`` (model, sample index,
finish reason, token usage, latency, time); :func:`gad.data.load_training_rows` reads it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from gad.api.cache import CacheEntry, TeacherCache
from gad.api.client import ChatClient, ChatResult, RequestFailed, estimate_tokens
from gad.data import MAX_PROMPT_ROW_CHARS, PromptRow, load_prompts
from gad.errors import GadError
from gad.options import check_ranges

logger = logging.getLogger(__name__)

# Openings of a refusal; matched case-insensitively at the start of an answer. Pass "" to keep refusals.
DEFAULT_REFUSAL_REGEX = (
    r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i|i apologi[sz]e, but|i can(no|')t (help|assist|comply|provide|do)"
    r"|i am (not able|unable) to|i'?m (not able|unable) to|as an ai( language model)?,? i)"
)
# Failures that a rerun would meet again; remembered in the cache unless --retry-failed.
PERMANENT_REASONS = frozenset({"bad_request", "content_filter"})
# Longer than any real answer (128k tokens is about 500,000 characters), small enough for the cache and for training.
MAX_ANSWER_CHARS = 1_000_000
# An answer over --max-answer-chars: remembered like a failure (so a rerun does not pay again), counted as dropped.
TOO_LONG = "too_long"


@dataclass
class CollectConfig:
    """Everything a collection run needs; ``gad collect`` options are generated from the fields (:mod:`gad.options`).

    ``api_key`` is used for requests only, never stored or printed. Building one validates it (:class:`GadError`).
    """

    prompts: Path = field(
        metadata={
            "help": "prompt file: JSONL, JSON, Parquet, CSV or a saved datasets folder; a prompt is a string or a "
            "list of chat messages"
        }
    )
    out: Path = field(metadata={"help": "output training file (.jsonl)"})
    model: str = field(metadata={"help": "teacher model name, as the endpoint knows it"})
    base_url: str = field(metadata={"help": "API root, e.g. https://api.openai.com/v1"})
    api_key: str | None = field(
        default=None, repr=False, metadata={"help": "the API key (the CLI reads it from --api-key-env)", "cli": False}
    )
    n: int = field(default=1, metadata={"help": "responses per prompt"})
    concurrency: int = field(default=8, metadata={"help": "requests in flight at most"})
    rpm: float | None = field(default=None, metadata={"help": "requests per minute at most"})
    tpm: float | None = field(default=None, metadata={"help": "tokens per minute at most (estimated before sending)"})
    temperature: float | None = field(default=None, metadata={"help": "sampling temperature (server default)"})
    max_tokens: int | None = field(default=None, metadata={"help": "longest answer in tokens (server default)"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling (server default)"})
    seed: int | None = field(
        default=None,
        metadata={"help": "sampling seed (endpoints that honour it); each answer gets its own, derived from it"},
    )
    system: str | None = field(default=None, metadata={"help": "system prompt added to prompts that have none"})
    cache: Path | None = field(default=None, metadata={"help": "answer cache (default OUT.cache.sqlite)"})
    timeout: float = field(default=120.0, metadata={"help": "seconds per request"})
    max_retries: int = field(default=6, metadata={"help": "retries of a transient failure"})
    backoff_base: float = field(default=0.5, metadata={"help": "first retry delay in seconds, doubled per retry"})
    price_in: float | None = field(default=None, metadata={"help": "USD per million prompt tokens, for the cost"})
    price_out: float | None = field(default=None, metadata={"help": "USD per million completion tokens"})
    dry_run: bool = field(default=False, metadata={"help": "estimate tokens and cost; send nothing"})
    prompt_column: str | None = field(default=None, metadata={"help": "column holding the prompt (default: auto)"})
    id_column: str = field(default="id", metadata={"help": "column holding the prompt id"})
    skip_bad_rows: bool = field(default=False, metadata={"help": "skip and count malformed rows instead of stopping"})
    drop_truncated: bool = field(
        default=True, metadata={"help": "drop answers cut by --max-tokens", "flag": "--keep-truncated", "invert": True}
    )
    drop_empty: bool = field(
        default=True, metadata={"help": "drop empty answers", "flag": "--keep-empty", "invert": True}
    )
    refusal_regex: str | None = field(
        default=DEFAULT_REFUSAL_REGEX,
        metadata={"help": "drop answers matching this (case-insensitive) regex; '' keeps all", "metavar": "REGEX"},
    )
    dedupe: bool = field(
        default=True,
        metadata={"help": "de-duplicate identical prompts", "flag": "--keep-duplicates", "invert": True},
    )
    retry_failed: bool = field(
        default=False,
        metadata={"help": "ask again for prompts that failed for good (e.g. content filter) in an earlier run"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    max_answer_chars: int | None = field(
        default=MAX_ANSWER_CHARS,
        metadata={
            "help": "drop (and count as 'too long') answers longer than this many characters; they are not stored, "
            "and --retry-failed asks for them again"
        },
    )
    max_row_chars: int | None = field(
        default=MAX_PROMPT_ROW_CHARS,
        metadata={"help": "a prompt row longer than this many characters is a bad row (see --skip-bad-rows)"},
    )

    def __post_init__(self) -> None:
        # Library callers pass strings too; the checks and the run need Path methods.
        self.prompts, self.out = Path(self.prompts), Path(self.out)
        self.cache = Path(self.cache) if self.cache is not None else None
        self.refusal_regex = self.refusal_regex or None  # '' (keep all) and None mean the same
        _validate(self)  # acollect() checks again, for a config changed after it was built
        check_ranges(
            self,
            at_least_one=("max_tokens",),
            non_negative=("max_retries", "backoff_base", "price_in", "price_out", "temperature"),
            fraction=("top_p",),
        )

    @property
    def cache_path(self) -> Path:
        return self.cache or self.out.with_name(self.out.name + ".cache.sqlite")

    def sampling_params(self, sample_index: int = 0, prompt: str = "") -> dict[str, Any]:
        """The parameters that, with model, messages and sample index, determine an answer (the cache key).

        With a seed, each (prompt, sample) pair is asked with a seed of its own, derived from ``seed``, the prompt and
        the sample index. One seed for the n samples of a prompt would make an endpoint that honours it answer the same
        n times; one seed for every prompt gives every answer the same random numbers, so that a whole collection
        leans the same way (the persona benchmark's teacher used its persona 29 % to 55 % of the time, depending on
        the seed, over 160 test prompts).
        """
        seed = None if self.seed is None else derived_seed(self.seed, prompt, sample_index)
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p, "seed": seed}


def derived_seed(seed: int, prompt: str, sample_index: int) -> int:
    """A request's seed: stable for (seed, prompt, sample index), unrelated between prompts; 31 bits, which every
    endpoint that takes a seed accepts."""
    digest = hashlib.sha256(f"{seed}\0{sample_index}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


@dataclass
class CollectSummary:
    """What a run did; ``format()`` is the final report printed by the CLI."""

    prompts: int = 0
    requests: int = 0
    answered: int = 0
    from_cache: int = 0
    failed: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    rows_written: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float | None = None
    elapsed_s: float = 0.0
    dry_run: bool = False
    out: str = ""
    cache: str = ""

    @property
    def transient_failures(self) -> int:
        """Failures a rerun may fix (timeouts, 5xx, rate limits that outlasted the retries)."""
        return sum(count for reason, count in self.failed.items() if reason not in PERMANENT_REASONS)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["failed"], data["dropped"] = dict(self.failed), dict(self.dropped)
        return data

    def format(self) -> str:
        if self.dry_run:
            lines = [
                f"dry run: {self.prompts} prompts, {self.requests} requests to send ({self.from_cache} already cached)",
                f"estimated tokens: {self.tokens_in:,} in, up to {self.tokens_out:,} out",
            ]
            if self.cost is not None:
                lines.append(f"estimated cost: at most ${self.cost:,.4f}")
            return "\n".join(lines)
        failed = ", ".join(f"{reason} {count}" for reason, count in sorted(self.failed.items())) or "none"
        dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(self.dropped.items())) or "none"
        lines = [
            f"collected {self.rows_written} rows for {self.prompts} prompts in {self.elapsed_s:.1f} s -> {self.out}",
            f"answered now: {self.answered}, from cache: {self.from_cache}, failed: {failed}",
            f"dropped: {dropped}",
            f"tokens (answered now): {self.tokens_in:,} in, {self.tokens_out:,} out",
        ]
        if self.cost is not None:
            lines.append(f"cost (answered now): ${self.cost:,.4f}")
        return "\n".join(lines)


@dataclass
class _Job:
    key: str
    row: PromptRow
    sample_index: int
    params: dict[str, Any]


def collect(config: CollectConfig) -> CollectSummary:
    """Run a collection to the end and write ``config.out``; raises :class:`GadError` when it cannot go on."""
    return asyncio.run(acollect(config))


async def acollect(config: CollectConfig) -> CollectSummary:
    """The asynchronous form of :func:`collect` (for callers that already run an event loop)."""
    started = time.monotonic()
    _validate(config)
    with _locked(config):
        rows, summary = _load(config)
        jobs = _jobs(config, rows)
        with TeacherCache(config.cache_path) as cache:
            pending = _pending(config, cache, jobs, summary)
            if config.dry_run:
                return _dry_run(config, summary, pending)
            fatal: RequestFailed | None = None
            if pending:
                try:
                    fatal = await _run(config, cache, pending, summary)
                except (asyncio.CancelledError, KeyboardInterrupt):
                    _export(config, cache, jobs, summary)  # Ctrl-C: what arrived is in the output as well as the cache
                    raise
            summary.rows_written = _export(config, cache, jobs, summary)
    summary.elapsed_s = round(time.monotonic() - started, 3)
    if fatal is not None:
        raise GadError(_fatal_message(fatal, config, summary))
    return summary


def _load(config: CollectConfig) -> tuple[list[PromptRow], CollectSummary]:
    """The prompts to answer (system prompt added, de-duplicated) and a summary that counts what was left out."""
    rows, report = load_prompts(
        config.prompts,
        prompt_column=config.prompt_column,
        id_column=config.id_column,
        skip_bad_rows=config.skip_bad_rows,
        max_row_chars=config.max_row_chars,
    )
    summary = CollectSummary(out=str(config.out), cache=str(config.cache_path), dry_run=config.dry_run)
    if report.skipped:
        summary.dropped["bad row"] = len(report.skipped)
        logger.warning("%s", report.summary())
    rows = [_with_system(row, config.system) for row in rows]
    if config.dedupe:
        rows, duplicates = _dedupe(rows)
        if duplicates:
            summary.dropped["duplicate prompt"] = duplicates
    summary.prompts = len(rows)
    return rows, summary


def _jobs(config: CollectConfig, rows: list[PromptRow]) -> list[_Job]:
    """One job per answer wanted, each with its own cache key.

    A prompt kept twice on purpose (``dedupe`` off) takes the next ``n`` sample indices for its second copy, so each
    copy gets an answer of its own and a rerun finds them all cached; first copies keep the keys of a de-duplicated run.
    """
    copies: Counter[str] = Counter()
    jobs: list[_Job] = []
    for row in rows:
        marker = _marker(row)
        first = copies[marker] * config.n
        copies[marker] += 1
        for index in range(config.n):
            params = config.sampling_params(first + index, marker)
            jobs.append(_Job(TeacherCache.key(config.model, row.messages, params, first + index), row, index, params))
    return jobs


def _pending(config: CollectConfig, cache: TeacherCache, jobs: list[_Job], summary: CollectSummary) -> list[_Job]:
    """The jobs to send: not cached and, unless ``retry_failed``, not failed for good in an earlier run."""
    cached = cache.get_many(job.key for job in jobs)
    pending = [job for job in jobs if job.key not in cached]
    summary.from_cache = len(jobs) - len(pending)
    if not config.retry_failed:
        known = cache.get_failures(job.key for job in pending)
        for failure in known.values():
            _count_failure(summary, failure.reason)
        pending = [job for job in pending if job.key not in known]
    summary.requests = len(pending)
    return pending


def _count_failure(summary: CollectSummary, reason: str) -> None:
    if reason == TOO_LONG:
        summary.dropped["too long"] += 1
    else:
        summary.failed[reason] += 1


@contextlib.contextmanager
def _locked(config: CollectConfig) -> Iterator[None]:
    """Hold the output and the cache for this run.

    A second run on the same files (a retry in another terminal) would pay for every answer again, and race this one
    on the output's rename. A dry run writes nothing, so it may look while a run goes on.
    """
    with contextlib.ExitStack() as stack:
        if not config.dry_run:
            stack.enter_context(_lock_file(config.out))
            stack.enter_context(_lock_file(config.cache_path))
        yield


@contextlib.contextmanager
def _lock_file(target: Path) -> Iterator[None]:
    """An exclusive lock on ``TARGET.lock``, which holds the owner's pid while the lock is held."""
    path = target.with_name(target.name + ".lock")
    handle = _acquire(path, target)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: whoever opened it meanwhile sees it gone and opens a new one
        handle.close()  # which releases the lock


def _acquire(path: Path, target: Path) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise GadError(
                f"{target} is in use by another gad collect (pid {holder}); wait for it to finish, or stop it"
            ) from None
        if _still_there(handle, path):
            break
        handle.close()  # the previous holder removed the file between our open and our lock
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _still_there(handle: TextIO, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _validate(config: CollectConfig) -> None:
    if config.n < 1:
        raise GadError(f"--n must be at least 1, got {config.n}")
    if config.concurrency < 1:
        raise GadError(f"--concurrency must be at least 1, got {config.concurrency}")
    for name in ("rpm", "tpm", "timeout"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise GadError(f"--{name} must be positive, got {value}")
    if not config.base_url.startswith(("http://", "https://")):
        raise GadError(f"--base-url must start with http:// or https://, got {config.base_url!r}")
    if config.refusal_regex:
        try:
            re.compile(config.refusal_regex)
        except re.error as error:
            raise GadError(f"--refusal-regex is not a valid regular expression: {error}") from None
    if config.out.suffix != ".jsonl":
        raise GadError(f"--out must be a .jsonl file, got {config.out}")
    for name in ("max_answer_chars", "max_row_chars"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise GadError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _with_system(row: PromptRow, system: str | None) -> PromptRow:
    if not system or row.messages[0]["role"] == "system":
        return row
    return PromptRow(row.id, [{"role": "system", "content": system}, *row.messages], row.record)


def _dedupe(rows: list[PromptRow]) -> tuple[list[PromptRow], int]:
    seen: set[str] = set()
    kept: list[PromptRow] = []
    for row in rows:
        marker = _marker(row)
        if marker not in seen:
            seen.add(marker)
            kept.append(row)
    return kept, len(rows) - len(kept)


def _marker(row: PromptRow) -> str:
    """What makes two prompts the same prompt."""
    return json.dumps(row.messages, sort_keys=True, ensure_ascii=False)


def _dry_run(config: CollectConfig, summary: CollectSummary, pending: list[_Job]) -> CollectSummary:
    summary.tokens_in = sum(estimate_tokens(job.row.messages) for job in pending)
    summary.tokens_out = len(pending) * (config.max_tokens or 1024)
    summary.cost = _cost(config, summary.tokens_in, summary.tokens_out)
    return summary


def _cost(config: CollectConfig, tokens_in: int, tokens_out: int) -> float | None:
    if config.price_in is None and config.price_out is None:
        return None
    return (tokens_in * (config.price_in or 0.0) + tokens_out * (config.price_out or 0.0)) / 1e6


async def _run(
    config: CollectConfig, cache: TeacherCache, pending: list[_Job], summary: CollectSummary
) -> RequestFailed | None:
    """Send every pending job; returns the first fatal failure (auth, wrong URL, unreachable), which stops the run."""
    queue: asyncio.Queue[_Job] = asyncio.Queue()
    for job in pending:
        queue.put_nowait(job)
    fatal: list[RequestFailed] = []
    stop = asyncio.Event()
    bar = tqdm(total=len(pending), desc="collect", unit="req", disable=not config.progress, dynamic_ncols=True)
    started = time.monotonic()

    client = ChatClient(
        config.base_url,
        api_key=config.api_key,
        concurrency=config.concurrency,
        rpm=config.rpm,
        tpm=config.tpm,
        timeout=config.timeout,
        max_retries=config.max_retries,
        backoff_base=config.backoff_base,
    )

    def show() -> None:
        rate = bar.n / max(time.monotonic() - started, 1e-6)
        bar.set_postfix(
            req_s=f"{rate:.1f}",
            tok=f"{summary.tokens_in + summary.tokens_out:,}",
            errors=sum(client.stats.errors.values()),
            refresh=False,
        )

    async def worker() -> None:
        while not stop.is_set():
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                result = await client.complete(
                    job.row.messages,
                    model=config.model,
                    temperature=config.temperature,
                    max_tokens=config.max_tokens,
                    top_p=config.top_p,
                    seed=job.params["seed"],
                )
            except RequestFailed as failed:
                if failed.fatal:
                    fatal.append(failed)
                    stop.set()
                    return
                summary.failed[failed.reason] += 1
                if failed.reason in PERMANENT_REASONS:
                    cache.put_failure(job.key, failed.reason, failed.detail)
                logger.debug("prompt %s failed: %s", job.row.id, failed)
            else:
                _store(config, cache, job, result, summary)
            bar.update(1)
            show()

    workers = [asyncio.create_task(worker()) for _ in range(min(len(pending), config.concurrency * 2))]
    try:
        await _until_done_or_stopped(workers, stop)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await client.aclose()
        bar.close()
    summary.cost = _cost(config, summary.tokens_in, summary.tokens_out)
    return fatal[0] if fatal else None


def _store(config: CollectConfig, cache: TeacherCache, job: _Job, result: ChatResult, summary: CollectSummary) -> None:
    """Cache an answer and count what it cost.

    An answer over ``max_answer_chars`` (a model stuck in a loop) is remembered as a failure instead, so that it bloats
    neither the cache nor the training file, and a rerun does not pay for it again.
    """
    summary.answered += 1
    summary.tokens_in += result.prompt_tokens
    summary.tokens_out += result.completion_tokens
    if _too_long(result.text, config):
        cache.put_failure(job.key, TOO_LONG, f"{len(result.text):,} characters, over --max-answer-chars")
        _count_failure(summary, TOO_LONG)
    else:
        cache.put(job.key, CacheEntry.from_result(result, model=config.model))


def _too_long(text: str, config: CollectConfig) -> bool:
    return config.max_answer_chars is not None and len(text) > config.max_answer_chars


async def _until_done_or_stopped(workers: list[asyncio.Task], stop: asyncio.Event) -> None:
    stopper = asyncio.create_task(stop.wait())
    try:
        pending = set(workers)
        while pending and not stop.is_set():
            done, pending = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stopper)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()
    finally:
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper


def _export(config: CollectConfig, cache: TeacherCache, jobs: list[_Job], summary: CollectSummary) -> int:
    """Write every cached answer of this run's jobs, in prompt order, after the filters; atomically."""
    entries = cache.get_many(job.key for job in jobs)
    refusal = re.compile(config.refusal_regex, re.IGNORECASE) if config.refusal_regex else None
    config.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = config.out.with_name(config.out.name + ".tmp")
    written = 0
    with temporary.open("w", encoding="utf-8") as handle:
        for job in jobs:
            entry = entries.get(job.key)
            if entry is None:
                continue
            drop = _drop_reason(entry, config, refusal)
            if drop:
                summary.dropped[drop] += 1
                continue
            row_id = job.row.id if config.n == 1 else f"{job.row.id}#{job.sample_index}"
            record = {
                "id": row_id,
                "prompt": job.row.messages,
                "teacher_response": entry.text,
                "metadata": {
                    "prompt_id": job.row.id,
                    "sample_index": job.sample_index,
                    "model": config.model,
                    "finish_reason": entry.finish_reason,
                    "prompt_tokens": entry.prompt_tokens,
                    "completion_tokens": entry.completion_tokens,
                    "latency_s": entry.latency_s,
                    "created_at": entry.created_at,
                    "params": {k: v for k, v in job.params.items() if v is not None},
                },
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, config.out)
    return written


def _drop_reason(entry: CacheEntry, config: CollectConfig, refusal: re.Pattern | None) -> str | None:
    if _too_long(entry.text, config):  # cached by an earlier run with a larger limit
        return "too long"
    if config.drop_truncated and entry.finish_reason == "length":
        return "truncated"
    if config.drop_empty and not entry.text.strip():
        return "empty"
    if refusal is not None and refusal.search(entry.text):
        return "refusal"
    return None


def _fatal_message(failed: RequestFailed, config: CollectConfig, summary: CollectSummary) -> str:
    kept = (
        f"; {summary.rows_written} rows already collected are saved in {config.out} "
        f"(cache {config.cache_path}), rerun to resume"
    )
    hints = {
        "auth": "the API key was rejected (HTTP 401); set the right key in the environment variable named by "
        "--api-key-env",
        "forbidden": "access denied (HTTP 403); check the API key's permissions and the model name",
        "not_found": f"{config.base_url}/chat/completions or model '{config.model}' does not exist (HTTP 404); "
        "check --base-url (it usually ends in /v1) and --model",
        "unreachable": f"cannot reach {config.base_url} after {failed.attempts} attempts ({failed.detail}); "
        "check --base-url and that the server is running",
        "not_json": f"{config.base_url}/chat/completions: {failed.detail}",
    }
    return hints.get(failed.reason, str(failed)) + kept
