"""gad plan and the paper recipes: exact parameter counts and per-GPU memory (checked by hand on a tiny Qwen2 shape),
the issue's 7B arithmetic (fits with a sharded discriminator, not with a replicated one), every paper recipe resolving
with the paper's batch, the dry run's data/batch/schedule checks, and the GPU check's exit on a machine without CUDA."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from gad.cli import main
from gad.errors import GadError
from gad.plan import (
    GB,
    GIB,
    PAPER_MODELS,
    Layout,
    batch_plan,
    check_data,
    count_model,
    estimate_memory,
    layout_from_accelerate,
    load_model_config,
    parse_memory,
)
from gad.plan_cli import model_sizes, resolve_for_plan
from gad.training.recipe import load_recipe, resolve_stage

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "recipes" / "paper"
RECIPES = sorted(p for p in PAPER.glob("*.yaml") if not p.name.startswith("fsdp2-"))
RECIPE_7B = PAPER / "qwen2.5-7b.yaml"
FSDP8 = PAPER / "fsdp2-8gpu.yaml"

# A Qwen2-shaped model small enough to count by hand: head size 64 / 4 = 16, so k/v are 2 x 16 = 32 wide.
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=4096)  # fmt: skip
# Per layer: q 64*64+64 = 4,160 (Qwen2's q/k/v have biases), k and v 64*32+32 = 2,080 each, o 64*64 = 4,096,
# MLP 3*64*160 = 30,720, two norms 2*64 = 128: 43,264. Embeddings 512*64 = 32,768, LM head 32,768, final norm 64.
TINY_LAYER = 4160 + 2 * 2080 + 4096 + 3 * 64 * 160 + 2 * 64
TINY_PARAMS = 2 * 32768 + 64 + 2 * TINY_LAYER  # 152,128
TINY_DISCRIMINATOR = TINY_PARAMS - 32768 + 64  # no LM head, a 64 -> 1 score head: 119,424


def write_model(folder: Path, dtype: str = "bfloat16", **shape) -> Path:
    """A model folder with only a config.json (all that gad plan reads)."""
    from transformers import AutoConfig

    values = dict(shape or TINY)
    config = AutoConfig.for_model(values.pop("model_type", "qwen2"), **values)
    config.dtype = dtype
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    return folder


def write_parquet(path: Path, rows: int = 1000, response_column: str = "teacher_response") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [
        {"content": [{"role": "user", "content": f"question {i}"}], response_column: f"answer {i}", "id": str(i)}
        for i in range(rows)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_model(tmp_path / "tiny-qwen2")


def tiny_plan(tiny: Path, tmp_path: Path, layout: Layout, **extra):
    recipe = {
        "student": str(tiny), "train_file": str(tmp_path / "train.jsonl"), "run_dir": str(tmp_path / "run"),
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "num_generations": 4,
        "max_prompt_length": 16, "max_completion_length": 16, "gad": {"student": str(tiny)}, **extra,
    }  # fmt: skip
    config = resolve_for_plan(recipe, "gad", {}, "", layout.gpus)
    student, disc = model_sizes("gad", config, recipe, {}, "")
    batch = batch_plan("gad", config, layout.gpus)
    return estimate_memory("gad", config, student, disc, layout, batch)


# ------------------------------------------------------------------------------------------------ counts and memory


def test_tiny_qwen2_parameters_are_counted_exactly(tiny):
    config, source = load_model_config(str(tiny))
    assert source == str(tiny / "config.json")
    student = count_model(config, source)
    disc = count_model(config, source, classifier=True)
    assert (student.params, disc.params) == (TINY_PARAMS, TINY_DISCRIMINATOR) == (152_128, 119_424)
    assert student.layer_params == TINY_LAYER == 43_264
    assert student.root_params == 2 * 32768 + 64
    assert student.kv_size == 32 and student.dtype_bytes == 2
    top = count_model(config, source, classifier=True, trainable_layers=1)
    assert top.trainable == TINY_DISCRIMINATOR - 32768 - TINY_LAYER  # embeddings and the lower layer frozen


def test_tiny_memory_matches_hand_arithmetic(tiny, tmp_path):
    """2 GPUs, FSDP, sharded discriminator, checkpointing; 4 completions of 16 + 16 tokens per micro-step."""
    plan = tiny_plan(tiny, tmp_path, Layout(2, GB, "fsdp", True, True))
    states = {item.label.split(" (")[0]: item.bytes for item in plan.states}
    assert states["student weights"] == 152_128 * 4 // 2
    assert states["student AdamW moments"] == 152_128 * 8 // 2
    assert states["reference model"] == 152_128 * 2 // 2  # bf16 checkpoint
    assert (
        states["discriminator weights"] + states["discriminator gradients"] + states["discriminator AdamW moments"]
        == 119_424 * 16 // 2
    )
    assert plan.states_bytes == 1_217_024 + 152_128 + 955_392 == 2_324_544
    # HF generate under FSDP: the gathered fp32 student, the KV cache of the process's 4 x 2 x 2 / 2 = 8 sequences
    # (32 tokens, 2 layers x 32 wide x key+value x 2 bytes = 256 bytes a token), the next-token logits.
    assert plan.phase_bytes("rollouts") == 152_128 * 4 + 8 * 32 * 256 + 8 * 512 * 4 == 690_432
    # B*S*h*L*2 + B*S*(8h+4kv+4i)*2 with 8*64 + 4*32 + 4*160 = 1,280; logits B*T*V*6; gathered 2*(root + 2*layer).
    assert plan.phase_bytes("student update") == (4 * 32 * 64 * 2 * 2 + 4 * 32 * 1280 * 2) + 4 * 16 * 512 * 6 + 2 * (
        65_600 + 2 * 43_264
    )
    # The discriminator's chunks: discriminator_batch_size (16) sequences, as the student by default: bf16 autocast
    # (its fp32 layer inputs: B*S*h*L*4) and checkpointed, plus the recomputed layer's bf16 weight copies (2*layer);
    # sharded without FSDP mixed precision, it gathers fp32 weights (its root: the embeddings and the head).
    update = plan.phases["discriminator update"]
    assert [item.label for item in update] == [
        "activations (bf16 autocast, checkpointed)",
        "bf16 weight copies kept for backward (autocast)",
        "discriminator all-gathered parameters (fp32)",
    ]
    assert plan.phase_bytes("discriminator update") == (16 * 32 * 64 * 2 * 4 + 16 * 32 * 1280 * 2) + 2 * 43_264 + 4 * (
        32_896 + 2 * 43_264
    )
    assert plan.peak_phase == "discriminator update"
    assert plan.peak_bytes == 2_324_544 + 2_137_088
    assert plan.fits and not plan.notes  # the plan is the trainer's: no caveat


def test_tiny_replicated_fp32_discriminator_without_checkpointing(tiny, tmp_path):
    fp32 = {"discriminator_bf16": False, "discriminator_activation_checkpointing": False}
    plan = tiny_plan(tiny, tmp_path, Layout(2, GB, "fsdp", False, True), **fp32)
    assert plan.states_bytes == 1_217_024 + 152_128 + 119_424 * 16
    # fp32 activations, no checkpointing, no gathering: B*S*L*(8h+4kv+4i)*4.
    assert [item.label for item in plan.phases["discriminator update"]] == ["activations (fp32, not checkpointed)"]
    assert plan.phase_bytes("discriminator update") == 16 * 32 * 2 * 1280 * 4
    assert plan.peak_bytes == 3_279_936 + 5_242_880
    assert not plan.notes


def test_discriminator_update_follows_the_student_unless_its_options_say_otherwise(tiny, tmp_path):
    def update(layout: Layout, **options) -> tuple[list[str], int]:
        plan = tiny_plan(tiny, tmp_path, layout, **options)
        return [item.label for item in plan.phases["discriminator update"]], plan.phase_bytes("discriminator update")

    checkpointed, plain = Layout(2, GB, "fsdp", False, True), Layout(2, GB, "fsdp", False, False)
    # A checkpointed (bf16) student: bf16 autocast and checkpointed, with the recomputed layer's weight copies.
    assert update(checkpointed) == (
        ["activations (bf16 autocast, checkpointed)", "bf16 weight copies kept for backward (autocast)"],
        16 * 32 * 64 * 2 * 4 + 16 * 32 * 1280 * 2 + 2 * 43_264,
    )
    # Not checkpointed: every layer's activations and weight copies, both layers trained.
    assert update(plain) == (
        ["activations (bf16 autocast, not checkpointed)", "bf16 weight copies kept for backward (autocast)"],
        16 * 32 * 2 * 1280 * 2 + 2 * 43_264 * 2,
    )
    assert update(plain, discriminator_trainable_layers=1)[1] == 16 * 32 * 2 * 1280 * 2 + 2 * 43_264  # the top one
    # The fused update holds the graph of the process's 8 samples, in chunks of 2: four sets of weight copies.
    fused = {"discriminator_fused_update": True, "discriminator_batch_size": 2}
    assert update(plain, **fused)[1] == 8 * 32 * 2 * 1280 * 2 + 2 * 43_264 * 2 * 4
    assert update(plain, discriminator_activation_checkpointing=True) == update(checkpointed)
    assert update(checkpointed, discriminator_activation_checkpointing=False) == update(plain)
    assert update(checkpointed, discriminator_bf16=False) == (
        ["activations (fp32, checkpointed)"],
        16 * 32 * 64 * 2 * 4 + 16 * 32 * 1280 * 4,
    )


def test_ddp_keeps_the_checkpoint_dtype_and_shards_nothing(tiny, tmp_path):
    plan = tiny_plan(tiny, tmp_path, Layout(2, GB, "ddp", False, False), beta=0.0)
    labels = [item.label for item in plan.states]
    assert not any(label.startswith("reference") for label in labels)  # beta = 0: TRL builds no reference
    student = sum(item.bytes for item in plan.states if item.label.startswith("student"))
    assert student == 152_128 * (2 + 2 + 4)  # bf16 weights, gradients and AdamW moments, not divided
    assert "rollouts" in plan.phases and plan.phase_bytes("rollouts") == 8 * 32 * 256 + 8 * 512 * 4  # nothing gathered
    with pytest.raises(GadError, match="needs --sharding fsdp or zero3"):
        Layout(2, GB, "ddp", True)


def test_activation_formula_is_within_ten_percent_of_autograds_saved_tensors():
    """The per-token, per-layer count 8h + 4kv + 4i against what autograd really keeps in a bf16 Qwen2 forward."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(TINY, hidden_size=128, intermediate_size=512, num_hidden_layers=3, vocab_size=256)
    config = AutoConfig.for_model("qwen2", **values)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    size = count_model(config, "test")
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch, tokens = 2, 64
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.model(input_ids=torch.randint(0, 256, (batch, tokens)))
    formula = batch * tokens * size.num_layers * size.values_per_token_layer * 2
    assert 0.9 <= sum(saved.values()) / formula <= 1.1


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_built_in_shapes_count_like_their_config_json(name, tmp_path):
    folder = write_model(tmp_path / name, **PAPER_MODELS[name])
    from_folder = count_model(*load_model_config(str(folder)))
    from_table = count_model(*load_model_config(str(tmp_path / "elsewhere" / name)))
    assert from_folder.params == from_table.params
    assert "built-in table" in from_table.source


