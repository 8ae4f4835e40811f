"""Running one training stage end to end: data, models, trainer, checkpoints, final folders.

Reads top to bottom like the paper's pipeline. Every stage writes into its output folder:
``config.yaml`` (the resolved config), ``metrics.jsonl``, ``checkpoint-N/`` every ``save_steps`` (the student at the
folder's root, ``discriminator/`` beside it), and at the end ``student/`` and, for warmup and gad,
``discriminator/``: plain Hugging Face folders that load without gad.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gad.data import load_training_rows
from gad.errors import GadError
from gad.layout import StageLayout, checkpoint_step
from gad.models import load_tokenizer, require_model_folder, resolve_model
from gad.prepare import gad_dataset, sft_dataset, truncate_rows
from gad.runtime import check_launch
from gad.training.callbacks import MetricsFile, NanGuard
from gad.training.config import GADConfig, SeqKDConfig, check_inputs
from gad.training.discriminator import Discriminator

logger = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a stage leaves behind: its folders, how far it trained, and the trainer's log history (empty when the
    stage had already finished and ``resume`` skipped it)."""

    stage: str
    layout: StageLayout
    global_step: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False

    @property
    def output_dir(self) -> Path:
        return self.layout.root


def run_stage(
    stage: str,
    config: SeqKDConfig | GADConfig,
    *,
    resume: bool | str = False,
    overwrite: bool = False,
    callbacks: list | tuple = (),
    print_logs: bool = True,
) -> StageResult:
    """Train one stage (``seqkd``, ``warmup`` or ``gad``); ``callbacks`` are extra ``TrainerCallback`` objects
    (a benchmark's periodic evaluation, say) added to the stage's own. ``print_logs=False`` keeps the per-step log
    lines off the console (they still go to metrics.jsonl).

    With ``resume``, a stage that already finished is left as it is, and one with no complete checkpoint starts from
    the beginning, so ``gad train --stage seqkd,warmup,gad --resume`` picks a killed pipeline up where it stopped.
    """
    layout = StageLayout(Path(config.output_dir))
    check_launch(config.world_size)  # also sets up the process group (the config's backend and ddp_timeout)
    main_process = config.process_index == 0
    if not main_process:
        _quiet_replica()
    if resume is True and _finished(layout, config):
        logger.info("%s already finished in %s; nothing to resume", stage, layout.root)
        return StageResult(stage, layout, skipped=True)
    check_inputs(config)
    # The main process clears what a fresh start replaces; the others then read the cleared folder and reach the
    # same decision without deleting anything themselves (were it an error, the main process raises it first and
    # releases them to raise the same).
    with config.main_process_first(local=False, desc="choosing the checkpoint"):
        checkpoint = _checkpoint_to_resume(layout, resume, overwrite)
    with config.main_process_first(desc="building built-in models"):  # written into the cache once per machine
        for name in filter(None, (config.student, getattr(config, "discriminator", None))):
            resolve_model(name)

    data = load_stage_data(config)
    if stage != "seqkd":  # before anything is written: a bad discriminator folder must not leave a half-made stage
        require_model_folder(resolve_model(config.discriminator or data.student), "discriminator")
    warn_if_too_short(stage, config, len(data.rows))

    if main_process:
        layout.root.mkdir(parents=True, exist_ok=True)
        # An earlier run's marker would make a later --resume skip this run's training if it is killed.
        layout.finished_marker.unlink(missing_ok=True)
        write_config(layout.config, stage, config, data=data.counts)
    own = [
        MetricsFile(
            layout.metrics,
            stage,
            resume_step=checkpoint_step(checkpoint) if checkpoint else None,
            main_process=main_process,
        ),
        NanGuard(),
    ]
    trainer = build_trainer(stage, config, data.student, data.tokenizer, data.rows, data.lengths, [*own, *callbacks])
    if not print_logs:  # with progress bars off, transformers prints every log dict instead
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    tokenizer = data.tokenizer
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    accelerator = trainer.accelerator
    save_student(trainer, layout.student)  # every process: a sharded (FSDP, DeepSpeed) student is gathered together
    if stage != "seqkd":
        trainer.save_discriminator(layout.discriminator)  # every process (a sharded one is gathered); main writes
    if accelerator.is_main_process:
        tokenizer.save_pretrained(layout.student)
    accelerator.wait_for_everyone()  # the marker says that every process has written its part
    if accelerator.is_main_process:
        layout.finished_marker.write_text(json.dumps({"stage": stage, **_length(config)}))
    accelerator.wait_for_everyone()  # the next stage, on every process, starts from these folders
    logger.info("%s finished: student in %s", stage, layout.student)
    return StageResult(stage, layout, trainer.state.global_step, list(trainer.state.log_history))


@dataclass
class StageData:
    """A stage's inputs: the student folder, its tokenizer, and the teacher data truncated to the configured lengths
    (``counts``: what was truncated or skipped, recorded in config.yaml)."""

    student: str
    tokenizer: Any
    rows: list
    lengths: list
    counts: dict[str, Any]


def load_stage_data(config: SeqKDConfig | GADConfig) -> StageData:
    """The student and its tokenizer (prompts are rendered with the student's chat template), and the teacher data,
    truncated to the configured lengths (counted, never dropped)."""
    student = resolve_model(config.student)
    require_model_folder(student, "student")
    tokenizer = load_tokenizer(student)
    rows, report = load_training_rows(
        config.train_file,
        prompt_column=config.prompt_column,
        response_column=config.response_column,
        skip_bad_rows=config.skip_bad_rows,
    )
    logger.info(report.summary())
    rows, lengths, truncation = truncate_rows(
        rows, tokenizer, max_prompt_length=config.max_prompt_length, max_response_length=config.max_completion_length
    )
    return StageData(student, tokenizer, rows, lengths, {**vars(truncation), "skipped": report.skipped})


