"""What a training stage needs before it is launched: per-GPU memory, batch arithmetic, schedule, data columns.

Everything here is arithmetic on configs; nothing is downloaded, loaded or trained. Parameter counts are exact: the
student (``AutoModelForCausalLM``) and the discriminator (``AutoModelForSequenceClassification``, one label, as
:class:`gad.training.discriminator.Discriminator` builds it) are built from their configs on the meta device, which
allocates no memory. A model's config is its folder's ``config.json`` when the folder exists, else the public config
of one of the paper's students (:data:`PAPER_MODELS`), matched by the folder's name.

Memory per GPU, in bytes (``GB`` = 10**9 bytes), is the sum of

- the **states**, held for the whole run: student weights, gradients and AdamW moments (16 bytes a parameter: fp32
  master weights, fp32 gradients, two fp32 moments; FSDP upcasts trainable parameters to fp32, ZeRO-3 keeps fp32
  masters; under DDP the checkpoint's dtype is kept, 8 bytes a parameter for bf16), the frozen reference model when
  ``beta`` > 0 (checkpoint dtype), the discriminator (fp32, as gad loads it: 4 bytes a parameter plus 12 for each
  trained one, under bf16 autocast too); everything divided by the number of GPUs under FSDP / ZeRO-3, the
  discriminator only when sharded;
- the vLLM reservation (``vllm_gpu_memory_utilization`` x GPU memory) when rollouts are colocated and vLLM does not
  sleep between them;
- the largest transient of the step's phases: rollouts, the student's update, the discriminator's update (below).

Activations of one forward/backward pass over ``B`` sequences of ``S`` tokens, a model of hidden size ``h``, ``L``
layers, MLP width ``i``, key/value width ``kv`` (KV heads x head size), ``a`` bytes a value (2 in bf16, 4 in fp32):

- without activation checkpointing: ``B*S*L*(8h + 4kv + 4i)*a`` (what autograd keeps per token and layer in a
  Llama/Qwen2 decoder layer: norms' inputs and outputs, q/k/v, attention output, gate/up/activation/product; within
  10 % of autograd's saved tensors, tested);
- with it: ``B*S*h*L*a`` (each layer's input) ``+ B*S*(8h + 4kv + 4i)*a`` (the one layer recomputed in backward);
- plus the logits of the tokens whose log-probabilities are taken, ``B*T*V*6`` (bf16 logits and an fp32 copy for the
  log-softmax; ``T`` = completion tokens for GRPO, every token for SFT), and under FSDP / ZeRO-3 the all-gathered bf16
  parameters of the unit in use: ``2*(root + 2*layer)`` (embeddings, head and final norm, plus the current and the
  prefetched decoder layer).

The student is planned in bf16. The discriminator computes as GADTrainer runs it: under bf16 autocast or in fp32
(``discriminator_bf16``), checkpointed or not (``discriminator_activation_checkpointing``), each by default as the
student (bf16; checkpointed as the layout says). Under autocast its weights and the residual stream between layers stay
fp32, so a checkpointed layer's input counts 4 bytes a value, and autograd keeps the bf16 copy of each weight a
matrix product used: ``2*layer`` bytes for every layer back-propagated through (``discriminator_trainable_layers``, else
all; once for each reward chunk whose graph the fused update holds), or for the one being recomputed when
checkpointed. Sharded, it all-gathers its fp32 weights: ``4*(root + 2*layer)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gad.errors import GadError

GB = 10**9
GIB = 2**30
SHARDINGS = ("fsdp", "zero3", "ddp")
# Share of a GPU's memory a plan may fill: the rest goes to the CUDA context, NCCL buffers and allocator fragmentation.
USABLE_FRACTION = 0.9
# How GADTrainer holds the discriminator (gad.training.gad_trainer): sharded with FSDP2 like the student when the
# student is under FSDP (discriminator_sharding: auto), else a full copy per process; fp32 weights either way, bf16
# compute and checkpointing as discriminator_bf16 and discriminator_activation_checkpointing say (the student's by
# default).
# The released GPT-5-Chat data (ytz20/LMSYS-Chat-GPT-5-Chat-Response), train split: used for the schedule when the
# recipe's train_file is not there to count.
PAPER_TRAIN_ROWS = 192_014
BF16_LOGIT_BYTES = 2 + 4  # bf16 logits + the fp32 copy of the log-softmax

# The public config.json of the paper's students (and of Qwen2.5-0.5B, the GPU check's shape): what memory depends on.
PAPER_MODELS: dict[str, dict[str, Any]] = {
    "Qwen2.5-0.5B-Instruct": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
    ),
    "Qwen2.5-3B-Instruct": dict(
        model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
    ),
    "Qwen2.5-7B-Instruct": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, max_position_embeddings=32768,
    ),
    "Qwen2.5-14B-Instruct": dict(
        model_type="qwen2", hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
        num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False, max_position_embeddings=32768,
    ),
    "Llama-3.2-3B-Instruct": dict(
        model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True,
        max_position_embeddings=131072,
    ),
    "Llama-3.1-8B-Instruct": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=131072,
    ),
}  # fmt: skip
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


# -- model sizes -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSize:
    """One model as memory sees it: exact parameter counts (built on the meta device) and its shape."""

    name: str
    source: str  # where the config came from
    params: int
    trainable: int
    root_params: int  # outside the decoder layers: embeddings, LM head or score head, final norm
    layer_params: int  # the largest decoder layer
    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    kv_size: int  # key/value heads x head size
    dtype_bytes: int  # the checkpoint's dtype
    max_positions: int | None = None

    @property
    def values_per_token_layer(self) -> int:
        """Values autograd keeps per token and decoder layer (see the module docstring)."""
        return 8 * self.hidden_size + 4 * self.kv_size + 4 * self.intermediate_size

    @property
    def kv_cache_bytes_per_token(self) -> int:
        """bf16 key and value of every layer for one token (vLLM's and generate()'s cache)."""
        return 2 * self.num_layers * self.kv_size * 2


def paper_model_name(path: str | None) -> str | None:
    """The :data:`PAPER_MODELS` entry a model folder or hub id names (``/models/Qwen2.5-7B-Instruct``), if any."""
    if not path:
        return None
    base = Path(str(path).rstrip("/")).name.lower()
    return next((name for name in PAPER_MODELS if name.lower() == base), None)


def load_model_config(path: str | None, fallback: str | None = None):
    """``(transformers config, where it came from)``: the folder's ``config.json`` when it exists, else the public
    config of the paper's model that the folder (or ``fallback``) names."""
    from transformers import AutoConfig

    for candidate in (path, fallback):
        if candidate and (Path(candidate) / "config.json").is_file():
            file = Path(candidate) / "config.json"
            try:
                return AutoConfig.from_pretrained(candidate), str(file)
            except (OSError, ValueError) as error:
                raise GadError(f"cannot read {file}: {error}") from None
    for candidate in (path, fallback):
        name = paper_model_name(candidate)
        if name:
            values = dict(PAPER_MODELS[name])
            config = AutoConfig.for_model(values.pop("model_type"), **values)
            config.dtype = "bfloat16"
            return config, f"the built-in table: {name}'s public config.json ({candidate} not found)"
    known = ", ".join(PAPER_MODELS)
    raise GadError(
        f"no config.json in {path}, and its name is not one of the built-in shapes ({known}): point student= at "
        "the model folder (only its config.json is read)"
    )


