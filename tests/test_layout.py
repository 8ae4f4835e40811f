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


def test_read_metrics_skips_a_line_cut_by_a_crash(tmp_path, caplog):
    from gad.layout import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [row["step"] for row in read_metrics(path)] == [1, 2]
    assert "line 4: skipping an unreadable line" in caplog.text


def test_resuming_over_a_cut_metrics_line_keeps_the_rows_up_to_the_checkpoint(tmp_path):
    from gad.training.callbacks import MetricsFile

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    MetricsFile(path, "warmup", resume_step=2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
