"""Step speed and peak memory of one GAD step against one TRL GRPO step with a frozen reward model of the same size.

Both trainers get the same student checkpoint, the same prompts, batch, number of samples per prompt, sampling
temperature, KL weight, optimizer settings and generation length (``min_new_tokens`` = ``max_completion_length``, so
every sample has exactly that many tokens). The baseline is TRL's ``GRPOTrainer`` whose reward is a frozen
``AutoModelForSequenceClassification(num_labels=1)`` built from the student checkpoint (TRL scores it); GAD is
:class:`gad.training.gad_trainer.GADTrainer` built by ``gad.training.stages.build_trainer``, its discriminator
initialised from the same checkpoint.

The two trainers run in one process, each ``trainer.train()`` in its own thread, and take strict turns one optimizer
step at a time (GAD, GRPO, GAD, ...): a baton is taken before a step's batch is fetched and handed over before the
next, so the two never compute at the same time. The first ``--warmup`` steps of each are not measured. A step is
timed from the trainer's ``on_step_begin`` to its ``on_step_end`` (sampling, scoring, discriminator update, policy
forward/backward, clipping and optimizer step). The split comes from timers wrapped around the trainers' own methods:

- generation: ``_generate`` (HF ``generate``);
- scoring: ``_calculate_rewards`` (the discriminator's scores for GAD, the frozen reward model's for GRPO);
- reference: ``_get_per_token_logps_and_entropies`` during batch preparation (the KL reference's log-probabilities);
- discriminator update: ``GADTrainer._update_discriminator`` (teacher scoring, re-scoring with gradients, AdamW);
- diagnostics: ``GADTrainer._log_step_diagnostics`` (d_acc, lengths, ROUGE-L);
- policy update: the rest of the step after batch preparation (loss forward/backward, clipping, optimizer step);
- other: the rest of batch preparation (tokenising prompts, padding, advantages).

Peak memory is measured for each trainer in a fresh subprocess: on a GPU ``torch.cuda.max_memory_allocated``; on a
CPU the growth of the process's peak resident set (``VmHWM``) above its resident set after the imports (which also
counts allocator slack and the loading of the checkpoints). The floor is what the step has to hold: parameters,
gradients and two AdamW states of the student and of the discriminator, plus the reference model's parameters (for
the GRPO baseline: the student's four copies, the reference and the frozen reward model).

    nice -n 5 .venv/bin/python benchmarks/step_speed.py [--hidden-size 320 --layers 8 --prompts 4 --generations 8
        --completion-length 32 --steps 5] [--out benchmarks/results/step_speed.json]

Two GAD options can run next to the default: ``--fused`` (gad_fused: ``discriminator_fused_update``) and
``--top-layers K`` (gad_top: fused, and only the discriminator's top K layers train:
``discriminator_trainable_layers``).
``--model smollm2`` (or a folder) measures a real checkpoint instead of the random tiny Llama.

Goals (issue 5): GAD step <= 1.15 x the GRPO step; GAD peak memory <= 1.5 x its floor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from _common import goal, write_result

from gad.runtime import load_average

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FILE = ROOT / "recipes" / "data" / "tiny-train.jsonl"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "step_speed.json"
SPEED_GOAL = 1.15
MEMORY_GOAL = 1.5
RUNNERS = ("gad", "grpo")
ALL_RUNNERS = (*RUNNERS, "gad_fused", "gad_top")
PARTS = ("generation", "scoring", "reference", "discriminator_update", "diagnostics", "policy_update", "other")
# Fields that legitimately differ between the two configs.
CONFIG_FIELDS_ALLOWED_TO_DIFFER = {"output_dir", "logging_dir", "run_name"}
# Fields GRPOConfig derives in __post_init__ from others (passing them back in would conflict).
DERIVED_FIELDS = {"generation_batch_size"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=320, help="student/discriminator/reward-model width")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="samples per prompt (num_generations)")
    parser.add_argument("--completion-length", type=int, default=32, help="tokens per sample (fixed)")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per trainer")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps per trainer before measuring")
    parser.add_argument("--memory-steps", type=int, default=1, help="steps per memory probe (0: skip memory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; 0: torch's default. 1 by default: on shared CPUs, OpenMP workers spin while "
        "their peers are descheduled, which inflates wall and CPU time at random",
    )
    parser.add_argument(
        "--fused",
        action="store_true",
        help="also run a third runner, gad_fused: GAD with discriminator_fused_update=True (rewards read from a "
        "forward with gradients, whose graph the update then back-propagates; no re-scoring)",
    )
    parser.add_argument(
        "--top-layers",
        type=int,
        default=0,
        help="also run gad_top: GAD with the fused update and discriminator_trainable_layers=K (only the "
        "discriminator's top K layers train); 0: skip",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a real student checkpoint (a folder, or 'smollm2') instead of the random tiny Llama; the discriminator "
        "and the frozen reward model start from it too (--hidden-size and --layers are then ignored)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    parser.add_argument("--workdir", type=Path, default=None, help="where the checkpoints go (default: a temp dir)")
    parser.add_argument("--memory-probe", choices=ALL_RUNNERS, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- models and trainers ----------------------------------------------------------------------------------------------
def build_checkpoints(workdir: Path, args) -> tuple[Path, Path]:
    """The student (a random Llama with the shipped tokenizer) and the frozen reward model built from it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from gad.models import build_tiny_model

    reward_model = workdir / "reward-model"
    if args.model:
        from gad.models import resolve_model

        student = Path(resolve_model(args.model))
    else:
        student = workdir / "student"
        if not (student / "config.json").exists():
            build_tiny_model(student, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.layers)
    if not (reward_model / "config.json").exists():
        torch.manual_seed(args.seed)
        model = AutoModelForSequenceClassification.from_pretrained(student, num_labels=1)
        model.save_pretrained(reward_model)
        AutoTokenizer.from_pretrained(student).save_pretrained(reward_model)
    return student, reward_model


