"""Safeguards and diagnostics of GAD without a training run: their config fields, the reward's transform and oracle,
and the statistics the skip decision and d_acc_val are taken on. Runs of the trainer with them are in
test_gad_trainer.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gad.errors import GadError
from gad.training.config import GADConfig, WarmupConfig
from gad.training.discriminator import (
    Discriminator,
    DiscriminatorStats,
    DiscriminatorUpdater,
    bradley_terry_loss,
    evaluate_pairs,
)
from gad.training.gad_trainer import DiscriminatorReward

NEW_FIELDS = {
    "reward_transform": "raw",
    "reward_source": "discriminator",
    "style_regex": None,
    "teacher_sft_weight": 0.0,
    "discriminator_skip_accuracy": None,
    "discriminator_max_skips": 3,
    "discriminator_collapse_accuracy": None,
    "discriminator_saturation_accuracy": None,
    "safeguard_window": 5,
    "discriminator_val_every": None,
    "discriminator_val_size": 16,
    "discriminator_val_file": None,
    "discriminator_val_temperature": 0.0,
}


def _config(tmp_path, model_dir, train_file, cls=GADConfig, **overrides):
    return cls(output_dir=str(tmp_path / "out"), student=str(model_dir), train_file=str(train_file), **overrides)


def test_new_fields_are_documented_and_off_by_default(tmp_path, tiny_model_dir, tiny_train_file):
    fields = {f.name: f for f in dataclasses.fields(GADConfig)}
    for name, default in NEW_FIELDS.items():
        assert fields[name].default == default, name
        assert len(fields[name].metadata.get("help", "")) > 20, name
    for cls in (GADConfig, WarmupConfig):
        config = _config(tmp_path, tiny_model_dir, tiny_train_file, cls)
        assert all(getattr(config, name) == default for name, default in NEW_FIELDS.items())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reward_transform": "sigmoid"}, "unknown reward_transform 'sigmoid'"),
        ({"reward_source": "judge"}, "unknown reward_source 'judge'"),
        ({"reward_source": "style_regex"}, "reward_source=style_regex needs style_regex"),
        ({"style_regex": "(unclosed"}, "style_regex is not a valid regular expression"),
        ({"discriminator_skip_accuracy": 1.5}, r"discriminator_skip_accuracy must be in \[0, 1\]"),
        ({"discriminator_max_skips": 0}, "discriminator_max_skips must be at least 1"),
        ({"discriminator_collapse_accuracy": -0.1}, r"discriminator_collapse_accuracy must be in \[0, 1\]"),
        ({"discriminator_saturation_accuracy": 2.0}, r"discriminator_saturation_accuracy must be in \[0, 1\]"),
        (
            {"discriminator_collapse_accuracy": 0.5, "discriminator_saturation_accuracy": 0.5},
            "must be below the saturation one",
        ),
        ({"safeguard_window": 0}, "safeguard_window must be at least 1"),
        ({"discriminator_val_every": 0}, "discriminator_val_every must be at least 1"),
        ({"discriminator_val_every": 1, "discriminator_val_size": 0}, "discriminator_val_size must be at least 1"),
        ({"discriminator_val_file": "val.jsonl"}, "discriminator_val_every is not"),
        ({"discriminator_val_every": 1, "discriminator_val_file": "missing.jsonl"}, "discriminator_val_file not found"),
        ({"discriminator_val_temperature": -1.0}, "discriminator_val_temperature must be >= 0"),
        ({"teacher_sft_weight": -0.5}, "teacher_sft_weight must be >= 0"),
        ({"teacher_sft_weight": 1.0, "student_objective": "teacher_sft"}, "already learns from it alone"),
    ],
)
def test_bad_safeguard_values_are_one_line_errors(tmp_path, tiny_model_dir, tiny_train_file, overrides, message):
    with pytest.raises(GadError, match=message) as error:
        _config(tmp_path, tiny_model_dir, tiny_train_file, **overrides)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def discriminator(tiny_model_dir) -> Discriminator:
    return Discriminator.from_pretrained(tiny_model_dir, seed=0)


PROMPTS = [[{"role": "user", "content": f"What is a {n}?"}] for n in ("cat", "ship", "moon", "road")]
SAMPLES = ["Ahoy! The cat be big, matey.", "A ship is a thing.", "Arr, the moon!", "A road is long."]
TEACHERS = ["Ahoy! The cat be old, matey. Arr!", "Ahoy! The ship be cold, matey. Arr!"]


def _completions(texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


def test_logsigmoid_reward_is_the_bounded_transform_of_the_raw_score(discriminator):
    raw = DiscriminatorReward(discriminator, batch_size=4)
    bounded = DiscriminatorReward(discriminator, batch_size=4, transform="logsigmoid")
    raw_rewards = raw(PROMPTS, _completions(SAMPLES), teacher_response=TEACHERS * 2)
    bounded_rewards = bounded(PROMPTS, _completions(SAMPLES), teacher_response=TEACHERS * 2)
    expected = F.logsigmoid(torch.tensor(raw_rewards)).tolist()
    assert bounded_rewards == pytest.approx(expected, abs=1e-6)
    assert all(r < 0 for r in bounded_rewards)
    # The discriminator's update still sees the raw scores.
    assert bounded.last_batch["scores"].tolist() == pytest.approx(raw_rewards, abs=1e-6)


def test_logsigmoid_vs_teacher_reward_compares_each_sample_with_its_prompts_teacher_answer(discriminator):
    reward = DiscriminatorReward(discriminator, batch_size=4, transform="logsigmoid_vs_teacher")
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    teachers = [TEACHERS[0], TEACHERS[0], TEACHERS[1], TEACHERS[1]]
    samples = [TEACHERS[0], SAMPLES[0], SAMPLES[1], TEACHERS[1]]
    rewards = reward(prompts, _completions(samples), teacher_response=teachers)
    scores, teacher_scores = discriminator.score(prompts, samples), discriminator.score(prompts, teachers)
    assert rewards == pytest.approx(F.logsigmoid(scores - teacher_scores).tolist(), abs=1e-5)
    # A sample that is its prompt's teacher answer passes for it with probability 1/2, whatever the scores.
    assert rewards[0] == pytest.approx(-math.log(2), abs=1e-5) and rewards[3] == pytest.approx(-math.log(2), abs=1e-5)
    assert reward.last_batch["scores"].tolist() == pytest.approx(scores.tolist(), abs=1e-5)  # the update sees D


def test_style_regex_oracle_rewards_matches_and_still_scores_for_the_discriminator(discriminator):
    oracle = DiscriminatorReward(discriminator, batch_size=4, oracle=r"(?i)\b(ahoy|arr)\b")
    rewards = oracle(PROMPTS, _completions(SAMPLES), teacher_response=TEACHERS * 2)
    assert rewards == [1.0, 0.0, 1.0, 0.0]
    # TRL names the reward's metrics after it: rewards/style_regex/mean, not rewards/discriminator/mean.
    assert oracle.__name__ == "style_regex" and DiscriminatorReward(discriminator, 4).__name__ == "discriminator"
    expected = discriminator.score(PROMPTS, SAMPLES)
    assert torch.allclose(oracle.last_batch["scores"], expected, atol=1e-6)


def test_stats_from_scores_match_a_hand_computation():
    teacher = torch.tensor([1.0, -0.5])
    student = torch.tensor([0.2, 1.5, -1.0, 9.0])  # the last one is not fresh (a replayed sample, say)
    stats = DiscriminatorStats.from_scores(teacher, student, [0, 0, 1, 1], loss=0.3, num_fresh=3)
    assert stats.accuracy == pytest.approx(2 / 3)  # 1.0 > 0.2, 1.0 < 1.5, -0.5 > -1.0
    assert stats.teacher_score == pytest.approx(0.25)
    assert stats.student_score == pytest.approx(0.7 / 3)
    assert stats.loss == 0.3


def test_evaluate_pairs_reports_what_an_update_would_and_changes_nothing(tiny_model_dir):
    disc = Discriminator.from_pretrained(tiny_model_dir, seed=2)
    before = [p.detach().clone() for p in disc.parameters()]
    prompts, group = PROMPTS[:2], [0, 0, 1, 1]
    student_scores = disc.score([prompts[g] for g in group], SAMPLES)
    stats = evaluate_pairs(disc, prompts, TEACHERS, group, student_scores)
    assert all(torch.equal(a, b) for a, b in zip(before, disc.parameters(), strict=True))

    expected_loss = bradley_terry_loss(disc.score(prompts, TEACHERS), student_scores, torch.tensor(group)).item()
    assert stats.loss == pytest.approx(expected_loss, rel=1e-6)
    updated = DiscriminatorUpdater(disc, learning_rate=1e-3).step(prompts, TEACHERS, SAMPLES, group, student_scores)
    assert dataclasses.asdict(updated) == pytest.approx(dataclasses.asdict(stats), rel=1e-5)