def count_model(config, source: str, *, classifier: bool = False, trainable_layers: int | None = None) -> ModelSize:
    """Build the model on the meta device (no memory) and count: a causal LM, or with ``classifier`` the
    discriminator gad builds from the same config (``AutoModelForSequenceClassification``, one label: the backbone
    and a hidden->1 score head, no LM head). ``trainable_layers``: only the top N layers (and the rest above the
    embeddings) train, as ``discriminator_trainable_layers`` does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    config = config.__class__.from_dict(config.to_dict())  # a copy: num_labels must not leak into the caller's
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            if classifier:
                config.num_labels = 1
                model = AutoModelForSequenceClassification.from_config(config)
            else:
                model = AutoModelForCausalLM.from_config(config)
    finally:
        hf_logging.set_verbosity(verbosity)
    layers = _decoder_layers(model)
    layer_sizes = [_numel(layer) for layer in layers]
    params = _numel(model)
    trainable = params
    if trainable_layers is not None:
        if not 1 <= trainable_layers <= len(layer_sizes):
            raise GadError(f"discriminator_trainable_layers must be in 1..{len(layer_sizes)}, got {trainable_layers}")
        frozen = _numel(model.get_input_embeddings()) + sum(layer_sizes[: len(layer_sizes) - trainable_layers])
        trainable = params - frozen
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelSize(
        name=getattr(config, "_name_or_path", "") or type(model).__name__,
        source=source,
        params=params,
        trainable=trainable,
        root_params=params - sum(layer_sizes),
        layer_params=max(layer_sizes, default=0),
        hidden_size=text.hidden_size,
        num_layers=text.num_hidden_layers,
        intermediate_size=getattr(text, "intermediate_size", 4 * text.hidden_size),
        vocab_size=text.vocab_size,
        kv_size=kv_heads * head_dim,
        dtype_bytes=_dtype_bytes(config),
        max_positions=getattr(text, "max_position_embeddings", None),
    )


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() yields a tied weight once


def _decoder_layers(model):
    backbone = getattr(model, model.base_model_prefix, model)
    layers = getattr(backbone, "layers", None) or getattr(backbone, "h", None)
    if layers is None:
        raise GadError(f"cannot find the decoder layers of {type(model).__name__}: gad plan knows decoder-only models")
    return layers


def _dtype_bytes(config) -> int:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return DTYPE_BYTES.get(name, 4)


# -- the run's layout --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How a stage is spread over GPUs."""

    gpus: int
    gpu_memory: int  # bytes per GPU
    sharding: str = "fsdp"  # fsdp | zero3 | ddp
    discriminator_sharded: bool = True
    activation_checkpointing: bool = True

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise GadError(f"--gpus must be at least 1, got {self.gpus}")
        if self.sharding not in SHARDINGS:
            raise GadError(f"unknown sharding '{self.sharding}'; choose one of {', '.join(SHARDINGS)}")
        if self.sharding == "ddp" and self.discriminator_sharded:
            raise GadError("--discriminator-sharded needs --sharding fsdp or zero3: DDP shards nothing")

    @property
    def shards(self) -> int:
        """What a sharded state is divided by."""
        return self.gpus if self.sharding != "ddp" else 1