SHORT_RUN_STEPS = 100


def planned_steps(stage: str, config: SeqKDConfig | GADConfig, num_rows: int) -> int:
    """Optimizer steps the stage will take: ``max_steps``, or the epochs over ``num_rows`` prompts (a warmup or GAD
    step takes ``per_device_train_batch_size / num_generations`` prompts per process)."""
    if config.max_steps and config.max_steps > 0:
        return config.max_steps
    samples = config.per_device_train_batch_size * config.gradient_accumulation_steps * max(config.world_size, 1)
    prompts = samples if stage == "seqkd" else max(samples // (config.num_generations or 1), 1)
    return max(1, math.ceil(num_rows * config.num_train_epochs / prompts))


def warn_if_too_short(stage: str, config: SeqKDConfig | GADConfig, num_rows: int) -> None:
    """The paper's learning rates (1e-6, 5e-6 for SeqKD) are for runs of about 1,600 steps; over a few dozen steps
    they leave the student where it started, which looks like a bug. Say so, in one line."""
    paper = next(f.default for f in dataclasses.fields(type(config)) if f.name == "learning_rate")
    steps = planned_steps(stage, config, num_rows)
    if config.learning_rate <= paper and steps < SHORT_RUN_STEPS:
        logger.warning(
            "%s: learning_rate %g is the paper's, tuned for runs of about 1,600 steps; this run has %d, which will "
            "barely move the student: for a short run try learning_rate=1e-4 (as recipes/laptop.yaml does)",
            stage,
            config.learning_rate,
            steps,
        )


def build_trainer(stage: str, config, student: str, tokenizer, rows, lengths, callbacks=()):
    """The TRL trainer of a stage: ``SFTTrainer`` for seqkd, :class:`GADTrainer` (with its discriminator) otherwise."""
    peft_config = lora_config(config)
    if stage == "seqkd":
        from gad.training.seqkd_trainer import SeqKDTrainer

        return SeqKDTrainer(
            model=student,
            args=config,
            train_dataset=sft_dataset(rows, tokenizer),
            processing_class=tokenizer,
            callbacks=list(callbacks),
            peft_config=peft_config,
        )
    from gad.training.gad_trainer import GADTrainer

    discriminator_path = resolve_model(config.discriminator or student)
    discriminator = Discriminator.from_pretrained(
        discriminator_path, max_length=config.discriminator_max_length, seed=config.seed
    )
    return GADTrainer(
        model=student,
        args=config,
        discriminator=discriminator,
        train_dataset=gad_dataset(rows, lengths),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        peft_config=peft_config,
    )


def lora_config(config):
    """A LoRA config for the student when ``lora_r`` is set, else None (full fine-tuning)."""
    if config.lora_r is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def save_student(trainer, folder: Path) -> None:
    """The student as a plain Hugging Face folder; LoRA adapters are merged into the weights first. Called on every
    process (saving a sharded model is a collective); only the main process writes."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model.merge_and_unload().save_pretrained(folder, is_main_process=trainer.accelerator.is_main_process)
    else:
        trainer.save_model(str(folder))


def _quiet_replica() -> None:
    """Every process runs the same code: the main one's log is enough. Errors still show, from any process."""
    logging.getLogger("gad").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" and "Writing model shards", once per process otherwise


def write_config(path: Path, stage: str, config, data: dict) -> None:
    """The resolved config, every default included, so that a run can be repeated exactly."""
    resolved = {"stage": stage, **config.to_dict(), "data": data}
    path.write_text(yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None))


def _length(config) -> dict:
    return {"max_steps": config.max_steps, "num_train_epochs": config.num_train_epochs}


def _finished(layout: StageLayout, config) -> bool:
    """Whether the stage already ran to the end with this length (a longer run resumes from its last checkpoint)."""
    marker = layout.finished_marker
    return marker.exists() and {k: v for k, v in json.loads(marker.read_text()).items() if k != "stage"} == _length(
        config
    )


def _checkpoint_to_resume(layout: StageLayout, resume: bool | str, overwrite: bool) -> Path | None:
    if resume and not isinstance(resume, bool):
        checkpoint = Path(resume)
        if not checkpoint.is_dir() or checkpoint_step(checkpoint) is None:
            raise GadError(f"checkpoint not found: {checkpoint} (expected a folder like RUN/STAGE/checkpoint-50)")
        return checkpoint
    if resume:
        checkpoint = layout.latest_checkpoint()
        if checkpoint is not None:
            logger.info("resuming from %s", checkpoint)
            return checkpoint
        logger.warning("no complete checkpoint in %s: the stage starts from the beginning", layout.root)
        overwrite = True  # what is there is incomplete
    earlier = layout.checkpoints()
    if earlier and not overwrite:
        raise GadError(
            f"{layout.root} holds checkpoints of an earlier run; pass --resume to continue it, --overwrite to start "
            "again, or choose another run_dir"
        )
    for folder in earlier:
        shutil.rmtree(folder)
    if overwrite and layout.metrics.exists():
        layout.metrics.unlink()
    return None
