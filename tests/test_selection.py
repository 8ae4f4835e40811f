"""Checkpoint selection: the rule with its length guard, checkpoint discovery, RUN_DIR/best and selection.json."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from _judge_server import JudgeServer, answer_between

from gad.cli import main
from gad.errors import GadError
from gad.evaluation.evaluate import GenerationConfig, JudgeConfig
from gad.evaluation.selection import COPY_MARKER, choose, find_checkpoints, select_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_choose_prefers_best_score_within_the_length_guard():
    candidates = [
        {"name": "checkpoint-10", "score": 45.0, "len_ratio": 1.0},
        {"name": "checkpoint-20", "score": 52.0, "len_ratio": 3.5},  # best score, but length-hacked
        {"name": "checkpoint-30", "score": 48.0, "len_ratio": 1.4},
        {"name": "checkpoint-40", "score": 48.0, "len_ratio": 1.2},  # tie: the earlier one wins
        {"name": "checkpoint-50", "score": 60.0, "len_ratio": 0.2},  # too short
        {"name": "checkpoint-60", "score": None, "len_ratio": 1.0},  # every rating failed
    ]
    best = choose(candidates, max_length_ratio=2.0, min_length_ratio=0.5)
    assert best["name"] == "checkpoint-30"
    eligible = {c["name"]: c["eligible"] for c in candidates}
    assert eligible == {
        "checkpoint-10": True,
        "checkpoint-20": False,
        "checkpoint-30": True,
        "checkpoint-40": True,
        "checkpoint-50": False,
        "checkpoint-60": False,
    }
    assert "3.50 > 2" in candidates[1]["reason"] and "< 0.5" in candidates[4]["reason"]
    # No teacher length to compare with: the guard cannot apply, the score decides.
    assert choose([{"name": "x", "score": 1.0, "len_ratio": None}], max_length_ratio=1.0)["name"] == "x"
    assert choose([{"name": "x", "score": 1.0, "len_ratio": 9.0}], max_length_ratio=1.0) is None


def fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_find_checkpoints_in_stage_and_run_folders(tmp_path):
    stage = tmp_path / "run" / "gad"
    for step in (100, 20, 3):
        fake_model(stage / f"checkpoint-{step}")
    (stage / "checkpoint-7").mkdir()  # no config.json: not a model
    fake_model(stage / "student")
    names = [name for name, _ in find_checkpoints(stage)]
    assert names == ["checkpoint-3", "checkpoint-20", "checkpoint-100", "student"]
    assert [name for name, _ in find_checkpoints(tmp_path / "run")][0] == "gad/checkpoint-3"
    with pytest.raises(GadError, match="no checkpoint"):
        find_checkpoints(tmp_path)
    with pytest.raises(GadError, match="not found"):
        find_checkpoints(tmp_path / "missing")


def hash_judge(kind: str, user: str) -> str:
    """Scores an answer 1..10 by a hash of its text: deterministic, different per checkpoint."""
    if kind == "reference":
        return "a reference answer of some length here"
    answer = answer_between(user, "[The Start of Assistant 1's Answer]", "[The End of Assistant 1's Answer]")
    return f"{1 + int(hashlib.sha256(answer.encode()).hexdigest(), 16) % 10} 5"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from gad.models import build_tiny_model

    stage = tmp_path_factory.mktemp("run") / "gad"
    for step, seed in ((10, 0), (20, 2)):
        build_tiny_model(stage / f"checkpoint-{step}", seed=seed)
    prompts = stage.parent / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"Tell me about {w}."}) + "\n"
            for i, w in enumerate(["cats", "rain", "boats"])
        )
    )
    teacher = stage.parent / "teacher.jsonl"
    teacher.write_text(
        "".join(json.dumps({"id": f"p{i}", "response": "one two three four five six"}) + "\n" for i in range(3))
    )
    return stage, prompts, teacher


def test_select_checkpoint_end_to_end_with_a_judge(tiny_run, tmp_path):
    stage, prompts, teacher = tiny_run
    with JudgeServer(hash_judge) as server:
        selection = select_checkpoint(
            stage,
            [str(prompts)],
            judge=JudgeConfig(base_url=server.base_url, model="j", cache=tmp_path / "cache.sqlite"),
            teacher=teacher,
            max_length_ratio=100.0,
            min_length_ratio=0.0,
            generation=GenerationConfig(max_new_tokens=6),
            progress=False,
        )
    report = json.loads((stage / "selection-eval" / "eval.json").read_text())
    scores = {name: report["results"][name]["prompts"]["judge_score"] for name in ("checkpoint-10", "checkpoint-20")}
    expected = max(scores, key=lambda k: (scores[k], -int(k.split("-")[1])))
    assert selection.chosen == expected
    assert [c["score"] for c in selection.candidates] == pytest.approx(
        [scores["checkpoint-10"], scores["checkpoint-20"]]
    )
    best = stage / "best"
    assert best.is_symlink() and best.resolve() == (stage / expected).resolve()
    on_disk = json.loads((stage / "selection.json").read_text())
    assert on_disk["chosen"] == expected and "length ratio" in on_disk["rule"]
    assert on_disk["length_reference"] == {"prompts": "teacher"}


def test_select_by_judge_free_metric_with_copy_fallback_and_guard(tiny_run, monkeypatch, capsys):
    stage, prompts, teacher = tiny_run

    def refuse(self, *args, **kwargs):
        raise OSError("symlinks not allowed here")

    monkeypatch.setattr(Path, "symlink_to", refuse)
    if (stage / "best").is_symlink():
        (stage / "best").unlink()
    args = [
        "eval",
        "--select",
        str(stage),
        "--prompts",
        str(prompts),
        "--teacher",
        str(teacher),
        "--select-metric",
        "rouge_l",
        "--max-new-tokens",
        "6",
        "--max-length-ratio",
        "100",
        "--min-length-ratio",
        "0",
    ]
    assert main(args) == 0
    best = stage / "best"
    assert best.is_dir() and not best.is_symlink() and (best / COPY_MARKER).is_file()
    assert (best / "config.json").is_file()
    assert "chosen:" in capsys.readouterr().out
    # A guard nothing passes: one-line error, and selection.json says why.
    assert main([*args[:-4], "--max-length-ratio", "100", "--min-length-ratio", "50"]) == 2
    assert "length guard" in capsys.readouterr().err
    data = json.loads((stage / "selection.json").read_text())
    assert data["chosen"] is None and all(not c["eligible"] for c in data["candidates"])
    # Selection by judge score without a judge is refused up front.
    assert main(["eval", "--select", str(stage), "--prompts", str(prompts)]) == 2


def test_only_checkpoints_whose_save_finished_are_candidates(tmp_path):
    from gad.layout import COMPLETE_MARKER

    for step in (2, 4, 6):
        folder = tmp_path / "gad" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        if step != 6:  # checkpoint-6 was cut off mid-save
            (folder / COMPLETE_MARKER).write_text("{}")
    assert [name for name, _ in find_checkpoints(tmp_path / "gad")] == ["checkpoint-2", "checkpoint-4"]
    for step in (2, 4):  # a run from before completion markers: every checkpoint counts
        (tmp_path / "gad" / f"checkpoint-{step}" / COMPLETE_MARKER).unlink()
    assert len(find_checkpoints(tmp_path / "gad")) == 3
