"""TeacherCache: stable keys, durable commits (even under SIGKILL), first answer kept."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gad.api.cache import CacheEntry, TeacherCache
from gad.errors import GadError

MESSAGES = [{"role": "user", "content": "hi"}]


def entry(text: str = "hello", **fields) -> CacheEntry:
    return CacheEntry(
        text=text,
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=1,
        latency_s=0.2,
        created_at=1.0,
        model="m",
        **fields,
    )


def test_key_depends_on_model_messages_params_and_sample_index_only():
    base = TeacherCache.key("m", MESSAGES, {"temperature": 0.7, "max_tokens": 10}, 0)
    assert base == TeacherCache.key("m", MESSAGES, {"max_tokens": 10, "temperature": 0.7, "top_p": None}, 0)
    assert base == TeacherCache.key(
        "m", [{"role": "user", "content": "hi", "name": "x"}], {"temperature": 0.7, "max_tokens": 10}, 0
    )
    others = {
        TeacherCache.key("m2", MESSAGES, {"temperature": 0.7, "max_tokens": 10}, 0),
        TeacherCache.key("m", [{"role": "user", "content": "hi!"}], {"temperature": 0.7, "max_tokens": 10}, 0),
        TeacherCache.key("m", MESSAGES, {"temperature": 0.8, "max_tokens": 10}, 0),
        TeacherCache.key("m", MESSAGES, {"temperature": 0.7, "max_tokens": 10}, 1),
    }
    assert base not in others and len(others) == 4


@given(st.text(), st.text(), st.integers(0, 5))
def test_key_is_a_pure_function(content, model, index):
    messages = [{"role": "user", "content": content}]
    assert TeacherCache.key(model, messages, {"t": 1}, index) == TeacherCache.key(
        model, list(messages), {"t": 1}, index
    )


def test_put_get_roundtrip_persists_and_keeps_first(tmp_path):
    path = tmp_path / "c.sqlite"
    with TeacherCache(path) as cache:
        cache.put("k1", entry("first"))
        cache.put("k1", entry("second"))
        assert cache.get("k1").text == "first"
        assert cache.get("missing") is None
        assert "k1" in cache and len(cache) == 1
    with TeacherCache(path) as cache:
        assert cache.get("k1") == entry("first")
        mode = cache._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_get_many_handles_many_keys(tmp_path):
    with TeacherCache(tmp_path / "c.sqlite") as cache:
        for index in range(1200):
            cache.put(f"k{index}", entry(str(index)))
        found = cache.get_many([f"k{index}" for index in range(0, 1500, 3)])
    assert len(found) == 400 and found["k999"].text == "999"


def test_failures_are_remembered_and_cleared_by_an_answer(tmp_path):
    with TeacherCache(tmp_path / "c.sqlite") as cache:
        cache.put_failure("k", "content_filter", "filtered")
        assert cache.get_failures(["k", "other"])["k"].reason == "content_filter"
        cache.put("k", entry())
        assert cache.get_failures(["k"]) == {}


def test_each_put_survives_sigkill(tmp_path):
    path = tmp_path / "c.sqlite"
    script = textwrap.dedent(f"""
        import os, signal
        from gad.api.cache import CacheEntry, TeacherCache
        cache = TeacherCache({str(path)!r})
        for i in range(50):
            cache.put(f"k{{i}}", CacheEntry(text=str(i), finish_reason="stop"))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert process.returncode == -9
    with TeacherCache(path) as cache:
        assert len(cache) == 50 and cache.get("k49").text == "49"


def test_a_corrupt_cache_is_one_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(GadError, match="cannot open the answer cache"):
        TeacherCache(path)


def test_cache_file_is_plain_sqlite(tmp_path):
    path = tmp_path / "c.sqlite"
    with TeacherCache(path) as cache:
        cache.put("k", entry())
    rows = sqlite3.connect(path).execute("SELECT key, text FROM answers").fetchall()
    assert rows == [("k", "hello")]
