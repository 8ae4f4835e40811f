"""gad.data: every file format, every column convention, bad rows with precise errors, and round-trip properties."""

from __future__ import annotations

import csv
import json
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gad.collect.collector import MAX_ANSWER_CHARS
from gad.data import (
    MAX_PROMPT_ROW_CHARS,
    MAX_TRAINING_ROW_CHARS,
    ROLES,
    LoadReport,
    TrainingRow,
    load_prompts,
    load_training_rows,
    read_records,
    to_messages,
    to_response,
)
from gad.errors import DataError, GadError

USER = [{"role": "user", "content": "What is 2+2?"}]
SYSTEM_USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]

# The paper's released data (ytz20/LMSYS-Chat-GPT-5-Chat-Response): `content` is a chat, `teacher_response` a string.
PAPER_RECORDS = [
    {"id": "a", "content": USER, "teacher_response": "4"},
    {"id": "b", "content": SYSTEM_USER, "teacher_response": "Blue."},
]


# --------------------------------------------------------------------------------------------------------- helpers


def write_jsonl(path: Path, records: list, *, raw_lines: dict[int, str] | None = None) -> Path:
    """Write one JSON value per line; ``raw_lines`` replaces line N (1-based) with literal text."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    for number, text in (raw_lines or {}).items():
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def assert_located(error: DataError, path: Path, where: str, field: str | None) -> None:
    """The error's message names the file, the row/line and (when given) the field."""
    text = str(error)
    assert str(path) in text
    assert where in text
    assert error.path == str(path)
    assert error.where == where
    if field is not None:
        assert f"field '{field}'" in text
        assert error.field == field


def as_pairs(rows: list[TrainingRow]) -> list[tuple[list[dict], str]]:
    return [(r.prompt, r.response) for r in rows]


# --------------------------------------------------------------------------------------------------------- formats


def test_jsonl_paper_columns(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", PAPER_RECORDS)
    rows, report = load_training_rows(path)
    assert as_pairs(rows) == [(USER, "4"), (SYSTEM_USER, "Blue.")]
    assert [r.id for r in rows] == ["a", "b"]
    assert (report.rows_read, report.rows_kept, report.skipped) == (2, 2, [])
    assert report.path == str(path)
    assert "2 of 2 rows kept" in report.summary()


def test_jsonl_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "train.jsonl"
    text = "\n" + json.dumps(PAPER_RECORDS[0]) + "\n   \n\n" + json.dumps(PAPER_RECORDS[1]) + "\n\n"
    path.write_text(text, encoding="utf-8")
    rows, report = load_training_rows(path)
    assert as_pairs(rows) == [(USER, "4"), (SYSTEM_USER, "Blue.")]
    assert report.rows_read == 2


def test_json_list(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(PAPER_RECORDS), encoding="utf-8")
    rows, report = load_training_rows(path)
    assert as_pairs(rows) == [(USER, "4"), (SYSTEM_USER, "Blue.")]
    assert report.rows_kept == 2


def test_json_must_be_a_list(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"prompt": "hi", "response": "there"}), encoding="utf-8")
    with pytest.raises(DataError, match="list of objects") as info:
        load_training_rows(path)
    assert str(path) in str(info.value)


def test_json_invalid(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n{"prompt": "hi",\n', encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON") as info:
        load_training_rows(path)
    assert str(path) in str(info.value)


def test_json_non_object_row(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"prompt": "hi", "response": "there"}, ["not", "an", "object"]]), encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON object, got list") as info:
        load_training_rows(path)
    assert_located(info.value, path, "row 2", None)


