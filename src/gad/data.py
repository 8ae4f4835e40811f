"""Loading prompts and (prompt, teacher response) pairs from JSONL, JSON, Parquet, CSV or a saved `datasets` folder.

A prompt is normalised to a list of chat messages; a string becomes one user message. Every malformed row stops the
load with a :class:`DataError` naming the file, the row and the field, unless ``skip_bad_rows`` is set, in which case
the row is counted and described in the returned :class:`LoadReport`. A row longer than ``max_row_chars`` is such a
bad row. Text files (JSONL, JSON, CSV) must be UTF-8, with or without a byte order mark (Excel's "CSV UTF-8").
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gad.errors import DataError, GadError

# Column names tried in order when no explicit mapping is given. `content`/`teacher_response` are the columns of the
# paper's released data (ytz20/LMSYS-Chat-GPT-5-Chat-Response); the others are the usual TRL / OpenAI names.
PROMPT_COLUMNS = ("content", "prompt", "messages", "instruction", "question")
RESPONSE_COLUMNS = ("teacher_response", "response", "completion", "output", "answer")
ROLES = ("system", "user", "assistant", "tool", "developer")
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# Row size limits in characters (for JSONL, of the line as written; otherwise of the row's text): far above any real
# prompt, far below what exhausts a laptop's memory once tokenized. A training row holds a prompt and a teacher answer
# (collect keeps answers of up to 1,000,000 characters), hence its larger limit. None means no limit.
MAX_PROMPT_ROW_CHARS = 1_000_000
MAX_TRAINING_ROW_CHARS = 8_000_000
_CSV_FIELD_CEILING = 2**31 - 1  # the largest limit the csv module accepts on every platform

Messages = list[dict[str, str]]


@dataclass
class LoadReport:
    """What a load kept and what it skipped (only non-empty when ``skip_bad_rows`` is set)."""

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.path}: {self.rows_kept} of {self.rows_read} rows kept"
        if self.skipped:
            text += f", {len(self.skipped)} bad rows skipped (first: {self.skipped[0]})"
        return text


@dataclass
class PromptRow:
    """One prompt: its id (the file's ``id`` column, or its row number) and its chat messages."""

    id: str
    messages: Messages
    record: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class TrainingRow:
    """One training example: the prompt as chat messages and one teacher response.

    ``finished`` is False for a response that was cut (the teacher hit its token limit, or gad truncated it): the
    student must not learn to end its answer there.
    """

    prompt: Messages
    response: str
    id: str = ""
    finished: bool = True


def read_records(
    path: str | Path, *, max_row_chars: int | None = MAX_TRAINING_ROW_CHARS
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, record)`` for every row of a data file; ``location`` is e.g. ``"line 3"`` or ``"row 3"``."""
    for where, record in _records(path, max_row_chars):
        if isinstance(record, DataError):
            raise record
        yield where, record


def _records(path: str | Path, max_row_chars: int | None) -> Iterator[tuple[str, dict[str, Any] | DataError]]:
    """Like :func:`read_records`, but a row that is not a JSON object, or too long, is yielded as its DataError."""
    path = Path(path)
    if not path.exists():
        raise GadError(f"data file not found: {path} (check the path, or run `gad collect` to create it)")
    if path.suffix == ".jsonl" and not path.is_dir():
        yield from _read_jsonl(path, max_row_chars)  # measured before parsing: a huge line is never held whole
        return
    for where, record in _parsed_records(path, max_row_chars):
        yield where, _size_checked(record, max_row_chars, path, where)


def _parsed_records(path: Path, max_row_chars: int | None) -> Iterator[tuple[str, dict[str, Any] | DataError]]:
    if path.is_dir():
        yield from _read_datasets_folder(path)
    elif path.suffix == ".json":
        yield from _read_json(path)
    elif path.suffix == ".parquet":
        yield from _read_parquet(path)
    elif path.suffix == ".csv":
        yield from _read_csv(path, max_row_chars)
    else:
        raise GadError(
            f"{path}: unknown data format '{path.suffix}'; use one of {', '.join(SUFFIXES)} or a saved datasets folder"
        )


@contextlib.contextmanager
def _utf8(path: Path) -> Iterator[None]:
    """Turn a decoding error while reading ``path`` into one DataError naming its line and byte.

    It stops the load even with ``skip_bad_rows``: a file in another encoding is fixed by re-saving it, and skipping
    the rows it garbles would silently drop exactly the non-ASCII (often non-English) prompts.
    """
    try:
        yield
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _not_utf8(path: Path) -> DataError:
    """The first byte of ``path`` that is not UTF-8, with its line (``\\n`` never occurs inside a UTF-8 character)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            bad = _bad_byte(raw)
            if bad is not None:
                return DataError(
                    f"not UTF-8: byte 0x{bad:02x}{_utf16_hint(raw)}; re-save the file as UTF-8",
                    path=str(path),
                    where=f"line {number}",
                )
    return DataError("not UTF-8; re-save the file as UTF-8", path=str(path))


def _bad_byte(raw: bytes) -> int | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return raw[error.start]
    return None


def _utf16_hint(raw: bytes) -> str:
    # Windows' "Unicode" (PowerShell's `>`, Notepad's old default) is UTF-16: a byte order mark, or NULs in ASCII text.
    utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in raw
    return " (the file looks like UTF-16)" if utf16 else ""


def _read_jsonl(path: Path, max_row_chars: int | None) -> Iterator[tuple[str, dict[str, Any] | DataError]]:
    size = -1 if max_row_chars is None else max_row_chars + 1
    with _utf8(path), path.open(encoding="utf-8-sig") as handle:
        for number in itertools.count(1):
            line = handle.readline(size)
            if not line:
                return
            where = f"line {number}"
            if max_row_chars is not None and len(line.rstrip("\n")) > max_row_chars:
                yield where, _too_long(path, where, max_row_chars, len(line) + _skip_line(handle, line))
            elif line.strip():
                yield where, _json_object(line, path, where)


def _skip_line(handle: Any, start: str) -> int:
    """Read past the rest of the line that began with ``start``; how many characters that was."""
    skipped = 0
    while start and not start.endswith("\n"):
        start = handle.readline(1 << 16)
        skipped += len(start)
    return skipped


def _json_object(line: str, path: Path, where: str) -> dict[str, Any] | DataError:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return DataError(f"not valid JSON ({error.msg} at column {error.colno})", path=str(path), where=where)
    if not isinstance(record, dict):
        return DataError(f"expected a JSON object, got {type(record).__name__}", path=str(path), where=where)
    return record


def _read_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        with _utf8(path):
            text = path.read_text(encoding="utf-8-sig")
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON ({error.msg} at line {error.lineno})", path=str(path)) from None
    if not isinstance(records, list):
        raise DataError(
            "a .json data file must hold a list of objects (use .jsonl for one object per line)", path=str(path)
        )
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            record = DataError(
                f"expected a JSON object, got {type(record).__name__}", path=str(path), where=f"row {number}"
            )
        yield f"row {number}", record


def _read_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"cannot read Parquet file ({error})", path=str(path)) from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield f"row {number}", record


