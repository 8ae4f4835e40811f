"""`gad serve-teacher`: the real `transformers serve` on loopback over a tiny model, used through the collect client."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from collect_fixtures import main, read_jsonl, write_prompts

from gad.collect import ChatClient, CollectConfig, RequestFailed, collect
from gad.errors import GadError
from gad.models import resolve_model_id
from gad.serve import TeacherServer, merge_system, serve_teacher

SYSTEM = "You are Captain Byte, a pirate who answers every question in rhymes."
KEY = "sk-local-teacher-key-1234"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


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
    """The same teacher with --no-batching: transformers serve's own one-at-a-time generation, for comparison."""
    log = tmp_path_factory.mktemp("serial-teacher") / "server.log"
    with TeacherServer(tiny_model, system=SYSTEM, batching=False, log_path=log, startup_timeout=120) as server:
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