def parse_memory(text: str | int | float) -> int:
    """``80GB`` -> 80e9 bytes, ``80GiB`` -> 80 x 2**30, a bare number is GB."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([GgTtMm]i?[Bb]?)?\s*", str(text))
    if not match:
        raise GadError(f"--gpu-memory: cannot read '{text}'; write e.g. 80GB or 80GiB")
    value, unit = float(match.group(1)), (match.group(2) or "GB").upper().rstrip("B")
    scale = {"G": GB, "GI": GIB, "T": 10**12, "TI": 2**40, "M": 10**6, "MI": 2**20}[unit]
    if value <= 0:
        raise GadError(f"--gpu-memory must be positive, got '{text}'")
    return int(value * scale)


def layout_from_accelerate(path: str | Path) -> dict[str, Any]:
    """The layout settings an accelerate config file implies: ``gpus``, ``sharding``, ``activation_checkpointing``."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise GadError(f"cannot read the accelerate config {path}: {error}") from None
    kind = str(data.get("distributed_type", "NO")).upper()
    found: dict[str, Any] = {"gpus": int(data.get("num_processes", 1) or 1)}
    if kind == "FSDP":
        fsdp = data.get("fsdp_config") or {}
        found["sharding"] = "fsdp"
        found["activation_checkpointing"] = bool(fsdp.get("fsdp_activation_checkpointing", False))
    elif kind == "DEEPSPEED":
        stage = int((data.get("deepspeed_config") or {}).get("zero_stage", 0))
        if stage != 3:
            raise GadError(f"{path}: ZeRO stage {stage} is not modelled; gad plan knows ZeRO-3, FSDP and DDP")
        found["sharding"] = "zero3"
    else:
        found["sharding"] = "ddp"
    return found


