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
import yaml

from gad.errors import GadError
from gad.runtime import check_launch

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
RECIPE = REPO / "recipes" / "tiny-cpu.yaml"
DISCRIMINATOR_LR = yaml.safe_load(RECIPE.read_text())["warmup"]["discriminator_learning_rate"]  # gad's is the same
LAUNCH_TIMEOUT_S = 240
# 2 processes x (8 samples = 2 prompts x 4) per step; the teacher-relative reward adds the reward's scoring of the
# teacher answers to the passes that a sharded discriminator must make in step on every process
SHORT = ["warmup.max_steps=2", "warmup.d_only_steps=1", "gad.max_steps=4", "per_device_train_batch_size=8",
         "logging_steps=1", "save_steps=2", "gad.reward_transform=logsigmoid_vs_teacher"]  # fmt: skip


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
    result = _train(
        run, hashes, "--stage", "warmup,gad", f"warmup.student={tiny_model_dir}", "discriminator_sharding=replicate"
    )
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
    """Also with activation checkpointing (discriminator_activation_checkpointing under FSDP2)."""
    import _distributed_update as helper

    folder, tiny_model_dir = updates
    for name, (scenario, max_grad_norm, _checkpointing) in helper.SHARDED.items():
        mode, shares = helper.SCENARIOS[scenario]
        ranks = [torch.load(folder / f"{name}-rank{rank}.pt") for rank in (0, 1)]
        # One process without checkpointing: a checkpointed sharded update must take the same step.
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


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """``ddp_run`` again with the discriminator sharded over the 2 processes (FSDP2; the student stays replicated)."""
    root = tmp_path_factory.mktemp("sharded")
    run, hashes = root / "run", root / "hashes"
    _train(run, hashes, "--stage", "warmup,gad", f"warmup.student={tiny_model_dir}", "discriminator_sharding=fsdp")
    return run, hashes


def _discriminator(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder).state_dict()  # plain transformers


def test_a_sharded_discriminator_trains_as_the_replicated_one_with_half_the_parameters(sharded_run, ddp_run):
    run, hashes = sharded_run
    replicated_run = ddp_run[0]
    for stage in ("warmup", "gad"):
        sizes = [json.loads((hashes / f"{stage}-rank{rank}-size.json").read_text()) for rank in (0, 1)]
        total = sizes[0]["total"]
        assert sizes[0]["held"] + sizes[1]["held"] == total, sizes
        assert max(size["held"] for size in sizes) <= 0.51 * total, sizes  # about half each, during training
        assert _hashes(hashes, f"{stage}-rank0") == _hashes(hashes, f"{stage}-rank1")  # gathered: the same whole
        sharded, replicated = (
            _discriminator(run / stage / "discriminator"),
            _discriminator(replicated_run / stage / "discriminator"),
        )
        assert sharded.keys() == replicated.keys()
        # Sharded, the gradients are summed in another order (reduce-scatter, not all-reduce): rounding-level
        # differences, which AdamW's first steps (about lr * sign(gradient)) turn into a fraction of a step for
        # gradients near zero, growing with the steps and depending on the CPU (on one Intel Xeon: after gad's 6 steps,
        # 0.05 % of the values differ by over 1e-6, the most by 0.07 lr). A wrong gradient moves most values by a step.
        gaps = torch.cat([(tensor - replicated[name]).abs().flatten() for name, tensor in sharded.items()])
        assert (gaps > 1e-6).float().mean().item() <= 1e-2, f"{stage}: {(gaps > 1e-6).sum()} values differ"
        assert gaps.max().item() <= 0.5 * DISCRIMINATOR_LR, f"{stage}: a value differs by {gaps.max():.2e}"
        checkpoint = run / stage / "checkpoint-2" / "discriminator"
        assert set(_discriminator(checkpoint)) == set(sharded)  # the checkpoint's is a plain folder too
        state = torch.load(checkpoint / "discriminator_optimizer.pt", weights_only=True)
        assert len(state["full_optimizer"]["state"]) == len(sharded)  # the whole optimizer state, every parameter


