"""End to end: train tiny seqkd and gad runs, evaluate both with a local judge, select a checkpoint, write the report.

The tiny recipe's teacher answers like a pirate ("Ahoy! ... Arr!"); the scripted judge rates an answer by how
pirate-like it is, so the numbers are real measurements of the trained students, whatever they are.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import pytest
from _judge_server import JudgeServer, answer_between

from gad.cli import main
from gad.evaluation.report import fmt

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny-cpu.yaml"
TRAIN = REPO / "recipes" / "data" / "tiny-train.jsonl"

pytestmark = pytest.mark.skipif(not RECIPE.is_file(), reason="the tiny recipe is not there")


def pirate_judge(kind: str, user: str) -> str:
    if kind == "reference":
        return "Ahoy! A reference answer, matey. Arr!"
    if kind == "score":
        answer = answer_between(user, "[The Start of Assistant 1's Answer]", "[The End of Assistant 1's Answer]")
        return f"{min(10, 1 + 3 * sum(answer.count(w) for w in ('Ahoy', 'matey', 'Arr')))} 7\nPirate enough?"
    a = answer_between(user, "[The Start of Assistant A's Answer]", "[The End of Assistant A's Answer]")
    b = answer_between(user, "[The Start of Assistant B's Answer]", "[The End of Assistant B's Answer]")
    pa, pb = a.count("Ahoy") + a.count("Arr"), b.count("Ahoy") + b.count("Arr")
    return "[[A]]" if pa > pb else "[[B]]" if pb > pa else "[[C]]"


def test_train_eval_select_report(tiny_run, tmp_path, capsys):
    run = tiny_run  # seqkd, warmup and gad trained through the CLI (conftest)
    rows = [json.loads(line) for line in TRAIN.read_text().splitlines()[:3]]
    prompts = tmp_path / "evalset.jsonl"
    prompts.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"]}) + "\n" for r in rows))
    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text("".join(json.dumps({"id": r["id"], "response": r["teacher_response"]}) + "\n" for r in rows))

    with JudgeServer(pirate_judge) as server:
        judge = ["--judge-url", server.base_url, "--judge-model", "pirate-judge", "--cache", str(tmp_path / "c.sqlite")]
        code = main(
            [
                "eval",
                "--model",
                f"seqkd={run / 'seqkd' / 'student'}",
                "--model",
                f"gad={run / 'gad' / 'student'}",
                "--prompts",
                str(prompts),
                "--teacher",
                str(teacher),
                "--pairwise",
                "gad:seqkd",
                "--discriminator",
                str(run / "gad" / "discriminator"),
                "--out",
                str(run / "eval"),
                "--max-new-tokens",
                "16",
                *judge,
            ]
        )
        assert code == 0
        references_after_eval = server.count("reference")
        code = main(
            [
                "eval",
                "--select",
                str(run / "gad"),
                "--prompts",
                str(prompts),
                "--teacher",
                str(teacher),
                "--max-new-tokens",
                "16",
                "--max-length-ratio",
                "100",
                "--min-length-ratio",
                "0",
                *judge,
            ]
        )
        assert code == 0
        assert server.count("reference") == references_after_eval == 3  # paid once, shared by both evaluations
    evaluation = json.loads((run / "eval" / "eval.json").read_text())
    selection = json.loads((run / "gad" / "selection.json").read_text())
    assert (run / "gad" / "best").exists() and selection["chosen"]
    assert {c["name"] for c in selection["candidates"]} == {"checkpoint-2", "checkpoint-4", "student"}

    assert main(["report", str(run), "--out", str(run / "report.html")]) == 0
    page = (run / "report.html").read_text()
    results = evaluation["results"]
    for model in ("teacher", "seqkd", "gad"):
        measured = results[model]["evalset"]
        assert "disc_score" in measured and measured["judge_failures"] == 0
        for key, digits in (("judge_score", 1), ("rouge_l", 3), ("tokens", 1), ("distinct_2", 3), ("disc_score", 3)):
            assert fmt(measured[key], digits) in page, (model, key)
    pair = evaluation["pairwise"][0]
    assert pair["win"] + pair["tie"] + pair["loss"] + pair["failures"] == 3
    assert f"<td>gad vs seqkd</td><td>evalset</td><td>{pair['win']}</td><td>{pair['tie']}</td>" in page
    assert "Checkpoint selection" in page and selection["chosen"] + " ✔" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 6  # reward, d_loss, d_acc, d scores, length, loss (+ KL, ROUGE-L when logged)
    from PIL import Image

    for encoded in images:
        data = base64.b64decode(encoded)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.format == "PNG" and picture.size[0] > 100
    assert (run / "report.md").is_file()
