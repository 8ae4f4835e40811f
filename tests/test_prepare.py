"""gad.prepare: token-budget truncation (counted, never dropping rows) and the datasets the trainers read."""

from __future__ import annotations

import logging

import pytest

from gad.data import TrainingRow
from gad.prepare import TruncationStats, gad_dataset, prompt_token_count, sft_dataset, truncate_rows

LONG_TEXT = "Once upon a time there was a little girl named Lily who loved to play in the park. " * 8
LONG_ANSWER = "The quick brown fox jumps over the lazy dog, and then it runs home to sleep. " * 8
SHORT_PROMPT = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def tokenizer():
    from gad.models import tiny_tokenizer

    return tiny_tokenizer()


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_prompt_token_count_uses_the_chat_template(tokenizer):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    rendered = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert prompt_token_count(tokenizer, prompt) == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert prompt_token_count(tokenizer, prompt) > n_tokens(tokenizer, "Be brief.Hello there")


def test_short_rows_are_untouched(tokenizer):
    rows = [
        TrainingRow(SHORT_PROMPT, "Hello!", "a"),
        TrainingRow([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Why?"}], "Because.", "b"),
    ]
    out, lengths, stats = truncate_rows(rows, tokenizer, max_prompt_length=64, max_response_length=64)
    assert out == rows
    assert lengths == [n_tokens(tokenizer, "Hello!"), n_tokens(tokenizer, "Because.")]
    assert stats == TruncationStats(rows=2, prompts_truncated=0, responses_truncated=0)


def test_exact_budget_is_not_truncation(tokenizer):
    row = TrainingRow([{"role": "user", "content": "Tell me a story."}], "Once upon a time.", "a")
    prompt_budget = prompt_token_count(tokenizer, row.prompt)
    response_budget = n_tokens(tokenizer, row.response)
    out, lengths, stats = truncate_rows(
        [row], tokenizer, max_prompt_length=prompt_budget, max_response_length=response_budget
    )
    assert out == [row]
    assert lengths == [response_budget]
    assert (stats.prompts_truncated, stats.responses_truncated) == (0, 0)


def test_no_budgets_means_no_truncation(tokenizer):
    row = TrainingRow([{"role": "user", "content": LONG_TEXT}], LONG_ANSWER, "a")
    out, lengths, stats = truncate_rows([row], tokenizer, max_prompt_length=None, max_response_length=None)
    assert out == [row]
    assert lengths == [n_tokens(tokenizer, LONG_ANSWER)]
    assert (stats.rows, stats.prompts_truncated, stats.responses_truncated) == (1, 0, 0)


def test_long_prompt_is_truncated_to_its_budget(tokenizer):
    system = {"role": "system", "content": "You are a storyteller."}
    earlier = [system, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    row = TrainingRow([*earlier, {"role": "user", "content": LONG_TEXT}], "The end.", "a")
    budget = prompt_token_count(tokenizer, earlier) + 20
    assert prompt_token_count(tokenizer, row.prompt) > budget
    out, lengths, stats = truncate_rows([row], tokenizer, max_prompt_length=budget, max_response_length=64)
    prompt = out[0].prompt
    assert prompt[:-1] == earlier  # only the last message is shortened
    assert prompt[-1]["role"] == "user"
    assert prompt[-1]["content"] and LONG_TEXT.startswith(prompt[-1]["content"])  # it loses its end
    assert len(prompt[-1]["content"]) < len(LONG_TEXT)
    assert prompt_token_count(tokenizer, prompt) <= budget
    assert out[0].response == "The end." and out[0].id == "a"
    assert lengths == [n_tokens(tokenizer, "The end.")]
    assert (stats.prompts_truncated, stats.responses_truncated) == (1, 0)


def test_prompt_budget_smaller_than_the_template_keeps_one_token(tokenizer):
    row = TrainingRow([{"role": "user", "content": LONG_TEXT}], "ok", "a")
    out, _, stats = truncate_rows([row], tokenizer, max_prompt_length=1, max_response_length=None)
    content = out[0].prompt[0]["content"]
    assert n_tokens(tokenizer, content) == 1 and LONG_TEXT.startswith(content)
    assert stats.prompts_truncated == 1


def test_long_response_is_truncated_to_its_budget(tokenizer):
    row = TrainingRow(SHORT_PROMPT, LONG_ANSWER, "a")
    out, lengths, stats = truncate_rows([row], tokenizer, max_prompt_length=64, max_response_length=10)
    response = out[0].response
    assert LONG_ANSWER.startswith(response) and len(response) < len(LONG_ANSWER)
    assert n_tokens(tokenizer, response) == 10
    assert lengths == [10]
    assert out[0].prompt == SHORT_PROMPT
    assert (stats.prompts_truncated, stats.responses_truncated) == (0, 1)


def test_rows_are_counted_never_dropped(tokenizer):
    rows = [
        TrainingRow([{"role": "user", "content": LONG_TEXT}], LONG_ANSWER, "long-both"),
        TrainingRow(SHORT_PROMPT, "short", "short"),
        TrainingRow([{"role": "user", "content": LONG_TEXT}], "short", "long-prompt"),
        TrainingRow(SHORT_PROMPT, LONG_ANSWER, "long-response"),
    ]
    out, lengths, stats = truncate_rows(rows, tokenizer, max_prompt_length=24, max_response_length=16)
    assert [r.id for r in out] == ["long-both", "short", "long-prompt", "long-response"]
    assert len(lengths) == 4
    assert stats == TruncationStats(rows=4, prompts_truncated=2, responses_truncated=2)
    assert out[1] == rows[1]
    assert lengths == [16, n_tokens(tokenizer, "short"), n_tokens(tokenizer, "short"), 16]
    assert all(prompt_token_count(tokenizer, r.prompt) <= 24 for r in out)
    assert rows[0].prompt[0]["content"] == LONG_TEXT  # the input rows are not modified


def test_response_lengths_are_token_counts_not_characters(tokenizer):
    answers = ["a", "Hello world", "unicode: héllo wörld 日本語", LONG_ANSWER[:200]]
    rows = [TrainingRow(SHORT_PROMPT, a, str(i)) for i, a in enumerate(answers)]
    _, lengths, _ = truncate_rows(rows, tokenizer, max_prompt_length=None, max_response_length=None)
    assert lengths == [n_tokens(tokenizer, a) for a in answers]
    assert lengths[3] < len(answers[3])


def test_stats_are_logged(tokenizer, caplog):
    rows = [TrainingRow(SHORT_PROMPT, LONG_ANSWER, "a")]
    with caplog.at_level(logging.INFO, logger="gad.prepare"):
        truncate_rows(rows, tokenizer, max_prompt_length=64, max_response_length=4)
    assert "1 rows, 0 prompts truncated" in caplog.text
    assert "1 teacher responses truncated" in caplog.text


def test_truncation_of_multibyte_text_stays_within_budget(tokenizer):
    text = "🙂日本語" * 20  # each character is several byte-level tokens
    template = prompt_token_count(tokenizer, [{"role": "user", "content": ""}])
    row = TrainingRow([{"role": "user", "content": text}], text, "a")
    for budget in range(5, 12):
        out, lengths, _ = truncate_rows(
            [row], tokenizer, max_prompt_length=template + budget, max_response_length=budget
        )
        prompt, response = out[0].prompt[0]["content"], out[0].response
        assert "\ufffd" not in response and "\ufffd" not in prompt
        assert text.startswith(response) and text.startswith(prompt)
        assert lengths[0] == n_tokens(tokenizer, response) <= budget
        assert prompt_token_count(tokenizer, out[0].prompt) <= template + budget


def test_gad_dataset_columns(tokenizer):
    rows = [
        TrainingRow(SHORT_PROMPT, "Hello!", "a"),
        TrainingRow([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], "A", "b"),
    ]
    data = gad_dataset(rows, [3, 1])
    assert data.column_names == ["prompt", "teacher_response", "teacher_length", "teacher_finished"]
    assert len(data) == 2
    assert data[0] == {
        "prompt": SHORT_PROMPT, "teacher_response": "Hello!", "teacher_length": 3, "teacher_finished": True
    }  # fmt: skip
    assert data[1]["prompt"] == rows[1].prompt
    assert data["teacher_length"] == [3, 1]


def test_sft_dataset_is_pretokenised_with_the_loss_on_the_teacher_turn(tokenizer):
    rows = [
        TrainingRow(SHORT_PROMPT, "Hello!", "a"),
        TrainingRow([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], "A cut answer", "b",
                    finished=False),
    ]  # fmt: skip
    data = sft_dataset(rows, tokenizer)
    assert data.column_names == ["input_ids", "completion_mask"]
    finished, cut = data[0], data[1]
    head = tokenizer.apply_chat_template(SHORT_PROMPT, tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    assert finished["completion_mask"] == [0] * n_prompt + [1] * (len(finished["input_ids"]) - n_prompt)
    completion = [t for t, m in zip(finished["input_ids"], finished["completion_mask"], strict=True) if m]
    assert completion[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(completion, skip_special_tokens=True) == "Hello!"
    cut_completion = [t for t, m in zip(cut["input_ids"], cut["completion_mask"], strict=True) if m]
    assert tokenizer.eos_token_id not in cut_completion  # the student must not learn to stop where the cut was
    assert tokenizer.decode(cut_completion) == "A cut answer"


def test_a_truncated_response_is_marked_unfinished(tokenizer):
    long_row = TrainingRow(SHORT_PROMPT, "word " * 40, "a")
    (row,), _, stats = truncate_rows([long_row], tokenizer, max_prompt_length=None, max_response_length=5)
    assert stats.responses_truncated == 1 and row.finished is False
    (kept,), _, _ = truncate_rows([TrainingRow(SHORT_PROMPT, "ok", "b")], tokenizer, max_prompt_length=None,
                                  max_response_length=5)  # fmt: skip
    assert kept.finished is True