def test_a_sharded_discriminator_resumes_like_an_uninterrupted_run(sharded_run, tmp_path):
    run, hashes = sharded_run
    killed = tmp_path / "run"
    shutil.copytree(run, killed)
    for name in ("checkpoint-4", "student", "discriminator"):
        shutil.rmtree(killed / "gad" / name)
    (killed / "gad" / "gad_finished.json").unlink()
    _train(killed, tmp_path / "hashes", "--stage", "warmup,gad", "--resume", "discriminator_sharding=fsdp")
    uninterrupted = _steps(run / "gad" / "metrics.jsonl", "d_loss")
    continued = _steps(killed / "gad" / "metrics.jsonl", "d_loss")
    for step in (3, 4):
        assert round(continued[step], 5) == round(uninterrupted[step], 5), (step, continued, uninterrupted)
    resumed, whole = _discriminator(killed / "gad" / "discriminator"), _discriminator(run / "gad" / "discriminator")
    for name, tensor in resumed.items():
        assert torch.allclose(tensor, whole[name], rtol=0, atol=1e-6), name


def test_discriminator_sharding_is_validated_in_one_line(tmp_path, tiny_model_dir, tiny_train_file):
    from gad.training.config import GADConfig

    paths = {"output_dir": str(tmp_path), "student": str(tiny_model_dir), "train_file": str(tiny_train_file)}
    with pytest.raises(GadError, match="unknown discriminator_sharding 'zero3'; choose one of auto, replicate, fsdp"):
        GADConfig(**paths, discriminator_sharding="zero3")
    with pytest.raises(GadError, match="discriminator_fused_update needs a replicated discriminator"):
        GADConfig(**paths, discriminator_sharding="fsdp", discriminator_fused_update=True)


def test_deepspeed_zero3_is_refused_in_one_line(tmp_path, tiny_model_dir, tiny_train_file):
    from types import SimpleNamespace

    from gad.training.config import GADConfig
    from gad.training.gad_trainer import _discriminator_sharding

    paths = {"output_dir": str(tmp_path), "student": str(tiny_model_dir), "train_file": str(tiny_train_file)}
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    for deepspeed in (str(config), {"zero_optimization": {"stage": 3}}):  # before transformers imports deepspeed
        with pytest.raises(GadError, match="^the discriminator is not supported under DeepSpeed ZeRO-3 yet: use FSDP"):
            GADConfig(**paths, deepspeed=deepspeed)
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)))
    with pytest.raises(GadError, match="not supported under DeepSpeed ZeRO-3 yet"):  # an accelerate config's
        _discriminator_sharding(SimpleNamespace(discriminator_sharding="auto"), accelerator)


def test_auto_sharding_follows_the_student():
    """accelerate runs FSDP on accelerators only (on the CPU it falls back to DDP): checked on its decision."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from gad.training.gad_trainer import _discriminator_sharding

    def accelerator(kind, processes=2, fsdp2=True):
        state = SimpleNamespace(deepspeed_plugin=None)
        return SimpleNamespace(state=state, distributed_type=kind, num_processes=processes, is_fsdp2=fsdp2)

    def args(mode):
        return SimpleNamespace(discriminator_sharding=mode, discriminator_fused_update=False)

    assert _discriminator_sharding(args("auto"), accelerator(DistributedType.FSDP)) == "fsdp"
    assert _discriminator_sharding(args("auto"), accelerator(DistributedType.MULTI_GPU)) == "replicate"
    assert _discriminator_sharding(args("replicate"), accelerator(DistributedType.FSDP)) == "replicate"
    assert _discriminator_sharding(args("fsdp"), accelerator(DistributedType.MULTI_CPU)) == "fsdp"
    assert _discriminator_sharding(args("fsdp"), accelerator(DistributedType.NO, processes=1)) == "replicate"
    with pytest.raises(GadError, match="needs FSDP version 2"):
        _discriminator_sharding(args("auto"), accelerator(DistributedType.FSDP, fsdp2=False))
