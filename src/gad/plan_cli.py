"""`gad plan`: will a recipe's stage fit on N GPUs, and is its batch and schedule what you meant? Nothing is loaded.

The arithmetic is :mod:`gad.plan`'s; this module reads the recipe, prints the table and, with ``--dry-run``, checks
every stage of the recipe (configs, models on the meta device, data columns, batch arithmetic, schedule).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from gad.errors import GadError

EPILOG = """
examples:
  gad plan recipes/paper/qwen2.5-7b.yaml --gpus 8 --gpu-memory 80GB
  gad plan recipes/paper/qwen2.5-7b.yaml --gpus 8 --gpu-memory 80GB --discriminator-replicated
  gad plan recipes/paper/qwen2.5-14b.yaml --accelerate-config recipes/paper/fsdp2-16gpu.yaml --dry-run \\
      student=/models/Qwen2.5-14B-Instruct train_file=data/gpt5-chat/train.parquet
Exit status: 0 when the stage fits (and, with --dry-run, every check passes), 1 otherwise.
Sizes are in GB = 10^9 bytes; --gpu-memory also takes GiB.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="per-GPU memory, batch arithmetic and schedule of a recipe, before launching it",
        description="Estimate a stage's memory per GPU (student, reference, discriminator, optimizer states, "
        "activations, rollouts) from the models' configs, and say whether it fits. --dry-run also checks every stage "
        "of the recipe: configs, models built on the meta device, data columns, TRL's batch rules, the schedule.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe `gad train --config` would get")
    parser.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="number of GPUs (processes); default: the accelerate config's num_processes",
    )
    parser.add_argument("--gpu-memory", default="80GB", help="memory of one GPU: 80GB (default), 141GB, 80GiB")
    parser.add_argument("--stage", default="gad", choices=("seqkd", "warmup", "gad"), help="stage to size (gad)")
    parser.add_argument(
        "--sharding",
        choices=("fsdp", "zero3", "ddp"),
        default=None,
        help="how the student is spread: FSDP / ZeRO-3 shard states over the GPUs, DDP replicates them (default: the "
        "accelerate config's, else fsdp)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--discriminator-sharded",
        dest="discriminator",
        action="store_const",
        const="sharded",
        help="discriminator sharded like the student (default with fsdp/zero3)",
    )
    group.add_argument(
        "--discriminator-replicated",
        dest="discriminator",
        action="store_const",
        const="replicated",
        help="a full discriminator per GPU, as GADTrainer holds it today (default with ddp)",
    )
    parser.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: the accelerate config's fsdp_activation_checkpointing, else the recipe's "
        "activation_checkpointing, else on with fsdp/zero3 (the shipped FSDP2 configs turn it on)",
    )
    parser.add_argument("--accelerate-config", metavar="FILE", help="read --gpus, --sharding and checkpointing from it")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="also check every stage: configs, models, data, "
        "batch arithmetic, schedule (reads the data's schema and first rows only)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, as for gad train")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gad.plan import (
        GB,
        USABLE_FRACTION,
        Layout,
        batch_plan,
        estimate_memory,
        layout_from_accelerate,
        parse_memory,
    )
    from gad.training.recipe import load_recipe, parse_overrides

    recipe = load_recipe(args.recipe)
    overrides = parse_overrides(args.overrides)
    implied = layout_from_accelerate(args.accelerate_config) if args.accelerate_config else {}
    gpus = args.gpus or implied.get("gpus")
    if not gpus:
        raise GadError("say how many GPUs: --gpus N (or --accelerate-config FILE)")
    sharding = args.sharding or implied.get("sharding", "fsdp")
    try:
        config = resolve_for_plan(recipe, args.stage, overrides, args.recipe, gpus)
    except GadError:
        if not args.dry_run:
            raise
        # The stage cannot be sized; the dry run still says what else is wrong, and this among it.
        print(format_checks(dry_run(recipe, overrides, args.recipe, gpus)).lstrip())
        return 1
    checkpointing = _checkpointing(args.activation_checkpointing, implied, config, sharding)
    discriminator = args.discriminator or ("replicated" if sharding == "ddp" else "sharded")
    layout = Layout(gpus, parse_memory(args.gpu_memory), sharding, discriminator == "sharded", checkpointing)
    student, disc = model_sizes(args.stage, config, recipe, overrides, args.recipe)
    batch = batch_plan(args.stage, config, gpus, requested_generation(recipe, overrides, args.stage))
    plan = estimate_memory(args.stage, config, student, disc, layout, batch)
    other = None
    if args.stage != "seqkd" and sharding != "ddp":
        flipped = dataclasses.replace(layout, discriminator_sharded=not layout.discriminator_sharded)
        other = estimate_memory(args.stage, config, student, disc, flipped, batch)
    checks = dry_run(recipe, overrides, args.recipe, gpus) if args.dry_run else None
    ok = plan.fits and not batch.errors and (checks is None or not checks["problems"])
    if args.json:
        record = {"recipe": args.recipe, "memory": plan.to_dict(), "batch": _batch_dict(batch), "fits": plan.fits}
        if other is not None:
            record["other_discriminator"] = other.to_dict()
        if checks is not None:
            record["dry_run"] = checks
        print(json.dumps(record, indent=2, default=str))
        return 0 if ok else 1
    print(format_plan(args.recipe, plan, batch, other, GB, USABLE_FRACTION))
    if checks is not None:
        print(format_checks(checks))
    return 0 if ok else 1