def test_parquet_paper_columns(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", PAPER_RECORDS)
    rows, report = load_training_rows(path)
    assert as_pairs(rows) == [(USER, "4"), (SYSTEM_USER, "Blue.")]
    assert [r.id for r in rows] == ["a", "b"]
    assert report.rows_kept == 2


def test_parquet_string_prompts_and_row_locations(tmp_path):
    path = write_parquet(
        tmp_path / "train.parquet",
        [{"prompt": "hi", "response": "there"}, {"prompt": "again", "response": ""}],
    )
    with pytest.raises(DataError, match="empty response") as info:
        load_training_rows(path)
    assert_located(info.value, path, "row 2", "response")


def test_parquet_corrupt_file(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="cannot read Parquet") as info:
        load_training_rows(path)
    assert str(path) in str(info.value)


def test_csv_string_prompts(tmp_path):
    path = write_csv(
        tmp_path / "train.csv",
        ["prompt", "response"],
        [["What is 2+2?", "4"], ['Say "hi",\nthen stop.', "hi, then\nstop"]],
    )
    rows, report = load_training_rows(path)
    assert as_pairs(rows) == [
        (USER, "4"),
        ([{"role": "user", "content": 'Say "hi",\nthen stop.'}], "hi, then\nstop"),
    ]
    assert report.rows_kept == 2
    assert [r.id for r in rows] == ["1", "2"]


def test_csv_line_numbers_count_the_header(tmp_path):
    path = write_csv(tmp_path / "train.csv", ["prompt", "response"], [["a", "b"], ["c", ""]])
    with pytest.raises(DataError, match="empty response") as info:
        load_training_rows(path)
    assert_located(info.value, path, "line 3", "response")


def test_csv_short_row_is_a_missing_field(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("prompt,response\nhello,world\nlonely\n", encoding="utf-8")
    with pytest.raises(DataError, match="missing field") as info:
        load_training_rows(path)
    assert_located(info.value, path, "line 3", "response")


def test_saved_dataset_folder(tmp_path):
    from datasets import Dataset

    folder = tmp_path / "saved"
    Dataset.from_list(PAPER_RECORDS).save_to_disk(str(folder))
    rows, report = load_training_rows(folder)
    assert as_pairs(rows) == [(USER, "4"), (SYSTEM_USER, "Blue.")]
    assert report.rows_kept == 2


def test_saved_dataset_dict_uses_train_split(tmp_path):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "saved"
    DatasetDict(
        {
            "train": Dataset.from_list(PAPER_RECORDS),
            "test": Dataset.from_list([{"id": "z", "content": USER, "teacher_response": "test split"}]),
        }
    ).save_to_disk(str(folder))
    rows, _ = load_training_rows(folder)
    assert [r.response for r in rows] == ["4", "Blue."]


def test_saved_dataset_dict_without_train_split(tmp_path):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "saved"
    DatasetDict({"validation": Dataset.from_list(PAPER_RECORDS)}).save_to_disk(str(folder))
    with pytest.raises(DataError, match="'train' split") as info:
        load_training_rows(folder)
    assert str(folder) in str(info.value)
    assert "validation" in str(info.value)


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a saved datasets folder") as info:
        load_training_rows(folder)
    assert str(folder) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.jsonl"
    with pytest.raises(GadError, match="not found") as info:
        load_training_rows(path)
    assert str(path) in str(info.value)
    with pytest.raises(GadError, match="not found"):
        load_prompts(path)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("prompt\tresponse\n")
    with pytest.raises(GadError, match=r"unknown data format '\.txt'") as info:
        load_training_rows(path)
    assert str(path) in str(info.value)
    assert ".jsonl" in str(info.value)


def test_read_records_locations(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"x": 1}, {"x": 2}])
    assert list(read_records(jsonl)) == [("line 1", {"x": 1}), ("line 2", {"x": 2})]
    parquet = write_parquet(tmp_path / "a.parquet", [{"x": 1}, {"x": 2}])
    assert list(read_records(parquet)) == [("row 1", {"x": 1}), ("row 2", {"x": 2})]
    data = write_csv(tmp_path / "a.csv", ["x"], [["1"], ["2"]])
    assert list(read_records(data)) == [("line 2", {"x": "1"}), ("line 3", {"x": "2"})]


# --------------------------------------------------------------------------------------------------------- columns


def test_prompt_response_string_columns(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "What is 2+2?", "response": "4"}])
    rows, _ = load_training_rows(path)
    assert as_pairs(rows) == [(USER, "4")]
    assert rows[0].id == "1"


def test_prompt_completion_trl_conversational(tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [{"prompt": SYSTEM_USER, "completion": [{"role": "assistant", "content": "Red."}]}],
    )
    rows, _ = load_training_rows(path)
    assert as_pairs(rows) == [(SYSTEM_USER, "Red.")]


def test_prompt_completion_trl_standard(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "What is 2+2?", "completion": " 4"}])
    rows, _ = load_training_rows(path)
    assert as_pairs(rows) == [(USER, " 4")]


def test_messages_column_is_split_into_prompt_and_response(tmp_path):
    conversation = [*SYSTEM_USER, {"role": "assistant", "content": "Green."}]
    multi_turn = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye!"},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", [{"messages": conversation}, {"messages": multi_turn}])
    rows, _ = load_training_rows(path)
    assert as_pairs(rows) == [(SYSTEM_USER, "Green."), (multi_turn[:-1], "Goodbye!")]


def test_messages_ending_with_empty_assistant_answer(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"messages": [*USER, {"role": "assistant", "content": "  "}]}])
    with pytest.raises(DataError, match="empty response") as info:
        load_training_rows(path)
    assert_located(info.value, path, "line 1", "messages")


def test_messages_without_assistant_answer_needs_a_response_column(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"messages": USER}])
    with pytest.raises(DataError, match="no response column") as info:
        load_training_rows(path)
    assert_located(info.value, path, "line 1", None)
    assert "response_column" in str(info.value)


