"""eval.json and selection.json as dataclasses: round trips, files of earlier versions, and clear refusals."""

from __future__ import annotations

import json

import pytest

from gad.errors import GadError
from gad.evaluation.cli import summary_text
from gad.evaluation.report import collect_inputs, eval_tables, selection_table
from gad.evaluation.results import EVAL_FILE, SELECTION_FILE, EvalResults, Selection

# eval.json as `gad eval` wrote it before it was a dataclass (keys in this order).
OLD_EVAL = {
    "version": 1,
    "created": "2025-01-01 12:00:00",
    "seconds": 3.2,
    "models": {"gad": {"path": "run/gad/student", "kind": "model"}, "teacher": {"path": "t.jsonl", "kind": "teacher"}},
    "order": ["teacher", "gad"],
    "sets": {"mini": {"n": 2, "source": "mini.jsonl", "reference_source": "teacher"}},
    "judge": {"model": "gpt-4o", "templates": "default", "requests": {"reference": 2}, "cache": "c.sqlite"},
    "generation": {"batch_size": 8, "max_new_tokens": 512, "temperature": 0.0, "top_p": 1.0, "seed": 0, "device": None},
    "discriminator": None,
    "results": {
        "teacher": {"mini": {"n": 2, "answered": 2, "judge_score": 55.0, "judge_failures": 0, "rouge_l": 1.0}},
        "gad": {"mini": {"n": 2, "answered": 2, "judge_score": 48.25, "judge_failures": 1, "rouge_l": 0.4}},
    },
    "pairwise": [
        {"first": "gad", "second": "teacher", "set": "mini", "win": 1, "tie": 0, "loss": 1, "failures": 0}
        | {"win_rate": 0.5, "loss_rate": 0.5, "consistent": 2}
    ],
}
OLD_SELECTION = {  # without best_kind: --no-link
    "rule": "highest mean judge_score over the prompt sets among checkpoints with 0.5 <= ... <= 2",
    "metric": "judge_score",
    "max_length_ratio": 2.0,
    "min_length_ratio": 0.5,
    "prompt_sets": ["mini"],
    "length_reference": {"mini": "teacher"},
    "candidates": [
        {"name": "checkpoint-2", "path": "gad/checkpoint-2", "score": 40.0, "len_ratio": 1.1, "eligible": True},
        {"name": "student", "path": "gad/student", "score": 45.0, "len_ratio": 3.0, "eligible": False}
        | {"reason": "length ratio 3.00 > 2"},
    ],
    "chosen": "checkpoint-2",
    "chosen_path": "gad/checkpoint-2",
    "eval": "gad/selection-eval/eval.json",
    "best": None,
}


def test_eval_results_keep_the_file_format():
    results = EvalResults.from_dict(OLD_EVAL)
    assert results.to_dict() == OLD_EVAL
    assert list(json.loads(results.to_json())) == list(OLD_EVAL)  # same keys, same order
    assert EvalResults.from_json(results.to_json()) == results


def test_eval_results_support_the_dict_lookups_of_earlier_callers():
    results = EvalResults.from_dict(OLD_EVAL)
    assert results["order"] == ["teacher", "gad"]  # the demo reads these two
    assert results["results"]["gad"]["mini"]["judge_score"] == 48.25
    assert results["pairwise"] is results.pairwise
    with pytest.raises(KeyError):
        results["nope"]


def test_older_and_newer_files(tmp_path):
    older = {k: v for k, v in OLD_EVAL.items() if k not in ("order", "pairwise", "generation")}
    results = EvalResults.from_dict({**older, "added_later": {"x": 1}})  # unknown keys are ignored
    assert results.order == ["teacher", "gad"] and results.pairwise == [] and results.generation == {}
    with pytest.raises(GadError, match="newer"):
        EvalResults.from_dict({**OLD_EVAL, "version": 2})


def test_files_that_are_not_eval_json_are_refused_in_one_line(tmp_path):
    path = tmp_path / EVAL_FILE
    for text, message in (
        ("{torn", "not valid JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        (json.dumps({"version": 1, "order": []}), "no sets, results"),
    ):
        path.write_text(text)
        with pytest.raises(GadError, match=message) as info:
            EvalResults.read(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(GadError, match="cannot read"):
        EvalResults.read(tmp_path / "missing.json")


def test_write_then_read(tmp_path):
    results = EvalResults.from_dict(OLD_EVAL)
    path = results.write(tmp_path / "deep" / EVAL_FILE)
    assert EvalResults.read(path) == results
    assert json.loads(path.read_text()) == OLD_EVAL


def test_selection_round_trip_and_old_files(tmp_path):
    selection = Selection.from_dict(OLD_SELECTION)
    assert selection.best_kind is None and selection["chosen"] == "checkpoint-2"
    assert selection.to_dict() == {**OLD_SELECTION, "best_kind": None}
    assert Selection.read(selection.write(tmp_path / SELECTION_FILE)) == selection
    with pytest.raises(GadError, match="selection.json: no metric"):
        Selection.from_dict({k: v for k, v in OLD_SELECTION.items() if k != "metric"})


def test_readers_take_the_dataclasses(tmp_path):
    folder = tmp_path / "run"
    EvalResults.from_dict(OLD_EVAL).write(folder / "eval" / EVAL_FILE)
    Selection.from_dict(OLD_SELECTION).write(folder / "gad" / SELECTION_FILE)
    inputs = collect_inputs([folder])
    [(eval_path, results)] = inputs.evals
    [(_, selection)] = inputs.selections
    assert eval_path == folder / "eval" / EVAL_FILE and isinstance(results, EvalResults)
    tables = eval_tables(results)
    assert tables[0].rows == [["teacher", "55.0", "55.0"], ["gad", "48.2 (1 failed)", "48.2"]]
    assert tables[-1].rows[0][:5] == ["gad vs teacher", "mini", "1", "0", "1"]
    assert selection_table(selection).rows[0][0] == "checkpoint-2 ✔"
    text = summary_text(results)
    assert "judge_score per model and set" in text and "48.25" in text and "gad vs teacher on mini: 1/0/1" in text
