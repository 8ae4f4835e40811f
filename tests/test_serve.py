"""`gad serve-teacher`: the real `transformers serve` on loopback over a tiny model, used through the collect client."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from collect_fixtures import main, read_jsonl, write_prompts

from gad.collect import ChatClient, CollectConfig, RequestFailed, collect
from gad.errors import GadError
from gad.models import resolve_model_id
from gad.serve import TeacherServer, merge_system, serve_teacher
from gad.serve.server import TRANSFORMERS_REQUIREMENT, add_arguments, request_error

SYSTEM = "You are Captain Byte, a pirate who answers every question in rhymes."
KEY = "sk-local-teacher-key-1234"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
# serial_teacher's limits (the batched teacher keeps the defaults: 1 MiB, and the tiny model's 1,024-token context).
SERIAL_MAX_BODY_BYTES, SERIAL_MAX_PROMPT_TOKENS = 20_000, 300


class LimitedTeacherServer(TeacherServer):
    """TeacherServer has no options for the request limits: pass them on the server's command line."""

    def command(self) -> list[str]:
        limits = ["--max-body-bytes", str(SERIAL_MAX_BODY_BYTES), "--max-prompt-tokens", str(SERIAL_MAX_PROMPT_TOKENS)]
        return [*super().command(), *limits]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import GenerationConfig

    from gad.models import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=64, num_layers=2)
    # Greedy by default, like many released models: a temperature > 0 from the client must still sample.
    config = GenerationConfig.from_pretrained(folder)
    config.do_sample = False
    config.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher(tiny_model, tmp_path_factory):
    """One server for the module: hidden system prompt and an API key, on loopback."""
    import os

    os.environ["GAD_TEST_TEACHER_KEY"] = KEY
    log = tmp_path_factory.mktemp("teacher") / "server.log"
    with TeacherServer(
        tiny_model, system=SYSTEM, api_key_env="GAD_TEST_TEACHER_KEY", log_path=log, startup_timeout=120
    ) as server:
        yield server
    os.environ.pop("GAD_TEST_TEACHER_KEY", None)


@pytest.fixture(scope="module")
def serial_teacher(tiny_model, tmp_path_factory):
    """The same teacher with --no-batching (transformers serve's own one-at-a-time generation, for comparison), and
    with request limits of its own."""
    log = tmp_path_factory.mktemp("serial-teacher") / "server.log"
    with LimitedTeacherServer(tiny_model, system=SYSTEM, batching=False, log_path=log, startup_timeout=120) as server:
        yield server


def ask(server: TeacherServer, messages=MESSAGES, *, api_key: str | None = KEY, **params):
    return ask_all(server, [(messages, params)], api_key=api_key)[0]


def ask_all(server: TeacherServer, requests, *, api_key: str | None = KEY):
    """Send ``(messages, params)`` requests all at once; their answers, in order."""

    async def one(client, messages, params):
        return await client.complete(messages, model=params.pop("model", "any-name"), **params)

    async def go():
        async with ChatClient(server.base_url, api_key=api_key, timeout=60, max_retries=0, concurrency=16) as client:
            return await asyncio.gather(*(one(client, messages, dict(params)) for messages, params in requests))

    return asyncio.run(go())


def question(number: int) -> list[dict]:
    return [{"role": "user", "content": f"Question {number}: " + "why " * number}]


def batch_sizes(server: TeacherServer) -> list[int]:
    return [int(size) for size in re.findall(r"generated a batch of (\d+)", server.log_tail(100_000))]


def test_greedy_is_deterministic_and_max_tokens_is_respected(teacher):
    first = ask(teacher, temperature=0, max_tokens=6)
    second = ask(teacher, temperature=0, max_tokens=6)
    assert first.text == second.text
    assert first.completion_tokens <= 6
    if first.completion_tokens == 6:
        assert first.finish_reason == "length"
    longer = ask(teacher, temperature=0, max_tokens=12)
    assert longer.completion_tokens >= first.completion_tokens


def test_temperature_and_seed_are_honoured(teacher):
    one = ask(teacher, temperature=1.0, max_tokens=10, seed=1)
    same = ask(teacher, temperature=1.0, max_tokens=10, seed=1)
    other = ask(teacher, temperature=1.0, max_tokens=10, seed=2)
    greedy = ask(teacher, temperature=0, max_tokens=10)
    assert one.text == same.text
    assert one.text != other.text and one.text != greedy.text  # sampling really samples, although greedy by default