def test_messages_without_a_user_turn_is_rejected(tmp_path):
    """A conversation that is only the assistant's answer has no prompt: a DataError, not a crash."""
    path = write_jsonl(tmp_path / "t.jsonl", [{"messages": [{"role": "assistant", "content": "Orphan answer."}]}])
    with pytest.raises(DataError) as info:
        load_training_rows(path)
    assert_located(info.value, path, "line 1", "messages")


def test_messages_with_blank_user_turn_is_an_empty_prompt(tmp_path):
    """The answer's text must not make a blank prompt count as non-empty once it is split off."""
    conversation = [{"role": "user", "content": "   "}, {"role": "assistant", "content": "An answer."}]
    path = write_jsonl(tmp_path / "t.jsonl", [{"messages": conversation}])
    with pytest.raises(DataError, match="empty prompt") as info:
        load_training_rows(path)
    assert_located(info.value, path, "line 1", "messages")


def test_prompt_ending_with_assistant_and_separate_response(tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"prompt": [*USER, {"role": "assistant", "content": "4"}], "response": "four"}]
    )
    with pytest.raises(DataError, match="ends with an assistant message") as info:
        load_training_rows(path)
    assert_located(info.value, path, "line 1", "prompt")


def test_content_column_takes_precedence_over_prompt(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"content": "paper", "prompt": "other", "teacher_response": "x"}])
    rows, _ = load_training_rows(path)
    assert rows[0].prompt == [{"role": "user", "content": "paper"}]


def test_instruction_output_and_question_answer_columns(tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [{"instruction": "Do it.", "output": "Done."}, {"question": "Why?", "answer": "Because."}],
    )
    rows, _ = load_training_rows(path)
    assert [(r.prompt[0]["content"], r.response) for r in rows] == [("Do it.", "Done."), ("Why?", "Because.")]


def test_explicit_column_mapping(tmp_path):
    records = [
        {"query": "What is 2+2?", "gold": "4", "prompt": "ignored", "response": "ignored"},
        {"query": SYSTEM_USER, "gold": "Blue.", "prompt": "ignored", "response": "ignored"},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    rows, _ = load_training_rows(path, prompt_column="query", response_column="gold")
    assert as_pairs(rows) == [(USER, "4"), (SYSTEM_USER, "Blue.")]


def test_explicit_column_mapping_missing_column(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "gold": "g"}, {"query": "q2"}])
    with pytest.raises(DataError, match="missing field") as info:
        load_training_rows(path, prompt_column="query", response_column="gold")
    assert_located(info.value, path, "line 2", "gold")
    with pytest.raises(DataError, match="missing field") as info:
        load_training_rows(path, prompt_column="question", response_column="gold")
    assert_located(info.value, path, "line 1", "question")


def test_no_prompt_column_lists_what_was_found(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "teacher_response": "r"}])
    with pytest.raises(DataError, match="no prompt column") as info:
        load_training_rows(path)
    text = str(info.value)
    assert str(path) in text and "line 1" in text
    assert "query" in text and "prompt_column=" in text


def test_extra_message_keys_are_dropped(tmp_path):
    prompt = [{"role": "user", "content": "hi", "name": "bob", "weight": 1}]
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": prompt, "response": "yo"}])
    rows, _ = load_training_rows(path)
    assert rows[0].prompt == [{"role": "user", "content": "hi"}]


# -------------------------------------------------------------------------------------------------------- bad rows

GOOD = {"prompt": "fine", "response": "ok"}

