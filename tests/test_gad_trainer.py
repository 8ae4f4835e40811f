"""GADTrainer on the tiny model: the discriminator's update, the warmup's phases, the policy step, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gad.data import load_training_rows
from gad.errors import GadError
from gad.models import load_tokenizer
from gad.prepare import teacher_turn_ids, truncate_rows
from gad.training.config import GADConfig, WarmupConfig
from gad.training.discriminator import DiscriminatorStats, DiscriminatorUpdater
from gad.training.stages import build_trainer, run_stage

TINY = dict(
    per_device_train_batch_size=16,
    num_generations=4,
    max_prompt_length=32,
    max_completion_length=16,
    logging_steps=1,
    save_steps=1000,
    seed=0,
)


def _trainer(stage, config_cls, tmp_path, model_dir, train_file, **overrides):
    config = config_cls(
        output_dir=str(tmp_path / stage), student=str(model_dir), train_file=str(train_file), **{**TINY, **overrides}
    )
    tokenizer = load_tokenizer(str(model_dir))
    rows, _ = load_training_rows(train_file)
    rows, lengths, _ = truncate_rows(rows, tokenizer, max_prompt_length=32, max_response_length=16)
    return build_trainer(stage, config, str(model_dir), tokenizer, rows, lengths)


def _params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_discriminator_only_steps_leave_the_student_untouched(tmp_path, tiny_model_dir, tiny_train_file):
    trainer = _trainer(
        "warmup", WarmupConfig, tmp_path, tiny_model_dir, tiny_train_file,
        d_only_steps=2, max_steps=3, learning_rate=1e-3, discriminator_learning_rate=1e-3,
    )  # fmt: skip
    student, disc = _params(trainer.model), _params(trainer.discriminator)
    trainer.args.max_steps = 2
    trainer.train()
    assert not _changed(student, trainer.model), "the student moved during discriminator-only steps"
    assert _changed(disc, trainer.discriminator), "the discriminator did not learn during its warmup steps"


def test_warmup_fits_the_teacher_and_trains_the_discriminator(tmp_path, tiny_model_dir, tiny_train_file):
    trainer = _trainer(
        "warmup", WarmupConfig, tmp_path, tiny_model_dir, tiny_train_file,
        d_only_steps=1, max_steps=8, learning_rate=3e-3, discriminator_learning_rate=1e-3,
    )  # fmt: skip
    trainer.train()
    logs = [row for row in trainer.state.log_history if "d_loss" in row]
    sft = [row["sft_loss"] for row in logs if "sft_loss" in row]
    assert len(logs) == 8 and len(sft) == 7  # no student loss in the discriminator-only step
    assert sft[-1] < sft[0] * 0.8
    for key in ("d_acc", "d_score_gap", "d_teacher_score", "d_student_score", "student_len", "teacher_len",
                "len_ratio", "rouge_l"):  # fmt: skip
        assert all(key in row for row in logs), key
    assert 0.0 <= logs[-1]["d_acc"] <= 1.0


def test_teacher_turn_ends_like_a_student_sample(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    _, ids = teacher_turn_ids(tokenizer, [{"role": "user", "content": "Hi"}], "Ahoy, matey.")
    assert ids[-1] == tokenizer.eos_token_id  # generation stops at EOS, so the teacher turn ends with it too
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Ahoy, matey."
    _, cut = teacher_turn_ids(tokenizer, [{"role": "user", "content": "Hi"}], "Ahoy, ma", finished=False)
    assert tokenizer.eos_token_id not in cut


def _mean_sample_score(model, tokenizer, disc, prompts, seed: int) -> float:
    torch.manual_seed(seed)
    texts = tokenizer.apply_chat_template(prompts, tokenize=False, add_generation_prompt=True)
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=1.0, max_new_tokens=16, num_return_sequences=16)
    samples = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    repeated = [p for p in prompts for _ in range(16)]
    return disc.score(repeated, samples).mean().item()


def test_one_gad_step_against_a_fixed_discriminator_raises_the_students_score(
    tmp_path, tiny_model_dir, tiny_train_file, monkeypatch
):
    trainer = _trainer(
        "gad", GADConfig, tmp_path, tiny_model_dir, tiny_train_file,
        max_steps=1, learning_rate=3e-4, beta=0.0, max_grad_norm=1.0, per_device_train_batch_size=64, num_generations=8,
        temperature=1.0,
    )  # fmt: skip
    monkeypatch.setattr(DiscriminatorUpdater, "step", lambda self, *a, **k: DiscriminatorStats(0.0, 0.5, 0.0, 0.0))
    disc_before = _params(trainer.discriminator)
    prompts = [[{"role": "user", "content": f"What is a {n}?"}] for n in ("cat", "ship", "moon", "road")]
    model, tokenizer = trainer.model, trainer.processing_class
    # The same sampling seeds before and after the step, so the comparison is not swamped by sampling noise.
    before = [_mean_sample_score(model, tokenizer, trainer.discriminator, prompts, seed) for seed in (7, 8, 9)]
    trainer.train()
    after = [_mean_sample_score(model.eval(), tokenizer, trainer.discriminator, prompts, seed) for seed in (7, 8, 9)]
    assert not _changed(disc_before, trainer.discriminator)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    assert sum(after) / 3 > sum(before) / 3 + 0.005, (before, after)


def test_checkpoints_hold_both_models_and_resume_gives_the_same_next_steps(tmp_path, tiny_model_dir, tiny_train_file):
    common = dict(
        student=str(tiny_model_dir), train_file=str(tiny_train_file), d_only_steps=1, save_steps=2,
        learning_rate=3e-3, discriminator_learning_rate=1e-3, **{k: v for k, v in TINY.items() if k != "save_steps"},
    )  # fmt: skip
    straight = run_stage("warmup", WarmupConfig(output_dir=str(tmp_path / "a"), max_steps=4, **common)).output_dir
    run_stage("warmup", WarmupConfig(output_dir=str(tmp_path / "b"), max_steps=2, **common))
    resumed = run_stage(
        "warmup", WarmupConfig(output_dir=str(tmp_path / "b"), max_steps=4, **common), resume=True
    ).output_dir

    checkpoint = tmp_path / "b" / "checkpoint-2"
    assert (checkpoint / "discriminator" / "config.json").exists()
    assert (checkpoint / "discriminator" / "discriminator_optimizer.pt").exists()
    assert (checkpoint / "gad_complete.json").exists()

    def metrics(folder):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return {row["step"]: row for row in rows if "d_loss" in row}

    a, b = metrics(straight), metrics(resumed)
    assert sorted(b) == [1, 2, 3, 4]  # the resumed run's file reads as one run, with no repeated step
    for step in (3, 4):
        for key in ("d_loss", "sft_loss", "d_score_gap", "student_len"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)


def test_gate_holds_the_student_while_the_discriminator_is_near_chance(tmp_path, tiny_model_dir, tiny_train_file):
    held = _trainer(
        "gad", GADConfig, tmp_path / "held", tiny_model_dir, tiny_train_file,
        max_steps=2, learning_rate=1e-3, student_gate_accuracy=1.0,
    )  # fmt: skip
    before = _params(held.model)
    held.train()
    assert not _changed(before, held.model)
    assert all(row["student_gate_open"] == 0.0 for row in held.state.log_history if "student_gate_open" in row)

    open_gate = _trainer(
        "gad", GADConfig, tmp_path / "open", tiny_model_dir, tiny_train_file,
        max_steps=2, learning_rate=1e-3, student_gate_accuracy=0.0,
    )  # fmt: skip
    before = _params(open_gate.model)
    open_gate.train()
    assert _changed(before, open_gate.model)  # the first step is discriminator-only (no accuracy yet), then it opens
    gates = [row["student_gate_open"] for row in open_gate.state.log_history if "student_gate_open" in row]
    assert gates == [1.0, 1.0]


def test_replay_and_extra_discriminator_updates(tmp_path, tiny_model_dir, tiny_train_file, monkeypatch):
    trainer = _trainer(
        "gad", GADConfig, tmp_path, tiny_model_dir, tiny_train_file,
        max_steps=2, discriminator_replay=8, discriminator_updates=2, replay_buffer_size=20,
    )  # fmt: skip
    calls = []
    original = DiscriminatorUpdater.step

    def counting_step(self, prompts, teachers, students, group, student_scores=None, num_fresh=None):
        calls.append((len(students), num_fresh, student_scores is not None))
        return original(self, prompts, teachers, students, group, student_scores, num_fresh)

    monkeypatch.setattr(DiscriminatorUpdater, "step", counting_step)
    trainer.train()
    # Step 1: 16 fresh samples, two updates (the second re-scores); step 2: 16 fresh + 8 replayed.
    assert calls == [(16, 16, True), (16, 16, False), (24, 16, True), (24, 16, False)]
    assert len(trainer.replay) == 20  # capped at replay_buffer_size


def test_length_warning_fires_when_the_student_outgrows_the_teacher(tmp_path, tiny_model_dir, tiny_train_file, caplog):
    trainer = _trainer("gad", GADConfig, tmp_path, tiny_model_dir, tiny_train_file, max_steps=1)
    trainer.args.length_warning_ratio = 1.5
    with caplog.at_level("WARNING", logger="gad.training.gad_trainer"):
        trainer._warn_on_length({"len_ratio": 2.0, "student_len": 40.0, "teacher_len": 20.0})
        trainer._warn_on_length({"len_ratio": 2.1, "student_len": 42.0, "teacher_len": 20.0})  # still high: no repeat
    assert len([r for r in caplog.records if "reward hacking" in r.message]) == 1


def test_lora_student_is_saved_as_merged_plain_weights(tmp_path, tiny_model_dir, tiny_train_file):
    from transformers import AutoModelForCausalLM

    common = dict(student=str(tiny_model_dir), train_file=str(tiny_train_file), lora_r=4, learning_rate=1e-2,
                  **{k: v for k, v in TINY.items()})  # fmt: skip
    result = run_stage(
        "warmup", WarmupConfig(output_dir=str(tmp_path / "warmup"), max_steps=2, d_only_steps=1, **common)
    )
    assert result.global_step == 2 and any("d_loss" in row for row in result.log_history)
    student = result.layout.student
    assert (student / "config.json").exists() and not (student / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(student)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [
        n for (n, a), b in zip(merged.named_parameters(), base.parameters(), strict=True) if not torch.equal(a, b)
    ]
    assert changed, "LoRA training left the merged weights unchanged"


def test_fused_discriminator_update_trains_like_the_chunked_one(tmp_path, tiny_model_dir, tiny_train_file):
    runs = {}
    for fused in (False, True):
        trainer = _trainer(
            "gad", GADConfig, tmp_path / str(fused), tiny_model_dir, tiny_train_file,
            max_steps=2, discriminator_learning_rate=1e-3, discriminator_fused_update=fused,
        )  # fmt: skip
        trainer.train()
        runs[fused] = [row for row in trainer.state.log_history if "d_loss" in row]
    for chunked, fused in zip(runs[False], runs[True], strict=True):
        assert fused["d_loss"] == pytest.approx(chunked["d_loss"], rel=1e-4)
        assert fused["reward"] == pytest.approx(chunked["reward"], rel=1e-4, abs=1e-5)


def test_discriminator_trainable_layers_freezes_the_lower_discriminator(tmp_path, tiny_model_dir, tiny_train_file):
    trainer = _trainer(
        "gad", GADConfig, tmp_path, tiny_model_dir, tiny_train_file,
        max_steps=1, discriminator_learning_rate=1e-3, discriminator_trainable_layers=1,
        discriminator_fused_update=True,
    )  # fmt: skip
    disc = trainer.discriminator
    before = {name: p.detach().clone() for name, p in disc.named_parameters()}
    trainer.train()
    changed = {name for name, p in disc.named_parameters() if not torch.equal(before[name], p)}
    top = f"layers.{len(disc.model.model.layers) - 1}."
    assert any(top in name for name in changed) and any("score" in name for name in changed)
    assert all(top in name or "score" in name or name.endswith("model.norm.weight") for name in changed), changed
    with pytest.raises(GadError, match="discriminator_trainable_layers"):
        GADConfig(
            output_dir=str(tmp_path / "x"),
            student=str(tiny_model_dir),
            train_file=str(tiny_train_file),
            discriminator_trainable_layers=0,
        )


def test_discriminator_bf16_and_checkpointing_run_every_discriminator_pass(tmp_path, tiny_model_dir, tiny_train_file):
    """Both options on, in a GAD step with d_acc_val: the reward's scoring, the update's chunks and the validation
    scoring compute in bf16; the weights and AdamW moments stay fp32; the HF model reports its checkpointing."""
    trainer = _trainer(
        "gad", GADConfig, tmp_path, tiny_model_dir, tiny_train_file,
        max_steps=1, discriminator_learning_rate=1e-3, discriminator_bf16=True,
        discriminator_activation_checkpointing=True, discriminator_val_every=1, discriminator_val_size=4,
    )  # fmt: skip
    disc = trainer.discriminator
    assert disc.bf16 and disc.model.is_activation_checkpointing and not trainer.args.bf16  # the student stays fp32
    seen: list[torch.dtype] = []
    disc.model.model.layers[0].mlp.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    before = _params(disc)
    trainer.train()
    logged = [row for row in trainer.state.log_history if "d_loss" in row]
    assert len(seen) > 2 and set(seen) == {torch.bfloat16}
    assert _changed(before, disc) and all(p.dtype == torch.float32 for p in disc.parameters())
    states = trainer.discriminator_updater.optimizer.state.values()
    assert states and all(v.dtype == torch.float32 for state in states for v in state.values() if v.dim())
    assert logged and all(math.isfinite(row["d_loss"]) and "d_acc_val" in row for row in logged)


def test_discriminator_precision_and_checkpointing_follow_the_student_unless_set(
    tmp_path, tiny_model_dir, tiny_train_file
):
    from types import SimpleNamespace

    from gad.training.config import discriminator_compute
    from gad.training.gad_trainer import _student_checkpointing

    def settings(**options):
        return SimpleNamespace(
            **{"discriminator_bf16": None, "discriminator_activation_checkpointing": None, **options}
        )

    assert discriminator_compute(settings(), student_bf16=True, student_checkpointing=False) == (True, False)
    assert discriminator_compute(settings(), student_bf16=False, student_checkpointing=True) == (False, True)
    set_both = settings(discriminator_bf16=False, discriminator_activation_checkpointing=True)
    assert discriminator_compute(set_both, student_bf16=True, student_checkpointing=False) == (False, True)
    # The student's checkpointing: the recipe's activation_checkpointing, or FSDP's (the paper's accelerate configs).
    fsdp = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=SimpleNamespace(activation_checkpointing=True)))
    plain = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=None))
    assert _student_checkpointing(SimpleNamespace(activation_checkpointing=False), fsdp)
    assert _student_checkpointing(SimpleNamespace(activation_checkpointing=True), plain)
    assert not _student_checkpointing(SimpleNamespace(activation_checkpointing=False), plain)

    # Through the trainer: a checkpointed fp32 student (bf16 is off on the CPU by default) gets a checkpointed fp32
    # discriminator; each option overrides its half.
    follows = _trainer("gad", GADConfig, tmp_path / "a", tiny_model_dir, tiny_train_file, activation_checkpointing=True)
    assert follows.discriminator.model.is_activation_checkpointing and not follows.discriminator.bf16
    own = _trainer(
        "gad", GADConfig, tmp_path / "b", tiny_model_dir, tiny_train_file,
        activation_checkpointing=True, discriminator_activation_checkpointing=False, discriminator_bf16=True,
    )  # fmt: skip
    assert not own.discriminator.model.is_activation_checkpointing and own.discriminator.bf16


def test_discriminator_precision_options_are_checked_in_one_line(
    tmp_path, tiny_model_dir, tiny_train_file, monkeypatch
):
    from gad.training.recipe import resolve_stage

    recipe = {"student": str(tiny_model_dir), "train_file": str(tiny_train_file), "run_dir": str(tmp_path)}
    for key in ("discriminator_bf16", "discriminator_activation_checkpointing"):
        with pytest.raises(GadError, match=rf"^key '{key}' must be true or false, got 'maybe'$"):
            resolve_stage(recipe, "gad", {key: "maybe"})
        assert getattr(resolve_stage(recipe, "warmup", {key: "none"}), key) is None  # None: follow the student
    # A GPU without bf16 (a V100): refused before anything is loaded.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla V100-SXM2-16GB")
    paths = {"output_dir": str(tmp_path), "student": str(tiny_model_dir), "train_file": str(tiny_train_file)}
    with pytest.raises(GadError) as error:
        WarmupConfig(**paths, discriminator_bf16=True)
    assert str(error.value) == (
        "discriminator_bf16 needs bf16 support, which this GPU (Tesla V100-SXM2-16GB) lacks: set it to false"
    )


# -- safeguards and diagnostics (all off by default) -----------------------------------------------------------------


def _logged(trainer, key: str) -> list:
    return [row[key] for row in trainer.state.log_history if key in row]


def test_skipped_updates_leave_the_discriminator_untouched_and_are_capped_and_flagged(
    tmp_path, tiny_model_dir, tiny_train_file, monkeypatch, caplog
):
    trainer = _trainer(
        "gad", GADConfig, tmp_path, tiny_model_dir, tiny_train_file,
        max_steps=6, discriminator_learning_rate=1e-3, discriminator_skip_accuracy=0.0, discriminator_max_skips=2,
        discriminator_collapse_accuracy=0.7, discriminator_saturation_accuracy=0.9, safeguard_window=2,
    )  # fmt: skip
    update = trainer._update_discriminator
    changed = []

    def watched(batch):
        before = _params(trainer.discriminator)
        result = update(batch)
        changed.append(_changed(before, trainer.discriminator))
        return result

    monkeypatch.setattr(trainer, "_update_discriminator", watched)
    with caplog.at_level("WARNING", logger="gad.training.gad_trainer"):
        trainer.train()

    accuracy, skipped = _logged(trainer, "d_acc"), _logged(trainer, "d_skipped")
    expected, run = [], 0
    for value in accuracy:  # skip while above the threshold, at most 2 in a row
        skip = value > 0.0 and run < 2
        run = run + 1 if skip else 0
        expected.append(float(skip))
    assert skipped == expected and 1.0 in skipped and 0.0 in skipped
    assert changed == [not s for s in skipped]  # a skipped step leaves every discriminator weight as it was

    # Flags from the fresh accuracy averaged over a full window of 2 steps; one warning each time a flag rises.
    means = [None] + [(a + b) / 2 for a, b in zip(accuracy, accuracy[1:], strict=False)]
    for flag, raised, word in (
        ("d_collapse", lambda m: m is not None and m < 0.7, "collapse"),
        ("d_saturated", lambda m: m is not None and m >= 0.9, "saturation"),
    ):
        flags = _logged(trainer, flag)
        assert flags == [float(raised(m)) for m in means], flag
        rises = sum(1 for before, now in zip([0.0, *flags], flags, strict=False) if now > before)
        warned = [r for r in caplog.records if f"discriminator_{word}_accuracy" in r.getMessage()]
        assert len(warned) == rises, flag


def test_flags_rise_warn_once_and_clear(tmp_path, tiny_model_dir, tiny_train_file, caplog):
    trainer = _trainer(
        "gad", GADConfig, tmp_path, tiny_model_dir, tiny_train_file,
        max_steps=1, discriminator_collapse_accuracy=0.2, discriminator_saturation_accuracy=0.99, safeguard_window=3,
    )  # fmt: skip
    flags = []
    with caplog.at_level("WARNING", logger="gad.training.gad_trainer"):
        for accuracy in (0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 1.0, 1.0, 1.0, 1.0):
            metrics = {"d_acc": accuracy}
            trainer._warn_on_discriminator(metrics)
            flags.append((metrics["d_collapse"], metrics["d_saturated"]))
        length = []
        for ratio in (1.0, 0.4, 0.45, 1.2, 2.5, 3.0):  # drift both ways outside [1/2, 2] (length_warning_ratio=2)
            metrics = {"len_ratio": ratio, "student_len": 10 * ratio, "teacher_len": 10.0}
            trainer._warn_on_length(metrics)
            length.append(metrics["length_drift"])
    # Collapse needs a full window (3 steps); it clears once the mean passes 0.2, saturation once it reaches 0.99.
    assert [c for c, _ in flags] == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert [s for _, s in flags] == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert length == [0, 1, 1, 0, 1, 1]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("discriminator_collapse_accuracy" in m for m in messages) == 1
    assert sum("discriminator_saturation_accuracy" in m for m in messages) == 1
    assert sum("length_warning_ratio" in m for m in messages) == 2  # too short, then (after clearing) too long


def test_bounded_rewards_bound_the_students_reward_and_leave_the_discriminator_alone(
    tmp_path, tiny_model_dir, tiny_train_file
):
    runs = {}
    for transform in ("raw", "logsigmoid", "logsigmoid_vs_teacher"):
        trainer = _trainer(
            "gad", GADConfig, tmp_path / transform, tiny_model_dir, tiny_train_file,
            max_steps=1, discriminator_learning_rate=1e-3, reward_transform=transform,
        )  # fmt: skip
        trainer.train()
        runs[transform] = next(row for row in trainer.state.log_history if "d_loss" in row)
    raw, bounded, relative = runs["raw"], runs["logsigmoid"], runs["logsigmoid_vs_teacher"]
    assert raw["reward"] == pytest.approx(raw["d_student_score"], abs=1e-5)  # the raw score is the reward
    for key in ("d_loss", "d_acc", "d_student_score", "d_teacher_score"):  # same samples, same discriminator update
        assert bounded[key] == pytest.approx(raw[key], rel=1e-5, abs=1e-6), key
        assert relative[key] == pytest.approx(raw[key], rel=1e-5, abs=1e-6), key
    assert relative["reward"] < 0 and relative["reward"] != pytest.approx(bounded["reward"], abs=1e-4)
    # mean(log sigmoid(D)) <= log sigmoid(mean D) (concavity), and log sigmoid < 0.
    assert bounded["reward"] < 0
    assert bounded["reward"] <= torch.nn.functional.logsigmoid(torch.tensor(raw["d_student_score"])).item() + 1e-6


def _teacher_nll(model, tokenizer, rows) -> float:
    """Mean per-token cross-entropy of the rows' teacher responses under ``model``."""
    losses = []
    with torch.no_grad():
        for row in rows:
            prompt_ids, teacher_ids = teacher_turn_ids(tokenizer, row.prompt, row.response)
            logits = model(input_ids=torch.tensor([prompt_ids + teacher_ids])).logits[0, len(prompt_ids) - 1 : -1]
            losses.append(torch.nn.functional.cross_entropy(logits.float(), torch.tensor(teacher_ids)).item())
    return sum(losses) / len(losses)


