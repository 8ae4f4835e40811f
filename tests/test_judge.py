"""The judge protocol against a real loopback HTTP judge: score arithmetic, retries, failures, pairwise, caching."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from _judge_server import JudgeServer, answer_between, content_judge

from gad.api.cache import TeacherCache
from gad.api.client import ChatClient
from gad.data import PromptRow
from gad.errors import GadError
from gad.evaluation.evaluate import JudgeConfig, evaluate
from gad.evaluation.judge import (
    Judge,
    JudgeParseError,
    JudgeTemplates,
    parse_scores,
    parse_verdict,
    render,
    score_ratio,
    summarize_pairs,
    summarize_ratings,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rows(n: int = 4) -> list[PromptRow]:
    return [PromptRow(f"q{i}", [{"role": "user", "content": f"Question number {i}?"}]) for i in range(n)]


def run_judge(server: JudgeServer, coroutine_factory, *, cache=None, retries: int = 2, templates=None):
    async def main():
        async with ChatClient(server.base_url, concurrency=4, max_retries=1, backoff_base=0.01) as client:
            judge = Judge(client, "judge-model", cache=cache, retries=retries, templates=templates)
            return await coroutine_factory(judge), judge

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("8 7\nBecause...", (8.0, 7.0)),
        ("8, 7", (8.0, 7.0)),
        ("**9** **6.5**\nwhy", (9.0, 6.5)),
        ("\n\n10 1\n", (10.0, 1.0)),
        ("Scores: 8/10 7/10", (8.0, 7.0)),
    ],
)
def test_parse_scores_accepts_well_formed(reply, expected):
    assert parse_scores(reply) == expected


@pytest.mark.parametrize("reply", ["", "8", "8 7 6", "Assistant 1 is better", "11 5", "0 5", "8 -1", "7\n8"])
def test_parse_scores_rejects_malformed_and_out_of_range(reply):
    with pytest.raises(JudgeParseError):
        parse_scores(reply)


def test_parse_verdict_and_ratio():
    assert parse_verdict("blah [[A]]") == "A"
    assert parse_verdict("first [[B]] then final [[C]]") == "C"
    with pytest.raises(JudgeParseError):
        parse_verdict("A is better")
    assert score_ratio(9, 6) == pytest.approx(60.0)
    assert score_ratio(5, 5) == 50.0


def test_render_keeps_braces_in_answers_and_splits_messages():
    templates = JudgeTemplates.load()
    messages = render(templates.score, question="Q?", answer="code {x} {reference}", reference="R")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "code {x}" in messages[1]["content"] and "{question}" not in messages[1]["content"]
    assert templates.model_first


def test_score_arithmetic_over_http():
    answers = {"q0": "good one", "q1": "bad one", "q2": "good two", "q3": "bad two"}
    with JudgeServer(content_judge) as server:

        async def job(judge):
            refs = await judge.references(rows(), desc="refs")
            return await judge.rate_all(rows(), answers, refs, desc="rate")

        ratings, judge = run_judge(server, job)
    scores = [r.score for r in ratings]
    assert scores == pytest.approx([60.0, 100 * 3 / 9, 60.0, 100 * 3 / 9])
    summary = summarize_ratings(ratings)
    assert summary["judge_score"] == pytest.approx((60.0 + 100 / 3) / 2)
    assert summary["judge_model_mean"] == pytest.approx(6.0) and summary["judge_reference_mean"] == 6.0
    assert summary["judge_failures"] == 0 and summary["judge_scored"] == 4
    # The model's answer and the judge's reference both reach the rating request.
    _, user = next(entry for entry in server.log if entry[0] == "score")
    assert "REFERENCE ANSWER" in answer_between(
        user, "[The Start of Assistant 2's Answer]", "[The End of Assistant 2's Answer]"
    )


def test_retries_then_failures_are_counted_not_guessed():
    attempts: dict[str, int] = {}

    def script(kind, user):
        if kind == "reference":
            return "ref"
        question = user.split("[Question]", 1)[1].split("[The Start", 1)[0].strip()
        attempts[question] = attempts.get(question, 0) + 1
        if "0?" in question:
            return "7 7"  # well-formed at once
        if "1?" in question:  # malformed once, then well-formed
            return "I think both are fine" if attempts[question] == 1 else "6 4"
        if "2?" in question:
            return "11 5\nout of range, every time"
        return "no scores here at all"

    with JudgeServer(script) as server:

        async def job(judge):
            refs = await judge.references(rows(), desc="refs")
            return await judge.rate_all(rows(), {r.id: "answer" for r in rows()}, refs, desc="rate")

        ratings, judge = run_judge(server, job, retries=2)
    by_id = {r.id: r for r in ratings}
    assert by_id["q0"].score == 50.0 and by_id["q0"].attempts == 1
    assert by_id["q1"].score == pytest.approx(60.0) and by_id["q1"].attempts == 2
    for failed in ("q2", "q3"):
        assert by_id[failed].score is None and by_id[failed].attempts == 3
        assert "unparsable" in by_id[failed].failure
    assert "outside" in by_id["q2"].failure
    assert server.count("score") == 1 + 2 + 3 + 3
    summary = summarize_ratings(ratings)
    assert summary["judge_failures"] == 2 and summary["judge_scored"] == 2
    assert summary["judge_score"] == pytest.approx(55.0)  # the mean of the scored prompts only
    assert len(summary["judge_failure_examples"]) == 2


def test_pairwise_judges_both_orders_and_cancels_position_bias():
    good = {r.id: f"good answer {r.id}" for r in rows()}
    bad = {r.id: f"bad answer {r.id}" for r in rows()}
    with JudgeServer(content_judge) as server:
        outcomes, _ = run_judge(server, lambda judge: judge.compare_all(rows(), good, bad, desc="pair"))
        reverse, _ = run_judge(server, lambda judge: judge.compare_all(rows(), bad, good, desc="pair"))
        same, _ = run_judge(server, lambda judge: judge.compare_all(rows(), good, good, desc="pair"))
    assert server.count("pairwise") == 3 * 2 * 4  # each pair in both orders
    assert summarize_pairs(outcomes)["win"] == 4 and summarize_pairs(outcomes)["consistent"] == 4
    assert summarize_pairs(reverse)["loss"] == 4
    assert summarize_pairs(same)["tie"] == 4

    # A judge that always prefers the first position: every pair becomes a tie, never a win.
    with JudgeServer(lambda kind, user: "[[A]]") as server:
        biased, _ = run_judge(server, lambda judge: judge.compare_all(rows(), good, bad, desc="pair"))
    summary = summarize_pairs(biased)
    assert (summary["win"], summary["tie"], summary["loss"]) == (0, 4, 0)
    assert summary["consistent"] == 0 and summary["win_rate"] == 0.0


def test_pairwise_mixed_outcome_and_failure():
    def script(kind, user):
        a = answer_between(user, "[The Start of Assistant A's Answer]", "[The End of Assistant A's Answer]")
        if "x0" in a or "y0" in a:
            return "[[A]]" if a.startswith("x") else "[[C]]"  # win + tie -> win
        return "no verdict"

    first = {"q0": "x0", "q1": "x1"}
    second = {"q0": "y0", "q1": "y1"}
    with JudgeServer(script) as server:
        outcomes, _ = run_judge(server, lambda judge: judge.compare_all(rows(2), first, second, desc="pair"), retries=1)
    assert outcomes[0].outcome == "win" and outcomes[0].verdicts == ["win", "tie"]
    assert outcomes[1].outcome is None and "unparsable" in outcomes[1].failure
    summary = summarize_pairs(outcomes)
    assert summary["failures"] == 1 and summary["judged"] == 1 and summary["win_rate"] == 1.0


def test_user_template_replaces_the_default(tmp_path):
    template = tmp_path / "score.txt"
    template.write_text("Reference first.\nREF: {reference}\nANSWER: {answer}\nQ: {question}\nTwo scores, ref first.")
    with JudgeServer(lambda kind, user: "ref" if "Reference first" not in user else "8 2") as server:

        async def job(judge):
            return await judge.rate(rows(1)[0], "answer", "reference")

        rating, _ = run_judge(server, job, templates=JudgeTemplates.load({"score": template}))
    # The reference comes first in this template, so the first score is the reference's.
    assert (rating.model_score, rating.reference_score) == (2.0, 8.0)
    assert rating.score == pytest.approx(20.0)
    with pytest.raises(GadError, match="placeholder"):
        bad = tmp_path / "bad.txt"
        bad.write_text("no placeholders")
        JudgeTemplates.load({"score": bad})


def write_answers(path, answers):
    path.write_text("".join(json.dumps({"id": k, "response": v}) + "\n" for k, v in answers.items()))
    return path


def write_prompts(path, n=4):
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question number {i}?"}) + "\n" for i in range(n)))
    return path


def test_evaluate_caches_references_in_the_teacher_cache(tmp_path):
    prompts = write_prompts(tmp_path / "mini.jsonl")
    good = write_answers(tmp_path / "good.jsonl", {f"q{i}": f"good answer {i}" for i in range(4)})
    bad = write_answers(tmp_path / "bad.jsonl", {f"q{i}": f"bad answer {i}" for i in range(4)})
    teacher = write_answers(tmp_path / "teacher.jsonl", {f"q{i}": f"good teacher answer {i}" for i in range(4)})
    cache = tmp_path / "cache.sqlite"
    with JudgeServer(content_judge) as server:
        config = JudgeConfig(base_url=server.base_url, model="judge-model", cache=cache)
        first = evaluate(
            [f"good={good}", f"bad={bad}"],
            [str(prompts)],
            out_dir=tmp_path / "eval1",
            judge=config,
            teacher=teacher,
            pairs=[("good", "bad")],
            progress=False,
        )
        assert server.count("reference") == 4
        second = evaluate([f"good={good}"], [str(prompts)], out_dir=tmp_path / "eval2", judge=config, progress=False)
        assert server.count("reference") == 4, "the second eval must not request references again"
    assert len(TeacherCache(cache)) == 4
    result = first.results
    assert result["good"]["mini"]["judge_score"] == pytest.approx(60.0)
    assert result["bad"]["mini"]["judge_score"] == pytest.approx(100 / 3)
    assert result["teacher"]["mini"]["judge_score"] == pytest.approx(60.0)
    assert second.results["good"]["mini"]["judge_score"] == pytest.approx(60.0)
    assert second.judge["requests"]["reference"] == 0
    pair = first.pairwise[0]
    assert (pair["first"], pair["second"], pair["win"], pair["loss"]) == ("good", "bad", 4, 0)
    on_disk = json.loads((tmp_path / "eval1" / "eval.json").read_text())
    assert on_disk["results"]["good"]["mini"]["judge_score"] == pytest.approx(60.0)
    assert on_disk["sets"]["mini"]["reference_source"] == "teacher"
    assert (tmp_path / "eval1" / "answers" / "judge_reference" / "mini.jsonl").is_file()
    assert len((tmp_path / "eval1" / "ratings" / "good" / "mini.jsonl").read_text().splitlines()) == 4


def test_unreachable_judge_is_one_line_error(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    prompts = write_prompts(tmp_path / "mini.jsonl", 2)
    answers = write_answers(tmp_path / "a.jsonl", {"q0": "x", "q1": "y"})
    config = JudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=0)
    with pytest.raises(GadError, match="unreachable") as info:
        evaluate([str(answers)], [str(prompts)], out_dir=tmp_path / "out", judge=config, progress=False)
    assert "\n" not in str(info.value)


def test_gad_eval_prints_the_failure_count_and_fails_when_every_rating_failed(tmp_path, capsys):
    from gad.cli import main

    prompts = write_prompts(tmp_path / "mini.jsonl", 3)
    answers = write_answers(tmp_path / "a.jsonl", {f"q{i}": f"answer {i}" for i in range(3)})

    def no_scores(kind, text):
        return "a reference answer" if kind == "reference" else "I would rather not say."

    base = ["eval", "--model", f"a={answers}", "--prompts", str(prompts), "--judge-retries", "0"]
    with JudgeServer(no_scores) as server:
        code = main([*base, "--judge-url", server.base_url, "--out", str(tmp_path / "bad")])
    captured = capsys.readouterr()
    assert code == 1 and "judge: 3 of 3 ratings failed" in captured.out and "every judge request failed" in captured.err
    with JudgeServer(content_judge) as server:
        code = main([*base, "--judge-url", server.base_url, "--out", str(tmp_path / "good")])
    assert code == 0 and "judge: 0 of 3 ratings failed" in capsys.readouterr().out


def test_a_plain_http_judge_gets_no_default_key(tmp_path, capsys, monkeypatch):
    from gad.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-key-123")
    monkeypatch.setenv("LOCAL_JUDGE_KEY", "local-456")
    prompts = write_prompts(tmp_path / "mini.jsonl", 1)
    answers = write_answers(tmp_path / "a.jsonl", {"q0": "answer"})
    base = ["eval", "--model", f"a={answers}", "--prompts", str(prompts)]
    with JudgeServer(content_judge) as server:
        assert main([*base, "--judge-url", server.base_url, "--out", str(tmp_path / "1")]) == 0
        assert server.authorizations and all("sk-real" not in (a or "") for a in server.authorizations)
        named = [*base, "--judge-url", server.base_url, "--out", str(tmp_path / "2"), "--judge-api-key-env",
                 "LOCAL_JUDGE_KEY"]  # fmt: skip
        assert main(named) == 0
        assert server.authorizations[-1] == "Bearer local-456"