BAD_ROWS = [
    pytest.param({"response": "r"}, None, "no prompt column", id="missing-prompt"),
    pytest.param({"prompt": "p"}, None, "no response column", id="missing-response"),
    pytest.param({"prompt": None, "response": "r"}, "prompt", "missing field", id="null-prompt"),
    pytest.param({"prompt": "p", "response": None}, "response", "missing field", id="null-response"),
    pytest.param({"prompt": "", "response": "r"}, "prompt", "empty prompt", id="empty-prompt"),
    pytest.param({"prompt": " \n\t", "response": "r"}, "prompt", "empty prompt", id="blank-prompt"),
    pytest.param({"prompt": [], "response": "r"}, "prompt", "non-empty list", id="empty-message-list"),
    pytest.param(
        {"prompt": [{"role": "user", "content": " "}], "response": "r"}, "prompt", "empty prompt", id="blank-message"
    ),
    pytest.param(
        {"prompt": [{"role": "system", "content": "sys"}], "response": "r"},
        "prompt",
        "empty prompt",
        id="system-only",
    ),
    pytest.param({"prompt": "p", "response": ""}, "response", "empty response", id="empty-response"),
    pytest.param({"prompt": "p", "response": "  \n"}, "response", "empty response", id="blank-response"),
    pytest.param({"prompt": 42, "response": "r"}, "prompt", "got int", id="number-prompt"),
    pytest.param({"prompt": {"role": "user"}, "response": "r"}, "prompt", "got dict", id="dict-prompt"),
    pytest.param({"prompt": "p", "response": 3.5}, "response", "got float", id="number-response"),
    pytest.param(
        {"prompt": "p", "response": [{"role": "assistant", "content": 1}]}, "response", "got int", id="bad-completion"
    ),
    pytest.param(
        {"prompt": "p", "response": [{"content": "a"}, {"content": "b"}]}, "response", "got list", id="two-completions"
    ),
    pytest.param({"prompt": [{"content": "hi"}], "response": "r"}, "prompt", "'role' and 'content'", id="no-role"),
    pytest.param({"prompt": [{"role": "user"}], "response": "r"}, "prompt", "'role' and 'content'", id="no-content"),
    pytest.param({"prompt": ["hi"], "response": "r"}, "prompt", "message 0", id="string-message"),
    pytest.param(
        {"prompt": [{"role": "wizard", "content": "hi"}], "response": "r"}, "prompt", "unknown role", id="bad-role"
    ),
    pytest.param(
        {"prompt": [{"role": "user", "content": ["part"]}], "response": "r"},
        "prompt",
        "content must be a string",
        id="list-content",
    ),
]


@pytest.mark.parametrize(("record", "field", "message"), BAD_ROWS)
def test_bad_row_stops_the_load_with_its_location(tmp_path, record, field, message):
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD, GOOD, record, GOOD])
    with pytest.raises(DataError, match=message) as info:
        load_training_rows(path)
    assert_located(info.value, path, "line 3", field)
    assert "skip_bad_rows" in str(info.value)  # says how to go on


@pytest.mark.parametrize(("record", "field", "message"), BAD_ROWS)
def test_bad_row_is_skipped_and_counted(tmp_path, record, field, message):
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD, GOOD, record, {"prompt": "last", "response": "one"}])
    rows, report = load_training_rows(path, skip_bad_rows=True)
    assert [r.prompt[0]["content"] for r in rows] == ["fine", "fine", "last"]
    assert [r.id for r in rows] == ["1", "2", "4"]  # row numbers of the kept rows, not positions among them
    assert (report.rows_read, report.rows_kept) == (4, 3)
    assert len(report.skipped) == 1
    assert str(path) in report.skipped[0] and "line 3" in report.skipped[0] and message in report.skipped[0]
    assert "1 bad rows skipped" in report.summary()


def test_bad_rows_in_parquet_name_the_row(tmp_path):
    path = write_parquet(
        tmp_path / "t.parquet",
        [
            {"content": USER, "teacher_response": "ok"},
            {"content": [{"role": "robot", "content": "x"}], "teacher_response": "ok"},
        ],
    )
    with pytest.raises(DataError, match="unknown role 'robot'") as info:
        load_training_rows(path)
    assert_located(info.value, path, "row 2", "content")
    rows, report = load_training_rows(path, skip_bad_rows=True)
    assert len(rows) == 1 and (report.rows_read, report.rows_kept, len(report.skipped)) == (2, 1, 1)


def test_invalid_json_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD, GOOD, GOOD], raw_lines={3: '{"prompt": "p", "response": '})
    with pytest.raises(DataError, match="not valid JSON") as info:
        load_training_rows(path)
    assert_located(info.value, path, "line 3", None)


def test_non_object_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD, ["prompt", "response"], GOOD])
    with pytest.raises(DataError, match="expected a JSON object, got list") as info:
        load_training_rows(path)
    assert_located(info.value, path, "line 2", None)


@pytest.mark.parametrize(
    "raw", [pytest.param('{"prompt": "p", "response": ', id="invalid-json"), pytest.param("[1, 2]", id="non-object")]
)
def test_unparsable_lines_are_skipped_and_counted(tmp_path, raw):
    """skip_bad_rows covers lines that are not JSON objects too: the rest of the file is still read."""
    path = write_jsonl(
        tmp_path / "t.jsonl", [GOOD, {}, {"prompt": "after", "response": "bad line"}], raw_lines={2: raw}
    )
    rows, report = load_training_rows(path, skip_bad_rows=True)
    assert [r.prompt[0]["content"] for r in rows] == ["fine", "after"]
    assert (report.rows_read, report.rows_kept, len(report.skipped)) == (3, 2, 1)
    assert "line 2" in report.skipped[0]