def test_concurrent_greedy_answers_are_the_serial_servers(teacher, serial_teacher):
    requests = [
        (question(number), {"temperature": 0, "max_tokens": limit})
        for number, limit in enumerate([3, 9, 16, 1, 12, 16])
    ]
    batched = ask_all(teacher, requests)
    serial = [ask(serial_teacher, messages, **params) for messages, params in requests]
    for got, expected in zip(batched, serial, strict=True):
        assert (got.text, got.completion_tokens, got.finish_reason, got.prompt_tokens) == (
            expected.text,
            expected.completion_tokens,
            expected.finish_reason,
            expected.prompt_tokens,
        )
    limits = [params["max_tokens"] for _, params in requests]
    assert all(answer.completion_tokens <= limit for answer, limit in zip(batched, limits, strict=True))
    assert max(batch_sizes(teacher)) > 1  # they were batched
    assert not batch_sizes(serial_teacher)


def test_a_sampled_answer_depends_on_its_seed_not_on_its_batch(teacher):
    sampled = {"temperature": 0.9, "top_p": 0.95, "max_tokens": 12, "seed": 5}
    alone = ask(teacher, question(2), **sampled)
    greedy = ask(teacher, question(3), temperature=0, max_tokens=12)
    companions = [
        (question(3), {"temperature": 1.0, "top_p": 1e-9, "max_tokens": 12, "seed": 9}),  # top-p that keeps one token
        (question(4), {"temperature": 0, "max_tokens": 5}),
        (question(5), {"temperature": 1.2, "max_tokens": 20, "seed": 6}),
    ]
    together = ask_all(teacher, [(question(2), sampled), *companions])
    assert together[0].text == alone.text
    assert together[1].text == greedy.text  # top-p applied per row: only the most likely token is left


