"""gad.layout: every path of a run, named in one place."""

from __future__ import annotations

from pathlib import Path

from gad.layout import COMPLETE_MARKER, RunLayout, StageLayout, answers_file, checkpoint_step


def test_run_and_stage_paths(tmp_path):
    run = RunLayout(tmp_path / "run")
    gad = run.stage("gad")
    assert gad.root == tmp_path / "run" / "gad" and gad.name == "gad"
    assert (gad.student, gad.discriminator) == (gad.root / "student", gad.root / "discriminator")
    assert (gad.metrics.name, gad.config.name, gad.finished_marker.name) == (
        "metrics.jsonl", "config.yaml", "gad_finished.json",
    )  # fmt: skip
    assert gad.checkpoint(50) == gad.root / "checkpoint-50"
    assert (run.eval_dir, run.best, run.report) == (run.root / "eval", run.root / "best", run.root / "report.html")
    assert answers_file(run.eval_dir, "gad", "vicuna80") == run.root / "eval" / "answers" / "gad" / "vicuna80.jsonl"


def test_checkpoints_are_ordered_by_step_and_only_complete_ones_are_latest(tmp_path):
    stage = StageLayout(tmp_path)
    assert stage.checkpoints() == [] and stage.latest_checkpoint() is None
    for step in (10, 2, 100):
        stage.checkpoint(step).mkdir()
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint
    (tmp_path / "checkpoint-7").write_text("a file")  # not a folder
    assert [checkpoint_step(p) for p in stage.checkpoints()] == [2, 10, 100]  # numeric, not lexicographic
    assert stage.latest_checkpoint() is None  # none is marked complete
    (stage.checkpoint(10) / COMPLETE_MARKER).write_text("{}")
    assert stage.latest_checkpoint() == stage.checkpoint(10)  # 100 is newer but incomplete
    assert checkpoint_step(Path("x/student")) is None


def test_stages_lists_existing_stage_folders_in_pipeline_order(tmp_path):
    run = RunLayout(tmp_path)
    for name in ("gad", "seqkd", "notes"):
        (tmp_path / name).mkdir()
    assert [s.name for s in run.stages()] == ["seqkd", "gad"]