def test_non_object_row_in_a_json_list_is_skipped_and_counted(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([GOOD, "just a string", GOOD]), encoding="utf-8")
    rows, report = load_training_rows(path, skip_bad_rows=True)
    assert len(rows) == 2
    assert (report.rows_read, report.rows_kept, len(report.skipped)) == (3, 2, 1)
    assert "row 2" in report.skipped[0]


def test_several_bad_rows_are_all_counted(tmp_path):
    records = [GOOD, {"prompt": ""}, {"prompt": "p", "response": ""}, GOOD, {"prompt": 1, "response": "r"}]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    rows, report = load_training_rows(path, skip_bad_rows=True)
    assert len(rows) == 2
    assert (report.rows_read, report.rows_kept) == (5, 2)
    assert [s.split(": ")[0].split(", ")[1] for s in report.skipped] == ["line 2", "line 3", "line 5"]


def test_all_rows_bad_is_no_usable_rows(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "", "response": "r"}, {"prompt": "p", "response": ""}])
    with pytest.raises(GadError, match="no usable rows") as info:
        load_training_rows(path, skip_bad_rows=True)
    assert str(path) in str(info.value)
    assert "2 bad rows skipped" in str(info.value)


def test_empty_file_is_no_usable_rows(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(GadError, match="no usable rows"):
        load_training_rows(path)
    with pytest.raises(GadError, match="no usable rows"):
        load_prompts(path)


def test_data_error_is_a_gad_error():
    error = DataError("empty prompt", path="f.jsonl", where="line 3", field="prompt")
    assert isinstance(error, GadError)
    assert str(error) == "f.jsonl, line 3, field 'prompt': empty prompt"
    assert str(DataError("plain")) == "plain"
    assert str(DataError("m", where="row 2").located("x.parquet")) == "x.parquet, row 2: m"


def test_load_report_summary():
    report = LoadReport("f.jsonl", rows_read=3, rows_kept=3)
    assert report.summary() == "f.jsonl: 3 of 3 rows kept"


# ---------------------------------------------------------------------------------------------------- load_prompts


def test_load_prompts_uses_id_column(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": "q-7", "prompt": "Hello"}, {"id": 12, "prompt": SYSTEM_USER}, {"prompt": "no id"}],
    )
    rows, report = load_prompts(path)
    assert [r.id for r in rows] == ["q-7", "12", "3"]
    assert rows[0].messages == [{"role": "user", "content": "Hello"}]
    assert rows[1].messages == SYSTEM_USER
    assert rows[0].record == {"id": "q-7", "prompt": "Hello"}
    assert report.rows_kept == 3


def test_load_prompts_row_numbers_without_id(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["question"], [["One?"], ["Two?"]])
    rows, _ = load_prompts(path)
    assert [(r.id, r.messages[0]["content"]) for r in rows] == [("1", "One?"), ("2", "Two?")]


def test_load_prompts_custom_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"key": "k1", "text": "Hi"}, {"key": "k2", "text": "Yo"}])
    rows, _ = load_prompts(path, prompt_column="text", id_column="key")
    assert [(r.id, r.messages[0]["content"]) for r in rows] == [("k1", "Hi"), ("k2", "Yo")]


def test_load_prompts_paper_data_ignores_responses(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", PAPER_RECORDS)
    rows, _ = load_prompts(path)
    assert [(r.id, r.messages) for r in rows] == [("a", USER), ("b", SYSTEM_USER)]


def test_load_prompts_drops_the_final_assistant_message_of_a_conversation(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": [*USER, {"role": "assistant", "content": "4"}]}])
    rows, _ = load_prompts(path)
    assert rows[0].messages == USER


def test_load_prompts_conversation_without_a_question_is_an_empty_prompt(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "assistant", "content": "Orphan answer."}]}])
    with pytest.raises(DataError, match="empty prompt") as info:
        load_prompts(path)
    assert_located(info.value, path, "line 1", "messages")


def test_load_prompts_skips_unparsable_lines(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {}, {"prompt": "c"}], raw_lines={2: "{oops"})
    rows, report = load_prompts(path, skip_bad_rows=True)
    assert [r.id for r in rows] == ["1", "3"]
    assert (report.rows_read, report.rows_kept, len(report.skipped)) == (3, 2, 1)


def test_load_prompts_bad_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": "  "}, {"text": "wrong column"}])
    with pytest.raises(DataError, match="empty prompt") as info:
        load_prompts(path)
    assert_located(info.value, path, "line 2", "prompt")
    rows, report = load_prompts(path, skip_bad_rows=True)
    assert [r.id for r in rows] == ["1"]
    assert (report.rows_read, report.rows_kept, len(report.skipped)) == (3, 1, 2)
    with pytest.raises(DataError, match="missing field") as info:
        load_prompts(path, prompt_column="text")
    assert_located(info.value, path, "line 1", "text")