def test_teacher_sft_weight_pulls_the_student_towards_the_teachers_answers(tmp_path, tiny_model_dir, tiny_train_file):
    rows, _ = load_training_rows(tiny_train_file)
    runs = {}
    for weight in (0.0, 1.0):
        trainer = _trainer(
            "gad", GADConfig, tmp_path / str(weight), tiny_model_dir, tiny_train_file,
            max_steps=2, learning_rate=1e-3, beta=0.0, discriminator_learning_rate=1e-3, teacher_sft_weight=weight,
        )  # fmt: skip
        before = _teacher_nll(trainer.model, trainer.processing_class, rows)
        trainer.train()
        after = _teacher_nll(trainer.model.eval(), trainer.processing_class, rows)
        logs = [row for row in trainer.state.log_history if "d_loss" in row]
        runs[weight] = (before, after, logs)
    (before, plain, plain_logs), (_, mixed, mixed_logs) = runs[0.0], runs[1.0]
    # The same first samples and discriminator update: the term changes the student's loss, nothing before it.
    for key in ("d_loss", "d_acc", "reward"):
        assert mixed_logs[0][key] == pytest.approx(plain_logs[0][key], rel=1e-5, abs=1e-6), key
    assert "sft_loss" not in plain_logs[0] and all("sft_loss" in row for row in mixed_logs)
    assert mixed < before and mixed < plain - 0.05, (before, plain, mixed)