# -- reading the recipe ------------------------------------------------------------------------------------------------
def recipe_value(recipe: dict, overrides: dict[str, str], stage: str, key: str) -> Any:
    """A key's value for ``stage`` as resolve_stage layers it: top level, then the stage's section, then the command
    line (``key=`` or ``stage.key=``)."""
    value = recipe.get(key)
    section = recipe.get(stage) if isinstance(recipe.get(stage), dict) else {}
    value = section.get(key, value)
    for name, given in overrides.items():
        if name in (key, f"{stage}.{key}"):
            value = given
    return value


def requested_generation(recipe: dict, overrides: dict[str, str], stage: str) -> dict[str, Any]:
    """The recipe's own generation_batch_size / steps_per_generation (None when TRL derives them)."""
    return {
        key: recipe_value(recipe, overrides, stage, key) for key in ("generation_batch_size", "steps_per_generation")
    }


def resolve_for_plan(
    recipe: dict, stage: str, overrides: dict[str, str], source: str, gpus: int, warmup_dir: str | None = None
):
    """The stage's config as ``gad train`` would build it on ``gpus`` processes.

    TRL derives ``generation_batch_size`` from the number of processes when the config is built; here that is one,
    so a batch that is valid on 8 GPUs (4 completions x 8 GPUs, 8 samples per prompt) would be refused. Passing the
    N-process generation batch explicitly makes TRL check it as it will on the cluster."""
    from gad.training.config import STAGES
    from gad.training.recipe import resolve_stage

    extra: dict[str, str] = {}
    requested = requested_generation(recipe, overrides, stage)
    if stage != "seqkd" and all(value is None for value in requested.values()):
        defaults = {f.name: f.default for f in dataclasses.fields(STAGES[stage])}
        per_device = int(
            recipe_value(recipe, overrides, stage, "per_device_train_batch_size")
            or defaults["per_device_train_batch_size"]
        )
        accumulation = int(
            recipe_value(recipe, overrides, stage, "gradient_accumulation_steps")
            or defaults["gradient_accumulation_steps"]
        )
        extra[f"{stage}.generation_batch_size"] = str(per_device * gpus * accumulation)
    return resolve_stage(recipe, stage, {**overrides, **extra}, source=source, pending={"*"}, warmup_dir=warmup_dir)


def _checkpointing(flag: bool | None, implied: dict, config, sharding: str) -> bool:
    if flag is not None:
        return flag
    if "activation_checkpointing" in implied:
        return implied["activation_checkpointing"]
    if config.activation_checkpointing or config.gradient_checkpointing:
        return True
    return sharding != "ddp"


def model_sizes(stage: str, config, recipe: dict, overrides: dict[str, str], source: str):
    """Exact sizes of the stage's student and discriminator (None for seqkd), from their configs."""
    from gad.plan import count_model, load_model_config

    student_path = _materialised(config.student)
    seed = None
    if not _exists(student_path):
        seed = _seed_model(recipe, overrides, source, "seqkd", "student")  # gad's student is warmup's output
    student_config, where = load_model_config(student_path, fallback=seed)
    student = count_model(student_config, where)
    if stage == "seqkd":
        return student, None
    layers = getattr(config, "discriminator_trainable_layers", None)
    path = getattr(config, "discriminator", None)
    if stage == "gad" and not _exists(path):  # gad's discriminator is warmup's output: size what warmup starts from
        path = _seed_model(recipe, overrides, source, "warmup", "discriminator")
    if _exists(path):
        disc_config, disc_where = load_model_config(path)
    else:
        disc_config, disc_where = student_config, "the student's (the discriminator starts from the student)"
    return student, count_model(disc_config, disc_where, classifier=True, trainable_layers=layers)


def _exists(path: str | None) -> bool:
    from gad.plan import paper_model_name

    return bool(path and ((Path(path) / "config.json").is_file() or paper_model_name(path)))


def _seed_model(recipe: dict, overrides: dict[str, str], source: str, stage: str, key: str) -> str | None:
    """The model ``stage`` starts from (``key``: student or discriminator), as a plan sizes it before the run."""
    from gad.training.recipe import resolve_stage

    try:
        return _materialised(getattr(resolve_stage(recipe, stage, overrides, source=source, pending={"*"}), key))
    except GadError:
        return None