def test_load_prompts_all_bad(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": ""}, {"prompt": 3}])
    with pytest.raises(GadError, match="no usable rows"):
        load_prompts(path, skip_bad_rows=True)


# ---------------------------------------------------------------------------------------------- to_messages/response


def test_to_messages_and_to_response_units():
    assert to_messages("hi", where="line 1", field_name="p") == [{"role": "user", "content": "hi"}]
    assert to_messages(SYSTEM_USER, where="line 1", field_name="p") == SYSTEM_USER
    assert to_response("ok", where="line 1", field_name="r") == "ok"
    assert to_response([{"role": "assistant", "content": "ok"}], where="line 1", field_name="r") == "ok"
    with pytest.raises(DataError) as info:
        to_messages("", where="line 9", field_name="p")
    assert (info.value.where, info.value.field, info.value.path) == ("line 9", "p", None)


def test_to_messages_accepts_numpy_arrays():
    np = pytest.importorskip("numpy")
    value = np.array([{"role": "user", "content": "hi"}], dtype=object)
    assert to_messages(value, where="row 1", field_name="p") == [{"role": "user", "content": "hi"}]
    assert to_response(np.array([{"content": "ok"}], dtype=object), where="row 1", field_name="r") == "ok"


# ---------------------------------------------------------------------------------------------------- properties

# Text with unicode (including non-BMP), quotes, backslashes, commas, tabs and every kind of newline.
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(['"', "'", "\\", ",", "\n", "\r", "\t", "\u2028", "\x85", "{", "}", "é", "🙂"]),
    ),
    max_size=40,
)
NON_BLANK = TEXT.filter(lambda s: s.strip() != "")
# CSV cannot hold NUL reliably and strips nothing else; keep the rest of unicode.
CSV_NON_BLANK = NON_BLANK.filter(lambda s: "\x00" not in s)

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _tmpdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="gad-test-data-")


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(NON_BLANK, NON_BLANK), min_size=1, max_size=6))
def test_jsonl_round_trip_of_strings(pairs):
    with _tmpdir() as folder:
        path = write_jsonl(Path(folder) / "t.jsonl", [{"prompt": p, "response": r} for p, r in pairs])
        rows, report = load_training_rows(path)
    assert [(r.prompt, r.response) for r in rows] == [([{"role": "user", "content": p}], r) for p, r in pairs]
    assert report.rows_kept == len(pairs)


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(NON_BLANK, NON_BLANK), min_size=1, max_size=6))
def test_jsonl_round_trip_ascii_escaped(pairs):
    with _tmpdir() as folder:
        path = Path(folder) / "t.jsonl"
        path.write_text("".join(json.dumps({"content": p, "teacher_response": r}) + "\n" for p, r in pairs))
        rows, _ = load_training_rows(path)
    assert [(r.prompt[0]["content"], r.response) for r in rows] == pairs


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(CSV_NON_BLANK, CSV_NON_BLANK), min_size=1, max_size=6))
def test_csv_round_trip_of_strings(pairs):
    with _tmpdir() as folder:
        path = write_csv(Path(folder) / "t.csv", ["prompt", "response"], [list(pair) for pair in pairs])
        rows, report = load_training_rows(path)
    assert [(r.prompt[0]["content"], r.response) for r in rows] == pairs
    assert report.rows_kept == len(pairs)


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(("system", "user", "tool", "developer")), "content": TEXT})
PROMPT = st.lists(MESSAGE, min_size=1, max_size=4).map(
    lambda ms: [*ms, {"role": "user", "content": "Q" + (ms[-1]["content"] or "")}]
)


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(PROMPT, NON_BLANK), min_size=1, max_size=4))
def test_jsonl_round_trip_of_chat_messages(pairs):
    with _tmpdir() as folder:
        path = write_jsonl(Path(folder) / "t.jsonl", [{"content": p, "teacher_response": r} for p, r in pairs])
        rows, _ = load_training_rows(path)
        prompts, _ = load_prompts(path)
    assert [(r.prompt, r.response) for r in rows] == pairs
    assert [p.messages for p in prompts] == [p for p, _ in pairs]


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(PROMPT, NON_BLANK), min_size=1, max_size=4))
def test_messages_column_round_trip(pairs):
    records = [{"messages": [*p, {"role": "assistant", "content": r}]} for p, r in pairs]
    with _tmpdir() as folder:
        path = write_jsonl(Path(folder) / "t.jsonl", records)
        rows, _ = load_training_rows(path)
    assert [(r.prompt, r.response) for r in rows] == pairs


BLANK = st.text(alphabet=st.sampled_from([" ", "\t", "\n", "\r", "\u3000", "\xa0", "\u2028", "\x0b"]), max_size=8)