def shared_settings(args, max_steps: int) -> dict:
    """GRPOConfig fields both runs get; everything else is GADConfig's default, copied into the GRPO config."""
    return dict(
        per_device_train_batch_size=args.prompts * args.generations,
        num_generations=args.generations,
        max_completion_length=args.completion_length,
        generation_kwargs={"min_new_tokens": args.completion_length},  # equal token counts in both runs
        max_steps=max_steps,
        seed=args.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )


def build_trainers(workdir: Path, args, which=RUNNERS, max_steps: int | None = None) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    from gad.models import load_tokenizer
    from gad.prepare import gad_dataset
    from gad.training.config import GADConfig
    from gad.training.stages import build_trainer, load_stage_data

    student, reward_model = build_checkpoints(workdir, args)
    max_steps = max_steps if max_steps is not None else args.warmup + args.steps
    settings = shared_settings(args, max_steps)

    def gad_config_in(folder: str, **extra) -> GADConfig:
        return GADConfig(
            output_dir=str(workdir / folder), student=str(student), train_file=str(TRAIN_FILE), **settings, **extra
        )

    gad_config = gad_config_in("gad")
    data = load_stage_data(gad_config)
    tokenizer, rows, lengths = data.tokenizer, data.rows, data.lengths
    # The baseline takes every GRPOConfig field from the GAD config (learning rate, beta, temperature, clipping, ...).
    grpo_fields = [f.name for f in dataclasses.fields(GRPOConfig) if f.init]
    skip = CONFIG_FIELDS_ALLOWED_TO_DIFFER | DERIVED_FIELDS
    inherited = {name: getattr(gad_config, name) for name in grpo_fields if name not in skip}
    grpo_config = GRPOConfig(**{**inherited, "output_dir": str(workdir / "grpo")})
    differences = {
        name: [repr(getattr(gad_config, name)), repr(getattr(grpo_config, name))]
        for name in grpo_fields
        if name not in CONFIG_FIELDS_ALLOWED_TO_DIFFER and getattr(gad_config, name) != getattr(grpo_config, name)
    }
    trainers = {}
    which = [name for name in ALL_RUNNERS if name in which]  # GAD first, then the baseline, then the variant
    if "gad" in which:
        trainers["gad"] = build_trainer("gad", gad_config, str(student), tokenizer, rows, lengths)
    if "gad_fused" in which:
        fused_config = gad_config_in("gad_fused", discriminator_fused_update=True)
        trainers["gad_fused"] = build_trainer("gad", fused_config, str(student), tokenizer, rows, lengths)
    if "gad_top" in which:
        top_config = gad_config_in(
            "gad_top", discriminator_fused_update=True, discriminator_trainable_layers=args.top_layers
        )
        trainers["gad_top"] = build_trainer("gad", top_config, str(student), tokenizer, rows, lengths)
    if "grpo" in which:
        trainers["grpo"] = GRPOTrainer(
            model=str(student),
            reward_funcs=[str(reward_model)],
            args=grpo_config,
            train_dataset=gad_dataset(rows, lengths),
            processing_class=load_tokenizer(str(student)),
        )
    for trainer in trainers.values():
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    return {"trainers": trainers, "config_differences": differences, "student": student}


