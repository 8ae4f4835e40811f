"""gad.training.recipe and gad.training.config: layering of recipe keys, typed overrides, run folders, paper
defaults, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gad.errors import GadError
from gad.training.config import GADConfig, SeqKDConfig, WarmupConfig
from gad.training.recipe import load_recipe, parse_overrides, resolve_stage


@pytest.fixture
def base(tmp_path) -> dict:
    """The least a recipe needs: a student, teacher data and a run folder (none of them must exist)."""
    return {"student": "student-model", "train_file": str(tmp_path / "train.jsonl"), "run_dir": str(tmp_path / "run")}


def write_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def value(config, name):
    """An enum-valued TrainingArguments field (lr_scheduler_type) compares by its string value."""
    item = getattr(config, name)
    return getattr(item, "value", item)


# ------------------------------------------------------------------------------------------------ layering


def test_top_level_keys_apply_to_every_stage_that_has_them(base):
    recipe = {**base, "seed": 7, "max_prompt_length": 32, "discriminator_learning_rate": 3e-4}
    seqkd = resolve_stage(recipe, "seqkd")
    warmup = resolve_stage(recipe, "warmup")
    assert isinstance(seqkd, SeqKDConfig) and isinstance(warmup, WarmupConfig)
    assert seqkd.seed == warmup.seed == 7
    assert seqkd.max_prompt_length == warmup.max_prompt_length == 32
    assert warmup.discriminator_learning_rate == 3e-4
    assert not hasattr(seqkd, "discriminator_learning_rate")  # a GAD-only key is ignored by seqkd, not an error


def test_stage_sections_override_top_level(base):
    recipe = {
        **base,
        "learning_rate": 1e-3,
        "seed": 1,
        "seqkd": {"learning_rate": 2e-3, "num_train_epochs": 6},
        "gad": {"learning_rate": 3e-4, "num_generations": 4},
    }
    (Path(base["run_dir"]) / "warmup").mkdir(parents=True)
    seqkd = resolve_stage(recipe, "seqkd")
    warmup = resolve_stage(recipe, "warmup")
    gad = resolve_stage(recipe, "gad")
    assert (seqkd.learning_rate, seqkd.num_train_epochs, seqkd.seed) == (2e-3, 6, 1)
    assert (warmup.learning_rate, warmup.num_generations) == (1e-3, 8)
    assert (gad.learning_rate, gad.num_generations, gad.seed) == (3e-4, 4, 1)


def test_command_line_overrides_are_typed(base):
    overrides = parse_overrides(
        ["learning_rate=1e-6", "skip_bad_rows=true", "num_generations=4", "max_prompt_length=none", "seed=4"]
    )
    assert overrides["learning_rate"] == "1e-6"  # strings until the config types them
    recipe = {**base, "learning_rate": 5e-3, "warmup": {"num_generations": 16, "skip_bad_rows": False}}
    config = resolve_stage(recipe, "warmup", overrides)
    assert config.learning_rate == 1e-6 and isinstance(config.learning_rate, float)
    assert config.skip_bad_rows is True
    assert config.num_generations == 4 and isinstance(config.num_generations, int)
    assert config.max_prompt_length is None
    assert config.seed == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("yes", True), ("1", True), ("false", False), ("no", False), ("0", False)],
)
def test_boolean_overrides(base, text, expected):
    config = resolve_stage(base, "seqkd", {"skip_bad_rows": text})
    assert config.skip_bad_rows is expected


def test_yaml_values_are_typed_too(base):
    # YAML reads 1.0e-3 as a float but 1e-3 as a string; both must reach the config as numbers.
    recipe = {**base, "learning_rate": "1e-3", "num_train_epochs": 2, "logging_steps": 5, "max_prompt_length": 64.0}
    config = resolve_stage(recipe, "seqkd")
    assert config.learning_rate == 1e-3 and isinstance(config.learning_rate, float)
    assert config.num_train_epochs == 2.0
    assert config.max_prompt_length == 64 and isinstance(config.max_prompt_length, int)


def test_stage_prefixed_override_applies_only_to_that_stage(base):
    (Path(base["run_dir"]) / "warmup").mkdir(parents=True)
    overrides = parse_overrides(["gad.learning_rate=2e-6", "gad.num_generations=4", "seed=3"])
    gad = resolve_stage(base, "gad", overrides)
    warmup = resolve_stage(base, "warmup", overrides)
    seqkd = resolve_stage(base, "seqkd", overrides)
    assert (gad.learning_rate, gad.num_generations, gad.seed) == (2e-6, 4, 3)
    assert (warmup.learning_rate, warmup.num_generations, warmup.seed) == (1e-6, 8, 3)
    assert (seqkd.learning_rate, seqkd.seed) == (5e-6, 3)


def test_stage_prefixed_override_for_a_stage_section_key(base):
    overrides = parse_overrides(["seqkd.learning_rate=9e-6"])
    recipe = {**base, "seqkd": {"learning_rate": 1e-5}}
    assert resolve_stage(recipe, "seqkd", overrides).learning_rate == 9e-6


def test_override_prefix_must_be_a_stage(base):
    with pytest.raises(GadError, match="must be a stage") as info:
        resolve_stage(base, "seqkd", {"gan.learning_rate": "1e-6"})
    assert "gan.learning_rate" in str(info.value)


def test_override_value_may_contain_equals_signs():
    assert parse_overrides(["run_name=a=b", "output_dir="]) == {"run_name": "a=b", "output_dir": ""}


# ------------------------------------------------------------------------------------------------ run_dir


def test_run_dir_gives_each_stage_its_folder(base):
    run_dir = Path(base["run_dir"])
    (run_dir / "warmup").mkdir(parents=True)
    for stage in ("seqkd", "warmup", "gad"):
        assert Path(resolve_stage(base, stage).output_dir) == run_dir / stage


def test_gad_starts_from_the_warmup_folder(base):
    run_dir = Path(base["run_dir"])
    (run_dir / "warmup").mkdir(parents=True)
    config = resolve_stage(base, "gad")
    assert Path(config.init_from) == run_dir / "warmup"
    assert Path(config.student) == run_dir / "warmup" / "student"  # the top-level student seeds seqkd/warmup only
    assert Path(config.discriminator) == run_dir / "warmup" / "discriminator"
    warmup = resolve_stage(base, "warmup")
    assert warmup.student == "student-model" and warmup.init_from is None


def test_gad_without_the_warmup_folder_says_so(base):
    with pytest.raises(GadError, match="init_from folder not found") as info:
        resolve_stage(base, "gad")
    assert str(Path(base["run_dir"]) / "warmup") in str(info.value)


def test_gad_section_student_overrides_the_warmup_folder(base):
    config = resolve_stage({**base, "gad": {"student": "other-student"}}, "gad")
    assert config.student == "other-student"
    assert config.init_from is None


def test_student_on_the_command_line_overrides_the_warmup_folder(base):
    config = resolve_stage(base, "gad", {"student": "cli-student"})
    assert config.student == "cli-student" and config.init_from is None


def test_stage_prefixed_student_on_the_command_line_overrides_the_warmup_folder(base):
    config = resolve_stage(base, "gad", {"gad.student": "cli-student", "gad.discriminator": "cli-disc"})
    assert config.student == "cli-student" and config.discriminator == "cli-disc" and config.init_from is None


def test_in_a_pipeline_student_on_the_command_line_seeds_the_stages_before_gad_and_gad_starts_from_the_warmup(base):
    warmup_dir = str(Path(base["run_dir"]) / "warmup")
    overrides = {"student": "cli-student", "discriminator": "cli-disc"}
    warmup = resolve_stage(base, "warmup", overrides, pending={warmup_dir})
    gad = resolve_stage(base, "gad", overrides, pending={warmup_dir}, warmup_dir=warmup_dir)
    assert warmup.student == "cli-student" and warmup.discriminator == "cli-disc"
    assert gad.init_from == warmup_dir
    assert gad.student == str(Path(warmup_dir) / "student")
    assert gad.discriminator == str(Path(warmup_dir) / "discriminator")
    # named for gad itself, a student still replaces the warmup's
    own = resolve_stage(base, "gad", {**overrides, "gad.student": "own"}, warmup_dir=warmup_dir)
    assert own.student == "own" and own.init_from is None


def test_a_top_level_discriminator_seeds_the_warmup_and_gad_keeps_the_trained_one(base):
    recipe = {**base, "discriminator": "initial-disc"}
    gad = resolve_stage(recipe, "gad", pending={"*"})
    assert gad.discriminator == str(Path(base["run_dir"]) / "warmup" / "discriminator")
    assert resolve_stage({**recipe, "gad": {"discriminator": "d"}}, "gad", pending={"*"}).discriminator == "d"


def test_explicit_output_dir_and_init_from(base, tmp_path):
    init = tmp_path / "elsewhere"
    init.mkdir()
    recipe = {**base, "output_dir": str(tmp_path / "out"), "gad": {"init_from": str(init), "discriminator": "disc"}}
    config = resolve_stage(recipe, "gad")
    assert Path(config.output_dir) == tmp_path / "out"
    assert Path(config.init_from) == init
    assert Path(config.student) == init / "student"
    assert config.discriminator == "disc"


def test_output_folder_is_required(tmp_path):
    with pytest.raises(GadError, match="no output folder"):
        resolve_stage({"student": "s", "train_file": "t.jsonl"}, "seqkd")
    config = resolve_stage({"student": "s", "train_file": "t.jsonl"}, "seqkd", {"output_dir": str(tmp_path / "o")})
    assert Path(config.output_dir) == tmp_path / "o"


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_key_suggests_the_right_one(base):
    with pytest.raises(GadError, match="unknown key 'lerning_rate'") as info:
        resolve_stage({**base, "lerning_rate": 1e-6}, "seqkd", source="my.yaml")
    assert "did you mean 'learning_rate'" in str(info.value)
    assert "my.yaml" in str(info.value)


def test_unknown_key_in_a_section_or_override(base):
    with pytest.raises(GadError, match="unknown key 'num_generaions'.*did you mean 'num_generations'"):
        resolve_stage({**base, "warmup": {"num_generaions": 4}}, "warmup")
    with pytest.raises(GadError, match="unknown key 'lerning_rate'.*did you mean 'learning_rate'"):
        resolve_stage(base, "seqkd", {"lerning_rate": "1e-6"})


def test_typo_for_a_later_stage_is_caught_before_the_first_stage_trains(base):
    """`gad train --stage seqkd,warmup,gad gad.lerning_rate=1e-6` must fail before seqkd and warmup train."""
    with pytest.raises(GadError, match="unknown key 'lerning_rate'.*did you mean 'learning_rate'"):
        resolve_stage(base, "seqkd", {"gad.lerning_rate": "1e-6"})
    with pytest.raises(GadError, match="unknown key 'num_generaions'.*did you mean 'num_generations'"):
        resolve_stage({**base, "gad": {"num_generaions": 4}}, "seqkd")


def test_command_line_key_applies_to_the_stages_that_have_it(base):
    """Like a top-level recipe key, `num_generations=4` in a seqkd,warmup,gad run must not stop seqkd."""
    assert resolve_stage(base, "warmup", {"num_generations": "4"}).num_generations == 4
    config = resolve_stage(base, "seqkd", {"num_generations": "4", "learning_rate": "1e-5"})
    assert config.learning_rate == 1e-5


def test_gad_only_key_in_the_seqkd_section_is_unknown(base):
    with pytest.raises(GadError, match="unknown key 'num_generations' for stage 'seqkd'"):
        resolve_stage({**base, "seqkd": {"num_generations": 4}}, "seqkd")


def test_unknown_key_without_a_close_match(base):
    with pytest.raises(GadError, match="unknown key 'zzzzqqq'") as info:
        resolve_stage({**base, "zzzzqqq": 1}, "seqkd")
    assert "did you mean" not in str(info.value)


def test_unknown_stage(base):
    with pytest.raises(GadError, match="unknown stage 'sft'"):
        resolve_stage(base, "sft")


@pytest.mark.parametrize(
    ("key", "bad", "expected"),
    [
        ("learning_rate", "abc", "a number"),
        ("learning_rate", True, "a number"),
        ("num_generations", 2.5, "an integer"),
        ("num_generations", "2.5", "an integer"),
        ("num_generations", True, "an integer"),
        ("skip_bad_rows", "maybe", "true or false"),
        ("skip_bad_rows", 2, "true or false"),
        ("student", ["a", "b"], "a string"),
    ],
)
def test_wrong_type_names_the_key_and_the_type(base, key, bad, expected):
    with pytest.raises(GadError) as info:
        resolve_stage({**base, key: bad}, "warmup", source="recipe.yaml")
    text = str(info.value)
    assert f"key '{key}'" in text and expected in text and "recipe.yaml" in text


def test_wrong_type_on_the_command_line(base):
    with pytest.raises(GadError, match="key 'num_generations' must be an integer"):
        resolve_stage(base, "warmup", {"num_generations": "2.5"})
    with pytest.raises(GadError, match="key 'learning_rate' must be a number"):
        resolve_stage(base, "warmup", {"learning_rate": "abc"})


def test_section_must_be_a_mapping(base):
    with pytest.raises(GadError, match="section 'seqkd' must be a mapping"):
        resolve_stage({**base, "seqkd": ["learning_rate"]}, "seqkd")


def test_bad_override_syntax():
    for item in ("foo", "=1"):
        with pytest.raises(GadError, match="bad override") as info:
            parse_overrides([item])
        assert item in str(info.value) and "KEY=VALUE" in str(info.value)


def test_load_recipe(tmp_path):
    path = write_recipe(tmp_path, "run_dir: runs/x\nstudent: s\nseqkd:\n  learning_rate: 1.0e-3\n")
    assert load_recipe(path) == {"run_dir": "runs/x", "student": "s", "seqkd": {"learning_rate": 1e-3}}
    assert load_recipe(None) == {}
    assert load_recipe(write_recipe(tmp_path, "# only a comment\n")) == {}


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write_recipe(tmp_path, "student: s\ntrain_file: t.jsonl\nseqkd:\n  learning_rate: [1, 2\n  seed: 3\n")
    with pytest.raises(GadError, match="not valid YAML") as info:
        load_recipe(path)
    assert str(path) in str(info.value)
    assert "line " in str(info.value)
    path = write_recipe(tmp_path, "a: 1\nb: : :\n")
    with pytest.raises(GadError, match=r"line 2") as info:
        load_recipe(path)


def test_recipe_must_be_a_mapping(tmp_path):
    with pytest.raises(GadError, match="mapping") as info:
        load_recipe(write_recipe(tmp_path, "- a\n- b\n"))
    assert "recipe.yaml" in str(info.value)


def test_missing_recipe(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(GadError, match="recipe not found") as info:
        load_recipe(path)
    assert str(path) in str(info.value)
    with pytest.raises(GadError, match="recipe not found"):
        load_recipe(tmp_path)  # a folder is not a recipe


def test_shipped_tiny_recipe_resolves(tmp_path):
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "tiny-cpu.yaml")
    run_dir = tmp_path / "run"
    (run_dir / "warmup").mkdir(parents=True)
    overrides = {"run_dir": str(run_dir)}
    seqkd = resolve_stage(recipe, "seqkd", overrides)
    warmup = resolve_stage(recipe, "warmup", overrides)
    gad = resolve_stage(recipe, "gad", overrides)
    assert (seqkd.learning_rate, seqkd.num_train_epochs) == (3e-3, 6)
    assert (warmup.num_generations, warmup.d_only_steps, warmup.max_steps) == (4, 4, 24)
    assert Path(gad.init_from) == run_dir / "warmup" and gad.max_steps == 16
    assert Path(seqkd.output_dir) == run_dir / "seqkd"


# ------------------------------------------------------------------------------------------------ defaults


def test_gad_paper_defaults(base):
    (Path(base["run_dir"]) / "warmup").mkdir(parents=True)
    config = resolve_stage(base, "gad")
    assert isinstance(config, GADConfig) and not isinstance(config, WarmupConfig)
    assert config.learning_rate == 1e-6
    assert config.discriminator_learning_rate == 1e-6
    assert config.beta == 0.001
    assert config.num_generations == 8
    assert config.temperature == 0.8
    assert config.max_grad_norm == 0.2
    assert config.discriminator_max_grad_norm == 0.2
    assert value(config, "lr_scheduler_type") == "constant"
    assert config.weight_decay == 0.01
    assert config.discriminator_loss == "bradley_terry"
    assert config.student_objective == "policy_gradient"
    assert config.d_only_steps == 0
    assert config.num_train_epochs == 2


def test_warmup_paper_defaults(base):
    config = resolve_stage(base, "warmup")
    assert config.student_objective == "teacher_sft"
    assert config.d_only_steps == 10
    assert config.beta == 0
    assert config.num_train_epochs == 1
    assert (config.learning_rate, config.discriminator_learning_rate, config.num_generations) == (1e-6, 1e-6, 8)
    assert config.discriminator_loss == "bradley_terry"


def test_seqkd_paper_defaults(base):
    config = resolve_stage(base, "seqkd")
    assert config.learning_rate == 5e-6
    assert config.num_train_epochs == 3
    assert config.completion_only_loss is True
    assert config.max_grad_norm == 0.2
    assert value(config, "lr_scheduler_type") == "constant"
    assert config.max_length == config.max_prompt_length + config.max_completion_length


def test_configs_can_be_built_directly(tmp_path):
    config = SeqKDConfig(student="s", train_file="t.jsonl", output_dir=str(tmp_path / "o"))
    assert config.learning_rate == 5e-6
    with pytest.raises(GadError, match="no student model"):
        SeqKDConfig(train_file="t.jsonl", output_dir=str(tmp_path / "o"))
    with pytest.raises(GadError, match="no training data"):
        WarmupConfig(student="s", output_dir=str(tmp_path / "o"))


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("stage", "key", "bad", "message"),
    [
        ("gad", "num_generations", 1, "num_generations must be at least 2"),
        ("warmup", "num_generations", "1", "num_generations must be at least 2"),
        ("gad", "discriminator_loss", "hinge", "unknown discriminator_loss 'hinge'"),
        ("gad", "student_objective", "rl", "unknown student_objective 'rl'"),
        ("warmup", "student_objective", "distill", "unknown student_objective 'distill'"),
        ("gad", "discriminator_learning_rate", 0, "discriminator_learning_rate must be positive"),
        ("gad", "discriminator_batch_size", -1, "discriminator_batch_size must be positive"),
        ("warmup", "d_only_steps", -1, "d_only_steps must be >= 0"),
        ("seqkd", "max_prompt_length", 0, "max_prompt_length must be positive"),
        ("seqkd", "max_completion_length", 0, "max_completion_length must be positive"),
        ("seqkd", "student", "", "no student model"),
        ("warmup", "train_file", "", "no training data"),
    ],
)
def test_config_validation_errors(base, stage, key, bad, message):
    (Path(base["run_dir"]) / "warmup").mkdir(parents=True)
    recipe = {**base, stage: {key: bad}}
    with pytest.raises(GadError, match=message):
        resolve_stage(recipe, stage)


def test_valid_choices_are_accepted(base):
    recipe = {**base, "gad": {"discriminator_loss": "cross_entropy", "student_objective": "teacher_sft"}}
    (Path(base["run_dir"]) / "warmup").mkdir(parents=True)
    config = resolve_stage(recipe, "gad")
    assert (config.discriminator_loss, config.student_objective) == ("cross_entropy", "teacher_sft")


# ------------------------------------------------------------------------------------------------ relative paths


def test_relative_paths_resolve_against_the_recipe_folder_first(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text('{"prompt": "p", "teacher_response": "r"}\n')
    recipe_file = folder / "mine.yaml"
    recipe_file.write_text("student: builtin:tiny-llama\ntrain_file: data/train.jsonl\nrun_dir: runs/x\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = resolve_stage(load_recipe(recipe_file), "seqkd", source=str(recipe_file))
    assert Path(config.train_file) == folder / "data" / "train.jsonl"  # found beside the recipe
    assert config.output_dir == str(Path("runs/x/seqkd"))  # not there: relative to the working directory
    assert config.recipe_paths == {"train_file": "recipe folder", "run_dir": "working directory"}
    assert config.student == "builtin:tiny-llama"
    # the command line is relative to the working directory, whatever the recipe's folder holds
    config = resolve_stage(
        load_recipe(recipe_file), "seqkd", {"train_file": "data/train.jsonl"}, source=str(recipe_file)
    )
    assert config.train_file == "data/train.jsonl"


def test_shipped_recipes_run_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    for name in ("tiny-cpu.yaml", "laptop.yaml"):
        config = resolve_stage(load_recipe(recipes / name), "seqkd", {"run_dir": "r"}, source=str(recipes / name))
        assert Path(config.train_file).is_file(), name


def test_report_to_none_is_the_word_not_a_missing_value(base):
    assert resolve_stage({**base, "report_to": "none"}, "seqkd").report_to == []  # TrainingArguments: no integrations
    assert resolve_stage(base, "seqkd", {"report_to": "none"}).report_to == []
    assert resolve_stage(base, "warmup", {"lora_r": "none"}).lora_r is None  # elsewhere "none" is still None
