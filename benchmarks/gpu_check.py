"""GPU check: a few bf16 GAD steps and TRL GRPO steps on one GPU, and GAD's peak memory against `gad plan`'s estimate.

Nothing is downloaded. The student is a Qwen2.5-0.5B-shaped model built from its config (random weights, saved in
bf16) with the shipped 2,048-token tokenizer padded by added tokens to Qwen's 151,936 ids, so that every id the model
samples decodes; the data are generated prompts and answers. Then, each in a fresh process (so that each peak is its
own):

- ``gad``: :class:`gad.training.gad_trainer.GADTrainer` built by ``gad.training.stages.build_trainer``, the
  discriminator initialised from the student, as ``gad train --stage gad`` does;
- ``grpo``: TRL's ``GRPOTrainer`` with a frozen reward model of the same size (the student's backbone with a score
  head), every GRPOConfig field copied from the GAD config.

Rollouts use TRL's vLLM colocate mode when ``vllm`` imports (HF ``generate`` otherwise, or with ``--no-vllm``); every
sample is forced to ``--completion-length`` tokens and every prompt is cut at ``--prompt-length``, so the sequences
are the estimate's worst case. Peak memory is ``torch.cuda.max_memory_allocated`` over building and training. The
estimate is ``gad.plan.estimate_memory`` for the same config on one GPU with a replicated discriminator (what
GADTrainer holds today).

    python benchmarks/gpu_check.py [--steps 4 --prompts 8 --generations 8 --per-device 16 --prompt-length 128
        --completion-length 256] [--no-vllm] [--out benchmarks/results/gpu_check.json]

Where CUDA is not available it exits at once with one line (status 2). Goals: both trainers finish their steps;
GAD's peak is within the plan (at most 1.05 x the estimate) and the plan is not loose (at least 0.5 x); the whole
check takes under 8 minutes on one H200.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, goal, print_goals, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_OUT = RESULTS / "gpu_check.json"
SHAPE = "Qwen2.5-0.5B-Instruct"
TIME_GOAL_S = 480
RUNNERS = ("gad", "grpo")
# Fields GRPOConfig derives in __post_init__ (passing them back in would conflict) or that name the run's folder.
NOT_COPIED = {"generation_batch_size", "output_dir", "logging_dir", "run_name"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per trainer")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="samples per prompt (num_generations)")
    parser.add_argument("--per-device", type=int, default=16, help="completions per micro-step")
    parser.add_argument("--prompt-length", type=int, default=128, help="prompt tokens (prompts are cut there)")
    parser.add_argument("--completion-length", type=int, default=256, help="tokens per sample (forced)")
    parser.add_argument("--vllm-memory", type=float, default=0.15, help="vllm_gpu_memory_utilization")
    parser.add_argument("--no-vllm", action="store_true", help="roll out with HF generate even if vllm imports")
    parser.add_argument("--probe-timeout", type=int, default=210, help="seconds per trainer before it is stopped")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    parser.add_argument("--workdir", type=Path, default=None, help="where the model and data go (default: temp)")
    parser.add_argument("--probe", choices=RUNNERS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vllm", action="store_true", help=argparse.SUPPRESS)  # set by the parent for its probes
    return parser.parse_args(argv)


def cuda_or_exit() -> None:
    """One line and status 2 where there is no GPU: the check means nothing on a CPU."""
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False): run it on a machine with a GPU; "
              "nothing was run", file=sys.stderr)  # fmt: skip
        sys.exit(2)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken vLLM install (CUDA mismatch, ...) is "not available" here
        return False
    return True


# -- model and data ----------------------------------------------------------------------------------------------------
def build_models(workdir: Path) -> tuple[Path, Path]:
    """The student (Qwen2.5-0.5B's shape, random, bf16) and the GRPO baseline's frozen reward model built from it."""
    import torch
    from transformers import AutoModelForSequenceClassification, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from gad.models import tiny_tokenizer
    from gad.plan import PAPER_MODELS

    student, reward = workdir / "student", workdir / "reward-model"
    if (student / "config.json").exists() and (reward / "config.json").exists():
        return student, reward
    shape = {k: v for k, v in PAPER_MODELS[SHAPE].items() if k != "model_type"}
    tokenizer = tiny_tokenizer()
    # Added tokens up to the model's vocabulary: every id the random model samples decodes (vLLM needs that).
    tokenizer.add_tokens([f"<w{i}>" for i in range(shape["vocab_size"] - len(tokenizer))])
    config = Qwen2Config(**shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    config.dtype = "bfloat16"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    model.save_pretrained(student)
    tokenizer.save_pretrained(student)
    del model
    head = AutoModelForSequenceClassification.from_pretrained(student, num_labels=1, dtype=torch.bfloat16)
    head.config.pad_token_id = tokenizer.pad_token_id
    head.save_pretrained(reward)
    tokenizer.save_pretrained(reward)
    return student, reward


def write_data(workdir: Path, rows: int) -> Path:
    """Prompts long enough to be cut at --prompt-length, and teacher answers of many words."""
    path = workdir / "train.jsonl"
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly box".split()
    with path.open("w") as handle:
        for i in range(rows):
            prompt = " ".join(words[(i + j) % len(words)] for j in range(400))
            answer = " ".join(words[(3 * i + j) % len(words)] for j in range(300))
            handle.write(json.dumps({"prompt": f"Task {i}: {prompt}", "response": answer}) + "\n")
    return path


def gad_config(args, workdir: Path, name: str):
    from gad.training.config import GADConfig

    completions = args.prompts * args.generations
    if completions % args.per_device:
        raise SystemExit(f"--prompts x --generations ({completions}) must be a multiple of --per-device")
    length = args.completion_length
    use_vllm = bool(args.vllm)
    return GADConfig(
        output_dir=str(workdir / name),
        student=str(workdir / "student"),
        train_file=str(workdir / "train.jsonl"),
        per_device_train_batch_size=args.per_device,
        gradient_accumulation_steps=completions // args.per_device,
        num_generations=args.generations,
        max_prompt_length=args.prompt_length,
        max_completion_length=length,
        # Every sample as long as allowed: the memory the estimate counts is the worst case.
        generation_kwargs={"min_tokens": length} if use_vllm else {"min_new_tokens": length},
        max_steps=args.steps,
        bf16=True,
        activation_checkpointing=True,
        use_vllm=use_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=args.vllm_memory,
        vllm_max_model_length=args.prompt_length + length + 64,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )


# -- one trainer in this process ---------------------------------------------------------------------------------------
def probe(args) -> dict:
    import torch

    from gad.models import load_tokenizer
    from gad.prepare import gad_dataset
    from gad.training.stages import build_trainer, load_stage_data

    workdir = args.workdir
    config = gad_config(args, workdir, args.probe)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    data = load_stage_data(config)
    if args.probe == "gad":
        trainer = build_trainer("gad", config, data.student, data.tokenizer, data.rows, data.lengths)
    else:
        from trl import GRPOConfig, GRPOTrainer

        fields = [f.name for f in dataclasses.fields(GRPOConfig) if f.init and f.name not in NOT_COPIED]
        grpo_config = GRPOConfig(**{n: getattr(config, n) for n in fields}, output_dir=str(workdir / "grpo"))
        trainer = GRPOTrainer(
            model=data.student,
            reward_funcs=[str(workdir / "reward-model")],
            args=grpo_config,
            train_dataset=gad_dataset(data.rows, data.lengths),
            processing_class=load_tokenizer(data.student),
        )
    built = time.perf_counter()
    after_build = torch.cuda.memory_allocated()
    trainer.train()
    done = time.perf_counter()
    free, total = torch.cuda.mem_get_info()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry or "reward" in entry]
    return {
        "steps": trainer.state.global_step,
        "build_s": round(built - started, 2),
        "train_s": round(done - built, 2),
        "step_s": round((done - built) / max(trainer.state.global_step, 1), 2),
        "allocated_before_bytes": before,
        "allocated_after_build_bytes": after_build,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        "device_used_at_end_bytes": total - free,
        "last_log": logs[-1] if logs else None,
    }


def run_probe(args, workdir: Path, name: str, use_vllm: bool) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--probe", name, "--workdir", str(workdir),
        "--steps", str(args.steps), "--prompts", str(args.prompts), "--generations", str(args.generations),
        "--per-device", str(args.per_device), "--prompt-length", str(args.prompt_length),
        "--completion-length", str(args.completion_length), "--vllm-memory", str(args.vllm_memory),
    ] + (["--vllm"] if use_vllm else [])  # fmt: skip
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.probe_timeout)
    except subprocess.TimeoutExpired as error:
        tail = (error.stderr or b"")[-3000:]
        return {"error": f"timed out after {args.probe_timeout} s", "stderr_tail": str(tail)}
    if done.returncode != 0:
        return {"error": f"exit status {done.returncode}", "stderr_tail": done.stderr[-3000:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def plan_for(args, workdir: Path):
    """gad plan's estimate for the GAD probe's config on this GPU: one process, nothing sharded."""
    import torch

    from gad.plan import Layout, batch_plan, count_model, estimate_memory, load_model_config

    config = gad_config(args, workdir, "plan")
    model_config, source = load_model_config(config.student)
    student = count_model(model_config, source)
    disc = count_model(model_config, source, classifier=True)
    total = torch.cuda.get_device_properties(0).total_memory
    layout = Layout(1, total, "ddp", discriminator_sharded=False, activation_checkpointing=True)
    return estimate_memory("gad", config, student, disc, layout, batch_plan("gad", config, 1))


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda_or_exit()
    if args.probe:
        print(json.dumps(probe(args)))
        return 0
    import torch

    started = time.monotonic()
    use_vllm = vllm_available() and not args.no_vllm
    args.vllm = use_vllm
    with tempfile.TemporaryDirectory(prefix="gad-gpu-check-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        build_models(workdir)
        write_data(workdir, rows=args.prompts * (args.steps + 2))
        plan = plan_for(args, workdir)
        probes = {name: run_probe(args, workdir, name, use_vllm) for name in RUNNERS}
    wall = time.monotonic() - started
    gad, grpo = probes["gad"], probes["grpo"]
    estimate = plan.peak_bytes
    ratio = gad["peak_allocated_bytes"] / estimate if "peak_allocated_bytes" in gad else None
    goals = {
        "gad_steps": goal(gad.get("steps"), gad.get("steps") == args.steps, f"GAD runs {args.steps} bf16 steps"),
        "grpo_steps": goal(grpo.get("steps"), grpo.get("steps") == args.steps, f"TRL GRPO runs {args.steps} steps"),
        "gad_peak_within_plan": goal(ratio, ratio is not None and ratio <= 1.05,
                                     "GAD peak (max_memory_allocated) <= 1.05 x gad plan's estimate"),
        "plan_not_loose": goal(ratio, ratio is not None and ratio >= 0.5, "GAD peak >= 0.5 x gad plan's estimate"),
        "wall_time_s": goal(round(wall, 1), wall <= TIME_GOAL_S, f"whole check under {TIME_GOAL_S} s"),
    }  # fmt: skip
    result = {
        "device": torch.cuda.get_device_name(0),
        "device_memory_bytes": torch.cuda.get_device_properties(0).total_memory,
        "rollouts": "vllm colocate" if use_vllm else "hf generate",
        "model": {"shape": SHAPE, "student_params": plan.student.params,
                  "discriminator_params": plan.discriminator.params},
        "batch": {"prompts": args.prompts, "generations": args.generations, "per_device": args.per_device,
                  "prompt_length": args.prompt_length, "completion_length": args.completion_length,
                  "steps": args.steps},
        "gad": gad,
        "grpo": grpo,
        "plan": plan.to_dict(),
        "gad_peak_over_plan": ratio,
        "gad_peak_over_grpo_peak": (gad["peak_allocated_bytes"] / grpo["peak_allocated_bytes"])
        if "peak_allocated_bytes" in gad and "peak_allocated_bytes" in grpo else None,
        "wall_s": round(wall, 1),
        "goals": goals,
    }  # fmt: skip
    write_result(args.out, "gpu_check", result, argv)
    print_goals(goals)
    return 0 if all(entry["met"] for entry in goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
