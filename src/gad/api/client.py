"""An asynchronous client for OpenAI-compatible ``POST /chat/completions`` endpoints.

Why our own client rather than the ``openai`` SDK: a teacher collection (and the LLM judge) needs guarantees the SDK
does not give together: a *global* bound on requests in flight, requests per minute and tokens per minute shared by
every task, one cool-down for everyone when the server answers 429, malformed or choice-less answers retried like
transient errors, and one documented exception (:class:`RequestFailed`) whose ``reason`` says whether the run can go on.

Usage::

    url = "http://127.0.0.1:8000/v1"
    async with ChatClient(url, api_key=api_key_for(url, None), concurrency=8) as c:
        result = await c.complete([{"role": "user", "content": "Hi"}], model="gpt-4o", temperature=0, max_tokens=64)
        print(result.text, result.finish_reason, result.completion_tokens)

The API key only ever goes into the ``Authorization`` header: it is not kept in results, errors or ``repr``; and
:func:`api_key_for` sends the default ``$OPENAI_API_KEY`` to https endpoints only.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from gad.errors import GadError

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]

# Reasons for which every later request would fail the same way: a collection stops instead of burning its prompts.
FATAL_REASONS = frozenset({"auth", "forbidden", "not_found", "unreachable", "not_json"})
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
CONTENT_FILTER_CODES = ("content_filter", "content_policy_violation", "content_policy", "safety")
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
# A web page or plain text instead of JSON twice in a row is the wrong URL (a UI, a login page), not a glitch.
NOT_JSON_ATTEMPTS = 2


class RequestFailed(Exception):
    """A request that will not succeed: a non-retryable answer, or retries used up.

    ``reason`` is a short code for summaries: ``auth`` (401), ``forbidden`` (403), ``not_found`` (404: wrong URL or
    model), ``bad_request`` (400/422), ``content_filter``, ``http_<status>`` (other 4xx), ``unreachable`` (could not
    connect), ``not_json`` (a 200 answer that is an HTML page or plain text, twice), or, when retries ran out, the
    last transient reason (``rate_limited``, ``http_5xx``, ``timeout``, ``connection``, ``malformed``,
    ``no_choices``). ``transient`` is True for the latter: the same request may succeed later. ``fatal`` says every
    other request would fail the same way.
    """

    def __init__(
        self, reason: str, detail: str = "", *, status: int | None = None, transient: bool = False, attempts: int = 1
    ):
        self.reason, self.detail, self.status, self.transient, self.attempts = (
            reason,
            detail,
            status,
            transient,
            attempts,
        )
        text = f"{reason}: {detail}" if detail else reason
        super().__init__(f"{text} (after {attempts} attempts)" if attempts > 1 else text)

    @property
    def fatal(self) -> bool:
        return self.reason in FATAL_REASONS


class _Retry(Exception):
    """A transient failure of one attempt; ``wait`` is the server's Retry-After, if any."""

    def __init__(self, reason: str, detail: str, *, status: int | None = None, wait: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.status, self.wait = reason, detail, status, wait


@dataclass(frozen=True)
class ChatResult:
    """One assistant answer and what it cost."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model: str = ""
    attempts: int = 1


@dataclass
class ClientStats:
    """Counters for progress bars and summaries (every attempt, not only successes)."""

    requests: int = 0
    succeeded: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def count_error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


class RateLimiter:
    """Requests per minute as even spacing (``60/rpm`` seconds apart), so no one-minute window ever exceeds it.

    Spacing rather than a full bucket: a bucket of ``rpm`` tokens would send a minute's worth at once and trip
    providers that count over shorter windows.
    """

    def __init__(self, rpm: float):
        if rpm <= 0:
            raise ValueError("rpm must be positive")
        self.interval = 60.0 / rpm
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class TokenBucket:
    """Tokens per minute: a bucket of ``tpm`` tokens refilled continuously.

    A request takes its *estimated* tokens (prompt + max output) before it is sent; :meth:`settle` corrects the
    bucket with the real usage afterwards (the bucket may go negative, which delays later requests).
    """

    def __init__(self, tpm: float):
        if tpm <= 0:
            raise ValueError("tpm must be positive")
        self.capacity = float(tpm)
        self.rate = tpm / 60.0
        self._level = float(tpm)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, tokens: int) -> None:
        need = min(float(tokens), self.capacity)
        async with self._lock:  # first come, first served: later requests queue behind a large one
            while True:
                self._refill()
                if self._level >= need:
                    self._level -= need
                    return
                await asyncio.sleep((need - self._level) / self.rate)

    def settle(self, estimated: int, actual: int) -> None:
        self._refill()
        self._level = min(self.capacity, self._level + estimated - actual)


def api_key_for(base_url: str, api_key_env: str | None) -> str | None:
    """The API key to send to ``base_url``.

    A variable named by the user (``--api-key-env``) must be set, and is sent wherever they point it. The default
    ``$OPENAI_API_KEY`` goes to https endpoints only: on plain http (a local server, a proxy, a typo) anyone on the
    path could read it, and such servers rarely need it.
    """
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise GadError(f"environment variable {api_key_env} (named by --api-key-env) is not set or empty")
        return key
    key = os.environ.get(DEFAULT_KEY_ENV) or None
    if key and urlsplit(base_url).scheme != "https":
        logger.info(
            "not sending $%s to %s: it is not https (pass --api-key-env %s to send it anyway)",
            DEFAULT_KEY_ENV,
            urlsplit(base_url).netloc.rpartition("@")[2],  # never credentials written into the URL
            DEFAULT_KEY_ENV,
        )
        return None
    return key


def estimate_tokens(messages: Messages) -> int:
    """A rough prompt token count (4 characters a token plus per-message overhead), for TPM limits and dry runs."""
    return sum(len(m.get("content") or "") // 4 + 4 for m in messages) + 2


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ChatClient:
    """Sends chat requests with bounded concurrency, RPM/TPM limits, retries and a per-request timeout.

    ``base_url`` is the API root that ``/chat/completions`` is appended to (e.g. ``https://api.openai.com/v1``).
    ``timeout`` bounds each attempt as a whole, from sending to the last byte of the answer.
    Retries: 429, 408, 5xx, timeouts, dropped connections, cut-off JSON and answers without choices, up to
    ``max_retries`` extra attempts with exponential backoff (``backoff_base * 2**k``, half of it random jitter, at most
    ``backoff_max``); a ``Retry-After`` from the server is honoured, and pauses every request of this client. A 200
    answer that is not JSON at all (an HTML page, plain text) is retried once, then fails as ``not_json``.
    Use one client for a whole run so the limits are shared; it is an async context manager.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        rpm: float | None = None,
        tpm: float | None = None,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        max_retry_after: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_base, self.backoff_max, self.max_retry_after = backoff_base, backoff_max, max_retry_after
        self.stats = ClientStats()
        self._semaphore = asyncio.Semaphore(concurrency)
        self._rpm = RateLimiter(rpm) if rpm else None
        self._tpm = TokenBucket(tpm) if tpm else None
        self._pause_until = 0.0
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4),
            transport=transport,
        )

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient({self.base_url!r})"

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def complete(
        self,
        messages: Messages,
        *,
        model: str,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ChatResult:
        """One assistant answer to ``messages``; raises :class:`RequestFailed` when it cannot be had.

        Parameters left ``None`` are not sent (the server's defaults apply). ``extra`` adds raw body fields.
        """
        body: dict[str, Any] = {"model": model, "messages": messages}
        for name, value in (("temperature", temperature), ("max_tokens", max_tokens), ("top_p", top_p), ("seed", seed)):
            if value is not None:
                body[name] = value
        if extra:
            body.update(extra)
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        estimated = estimate_tokens(messages) + (max_tokens or 256)
        last: _Retry | None = None
        not_json = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(self._backoff(attempt, last.wait if last else None))
            try:
                return await self._attempt(payload, estimated, attempt + 1)
            except _Retry as retry:
                last = retry
                self.stats.count_error(retry.reason)
                not_json = not_json + 1 if retry.reason == "not_json" else 0
                if not_json >= NOT_JSON_ATTEMPTS:
                    break
                logger.debug("attempt %d failed (%s: %s); retrying", attempt + 1, retry.reason, retry.detail)
            except RequestFailed as failed:
                self.stats.count_error(failed.reason)
                failed.attempts = attempt + 1
                raise
        assert last is not None
        raise _gave_up(last, attempt + 1)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    async def _wait_for_pause(self) -> None:
        while (remaining := self._pause_until - time.monotonic()) > 0:
            await asyncio.sleep(remaining)

    async def _attempt(self, payload: bytes, estimated: int, attempt: int) -> ChatResult:
        await self._wait_for_pause()
        if self._tpm:
            await self._tpm.acquire(estimated)
        async with self._semaphore:
            await self._wait_for_pause()
            if self._rpm:
                await self._rpm.acquire()
            self.stats.requests += 1
            started = time.monotonic()
            try:
                # httpx's timeout applies to each read: a server trickling a byte a second would never trip it.
                async with asyncio.timeout(self.timeout):
                    response = await self._http.post(self.url, content=payload)
            except (httpx.TimeoutException, TimeoutError) as error:
                raise _Retry("timeout", f"no answer within {self.timeout:g} s ({type(error).__name__})") from None
            except httpx.ConnectError as error:
                raise _Retry("connect", f"cannot connect to {self.url} ({error or type(error).__name__})") from None
            except (httpx.TransportError, httpx.DecodingError) as error:
                raise _Retry("connection", f"connection dropped ({error or type(error).__name__})") from None
            latency = time.monotonic() - started
        result = self._parse(response, latency, attempt)
        if self._tpm:
            self._tpm.settle(estimated, result.prompt_tokens + result.completion_tokens)
        self.stats.succeeded += 1
        self.stats.prompt_tokens += result.prompt_tokens
        self.stats.completion_tokens += result.completion_tokens
        return result

    def _parse(self, response: httpx.Response, latency: float, attempt: int) -> ChatResult:
        status = response.status_code
        if status != 200:
            detail = _error_message(response)
            if status == 429 or status in RETRYABLE_STATUS or status >= 500:
                wait = parse_retry_after(response.headers)
                if wait is not None:
                    self._pause_until = max(self._pause_until, time.monotonic() + min(wait, self.max_retry_after))
                reason = "rate_limited" if status == 429 else f"http_{status}"
                raise _Retry(reason, f"HTTP {status} {detail}".strip(), status=status, wait=wait)
            raise RequestFailed(
                _reason_for(status, detail), f"HTTP {status} from {self.url}: {detail}".rstrip(": "), status=status
            )
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _not_json(response) from None
        if not isinstance(data, dict):
            raise _Retry("malformed", "the answer is not a JSON object")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Retry("no_choices", "the answer has no choices")
        choice = choices[0]
        finish = choice.get("finish_reason") or "stop"
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if finish == "content_filter" and not text:
            raise RequestFailed("content_filter", "the provider's content filter withheld the answer")
        if not isinstance(text, str):
            raise _Retry("malformed", "the first choice has no message content")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return ChatResult(
            text=text,
            finish_reason=str(finish),
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
            latency_s=round(latency, 4),
            model=str(data.get("model") or ""),
            attempts=attempt,
        )


def _not_json(response: httpx.Response) -> _Retry:
    """Why a 200 answer could not be parsed: JSON cut short is a glitch; a page or plain text is the wrong endpoint."""
    start = response.content.lstrip()[:1]
    if start in (b"", b"{", b"["):
        return _Retry("malformed", f"the answer is not valid JSON: {response.text[:80]!r}")
    kind = "HTML" if start == b"<" or "html" in response.headers.get("content-type", "") else "text"
    began = " ".join(response.text.split())[:60]
    return _Retry("not_json", f"the endpoint returned {kind}, not JSON: check --base-url (the answer began {began!r})")


def _gave_up(last: _Retry, attempts: int) -> RequestFailed:
    """The failure of a request whose attempts ended on ``last``; only a page instead of JSON is not transient."""
    reason = "unreachable" if last.reason == "connect" else last.reason
    transient = last.reason != "not_json"
    return RequestFailed(reason, last.detail, status=last.status, transient=transient, attempts=attempts)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _error_message(response: httpx.Response) -> str:
    """The server's own error message, shortened: what the user needs to fix a 4xx."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip()[:200]
    error = data.get("error", data.get("detail", data)) if isinstance(data, dict) else data
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        message = error.get("message") or json.dumps(error)[:200]
        return f"{message} [{code}]" if code else str(message)[:200]
    return str(error)[:200]


def _reason_for(status: int, detail: str) -> str:
    if any(code in detail.lower() for code in CONTENT_FILTER_CODES):
        return "content_filter"
    return {401: "auth", 403: "forbidden", 404: "not_found", 400: "bad_request", 422: "bad_request"}.get(
        status, f"http_{status}"
    )