# -- timing -----------------------------------------------------------------------------------------------------------
class StepTimer:
    """Per-step wall times of a trainer's step and of its parts, from wrappers around the trainer's own methods."""

    def __init__(self, trainer, name: str):
        self.trainer, self.name = trainer, name
        self.steps: list[dict] = []
        self.current: dict = defaultdict(float)
        self.in_prepare = False
        self.step_started = 0.0
        self.cpu_started = 0.0
        self.completion_tokens: list[int] = []
        self._wrap(trainer, "_generate", "generation", self._count_tokens)
        self._wrap(trainer, "_calculate_rewards", "scoring")
        self._wrap(trainer, "_prepare_inputs", "prepare", before=self._enter_prepare, after=self._leave_prepare)
        self._wrap(trainer, "_get_per_token_logps_and_entropies", "reference", only_in_prepare=True)
        if hasattr(trainer, "_update_discriminator"):  # replay and repeated updates included
            self._wrap(trainer, "_update_discriminator", "discriminator_update")
        elif hasattr(trainer, "discriminator_updater"):
            self._wrap(trainer.discriminator_updater, "step", "discriminator_update")
            self._wrap(trainer, "_log_step_diagnostics", "diagnostics")

    def _enter_prepare(self):
        self.in_prepare = True

    def _leave_prepare(self):
        self.in_prepare = False

    def _count_tokens(self, result):
        completion_ids = result[1]
        self.current["completion_tokens"] += sum(len(ids) for ids in completion_ids)
        self.current["samples"] += len(completion_ids)

    def _wrap(self, owner, method: str, part: str, on_result=None, before=None, after=None, only_in_prepare=False):
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            if only_in_prepare and not self.in_prepare:
                return original(*args, **kwargs)
            if before:
                before()
            started = time.perf_counter()
            try:
                result = original(*args, **kwargs)
            finally:
                self.current[part] += time.perf_counter() - started
                if after:
                    after()
            if on_result:
                on_result(result)
            return result

        setattr(owner, method, timed)

    def step_begin(self):
        self.current = defaultdict(float)
        self.step_started = time.perf_counter()
        self.cpu_started = time.process_time()

    def step_end(self):
        total = time.perf_counter() - self.step_started
        cpu = time.process_time() - self.cpu_started
        parts = dict(self.current)
        prepare = parts.pop("prepare", 0.0)
        inside = sum(parts.get(p, 0.0) for p in ("generation", "scoring", "reference", "discriminator_update",
                                                  "diagnostics"))  # fmt: skip
        parts["other"] = max(prepare - inside, 0.0)
        parts["policy_update"] = max(total - prepare, 0.0)
        parts["total"] = total
        parts["cpu"] = cpu
        parts["torch_threads"] = _torch_threads()
        self.steps.append(parts)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