def _read_csv(path: Path, max_row_chars: int | None) -> Iterator[tuple[str, dict[str, Any] | DataError]]:
    # The csv module's own field limit (128 Ki characters, process-wide) would reject long prompts before our row
    # limit is even checked; it is only ever raised here.
    limit = _CSV_FIELD_CEILING if max_row_chars is None else max_row_chars
    csv.field_size_limit(max(csv.field_size_limit(), limit))
    with _utf8(path), path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                # DictReader's line_num is the line of the row's end; the header is line 1.
                yield f"line {reader.line_num}", _csv_error(error, path, f"line {reader.line_num}", limit)
            else:
                yield f"line {reader.line_num}", dict(record)


def _csv_error(error: csv.Error, path: Path, where: str, limit: int) -> DataError:
    if "field limit" in str(error):
        return _too_long(path, where, limit, None)
    return DataError(f"not valid CSV ({error})", path=str(path), where=where)


def _read_datasets_folder(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:
        raise DataError(f"not a saved datasets folder ({error})", path=str(path)) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"a DatasetDict needs a 'train' split; found {sorted(loaded)}", path=str(path))
        loaded = loaded["train"]
    for number, record in enumerate(loaded, start=1):
        yield f"row {number}", record


def _size_checked(
    record: dict[str, Any] | DataError, limit: int | None, path: Path, where: str
) -> dict[str, Any] | DataError:
    if limit is None or isinstance(record, DataError):
        return record
    size = _text_size(record)
    return _too_long(path, where, limit, size) if size > limit else record


