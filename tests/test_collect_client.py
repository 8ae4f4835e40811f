"""ChatClient against a real HTTP server on loopback that injects faults."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time

import httpx
import pytest
from fault_server import FaultServer

from gad.api.client import ChatClient, RequestFailed, TokenBucket, api_key_for, parse_retry_after
from gad.errors import GadError
from gad.serve import free_port

MESSAGES = [{"role": "user", "content": "hello"}]


def complete(server_url: str, messages=MESSAGES, **client_kwargs):
    async def go():
        kwargs = {"timeout": 1.0, "backoff_base": 0.01, "max_retries": 4, **client_kwargs}
        async with ChatClient(server_url, **kwargs) as client:
            return await client.complete(messages, model="m", temperature=0, max_tokens=50), client.stats

    return asyncio.run(go())


def test_success_parses_text_usage_and_sends_key_in_header_only():
    with FaultServer() as server:
        result, stats = complete(server.base_url, api_key="sk-secret-123")
    assert result.text == "answer: hello"
    assert result.finish_reason == "stop"
    assert result.prompt_tokens == 1 and result.completion_tokens == 2
    assert result.attempts == 1 and stats.requests == 1
    assert server.log[0].authorization == "Bearer sk-secret-123"
    assert server.log[0].body == {"model": "m", "messages": MESSAGES, "temperature": 0, "max_tokens": 50}
    assert "sk-secret" not in repr(ChatClient(server.base_url, api_key="sk-secret-123"))
    assert "sk-secret" not in repr(result)


@pytest.mark.parametrize("fault", ["429", "500", "slow", "drop", "malformed", "empty_choices"])
def test_each_transient_fault_is_retried(fault):
    with FaultServer(fault_first=True, faults=(fault,), slow_seconds=1.3) as server:
        result, stats = complete(server.base_url)
    assert result.text == "answer: hello"
    assert result.attempts == 2
    assert [entry.outcome for entry in server.log] == [fault, "ok"]
    assert stats.retries == 1


def test_retry_after_is_honoured():
    with FaultServer(fault_first=True, faults=("429",), retry_after="0.4") as server:
        started = time.monotonic()
        result, _ = complete(server.base_url)
        elapsed = time.monotonic() - started
    assert result.attempts == 2
    gap = server.log[1].at - server.log[0].at
    assert gap >= 0.38 and elapsed >= 0.38


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (401, {"error": {"message": "Incorrect API key", "code": "invalid_api_key"}}, "auth"),
        (403, {"error": {"message": "forbidden"}}, "forbidden"),
        (404, {"error": {"message": "model not found"}}, "not_found"),
        (400, {"error": {"message": "bad max_tokens", "code": "invalid_value"}}, "bad_request"),
        (400, {"error": {"message": "filtered", "code": "content_filter"}}, "content_filter"),
    ],
)
def test_non_retryable_errors_fail_at_once_with_a_reason(status, body, reason):
    with FaultServer(status=status, error_body=body) as server:
        with pytest.raises(RequestFailed) as caught:
            complete(server.base_url)
    assert caught.value.reason == reason
    assert caught.value.status == status and not caught.value.transient
    assert len(server.log) == 1  # not retried
    assert caught.value.fatal == (reason in {"auth", "forbidden", "not_found"})


def test_retries_are_bounded_and_report_the_last_reason():
    with FaultServer(status=503) as server:
        with pytest.raises(RequestFailed) as caught:
            complete(server.base_url, max_retries=3)
    assert caught.value.reason == "http_503" and caught.value.transient
    assert caught.value.attempts == 4 and len(server.log) == 4


def test_connection_refused_is_unreachable_and_fatal():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(RequestFailed) as caught:
        complete(url, max_retries=2)
    assert caught.value.reason == "unreachable" and caught.value.fatal


def test_concurrency_is_bounded():
    async def go(url):
        async with ChatClient(url, concurrency=3) as client:
            await asyncio.gather(
                *(client.complete([{"role": "user", "content": str(i)}], model="m") for i in range(12))
            )

    with FaultServer(latency=0.05) as server:
        asyncio.run(go(server.base_url))
    assert server.max_in_flight == 3
    assert len(server.log) == 12


def test_requests_per_minute_are_spaced():
    async def go(url):
        async with ChatClient(url, concurrency=8, rpm=600) as client:  # one request every 0.1 s
            await asyncio.gather(*(client.complete([{"role": "user", "content": str(i)}], model="m") for i in range(6)))

    with FaultServer() as server:
        asyncio.run(go(server.base_url))
    stamps = sorted(entry.at for entry in server.log)
    # arrival times jitter on a busy machine, so check the span: 6 requests need at least 5 intervals of 0.1 s
    assert stamps[-1] - stamps[0] >= 0.47, stamps


def test_token_bucket_waits_for_refill():
    async def go():
        bucket = TokenBucket(6000)  # 100 tokens per second
        await bucket.acquire(6000)
        started = time.monotonic()
        await bucket.acquire(20)
        return time.monotonic() - started

    assert 0.15 <= asyncio.run(go()) < 1.0


def test_tokens_per_minute_limit_delays_requests():
    async def go(url):
        # 6000 TPM = 100 tokens/s; each request is estimated at 7 prompt + 3000 output tokens, so the second one
        # must wait for about 14 tokens of refill (0.14 s) while the first is still in flight.
        async with ChatClient(url, concurrency=4, tpm=6000) as client:
            await asyncio.gather(*(client.complete(MESSAGES, model="m", max_tokens=3000) for _ in range(2)))

    with FaultServer(latency=0.4) as server:
        asyncio.run(go(server.base_url))
    stamps = sorted(entry.at for entry in server.log)
    assert stamps[1] - stamps[0] >= 0.1


def test_parse_retry_after_forms():
    assert parse_retry_after(httpx.Headers({"Retry-After": "2"})) == 2.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "Retry-After": "9"})) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after(httpx.Headers({"Retry-After": date})) <= 31
    assert parse_retry_after(httpx.Headers({})) is None
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"})) is None


# ---- reliability: whole-request timeout, pages instead of JSON, where the API key goes ----


def test_timeout_bounds_the_whole_request_against_a_trickling_server():
    # A byte every 0.2 s never trips a per-read timeout of 1 s; the whole answer would take about 20 s.
    with FaultServer(fault_first=True, faults=("trickle",), trickle_seconds=0.2) as server:
        started = time.monotonic()
        result, stats = complete(server.base_url, timeout=1.0)
        elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    assert result.text == "answer: hello" and result.attempts == 2
    assert [entry.outcome for entry in server.log] == ["trickle", "ok"]
    assert stats.errors == {"timeout": 1}


@pytest.mark.parametrize(("page", "kind"), [("html", "HTML"), ("text", "text")])
def test_a_page_instead_of_json_fails_for_good_after_one_retry(page, kind):
    with FaultServer(fault_rate=1.0, faults=(page,)) as server:
        with pytest.raises(RequestFailed) as caught:
            complete(server.base_url, max_retries=6)
    failure = caught.value
    assert len(server.log) == 2 and failure.attempts == 2
    assert failure.reason == "not_json" and failure.fatal and not failure.transient
    assert f"the endpoint returned {kind}, not JSON: check --base-url" in str(failure)


def test_a_single_page_instead_of_json_is_retried():
    with FaultServer(fault_first=True, faults=("html",)) as server:
        result, stats = complete(server.base_url)
    assert result.text == "answer: hello" and result.attempts == 2
    assert stats.errors == {"not_json": 1}


def test_api_key_for_sends_the_default_key_to_https_only(monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-default-123")
    assert api_key_for("https://api.openai.com/v1", None) == "sk-default-123"
    caplog.set_level(logging.INFO, logger="gad.api.client")
    assert api_key_for("http://user:pw@127.0.0.1:8000/v1", None) is None
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.INFO
    message = caplog.records[0].getMessage()
    assert "not sending $OPENAI_API_KEY to 127.0.0.1:8000" in message
    assert "sk-default" not in message and "pw" not in message
    monkeypatch.delenv("OPENAI_API_KEY")
    assert api_key_for("https://api.openai.com/v1", None) is None


def test_api_key_for_uses_a_named_variable_everywhere_and_requires_it(monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-mine")
    assert api_key_for("http://127.0.0.1:8000/v1", "MY_TEACHER_KEY") == "sk-mine"
    assert api_key_for("https://api.openai.com/v1", "MY_TEACHER_KEY") == "sk-mine"
    monkeypatch.delenv("MY_TEACHER_KEY")
    with pytest.raises(GadError, match="MY_TEACHER_KEY"):
        api_key_for("https://api.openai.com/v1", "MY_TEACHER_KEY")


def test_plain_http_endpoint_gets_no_default_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-default-123")
    with FaultServer() as server:
        complete(server.base_url, api_key=api_key_for(server.base_url, None))
    assert [entry.authorization for entry in server.log] == [None]