# ------------------------------------------------------------------------------------------------ the issue's 7B case


def test_7b_on_8_gpus_fits_with_a_sharded_discriminator_and_not_a_replicated_one(capsys):
    assert main(["plan", str(RECIPE_7B), "--gpus", "8", "--gpu-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    assert "stage gad on 8 GPUs x 80.0 GB, fsdp, discriminator sharded" in out
    assert re.search(r"^peak per GPU = states 31\.28 .*: fits", out, re.M)
    assert re.search(r"^discriminator replicated instead: states 130\.27 GB, .*: does NOT fit", out, re.M)
    assert main(["plan", str(RECIPE_7B), "--gpus", "8", "--gpu-memory", "80GB", "--discriminator-replicated"]) == 1
    assert re.search(r"^peak per GPU = states 130\.27 .*: does NOT fit", capsys.readouterr().out, re.M)


def test_7b_states_follow_the_issues_arithmetic():
    recipe = load_recipe(RECIPE_7B)
    config = resolve_for_plan(recipe, "gad", {}, str(RECIPE_7B), 8)
    student, disc = model_sizes("gad", config, recipe, {}, str(RECIPE_7B))
    assert (student.params, disc.params) == (7_615_616_512, 7_070_622_720)
    batch = batch_plan("gad", config, 8)
    sharded = estimate_memory("gad", config, student, disc, Layout(8, parse_memory("80GB")), batch)
    part = {"student": 0, "reference": 0, "discriminator": 0}
    for item in sharded.states:
        part[item.label.split()[0]] += item.bytes
    assert round(part["student"] / GB, 1) == 15.2  # 7.62B x 16 bytes / 8
    assert round(part["reference"] / GB, 1) == 1.9  # 7.62B x 2 bytes / 8
    assert round(part["discriminator"] / GB, 1) == 14.1  # 7.07B x 16 bytes / 8
    assert round(sharded.states_bytes / GB) == 31 and sharded.fits
    replicated = estimate_memory("gad", config, student, disc, Layout(8, 80 * GB, "fsdp", False), batch)
    assert round(disc.params * 16 / GB) == 113 and round(replicated.states_bytes / GB) == 130
    assert not replicated.fits


def test_7b_discriminator_update_follows_its_options_and_fits_checkpointed(capsys):
    """The paper's launch (FSDP2, fsdp_activation_checkpointing): the discriminator follows the student, bf16 and
    checkpointed, as GADTrainer runs it; without checkpointing its activations alone pass the GPU."""
    import json

    def plan(*overrides: str) -> tuple[int, dict]:
        command = ["plan", str(RECIPE_7B), "--accelerate-config", str(FSDP8), "--gpu-memory", "80GB", "--json"]
        status = main([*command, *overrides])
        memory = json.loads(capsys.readouterr().out)["memory"]
        return status, {item["label"]: item["bytes"] for item in memory["phases"]["discriminator update"]}

    status, default = plan()
    assert status == 0 and round(default["activations (bf16 autocast, checkpointed)"] / GB, 2) == 8.81
    assert round(default["discriminator all-gathered parameters (fp32)"] / GB, 2) == 4.04
    assert main(["plan", str(RECIPE_7B), "--accelerate-config", str(FSDP8), "--gpu-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^peak per GPU = states 31\.28 .*: fits", out, re.M) and "note:" not in out
    status, plain = plan("discriminator_activation_checkpointing=false")
    activations = plain["activations (bf16 autocast, not checkpointed)"]  # 4*3584*28*106,496*2
    assert status == 1 and activations == 4 * 3584 * 28 * 106_496 * 2 and activations > 80 * GB
    status, fp32 = plan("discriminator_bf16=false")
    assert status == 0 and list(fp32) == [
        "activations (fp32, checkpointed)",
        "discriminator all-gathered parameters (fp32)",
    ]
    assert fp32["activations (fp32, checkpointed)"] > default["activations (bf16 autocast, checkpointed)"]


def test_a_vllm_budget_below_the_weights_is_flagged(capsys):
    main(["plan", str(RECIPE_7B), "--gpus", "8", "vllm_gpu_memory_utilization=0.1"])
    assert "vLLM will refuse to start" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ paper recipes


def launch_config(recipe: Path) -> Path:
    """The accelerate config the recipe's own launch command names (so the header is tested too)."""
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    commands = [line for line in header if "accelerate launch --config_file" in line]
    assert len(commands) == 2, f"{recipe.name}: expected the seqkd and the warmup,gad launch commands"
    assert any("--stage seqkd " in c for c in commands) and any("--stage warmup,gad " in c for c in commands)
    files = {re.search(r"--config_file (\S+)", c).group(1) for c in commands}
    assert all(f"--config recipes/paper/{recipe.name}" in c for c in commands)
    assert len(files) == 1
    return REPO / files.pop()


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_stage_of_every_paper_recipe_resolves_with_the_papers_batch(recipe, tmp_path):
    accelerate = launch_config(recipe)
    gpus = yaml.safe_load(accelerate.read_text())["num_processes"]
    data = load_recipe(recipe)
    student = write_model(tmp_path / "student")
    write_model(tmp_path / "run" / "warmup" / "student")  # what the warmup leaves for gad
    train = write_parquet(tmp_path / "train.parquet", rows=10)
    overrides = {"seqkd.student": str(student), "warmup.student": str(student), "train_file": str(train),
                 "run_dir": str(tmp_path / "run")}  # fmt: skip
    configs = {
        stage: resolve_for_plan(data, stage, overrides, str(recipe), gpus) for stage in ("seqkd", "warmup", "gad")
    }
    assert configs["seqkd"].student == configs["warmup"].student == str(student)
    assert configs["gad"].init_from == str(tmp_path / "run" / "warmup")
    assert configs["gad"].student == str(tmp_path / "run" / "warmup" / "student")
    for stage, config in configs.items():
        batch = batch_plan(stage, config, gpus)
        assert not batch.errors and not batch.warnings, (stage, batch.errors, batch.warnings)
        assert batch.prompts_per_step == 256, stage  # the paper's 256 prompts per step
        assert config.max_prompt_length == 2048 and config.max_completion_length == 1536
        assert config.max_grad_norm == 0.2 and config.save_steps == 50
        assert str(getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type)) == "constant"
    assert configs["seqkd"].learning_rate == 5e-6 and configs["seqkd"].num_train_epochs == 3
    assert configs["warmup"].num_train_epochs == 1 and configs["warmup"].d_only_steps == 10
    assert configs["gad"].num_train_epochs == 2 and configs["gad"].beta == 0.001
    for stage in ("warmup", "gad"):
        config = configs[stage]
        assert config.learning_rate == config.discriminator_learning_rate == 1e-6
        assert (config.num_generations, config.temperature) == (8, 0.8)
        assert config.generation_batch_size == 2048  # what TRL derives on `gpus` processes
        assert config.use_vllm and config.vllm_mode == "colocate"
    # and the plain resolver (one process here) accepts every stage too, as `gad train --print-config` would
    for stage in ("seqkd", "warmup", "gad"):
        resolve_stage(data, stage, overrides, source=str(recipe), pending={"*"})


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_paper_recipe_fits_its_gpus_with_a_sharded_discriminator(recipe, capsys):
    accelerate = launch_config(recipe)
    for stage in ("seqkd", "warmup", "gad"):
        command = ["plan", str(recipe), "--accelerate-config", str(accelerate), "--stage", stage]
        assert main(command) == 0, capsys.readouterr().out
    assert f"on {yaml.safe_load(accelerate.read_text())['num_processes']} GPUs" in capsys.readouterr().out


@pytest.mark.parametrize("gpus", [8, 16])
def test_accelerate_configs_are_fsdp2_full_shard_bf16_checkpointed(gpus):
    path = PAPER / f"fsdp2-{gpus}gpu.yaml"
    data = yaml.safe_load(path.read_text())
    fsdp = data["fsdp_config"]
    assert data["distributed_type"] == "FSDP" and data["mixed_precision"] == "bf16"
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_activation_checkpointing"] is True
    assert (data["num_processes"], data["num_machines"]) == (gpus, gpus // 8)
    from accelerate.commands.config.config_args import ClusterConfig

    assert ClusterConfig.from_yaml_file(str(path)).num_processes == gpus  # accelerate itself accepts the file
    assert layout_from_accelerate(path) == {"gpus": gpus, "sharding": "fsdp", "activation_checkpointing": True}


# ------------------------------------------------------------------------------------------------ dry run


def dry_run(tmp_path, *extra: str, rows: int = 1000, response_column: str = "teacher_response"):
    student = write_model(tmp_path / "student")
    train = write_parquet(tmp_path / "train.parquet", rows=rows, response_column=response_column)
    command = ["plan", str(RECIPE_7B), "--accelerate-config", str(FSDP8), "--dry-run",
               f"seqkd.student={student}", f"warmup.student={student}", f"train_file={train}", *extra]  # fmt: skip
    return main(command)


def test_dry_run_checks_models_data_batch_and_schedule(tmp_path, capsys):
    assert dry_run(tmp_path) == 0
    out = capsys.readouterr().out
    assert "seqkd: batch 4 per GPU x 8 accumulation x 8 GPUs = 256 teacher answers per step: ok" in out
    assert "gad: batch 4 per GPU x 64 accumulation x 8 GPUs = 2,048 completions = 256 prompts x 8 samples" in out
    assert f"built on the meta device: student {TINY_PARAMS:,}, discriminator {TINY_DISCRIMINATOR:,}" in out
    assert "1,000 rows; prompt column content, response column teacher_response: ok" in out
    # 1,000 rows / 256 per step: seqkd ceil(3000/256) = 12, warmup ceil(1000/256) = 4, gad ceil(2000/256) = 8.
    assert "seqkd: 12 steps" in out and "warmup: 4 steps" in out and "gad: 8 steps" in out
    assert "steps 1-4 then 5-12" in out and "runs/paper/qwen2.5-7b/warmup" in out
    assert "dry run: every check passed" in out


def test_dry_run_finds_a_missing_response_column(tmp_path, capsys):
    assert dry_run(tmp_path, response_column="answer_text") == 1
    assert "no response column" in capsys.readouterr().out


def test_dry_run_warns_when_gad_would_not_start_from_the_warmup(tmp_path, capsys):
    assert dry_run(tmp_path, f"gad.student={write_model(tmp_path / 'other')}") == 1
    assert "gad does not start from the warmup's output" in capsys.readouterr().out


def test_dry_run_sizes_gad_as_the_warmup_it_starts_from(tmp_path, capsys):
    # plain student=/discriminator= seed the stages before gad, as in `gad train --stage seqkd,warmup,gad`
    bigger = write_model(tmp_path / "disc", **{**TINY, "num_hidden_layers": 3})
    assert dry_run(tmp_path, f"student={write_model(tmp_path / 'other')}", f"discriminator={bigger}") == 0
    out = capsys.readouterr().out
    expected = f"student {TINY_PARAMS:,}, discriminator {TINY_DISCRIMINATOR + TINY_LAYER:,}"
    assert f"warmup: config ok; built on the meta device: {expected}" in out
    assert f"gad: config ok; built on the meta device: {expected}" in out
    assert "gad does not start from the warmup's output" not in out


def test_dry_run_reports_a_batch_trl_would_refuse(tmp_path, capsys):
    assert dry_run(tmp_path, "num_generations=3") == 1
    assert "must be divisible by num_generations (3)" in capsys.readouterr().out


def test_batch_rules_follow_trl_on_n_processes():
    config = types.SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=8,
                                   use_vllm=True, vllm_mode="colocate", vllm_tensor_parallel_size=3)  # fmt: skip
    plan = batch_plan("gad", config, 8)
    assert (plan.generation_batch_size, plan.steps_per_generation, plan.prompts_per_step) == (64, 2, 8)
    assert any("tensor_parallel_size (3) must divide" in e for e in plan.errors)
    config.vllm_tensor_parallel_size = 1
    assert batch_plan("gad", config, 8).errors == []
    assert (
        "must be divisible by per_device_train_batch_size x GPUs"
        in batch_plan("gad", config, 8, {"generation_batch_size": 100}).errors[0]
    )
    assert batch_plan("gad", config, 1).warnings  # 4 completions per micro-step: half a group of 8


def test_data_check_reads_jsonl_heads_and_reports_bad_rows(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "hi", "response": "hello"}\n\n{"prompt": "a", "response": "b"}\n')
    check = check_data(str(good))
    assert (check.rows, check.prompt_column, check.response_column, check.errors) == (2, "prompt", "response", [])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 3, "response": "x"}\n')
    assert check_data(str(bad)).errors
    assert "not found" in check_data(str(tmp_path / "missing.parquet")).errors[0]


def test_gpu_memory_units():
    assert parse_memory("80GB") == 80 * GB and parse_memory("80GiB") == 80 * GIB and parse_memory("141") == 141 * GB
    with pytest.raises(GadError):
        parse_memory("eighty")


# ------------------------------------------------------------------------------------------------ the GPU check


def test_gpu_check_exits_at_once_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "gpu_check.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1 and "CUDA" in lines[0]
    assert not (tmp_path / "gpu_check.json").exists()
    assert time.monotonic() - started < 60