def _materialised(name: str | None) -> str | None:
    """A built-in model's folder (written once, as `gad train` does; nothing is downloaded), else ``name``."""
    from gad.models import SMOLLM2_ALIAS, resolve_model

    if name and (name.startswith("builtin:") or name == SMOLLM2_ALIAS or name.endswith(".gguf")):
        return resolve_model(name)
    return name


# -- dry run -----------------------------------------------------------------------------------------------------------
def dry_run(recipe: dict, overrides: dict[str, str], source: str, gpus: int) -> dict[str, Any]:
    """Every stage of the recipe: its config, its models on the meta device, its batch on ``gpus`` GPUs; the data's
    columns and rows; the schedule from warmup to gad."""
    from gad.plan import PAPER_TRAIN_ROWS, batch_plan, check_data, stage_schedule

    lines: list[str] = []
    problems: list[str] = []
    configs, batches = {}, {}
    for stage in ("seqkd", "warmup", "gad"):
        try:
            warmup_dir = str(configs["warmup"].output_dir) if stage == "gad" and "warmup" in configs else None
            config = resolve_for_plan(recipe, stage, overrides, source, gpus, warmup_dir)
            student, disc = model_sizes(stage, config, recipe, overrides, source)
        except GadError as error:
            problems.append(f"{stage}: {error}")
            continue
        configs[stage] = config
        built = f"student {student.params:,}" + (f", discriminator {disc.params:,}" if disc else "")
        batch = batch_plan(stage, config, gpus, requested_generation(recipe, overrides, stage))
        batches[stage] = batch
        lines.append(f"{stage}: config ok; built on the meta device: {built} parameters")
        lines.append(f"{stage}: batch {batch.describe()}" + ("" if batch.errors else ": ok"))
        problems += [f"{stage}: {error}" for error in batch.errors]
        lines += [f"{stage}: warning: {warning}" for warning in batch.warnings]
    rows = None
    if configs:
        first = next(iter(configs.values()))
        data = check_data(first.train_file, first.prompt_column, first.response_column)
        if data.errors:
            problems += [f"data: {error}" for error in data.errors]
        if data.rows is not None and not data.errors:
            rows = data.rows
            columns = (
                f"prompt column {data.prompt_column}, response column {data.response_column}"
                if (data.prompt_column)
                else "read by gad's loader"
            )
            lines.append(f"data: {data.path}: {rows:,} rows; {columns}: ok")
    assumed = rows is None
    rows = rows or PAPER_TRAIN_ROWS
    schedules = {s: stage_schedule(s, configs[s], batches[s], rows) for s in configs if not batches[s].errors}
    lines += _schedule_lines(schedules, configs, rows, assumed)
    for stage, batch in batches.items():
        if stage in schedules and rows < batch.prompts_per_step:
            problems.append(f"{stage}: fewer rows ({rows:,}) than prompts per step ({batch.prompts_per_step:,})")
    if problem := _hand_over_problem(configs):
        problems.append(problem)
    return {
        "lines": lines,
        "problems": problems,
        "rows": rows,
        "rows_assumed": assumed,
        "schedule": {s: dataclasses.asdict(v) for s, v in schedules.items()},
    }


def _schedule_lines(schedules: dict, configs: dict, rows: int, assumed: bool) -> list[str]:
    where = f"{rows:,} rows" + (
        " (train_file not read: the released GPT-5-Chat train split's count)" if assumed else ""
    )
    lines = [f"schedule over {where}:"]
    for stage, item in schedules.items():
        how = (
            f"max_steps {item.steps}"
            if item.from_max_steps
            else f"{item.steps_per_epoch:,} steps/epoch x {item.epochs:g}"
        )
        extra = ""
        if stage == "warmup" and getattr(configs[stage], "d_only_steps", 0):
            extra = f"; the discriminator trains alone for steps 1-{configs[stage].d_only_steps}"
        saves = item.steps // max(int(configs[stage].save_steps), 1)
        lines.append(
            f"  {stage}: {item.steps:,} steps ({how}){extra}; checkpoints every "
            f"{configs[stage].save_steps:g} steps: {saves}"
        )
    if "warmup" in schedules and "gad" in schedules and configs["gad"].init_from:
        warm, gad = schedules["warmup"].steps, schedules["gad"].steps
        lines.append(
            f"  hand-over: gad starts from {configs['gad'].init_from} (student/ and discriminator/) after warmup's "
            f"{warm:,} steps and counts its own steps from 1: warmup+gad = steps 1-{warm:,} then "
            f"{warm + 1:,}-{warm + gad:,}"
        )
    return lines