def _match_rate(model, tokenizer, pattern: str, prompts, seed: int) -> float:
    import re

    torch.manual_seed(seed)
    texts = tokenizer.apply_chat_template(prompts, tokenize=False, add_generation_prompt=True)
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=1.0, max_new_tokens=4, num_return_sequences=16)
    samples = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(re.search(pattern, s) is not None for s in samples) / len(samples)


def test_style_regex_oracle_is_the_reward_and_the_student_moves_towards_it(tmp_path, tiny_model_dir, tiny_train_file):
    pattern = "^ "  # a sample that starts with a space: about a third of the random student's, set by its first token
    trainer = _trainer(
        "gad", GADConfig, tmp_path, tiny_model_dir, tiny_train_file,
        max_steps=1, learning_rate=1e-3, beta=0.0, max_grad_norm=1.0, per_device_train_batch_size=64,
        num_generations=8, temperature=1.0, discriminator_learning_rate=1e-3, reward_source="style_regex",
        style_regex=pattern,
    )  # fmt: skip
    prompts = [[{"role": "user", "content": f"What is a {n}?"}] for n in ("cat", "ship", "moon", "road")]
    model, tokenizer = trainer.model, trainer.processing_class
    disc_before = _params(trainer.discriminator)
    before = [_match_rate(model, tokenizer, pattern, prompts, seed) for seed in (7, 8, 9)]
    trainer.train()
    after = [_match_rate(model.eval(), tokenizer, pattern, prompts, seed) for seed in (7, 8, 9)]
    row = next(row for row in trainer.state.log_history if "d_loss" in row)
    assert row["reward"] == pytest.approx(row["style_match"]) == pytest.approx(row["rewards/style_regex/mean"])
    assert "rewards/discriminator/mean" not in row
    assert _changed(disc_before, trainer.discriminator)  # the discriminator still trains (and logs d_loss, d_acc)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    assert sum(after) / 3 > sum(before) / 3 + 0.05, (before, after)


