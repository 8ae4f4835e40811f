"""A durable cache of chat answers in SQLite, so a paid answer is never requested twice.

Why SQLite in WAL mode: every answer is committed the moment it arrives, a ``kill -9`` loses at most the answers
still in flight, and readers (an export, a second process) never block the writer. The key is a hash of everything
that determines an answer (model, messages, sampling parameters, sample index) and nothing else: never the endpoint's
credentials, which are not stored anywhere in the file.

The key API is generic so the LLM judge can cache its reference answers the same way::

    cache = TeacherCache("runs/judge/cache.sqlite")
    key = TeacherCache.key("gpt-4o", messages, {"temperature": 0, "max_tokens": 1024}, 0)
    if (entry := cache.get(key)) is None:
        result = await client.complete(messages, model="gpt-4o", temperature=0, max_tokens=1024)
        cache.put(key, CacheEntry.from_result(result, model="gpt-4o"))
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gad.errors import GadError

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class CacheEntry:
    """A cached answer: its text, why it stopped, its token usage, how long it took and when it arrived."""

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    created_at: float = 0.0
    model: str = ""

    @classmethod
    def from_result(cls, result: Any, *, model: str = "") -> CacheEntry:
        """Build an entry from a :class:`gad.api.client.ChatResult` (or anything with the same fields)."""
        return cls(
            text=result.text,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=result.latency_s,
            created_at=time.time(),
            model=model or getattr(result, "model", ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Failure:
    """A request that failed for good (e.g. a content filter), remembered so a rerun does not pay for it again."""

    reason: str
    detail: str
    created_at: float


class TeacherCache:
    """Answers keyed by :meth:`key`; each :meth:`put` is committed at once. Use one instance per process."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against a crashed or killed process (the WAL is in the OS cache); only a power
            # loss could drop the last commits, which would then simply be requested again.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise GadError(
                f"cannot open the answer cache {self.path}: {error} (delete it or pass another --cache)"
            ) from None

    @staticmethod
    def key(model: str, messages: list[dict[str, str]], params: Mapping[str, Any] | None, sample_index: int) -> str:
        """A stable hash of what determines an answer. ``params`` entries that are ``None`` do not count."""
        clean = {k: v for k, v in sorted((params or {}).items()) if v is not None}
        canonical = json.dumps(
            {
                "model": model,
                "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
                "params": clean,
                "sample": int(sample_index),
            },
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def get(self, key: str) -> CacheEntry | None:
        row = self._db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, latency_s, created_at, model "
            "FROM answers WHERE key = ?",
            (key,),
        ).fetchone()
        return None if row is None else CacheEntry(*row[:6], model=row[6])

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]:
        """Entries for those of ``keys`` that are cached."""
        columns = "key, text, finish_reason, prompt_tokens, completion_tokens, latency_s, created_at, model"
        return {row[0]: CacheEntry(*row[1:7], model=row[7]) for row in self._select_keys("answers", columns, keys)}

    def _select_keys(self, table: str, columns: str, keys: Iterable[str]) -> Iterator[tuple]:
        """Rows of ``table`` whose key is in ``keys``, one query per 500 keys (SQLite's parameter limit)."""
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            yield from self._db.execute(f"SELECT {columns} FROM {table} WHERE key IN ({marks})", chunk)

    def put(self, key: str, entry: CacheEntry) -> None:
        """Store an answer and commit it. An existing answer is kept: the first one paid for is the one used."""
        self._db.execute(
            "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                entry.model,
                entry.text,
                entry.finish_reason,
                int(entry.prompt_tokens),
                int(entry.completion_tokens),
                float(entry.latency_s),
                float(entry.created_at or time.time()),
            ),
        )
        self._db.execute("DELETE FROM failures WHERE key = ?", (key,))

    def put_failure(self, key: str, reason: str, detail: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)", (key, reason, detail[:500], time.time())
        )

    def get_failures(self, keys: Iterable[str]) -> dict[str, Failure]:
        rows = self._select_keys("failures", "key, reason, detail, created_at", keys)
        return {row[0]: Failure(*row[1:]) for row in rows}

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TeacherCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