def _hand_over_problem(configs: dict) -> str | None:
    """gad starts from the warmup's output only when no student is given for it: one in the gad section (or
    gad.student=) makes it start from that model instead, which is easy to do by accident."""
    if "gad" not in configs or "warmup" not in configs or configs["gad"].init_from:
        return None
    return (
        f"gad does not start from the warmup's output but from {configs['gad'].student}: a student is given for it "
        "(gad.student= on the command line, or in the gad section); drop it to start from the warmup"
    )


def _batch_dict(batch) -> dict[str, Any]:
    return {
        **dataclasses.asdict(batch),
        "samples_per_step": batch.samples_per_step,
        "prompts_per_step": batch.prompts_per_step,
    }


# -- printing ----------------------------------------------------------------------------------------------------------
def format_plan(recipe: str, plan, batch, other, gb: int, usable_fraction: float) -> str:
    layout = plan.layout
    disc_mode = "sharded" if layout.discriminator_sharded else "replicated"
    head = (
        f"gad plan {recipe}: stage {plan.stage} on {layout.gpus} GPUs x {layout.gpu_memory / gb:.1f} GB, "
        f"{layout.sharding}"
        + ("" if plan.stage == "seqkd" else f", discriminator {disc_mode}")
        + f", activation checkpointing {'on' if layout.activation_checkpointing else 'off'}"
    )
    lines = [head, f"student: {plan.student.params:,} parameters; shape from {plan.student.source}"]
    if plan.discriminator is not None:
        lines.append(
            f"discriminator: {plan.discriminator.params:,} parameters (backbone + one-output score head, no "
            f"LM head); shape from {plan.discriminator.source}"
        )
    lines.append(f"batch: {batch.describe()}")
    lines += [f"error: {e}" for e in batch.errors]
    width = 66
    lines += ["", f"{'per GPU':<{width}}{'GB':>9}   how"]
    for item in plan.states:
        lines.append(_row(item.label, item.bytes, item.formula, width, gb, indent=2))
    lines.append(_row("model and optimizer states", plan.states_bytes, "", width, gb, indent=2))
    for item in plan.persistent:
        lines.append(_row(item.label, item.bytes, item.formula, width, gb, indent=2))
    if plan.phases:
        lines.append("  transient, one phase of the step at a time (the largest counts):")
    for name, items in plan.phases.items():
        if len(items) == 1:  # the phase is its one item
            item = items[0]
            label = item.label if item.label.startswith(name.split()[0]) else f"{name}: {item.label}"
            lines.append(_row(label, item.bytes, item.formula, width, gb, indent=4))
            continue
        lines.append(_row(name, plan.phase_bytes(name), "", width, gb, indent=4))
        lines += [_row(item.label, item.bytes, item.formula, width, gb, indent=6) for item in items]
    lines.append("")
    lines.append(_verdict(plan, gb, usable_fraction))
    if other is not None:
        mode = "sharded" if other.layout.discriminator_sharded else "replicated"
        verdict = "fits" if other.fits else "does NOT fit"
        lines.append(
            f"discriminator {mode} instead: states {other.states_bytes / gb:.2f} GB, peak "
            f"{other.peak_bytes / gb:.2f} GB: {verdict}"
        )
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def _row(label: str, value: int, formula: str, width: int, gb: int, indent: int) -> str:
    text = f"{' ' * indent}{label}"
    return f"{text:<{width}}{value / gb:>9.2f}   {formula}".rstrip()


def _verdict(plan, gb: int, usable_fraction: float) -> str:
    parts = [f"states {plan.states_bytes / gb:.2f}"]
    if plan.persistent:
        parts.append(f"held rollouts {plan.persistent_bytes / gb:.2f}")
    if plan.peak_phase:
        parts.append(f"largest phase ({plan.peak_phase}) {plan.phase_bytes(plan.peak_phase) / gb:.2f}")
    usable = plan.usable_bytes / gb
    room = (plan.usable_bytes - plan.peak_bytes) / gb
    verdict = f"fits, {room:.2f} GB to spare" if plan.fits else f"does NOT fit, {-room:.2f} GB over"
    return (
        f"peak per GPU = {' + '.join(parts)} = {plan.peak_bytes / gb:.2f} GB of {usable:.2f} GB usable "
        f"({usable_fraction:.0%} of {plan.layout.gpu_memory / gb:.2f} GB): {verdict}"
    )


def format_checks(checks: dict[str, Any]) -> str:
    lines = ["", "dry run:"] + [f"  {line}" for line in checks["lines"]]
    lines += [f"  problem: {problem}" for problem in checks["problems"]]
    lines.append(
        "dry run: " + ("every check passed" if not checks["problems"] else f"{len(checks['problems'])} problem(s)")
    )
    return "\n".join(lines)
