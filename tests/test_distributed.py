"""Several processes on the CPU (gloo, 2 processes): data-parallel training through the real `gad train`, resume,
the discriminator's update with uneven per-process samples, and the launch that silently runs one process.

Every launch has a short process-group timeout (45 s, set by the helper scripts) and a subprocess timeout, so a
collective that some process never joins fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gad.errors import GadError
from gad.runtime import check_launch

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
RECIPE = REPO / "recipes" / "tiny-cpu.yaml"
LAUNCH_TIMEOUT_S = 240
# 2 processes x (8 samples = 2 prompts x 4) per step
SHORT = ["warmup.max_steps=2", "warmup.d_only_steps=1", "gad.max_steps=4", "per_device_train_batch_size=8",
         "logging_steps=1", "save_steps=2"]  # fmt: skip


def _launch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 ARGS`` on the CPU (gloo), one thread each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=environment, timeout=LAUNCH_TIMEOUT_S
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def _train(run: Path, hashes: Path, *args: str) -> subprocess.CompletedProcess:
    hashes.mkdir(parents=True, exist_ok=True)
    return _launch(
        str(TESTS / "_distributed_train.py"), "train", "--config", str(RECIPE), f"run_dir={run}", *SHORT, *args,
        env={"GAD_TEST_HASHES": str(hashes)},
    )  # fmt: skip


def _hashes(folder: Path, name: str) -> dict[str, str]:
    return json.loads((folder / f"{name}.json").read_text())


def _steps(metrics: Path, key: str) -> dict[int, float]:
    rows = [row for row in map(json.loads, metrics.read_text().splitlines()) if key in row]
    steps = [row["step"] for row in rows]
    assert len(steps) == len(set(steps)), f"{metrics}: step lines written more than once: {steps}"
    return {row["step"]: row[key] for row in rows}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path, str]:
    """warmup (2 steps) then gad (4 steps) by 2 processes; every process's discriminator hashes; the launch's log."""
    root = tmp_path_factory.mktemp("ddp")
    run, hashes = root / "run", root / "hashes"
    result = _train(run, hashes, "--stage", "warmup,gad", f"warmup.student={tiny_model_dir}")
    return run, hashes, result.stdout + result.stderr


def test_data_parallel_training_keeps_the_discriminators_equal_and_writes_once(ddp_run):
    from _distributed_train import tensor_hashes
    from safetensors.torch import load_file

    run, hashes, log = ddp_run
    for stage, steps in (("warmup", 2), ("gad", 4)):
        rank0, rank1 = _hashes(hashes, f"{stage}-rank0"), _hashes(hashes, f"{stage}-rank1")
        assert rank0 == rank1, f"{stage}: the processes' discriminators differ"
        saved = tensor_hashes(load_file(run / stage / "discriminator" / "model.safetensors"))
        assert saved and all(rank0[name] == value for name, value in saved.items()), stage
        assert sorted(_steps(run / stage / "metrics.jsonl", "d_loss")) == list(range(1, steps + 1))
        assert (run / stage / "gad_finished.json").is_file()
        assert (run / stage / "student" / "model.safetensors").is_file()
        checkpoint = run / stage / "checkpoint-2"
        assert (checkpoint / "gad_complete.json").is_file()  # written once every process had saved its RNG state
        assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert log.count("warmup finished: student in") == 1, "the other process's log lines are not held back"


def test_data_parallel_resume_equals_an_uninterrupted_run(ddp_run, tmp_path):
    run, hashes, _ = ddp_run
    killed = tmp_path / "run"
    shutil.copytree(run, killed)
    # As if killed during step 4: checkpoint-2 is the newest complete one, metrics.jsonl already has step 3.
    for name in ("checkpoint-4", "student", "discriminator"):
        shutil.rmtree(killed / "gad" / name)
    (killed / "gad" / "gad_finished.json").unlink()
    (killed / "gad" / "checkpoint-4").mkdir()  # a save that never finished: no completion marker
    _train(killed, tmp_path / "hashes", "--stage", "warmup,gad", "--resume")

    uninterrupted = _steps(run / "gad" / "metrics.jsonl", "d_loss")
    continued = _steps(killed / "gad" / "metrics.jsonl", "d_loss")
    assert sorted(continued) == [1, 2, 3, 4]
    for step in (3, 4):
        assert round(continued[step], 5) == round(uninterrupted[step], 5), (step, continued, uninterrupted)
    assert not (tmp_path / "hashes" / "warmup-rank0.json").exists()  # the finished warmup was skipped
    assert _hashes(tmp_path / "hashes", "gad-rank0") == _hashes(tmp_path / "hashes", "gad-rank1")
    assert _hashes(tmp_path / "hashes", "gad-rank0") == _hashes(hashes, "gad-rank0")  # the same discriminator


@pytest.fixture(scope="module")
def updates(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """Every scenario of tests/_distributed_update.py run by 2 processes: the folder of their results."""
    folder = tmp_path_factory.mktemp("updates")
    _launch(str(TESTS / "_distributed_update.py"), str(tiny_model_dir), str(folder))
    return folder, tiny_model_dir


def test_uneven_processes_update_the_discriminator_as_one_process_on_all_pairs(updates):
    import _distributed_update as helper

    folder, tiny_model_dir = updates
    for name, (mode, shares) in helper.SCENARIOS.items():
        ranks = [torch.load(folder / f"{name}-rank{rank}.pt") for rank in (0, 1)]
        single = helper.run_update(tiny_model_dir, helper.union(shares), mode)
        for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
            assert torch.equal(a, b), f"{name}: the processes' discriminators differ after the step"
        for a, b in zip(ranks[0]["params"], single["params"], strict=True):  # SGD at lr 1: the update is the gradient
            assert torch.allclose(a, b, rtol=0, atol=1e-5), f"{name}: update {(a - b).abs().max().item():.2e} off"
        for key, value in single["stats"].items():
            assert ranks[0]["stats"][key] == pytest.approx(value, abs=1e-5), (name, key)
            assert ranks[1]["stats"][key] == ranks[0]["stats"][key], (name, key)


def test_a_sharded_discriminator_update_equals_the_replicated_one(updates):
    import _distributed_update as helper

    folder, tiny_model_dir = updates
    for name, (scenario, max_grad_norm) in helper.SHARDED.items():
        mode, shares = helper.SCENARIOS[scenario]
        ranks = [torch.load(folder / f"{name}-rank{rank}.pt") for rank in (0, 1)]
        single = helper.run_update(tiny_model_dir, helper.union(shares), mode, max_grad_norm=max_grad_norm)
        (held0, total), (held1, _) = ranks[0]["size"], ranks[1]["size"]
        # Half each: FSDP2 splits every tensor along its first dimension (the 1 x hidden score head: on one process).
        assert held0 + held1 == total and max(held0, held1) <= 0.51 * total, (held0, held1, total)
        for rank in ranks:
            for a, b in zip(rank["params"], single["params"], strict=True):
                assert torch.allclose(a, b, rtol=0, atol=1e-5), f"{name}: update {(a - b).abs().max().item():.2e} off"
            for key, value in single["stats"].items():
                assert rank["stats"][key] == pytest.approx(value, abs=1e-5), (name, key)


def test_a_launch_that_runs_one_process_is_refused_with_the_right_command(tmp_path):
    check_launch(2, {"WORLD_SIZE": "2"})
    check_launch(1, {})
    for env in ({"WORLD_SIZE": "2", "RANK": "0"}, {"ACCELERATE_DYNAMO_BACKEND": "NO", "MASTER_ADDR": "127.0.0.1"}):
        with pytest.raises(GadError, match="ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N"):
            check_launch(1, env)
    # The trap itself: accelerate's --cpu launcher starts one process for --num_processes 2.
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--cpu", "--num_processes", "2", "-m", "gad.cli", "train", "--stage",
               "warmup", "--config", str(RECIPE), f"run_dir={tmp_path / 'run'}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=LAUNCH_TIMEOUT_S)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
    assert "--num_processes N` starts one process only" in errors[0] and "--multi_gpu" in errors[0]
    assert not (tmp_path / "run" / "warmup").exists()
