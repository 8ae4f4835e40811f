"""Recipes: one YAML file per use case, resolved into a stage's config dataclass.

A recipe's top-level keys apply to every stage that has them; a section named after a stage (``seqkd:``, ``warmup:``,
``gad:``) overrides them for that stage; ``key=value`` arguments on the command line override both (``key=value``
applies to the stage being run, ``gad.key=value`` only to that stage). ``run_dir`` names the run: each stage writes to
``RUN_DIR/STAGE`` unless ``output_dir`` is set. The ``gad`` stage starts from the warmup's student and discriminator
(``RUN_DIR/warmup``, or the warmup the same command runs before it) unless ``init_from`` is set or a student is named
for it (its section, ``gad.student=``, or ``student=`` on a command that does not run the warmup); a top-level
``student`` or ``discriminator`` seeds the stages before gad. A relative path in a recipe resolves against the
recipe's folder when it exists there, else against the working directory (``recipe_paths`` in the stage's
``config.yaml`` records which); paths given on the command line are relative to the working directory.

Every key is checked against the stage's config: an unknown key or a value of the wrong type stops with one line
naming the file, the key and what is expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from gad.errors import GadError
from gad.layout import RunLayout
from gad.training.config import STAGES

RECIPE_ONLY_KEYS = {"run_dir"}
NONE_IS_A_VALUE = {"report_to"}
PATH_KEYS = ("student", "train_file", "discriminator", "init_from", "run_dir", "output_dir")
RECIPE_FOLDER, WORKING_DIRECTORY = "recipe folder", "working directory"


def resolve_relative(value: str | Path, folder: Path) -> tuple[str, str | None]:
    """A relative path of a recipe in ``folder``: ``(folder/value, "recipe folder")`` when that exists, else
    ``(value, "working directory")``; absolute paths and ``builtin:`` names come back unchanged, with None."""
    text = str(value)
    if text.startswith("builtin:") or Path(text).expanduser().is_absolute():
        return text, None
    candidate = folder / text
    if candidate.exists():
        return str(candidate.resolve()), RECIPE_FOLDER
    return text, WORKING_DIRECTORY


def load_recipe(path: str | Path | None) -> dict[str, Any]:
    """Read a recipe file into a dict (empty when no recipe is given)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise GadError(f"recipe not found: {path} (see recipes/ for examples)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise GadError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise GadError(f"{path}: a recipe is a mapping of keys to values")
    return data


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["a=1", "gad.b=x"]`` -> ``{"a": "1", "gad.b": "x"}``; values stay strings until typed by the config."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GadError(f"bad override '{item}': write KEY=VALUE, e.g. learning_rate=1e-6")
        overrides[key.strip()] = value
    return overrides


def resolve_stage(
    recipe: dict[str, Any],
    stage: str,
    overrides: dict[str, str] | None = None,
    *,
    source: str = "",
    pending: set[str] | None = None,
    warmup_dir: str | None = None,
):
    """Build the config of ``stage`` from a recipe dict and command-line overrides. ``pending``: folders that
    earlier stages of the same command will write (their existence is checked when this stage starts); ``{"*"}``
    defers every such check (to print a config before anything ran). ``warmup_dir``: the folder of a warmup that
    the same command runs before this stage; the gad stage then starts from it, and an unprefixed ``student=``
    seeds the stages before it instead of replacing that warmup's student."""
    if stage not in STAGES:
        raise GadError(f"unknown stage '{stage}'; choose one of {', '.join(STAGES)}")
    config_cls = STAGES[stage]
    overrides = overrides or {}
    fields_of = {name: {f.name for f in dataclasses.fields(cls)} | RECIPE_ONLY_KEYS for name, cls in STAGES.items()}
    names = fields_of[stage] - RECIPE_ONLY_KEYS
    all_names = set().union(*fields_of.values())
    where = f"{source}: " if source else ""

    values: dict[str, Any] = {}
    for key, value in recipe.items():
        if key in STAGES:
            continue
        _check_known(key, all_names, where, "recipe")
        values[key] = value
    section = recipe.get(stage) or {}
    if not isinstance(section, dict):
        raise GadError(f"{where}section '{stage}' must be a mapping of keys to values")
    for other in STAGES:  # every section is checked now, not when (hours later) its stage runs
        if other != stage and isinstance(recipe.get(other), dict):
            for key in recipe[other]:
                _check_known(key, fields_of[other], where, f"stage '{other}'")
    for key, value in section.items():
        _check_known(key, names | RECIPE_ONLY_KEYS, where, f"stage '{stage}'")
        values[key] = value
    recipe_paths = {}
    if source and Path(source).is_file():
        folder = Path(source).resolve().parent
        for key in PATH_KEYS:
            if isinstance(values.get(key), str):
                values[key], base = resolve_relative(values[key], folder)
                if base:
                    recipe_paths[key] = base
    for key, value in overrides.items():
        prefix, dot, rest = key.partition(".")
        if dot:
            if prefix not in STAGES:
                raise GadError(f"bad override '{key}': the part before '.' must be a stage ({', '.join(STAGES)})")
            _check_known(rest, fields_of[prefix], "", f"stage '{prefix}' (command line)")
            if prefix == stage:
                values[rest] = value
            continue
        # like a top-level recipe key, an unprefixed key applies to every stage that has it
        _check_known(key, all_names, "", "any stage (command line)")
        values[key] = value

    def named_for_this_stage(key: str) -> bool:
        # its section, `STAGE.key=`, or `key=` when no warmup runs before it in the same command; a top-level value
        # seeds the stages before gad
        return key in section or bool(overrides.get(f"{stage}.{key}") or (overrides.get(key) and warmup_dir is None))

    run_dir = values.pop("run_dir", None)
    if run_dir is not None:
        values.setdefault("output_dir", str(RunLayout(run_dir).stage(stage).root))
    if stage == "gad" and not named_for_this_stage("student") and (warmup_dir or run_dir is not None):
        values.setdefault("init_from", warmup_dir or str(RunLayout(run_dir).stage("warmup").root))
    if stage == "gad" and "init_from" in values:  # the warmup's student and discriminator, unless named for gad
        for key in ("student", "discriminator"):
            if not named_for_this_stage(key):
                values.pop(key, None)
    if "output_dir" not in values:
        raise GadError(f"{where}no output folder: set run_dir (or output_dir) in the recipe or on the command line")
    values = {k: v for k, v in values.items() if k in names}
    if recipe_paths:
        values["recipe_paths"] = recipe_paths
    if "init_from" in values and pending and ("*" in pending or str(Path(values["init_from"])) in pending):
        values["inputs_pending"] = True

    hints = typing.get_type_hints(config_cls)
    typed = {k: _coerce(v, hints[k], k, where) for k, v in values.items()}
    try:
        return config_cls(**typed)
    except GadError:
        raise
    except (ValueError, TypeError) as error:
        raise GadError(f"{where}invalid {stage} config: {error}") from None


def _check_known(key: str, names: set[str], where: str, scope: str) -> None:
    if key in names:
        return
    close = difflib.get_close_matches(key, sorted(names), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise GadError(f"{where}unknown key '{key}' for {scope}{hint}")


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """Give ``value`` the type the config field expects; strings from the command line are parsed."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        # `report_to: none` is TrainingArguments' own word for "no integrations", not a missing value.
        spelled_none = isinstance(value, str) and value.lower() in ("none", "null") and key not in NONE_IS_A_VALUE
        if (value is None or spelled_none) and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, where)
            except GadError as error:
                errors.append(str(error))
        raise GadError(errors[0] if errors else f"{where}key '{key}': bad value {value!r}")
    if hint is Any or hint is object:
        return value
    if origin in (list, dict) or hint in (list, dict):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        expected = origin or hint
        if isinstance(expected, type) and expected is list and isinstance(value, str):
            value = [value]
        if not isinstance(value, expected):
            raise _type_error(key, value, expected.__name__, where)
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise _type_error(key, value, "true or false", where)
    if hint is int:
        if isinstance(value, bool):
            raise _type_error(key, value, "an integer", where)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise _type_error(key, value, "an integer", where)
    if hint is float:
        if isinstance(value, bool):
            raise _type_error(key, value, "a number", where)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, value, "a number", where)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise _type_error(key, value, "a string", where)
    # Enums and other TrainingArguments types accept their string form.
    return value


def _type_error(key: str, value: Any, expected: str, where: str) -> GadError:
    return GadError(f"{where}key '{key}' must be {expected}, got {value!r}")
