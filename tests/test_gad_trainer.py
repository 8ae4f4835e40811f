"""GADTrainer on the tiny model: the discriminator's update, the warmup's phases, the policy step, resume."""

from __future__ import annotations

import json

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