@PROPERTY_SETTINGS
@given(blank=BLANK, system=TEXT, roles=st.lists(st.sampled_from(("user", "assistant", "tool")), min_size=1, max_size=3))
def test_to_messages_never_accepts_a_blank_prompt(blank, system, roles):
    with pytest.raises(DataError, match="empty prompt"):
        to_messages(blank, where="line 1", field_name="prompt")
    messages = [{"role": "system", "content": system}] + [{"role": r, "content": blank} for r in roles]
    with pytest.raises(DataError, match="empty prompt"):
        to_messages(messages, where="line 1", field_name="prompt")


@PROPERTY_SETTINGS
@given(text=NON_BLANK, role=st.sampled_from(ROLES))
def test_to_messages_keeps_text_exactly(text, role):
    assert to_messages(text, where="line 1", field_name="p") == [{"role": "user", "content": text}]
    if role != "system":
        message = {"role": role, "content": text}
        assert to_messages([message], where="line 1", field_name="p") == [message]


def test_an_answer_cut_by_the_teachers_token_limit_is_unfinished(tmp_path):
    path = tmp_path / "collected.jsonl"
    rows = [
        {"prompt": "a", "teacher_response": "done.", "metadata": {"finish_reason": "stop"}},
        {"prompt": "b", "teacher_response": "cut", "metadata": {"finish_reason": "length"}},
        {"prompt": "c", "response": "cut too", "finish_reason": "length"},
        {"prompt": "d", "response": "no metadata"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded, _ = load_training_rows(path)
    assert [r.finished for r in loaded] == [True, False, False, True]


# ------------------------------------------------------------------------------------------ encodings and sizes

LATIN1_RECORDS = [{"prompt": "plain", "response": "ok"}, {"prompt": "café", "response": "crème"}]


def write_latin1(path: Path) -> Path:
    """The same rows in every format, encoded as Latin-1 (the non-ASCII row is line 2, or line 3 with a CSV header)."""
    if path.suffix == ".csv":
        text = "prompt,response\n" + "".join(f"{r['prompt']},{r['response']}\n" for r in LATIN1_RECORDS)
    elif path.suffix == ".json":
        text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in LATIN1_RECORDS) + "\n]\n"
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in LATIN1_RECORDS)
    path.write_bytes(text.encode("latin-1"))
    return path


