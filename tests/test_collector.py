"""`gad collect` end to end against a real fault-injecting HTTP server: exactly once, resumable, clear errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from collect_fixtures import collect_args, gad_command, main, read_jsonl, write_prompts
from fault_server import FaultServer, messages_hash

from gad.cli import build_parser
from gad.collect import CollectConfig, TeacherCache, collect
from gad.data import load_training_rows
from gad.serve import free_port


def config(prompts: Path, out: Path, url: str, **overrides) -> CollectConfig:
    values = {
        "model": "test-model",
        "timeout": 1.0,
        "backoff_base": 0.01,
        "max_retries": 10,
        "concurrency": 8,
        "progress": False,
        **overrides,
    }
    return CollectConfig(prompts=prompts, out=out, base_url=url, **values)


def messages_of(number: int) -> list[dict]:
    return [{"role": "user", "content": f"question number {number}"}]


def stable(rows: list[dict]) -> list[dict]:
    """Rows without the fields that depend on timing."""
    for row in rows:
        for name in ("latency_s", "created_at"):
            row["metadata"].pop(name)
    return rows


def test_thirty_percent_faults_every_prompt_answered_exactly_once(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 80)
    out = tmp_path / "out.jsonl"
    with FaultServer(fault_rate=0.3, slow_seconds=1.3, seed=1) as server:
        summary = collect(config(prompts, out, server.base_url))
    outcomes = server.outcomes()
    faulted = sum(count for outcome, count in outcomes.items() if outcome != "ok")
    assert faulted / sum(outcomes.values()) >= 0.2 and len(outcomes) == 7  # every kind of fault happened
    successes = server.successes()
    assert len(successes) == 80 and set(successes.values()) == {1}  # no prompt answered successfully twice
    assert summary.answered == 80 and summary.from_cache == 0 and not summary.failed
    rows = read_jsonl(out)
    assert [row["id"] for row in rows] == [f"p{i}" for i in range(1, 81)]
    assert rows[4]["prompt"] == messages_of(5) and rows[4]["teacher_response"] == "answer: question number 5"
    assert rows[0]["metadata"]["finish_reason"] == "stop" and rows[0]["metadata"]["model"] == "test-model"
    training, _ = load_training_rows(out)  # the core's loader reads the output directly
    assert len(training) == 80 and training[0].response == "answer: question number 1"


def test_rerun_and_larger_prompt_file_only_ask_for_new_prompts(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 10)
    out = tmp_path / "out.jsonl"
    with FaultServer() as server:
        collect(config(prompts, out, server.base_url))
        first = out.read_text()
        again = collect(config(prompts, out, server.base_url))
        assert len(server.log) == 10 and again.from_cache == 10 and again.answered == 0
        assert out.read_text() == first
        write_prompts(prompts, 15)
        larger = collect(config(prompts, out, server.base_url))
    assert len(server.log) == 15 and larger.answered == 5 and larger.from_cache == 10
    assert set(server.successes().values()) == {1}
    assert len(read_jsonl(out)) == 15


def test_sigkill_halfway_then_resume_gives_the_same_file_and_no_repeat_requests(tmp_path):
    count = 60
    prompts = write_prompts(tmp_path / "prompts.jsonl", count)
    out, clean = tmp_path / "out.jsonl", tmp_path / "clean.jsonl"
    cache_path = tmp_path / "out.jsonl.cache.sqlite"
    with FaultServer(latency=0.05) as server:
        collect(config(prompts, clean, server.base_url, cache=tmp_path / "clean.sqlite"))
        server.log.clear()
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        process = subprocess.Popen(
            gad_command(*collect_args(prompts, out, server.base_url, "--concurrency", "2")),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        cached = 0
        while time.monotonic() < deadline and cached < count // 3:
            time.sleep(0.02)
            if cache_path.exists():
                try:
                    cached = sqlite3.connect(cache_path).execute("SELECT COUNT(*) FROM answers").fetchone()[0]
                except sqlite3.OperationalError:
                    pass
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert 0 < cached < count and not out.exists()
        with TeacherCache(cache_path) as cache:
            answered_keys = set(
                cache.get_many(TeacherCache.key("test-model", messages_of(i), {}, 0) for i in range(1, count + 1))
            )
        answered_hashes = {
            messages_hash(messages_of(i))
            for i in range(1, count + 1)
            if TeacherCache.key("test-model", messages_of(i), {}, 0) in answered_keys
        }
        requests_before = len(server.log)
        rerun = main(collect_args(prompts, out, server.base_url))
        resumed = server.log[requests_before:]
    assert rerun == 0
    assert len(answered_hashes) >= count // 3
    assert not {entry.prompt_hash for entry in resumed} & answered_hashes  # nothing answered is asked again
    assert len(resumed) == count - len(answered_hashes)
    assert stable(read_jsonl(out)) == stable(read_jsonl(clean))


def test_n_samples_per_prompt(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    out = tmp_path / "out.jsonl"
    with FaultServer() as server:
        summary = collect(config(prompts, out, server.base_url, n=2, temperature=0.8))
    rows = read_jsonl(out)
    assert [row["id"] for row in rows] == ["p1#0", "p1#1", "p2#0", "p2#1", "p3#0", "p3#1"]
    assert rows[1]["metadata"]["sample_index"] == 1 and rows[1]["metadata"]["params"] == {"temperature": 0.8}
    assert summary.answered == 6 and len(server.log) == 6


def test_each_answer_of_a_seeded_run_is_asked_with_a_seed_of_its_own(tmp_path):
    # one seed for every sample made an endpoint that honours seeds answer the same n times; one seed for every
    # prompt gave every answer the same random numbers, so that a whole collection leaned the same way
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    out = tmp_path / "out.jsonl"
    with FaultServer() as server:
        collect(config(prompts, out, server.base_url, n=3, seed=5, temperature=0.8))
        asked = [entry.body["seed"] for entry in server.log]
        # stable: the same seed, prompt and sample index ask the same seed again
        again = collect(config(prompts, tmp_path / "again.jsonl", server.base_url, n=3, seed=5, temperature=0.8,
                               cache=tmp_path / "fresh.sqlite"))  # fmt: skip
    assert len(set(asked)) == 6 and all(0 <= seed < 2**31 for seed in asked)
    rows = read_jsonl(out)
    assert sorted(row["metadata"]["params"]["seed"] for row in rows) == sorted(asked)
    assert again.answered == 6
    assert [row["metadata"]["params"]["seed"] for row in read_jsonl(tmp_path / "again.jsonl")] == [
        row["metadata"]["params"]["seed"] for row in rows
    ]
    # the first sample keeps the cache key of a one-sample run, so that run's answers are not asked again
    single = collect(config(prompts, tmp_path / "single.jsonl", server.base_url, n=1, seed=5, temperature=0.8,
                            cache=out.with_name(out.name + ".cache.sqlite")))  # fmt: skip
    assert single.answered == 0 and single.from_cache == 2


def test_export_filters_are_counted(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"id": "a", "prompt": "same"}, {"id": "b", "prompt": "same"}, {"id": "c", "prompt": "other"}]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with FaultServer(reply="I'm sorry, but I cannot help with that.") as server:
        summary = collect(config(prompts, tmp_path / "refusals.jsonl", server.base_url))
    assert summary.dropped == {"duplicate prompt": 1, "refusal": 2} and summary.rows_written == 0
    assert len(server.log) == 2  # the duplicate was never sent
    with FaultServer(reply="") as server:
        summary = collect(config(prompts, tmp_path / "empty.jsonl", server.base_url))
    assert summary.dropped["empty"] == 2
    with FaultServer(reply="one two three four five six") as server:
        summary = collect(config(prompts, tmp_path / "long.jsonl", server.base_url, max_tokens=3))
        kept = collect(
            config(prompts, tmp_path / "long.jsonl", server.base_url, max_tokens=3, drop_truncated=False, dedupe=False)
        )
    assert summary.dropped == {"duplicate prompt": 1, "truncated": 2}
    # Same cache: filters apply at export, not at request; the kept duplicate is a new sample with its own answer.
    assert kept.rows_written == 3 and kept.from_cache == 2 and kept.answered == 1
    assert "truncated 2" in summary.format()


def test_dry_run_sends_nothing_and_estimates_cost(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    with FaultServer() as server:
        code = main(
            collect_args(
                prompts,
                tmp_path / "out.jsonl",
                server.base_url,
                "--dry-run",
                "--max-tokens",
                "100",
                "--price-in",
                "2.5",
                "--price-out",
                "10",
            )
        )
    output = capsys.readouterr().out
    assert code == 0 and server.log == []
    assert "4 requests to send" in output and "up to 400 out" in output and "estimated cost" in output
    assert not (tmp_path / "out.jsonl").exists()


def test_summary_reports_tokens_and_cost(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    summary_path = tmp_path / "summary.json"
    with FaultServer() as server:
        code = main(
            collect_args(
                prompts,
                tmp_path / "out.jsonl",
                server.base_url,
                "--price-in",
                "1000000",
                "--price-out",
                "0",
                "--summary-json",
                str(summary_path),
            )
        )
    output = capsys.readouterr().out
    assert code == 0 and "answered now: 4, from cache: 0, failed: none" in output
    data = json.loads(summary_path.read_text())
    assert data["tokens_in"] == 12 and data["cost"] == 12.0 and data["rows_written"] == 4


def test_content_filter_is_recorded_per_prompt_and_not_retried(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    out = tmp_path / "out.jsonl"
    body = {"error": {"message": "The response was filtered", "code": "content_filter"}}
    with FaultServer(status=400, error_body=body) as server:
        assert main(collect_args(prompts, out, server.base_url)) == 0
        assert len(server.log) == 3
        assert "failed: content_filter 3" in capsys.readouterr().out
        assert main(collect_args(prompts, out, server.base_url)) == 0  # remembered: not paid for again
        assert len(server.log) == 3
        assert main(collect_args(prompts, out, server.base_url, "--retry-failed")) == 0
        assert len(server.log) == 6


def test_transient_failures_exit_1_and_are_retried_on_rerun(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    out = tmp_path / "out.jsonl"
    with FaultServer(status=500) as server:
        assert main(collect_args(prompts, out, server.base_url, "--max-retries", "1")) == 1
    assert "rerun" in capsys.readouterr().out
    with FaultServer() as server:
        assert main(collect_args(prompts, out, server.base_url)) == 0
    assert len(read_jsonl(out)) == 2


# ---- bad input: one clear line, exit != 0 when the run cannot go on, nothing collected is lost ----


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_missing_prompt_file(tmp_path, capsys):
    code = main(collect_args(tmp_path / "nope.jsonl", tmp_path / "out.jsonl", "http://127.0.0.1:9/v1"))
    assert code == 2 and "not found" in error_line(capsys)


def test_empty_prompt_and_unreadable_row(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "  "}\n')
    assert main(collect_args(prompts, tmp_path / "out.jsonl", "http://127.0.0.1:9/v1")) == 2
    line = error_line(capsys)
    assert "line 2" in line and "empty prompt" in line
    with FaultServer() as server:
        assert main(collect_args(prompts, tmp_path / "out.jsonl", server.base_url, "--skip-bad-rows")) == 0
    assert "bad row 1" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 1
    prompts.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": \n')
    assert main(collect_args(prompts, tmp_path / "out.jsonl", "http://127.0.0.1:9/v1")) == 2
    assert "line 2: not valid JSON" in error_line(capsys)
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 1  # the earlier output is untouched


def test_wrong_url_keeps_what_was_collected(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    out = tmp_path / "out.jsonl"
    with FaultServer() as server:
        assert main(collect_args(prompts, out, server.base_url)) == 0
    capsys.readouterr()
    write_prompts(prompts, 5)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    assert main(collect_args(prompts, out, dead, "--max-retries", "2")) == 2
    line = error_line(capsys)
    assert "cannot reach" in line and "--base-url" in line and "3 rows already collected" in line
    assert len(read_jsonl(out)) == 3


def test_wrong_path_is_not_found(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    with FaultServer() as server:
        url = server.base_url.removesuffix("/v1")  # forgot /v1
        assert main(collect_args(prompts, tmp_path / "out.jsonl", url)) == 2
        assert len(server.log) == 0 or all(entry.outcome != "ok" for entry in server.log)
    assert "ends in /v1" in error_line(capsys)


def test_unauthorized_is_one_line(tmp_path, capsys, monkeypatch):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 5)
    monkeypatch.setenv("MY_KEY", "sk-wrong")
    with FaultServer(
        status=401, error_body={"error": {"message": "Incorrect API key", "code": "invalid_api_key"}}
    ) as server:
        code = main(collect_args(prompts, tmp_path / "out.jsonl", server.base_url, "--api-key-env", "MY_KEY"))
        assert len(server.log) <= 16  # stops at once instead of burning every prompt with retries
    assert code == 2
    line = error_line(capsys)
    assert "API key was rejected" in line and "sk-wrong" not in line


def test_named_key_variable_must_be_set(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UNSET_KEY_VAR", raising=False)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    assert (
        main(collect_args(prompts, tmp_path / "out.jsonl", "http://127.0.0.1:9/v1", "--api-key-env", "UNSET_KEY_VAR"))
        == 2
    )
    assert "UNSET_KEY_VAR" in error_line(capsys)


def test_api_key_never_reaches_cache_output_or_logs(tmp_path, capsys, caplog, monkeypatch):
    secret = "sk-test-very-secret-9f8e7d"
    monkeypatch.setenv("TEACHER_KEY", secret)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 6)
    out = tmp_path / "out.jsonl"
    caplog.set_level(logging.DEBUG)
    with FaultServer(fault_rate=0.5, faults=("500", "429"), seed=3) as server:
        code = main(
            [
                "--debug",
                *collect_args(
                    prompts,
                    out,
                    server.base_url,
                    "--api-key-env",
                    "TEACHER_KEY",
                    "--summary-json",
                    str(tmp_path / "summary.json"),
                ),
            ]
        )
    assert code == 0
    assert {entry.authorization for entry in server.log} == {f"Bearer {secret}"}
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err + caplog.text
    for path in tmp_path.iterdir():
        assert secret.encode() not in path.read_bytes(), path


def test_csv_prompts_with_chat_messages(tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt\nx,hello there\ny,second one\n")
    with FaultServer() as server:
        collect(config(prompts, tmp_path / "out.jsonl", server.base_url, system="Be brief."))
        sent = [entry.body["messages"] for entry in server.log]
    # Requests run concurrently, so the server may see them in either order.
    assert [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}] in sent
    assert [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "second one"}] in sent
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [row["id"] for row in rows] == ["x", "y"]


@pytest.mark.parametrize("bad", [["--n", "0"], ["--rpm", "0"], ["--concurrency", "0"], ["--refusal-regex", "("]])
def test_bad_options_are_one_line(tmp_path, capsys, bad):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    assert main(collect_args(prompts, tmp_path / "out.jsonl", "http://127.0.0.1:9/v1", *bad)) == 2
    error_line(capsys)


# ---- reliability: paying once, one run per output, pages instead of JSON, encodings, sizes ----


def test_kept_duplicates_each_get_their_own_answer_and_a_rerun_pays_nothing(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"id": "a", "prompt": "same"}, {"id": "b", "prompt": "same"}, {"id": "c", "prompt": "other"}]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    with FaultServer(numbered=True) as server:
        first = collect(config(prompts, out, server.base_url, dedupe=False, n=2))
        rows = read_jsonl(out)
        again = collect(config(prompts, out, server.base_url, dedupe=False, n=2))
        assert len(server.log) == 6  # the rerun asked for nothing
        deduped = collect(
            config(
                prompts, tmp_path / "deduped.jsonl", server.base_url, n=2, cache=out.parent / "out.jsonl.cache.sqlite"
            )
        )
    assert first.answered == 6 and first.rows_written == 6
    assert [row["id"] for row in rows] == ["a#0", "a#1", "b#0", "b#1", "c#0", "c#1"]
    answers = [row["teacher_response"] for row in rows]
    assert len(set(answers)) == 6  # every copy paid for has an answer of its own in the output
    assert again.answered == 0 and again.from_cache == 6 and read_jsonl(out) == rows
    assert deduped.answered == 0 and deduped.rows_written == 4  # the first copy's answers are the de-duplicated ones
    assert len(server.log) == 6


def start_collect(prompts: Path, out: Path, url: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = gad_command(*collect_args(prompts, out, url, "--concurrency", "1", *extra))
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_requests(server: FaultServer, process: subprocess.Popen, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while len(server.log) < count and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(server.log) >= count, "the first run sent nothing"


@pytest.mark.parametrize("shared", ["output", "cache"])
def test_a_second_run_on_the_same_files_stops_at_once_naming_the_first(tmp_path, capsys, shared):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 8)
    out = tmp_path / "out.jsonl"
    second = (
        ["--cache", str(tmp_path / "other.sqlite")] if shared == "output" else ["--cache", str(out) + ".cache.sqlite"]
    )
    second_out = out if shared == "output" else tmp_path / "second.jsonl"
    build_parser()  # the sub-commands' imports take seconds: not while the first run goes on
    with FaultServer(latency=0.3) as server:
        process = start_collect(prompts, out, server.base_url)
        try:
            wait_for_requests(server, process)
            code = main(collect_args(prompts, second_out, server.base_url, *second))
            overlapped = process.poll() is None
        finally:
            first = process.wait(timeout=60)
        requests = len(server.log)
        after = main(collect_args(prompts, out, server.base_url))
    assert overlapped and code == 2 and first == 0
    line = error_line(capsys)
    assert f"pid {process.pid}" in line and "in use by another gad collect" in line
    assert requests == 8 and set(server.successes().values()) == {1}  # the second run asked for nothing
    assert after == 0 and len(server.log) == 8  # once the first is done, a rerun works and finds it all cached
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob("*.tmp"))


def test_an_html_endpoint_stops_the_run_with_one_line(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 5)
    with FaultServer(fault_rate=1.0, faults=("html",)) as server:
        code = main(collect_args(prompts, tmp_path / "out.jsonl", server.base_url, "--concurrency", "1"))
        assert len(server.log) <= 4  # two attempts for at most the two prompts in flight, not 9 for each prompt
    assert code == 2
    line = error_line(capsys)
    assert "the endpoint returned HTML, not JSON: check --base-url" in line and "rerun the same command" not in line


@pytest.mark.parametrize("extra", [[], ["--skip-bad-rows"]])
def test_a_latin1_prompt_file_is_one_line(tmp_path, capsys, extra):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes('{"prompt": "plain"}\n{"prompt": "café"}\n'.encode("latin-1"))
    assert main(collect_args(prompts, tmp_path / "out.jsonl", "http://127.0.0.1:9/v1", *extra)) == 2
    line = error_line(capsys)
    assert f"{prompts}, line 2: not UTF-8: byte 0xe9; re-save the file as UTF-8" in line


def test_an_oversize_answer_is_dropped_counted_and_not_paid_for_again(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    out = tmp_path / "out.jsonl"
    with FaultServer(reply="word " * 400) as server:  # 2,000 characters
        summary = collect(config(prompts, out, server.base_url, max_answer_chars=1000))
        again = collect(config(prompts, out, server.base_url, max_answer_chars=1000))
        assert len(server.log) == 3
        stored = sqlite3.connect(out.parent / "out.jsonl.cache.sqlite").execute("SELECT * FROM answers").fetchall()
        assert stored == []  # the long answers never entered the cache
        assert main(collect_args(prompts, out, server.base_url, "--max-answer-chars", "1000")) == 0
        assert "dropped: too long 3" in capsys.readouterr().out
        larger = collect(config(prompts, out, server.base_url, retry_failed=True))
    assert summary.answered == 3 and summary.dropped == {"too long": 3} and summary.rows_written == 0
    assert summary.tokens_out == 3 * 400  # paid for, so counted
    assert again.answered == 0 and again.dropped == {"too long": 3} and not again.failed
    assert larger.answered == 3 and larger.rows_written == 3 and len(server.log) == 6
    assert collect(config(prompts, out, server.base_url, max_answer_chars=1000)).dropped == {"too long": 3}


def test_an_oversize_prompt_row_is_a_bad_row(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": "long " * 100}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(collect_args(prompts, out, "http://127.0.0.1:9/v1", "--max-row-chars", "200")) == 2
    assert "line 2: the row is 515 characters, over the limit of 200" in error_line(capsys)
    with FaultServer() as server:
        assert main(collect_args(prompts, out, server.base_url, "--max-row-chars", "200", "--skip-bad-rows")) == 0
    assert "bad row 1" in capsys.readouterr().out and len(server.log) == 1