class Baton:
    """Strict turns between trainers running in threads: only the holder computes."""

    def __init__(self, order):
        self.order = list(order)
        self.turn = self.order[0]
        self.done: set[str] = set()
        self.failed: BaseException | None = None
        self.cond = threading.Condition()

    def take(self, name: str) -> None:
        with self.cond:
            while self.turn != name and self.failed is None:
                self.cond.wait()
            if self.failed is not None:
                raise RuntimeError("the other benchmark runner failed") from self.failed

    def pass_on(self, name: str) -> None:
        with self.cond:
            if self.turn != name:
                return
            start = self.order.index(name)
            for offset in range(1, len(self.order) + 1):
                candidate = self.order[(start + offset) % len(self.order)]
                if candidate not in self.done:
                    self.turn = candidate
                    break
            self.cond.notify_all()

    def finish(self, name: str, error: BaseException | None = None) -> None:
        with self.cond:
            self.done.add(name)
            if error is not None:
                self.failed = error
        self.pass_on(name)
        with self.cond:
            self.cond.notify_all()


def run_alternating(trainers: dict, warmup: int) -> dict[str, StepTimer]:
    from transformers import TrainerCallback

    baton = Baton(trainers)
    timers = {name: StepTimer(trainer, name) for name, trainer in trainers.items()}
    errors: dict[str, BaseException] = {}

    class Hooks(TrainerCallback):
        def __init__(self, timer):
            self.timer = timer

        def on_step_begin(self, args, state, control, **kwargs):
            self.timer.step_begin()

        def on_step_end(self, args, state, control, **kwargs):
            self.timer.step_end()

    for name, trainer in trainers.items():
        trainer.add_callback(Hooks(timers[name]))
        fetch = trainer.get_batch_samples
        holding = {"value": False}

        def get_batch_samples(*a, _fetch=fetch, _name=name, _holding=holding, **k):
            # A step starts with fetching its batch: hand the turn over (after the previous step's logging), wait for
            # it to come back, then fetch.
            if _holding["value"]:
                baton.pass_on(_name)
            baton.take(_name)
            _holding["value"] = True
            return _fetch(*a, **k)

        trainer.get_batch_samples = get_batch_samples

    def run(name, trainer):
        try:
            trainer.train()
        except BaseException as error:  # noqa: BLE001 - reported in the main thread
            errors[name] = error
            baton.finish(name, error)
        else:
            baton.finish(name)

    threads = [threading.Thread(target=run, args=(n, t), name=f"bench-{n}") for n, t in trainers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        name, error = next(iter(errors.items()))
        raise RuntimeError(f"the {name} run failed: {error!r}") from error
    for timer in timers.values():
        timer.steps = timer.steps[warmup:]
    return timers


def summarise(timers: dict[str, StepTimer]) -> dict:
    out = {}
    for name, timer in timers.items():
        steps = timer.steps
        totals = [s["total"] for s in steps]
        out[name] = {
            "step_s": [round(t, 4) for t in totals],
            "median_step_s": statistics.median(totals),
            "cpu_s": [round(s["cpu"], 4) for s in steps],
            "median_cpu_s": statistics.median(s["cpu"] for s in steps),
            "split_median_s": {p: statistics.median(s.get(p, 0.0) for s in steps) for p in PARTS},
            "completion_tokens_per_step": [int(s.get("completion_tokens", 0)) for s in steps],
            "samples_per_step": [int(s.get("samples", 0)) for s in steps],
            "torch_threads": steps[0]["torch_threads"] if steps else None,
        }
    return out


# -- memory -----------------------------------------------------------------------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current resident set."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _bytes(module) -> int:
    if module is None:
        return 0
    return sum(p.numel() * p.element_size() for p in module.parameters())


def memory_probe(args) -> dict:
    """Run one trainer for warmup + memory_steps steps in this (fresh) process; peak memory and its floor."""
    import torch

    cuda = torch.cuda.is_available()
    workdir = args.workdir
    # The imports the trainers need, so the baseline holds the Python/torch runtime.
    import trl  # noqa: F401

    import gad.training.gad_trainer  # noqa: F401
    import gad.training.stages  # noqa: F401

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = (_proc_status_kib("VmRSS") or 0) * 1024
    built = build_trainers(workdir, args, which=(args.memory_probe,), max_steps=args.warmup + args.memory_steps)
    trainer = built["trainers"][args.memory_probe]
    if cuda:
        after_build = torch.cuda.memory_allocated()
    else:
        after_build = (_proc_status_kib("VmRSS") or 0) * 1024
        # Reset the peak so it covers the training steps only, not the loading of the checkpoints.
        hwm_reset = _reset_peak_rss()
    trainer.train()
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        method = "torch.cuda.max_memory_allocated"
    else:
        peak = (_proc_status_kib("VmHWM") or 0) * 1024
        method = (
            "CPU resident set: peak during training (VmHWM, reset after building the trainer"
            + ("" if hwm_reset else "; reset unavailable, so checkpoint loading is included")
            + ") minus VmRSS after the imports; includes the runtime's allocations and malloc slack"
        )
    student = _bytes(trainer.model)
    reference = _bytes(getattr(trainer, "ref_model", None))
    if args.memory_probe.startswith("gad"):
        second = _bytes(trainer.discriminator)
        trained = sum(p.numel() * p.element_size() for p in trainer.discriminator.parameters() if p.requires_grad)
        floor = 4 * student + second + 3 * trained + reference
        floor_terms = (
            "4 x student (params, grads, 2 AdamW states) + discriminator params + 3 x its trained params (grads, "
            "2 AdamW states) + reference params"
        )
    else:
        second = sum(_bytes(f) for f in trainer.reward_funcs if isinstance(f, torch.nn.Module))
        trained = 0
        floor = 4 * student + second + reference
        floor_terms = "4 x student (params, grads, 2 AdamW states) + frozen reward model params + reference params"
    return {
        "method": method,
        "device": "cuda" if cuda else "cpu",
        "baseline_bytes": baseline,
        "after_build_bytes": after_build,
        "peak_bytes": peak,
        "peak_growth_bytes": peak - baseline,
        "floor_bytes": floor,
        "floor_terms": floor_terms,
        "student_param_bytes": student,
        "reference_param_bytes": reference,
        "second_model_param_bytes": second,
        "discriminator_trained_param_bytes": trained,
        "ratio_to_floor": (peak - baseline) / floor if floor else None,
    }


def run_memory_probes(args, workdir: Path, runners) -> dict:
    results = {}
    for name in runners:
        command = [
            sys.executable, str(Path(__file__).resolve()), "--memory-probe", name, "--workdir", str(workdir),
            "--hidden-size", str(args.hidden_size), "--layers", str(args.layers), "--prompts", str(args.prompts),
            "--generations", str(args.generations), "--completion-length", str(args.completion_length),
            "--warmup", str(args.warmup), "--memory-steps", str(args.memory_steps), "--seed", str(args.seed),
            "--threads", str(args.threads), "--top-layers", str(args.top_layers),
        ]  # fmt: skip
        if args.model:
            command += ["--model", args.model]
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"memory probe {name} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


# -- report -----------------------------------------------------------------------------------------------------------
def _mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


LABELS = {
    "gad": "GAD",
    "grpo": "GRPO + frozen RM",
    "gad_fused": "GAD, discriminator_fused_update",
    "gad_top": "GAD, fused, top-layer discriminator",
}


def table(result: dict) -> str:
    timing, memory = result["timing"], result.get("memory")
    names = list(timing)
    variants = [n for n in names if n != "grpo"]
    base = timing["grpo"]

    def row(label, values, ratios):
        return f"| {label} | " + " | ".join([*values, *ratios]) + " |"

    def ratio(a, b):
        return f"{a / b:.2f}" if b > 1e-6 else "-"

    lines = [
        f"Student: {result['student_params'] / 1e6:.2f} M parameters; {result['batch']['prompts']} prompts x "
        f"{result['batch']['generations']} samples x {result['batch']['completion_length']} tokens; "
        f"{result['batch']['measured_steps']} measured steps each, alternating; "
        f"{result['torch_threads_in_steps']} torch thread(s).",
        "",
        row("", [LABELS[n] for n in names], [f"{LABELS[n]} / GRPO" for n in variants]),
        "|---" + "|---:" * (len(names) + len(variants)) + "|",
    ]
    for key, label in (("median_step_s", "median step (s)"), ("median_cpu_s", "median step CPU time (s)")):
        values = [f"{timing[n][key]:.3f}" for n in names]
        lines.append(row(label, values, [ratio(timing[n][key], base[key]) for n in variants]))
    for part in PARTS:
        values = [f"{timing[n]['split_median_s'][part]:.3f}" for n in names]
        ratios = [ratio(timing[n]["split_median_s"][part], base["split_median_s"][part]) for n in variants]
        lines.append(row(f"{part.replace('_', ' ')} (s)", values, ratios))
    if memory:
        values = [_mib(memory[n]["peak_growth_bytes"]) for n in names]
        ratios = [ratio(memory[n]["peak_growth_bytes"], memory["grpo"]["peak_growth_bytes"]) for n in variants]
        lines.append(row("peak memory (MiB)", values, ratios))
        lines.append(row("memory floor (MiB)", [_mib(memory[n]["floor_bytes"]) for n in names], [""] * len(variants)))
        values = [f"{memory[n]['ratio_to_floor']:.2f}" for n in names]
        lines.append(row("peak / floor", values, [""] * len(variants)))
    lines.append("")
    for entry in result["goals"].values():
        lines.append(f"- {entry['target']}: measured {entry['value']:.3f} -> {'MET' if entry['met'] else 'NOT MET'}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args)))
        return {}
    started = time.time()
    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="gad-step-speed-") as tmp:
        workdir = args.workdir or Path(tmp)
        which = [*RUNNERS, *(["gad_fused"] if args.fused else []), *(["gad_top"] if args.top_layers else [])]
        built = build_trainers(workdir, args, which=which)
        trainers = built["trainers"]
        student_params = sum(p.numel() for p in trainers["gad"].model.parameters())
        timers = run_alternating(trainers, args.warmup)
        timing = summarise(timers)
        del trainers, built["trainers"]
        memory = run_memory_probes(args, workdir, list(timing)) if args.memory_steps > 0 else None
    ratio = timing["gad"]["median_step_s"] / timing["grpo"]["median_step_s"]
    pairs = [a / b for a, b in zip(timing["gad"]["step_s"], timing["grpo"]["step_s"], strict=True)]
    goals = {"speed": goal(round(ratio, 3), ratio <= SPEED_GOAL, f"GAD step <= {SPEED_GOAL} x GRPO step (medians)")}
    for name in ("gad_fused", "gad_top"):
        if name in timing:
            variant = timing[name]["median_step_s"] / timing["grpo"]["median_step_s"]
            target = f"{LABELS[name]} step <= {SPEED_GOAL} x GRPO step (an option, not the default)"
            goals[f"speed_{name}"] = goal(round(variant, 3), variant <= SPEED_GOAL, target)
    if memory:
        measured = memory["gad"]["ratio_to_floor"]
        goals["memory"] = goal(round(measured, 3), measured <= MEMORY_GOAL, f"GAD peak memory <= {MEMORY_GOAL} x floor")
    result = {
        "wall_s": round(time.time() - started, 1),
        "load_average_at_start": load_at_start,
        "torch_threads_in_steps": timing["gad"]["torch_threads"],
        "model": {"checkpoint": args.model} if args.model else {"hidden_size": args.hidden_size, "layers": args.layers},
        "student_params": student_params,
        "batch": {
            "prompts": args.prompts,
            "generations": args.generations,
            "completion_length": args.completion_length,
            "warmup_steps": args.warmup,
            "measured_steps": args.steps,
            "seed": args.seed,
        },
        "config_differences": built["config_differences"],
        "timing": timing,
        "ratio": ratio,
        "pair_ratios": [round(p, 4) for p in pairs],
        "median_pair_ratio": statistics.median(pairs),
        "cpu_time_ratio": timing["gad"]["median_cpu_s"] / timing["grpo"]["median_cpu_s"],
        "fused_ratio": timing["gad_fused"]["median_step_s"] / timing["grpo"]["median_step_s"] if args.fused else None,
        "top_layers": args.top_layers or None,
        "top_ratio": timing["gad_top"]["median_step_s"] / timing["grpo"]["median_step_s"] if args.top_layers else None,
        "memory": memory,
        "goals": goals,
    }
    result["table"] = table(result)
    print(result["table"])
    return write_result(args.out, "step_speed", result, argv)


if __name__ == "__main__":
    main()
