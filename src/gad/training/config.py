"""Configuration of the three training stages, one dataclass each, in TRL's style.

Each config extends the TRL config its trainer uses (``SFTConfig`` for SeqKD, ``GRPOConfig`` for warmup and GAD), so
every TRL / ``transformers.TrainingArguments`` option (batch sizes, ``report_to``, DeepSpeed, vLLM rollouts, ...) is
available unchanged. The defaults follow the GAD paper's reference run (arXiv:2511.10643, §3.1 and App. A.2):
learning rate 1e-6 for the student and the discriminator in warmup and GAD (5e-6 for SeqKD), gradient clip 0.2, 8
samples per prompt at temperature 0.8, KL weight 0.001 (k3 estimator) to the stage's starting policy, constant
learning rate, AdamW with weight decay 0.01, one update per step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOConfig, SFTConfig

from gad.errors import GadError
from gad.layout import StageLayout
from gad.training.discriminator import LOSSES, REWARD_TRANSFORMS

STUDENT_OBJECTIVES = ("policy_gradient", "teacher_sft")
REWARD_SOURCES = ("discriminator", "style_regex")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class _StudentData:
    """Fields every stage shares: the student checkpoint and the teacher data."""

    student: str | None = field(
        default=None,
        metadata=_help(
            "Student checkpoint: a Hugging Face model folder, 'builtin:tiny-llama' (tests) or 'builtin:smollm2'."
        ),
    )
    train_file: str | None = field(
        default=None,
        metadata=_help(
            "Teacher data: JSONL, JSON, Parquet, CSV or a saved datasets folder with one prompt and one teacher "
            "response per row (e.g. the output of `gad collect`)."
        ),
    )
    prompt_column: str | None = field(
        default=None, metadata=_help("Prompt column; default: the first of content, prompt, messages, instruction.")
    )
    response_column: str | None = field(
        default=None, metadata=_help("Teacher response column; default: the first of teacher_response, response, ...")
    )
    skip_bad_rows: bool = field(
        default=False,
        metadata=_help("Count and skip malformed rows instead of stopping at the first one (the default)."),
    )
    max_prompt_length: int | None = field(
        default=2048, metadata=_help("Prompts longer than this (in student tokens) lose the end of their last message.")
    )
    lora_r: int | None = field(
        default=None,
        metadata=_help(
            "LoRA rank for the student (None: full fine-tuning). The final student/ folder holds merged weights; "
            "checkpoints hold the adapter."
        ),
    )
    lora_alpha: int = field(default=16, metadata=_help("LoRA scaling (alpha)."))
    lora_dropout: float = field(default=0.0, metadata=_help("LoRA dropout."))
    lora_target_modules: list[str] | str = field(
        default="all-linear", metadata=_help("Modules that get LoRA adapters, or 'all-linear'.")
    )
    inputs_pending: bool = field(
        default=False,
        metadata=_help(
            "Set by `gad train`: `init_from` is written by an earlier stage of the same command (or only the config "
            "is printed), so its existence is checked when the stage starts instead of now."
        ),
    )
    recipe_paths: dict[str, str] | None = field(
        default=None,
        metadata=_help(
            "Set by the recipe loader: for each relative path of the recipe, whether it was found in the recipe's "
            "folder or taken relative to the working directory."
        ),
    )


def _validate_common(config) -> None:
    if not config.student:
        raise GadError("no student model: set `student: PATH` in the recipe (or student=PATH on the command line)")
    if not config.train_file:
        raise GadError("no training data: set `train_file: PATH` in the recipe (or train_file=PATH)")
    if config.max_prompt_length is not None and config.max_prompt_length < 1:
        raise GadError(f"max_prompt_length must be positive, got {config.max_prompt_length}")
    if config.lora_r is not None and config.lora_r < 1:
        raise GadError(f"lora_r must be a positive rank (or none for full fine-tuning), got {config.lora_r}")
    # TrainingArguments accepts these and fails (or silently does nothing) only once the model is loaded.
    if not config.learning_rate > 0:
        raise GadError(f"learning_rate must be positive, got {config.learning_rate}")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(config, name) < 1:
            raise GadError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.max_steps == 0 or config.max_steps < -1:
        raise GadError(f"max_steps must be positive (or -1: train num_train_epochs epochs), got {config.max_steps}")
    if config.max_steps == -1 and not config.num_train_epochs > 0:
        raise GadError(f"num_train_epochs must be positive, got {config.num_train_epochs}")
    for name in ("save_steps", "logging_steps"):
        if not getattr(config, name) > 0:
            raise GadError(f"{name} must be positive, got {getattr(config, name)}")


def check_inputs(config) -> None:
    """The checks that need an earlier stage's output; run when the stage starts (see ``inputs_pending``)."""
    init_from = getattr(config, "init_from", None)
    if init_from and not Path(init_from).is_dir():
        raise GadError(f"init_from folder not found: {init_from} (run the warmup stage first, or set student=)")