def _text_size(value: Any) -> int:
    """How many characters of text a record holds (its keys and strings; a few for every other value)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(key) + _text_size(item) for key, item in value.items())
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    if isinstance(value, list | tuple):
        return sum(map(_text_size, value))
    return 8


def _too_long(path: Path, where: str, limit: int, size: int | None) -> DataError:
    length = f"{size:,} characters" if size is not None else "longer"
    return DataError(f"the row is {length}, over the limit of {limit:,} (max_row_chars)", path=str(path), where=where)


def to_messages(value: Any, *, where: str, field_name: str) -> Messages:
    """Normalise a prompt (a string or a list of chat messages) to a list of ``{"role", "content"}`` messages."""
    if isinstance(value, str):
        if not value.strip():
            raise _row_error("empty prompt", where, field_name)
        return [{"role": "user", "content": value}]
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise _row_error(
            f"expected a string or a non-empty list of chat messages, got {_kind(value)}", where, field_name
        )
    messages: Messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _row_error(f"message {index} must be an object with 'role' and 'content'", where, field_name)
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise _row_error(f"message {index} has unknown role {role!r} (expected one of {ROLES})", where, field_name)
        if not isinstance(content, str):
            raise _row_error(f"message {index} content must be a string, got {_kind(content)}", where, field_name)
        messages.append({"role": role, "content": content})
    _require_prompt(messages, where, field_name)
    return messages


def _require_prompt(messages: Messages, where: str, field_name: str) -> None:
    if not any(m["content"].strip() for m in messages if m["role"] != "system"):
        raise _row_error("empty prompt", where, field_name)


def to_response(value: Any, *, where: str, field_name: str) -> str:
    """Normalise a response: a string, or a one-message assistant list (TRL's conversational completion)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and "content" in value[0]:
        value = value[0]["content"]
    if not isinstance(value, str):
        raise _row_error(f"expected a string response, got {_kind(value)}", where, field_name)
    if not value.strip():
        raise _row_error("empty response", where, field_name)
    return value


def load_prompts(
    path: str | Path,
    *,
    prompt_column: str | None = None,
    id_column: str = "id",
    skip_bad_rows: bool = False,
    max_row_chars: int | None = MAX_PROMPT_ROW_CHARS,
) -> tuple[list[PromptRow], LoadReport]:
    """Load a prompt file. Prompts come from ``prompt_column`` or the first of :data:`PROMPT_COLUMNS` present.

    A row longer than ``max_row_chars`` characters is a bad row (None: no limit).
    """
    report = LoadReport(str(path))
    rows: list[PromptRow] = []
    for where, record in _records(path, max_row_chars):
        report.rows_read += 1
        try:
            if isinstance(record, DataError):
                raise record
            column = prompt_column or _find_column(record, PROMPT_COLUMNS, "prompt", where, str(path))
            if column not in record or record[column] is None:
                raise _row_error("missing field", where, column)
            messages = to_messages(record[column], where=where, field_name=column)
            if column == "messages" and messages[-1]["role"] == "assistant":
                messages = messages[:-1]  # a full conversation: its prompt is everything before the last answer
                _require_prompt(messages, where, column)
            row_id = record.get(id_column)
            rows.append(PromptRow(str(row_id) if row_id is not None else str(report.rows_read), messages, record))
        except DataError as error:
            _skip_or_raise(error, report, skip_bad_rows, path)
    report.rows_kept = len(rows)
    _require_rows(rows, report)
    return rows, report


def write_prompts(rows: list[PromptRow], out: str | Path) -> Path:
    """Prompt rows as ``{"id", "prompt"}`` JSONL (chat messages), the format ``gad collect`` reads."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({"id": row.id, "prompt": row.messages}, ensure_ascii=False) + "\n")
    return out


def load_training_rows(
    path: str | Path,
    *,
    prompt_column: str | None = None,
    response_column: str | None = None,
    skip_bad_rows: bool = False,
    max_row_chars: int | None = MAX_TRAINING_ROW_CHARS,
) -> tuple[list[TrainingRow], LoadReport]:
    """Load (prompt, teacher response) pairs.

    Columns default to the first present of :data:`PROMPT_COLUMNS` and :data:`RESPONSE_COLUMNS`; a ``messages``
    column whose last message is the assistant's is split into prompt and response. A row longer than
    ``max_row_chars`` characters is a bad row (None: no limit).
    """
    report = LoadReport(str(path))
    rows: list[TrainingRow] = []
    for where, record in _records(path, max_row_chars):
        report.rows_read += 1
        try:
            if isinstance(record, DataError):
                raise record
            rows.append(_training_row(record, where, str(path), prompt_column, response_column, report.rows_read))
        except DataError as error:
            _skip_or_raise(error, report, skip_bad_rows, path)
    report.rows_kept = len(rows)
    _require_rows(rows, report)
    return rows, report


def _training_row(
    record: dict, where: str, path: str, prompt_column: str | None, response_column: str | None, number: int
) -> TrainingRow:
    prompt_key = prompt_column or _find_column(record, PROMPT_COLUMNS, "prompt", where, path)
    if prompt_key not in record or record[prompt_key] is None:
        raise _row_error("missing field", where, prompt_key)
    prompt = to_messages(record[prompt_key], where=where, field_name=prompt_key)
    response_key = response_column or next((c for c in RESPONSE_COLUMNS if c in record), None)
    if response_key is None and prompt[-1]["role"] == "assistant":
        prompt, response = prompt[:-1], prompt[-1]["content"]
        if not response.strip():
            raise _row_error("empty response", where, prompt_key)
        _require_prompt(prompt, where, prompt_key)
    else:
        if response_key is None:
            raise _row_error(
                f"no response column (looked for {', '.join(RESPONSE_COLUMNS)}; map yours with response_column=NAME)",
                where,
                None,
            )
        if response_key not in record or record[response_key] is None:
            raise _row_error("missing field", where, response_key)
        response = to_response(record[response_key], where=where, field_name=response_key)
    if prompt[-1]["role"] == "assistant":
        raise _row_error("the prompt ends with an assistant message; the response must be separate", where, prompt_key)
    row_id = record.get("id")
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    finish_reason = record.get("finish_reason", metadata.get("finish_reason"))
    row_id = str(row_id) if row_id is not None else str(number)
    return TrainingRow(prompt, response, row_id, finished=finish_reason != "length")


def _find_column(record: dict, candidates: tuple[str, ...], what: str, where: str, path: str) -> str:
    for name in candidates:
        if name in record:
            return name
    found = ", ".join(map(str, record)) or "nothing"
    raise DataError(
        f"no {what} column (looked for {', '.join(candidates)}; found {found}); map yours with {what}_column=NAME",
        where=where,
    )


def _row_error(message: str, where: str, field_name: str | None) -> DataError:
    return DataError(message, where=where, field=field_name)


def _skip_or_raise(error: DataError, report: LoadReport, skip_bad_rows: bool, path: str | Path) -> None:
    located = error if error.path else error.located(str(path))
    if not skip_bad_rows:
        hint = " (fix the row, or set skip_bad_rows to count and skip bad rows)"
        raise DataError(located.message + hint, path=located.path, where=located.where, field=located.field) from None
    report.skipped.append(str(located))


def _require_rows(rows: list, report: LoadReport) -> None:
    if not rows:
        detail = f" ({len(report.skipped)} bad rows skipped)" if report.skipped else ""
        raise GadError(f"{report.path}: no usable rows{detail}; the dataset is empty")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