@pytest.mark.parametrize("skip_bad_rows", [False, True])
@pytest.mark.parametrize(("suffix", "where"), [(".jsonl", "line 2"), (".json", "line 3"), (".csv", "line 3")])
def test_a_latin1_file_is_one_error_naming_line_and_byte(tmp_path, suffix, where, skip_bad_rows):
    path = write_latin1(tmp_path / f"t{suffix}")
    for load in (load_training_rows, load_prompts):
        with pytest.raises(DataError) as info:
            load(path, skip_bad_rows=skip_bad_rows)
        assert_located(info.value, path, where, None)
        assert "not UTF-8: byte 0xe9; re-save the file as UTF-8" in str(info.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_a_utf16_file_says_so(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    text = {".csv": "prompt,response\nhi,ok\n", ".json": json.dumps([GOOD])}.get(suffix, json.dumps(GOOD) + "\n")
    path.write_text(text, encoding="utf-16")
    with pytest.raises(DataError, match=r"not UTF-8: byte 0xff \(the file looks like UTF-16\)") as info:
        load_training_rows(path, skip_bad_rows=True)
    assert_located(info.value, path, "line 1", None)


def test_excel_csv_utf8_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("id,prompt\r\nq1,Bonjour à tous\r\n", encoding="utf-8-sig")  # what Excel's "CSV UTF-8" writes
    rows, _ = load_prompts(path)
    assert [(r.id, r.messages) for r in rows] == [("q1", [{"role": "user", "content": "Bonjour à tous"}])]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_files_with_a_byte_order_mark(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    path.write_text(json.dumps([GOOD]) if suffix == ".json" else json.dumps(GOOD) + "\n", encoding="utf-8-sig")
    rows, _ = load_training_rows(path)
    assert as_pairs(rows) == [([{"role": "user", "content": "fine"}], "ok")]


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(CSV_NON_BLANK, CSV_NON_BLANK), min_size=1, max_size=5), st.sampled_from([".jsonl", ".csv"]))
def test_a_byte_order_mark_changes_nothing(pairs, suffix):
    with _tmpdir() as folder:
        path = Path(folder) / f"t{suffix}"
        if suffix == ".csv":
            write_csv(path, ["prompt", "response"], [list(pair) for pair in pairs])
        else:
            write_jsonl(path, [{"prompt": p, "response": r} for p, r in pairs])
        plain = as_pairs(load_training_rows(path)[0])
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        with_bom = as_pairs(load_training_rows(path)[0])
    assert with_bom == plain == [([{"role": "user", "content": p}], r) for p, r in pairs]


ASCII_WORD = st.text(alphabet=st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1, max_size=12)
LATIN1_ONLY = st.characters(min_codepoint=0xA0, max_codepoint=0xFF)


@PROPERTY_SETTINGS
@given(
    words=st.lists(ASCII_WORD, min_size=1, max_size=6),
    data=st.data(),
    accent=LATIN1_ONLY,
    suffix=st.sampled_from([".jsonl", ".csv"]),
)
def test_the_first_byte_that_is_not_utf8_is_reported_with_its_line(words, data, accent, suffix):
    """Whatever the rows, a Latin-1 character is one DataError naming its line and byte, never a decoding traceback."""
    bad = data.draw(st.integers(0, len(words) - 1))
    prompts = [w + accent if i == bad else w for i, w in enumerate(words)]
    header = "prompt,response\n" if suffix == ".csv" else ""
    lines = [
        f"{p},ok" if suffix == ".csv" else json.dumps({"prompt": p, "response": "ok"}, ensure_ascii=False)
        for p in prompts
    ]
    with _tmpdir() as folder:
        path = Path(folder) / f"t{suffix}"
        path.write_bytes((header + "\n".join(lines) + "\n").encode("latin-1"))
        with pytest.raises(DataError) as info:
            load_training_rows(path, skip_bad_rows=True)
    assert info.value.where == f"line {bad + 1 + bool(header)}"
    assert f"byte 0x{ord(accent):02x}" in str(info.value) and str(path) in str(info.value)


def write_rows(path: Path, records: list[dict]) -> Path:
    if path.suffix == ".parquet":
        return write_parquet(path, records)
    if path.suffix == ".csv":
        return write_csv(path, list(records[0]), [list(r.values()) for r in records])
    if path.suffix == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
        return path
    return write_jsonl(path, records)


@pytest.mark.parametrize(
    ("suffix", "where"), [(".jsonl", "line 3"), (".csv", "line 4"), (".json", "row 3"), (".parquet", "row 3")]
)
def test_a_row_over_the_size_limit_is_a_bad_row(tmp_path, suffix, where):
    records = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "x" * 5000}, {"prompt": "d"}]
    path = write_rows(tmp_path / f"p{suffix}", records)
    with pytest.raises(DataError, match="over the limit of 1,000 ") as info:
        load_prompts(path, max_row_chars=1000)
    assert_located(info.value, path, where, None)
    assert "max_row_chars" in str(info.value)
    rows, report = load_prompts(path, max_row_chars=1000, skip_bad_rows=True)
    assert [r.messages[0]["content"] for r in rows] == ["a", "b", "d"]
    assert (report.rows_read, report.rows_kept, len(report.skipped)) == (4, 3, 1)
    assert len(load_prompts(path, max_row_chars=None)[0]) == 4


def test_default_row_limits_fit_prompts_and_collected_answers(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p" * (MAX_PROMPT_ROW_CHARS + 1), "response": "r" * 10}])
    with pytest.raises(DataError, match="max_row_chars"):
        load_prompts(path)
    assert len(load_training_rows(path)[0]) == 1  # a training row also holds an answer: its limit is larger
    assert MAX_TRAINING_ROW_CHARS >= 2 * MAX_PROMPT_ROW_CHARS + MAX_ANSWER_CHARS


def test_a_csv_field_longer_than_the_csv_modules_own_limit_loads(tmp_path):
    prompt = "word " * 40_000  # 200,000 characters: over csv's default 131,072-character field limit
    path = write_csv(tmp_path / "p.csv", ["prompt"], [[prompt]])
    rows, _ = load_prompts(path)
    assert rows[0].messages[0]["content"] == prompt


def test_an_oversize_jsonl_line_is_never_held_in_memory(tmp_path):
    path = tmp_path / "p.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        handle.write('{"prompt": "a"}\n{"prompt": "' + "x" * 20_000_000 + '"}\n{"prompt": "c"}\n')
    tracemalloc.start()
    try:
        rows, report = load_prompts(path, max_row_chars=1000, skip_bad_rows=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.messages[0]["content"] for r in rows] == ["a", "c"] and "20,000,0" in report.skipped[0]
    assert peak < 2_000_000, peak


def test_written_prompts_read_back_unchanged(tmp_path):
    from gad.data import PromptRow, load_prompts, write_prompts

    rows, _ = load_prompts(
        write_prompts([PromptRow("a", [{"role": "user", "content": "Ça va ?"}])], tmp_path / "p.jsonl")
    )
    assert [(r.id, r.messages) for r in rows] == [("a", [{"role": "user", "content": "Ça va ?"}])]
