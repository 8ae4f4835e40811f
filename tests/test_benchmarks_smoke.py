"""The benchmarks run end to end at the smallest sizes and write the JSON they promise (numbers are not checked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_STEP_SPEED = [
    "--hidden-size", "32", "--layers", "1", "--prompts", "2", "--generations", "2", "--completion-length", "3",
    "--steps", "1", "--warmup", "1", "--threads", "1",
]  # fmt: skip


def test_step_speed_runs(tmp_path):
    step_speed = _load("step_speed")
    out = tmp_path / "step_speed.json"
    work = str(tmp_path / "work")
    step_speed.main(
        [*TINY_STEP_SPEED, "--memory-steps", "0", "--fused", "--top-layers", "1", "--workdir", work, "--out", str(out)]
    )

    result = json.loads(out.read_text())
    for key in ("command", "environment", "batch", "timing", "ratio", "pair_ratios", "cpu_time_ratio", "memory",
                "goals", "table", "config_differences"):  # fmt: skip
        assert key in result, key
    assert result["config_differences"] == {}, "the GRPO baseline must share every GRPOConfig field with GAD"
    for runner in ("gad", "grpo", "gad_fused", "gad_top"):
        timing = result["timing"][runner]
        assert len(timing["step_s"]) == 1
        assert set(timing["split_median_s"]) == set(step_speed.PARTS)
        assert timing["completion_tokens_per_step"] == [2 * 2 * 3]  # fixed length: equal token counts in both runs
    assert result["timing"]["gad"]["split_median_s"]["discriminator_update"] > 0
    assert result["timing"]["gad_fused"]["split_median_s"]["discriminator_update"] > 0
    assert result["timing"]["gad_top"]["split_median_s"]["discriminator_update"] > 0
    assert {"speed_gad_fused", "speed_gad_top"} <= set(result["goals"])
    assert result["timing"]["grpo"]["split_median_s"]["discriminator_update"] == 0
    assert result["goals"]["speed"]["met"] in (True, False)
    assert "| median step (s) |" in result["table"]

    # The memory probe (normally run in a fresh subprocess per trainer), here in this process, one step.
    args = step_speed.parse_args([*TINY_STEP_SPEED, "--warmup", "0", "--memory-steps", "1", "--memory-probe", "gad",
                                  "--workdir", work])  # fmt: skip
    memory = step_speed.memory_probe(args)
    student, discriminator = memory["student_param_bytes"], memory["second_model_param_bytes"]
    assert memory["floor_bytes"] == 4 * student + 4 * discriminator + memory["reference_param_bytes"]
    assert memory["discriminator_trained_param_bytes"] == discriminator
    assert memory["reference_param_bytes"] == memory["student_param_bytes"] > 0
    assert memory["peak_bytes"] > 0

    # With only the top layer trained, the floor counts gradients and AdamW states for that layer only.
    args = step_speed.parse_args([*TINY_STEP_SPEED, "--warmup", "0", "--memory-steps", "1", "--memory-probe", "gad_top",
                                  "--top-layers", "1", "--workdir", work])  # fmt: skip
    memory = step_speed.memory_probe(args)
    trained = memory["discriminator_trained_param_bytes"]
    assert 0 < trained < memory["second_model_param_bytes"]
    assert memory["floor_bytes"] == (
        4 * memory["student_param_bytes"]
        + memory["second_model_param_bytes"]
        + 3 * trained
        + memory["reference_param_bytes"]
    )