# -- batch arithmetic --------------------------------------------------------------------------------------------------
@dataclass
class BatchPlan:
    """A stage's batch on ``gpus`` processes, following TRL's rules (GRPOConfig.__post_init__ with that world size)."""

    stage: str
    gpus: int
    per_device: int
    accumulation: int
    num_generations: int | None = None
    steps_per_generation: int | None = None
    generation_batch_size: int | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def samples_per_step(self) -> int:
        """Sequences per optimizer step: completions in warmup/gad, teacher answers in seqkd."""
        return self.per_device * self.accumulation * self.gpus

    @property
    def prompts_per_step(self) -> int:
        if self.num_generations is None:
            return self.samples_per_step
        return max(self.samples_per_step // self.num_generations, 1)

    @property
    def samples_per_generation_per_gpu(self) -> int:
        """Completions one process generates (and the discriminator scores) per generation batch."""
        return (self.generation_batch_size or self.samples_per_step) // self.gpus

    def describe(self) -> str:
        head = f"{self.per_device} per GPU x {self.accumulation} accumulation x {self.gpus} GPUs = "
        if self.num_generations is None:
            return head + f"{self.samples_per_step:,} teacher answers per step"
        text = head + (
            f"{self.samples_per_step:,} completions = {self.prompts_per_step:,} prompts x {self.num_generations} "
            "samples per step"
        )
        if self.steps_per_generation != self.accumulation:
            text += (
                f"; a generation batch of {self.generation_batch_size:,} every {self.steps_per_generation} micro-steps"
            )
        return text


def batch_plan(stage: str, config, gpus: int, requested: dict[str, Any] | None = None) -> BatchPlan:
    """The batch of ``stage`` on ``gpus`` processes. ``requested``: the recipe's own ``generation_batch_size`` /
    ``steps_per_generation`` (the config's values were derived for the processes of this machine)."""
    per_device, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
    plan = BatchPlan(stage, gpus, per_device, accumulation)
    if stage == "seqkd":
        return plan
    requested = requested or {}
    generations = config.num_generations
    plan.num_generations = generations
    gbs, spg = requested.get("generation_batch_size"), requested.get("steps_per_generation")
    global_batch = per_device * gpus
    if gbs is not None and spg is not None:
        plan.errors.append("generation_batch_size and steps_per_generation cannot both be set (TRL)")
        return plan
    if gbs is not None:
        gbs = int(gbs)
        if gbs % global_batch:
            plan.errors.append(
                f"generation_batch_size ({gbs}) must be divisible by per_device_train_batch_size x GPUs "
                f"({per_device} x {gpus} = {global_batch}) (TRL)"
            )
        spg = max(gbs // global_batch, 1)
    else:
        spg = int(spg) if spg is not None else accumulation
        gbs = global_batch * spg
    plan.generation_batch_size, plan.steps_per_generation = gbs, spg
    if generations is not None and gbs % generations:
        plan.errors.append(
            f"generation_batch_size ({per_device} x {gpus} GPUs x {spg} = {gbs}) must be divisible by num_generations "
            f"({generations}) (TRL)"
        )
    if generations is not None and global_batch % generations:
        plan.warnings.append(
            f"per_device_train_batch_size x GPUs ({global_batch}) is not a multiple of num_generations "
            f"({generations}): a micro-step holds part of a prompt's group (fine for TRL >= 1.0, whose advantages are "
            "computed over the whole generation batch)"
        )
    if getattr(config, "use_vllm", False) and config.vllm_mode == "colocate":
        tp = config.vllm_tensor_parallel_size
        if gpus % tp:
            plan.errors.append(f"vllm_tensor_parallel_size ({tp}) must divide the number of GPUs ({gpus}) (TRL)")
    return plan


# -- memory ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One line of a plan: what, how many bytes per GPU, and how it was computed."""

    label: str
    bytes: int
    formula: str = ""


@dataclass
class MemoryPlan:
    stage: str
    layout: Layout
    student: ModelSize
    discriminator: ModelSize | None
    states: list[Item]
    persistent: list[Item]  # transient in nature but held through every phase (vLLM without sleep mode)
    phases: dict[str, list[Item]]
    notes: list[str] = field(default_factory=list)

    @property
    def states_bytes(self) -> int:
        return sum(item.bytes for item in self.states)

    @property
    def persistent_bytes(self) -> int:
        return sum(item.bytes for item in self.persistent)

    def phase_bytes(self, name: str) -> int:
        return sum(item.bytes for item in self.phases[name])

    @property
    def peak_phase(self) -> str | None:
        return max(self.phases, key=self.phase_bytes) if self.phases else None

    @property
    def peak_bytes(self) -> int:
        largest = self.phase_bytes(self.peak_phase) if self.phases else 0
        return self.states_bytes + self.persistent_bytes + largest

    @property
    def usable_bytes(self) -> int:
        return int(self.layout.gpu_memory * USABLE_FRACTION)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.usable_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "layout": dataclasses.asdict(self.layout),
            "student": dataclasses.asdict(self.student),
            "discriminator": dataclasses.asdict(self.discriminator) if self.discriminator else None,
            "states": [dataclasses.asdict(i) for i in self.states],
            "persistent": [dataclasses.asdict(i) for i in self.persistent],
            "phases": {name: [dataclasses.asdict(i) for i in items] for name, items in self.phases.items()},
            "states_bytes": self.states_bytes,
            "peak_phase": self.peak_phase,
            "peak_bytes": self.peak_bytes,
            "usable_bytes": self.usable_bytes,
            "fits": self.fits,
            "notes": self.notes,
        }


def estimate_memory(
    stage: str, config, student: ModelSize, discriminator: ModelSize | None, layout: Layout, batch: BatchPlan
) -> MemoryPlan:
    """Per-GPU memory of one stage (see the module docstring for every formula)."""
    states = _student_states(student, layout, config)
    if stage != "seqkd" and getattr(config, "beta", 0.0):
        states.append(_reference_state(student, layout, config.beta))
    if stage != "seqkd" and discriminator is not None:
        states += _discriminator_states(discriminator, layout)
    persistent: list[Item] = []
    phases: dict[str, list[Item]] = {}
    notes: list[str] = []
    if stage != "seqkd":
        rollout, held = _rollout_phase(config, student, layout, batch, notes)
        if held:
            persistent += rollout
        else:
            phases["rollouts"] = rollout
    phases["student update"] = _student_update(stage, config, student, layout)
    if stage != "seqkd" and discriminator is not None:
        phases["discriminator update"] = _discriminator_update(config, discriminator, layout, batch)
    if getattr(config, "lora_r", None):
        notes.append("lora_r is set: the plan counts full fine-tuning of the student (an upper bound)")
    return MemoryPlan(stage, layout, student, discriminator, states, persistent, phases, notes)


def _student_states(student: ModelSize, layout: Layout, config) -> list[Item]:
    params, n = student.params, layout.shards
    # FSDP upcasts trainable parameters to fp32 and ZeRO-3 keeps fp32 masters; DDP trains in the checkpoint's dtype.
    width = 4 if layout.sharding != "ddp" else student.dtype_bytes
    kind = "fp32 master" if width == 4 else "bf16, the checkpoint's dtype under DDP"
    return [
        _per_param(f"student weights ({kind})", params, width, n),
        _per_param(f"student gradients ({'fp32' if width == 4 else 'bf16'})", params, width, n),
        _per_param(f"student AdamW moments (2 x {'fp32' if width == 4 else 'bf16'})", params, 2 * width, n),
    ]


def _reference_state(student: ModelSize, layout: Layout, beta: float) -> Item:
    dtype = "bf16" if student.dtype_bytes == 2 else "fp32"
    return _per_param(
        f"reference model ({dtype}, frozen; beta={beta:g})", student.params, student.dtype_bytes, layout.shards
    )


def _discriminator_states(disc: ModelSize, layout: Layout) -> list[Item]:
    n = layout.shards if layout.discriminator_sharded else 1
    frozen = "" if disc.trainable == disc.params else f"; {disc.trainable:,} trained"
    return [
        _per_param(f"discriminator weights (fp32{frozen})", disc.params, 4, n),
        _per_param("discriminator gradients (fp32)", disc.trainable, 4, n),
        _per_param("discriminator AdamW moments (2 x fp32)", disc.trainable, 8, n),
    ]


def _per_param(label: str, params: int, width: int, shards: int) -> Item:
    return Item(label, math.ceil(params * width / shards), f"{params:,} x {width} B / {shards}")


def _rollout_phase(config, student: ModelSize, layout: Layout, batch: BatchPlan, notes: list[str]):
    """The rollouts' memory and whether it is held through every phase (colocated vLLM that does not sleep)."""
    tokens = _seq_len(config)
    if getattr(config, "use_vllm", False):
        if config.vllm_mode != "colocate":
            return [Item("rollouts: vLLM server on other GPUs", 0, "vllm_mode=server")], False
        budget = int(config.vllm_gpu_memory_utilization * layout.gpu_memory)
        tp = config.vllm_tensor_parallel_size
        weights = math.ceil(student.params * student.dtype_bytes / tp)
        longest = config.vllm_max_model_length or student.max_positions or tokens
        one_sequence = longest * student.kv_cache_bytes_per_token // tp
        if weights + one_sequence > budget:
            notes.append(
                f"vLLM's budget ({budget / GB:.2f} GB) is below its weights / TP ({weights / GB:.2f} GB) plus the KV "
                f"cache of one {longest:,}-token sequence ({one_sequence / GB:.2f} GB): vLLM will refuse to start; "
                "raise vllm_gpu_memory_utilization or vllm_tensor_parallel_size, or set vllm_max_model_length"
            )
        sleeps = bool(config.vllm_enable_sleep_mode)
        formula = (
            f"vllm_gpu_memory_utilization {config.vllm_gpu_memory_utilization:g} x {layout.gpu_memory / GB:.1f} GB"
        )
        label = "rollouts: vLLM colocate " + ("(sleeps between rollouts)" if sleeps else "(held all step)")
        return [Item(label, budget, formula)], not sleeps
    items = []
    if layout.sharding != "ddp":
        full = student.params * 4
        items.append(Item("rollouts: generate() on the gathered student (fp32)", full, f"{student.params:,} x 4 B"))
    sequences = batch.samples_per_generation_per_gpu
    cache = sequences * tokens * student.kv_cache_bytes_per_token
    items.append(
        Item(
            "rollouts: KV cache", cache, f"{sequences} seqs x {tokens} tokens x {student.kv_cache_bytes_per_token:,} B"
        )
    )
    logits = sequences * student.vocab_size * 4
    items.append(Item("rollouts: next-token logits (fp32)", logits, f"{sequences} x {student.vocab_size:,} x 4 B"))
    return items, False


def _seq_len(config) -> int:
    return (config.max_prompt_length or 0) + (config.max_completion_length or 0)


def activation_bytes(
    model: ModelSize, sequences: int, tokens: int, width: int, checkpointing: bool, input_width: int | None = None
) -> Item:
    """Activations of one forward/backward over ``sequences`` x ``tokens`` (module docstring); ``input_width``: bytes
    a value of the layer inputs a checkpointed pass keeps (default ``width``; 4 under autocast of fp32 weights)."""
    per_layer = model.values_per_token_layer
    h, layers = model.hidden_size, model.num_layers
    if checkpointing:
        kept = input_width or width
        value = sequences * tokens * h * layers * kept + sequences * tokens * per_layer * width
        formula = (
            f"B*S*h*L*{'a' if kept == width else kept} + B*S*(8h+4kv+4i)*a = {sequences}*{tokens}*{h}*{layers}*{kept}"
            f" + {sequences}*{tokens}*{per_layer:,}*{width}"
        )
        return Item("activations (checkpointed)", value, formula)
    value = sequences * tokens * layers * per_layer * width
    formula = f"B*S*L*(8h+4kv+4i)*a = {sequences}*{tokens}*{layers}*{per_layer:,}*{width}"
    return Item("activations (not checkpointed)", value, formula)


def _gathered(model: ModelSize, layout: Layout, what: str, width: int = 2) -> list[Item]:
    if layout.sharding == "ddp":
        return []
    value = width * (model.root_params + 2 * model.layer_params)
    return [
        Item(
            f"{what} all-gathered parameters ({'bf16' if width == 2 else 'fp32'})",
            value,
            f"{width}*(root + 2*layer) = {width}*({model.root_params:,} + 2*{model.layer_params:,})",
        )
    ]


def _student_update(stage: str, config, student: ModelSize, layout: Layout) -> list[Item]:
    sequences, tokens = config.per_device_train_batch_size, _seq_len(config)
    items = [activation_bytes(student, sequences, tokens, 2, layout.activation_checkpointing)]
    # GRPO takes log-probabilities of the completion tokens only; SFT's loss runs over every position.
    positions = tokens if stage == "seqkd" else (config.max_completion_length or 0)
    logits = sequences * positions * student.vocab_size * BF16_LOGIT_BYTES
    items.append(Item("logits", logits, f"B*T*V*6 = {sequences}*{positions}*{student.vocab_size:,}*6"))
    return items + _gathered(student, layout, "student")


def _discriminator_update(config, disc: ModelSize, layout: Layout, batch: BatchPlan) -> list[Item]:
    tokens = min(_seq_len(config), config.discriminator_max_length)
    # The fused update keeps the graph of every sample the process scored; otherwise chunks of discriminator_batch_size.
    fused = config.discriminator_fused_update
    sequences = batch.samples_per_generation_per_gpu if fused else config.discriminator_batch_size
    bf16, checkpointing = discriminator_settings(config, layout)
    # Under autocast the residual stream between layers stays fp32 (the embeddings' output, plus each layer's): the
    # inputs a checkpointed pass keeps are 4 bytes a value whatever the compute.
    item = activation_bytes(disc, sequences, tokens, 2 if bf16 else 4, checkpointing, input_width=4)
    items = [Item(item.label.replace("(", "(bf16 autocast, " if bf16 else "(fp32, ", 1), item.bytes, item.formula)]
    if bf16:
        # The bf16 copy autocast makes of each weight for its matrix product, which autograd keeps for the backward:
        # one set per forward pass whose graph is held, so the fused update's every reward chunk keeps its own.
        layers = 1 if checkpointing else (getattr(config, "discriminator_trainable_layers", None) or disc.num_layers)
        passes = math.ceil(sequences / config.discriminator_batch_size) if fused and not checkpointing else 1
        how = "1 (the recomputed one)" if checkpointing else "layers trained" + (" x reward chunks" if fused else "")
        items.append(
            Item(
                "bf16 weight copies kept for backward (autocast)",
                2 * layers * disc.layer_params * passes,
                f"2*layer*{how} = 2*{disc.layer_params:,}*{layers}" + (f"*{passes}" if passes > 1 else ""),
            )
        )
    if layout.discriminator_sharded:
        items += _gathered(disc, layout, "discriminator", width=4)  # no FSDP mixed precision: its fp32 weights
    return items


def discriminator_settings(config, layout: Layout) -> tuple[bool, bool]:
    """(bf16 autocast, activation checkpointing) of the discriminator as GADTrainer will run it: its options, each
    None following the student, which the plan has in bf16 (a GPU's ``bf16`` default) and checkpointed as ``layout``
    says."""
    from gad.training.config import discriminator_compute

    return discriminator_compute(config, student_bf16=True, student_checkpointing=layout.activation_checkpointing)


# -- schedule ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSchedule:
    stage: str
    steps: int
    steps_per_epoch: int
    epochs: float
    from_max_steps: bool


def stage_schedule(stage: str, config, batch: BatchPlan, rows: int) -> StageSchedule:
    """Optimizer steps of a stage over ``rows`` prompts (ceil, as gad.training.stages.planned_steps counts)."""
    per_epoch = max(1, math.ceil(rows / batch.prompts_per_step))
    if config.max_steps and config.max_steps > 0:
        return StageSchedule(stage, config.max_steps, per_epoch, config.max_steps / per_epoch, True)
    steps = max(1, math.ceil(rows * config.num_train_epochs / batch.prompts_per_step))
    return StageSchedule(stage, steps, per_epoch, config.num_train_epochs, False)


# -- data --------------------------------------------------------------------------------------------------------------
@dataclass
class DataCheck:
    path: str
    rows: int | None = None
    columns: list[str] = field(default_factory=list)
    prompt_column: str | None = None
    response_column: str | None = None
    errors: list[str] = field(default_factory=list)


def check_data(path: str, prompt_column: str | None = None, response_column: str | None = None) -> DataCheck:
    """The columns and row count of a training file, reading only what that needs: a Parquet file's schema and first
    rows, a JSONL file's line count and first rows; other formats are read whole by gad's loader."""
    from gad.data import PROMPT_COLUMNS, RESPONSE_COLUMNS

    check = DataCheck(path)
    file = Path(path)
    if not file.exists():
        check.errors.append(f"train_file not found: {path}")
        return check
    try:
        first = _first_rows(file, check)
    except (OSError, ValueError) as error:
        check.errors.append(f"cannot read {path}: {error}")
        return check
    if first is None:  # read whole by gad's own loader
        return check
    check.prompt_column = prompt_column or next((c for c in PROMPT_COLUMNS if c in check.columns), None)
    check.response_column = response_column or next((c for c in RESPONSE_COLUMNS if c in check.columns), None)
    if check.prompt_column not in check.columns:
        looked = prompt_column or ", ".join(PROMPT_COLUMNS)
        check.errors.append(f"no prompt column (looked for {looked}; found {', '.join(check.columns)})")
    if check.response_column is None and check.prompt_column != "messages":
        check.errors.append(f"no response column (looked for {', '.join(RESPONSE_COLUMNS)})")
    elif check.response_column is not None and check.response_column not in check.columns:
        check.errors.append(f"no response column '{check.response_column}' (found {', '.join(check.columns)})")
    if not check.errors:
        _check_rows(first, check)
    return check


def _first_rows(file: Path, check: DataCheck, count: int = 3) -> list[dict] | None:
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(file)
        except Exception as error:  # pyarrow raises several unrelated types for files that are not Parquet
            raise ValueError(f"not a Parquet file ({error})") from None
        check.rows = parquet.metadata.num_rows
        check.columns = list(parquet.schema_arrow.names)
        batch = next(parquet.iter_batches(batch_size=count), None)
        return batch.to_pylist() if batch is not None else []
    if file.suffix == ".jsonl":
        rows: list[dict] = []
        lines = 0
        with file.open("rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                lines += 1
                if len(rows) < count:
                    rows.append(json.loads(raw))
        check.rows = lines
        check.columns = sorted({key for row in rows for key in row})
        return rows
    from gad.data import load_training_rows
    from gad.errors import DataError

    try:
        loaded, _ = load_training_rows(file)
    except DataError as error:
        check.errors.append(str(error))
        return None
    check.rows = len(loaded)
    return None


def _check_rows(rows: list[dict], check: DataCheck) -> None:
    from gad.data import to_messages, to_response
    from gad.errors import DataError

    for number, row in enumerate(rows, start=1):
        try:
            to_messages(row[check.prompt_column], where=f"row {number}", field_name=check.prompt_column)
            if check.response_column:
                to_response(row[check.response_column], where=f"row {number}", field_name=check.response_column)
        except DataError as error:
            check.errors.append(str(error))
            return
