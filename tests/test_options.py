"""CLI options generated from dataclass fields (gad.options), and the real configs and commands built with them."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gad.cli import build_parser
from gad.collect import CollectConfig
from gad.collect.collector import DEFAULT_REFUSAL_REGEX
from gad.errors import GadError
from gad.evaluation.cli import _judge_config
from gad.evaluation.evaluate import JUDGE_PREFIX, GenerationConfig, JudgeConfig
from gad.options import add_dataclass_arguments, check_ranges, cli_fields, dataclass_from_args, option_flag


@dataclass
class Sample:
    name: str = field(metadata={"help": "a required name"})
    count: int = field(default=3, metadata={"help": "how many"})
    ratio: float = field(default=0.5, metadata={"help": "a fraction, 50% by default"})
    folder: Path = field(default=Path("out"), metadata={"help": "where to write"})
    limit: int | None = field(default=None, metadata={"help": "at most this many (no limit when unset)"})
    cache: Path | None = field(default=None, metadata={"help": "a cache file"})
    either: str | Path | None = field(default=None, metadata={"help": "a path given as str or Path"})
    verbose: bool = field(default=False, metadata={"help": "say more"})
    progress: bool = field(default=True, metadata={"help": "show progress"})
    drop_empty: bool = field(default=True, metadata={"help": "drop empty ones", "flag": "--keep-empty", "invert": True})
    sizes: list[int] = field(default_factory=list, metadata={"help": "some sizes"})
    files: dict[str, Path] = field(default_factory=dict, metadata={"help": "named files", "bare_key": "main"})
    tags: dict[str, str] = field(default_factory=dict, metadata={"help": "tags", "metavar": "K=V"})
    secret: str | None = field(default=None, metadata={"help": "never on the command line", "cli": False})
    label: str = field(default="x", metadata={"help": "a label", "flag": "--tag-line", "metavar": "TEXT"})


def parser_for(cls: type = Sample, **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_dataclass_arguments(parser, cls, **kwargs)
    return parser


def build(argv: list[str], cls: type = Sample, **overrides):
    return dataclass_from_args(cls, parser_for(cls).parse_args(argv), **overrides)


def test_defaults_come_from_the_dataclass():
    assert build(["--name", "a"]) == Sample(name="a")


def test_types_follow_the_annotations():
    built = build(
        ["--name", "a", "--count", "7", "--ratio", "0.25", "--folder", "f", "--limit", "4", "--cache", "c.db"]
        + ["--either", "e.txt", "--sizes", "1", "2", "3", "--tag-line", "hello"]
    )
    assert (built.count, built.ratio, built.limit, built.label) == (7, 0.25, 4, "hello")
    assert built.folder == Path("f") and built.cache == Path("c.db") and built.either == Path("e.txt")
    assert built.sizes == [1, 2, 3]
    with pytest.raises(SystemExit):
        parser_for().parse_args(["--name", "a", "--count", "seven"])


def test_bool_flags_plain_and_inverted():
    assert [option_flag(Sample, n) for n in ("verbose", "progress", "drop_empty")] == [
        "--verbose",
        "--no-progress",
        "--keep-empty",
    ]
    built = build(["--name", "a", "--verbose", "--no-progress", "--keep-empty"])
    assert built.verbose is True and built.progress is False and built.drop_empty is False
    built = build(["--name", "a"])
    assert built.verbose is False and built.progress is True and built.drop_empty is True


def test_dict_fields_take_repeated_key_value_and_a_bare_value(capsys):
    built = build(["--name", "a", "--files", "x.txt", "--files", "extra=y=z.txt", "--tags", "k=v"])
    assert built.files == {"main": Path("x.txt"), "extra": Path("y=z.txt")}
    assert built.tags == {"k": "v"}
    with pytest.raises(SystemExit):  # no bare_key: KEY= is needed
        parser_for().parse_args(["--name", "a", "--tags", "v"])
    assert "--tags takes KEY=VALUE" in capsys.readouterr().err
    first, second = build(["--name", "a"]), build(["--name", "b"])
    first.files["k"] = Path("p")
    assert second.files == {}, "the default dict must not be shared"


def test_required_fields_hidden_fields_exclude_overrides_and_defaults(capsys):
    with pytest.raises(SystemExit):
        parser_for().parse_args([])
    assert "required: --name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser_for().parse_args(["--name", "a", "--secret", "s"])
    assert build(["--name", "a"], secret="s").secret == "s"
    assert build(["--name", "a"], count=9).count == 9  # an override beats the parsed value
    with pytest.raises(TypeError, match="nope"):
        build(["--name", "a"], nope=1)
    parser = parser_for(exclude=("count",), defaults={"name": "given", "ratio": 0.75})
    args = parser.parse_args([])
    assert not hasattr(args, "count")
    assert dataclass_from_args(Sample, args) == Sample(name="given", ratio=0.75)
    assert "(default: 0.75)" in parser.format_help()


def test_help_shows_every_field_with_its_default():
    text = " ".join(parser_for().format_help().split())  # argparse wraps lines
    for f in cli_fields(Sample):
        assert f.metadata["help"] in text, f.name
    assert "--secret" not in text
    assert "how many (default: 3)" in text and "50% by default (default: 0.5)" in text
    assert "where to write (default: out)" in text and "a label (default: x)" in text
    assert "show progress (on by default; this flag turns it off)" in text
    assert "--tag-line TEXT" in text and "--tags K=V" in text and "--limit LIMIT" in text
    assert "(default: None)" not in text and "say more (default" not in text


def test_prefix_lets_two_dataclasses_share_a_parser():
    @dataclass
    class Other:
        count: int = field(default=1, metadata={"help": "the other count"})

    parser = parser_for()
    add_dataclass_arguments(parser, Other, prefix="other-")
    args = parser.parse_args(["--name", "a", "--count", "5", "--other-count", "6"])
    assert dataclass_from_args(Sample, args).count == 5
    assert dataclass_from_args(Other, args, prefix="other-").count == 6
    assert option_flag(Other, "count", "other-") == "--other-count"


def test_misdeclared_fields_are_refused():
    @dataclass
    class NoHelp:
        count: int = 1

    @dataclass
    class Contradiction:
        flag: bool = field(default=False, metadata={"help": "h", "invert": True})

    @dataclass
    class Unsupported:
        pair: tuple[int, int] = field(default=(1, 2), metadata={"help": "h"})

    for cls, message in ((NoHelp, "no help"), (Contradiction, "inverted"), (Unsupported, "not one of")):
        with pytest.raises(TypeError, match=message):
            parser_for(cls)


@given(
    count=st.integers(min_value=-(10**12), max_value=10**12),
    ratio=st.floats(allow_nan=False, allow_infinity=False),
)
def test_parse_then_build_round_trips_numbers(count, ratio):
    # KEY=VALUE form: argparse reads "-1e-05" after a space as an option, not a number.
    built = build(["--name", "a", f"--count={count}", f"--ratio={ratio!r}"])
    assert built.count == count and built.ratio == ratio


def test_check_ranges_names_the_option():
    @dataclass
    class Limits:
        workers: int = field(default=1, metadata={"help": "h"})
        rate: float | None = field(default=None, metadata={"help": "h"})

    check_ranges(Limits(), at_least_one=("workers",), positive=("rate",))  # None passes
    with pytest.raises(GadError, match=r"--x-workers must be at least 1, got 0"):
        check_ranges(Limits(workers=0), prefix="x-", at_least_one=("workers",))
    with pytest.raises(GadError, match=r"--rate must be in \(0, 1\], got 1.5"):
        check_ranges(Limits(rate=1.5), fraction=("rate",))


# --- the real configs and commands ---------------------------------------------------------------------------------

CONFIGS = (CollectConfig, JudgeConfig, GenerationConfig)
# Every flag the commands had before their options were generated; scripts use them.
OLD_FLAGS = {
    "collect": "--prompts --model --base-url --out --api-key-env --n --concurrency --rpm --tpm --temperature --top-p "
    "--max-tokens --seed --system --cache --timeout --max-retries --backoff-base --price-in --price-out --dry-run "
    "--prompt-column --id-column --skip-bad-rows --keep-truncated --keep-empty --refusal-regex --keep-duplicates "
    "--retry-failed --no-progress --summary-json",
    "eval": "--model --prompts --out --teacher --no-judge-teacher --pairwise --discriminator --tokenizer --judge-url "
    "--judge-model --judge-api-key-env --judge-template --cache --judge-concurrency --judge-rpm --judge-tpm "
    "--judge-retries --judge-max-tokens --select --select-metric --max-length-ratio --min-length-ratio --no-link "
    "--batch-size --max-new-tokens --temperature --top-p --seed --device --limit",
    "generate": "--model --prompts --out --batch-size --max-new-tokens --temperature --top-p --seed --device --limit",
}


GENERATED = {
    "collect": [(CollectConfig, "")],
    "eval": [(JudgeConfig, JUDGE_PREFIX), (GenerationConfig, "")],
    "generate": [(GenerationConfig, "")],
}


@pytest.fixture(scope="module")
def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_is_documented(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


@pytest.mark.parametrize("command", sorted(OLD_FLAGS))
def test_commands_keep_their_flags_and_explain_every_option(commands, command):
    parser = commands[command]
    flags = {s for action in parser._actions for s in action.option_strings}
    assert set(OLD_FLAGS[command].split()) <= flags
    for action in parser._actions:
        assert action.help, f"gad {command} {action.option_strings} has no help"
    text = "".join(parser.format_help().split())  # argparse wraps lines, and breaks them after hyphens
    for cls, prefix in GENERATED[command]:
        for f in cli_fields(cls):
            assert option_flag(cls, f.name, prefix) in flags, (command, f.name)
            assert "".join(f.metadata["help"].split()) in text, (command, f.name)


def test_collect_options_build_the_config(commands, tmp_path):
    required = ["--prompts", "p.jsonl", "--out", "o.jsonl", "--model", "m", "--base-url", "http://x/v1"]
    built = dataclass_from_args(CollectConfig, commands["collect"].parse_args(required))
    assert built == CollectConfig(prompts=Path("p.jsonl"), out=Path("o.jsonl"), model="m", base_url="http://x/v1")
    assert built.refusal_regex == DEFAULT_REFUSAL_REGEX and built.drop_truncated and built.dedupe and built.progress
    argv = [*required, "--keep-truncated", "--keep-empty", "--keep-duplicates", "--no-progress", "--refusal-regex", ""]
    argv += ["--n", "3", "--rpm", "60", "--top-p", "0.9", "--cache", str(tmp_path / "c.sqlite"), "--dry-run"]
    built = dataclass_from_args(CollectConfig, commands["collect"].parse_args(argv), api_key="k")
    assert not (built.drop_truncated or built.drop_empty or built.dedupe or built.progress)
    assert built.refusal_regex is None and built.dry_run and built.api_key == "k"
    assert (built.n, built.rpm, built.top_p, built.cache) == (3, 60.0, 0.9, tmp_path / "c.sqlite")


def test_eval_options_build_the_judge_and_generation_configs(commands, tmp_path):
    parse = commands["eval"].parse_args
    assert _judge_config(parse([]), tmp_path) is None  # no --judge-url: no judge
    assert dataclass_from_args(GenerationConfig, parse([])) == GenerationConfig()
    argv = ["--judge-url", "http://j/v1", "--judge-template", "s.txt", "--judge-template", "pairwise=p.txt"]
    argv += ["--judge-retries", "5", "--judge-concurrency", "3", "--judge-reference-max-tokens", "99"]
    argv += ["--temperature", "0.7", "--device", "cpu", "--batch-size", "2"]
    args = parse(argv)
    judge = _judge_config(args, tmp_path)
    assert (judge.base_url, judge.model, judge.parse_retries, judge.concurrency) == ("http://j/v1", "gpt-4o", 5, 3)
    assert judge.templates == {"score": Path("s.txt"), "pairwise": Path("p.txt")}
    assert judge.reference_max_tokens == 99 and judge.temperature == 0.0  # --temperature is the students'
    assert judge.cache == tmp_path / "judge-cache.sqlite"
    assert _judge_config(parse([*argv, "--cache", "mine.sqlite"]), tmp_path).cache == Path("mine.sqlite")
    generation = dataclass_from_args(GenerationConfig, args)
    assert (generation.temperature, generation.device, generation.batch_size) == (0.7, "cpu", 2)


def test_configs_validate_when_built(tmp_path):
    url = "http://127.0.0.1:9/v1"
    base = {"prompts": "p.jsonl", "out": str(tmp_path / "o.jsonl"), "model": "m", "base_url": url}
    built = CollectConfig(**base, refusal_regex="")
    assert built.prompts == Path("p.jsonl") and built.out == tmp_path / "o.jsonl" and built.refusal_regex is None
    for bad, message in (
        ({"n": 0}, "--n must be at least 1"),
        ({"top_p": 1.5}, r"--top-p must be in \(0, 1\]"),
        ({"max_tokens": 0}, "--max-tokens must be at least 1"),
        ({"price_in": -1.0}, "--price-in must be at least 0"),
        ({"out": "o.txt"}, "--out must be a .jsonl"),
    ):
        with pytest.raises(GadError, match=message):
            CollectConfig(**{**base, **bad})
    with pytest.raises(GadError, match="--judge-url must start with http"):
        JudgeConfig(base_url="localhost:8000")
    with pytest.raises(GadError, match="--judge-concurrency must be at least 1"):
        JudgeConfig(base_url=url, concurrency=0)
    with pytest.raises(GadError, match="--judge-retries must be at least 0"):
        JudgeConfig(base_url=url, parse_retries=-1)
    with pytest.raises(GadError, match="--batch-size must be at least 1"):
        GenerationConfig(batch_size=0)
    with pytest.raises(GadError, match=r"--top-p must be in \(0, 1\]"):
        GenerationConfig(top_p=0.0)
