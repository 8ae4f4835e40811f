"""Batched generation with a tiny local model, the answer-file round trip, prompt sets and the CLI."""

from __future__ import annotations

import json
import os

import pytest

from gad.cli import main
from gad.data import PromptRow
from gad.errors import GadError
from gad.evaluation.generate import generate_answers, read_answers
from gad.evaluation.prompt_sets import PROMPT_SETS, load_prompt_set, resolve_prompt_set

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from gad.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


PROMPTS = [
    PromptRow("a", [{"role": "user", "content": "Tell me a story."}]),
    PromptRow("b", [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]),
    PromptRow("c", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
]


def test_greedy_generation_is_deterministic_and_ordered(tiny_model):
    first = generate_answers(tiny_model, PROMPTS, batch_size=2, max_new_tokens=8, progress=False)
    second = generate_answers(tiny_model, PROMPTS, batch_size=2, max_new_tokens=8, progress=False)
    assert [r["id"] for r in first] == ["a", "b", "c"]
    assert first == second
    for row in first:
        assert isinstance(row["response"], str)
        assert 0 <= row["response_tokens"] <= 8
        assert row["finish_reason"] in ("stop", "length")
        assert "<|im_end|>" not in row["response"] and "<|endoftext|>" not in row["response"]
    assert first[1]["prompt"].startswith("What is the capital")


def test_sampling_runs_and_respects_seed(tiny_model):
    one = generate_answers(tiny_model, PROMPTS[:2], max_new_tokens=6, temperature=1.0, seed=3, progress=False)
    two = generate_answers(tiny_model, PROMPTS[:2], max_new_tokens=6, temperature=1.0, seed=3, progress=False)
    assert one == two


def test_missing_or_bad_model_folder_is_a_gad_error(tmp_path):
    with pytest.raises(GadError, match="not found"):
        generate_answers(tmp_path / "nope", PROMPTS, progress=False)
    with pytest.raises(GadError, match="config.json"):
        generate_answers(tmp_path, PROMPTS, progress=False)


def test_cli_generate_writes_answer_file(tiny_model, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"Say {i}"}) + "\n" for i in range(3)))
    out = tmp_path / "answers.jsonl"
    code = main(
        [
            "generate",
            "--model",
            str(tiny_model),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--max-new-tokens",
            "4",
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["x0", "x1", "x2"]
    assert set(read_answers(out)) == {"x0", "x1", "x2"}


def test_named_prompt_sets_resolve(monkeypatch, tmp_path, capsys):
    name, rows = load_prompt_set("vicuna80")
    assert name == "vicuna80" and len(rows) == 80 and rows[0].id == "vicuna_1"
    assert len(load_prompt_set("selfinst252", limit=5)[1]) == 5
    # Every named set ships with the package, with its licence noted beside it; nothing is read from elsewhere.
    from gad.resources import resource

    readme = resource("prompt_sets", "README.md").read_text(encoding="utf-8")
    for known, (file_name, _, _) in PROMPT_SETS.items():
        name, path = resolve_prompt_set(known)
        assert path == resource("prompt_sets", file_name) and path.is_file() and f"`{file_name}`" in readme
    assert [len(load_prompt_set(n)[1]) for n in ("dolly500", "mtbench80", "koala180", "arena_hard500")] == [
        500, 80, 180, 500,
    ]  # fmt: skip
    with pytest.raises(GadError) as info:
        resolve_prompt_set("no_such_set")
    for known in PROMPT_SETS:
        assert known in str(info.value)
    assert main(["generate", "--model", str(tmp_path), "--prompts", "no_such_set", "--out", str(tmp_path / "o")]) == 2
    assert "error: unknown prompt set" in capsys.readouterr().err


def test_generating_from_a_model_in_memory_leaves_it_and_the_random_stream_as_they_were(tiny_model_dir):
    import torch

    from gad.data import PromptRow
    from gad.evaluation.generate import generate_with, load_model

    model, tokenizer = load_model(tiny_model_dir, "cpu")
    model.train()
    tokenizer.padding_side = "right"
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    rows = generate_with(model, tokenizer, [PromptRow("a", [{"role": "user", "content": "Hi?"}])], max_new_tokens=4,
                         temperature=1.0, seed=7)  # fmt: skip
    assert torch.equal(torch.rand(3), expected)  # the caller's stream continues as if nothing had been drawn
    assert model.training and tokenizer.padding_side == "right" and len(rows) == 1
