"""`gad train`: run one or more training stages from a recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from gad.errors import GadError

EPILOG = """
stages:
  seqkd   supervised fine-tuning on the teacher's responses (the baseline)
  warmup  GAD warmup: the student is fine-tuned on teacher responses while the discriminator learns to rank
          teacher above student (discriminator alone for the first d_only_steps)
  gad     GAD: GRPO on the discriminator's score, the discriminator updated every step (starts from RUN_DIR/warmup)

examples:
  gad train --stage seqkd --config recipes/tiny-cpu.yaml
  gad train --stage warmup,gad --config recipes/tiny-cpu.yaml learning_rate=2e-6 gad.num_generations=4
  gad train --stage gad --config recipes/tiny-cpu.yaml --resume
Any field of the stage's config (gad.training.config, plus every TRL GRPOConfig / SFTConfig option) can be set
as KEY=VALUE.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a student: --stage seqkd | warmup | gad",
        description="Train the student (and the discriminator) for one or more stages of a recipe.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stage", required=True, help="seqkd, warmup or gad; several, comma-separated, run in order (warmup,gad)"
    )
    parser.add_argument("--config", metavar="RECIPE.yaml", help="the recipe (YAML); see recipes/")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run from each stage's newest complete checkpoint (finished stages are skipped)",
    )
    parser.add_argument("--resume-from", metavar="CHECKPOINT", help="continue one stage from this checkpoint folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="discard checkpoints of an earlier run and start again"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `gad --help` and the other commands start without loading torch and TRL.
    from gad.training.config import STAGES
    from gad.training.recipe import load_recipe, parse_overrides, resolve_stage

    stages = [s.strip() for s in args.stage.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise GadError(f"unknown stage '{','.join(unknown) or args.stage}'; choose from {', '.join(STAGES)}")
    if args.resume_from and len(stages) > 1:
        raise GadError("--resume-from names one checkpoint: run a single stage with it")
    resume = args.resume_from or args.resume
    recipe = load_recipe(args.config)
    overrides = parse_overrides(args.overrides)
    # Every stage's config is built (and checked) before the first one trains: a mistake in a later stage's settings
    # stops the command now, not hours later. Inputs an earlier stage will write are checked when their stage starts.
    pending = {"*"} if args.print_config else set()
    configs = []
    warmup_dir = None  # a warmup run by this command is where its gad stage starts
    for stage in stages:
        config = resolve_stage(
            recipe, stage, overrides, source=args.config or "", pending=pending, warmup_dir=warmup_dir
        )
        configs.append((stage, config))
        pending.add(str(Path(config.output_dir)))
        if stage == "warmup":
            warmup_dir = str(config.output_dir)
    if args.print_config:
        import yaml

        for stage, config in configs:
            print(yaml.safe_dump({"stage": stage, **config.to_dict()}, sort_keys=False))
        return 0
    from gad.training.stages import run_stage

    for stage, config in configs:
        layout = run_stage(stage, config, resume=resume, overwrite=args.overwrite).layout
        if config.process_index == 0:  # one line per stage, not one per process
            print(f"{stage}: done -> {layout.student}" + ("" if stage == "seqkd" else f", {layout.discriminator}"))
    return 0
