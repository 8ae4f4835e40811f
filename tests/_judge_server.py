"""A real OpenAI-compatible judge on 127.0.0.1 for tests, scripted per request.

The script is a function ``(kind, user_text) -> str | tuple[int, str]`` where ``kind`` is ``reference``, ``score`` or
``pairwise`` (recognised from the bundled templates' wording); a tuple sends that HTTP status with the text as error.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Script = Callable[[str, str], "str | tuple[int, str]"]


def request_kind(user_text: str) -> str:
    if "Assistant 1's Answer" in user_text:
        return "score"
    if "Assistant A's Answer" in user_text:
        return "pairwise"
    return "reference"


class JudgeServer:
    """Context manager: ``with JudgeServer(script) as server: server.base_url`` (…/v1); ``server.log`` holds
    ``(kind, user_text)`` for every request, in arrival order, ``server.authorizations`` their Authorization headers."""

    def __init__(self, script: Script):
        self.script = script
        self.log: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []  # the Authorization header of every request
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
                kind = request_kind(user)
                with outer._lock:
                    outer.log.append((kind, user))
                    outer.authorizations.append(self.headers.get("Authorization"))
                reply = outer.script(kind, user)
                status, text = reply if isinstance(reply, tuple) else (200, reply)
                if status == 200:
                    payload = {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    }
                else:
                    payload = {"error": {"message": text, "type": "test"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(k == kind for k, _ in self.log)

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def answer_between(user_text: str, start: str, end: str) -> str:
    """The text the template put between two markers (e.g. Assistant 1's answer)."""
    return user_text.split(start, 1)[1].split(end, 1)[0].strip()


def content_judge(kind: str, user: str) -> str:
    """A judge that prefers answers containing 'good': rates good 9, bad 3, its reference 6; pairwise by content."""
    if kind == "reference":
        return "REFERENCE ANSWER: " + user[:40]
    if kind == "score":
        answer = answer_between(user, "[The Start of Assistant 1's Answer]", "[The End of Assistant 1's Answer]")
        return ("9 6" if "good" in answer else "3 6") + "\nExplanation."
    a = answer_between(user, "[The Start of Assistant A's Answer]", "[The End of Assistant A's Answer]")
    b = answer_between(user, "[The Start of Assistant B's Answer]", "[The End of Assistant B's Answer]")
    if ("good" in a) == ("good" in b):
        return "Both are alike. [[C]]"
    return "Verdict: [[A]]" if "good" in a else "Verdict: [[B]]"
