"""GAD against SeqKD on a synthetic oracle: the discriminator-starved regime (issue 5).

The calibration experiment of ``shared/notes/oracle-calibration.md``, rebuilt on gad's real stages. The teacher is a
fixed random Llama ("the oracle") over a vocabulary of plain symbols ``t0 .. t63``; it is reachable only through its
samples (one 16-token answer per training prompt, written as the JSONL that ``gad train`` reads), while the metrics
may look inside it. The student is a smaller random Llama that starts knowing nothing. Per seed:

1. **SeqKD**: ``run_stage("seqkd")`` for up to ``--seqkd-epochs`` epochs with a checkpoint per epoch; the epoch with
   the lowest validation NLL (student's NLL of held-out oracle answers) is the SeqKD result (early stopping, as in
   the calibration's learning-rate sweep).
2. **GAD**: from the SeqKD checkpoint one epoch *before* that one, ``run_stage("warmup")`` for one epoch (SFT on the
   teacher answers, so the student has as many SFT epochs as SeqKD, while the discriminator learns; discriminator
   alone for the first ``--d-only-steps``), then ``run_stage("gad", init_from=warmup)`` for ``--gad-steps`` steps,
   once per variant (the robustness options are GADConfig fields).
3. **Metrics** on test prompts (``--test-prompts`` x ``--eval-samples`` answers per model):
   NLL_oracle, the oracle's per-token NLL of the student's samples (precision); NLL_test, the student's per-token NLL
   of fresh oracle samples (coverage); C2ST, the held-out accuracy of a fresh small transformer trained to tell oracle
   answers from the model's (50 % = indistinguishable; prompts are split between its train, validation and test
   sets); the oracle's entropy is the floor of both NLLs. Students are sampled at T=1; SeqKD also at T=0.8, because
   NLL_oracle alone rewards sharpening (calibration, point 6): C2ST at T=1 is the number to trust.
   Special tokens are masked for every model (oracle and students sample, and are scored, over ``t0 .. t63``) and
   answers have exactly 16 tokens (EOS suppressed by ``min_new_tokens``), so both sides end alike.
   From each GAD run's ``metrics.jsonl``: ``d_acc``, the discriminator's pairwise accuracy on fresh samples measured
   before it trains on them (held out).

The oracle and the data are fixed (``--oracle-seed``); a seed changes the student's and the discriminator's
initialisation, the data order and the sampling. Smaller than the calibration (4,000 prompts, 250 GAD steps) so that
the default run fits in about 25 minutes on a contended 2-core CPU.

    nice -n 10 .venv/bin/python benchmarks/oracle.py [--seeds 0 1] [--variants seqkd gad-paper ...]
        [--out benchmarks/results/oracle.json]

Goal (issue 5, starved regime): every GAD variant no worse than SeqKD beyond seed noise on C2ST and NLL_oracle (do
no harm); better if a robustness option gets there. "Beyond noise": the mean of the per-seed differences (GAD minus the
same seed's SeqKD) above twice its standard error (their spread over seeds, floored by the measurements' own sampling
errors).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import goal, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "oracle.json"
SPECIAL_TOKENS = ("<pad>", "<eos>", "<user>", "<assistant>")
PAD, EOS, USER, ASSISTANT = range(len(SPECIAL_TOKENS))
# A prompt is one user turn; an answer ends with <eos>, written by the template (the discriminator's render) and by
# the SFT target, never sampled (min_new_tokens = answer length).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}<assistant> {{ message['content'] }} <eos>"
    "{% else %}<user> {{ message['content'] }} {% endif %}{% endfor %}{% if add_generation_prompt %}<assistant> "
    "{% endif %}"
)
# GAD variants: GADConfig overrides on top of the shared settings ("gad-paper" keeps the paper's options).
VARIANTS = {
    "gad-paper": {},
    "gad-meanonly": {"scale_rewards": "none"},
    "gad-batchstd": {"scale_rewards": "batch"},
    "gad-gate": {"student_gate_accuracy": 0.6},
    "gad-dsteps": {"discriminator_updates": 3},
    "gad-replay": {"discriminator_replay": 128},
    "gad-robust": {"scale_rewards": "none", "discriminator_updates": 3, "discriminator_replay": 128},
    "gad-paper-lr3e-5": {"learning_rate": 3e-5},  # the calibration's best (nearly still) student learning rate
}
DEFAULT_VARIANTS = ["seqkd", "gad-paper", "gad-meanonly", "gad-gate", "gad-dsteps", "gad-replay", "gad-robust"]
METRICS = ("nll_oracle", "nll_test", "c2st")
logger = logging.getLogger("oracle")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--vocab", type=int, default=64, help="content symbols t0 .. t{vocab-1}")
    add("--prompt-length", type=int, default=8)
    add("--answer-length", type=int, default=16)
    add("--oracle-hidden", type=int, default=128)
    add("--oracle-layers", type=int, default=3)
    add("--oracle-entropy", type=float, default=1.9, help="target per-token entropy of the oracle (nats)")
    add("--oracle-seed", type=int, default=1234, help="seed of the oracle and of all prompts and teacher data")
    add("--student-hidden", type=int, default=64)
    add("--student-layers", type=int, default=2)
    add("--train-prompts", type=int, default=1000)
    add("--val-prompts", type=int, default=200)
    add("--test-prompts", type=int, default=400)
    add("--eval-samples", type=int, default=4, help="answers per test prompt and model (for NLLs and C2ST)")
    add("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add("--variants", nargs="+", default=DEFAULT_VARIANTS, help=f"seqkd and any of {', '.join(VARIANTS)}")
    add("--seqkd-epochs", type=int, default=8, help="most SeqKD epochs (the best validation epoch is kept)")
    add("--sft-lr", type=float, default=3e-3, help="SeqKD and warmup student learning rate")
    add("--sft-batch", type=int, default=32, help="SeqKD prompts per step")
    add("--prompts-per-step", type=int, default=16, help="warmup and GAD prompts per step")
    add("--generations", type=int, default=8, help="GAD samples per prompt (num_generations)")
    add("--warmup-generations", type=int, default=4, help="warmup samples per prompt (it has --sft-batch prompts)")
    add(
        "--warmup",
        choices=("discriminator", "joint"),
        default="discriminator",
        help="discriminator: one discriminator-only epoch from the SeqKD result (GAD starts exactly from SeqKD's "
        "student); joint: the paper's warmup (SFT + discriminator) from the SeqKD checkpoint one epoch earlier",
    )
    add("--d-only-steps", type=int, default=10, help="discriminator-only steps at the start of a joint warmup")
    add("--gad-steps", type=int, default=50)
    add("--lr-g", type=float, default=1e-4, help="GAD student learning rate")
    add("--lr-d", type=float, default=1e-3, help="discriminator learning rate (warmup and GAD)")
    add("--beta", type=float, default=0.001, help="GAD KL weight")
    add("--temperature", type=float, default=1.0, help="warmup and GAD sampling temperature")
    add("--c2st-hidden", type=int, default=32)
    add("--c2st-layers", type=int, default=1)
    add("--c2st-epochs", type=int, default=10)
    add("--threads", type=int, default=1, help="torch threads (1 is fastest on a contended 2-core machine)")
    add("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    add("--workdir", type=Path, default=None, help="keep models and runs here (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v != "seqkd" and v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from seqkd, {', '.join(VARIANTS)}")
    return args


# -- tokenizer, models, oracle ----------------------------------------------------------------------------------------
def build_tokenizer(vocab: int):
    """Word-level tokenizer over the special tokens and ``t0 .. t{vocab-1}``: text and ids map one to one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *(f"t{i}" for i in range(vocab))])}
    backend = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        additional_special_tokens=["<user>", "<assistant>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_llama(folder: Path, tokenizer, *, hidden: int, layers: int, seed: int, max_positions: int) -> Path:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=EOS, pad_token_id=PAD, do_sample=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_lm(folder: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder).eval()


def _masked_log_probs(logits: torch.Tensor, scale: float, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities over the content symbols only (special tokens masked), after scaling by scale/temperature."""
    logits = logits.float() * (scale / temperature)
    logits[..., : len(SPECIAL_TOKENS)] = -math.inf
    return torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def sample(model, contexts: torch.Tensor, length: int, *, generator, scale=1.0, temperature=1.0, batch=512):
    """``length`` content tokens after each context row (KV-cached ancestral sampling); returns [N, length] ids."""
    out = []
    for start in range(0, contexts.size(0), batch):
        ids = contexts[start : start + batch]
        result = model(input_ids=ids, use_cache=True)
        tokens = []
        for step in range(length):
            probs = _masked_log_probs(result.logits[:, -1], scale, temperature).exp()
            token = torch.multinomial(probs, 1, generator=generator)
            tokens.append(token)
            if step < length - 1:
                result = model(input_ids=token, cache=result.cache, use_cache=True)
        out.append(torch.cat(tokens, dim=1))
    return torch.cat(out)


@torch.no_grad()
def answer_nll(model, contexts: torch.Tensor, answers: torch.Tensor, *, scale=1.0, batch=256) -> torch.Tensor:
    """Per-sequence mean NLL (nats/token) of ``answers`` after ``contexts``, and the mean entropy along them."""
    nll, entropy = [], []
    length = answers.size(1)
    for start in range(0, contexts.size(0), batch):
        ids = torch.cat([contexts[start : start + batch], answers[start : start + batch]], dim=1)
        logp = _masked_log_probs(model(input_ids=ids).logits[:, -length - 1 : -1], scale)
        nll.append(-logp.gather(-1, answers[start : start + batch, :, None])[..., 0].mean(dim=1))
        entropy.append(-(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1).mean(dim=1))
    return torch.cat(nll), torch.cat(entropy)


class Oracle:
    """A fixed random Llama whose logits are multiplied by ``scale`` (set so that its entropy hits the target)."""

    def __init__(self, folder: Path, target_entropy: float, contexts: torch.Tensor, length: int, seed: int):
        self.model = load_lm(folder)
        self.scale = 1.0
        self.scale = self._calibrate(target_entropy, contexts, length, seed)
        (folder / "oracle_scale.json").write_text(json.dumps({"logit_scale": self.scale}))

    def _calibrate(self, target: float, contexts, length: int, seed: int) -> float:
        low, high = 0.0, math.log(200.0)  # bisection on log(scale): entropy falls as the logits sharpen
        for _ in range(12):
            self.scale = math.exp((low + high) / 2)
            answers = self.sample(contexts, length, torch.Generator().manual_seed(seed))
            entropy = answer_nll(self.model, contexts, answers, scale=self.scale)[1].mean().item()
            low, high = (low, math.log(self.scale)) if entropy < target else (math.log(self.scale), high)
        return self.scale

    def sample(self, contexts, length, generator):
        return sample(self.model, contexts, length, generator=generator, scale=self.scale)

    def nll(self, contexts, answers):
        return answer_nll(self.model, contexts, answers, scale=self.scale)


def contexts_for(tokenizer, prompts: torch.Tensor) -> torch.Tensor:
    """Each prompt rendered with the chat template (generation prompt included), as the trainers render it."""
    rows = [tokenizer.apply_chat_template(_messages(p), add_generation_prompt=True, return_dict=False) for p in prompts]
    return torch.tensor(rows)


def _text(ids) -> str:
    return " ".join(f"t{int(i) - len(SPECIAL_TOKENS)}" for i in ids)


def _messages(prompt_ids) -> list[dict[str, str]]:
    return [{"role": "user", "content": _text(prompt_ids)}]


# -- the data ---------------------------------------------------------------------------------------------------------
def make_world(args, folder: Path) -> dict:
    """Tokenizer, oracle, prompts and every oracle sample the benchmark uses (fixed by ``--oracle-seed``)."""
    tokenizer = build_tokenizer(args.vocab)
    max_positions = 4 * (args.prompt_length + args.answer_length + 4)
    build_llama(
        folder / "oracle", tokenizer, hidden=args.oracle_hidden, layers=args.oracle_layers, seed=args.oracle_seed,
        max_positions=max_positions,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(args.oracle_seed)
    first = len(SPECIAL_TOKENS)

    def prompts(n):
        return torch.randint(first, first + args.vocab, (n, args.prompt_length), generator=generator)

    calibration = contexts_for(tokenizer, prompts(256))
    oracle = Oracle(folder / "oracle", args.oracle_entropy, calibration, args.answer_length, args.oracle_seed)
    train, val, test = prompts(args.train_prompts), prompts(args.val_prompts), prompts(args.test_prompts)
    train_ctx, val_ctx = contexts_for(tokenizer, train), contexts_for(tokenizer, val)
    test_ctx = contexts_for(tokenizer, test).repeat_interleave(args.eval_samples, dim=0)
    world = {
        "tokenizer": tokenizer,
        "oracle": oracle,
        "train_answers": oracle.sample(train_ctx, args.answer_length, generator),
        "val_ctx": val_ctx,
        "val_answers": oracle.sample(val_ctx, args.answer_length, generator),
        "test_ctx": test_ctx,
        "test_answers": oracle.sample(test_ctx, args.answer_length, generator),
        "test_answers_2": oracle.sample(test_ctx, args.answer_length, generator),  # for the oracle-vs-oracle C2ST
        "train_file": folder / "teacher.jsonl",
        "max_positions": max_positions,
    }
    with world["train_file"].open("w") as handle:
        for prompt, answer in zip(train, world["train_answers"], strict=True):
            handle.write(json.dumps({"prompt": _text(prompt), "teacher_response": _text(answer)}) + "\n")
    nll, entropy = oracle.nll(test_ctx, world["test_answers"])
    wrong, _ = oracle.nll(test_ctx.roll(args.eval_samples, dims=0), world["test_answers"])  # answers, wrong prompts
    uniform = torch.randint(first, first + args.vocab, world["test_answers"].shape, generator=generator)
    world["oracle_stats"] = {
        "logit_scale": oracle.scale,
        "parameters": sum(p.numel() for p in oracle.model.parameters()),
        "entropy": entropy.mean().item(),
        "nll_own_samples": nll.mean().item(),
        "nll_wrong_prompt": wrong.mean().item(),
        "nll_uniform_answers": oracle.nll(test_ctx, uniform)[0].mean().item(),
    }
    return world


# -- metrics ----------------------------------------------------------------------------------------------------------
def c2st(args, world, teacher: torch.Tensor, student: torch.Tensor, seed: int) -> dict:
    """Held-out accuracy of a fresh small transformer telling oracle answers (label 1) from a model's (label 0).

    Test prompts are split 60/15/25 into its train, validation and test sets (every answer of a prompt in one
    set); it trains ``--c2st-epochs`` epochs and the epoch with the best validation accuracy is scored on the test set.
    """
    from transformers import LlamaConfig, LlamaForSequenceClassification

    ctx, k = world["test_ctx"], args.eval_samples
    eos = torch.full((ctx.size(0), 1), EOS)
    sequences = torch.cat([torch.cat([ctx, teacher, eos], 1), torch.cat([ctx, student, eos], 1)])
    labels = torch.cat([torch.ones(ctx.size(0)), torch.zeros(ctx.size(0))])
    prompt_of = torch.arange(ctx.size(0)).div(k, rounding_mode="floor").repeat(2)
    n = args.test_prompts
    cuts = (int(0.6 * n), int(0.75 * n))
    split = {
        "train": prompt_of < cuts[0],
        "val": (prompt_of >= cuts[0]) & (prompt_of < cuts[1]),
        "test": prompt_of >= cuts[1],
    }
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(world["tokenizer"]), hidden_size=args.c2st_hidden, intermediate_size=3 * args.c2st_hidden,
        num_hidden_layers=args.c2st_layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=world["max_positions"], num_labels=1, pad_token_id=PAD,
    )  # fmt: skip
    model = LlamaForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    x_train, y_train = sequences[split["train"]], labels[split["train"]]
    generator = torch.Generator().manual_seed(seed)

    def accuracy(mask):
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(input_ids=chunk).logits[:, 0] for chunk in sequences[mask].split(512)])
        model.train()
        return ((logits > 0).float() == labels[mask]).float().mean().item()

    best = (-1.0, 0.0, 0)
    for epoch in range(1, args.c2st_epochs + 1):
        order = torch.randperm(x_train.size(0), generator=generator)
        for batch in order.split(64):
            logits = model(input_ids=x_train[batch]).logits[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val = accuracy(split["val"])
        if val > best[0]:
            best = (val, accuracy(split["test"]), epoch)
    test_size = int(split["test"].sum())
    return {"c2st": 100 * best[1], "c2st_se": 100 * math.sqrt(0.25 / test_size), "c2st_epoch": best[2]}


def evaluate(args, world, model_folder: Path, seed: int, temperature: float = 1.0) -> dict:
    """NLL_oracle and C2ST of the model's samples at ``temperature``; NLL_test of fresh oracle samples."""
    started = time.perf_counter()
    model = load_lm(model_folder)
    ctx = world["test_ctx"]
    answers = sample(
        model, ctx, args.answer_length, generator=torch.Generator().manual_seed(seed), temperature=temperature
    )
    nll_oracle = world["oracle"].nll(ctx, answers)[0]
    nll_test, entropy = answer_nll(model, ctx, world["test_answers"])
    own_entropy = answer_nll(model, ctx, answers)[1]
    return {
        "nll_oracle": nll_oracle.mean().item(),
        "nll_oracle_se": nll_oracle.std().item() / math.sqrt(len(nll_oracle)),
        "nll_test": nll_test.mean().item(),
        "nll_test_se": nll_test.std().item() / math.sqrt(len(nll_test)),
        "entropy_own_samples": own_entropy.mean().item(),  # at T=1, along the model's own samples
        **c2st(args, world, world["test_answers"], answers, seed),
        "eval_seconds": time.perf_counter() - started,
    }


def validation_nll(world, model_folder: Path) -> float:
    return answer_nll(load_lm(model_folder), world["val_ctx"], world["val_answers"])[0].mean().item()


def discriminator_trace(run_folder: Path) -> dict:
    """The discriminator's held-out accuracy per step (``d_acc``), and the gate and KL when logged."""
    rows = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "d_acc" in r]
    acc = [r["d_acc"] for r in rows]
    tail = acc[-max(1, len(acc) // 5) :]
    out = {
        "d_acc": acc,
        "d_acc_first": statistics.fmean(acc[: max(1, len(acc) // 5)]),
        "d_acc_last": statistics.fmean(tail),
        "d_acc_mean": statistics.fmean(acc),
        "steps_below_half": sum(a < 0.5 for a in acc) / len(acc),
    }
    if any("student_gate_open" in r for r in rows):
        out["gate_open"] = statistics.fmean(r.get("student_gate_open", 0.0) for r in rows)
    kl = [r["kl"] for r in rows if r.get("kl") is not None]
    if kl:
        out["kl_last"] = kl[-1]
    return out


# -- training ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(threads: int):
    """Less chatter from transformers, datasets and gad, and ``threads`` torch threads; all restored afterwards."""
    import datasets
    import transformers

    hf_logging = transformers.utils.logging
    verbosity, gad_level, old_threads = (
        hf_logging.get_verbosity(),
        logging.getLogger("gad").level,
        torch.get_num_threads(),
    )
    bars = datasets.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.getLogger("gad").setLevel(logging.WARNING)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        if bars:
            datasets.enable_progress_bars()
        logging.getLogger("gad").setLevel(gad_level)
        torch.set_num_threads(old_threads)


@contextlib.contextmanager
def _log_stdout(folder: Path):
    """The trainers print every log row to stdout; send them to ``folder/train.log`` instead."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.log").open("a") as handle, contextlib.redirect_stdout(handle):
        yield


def train_seqkd(args, world, folder: Path, init: Path, seed: int) -> dict:
    from gad.training.config import SeqKDConfig
    from gad.training.stages import run_stage

    config = SeqKDConfig(
        output_dir=str(folder), student=str(init), train_file=str(world["train_file"]), seed=seed,
        learning_rate=args.sft_lr, num_train_epochs=args.seqkd_epochs, per_device_train_batch_size=args.sft_batch,
        max_prompt_length=args.prompt_length + 4, max_completion_length=args.answer_length + 2,
        save_strategy="epoch", save_only_model=True, disable_tqdm=True, logging_steps=10,
    )  # fmt: skip
    with _log_stdout(folder):
        checkpoints = run_stage("seqkd", config, overwrite=True).layout.checkpoints()
    epochs = [init, *checkpoints]  # epochs[e] is the student after e epochs
    val = [validation_nll(world, f) for f in epochs]
    best = min(range(1, len(epochs)), key=lambda e: val[e])
    return {"best": epochs[best], "before_best": epochs[best - 1], "best_epoch": best, "val_nll": val}


def _gad_common(args, world, seed: int, prompts: int, generations: int) -> dict:
    return dict(
        train_file=str(world["train_file"]), seed=seed, per_device_train_batch_size=prompts * generations,
        num_generations=generations, max_prompt_length=args.prompt_length + 4,
        max_completion_length=args.answer_length, temperature=args.temperature,
        generation_kwargs={"min_new_tokens": args.answer_length, "suppress_tokens": [PAD, USER, ASSISTANT]},
        discriminator_learning_rate=args.lr_d, discriminator_batch_size=256, save_strategy="no", disable_tqdm=True,
        logging_steps=1,
    )  # fmt: skip


def train_warmup(args, world, folder: Path, student: Path, seed: int) -> Path:
    from gad.training.config import WarmupConfig
    from gad.training.stages import run_stage

    # One epoch over the prompts, --sft-batch prompts per step. "joint": the paper's warmup (SFT as many prompts per
    # step as SeqKD, for one epoch of SFT steps after the discriminator-only steps, whose batches get no SFT);
    # "discriminator": every step is discriminator-only, the student stays the SeqKD result.
    steps = math.ceil(args.train_prompts / args.sft_batch)
    d_only = steps if args.warmup == "discriminator" else args.d_only_steps
    config = WarmupConfig(
        output_dir=str(folder), student=str(student), learning_rate=args.sft_lr, d_only_steps=d_only,
        max_steps=steps + (0 if args.warmup == "discriminator" else d_only),
        **_gad_common(args, world, seed, args.sft_batch, args.warmup_generations),
    )  # fmt: skip
    with _log_stdout(folder):
        return run_stage("warmup", config, overwrite=True).output_dir


def train_gad(args, world, folder: Path, warmup: Path, seed: int, variant: str) -> Path:
    from gad.training.config import GADConfig
    from gad.training.stages import run_stage

    settings = dict(
        output_dir=str(folder), init_from=str(warmup), learning_rate=args.lr_g, beta=args.beta,
        max_steps=args.gad_steps, **_gad_common(args, world, seed, args.prompts_per_step, args.generations),
    )  # fmt: skip
    config = GADConfig(**{**settings, **VARIANTS[variant]})
    with _log_stdout(folder):
        return run_stage("gad", config, overwrite=True).output_dir


def run_seed(args, world, folder: Path, seed: int) -> dict:
    """Every model of one seed, evaluated: init, seqkd (T=1 and 0.8), warmup, and each GAD variant."""
    started = time.perf_counter()
    init = build_llama(
        folder / "init", world["tokenizer"], hidden=args.student_hidden, layers=args.student_layers, seed=seed,
        max_positions=world["max_positions"],
    )  # fmt: skip
    results = {"init": evaluate(args, world, init, seed)}
    clock = time.perf_counter()
    seqkd = train_seqkd(args, world, folder / "seqkd", init, seed)
    train_seconds = time.perf_counter() - clock
    results["seqkd"] = {**evaluate(args, world, seqkd["best"], seed), "epochs": seqkd["best_epoch"]}
    results["seqkd"]["train_seconds"] = train_seconds
    results["seqkd-T0.8"] = evaluate(args, world, seqkd["best"], seed, temperature=0.8)
    info = {"seqkd_val_nll": seqkd["val_nll"], "seqkd_best_epoch": seqkd["best_epoch"]}
    logger.info(
        "seed %d: seqkd done (best epoch %d) at %.0f s", seed, seqkd["best_epoch"], time.perf_counter() - started
    )
    gad_variants = [v for v in args.variants if v in VARIANTS]
    if gad_variants:
        clock = time.perf_counter()
        joint = args.warmup == "joint"
        start = seqkd["before_best"] if joint else seqkd["best"]
        warmup = train_warmup(args, world, folder / "warmup", start, seed)
        train_seconds = time.perf_counter() - clock
        # A discriminator-only warmup leaves the student as SeqKD's: only the discriminator's trace is new.
        results["warmup"] = {**(evaluate(args, world, warmup / "student", seed) if joint else {}),
                             **discriminator_trace(warmup), "train_seconds": train_seconds}  # fmt: skip
        logger.info("seed %d: warmup done at %.0f s", seed, time.perf_counter() - started)
        for variant in gad_variants:
            clock = time.perf_counter()
            run = train_gad(args, world, folder / variant, warmup, seed, variant)
            train_seconds = time.perf_counter() - clock
            results[variant] = {**evaluate(args, world, run / "student", seed), **discriminator_trace(run)}
            results[variant]["train_seconds"] = train_seconds
            logger.info(
                "seed %d: %s done at %.0f s: C2ST %.1f, NLL_oracle %.3f", seed, variant,
                time.perf_counter() - started, results[variant]["c2st"], results[variant]["nll_oracle"],
            )  # fmt: skip
    info["seconds"] = time.perf_counter() - started
    return {"models": results, "info": info}


# -- summary ----------------------------------------------------------------------------------------------------------
def summarise(per_seed: dict[int, dict]) -> dict:
    """Mean, standard deviation and a standard error (seed spread, floored by the measurements' own error)."""
    names = list(next(iter(per_seed.values()))["models"])
    summary = {}
    for name in names:
        runs = [per_seed[s]["models"][name] for s in per_seed if name in per_seed[s]["models"]]
        entry = {}
        for key in (*METRICS, "d_acc_first", "d_acc_last", "gate_open", "entropy_own_samples"):
            values = [r[key] for r in runs if r.get(key) is not None]
            if not values:
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            stat = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
            if key in METRICS:
                own = statistics.fmean(r[f"{key}_se"] for r in runs) / math.sqrt(len(values))
                stat["se"] = max(std / math.sqrt(len(values)), own)
            entry[key] = stat
        summary[name] = entry
    return summary


def goal_check(summary: dict, per_seed: dict) -> dict:
    """Each GAD variant against SeqKD (T=1); lower is better for every metric.

    ``diff``/``margin``: difference of means, against twice its standard error from the summary (unpaired). ``paired``:
    the mean of the per-seed differences (a GAD run starts from its own seed's SeqKD student, so pairing removes the
    seed's SeqKD spread), with a standard error from their spread, floored by the two measurements' own errors; a
    variant is worse or better when the difference passes 2 SE. The verdicts use the paired test.
    """
    if "seqkd" not in summary:
        return {}
    base = summary["seqkd"]
    out = {}
    for name, entry in summary.items():
        if not name.startswith("gad-"):
            continue
        verdict = {}
        for key in ("c2st", "nll_oracle", "nll_test"):
            pairs = [(r["models"][name], r["models"]["seqkd"]) for r in per_seed.values() if name in r["models"]]
            diffs = [a[key] - b[key] for a, b in pairs]
            own = math.sqrt(statistics.fmean(a[f"{key}_se"] ** 2 + b[f"{key}_se"] ** 2 for a, b in pairs))
            spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            se = max(spread, own) / math.sqrt(len(diffs))
            paired = statistics.fmean(diffs)
            verdict[key] = {
                "diff": entry[key]["mean"] - base[key]["mean"],
                "margin": 2 * math.hypot(entry[key]["se"], base[key]["se"]),
                "paired": paired,
                "paired_per_seed": diffs,
                "paired_margin": 2 * se,
                "worse": paired > 2 * se,
                "better": paired < -2 * se,
            }
        verdict["no_harm"] = not verdict["c2st"]["worse"] and not verdict["nll_oracle"]["worse"]
        verdict["better"] = verdict["c2st"]["better"] and not verdict["nll_oracle"]["worse"]
        out[name] = verdict
    return out


def print_table(result: dict) -> None:
    oracle = result["oracle"]
    print(f"\noracle: entropy {oracle['entropy']:.3f} nats/token (the floor); wrong-prompt NLL "
          f"{oracle['nll_wrong_prompt']:.3f}; uniform answers {oracle['nll_uniform_answers']:.3f}; oracle-vs-oracle "
          f"C2ST {result['oracle_c2st']['c2st']:.1f} %")  # fmt: skip
    seeds = len(result["seeds"])
    print(f"\n{'model':<14} {'NLL_oracle':>15} {'NLL_test':>15} {'C2ST %':>13} {'d_acc first/last':>17} {'gate':>5}"
          f"   (mean ± std over {seeds} seeds; test prompts, T=1 unless named)")  # fmt: skip

    def cell(entry, key, digits, width):
        stat = entry.get(key)
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}".rjust(width) if stat else "-".rjust(width)

    for name, entry in result["summary"].items():
        d_acc = (f"{entry['d_acc_first']['mean']:.2f} / {entry['d_acc_last']['mean']:.2f}"
                 if "d_acc_first" in entry else "-")  # fmt: skip
        gate = f"{entry['gate_open']['mean']:.2f}" if "gate_open" in entry else "-"
        print(f"{name:<14} {cell(entry, 'nll_oracle', 3, 15)} {cell(entry, 'nll_test', 3, 15)} "
              f"{cell(entry, 'c2st', 1, 13)} "
              f"{d_acc:>17} {gate:>5}")  # fmt: skip
    if result["goal"]:
        print("\nagainst seqkd (T=1), mean of the per-seed differences (± 2 SE); lower is better:")
        for name, verdict in result["goal"].items():
            parts = [
                f"{k} {v['paired']:+.3f} (±{v['paired_margin']:.3f})" for k, v in verdict.items() if isinstance(v, dict)
            ]
            status = "better" if verdict["better"] else "no harm" if verdict["no_harm"] else "HARM"
            print(f"  {name:<14} {', '.join(parts)}  -> {status}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    with _quiet(args.threads):
        return _main(args, argv)


def _main(args, argv) -> dict:
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gad-oracle-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GAD_CACHE_DIR", str(workdir / "cache"))
    try:
        world = make_world(args, workdir)
        logger.info("oracle ready at %.0f s: %s", time.perf_counter() - started, world["oracle_stats"])
        oracle_c2st = c2st(args, world, world["test_answers"], world["test_answers_2"], args.oracle_seed)
        per_seed = {seed: run_seed(args, world, workdir / f"seed{seed}", seed) for seed in args.seeds}
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(per_seed)
    floor = world["oracle_stats"]["entropy"]
    summary = {"oracle (floor)": {k: {"mean": v, "std": 0.0, "n": 1} for k, v in
                                  (("nll_oracle", floor), ("nll_test", floor), ("c2st", oracle_c2st["c2st"]))},
               **summary}  # fmt: skip
    verdicts = goal_check(summary, per_seed)
    result = {
        "regime": "starved",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "variants": {v: VARIANTS[v] for v in args.variants if v in VARIANTS},
        "oracle": world["oracle_stats"],
        "oracle_c2st": oracle_c2st,
        "seeds": args.seeds,
        "summary": summary,
        "goal": verdicts,
        "goals": {
            f"{name}_no_harm": goal(
                verdict["c2st"]["paired"],
                verdict["no_harm"],
                "C2ST and NLL_oracle not worse than SeqKD beyond 2 paired SE",
            )
            for name, verdict in verdicts.items()
        },
        "runs": {str(s): r for s, r in per_seed.items()},
        "wall_seconds": time.perf_counter() - started,
    }
    print_table(result)
    result = write_result(args.out, "oracle", result, argv)
    print(f"({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
