"""The HTML report holds the measured numbers, and its embedded images are valid PNGs."""

from __future__ import annotations

import base64
import io
import json
import re

from _judge_server import JudgeServer, content_judge

from gad.cli import main
from gad.evaluation.evaluate import JudgeConfig, evaluate
from gad.evaluation.report import fmt

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fake_run(root):
    write_jsonl(
        root / "seqkd" / "metrics.jsonl", [{"step": s, "loss": 3.0 - 0.1 * s, "rouge_l": 0.1 * s} for s in range(1, 6)]
    )
    write_jsonl(
        root / "gad" / "metrics.jsonl",
        [
            {
                "step": s,
                "reward": (-1) ** s * 0.1,
                "d_loss": 0.69 - 0.01 * s,
                "d_acc": 0.5 + 0.02 * s,
                "d_score_gap": 0.1 * s,
                "d_teacher_score": 0.2,
                "d_student_score": 0.1,
                "kl": 0.001 * s,
                "student_len": 20 + s,
                "teacher_len": 24,
                "rouge_l": 0.2,
            }
            for s in range(1, 8)
        ]
        + ["{torn line"],  # a run still writing
    )
    (root / "gad" / "metrics.jsonl").write_text(
        (root / "gad" / "metrics.jsonl").read_text().replace('"{torn line"', "{torn line")
    )


def test_report_tables_hold_measured_numbers_and_images_are_png(tmp_path):
    run = tmp_path / "run"
    fake_run(run)
    prompts = write_jsonl(tmp_path / "mini.jsonl", [{"id": f"q{i}", "prompt": f"Question <{i}>?"} for i in range(3)])
    teacher = write_jsonl(tmp_path / "t.jsonl", [{"id": f"q{i}", "response": f"good teacher {i}"} for i in range(3)])
    seqkd = write_jsonl(tmp_path / "s.jsonl", [{"id": f"q{i}", "response": f"bad seqkd answer {i}"} for i in range(3)])
    gad = write_jsonl(tmp_path / "g.jsonl", [{"id": f"q{i}", "response": f"good gad <b>{i}</b>"} for i in range(3)])
    with JudgeServer(content_judge) as server:
        report = evaluate(
            [f"seqkd={seqkd}", f"gad={gad}"],
            [str(prompts)],
            out_dir=run / "eval",
            judge=JudgeConfig(base_url=server.base_url, model="judge", cache=tmp_path / "c.sqlite"),
            teacher=teacher,
            pairs=[("gad", "seqkd")],
            progress=False,
        )
    assert main(["report", str(run), "--out", str(tmp_path / "out" / "report.html")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    markdown = (tmp_path / "out" / "report.md").read_text()
    results = report.results
    for model in ("teacher", "seqkd", "gad"):
        measured = results[model]["mini"]
        for text in (
            fmt(measured["judge_score"], 1),
            fmt(measured["rouge_l"], 3),
            fmt(measured["ngram_f1_2"], 3),
            fmt(measured["distinct_1"], 3),
            fmt(measured["words"], 1),
        ):
            assert text in page and text in markdown
    assert fmt(100 / 3, 1) == "33.3" and "33.3" in page and "60.0" in page
    pair = report.pairwise[0]
    assert (pair["win"], pair["tie"], pair["loss"]) == (3, 0, 0)
    assert re.search(r"<td>gad vs seqkd</td><td>mini</td><td>3</td><td>0</td><td>0</td><td>100.0</td>", page)
    # Answers are escaped, and shown side by side with the teacher's first.
    assert "good gad &lt;b&gt;0&lt;/b&gt;" in page and "<b>0</b>" not in page
    assert page.index("good teacher 0") < page.index("bad seqkd answer 0") < page.index("good gad &lt;b&gt;0")
    # Embedded images decode to valid PNGs that matplotlib and PIL both read.
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 7
    from matplotlib import image as mpimg
    from PIL import Image

    for encoded in images:
        data = base64.b64decode(encoded)
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(data)) as picture:
            picture.verify()
        assert mpimg.imread(io.BytesIO(data), format="png").ndim == 3
    assert (tmp_path / "out" / "report_files" / "reward.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "report_files/reward.png" in markdown


def test_report_of_nothing_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_summary_plots_come_first_and_validation_accuracy_is_drawn(tmp_path):
    from gad.evaluation.report import Section, build_report, plot_curves

    run = tmp_path / "run"
    # a run that logged only d_acc_val still gets its discriminator-accuracy plot
    write_jsonl(run / "warmup" / "metrics.jsonl", [{"step": s, "d_acc_val": 0.5 + 0.1 * s} for s in range(1, 4)])
    validation = {name: {"validation": [{"step": 2, "c2st": c2st}]} for name, c2st in (("seqkd", 70.0), ("gad", 60))}
    plots = plot_curves(validation, (("Validation C2ST", "val_c2st", ("c2st",), "accuracy (%)"),))
    assert [stem for _, stem, _ in plots] == ["val_c2st"]
    assert plot_curves(validation, (("nothing", "none", ("style_pass",), "%"),)) == []  # no data, no plot
    page, markdown = build_report([run], tmp_path / "r.html", summary=Section("Summary", plots=plots))
    html = page.read_text()
    assert html.index('alt="Validation C2ST"') < html.index('alt="Discriminator accuracy: fresh samples, validation')
    assert (tmp_path / "r_files" / "val_c2st.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "r_files/val_c2st.png" in markdown.read_text()
