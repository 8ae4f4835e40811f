"""A real OpenAI-compatible HTTP server on loopback that injects faults, for tests and the throughput benchmark.

It answers ``POST /v1/chat/completions`` with ``"answer: <last user message>"`` after ``latency`` seconds, and, for a
fraction ``fault_rate`` of requests, misbehaves instead: 429 with Retry-After, 500, an answer slower than the client's
timeout, a dropped connection, malformed JSON, or an answer with no choices. Every request is logged with the hash of
its messages and its outcome, so a test can check that no prompt was answered successfully twice.

Faults that only a test asks for (``faults=...``): ``trickle`` (a valid answer sent one byte every
``trickle_seconds``, so no single read ever times out), ``html`` (a 200 web page) and ``text`` (a 200 plain text).
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "slow", "drop", "malformed", "empty_choices")
EXTRA_FAULTS = ("trickle", "html", "text")
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><form>...</form></body></html>"


def messages_hash(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LogEntry:
    prompt_hash: str
    outcome: str  # "ok" or one of FAULTS or "status_<code>"
    authorization: str | None
    body: dict
    at: float = field(default_factory=time.monotonic)


class FaultServer:
    """Start with ``with FaultServer(...) as server:``; ``server.base_url`` ends in ``/v1``.

    ``status`` forces every answer to that HTTP status (e.g. 401); ``faults`` picks which faults may be injected;
    ``fault_first`` makes the first attempt of every prompt fail (deterministic retries).
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] = FAULTS,
        slow_seconds: float = 1.0,
        retry_after: str = "0.05",
        seed: int = 0,
        status: int | None = None,
        fault_first: bool = False,
        error_body: dict | None = None,
        finish_reason: str = "stop",
        reply: str | None = None,
        trickle_seconds: float = 0.2,
        numbered: bool = False,
    ):
        """``numbered`` appends `` #<k>`` to the k-th successful answer, so that every answer is different."""
        self.latency, self.fault_rate, self.faults = latency, fault_rate, faults
        self.slow_seconds, self.retry_after, self.status = slow_seconds, retry_after, status
        self.fault_first, self.error_body, self.finish_reason, self.reply = (
            fault_first,
            error_body,
            finish_reason,
            reply,
        )
        self.trickle_seconds, self.numbered = trickle_seconds, numbered
        self._answers = 0
        self.log: list[LogEntry] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----
    def __enter__(self) -> FaultServer:
        server = self

        class Handler(_Handler):
            owner = server

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 drops bursts of connections (1 s SYN retries)

            def handle_error(self, request, client_address):
                pass  # a client that gives up mid-request (a fatal error elsewhere) is expected here, not news

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---- log queries ----
    def successes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for entry in self.log:
                if entry.outcome == "ok":
                    counts[entry.prompt_hash] = counts.get(entry.prompt_hash, 0) + 1
        return counts

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for entry in self.log:
                counts[entry.outcome] = counts.get(entry.outcome, 0) + 1
        return counts

    def _choose(self, prompt_hash: str) -> str:
        with self._lock:
            first = prompt_hash not in self._seen
            self._seen.add(prompt_hash)
            if self.status is not None:
                return f"status_{self.status}"
            if self.fault_first and first:
                return self._random.choice(self.faults)
            if self._random.random() < self.fault_rate:
                return self._random.choice(self.faults)
            return "ok"

    def _record(self, entry: LogEntry) -> None:
        with self._lock:
            self.log.append(entry)

    def _number(self) -> int:
        with self._lock:
            self._answers += 1
            return self._answers


class _Handler(BaseHTTPRequestHandler):
    owner: FaultServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle + delayed ACK would add 40 ms

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}", "code": "not_found"}})
            return
        body = json.loads(raw)
        messages = body["messages"]
        prompt_hash = messages_hash(messages)
        owner = self.owner
        outcome = owner._choose(prompt_hash)
        owner._record(LogEntry(prompt_hash, outcome, self.headers.get("Authorization"), body))
        with owner._lock:
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
            self._answer(owner, outcome, body, messages)
        finally:
            with owner._lock:
                owner.in_flight -= 1

    def _answer(self, owner: FaultServer, outcome: str, body: dict, messages: list[dict]) -> None:
        if owner.latency:
            time.sleep(owner.latency)
        if outcome == "ok":
            text = owner.reply if owner.reply is not None else f"answer: {messages[-1]['content']}"
            if owner.numbered:
                text += f" #{owner._number()}"
            max_tokens = body.get("max_tokens")
            words = text.split(" ")
            finish = owner.finish_reason
            if max_tokens is not None and len(words) > max_tokens:
                text, finish = " ".join(words[:max_tokens]), "length"
            prompt_tokens = sum(len(m["content"].split()) for m in messages)
            self._json(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(text.split()),
                        "total_tokens": prompt_tokens + len(text.split()),
                    },
                },
            )
        elif outcome == "429":
            self._json(
                429,
                {"error": {"message": "rate limited", "code": "rate_limit_exceeded"}},
                headers={"Retry-After": owner.retry_after},
            )
        elif outcome == "500":
            self._json(500, {"error": {"message": "internal error"}})
        elif outcome == "slow":
            time.sleep(owner.slow_seconds)
            self._json(
                200,
                {
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "late"}, "finish_reason": "stop"}
                    ]
                },
            )
        elif outcome == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        elif outcome == "malformed":
            self._raw(200, b'{"choices": [{"message": ')
        elif outcome == "empty_choices":
            self._json(200, {"id": "x", "choices": []})
        elif outcome == "trickle":
            choice = {"index": 0, "message": {"role": "assistant", "content": "late"}, "finish_reason": "stop"}
            self._trickle(json.dumps({"choices": [choice]}).encode(), owner.trickle_seconds)
        elif outcome == "html":
            self._raw(200, HTML_PAGE, content_type="text/html; charset=utf-8")
        elif outcome == "text":
            self._raw(200, b"Service is running. See /docs for the API.", content_type="text/plain")
        elif outcome.startswith("status_"):
            status = int(outcome.split("_")[1])
            self._json(status, owner.error_body or {"error": {"message": f"status {status}", "code": str(status)}})

    def _json(self, status: int, data: dict, headers: dict | None = None) -> None:
        self._raw(status, json.dumps(data).encode(), headers)

    def _raw(
        self, status: int, payload: bytes, headers: dict | None = None, content_type: str = "application/json"
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _trickle(self, payload: bytes, interval: float) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            for index in range(len(payload)):
                self.wfile.write(payload[index : index + 1])
                time.sleep(interval)
        except OSError:  # the client gave up
            pass


def main() -> None:
    """Run a fault server in the foreground (``python tests/fault_server.py [latency] [fault_rate] [port]``)."""
    import sys

    server = FaultServer(
        latency=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0,
        fault_rate=float(sys.argv[2]) if len(sys.argv) > 2 else 0.0,
    )
    with server:
        print(server.base_url, flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