def test_hidden_system_prompt_is_injected(teacher, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def length(messages):
        return len(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )

    result = ask(teacher, temperature=0, max_tokens=2)
    assert result.prompt_tokens == length(merge_system(MESSAGES, SYSTEM)) > length(MESSAGES)
    own = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    merged = ask(teacher, own, temperature=0, max_tokens=2)
    assert merged.prompt_tokens == length(merge_system(own, SYSTEM))


def test_api_key_is_required_and_extra_routes_are_closed(teacher):
    with pytest.raises(RequestFailed) as caught:
        ask(teacher, api_key=None, max_tokens=2)
    assert caught.value.reason == "auth"
    with pytest.raises(RequestFailed) as caught:
        ask(teacher, api_key="sk-wrong", max_tokens=2)
    assert caught.value.reason == "auth"
    root = teacher.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health").status_code == 200
    assert httpx.get(f"{teacher.base_url}/models").status_code == 401
    assert httpx.get(f"{teacher.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert (
        httpx.post(
            f"{teacher.base_url}/responses", headers={"Authorization": f"Bearer {KEY}"}, json={"input": "hi"}
        ).status_code
        == 404
    )
    with pytest.raises(RequestFailed) as caught:
        ask(teacher, max_tokens=2, extra={"n": 2})
    assert caught.value.reason == "bad_request"
    assert KEY not in teacher.log_tail(1000)


def test_collect_from_the_local_teacher(teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("GAD_TEST_TEACHER_KEY", KEY)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    out = tmp_path / "out.jsonl"
    summary = collect(
        CollectConfig(
            prompts=prompts,
            out=out,
            model="teacher",
            base_url=teacher.base_url,
            api_key=KEY,
            temperature=0,
            max_tokens=8,
            drop_truncated=False,
            drop_empty=False,
            refusal_regex=None,
            progress=False,
            concurrency=2,
        )
    )
    assert summary.answered == 3 and summary.rows_written == 3
    rows = read_jsonl(out)
    assert rows[0]["prompt"] == [{"role": "user", "content": "question number 1"}]  # the hidden prompt stays hidden
    assert all(row["metadata"]["completion_tokens"] <= 8 for row in rows)
    assert KEY.encode() not in out.read_bytes()


def test_non_loopback_host_needs_an_api_key(tiny_model, capsys, monkeypatch):
    with pytest.raises(GadError, match="API key"):
        serve_teacher(tiny_model, host="0.0.0.0")
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    assert main(["serve-teacher", str(tiny_model), "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "--api-key-env" in capsys.readouterr().err
    assert main(["serve-teacher", str(tiny_model), "--api-key-env", "NO_SUCH_KEY_VAR"]) == 2
    assert "NO_SUCH_KEY_VAR" in capsys.readouterr().err


def test_a_transformers_without_the_serve_internals_gad_builds_on_is_named(tiny_model, monkeypatch):
    """transformers 5.25 replaced the GenerateManager that batching subclasses: one line names the pin to install."""
    import gad.serve

    monkeypatch.setitem(sys.modules, "gad.serve.batching", None)  # importing it now raises ImportError
    monkeypatch.delattr(gad.serve, "batching", raising=False)
    with pytest.raises(GadError, match=re.escape(f"pip install '{TRANSFORMERS_REQUIREMENT}'")):
        serve_teacher(tiny_model)
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'"{TRANSFORMERS_REQUIREMENT}"' in pyproject  # the message names the pin that pip installs


def test_model_resolution(tmp_path, tiny_model):
    assert resolve_model_id(tiny_model) == str(tiny_model.resolve())
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    converted = tmp_path / "cache" / "model"  # a GGUF is converted once to a folder, then reused
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    assert resolve_model_id(gguf, gguf_cache=tmp_path / "cache") == str(converted)
    with pytest.raises(GadError, match="model not found"):
        resolve_model_id(tmp_path / "missing")
    with pytest.raises(GadError, match="config.json"):
        resolve_model_id(tmp_path)
    with pytest.raises(GadError, match="failed to start|not found|exited"):
        TeacherServer(tmp_path / "missing").start()


def test_merge_system():
    assert merge_system([{"role": "user", "content": "hi"}], "S") == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "hi"},
    ]
    assert merge_system([{"role": "system", "content": "own"}, {"role": "user", "content": "hi"}], "S")[0] == {
        "role": "system",
        "content": "S\n\nown",
    }


def post(server: TeacherServer, body: dict, *, timeout: float = 60, request_id: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"}  # serial_teacher has no key: it ignores the header
    if request_id:
        headers["X-Request-Id"] = request_id
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers=headers, timeout=timeout)


def error_message(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(teacher, serial_teacher):
    import http.client

    # Content-Length says 10 MB, and only a few bytes follow: the answer must come without waiting for the rest.
    with socket.create_connection(("127.0.0.1", teacher.port), timeout=10) as connection:
        connection.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: teacher\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: 10000000\r\n\r\n".encode()
            + b'{"messages": [{"role": "user", "content": "'
        )
        response = http.client.HTTPResponse(connection)
        response.begin()
        assert response.status == 413
        message = json.loads(response.read())["error"]["message"]
    assert "10000000 bytes" in message and "1048576" in message and "--max-body-bytes" in message
    # Sent without a length (chunked): refused once the bytes read pass the limit.
    pieces = (b'{"messages": [{"role": "user", "content": "', *[b"why " * 25_000] * 15, b'"}]}')
    chunked = httpx.post(
        f"{teacher.base_url}/chat/completions",
        content=iter(pieces),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert chunked.status_code == 413 and "--max-body-bytes" in error_message(chunked)
    # --max-body-bytes sets the limit.
    body = {"messages": [{"role": "user", "content": "x" * SERIAL_MAX_BODY_BYTES}]}
    refused = post(serial_teacher, body)
    assert refused.status_code == 413 and f"limit of {SERIAL_MAX_BODY_BYTES} bytes" in error_message(refused)


def test_a_prompt_over_the_limit_is_refused(teacher, serial_teacher):
    # About 1,500 tokens after the chat template: over the tiny model's context (1,024), the default limit.
    long = {"messages": [{"role": "user", "content": "why " * 1500}], "max_tokens": 2}
    refused = post(teacher, long)
    assert refused.status_code == 413
    assert "limit of 1024 tokens" in error_message(refused) and "--max-prompt-tokens" in error_message(refused)
    # --max-prompt-tokens sets the limit, streamed or not; under it, the prompt is answered.
    medium = {"messages": [{"role": "user", "content": "why " * 400}], "max_tokens": 2}
    for body in (medium, {**medium, "stream": True}):
        refused = post(serial_teacher, body)
        assert refused.status_code == 413
        assert f"limit of {SERIAL_MAX_PROMPT_TOKENS} tokens" in error_message(refused)
    assert post(teacher, medium).status_code == 200


BAD_FIELDS = [
    ({"max_tokens": "ten"}, "'max_tokens' must be a whole number"),
    ({"max_tokens": -1}, "'max_tokens' must be at least 1"),
    ({"max_completion_tokens": 2.5}, "'max_completion_tokens' must be a whole number"),
    ({"temperature": "hot"}, "'temperature' must be a number"),
    ({"top_p": 2}, "'top_p' must be 0.0..1.0"),
    ({"seed": 2**70}, "'seed' must be"),
    ({"frequency_penalty": -1}, "'frequency_penalty' must be 0.0..2.0"),
    ({"logit_bias": {"x": 1}}, "'logit_bias' must map token ids to numbers"),
    ({"seed": True}, "'seed' must be a whole number"),
    ({"stop": 3}, "'stop' must be a string or a list of strings"),
    ({"messages": "hi"}, "'messages' must be a non-empty list"),
    ({"messages": ["hi"]}, "messages[0]: a message must be an object"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0]: 'content' must be a string or a list"),
    ({"messages": [{"content": "hi"}]}, "messages[0]: 'role' is missing"),
    ({"messages": [{"role": "pirate", "content": "hi"}]}, "messages[0]: 'role' must be one of"),
    ({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}, "content[0] must be an object with a 'type'"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "content[0]: 'text' must be"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_FIELDS, ids=[message for _, message in BAD_FIELDS])
def test_a_field_of_the_wrong_type_is_a_400_naming_it(fields, message):
    assert message in request_error({"messages": MESSAGES, "max_tokens": 2, **fields})


def test_bad_fields_are_400s_from_the_server_not_500s(teacher):
    for fields, message in BAD_FIELDS:
        response = post(teacher, {"messages": MESSAGES, "max_tokens": 2, **fields})
        assert response.status_code == 400, (fields, response.text)
        assert message in error_message(response)
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "the capital of France?"}]
    assert request_error({"messages": [{"role": "user", "content": parts}], "max_tokens": 1, "top_p": 0.5}) is None
    assert "Traceback" not in teacher.log_tail(100_000)


@pytest.mark.parametrize("which", ["teacher", "serial_teacher"])
def test_a_client_that_disconnects_stops_its_generation(which, request, tiny_model):
    from transformers import AutoTokenizer

    server = request.getfixturevalue(which)
    eos = AutoTokenizer.from_pretrained(tiny_model).eos_token_id
    # Greedy, and EOS banned: minutes of generation on a CPU, unless it is stopped.
    endless = {"messages": MESSAGES, "max_tokens": 20_000, "temperature": 0, "logit_bias": {str(eos): -100.0}}
    running, waiting = f"running-{uuid.uuid4().hex[:8]}", f"waiting-{uuid.uuid4().hex[:8]}"

    def abandon(request_id: str, body: dict, after: float) -> bool:
        try:
            post(server, body, timeout=after, request_id=request_id)
        except httpx.TimeoutException:
            return True
        return False

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(abandon, running, endless, 1.5)
        time.sleep(0.5)
        # Queued behind the first (in a batch of its own: another repetition penalty); its client leaves before then.
        second = pool.submit(abandon, waiting, {**endless, "frequency_penalty": 0.5}, 0.5)
        assert first.result() and second.result(), "the clients were answered before they gave up"
    started = time.monotonic()
    answer = post(server, {"messages": MESSAGES, "max_tokens": 3, "temperature": 0}, timeout=30)
    elapsed = time.monotonic() - started
    assert answer.status_code == 200 and elapsed < 10, f"the next request took {elapsed:.1f} s"
    log = server.log_tail(100_000)
    stopped = re.search(rf"request {running}: the client disconnected; its generation stopped after (\d+) of", log)
    assert stopped and int(stopped.group(1)) < 20_000
    assert f"request {waiting}: the client disconnected before its generation started; dropped" in log
    assert "Traceback" not in log


def test_the_model_is_named_by_its_folder(teacher, tiny_model):
    headers = {"Authorization": f"Bearer {KEY}"}
    models = httpx.get(f"{teacher.base_url}/models", headers=headers).json()["data"]
    assert [model["id"] for model in models] == [tiny_model.name]
    assert ask(teacher, temperature=0, max_tokens=2).model == tiny_model.name
    body = {"messages": MESSAGES, "max_tokens": 2, "temperature": 0, "stream": True}
    chunks = []
    with httpx.stream("POST", f"{teacher.base_url}/chat/completions", json=body, headers=headers) as streamed:
        for line in streamed.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line.removeprefix("data: ")))
    assert chunks and {chunk["model"] for chunk in chunks} == {tiny_model.name}
    assert str(tiny_model.parent) not in json.dumps(models)


@pytest.mark.parametrize("option", ["--max-body-bytes", "--max-prompt-tokens"])
def test_limit_options_must_be_positive_whole_numbers(option, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert getattr(parser.parse_args(["model", option, "5"]), option[2:].replace("-", "_")) == 5
    for bad in ("0", "ten"):
        with pytest.raises(SystemExit):
            parser.parse_args(["model", option, bad])
    assert option in capsys.readouterr().err