def _resolve_device_defaults(config) -> None:
    import torch

    # TRL defaults to bf16, which is slower than fp32 on CPUs; use bf16 only where a GPU supports it.
    if config.bf16 is None:
        config.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not config.fp16
    if not torch.cuda.is_available():
        config.dataloader_pin_memory = False  # pinning needs an accelerator; torch warns on every epoch otherwise


@dataclass
class _PaperTraining:
    """Training defaults every stage shares: the paper's reference run (arXiv:2511.10643, App. A.2), verl's defaults."""

    max_grad_norm: float = field(default=0.2, metadata=_help("Gradient clipping (paper: 0.2)."))
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay (verl's default, 0.01)."))
    lr_scheduler_type: str = field(default="constant", metadata=_help("Learning-rate schedule (paper: constant)."))
    logging_steps: float = field(default=1, metadata=_help("Log every N optimizer steps."))
    save_steps: float = field(default=50, metadata=_help("Checkpoint every N optimizer steps (paper: 50)."))
    activation_checkpointing: bool | None = field(
        default=False, metadata=_help("Recompute activations in the backward pass: less memory, slower (GPU runs).")
    )
    gradient_checkpointing: bool | None = field(default=None, metadata=_help("Deprecated alias of the above."))
    report_to: str | list[str] | None = field(
        default="none", metadata=_help("Where else to log: none, tensorboard, wandb, ... (metrics.jsonl always).")
    )


@dataclass
class SeqKDConfig(_PaperTraining, SFTConfig, _StudentData):
    """SeqKD: supervised fine-tuning of the student on the teacher's responses, loss on response tokens only.

    The paper's baseline (learning rate 5e-6 from {1e-6, 5e-6}, 3 epochs, gradient clip 0.2).
    """

    learning_rate: float = field(default=5e-6, metadata=_help("Student learning rate (paper: 5e-6)."))
    max_completion_length: int | None = field(
        default=1536, metadata=_help("Teacher responses longer than this (in student tokens) are cut at the end.")
    )
    num_train_epochs: float = field(default=3.0, metadata=_help("Epochs over the teacher data (paper: 3)."))
    completion_only_loss: bool | None = field(default=True, metadata=_help("Loss on the teacher response only."))

    def __post_init__(self):
        _validate_common(self)
        _resolve_device_defaults(self)
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise GadError(f"max_completion_length must be positive, got {self.max_completion_length}")
        if self.max_prompt_length is not None and self.max_completion_length is not None:
            self.max_length = self.max_prompt_length + self.max_completion_length
        super().__post_init__()


@dataclass
class GADConfig(_PaperTraining, GRPOConfig, _StudentData):
    """GAD's adversarial stage: the student is trained with GRPO on the discriminator's score, and the discriminator
    is trained at every step, on the same fresh samples, to rank the teacher's response above them (Bradley-Terry).

    Per step (the paper's Algorithm 1): sample ``num_generations`` responses per prompt; reward = the discriminator's
    raw score before its update; group-normalised advantages; one discriminator step; one student step.
    With ``student_objective="teacher_sft"`` the same loop is the warmup stage (see :class:`WarmupConfig`).
    """

    discriminator: str | None = field(
        default=None,
        metadata=_help(
            "Discriminator checkpoint: a causal-LM folder (a new scalar head is added; the paper starts from the "
            "student) or a sequence-classification folder from an earlier stage. Default: the student checkpoint. "
            "Another tokenizer than the student's is fine: the discriminator scores text."
        ),
    )
    init_from: str | None = field(
        default=None,
        metadata=_help(
            "Output folder of an earlier stage (normally warmup): student and discriminator start from its "
            "student/ and discriminator/ folders unless `student`/`discriminator` are given."
        ),
    )
    student_objective: str = field(
        default="policy_gradient",
        metadata=_help(
            "How the student learns: 'policy_gradient' (GAD: GRPO on the discriminator's score) or 'teacher_sft' "
            "(warmup: cross-entropy on the teacher response)."
        ),
    )
    d_only_steps: int = field(
        default=0, metadata=_help("Steps at the start in which only the discriminator trains (paper's warmup: 10).")
    )
    discriminator_learning_rate: float = field(default=1e-6, metadata=_help("Discriminator learning rate (1e-6)."))
    discriminator_weight_decay: float = field(default=0.01, metadata=_help("Discriminator AdamW weight decay."))
    discriminator_max_grad_norm: float | None = field(
        default=0.2, metadata=_help("Discriminator gradient clipping (paper: 0.2).")
    )
    discriminator_loss: str = field(
        default="bradley_terry",
        metadata=_help("'bradley_terry' (the paper's) or 'cross_entropy' (the paper's weaker ablation)."),
    )
    discriminator_batch_size: int = field(
        default=16, metadata=_help("Sequences per discriminator forward pass; bounds memory, not the update.")
    )
    discriminator_fused_update: bool = field(
        default=False,
        metadata=_help(
            "Keep the graph of the reward's discriminator pass and back-propagate it in the update: one discriminator "
            "forward pass less per step (8% of a step in benchmarks/step_speed.py), but activations for every "
            "sample are held at once. Off: the update re-scores in chunks of discriminator_batch_size."
        ),
    )
    discriminator_sharding: str = field(
        default="auto",
        metadata=_help(
            "How several processes hold the discriminator: 'auto' (sharded with FSDP2 like the student when the "
            "student trains under FSDP, else replicated), 'replicate' (a whole copy per process) or 'fsdp' (sharded "
            "with FSDP2 over every process, whatever the student). Not under DeepSpeed ZeRO-3."
        ),
    )
    discriminator_trainable_layers: int | None = field(
        default=None,
        metadata=_help(
            "Train only the discriminator's top N transformer layers (plus final norm and score head); embeddings and "
            "lower layers stay frozen. Cuts the update's backward pass and optimizer states to those layers. None: "
            "train all of it (paper)."
        ),
    )
    discriminator_bf16: bool | None = field(
        default=None,
        metadata=_help(
            "Run the discriminator's forward passes (reward, update, d_acc_val) under bf16 autocast; its weights, "
            "gradients and AdamW moments stay fp32 and its scores come back fp32 (the paper's precision). None: "
            "follow the student's bf16."
        ),
    )
    discriminator_activation_checkpointing: bool | None = field(
        default=None,
        metadata=_help(
            "Recompute the discriminator's layer activations in its update's backward pass: less memory, slower; "
            "the same gradients. None: follow the student's (activation_checkpointing, or FSDP's "
            "fsdp_activation_checkpointing)."
        ),
    )
    discriminator_max_length: int = field(
        default=4096, metadata=_help("Longest [prompt; response] the discriminator reads; cut from the left.")
    )
    discriminator_updates: int = field(
        default=1,
        metadata=_help("Discriminator optimizer steps per training step, on the same fresh samples (paper: 1)."),
    )
    discriminator_replay: int = field(
        default=0,
        metadata=_help(
            "Past (prompt, teacher, student sample) triples replayed in each discriminator update, drawn from a "
            "buffer of recent samples, so the discriminator does not forget earlier student behaviour (paper: 0)."
        ),
    )
    replay_buffer_size: int = field(default=4096, metadata=_help("Capacity of the replay buffer, in student samples."))
    student_gate_accuracy: float | None = field(
        default=None,
        metadata=_help(
            "Hold the student's update while the discriminator's accuracy on fresh samples (measured before it "
            "trains on them, averaged with gate_smoothing) is below this value: a near-chance discriminator's "
            "rewards are noise that GRPO's normalisation turns into full-size updates. None: never hold (paper)."
        ),
    )
    gate_smoothing: float = field(
        default=0.9, metadata=_help("Exponential smoothing of that accuracy (0: the last step only).")
    )
    length_warning_ratio: float | None = field(
        default=2.0,
        metadata=_help(
            "Warn when the student's mean response length passes this multiple of the teacher's (the reward-hacking "
            "sign the paper shows for frozen discriminators). None disables the warning."
        ),
    )
    learning_rate: float = field(default=1e-6, metadata=_help("Student learning rate (paper: 1e-6)."))
    beta: float = field(default=0.001, metadata=_help("KL weight to the stage's starting policy (k3 estimator)."))
    num_generations: int | None = field(default=8, metadata=_help("Student samples per prompt (paper: 8)."))
    temperature: float = field(default=0.8, metadata=_help("Sampling temperature (paper: 0.8)."))
    max_completion_length: int | None = field(
        default=1536, metadata=_help("Longest student sample and teacher response, in student tokens (paper: 1536).")
    )
    num_train_epochs: float = field(default=2.0, metadata=_help("Epochs over the prompts (paper: 2 for GAD)."))
    # -- safeguards and diagnostics; all off by default (the paper's setting) --------------------------------------
    reward_transform: str = field(
        default="raw",
        metadata=_help(
            "How the discriminator's score D becomes the student's reward: 'raw' (D, the paper's), 'logsigmoid' "
            "(log sigmoid(D), GAIL's bounded reward: at most 0, so a discriminator that drifts to large scores cannot "
            "hand out large rewards) or 'logsigmoid_vs_teacher' (log sigmoid(D - D_t), D_t the score of the teacher's "
            "answer to the same prompt: the Bradley-Terry log-probability that the sample passes for it, flat once a "
            "sample scores above it, so that out-doing the teacher earns nothing; pair it with scale_rewards=batch or "
            "none, since a per-group scale would blow the flat differences back up)."
        ),
    )
    reward_source: str = field(
        default="discriminator",
        metadata=_help(
            "Where the reward comes from: 'discriminator' (GAD) or 'style_regex' (1 when a sample matches style_regex, "
            "else 0): a sanity check of the RL loop with a known-good reward, not GAD. The discriminator still trains "
            "and logs as usual."
        ),
    )
    teacher_sft_weight: float = field(
        default=0.0,
        metadata=_help(
            "Add this weight times the cross-entropy of each prompt's teacher response to the student's "
            "policy-gradient loss (behaviour cloning beside RL, as in GAIL+BC or InstructGPT's PPO-ptx): the teacher's "
            "answers keep pulling the student towards how the teacher writes while it follows the discriminator, "
            "which may favour one feature of them (a style) beyond the teacher's own use of it. Logged as sft_loss. "
            "0: off (paper)."
        ),
    )
    style_regex: str | None = field(
        default=None,
        metadata=_help(
            "A regular expression (Python re.search) that a teacher-like sample matches, e.g. '(?i)ahoy|matey' for a "
            "pirate persona. Logged as style_match (share of samples that match) whenever set; the reward when "
            "reward_source=style_regex."
        ),
    )
    discriminator_skip_accuracy: float | None = field(
        default=None,
        metadata=_help(
            "Skip the discriminator's update while its accuracy on the step's fresh samples (before any update, "
            "averaged over processes) is above this value: a discriminator that wins every pair gives the student no "
            "usable reward gradient. At most discriminator_max_skips steps in a row; logged as d_skipped. None: "
            "always update (paper)."
        ),
    )
    discriminator_max_skips: int = field(
        default=3, metadata=_help("Most consecutive skipped discriminator updates; the next step updates.")
    )
    discriminator_collapse_accuracy: float | None = field(
        default=None,
        metadata=_help(
            "Flag d_collapse (and warn once in the log) while the fresh-sample accuracy averaged over the last "
            "safeguard_window steps is below this value (0.2 is a good choice): the student fools the discriminator "
            "systematically, usually by a shortcut it rewards. None: off."
        ),
    )
    discriminator_saturation_accuracy: float | None = field(
        default=None,
        metadata=_help(
            "Flag d_saturated (and warn once) while that averaged accuracy is at or above this value (0.99 is a good "
            "choice): the discriminator wins every pair and its scores stop ranking the student's samples. None: off."
        ),
    )
    safeguard_window: int = field(
        default=5, metadata=_help("Steps over which d_collapse and d_saturated average the fresh-sample accuracy.")
    )
    discriminator_val_every: int | None = field(
        default=None,
        metadata=_help(
            "Every N steps, log d_acc_val (and d_score_gap_val): the discriminator's accuracy on a fixed validation "
            "set of prompts it never trains on, each teacher answer against a fresh sample of the current student. "
            "The prompts are discriminator_val_file's, else discriminator_val_size rows held out of train_file "
            "(drawn with seed, removed from training). None: off."
        ),
    )
    discriminator_val_size: int = field(
        default=16, metadata=_help("Validation prompts for d_acc_val (the first ones of discriminator_val_file).")
    )
    discriminator_val_file: str | None = field(
        default=None,
        metadata=_help(
            "Validation data for d_acc_val, in train_file's format (same prompt and response columns). Default: rows "
            "held out of train_file."
        ),
    )
    discriminator_val_temperature: float = field(
        default=0.0,
        metadata=_help(
            "Sampling temperature of the validation samples; 0: greedy, so d_acc_val moves only with the models. A "
            "sampled one draws from its own seeded generator and leaves training's random state alone."
        ),
    )

    def __post_init__(self):
        if self.init_from:
            folder = Path(self.init_from)
            if not self.inputs_pending:
                check_inputs(self)
            self.student = self.student or str(StageLayout(folder).student)
            self.discriminator = self.discriminator or str(StageLayout(folder).discriminator)
        _validate_common(self)
        _resolve_device_defaults(self)
        if self.student_objective not in STUDENT_OBJECTIVES:
            raise GadError(
                f"unknown student_objective '{self.student_objective}'; choose one of {', '.join(STUDENT_OBJECTIVES)}"
            )
        if self.discriminator_loss not in LOSSES:
            raise GadError(f"unknown discriminator_loss '{self.discriminator_loss}'; choose one of {', '.join(LOSSES)}")
        if self.num_generations is not None and self.num_generations < 2:
            raise GadError("num_generations must be at least 2: GRPO compares samples of the same prompt")
        for name in ("discriminator_learning_rate", "discriminator_batch_size", "discriminator_max_length"):
            if getattr(self, name) <= 0:
                raise GadError(f"{name} must be positive, got {getattr(self, name)}")
        if self.discriminator_sharding not in DISCRIMINATOR_SHARDING:
            raise GadError(
                f"unknown discriminator_sharding '{self.discriminator_sharding}'; choose one of "
                f"{', '.join(DISCRIMINATOR_SHARDING)}"
            )
        if self.discriminator_sharding == "fsdp" and self.discriminator_fused_update:
            raise GadError(
                "discriminator_fused_update needs a replicated discriminator: set discriminator_sharding=replicate"
            )
        layers = self.discriminator_trainable_layers
        if layers is not None and layers < 1:
            raise GadError(f"discriminator_trainable_layers must be >= 1 (or none: train all), got {layers}")
        if self.discriminator_bf16 and (gpu := _gpu_without_bf16(self)):
            raise GadError(f"discriminator_bf16 needs bf16 support, which this GPU ({gpu}) lacks: set it to false")
        if self.d_only_steps < 0:
            raise GadError(f"d_only_steps must be >= 0, got {self.d_only_steps}")
        if self.discriminator_updates < 1:
            raise GadError(f"discriminator_updates must be >= 1, got {self.discriminator_updates}")
        if self.discriminator_replay < 0 or self.replay_buffer_size < self.discriminator_replay:
            raise GadError("discriminator_replay must be >= 0 and at most replay_buffer_size")
        if self.student_gate_accuracy is not None and not 0.0 <= self.student_gate_accuracy <= 1.0:
            raise GadError(f"student_gate_accuracy must be in [0, 1], got {self.student_gate_accuracy}")
        if not 0.0 <= self.gate_smoothing < 1.0:
            raise GadError(f"gate_smoothing must be in [0, 1), got {self.gate_smoothing}")
        _validate_safeguards(self)
        if deepspeed_zero_stage(self.deepspeed) == 3:
            raise GadError(ZERO3_UNSUPPORTED)
        super().__post_init__()


DISCRIMINATOR_SHARDING = ("auto", "replicate", "fsdp")
ZERO3_UNSUPPORTED = (
    "the discriminator is not supported under DeepSpeed ZeRO-3 yet: use FSDP (fsdp: full_shard, fsdp_version 2) or "
    "ZeRO stage 1 or 2"
)


def deepspeed_zero_stage(deepspeed: str | dict | None) -> int | None:
    """The ZeRO stage of a ``deepspeed`` TrainingArguments value (a JSON file or a dict), or of an accelerate launch
    with DeepSpeed (``ACCELERATE_DEEPSPEED_ZERO_STAGE``); None without DeepSpeed or when it says none."""
    import json
    import os

    if isinstance(deepspeed, str) and Path(deepspeed).is_file():
        try:
            deepspeed = json.loads(Path(deepspeed).read_text())
        except ValueError:
            return None
    if isinstance(deepspeed, dict):
        stage = (deepspeed.get("zero_optimization") or {}).get("stage")
        return stage if isinstance(stage, int) else None
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
        return int(stage) if stage.isdigit() else None
    return None


def _gpu_without_bf16(config) -> str | None:
    """The name of the GPU the stage will run on when it cannot compute in bf16, else None. Checked as the student's
    bf16 default is (``_resolve_device_defaults``); a CPU run can, under autocast."""
    import torch

    if config.use_cpu or not torch.cuda.is_available() or torch.cuda.is_bf16_supported():
        return None
    return torch.cuda.get_device_name()


def discriminator_compute(config, *, student_bf16: bool, student_checkpointing: bool) -> tuple[bool, bool]:
    """Whether the discriminator computes under bf16 autocast, and whether it checkpoints its activations:
    ``discriminator_bf16`` and ``discriminator_activation_checkpointing``, each None following the student. The
    student's settings are passed in: GADTrainer reads them off its arguments and accelerator, `gad plan` off its
    layout."""
    bf16 = getattr(config, "discriminator_bf16", None)
    checkpointing = getattr(config, "discriminator_activation_checkpointing", None)
    return (
        student_bf16 if bf16 is None else bf16,
        student_checkpointing if checkpointing is None else checkpointing,
    )


def _validate_safeguards(config: GADConfig) -> None:
    for name, value, choices in (
        ("reward_transform", config.reward_transform, tuple(REWARD_TRANSFORMS)),
        ("reward_source", config.reward_source, REWARD_SOURCES),
    ):
        if value not in choices:
            raise GadError(f"unknown {name} '{value}'; choose one of {', '.join(choices)}")
    if config.teacher_sft_weight < 0:
        raise GadError(f"teacher_sft_weight must be >= 0 (0: off), got {config.teacher_sft_weight}")
    if config.teacher_sft_weight and config.student_objective == "teacher_sft":
        raise GadError(
            "teacher_sft_weight mixes the teacher's cross-entropy into the policy-gradient loss; with "
            "student_objective=teacher_sft (warmup) the student already learns from it alone: leave it at 0"
        )
    if config.reward_source == "style_regex" and not config.style_regex:
        raise GadError("reward_source=style_regex needs style_regex: a regular expression teacher-like samples match")
    if config.style_regex is not None:
        try:
            re.compile(config.style_regex)
        except re.error as error:
            raise GadError(f"style_regex is not a valid regular expression: {error}") from None
    for name in ("discriminator_skip_accuracy", "discriminator_collapse_accuracy", "discriminator_saturation_accuracy"):
        value = getattr(config, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise GadError(f"{name} must be in [0, 1] (or none: off), got {value}")
    for name in ("discriminator_max_skips", "safeguard_window", "discriminator_val_size"):
        if getattr(config, name) < 1:
            raise GadError(f"{name} must be at least 1, got {getattr(config, name)}")
    collapse, saturation = config.discriminator_collapse_accuracy, config.discriminator_saturation_accuracy
    if collapse is not None and saturation is not None and collapse >= saturation:
        raise GadError(f"discriminator_collapse_accuracy ({collapse}) must be below the saturation one ({saturation})")
    every, val_file = config.discriminator_val_every, config.discriminator_val_file
    if every is not None and every < 1:
        raise GadError(f"discriminator_val_every must be at least 1 (or none: off), got {every}")
    if val_file and every is None:
        raise GadError("discriminator_val_file is set but discriminator_val_every is not: say how often to measure")
    if val_file and not Path(val_file).exists():
        raise GadError(f"discriminator_val_file not found: {val_file}")
    if (temperature := config.discriminator_val_temperature) < 0:
        raise GadError(f"discriminator_val_temperature must be >= 0 (0: greedy), got {temperature}")


@dataclass
class WarmupConfig(GADConfig):
    """GAD's warmup: one epoch in which the student is fine-tuned on the teacher's responses (SeqKD) while the
    discriminator learns, on fresh samples of the current student, to rank the teacher above them; the discriminator
    trains alone for the first ``d_only_steps`` steps (paper: 10)."""

    student_objective: str = field(default="teacher_sft", metadata=_help("Warmup fine-tunes on teacher responses."))
    d_only_steps: int = field(default=10, metadata=_help("Discriminator-only steps at the start (paper: 10)."))
    beta: float = field(default=0.0, metadata=_help("No KL term in warmup: the student's loss is cross-entropy."))
    num_train_epochs: float = field(default=1.0, metadata=_help("One epoch (paper)."))


STAGES = {"seqkd": SeqKDConfig, "warmup": WarmupConfig, "gad": GADConfig}