def test_d_acc_val_every_k_steps_on_prompts_held_out_of_training(
    tmp_path, tiny_model_dir, tiny_train_file, monkeypatch
):
    trainer = _trainer(
        "gad", GADConfig, tmp_path, tiny_model_dir, tiny_train_file,
        max_steps=4, learning_rate=1e-3, discriminator_learning_rate=1e-3, discriminator_val_every=2,
        discriminator_val_size=4,
    )  # fmt: skip
    rows, _ = load_training_rows(tiny_train_file)
    assert len(trainer.val_rows) == 4 and len(trainer.train_dataset) == len(rows) - 4
    held_out = {json.dumps(prompt) for prompt, _ in trainer.val_rows}
    assert not held_out & {json.dumps(prompt) for prompt in trainer.train_dataset["prompt"]}

    trained_on, samples = [], []
    original_step, original_sample = DiscriminatorUpdater.step, trainer._sample_validation

    def recording_step(self, prompts, *args, **kwargs):
        trained_on.extend(json.dumps(prompt) for prompt in prompts)
        return original_step(self, prompts, *args, **kwargs)

    def recording_sample(prompts):
        samples.append(original_sample(prompts))
        return samples[-1]

    monkeypatch.setattr(DiscriminatorUpdater, "step", recording_step)
    monkeypatch.setattr(trainer, "_sample_validation", recording_sample)
    trainer.train()
    logged = [(row["step"], row["d_acc_val"]) for row in trainer.state.log_history if "d_acc_val" in row]
    assert [step for step, _ in logged] == [2, 4]
    assert all(0.0 <= value <= 1.0 for _, value in logged)
    assert all("d_acc" in row for row in trainer.state.log_history if "d_acc_val" in row)  # logged next to it
    assert trained_on and not held_out & set(trained_on)  # the discriminator never trains on a validation prompt
    assert len(samples) == 2 and all(len(s) == 4 for s in samples)
    assert samples[0] != samples[1]  # fresh samples of the student as it is at that step, not cached ones


def test_d_acc_val_from_a_file_changes_no_training_step(tmp_path, tiny_model_dir, tiny_train_file):
    val_file = tmp_path / "val.jsonl"
    val_file.write_text(
        "".join(
            json.dumps({"prompt": f"What is a {n}?", "teacher_response": f"Ahoy! The {n} be grand, matey. Arr!"}) + "\n"
            for n in ("kite", "drum", "bell")
        )
    )
    runs = {}
    validation = dict(
        discriminator_val_every=1, discriminator_val_file=str(val_file), discriminator_val_temperature=1.0
    )
    for name, extra in (("off", {}), ("on", validation)):
        trainer = _trainer(
            "gad", GADConfig, tmp_path / name, tiny_model_dir, tiny_train_file,
            max_steps=2, learning_rate=1e-3, discriminator_learning_rate=1e-3, **extra,
        )  # fmt: skip
        trainer.train()
        runs[name] = [row for row in trainer.state.log_history if "d_loss" in row]
    assert [len(trainer.val_rows), len(trainer.train_dataset)] == [3, len(load_training_rows(tiny_train_file)[0])]
    assert all("d_acc_val" in row for row in runs["on"]) and not any("d_acc_val" in row for row in runs["off"])
    # Sampled validation draws from its own generator: every training step is the same with and without it.
    for off, on in zip(runs["off"], runs["on"], strict=True):
        for key in ("d_loss", "d_acc", "reward", "student_len", "rouge_l"):
            assert on[key] == pytest.approx(off[key], rel=1e-5, abs=1e-6), key


def test_gad_trains_an_encoder_discriminator_with_its_own_tokenizer(tmp_path, tiny_model_dir, tiny_train_file):
    from test_discriminator import tiny_bert

    bert = tiny_bert(tmp_path / "bert", max_positions=24)
    trainer = _trainer(
        "gad", GADConfig, tmp_path, tiny_model_dir, tiny_train_file,
        max_steps=2, discriminator=str(bert), discriminator_learning_rate=1e-3,
    )  # fmt: skip
    disc = trainer.discriminator
    assert disc.is_encoder and disc.max_length == 24  # [prompt; sample] in BERT tokens is longer: cut, not a crash
    before = _params(disc)
    trainer.train()
    assert _changed(before, disc)
    logs = [row for row in trainer.state.log_history if "d_loss" in row]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(row["d_loss"])) for row in logs)
