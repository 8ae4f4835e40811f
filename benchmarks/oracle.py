"""GAD against SeqKD on a synthetic oracle, the discriminator-starved regime (issue 5), with the paper's comparison
protocol.

The calibration experiment of ``shared/notes/oracle-calibration.md``, rebuilt on gad's real stages. The teacher is a
fixed random Llama ("the oracle") over a vocabulary of plain symbols ``t0 .. t63``; it is reachable only through its
samples (one 16-token answer per training prompt, written as the JSONL that ``gad train`` reads), while the metrics
may look inside it. The student is a smaller random Llama that starts knowing nothing.

Protocol (arXiv:2511.10643, §3.1): **equal teacher data and equal passes over it**. Per seed, from the same initial
student:

1. **SeqKD**: ``run_stage("seqkd")`` for ``--seqkd-epochs`` epochs (paper: 3) over the training answers.
2. **GAD**: ``run_stage("warmup")`` for ``--warmup-epochs`` (paper: 1): the paper's joint warmup, student SFT on the
   same answers while the discriminator (initialised from the student) learns, alone for the first
   ``--d-only-steps``; then, once per variant, ``run_stage("gad", init_from=warmup)`` for ``--gad-epochs`` (paper: 2)
   over the same training prompts. The variants (``VARIANTS``) are robustness options, GADConfig overrides; each runs
   its own adversarial stage from the seed's one shared warmup.

Compute is not equalised: a GAD step samples ``--generations`` answers for each of ``--prompts-per-step`` prompts and
trains a discriminator, so wall-clock seconds and step counts are reported beside each method. Both methods are
evaluated every ``--eval-every`` steps (and at the end of each stage) on the **validation** prompts, never the test
set; each method's checkpoint is the one with the best validation score (a GAD variant's curve continues its warmup's,
so its chosen checkpoint may be a warmup one).

Validation score: NLL_oracle + NLL_test (below), lower is better. Not C2ST: on the validation prompts a C2ST would be
scored on the answers to a quarter of them (50 prompts by default, a standard error near 5 points) and trains a
classifier per evaluation; the best of a dozen such points would be chosen mostly for its noise. The two NLLs are
cheap and nearly noiseless: NLL_test scores fixed oracle answers, and NLL_oracle's samples (one per validation prompt)
reuse the same random numbers at every evaluation, a sampling error of a few hundredths of a nat. Their sum checks
precision and coverage at once: sharpening lowers NLL_oracle but raises NLL_test, so the sum is smallest for a student
only slightly sharper than the oracle (``entropy_own_samples``, logged beside it, shows such sharpening). There is no
length guard (persona.py has one): every model's answers have exactly ``--answer-length`` tokens.

Test metrics, for the chosen and the last checkpoint of each method (``--test-prompts`` x ``--eval-samples`` answers
per model): NLL_oracle, the oracle's per-token NLL of the student's samples (precision); NLL_test, the student's
per-token NLL of fresh oracle samples (coverage); C2ST, the held-out accuracy of a fresh small transformer trained to
tell oracle answers from the model's (50 % = indistinguishable; test prompts are split between its train, validation
and test sets); the oracle's entropy is the floor of both NLLs. Students are sampled at T=1; SeqKD's chosen checkpoint
also at T=0.8, because NLL_oracle alone rewards sharpening (calibration, point 6): C2ST at T=1 is the number to trust.
Special tokens are masked for every model (oracle and students sample, and are scored, over ``t0 .. t63``) and answers
have exactly ``--answer-length`` tokens (EOS suppressed by ``min_new_tokens`` in training), so both sides end alike.
From each warmup's and GAD run's ``metrics.jsonl``: ``d_acc``, the discriminator's pairwise accuracy on fresh samples
measured before it trains on them (held out).

The oracle and the data are fixed (``--oracle-seed``); a seed changes the student's and the discriminator's
initialisation, the data order and the sampling. Each seed runs on its own and writes its own JSON; ``merge`` builds
the table over seeds with the **paired** differences (variant - SeqKD, same seed) and their 95 % intervals (t
distribution over seeds)::

    nice python benchmarks/oracle.py run --seeds 0       # -> benchmarks/results/oracle/seed0.json
    nice python benchmarks/oracle.py run --seeds 1 2
    python benchmarks/oracle.py merge                    # -> benchmarks/results/oracle.json
    nice python benchmarks/oracle.py run --seeds 0 --quick   # about 80 s: quick_seed0.json, for iteration

Run time (estimated from a ``--quick`` run, which keeps the models, batch sizes and epochs, at 1 thread on a 2-core
CPU shared with two other benchmarks, nice 19): per SeqKD step 0.12 s, per warmup step 0.37 s, per GAD step 0.44 s
(gad-paper) to 1.4 s (gad-robust), 4.3 s for the six default variants together. A default seed takes 96 SeqKD, 63
warmup and 6 x 126 GAD steps, about 60 validations and 16 test evaluations: about 15 minutes, of which the
adversarial stages are 9. Heavier contention can double it: the previous version of this benchmark measured about
1 s per gad-paper step under another load. ``--quick`` itself: about 80 s.

Goal (issue 5, starved regime): every GAD variant no worse than SeqKD beyond seed noise on C2ST (distance from 50)
and NLL_oracle, at the validation-chosen checkpoints (do no harm): met when the paired 95 % interval's lower bound is
at most 0, i.e. the variant is not significantly worse; better if a robustness option's interval lies below 0. One
seed gives no interval, so no goal is met by one seed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, goal, paired_interval, print_goals, stage_curves, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

OUT_DIR = RESULTS / "oracle"
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
DEFAULT_VARIANTS = ["gad-paper", "gad-meanonly", "gad-gate", "gad-dsteps", "gad-replay", "gad-robust"]
METRICS = ("nll_oracle", "nll_test", "c2st")
# --quick: fewer prompts (so fewer steps, d-only steps and test answers) and denser validation; the models, batch sizes
# and epochs stay, so its seconds per step are the full run's (which is how the run-time note above was estimated).
QUICK_ARGS = {"train_prompts": 96, "val_prompts": 48, "test_prompts": 80, "eval_samples": 2, "d_only_steps": 2,
              "eval_every": 3}  # fmt: skip
# Settings that do not change what a seed measures: seed files that differ only in these may be merged.
NOT_MEASURED = {"command", "seeds", "variants", "out_dir", "workdir", "threads"}
logger = logging.getLogger("oracle")


# -- command line -----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate SeqKD and the GAD variants for some seeds (a JSON each)")
    add = run.add_argument
    add("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add("--quick", action="store_true", help="iteration mode: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in
        QUICK_ARGS.items()) + " (overrides those flags); writes quick_seedN.json")  # fmt: skip
    add("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS), metavar="VARIANT",
        help=f"GAD variants (SeqKD always runs): any of {', '.join(VARIANTS)}")  # fmt: skip
    # the world: oracle, student, data
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
    add("--val-prompts", type=int, default=200, help="validation prompts (one oracle answer each)")
    add("--test-prompts", type=int, default=400)
    add("--eval-samples", type=int, default=4, help="answers per test prompt and model (for NLLs and C2ST)")
    # the protocol
    add("--seqkd-epochs", type=float, default=3.0, help="SeqKD epochs (paper: 3)")
    add("--warmup-epochs", type=float, default=1.0, help="GAD warmup epochs (paper: 1)")
    add("--gad-epochs", type=float, default=2.0, help="GAD adversarial epochs (paper: 2)")
    add("--seqkd-batch", type=int, default=32, help="SeqKD prompts per step")
    add("--prompts-per-step", type=int, default=16, help="warmup and GAD prompts per step")
    add("--generations", type=int, default=8, help="warmup and GAD samples per prompt (num_generations)")
    add("--d-only-steps", type=int, default=10, help="discriminator-only steps at the start of warmup (paper: 10)")
    add("--sft-lr", type=float, default=3e-3, help="SeqKD and warmup student learning rate")
    add("--gad-lr", type=float, default=1e-4, help="adversarial-stage student learning rate")
    add("--disc-lr", type=float, default=1e-3, help="discriminator learning rate (warmup and GAD)")
    add("--beta", type=float, default=0.001, help="GAD KL weight")
    add("--temperature", type=float, default=1.0, help="warmup and GAD sampling temperature")
    add("--set", action="append", default=[], metavar="KEY=VALUE",
        help="a stage setting as on `gad train` (KEY=VALUE for every stage that has it, gad.KEY=VALUE for one); "
        "applied on top of the variants' overrides")  # fmt: skip
    add("--eval-every", type=int, default=16, help="validation every N steps, both methods")
    add("--c2st-hidden", type=int, default=32)
    add("--c2st-layers", type=int, default=1)
    add("--c2st-epochs", type=int, default=10)
    add("--threads", type=int, default=1, help="torch threads (1 is fastest on a contended 2-core machine)")
    add("--workdir", type=Path, default=None, help="keep models and runs here (default: a temp dir, removed)")
    add("--out-dir", type=Path, default=OUT_DIR, help="one seedN.json per seed")

    merge = commands.add_parser("merge", help="the table over seeds, with paired differences and the goals")
    merge.add_argument("inputs", nargs="*", type=Path, help=f"seed JSON files (default: {OUT_DIR}/seed*.json)")
    merge.add_argument("--out", type=Path, default=RESULTS / "oracle.json")
    return parser.parse_args(argv)


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
        "answer_length": args.answer_length,
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


@torch.no_grad()
def validation_metrics(world: dict, model, seed: int) -> dict[str, float]:
    """The validation score of a model in memory (NLL_oracle + NLL_test on the validation prompts, one answer each)
    and its parts. The sampling generator restarts from the same seed at every evaluation, so that two checkpoints
    of a seed are compared on the same random numbers, and training's random state is left alone."""
    was_training = model.training
    model.eval()
    try:
        ctx = world["val_ctx"]
        answers = sample(model, ctx, world["answer_length"], generator=torch.Generator().manual_seed(10_000 + seed))
        nll_oracle = world["oracle"].nll(ctx, answers)[0].mean().item()
        nll_test = answer_nll(model, ctx, world["val_answers"])[0].mean().item()
        entropy = answer_nll(model, ctx, answers)[1].mean().item()
    finally:
        model.train(was_training)
    return {"score": nll_oracle + nll_test, "nll_oracle": nll_oracle, "nll_test": nll_test,
            "entropy_own_samples": entropy}  # fmt: skip


def discriminator_trace(run_folder: Path) -> dict:
    """The discriminator's held-out accuracy per step (``d_acc``), and the gate and KL when logged."""
    rows = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "d_acc" in r]
    acc = [r["d_acc"] for r in rows]
    if not acc:
        return {}
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


def validation_tracker(world: dict, args, seed: int, best_dir: Path):
    """A TrainerCallback that scores the student on the validation prompts every ``--eval-every`` steps (and at the
    end of each stage) and keeps the best-scoring one in ``best_dir``."""
    from transformers import TrainerCallback

    class ValidationTracker(TrainerCallback):
        def __init__(self, best_dir: Path):
            self.best_dir = best_dir
            self.curve: list[dict] = []
            self.best: dict | None = None  # the best point, with the folder that holds its student
            self.offset = 0  # steps of earlier stages of the same method (GAD: warmup, then gad)
            self.stage = ""
            self.seconds = 0.0  # spent validating: part of a stage's wall-clock seconds, not of its training

        def start_stage(self, stage: str, offset: int) -> None:
            self.stage, self.offset = stage, offset

        def fork(self, best_dir: Path) -> ValidationTracker:
            """A copy that continues this curve (each GAD variant continues the shared warmup's) and saves its own
            better checkpoints in ``best_dir``; the warmup's best stays where it is for the other variants."""
            other = copy.copy(self)
            other.best_dir, other.curve = best_dir, [dict(p) for p in self.curve]
            other.best = dict(self.best) if self.best else None
            return other

        def on_step_end(self, args_, state, control, model=None, **kwargs):
            if state.global_step % args.eval_every == 0:
                self.evaluate(state.global_step, model)

        def on_train_end(self, args_, state, control, model=None, **kwargs):
            if not self.curve or self.curve[-1]["step"] != self.offset + state.global_step:
                self.evaluate(state.global_step, model)

        def evaluate(self, step: int, model) -> None:
            clock = time.perf_counter()
            point = {"step": self.offset + step, "stage": self.stage, **validation_metrics(world, model, seed)}
            if self.best is None or point["score"] < self.best["score"]:
                model.save_pretrained(self.best_dir)
                world["tokenizer"].save_pretrained(self.best_dir)
                self.best = {**point, "folder": str(self.best_dir)}
            self.curve.append(point)
            self.seconds += time.perf_counter() - clock
            logger.debug("validation at %s step %d: %.3f", self.stage, point["step"], point["score"])

    return ValidationTracker(best_dir)


def steps_per_epoch(args) -> dict[str, int]:
    """Optimizer steps of one epoch over the training prompts, per stage."""
    adversarial = math.ceil(args.train_prompts / args.prompts_per_step)
    return {"seqkd": math.ceil(args.train_prompts / args.seqkd_batch), "warmup": adversarial, "gad": adversarial}


def stage_configs(args, world: dict, seed: int, init: Path, work: Path) -> dict[str, Any]:
    """Every stage's config, built from one recipe the way `gad train` builds them (``--set`` as its overrides):
    seqkd, warmup, and one gad config per variant (its overrides in the gad section, its own output folder)."""
    from gad.training.recipe import parse_overrides, resolve_stage

    adversarial = dict(
        per_device_train_batch_size=args.prompts_per_step * args.generations, num_generations=args.generations,
        temperature=args.temperature, max_completion_length=args.answer_length,
        # fixed-length answers over the content symbols (an answer's <eos> comes from the template, never sampled)
        generation_kwargs={"min_new_tokens": args.answer_length, "suppress_tokens": [PAD, USER, ASSISTANT]},
        discriminator_learning_rate=args.disc_lr, discriminator_batch_size=256,
    )  # fmt: skip
    recipe: dict[str, Any] = {
        "run_dir": str(work), "student": str(init), "train_file": str(world["train_file"]), "seed": seed,
        "max_prompt_length": args.prompt_length + 4, "save_strategy": "no", "logging_steps": 1, "report_to": "none",
        "use_cpu": True, "disable_tqdm": True,
        "seqkd": {"per_device_train_batch_size": args.seqkd_batch, "learning_rate": args.sft_lr,
                  "num_train_epochs": args.seqkd_epochs, "max_completion_length": args.answer_length + 2},
        "warmup": {**adversarial, "learning_rate": args.sft_lr, "num_train_epochs": args.warmup_epochs,
                   "d_only_steps": args.d_only_steps},
        "gad": {**adversarial, "learning_rate": args.gad_lr, "num_train_epochs": args.gad_epochs, "beta": args.beta},
    }  # fmt: skip
    overrides = parse_overrides(args.set)
    pending = {str(work / "warmup")}  # written by this seed's warmup before any gad stage starts
    configs = {stage: resolve_stage(recipe, stage, overrides, pending=pending) for stage in ("seqkd", "warmup")}
    for variant in args.variants:
        section = {**recipe["gad"], **VARIANTS[variant], "output_dir": str(work / variant)}
        configs[variant] = resolve_stage({**recipe, "gad": section}, "gad", overrides, pending=pending)
    return configs


def run_seed(args, world: dict, work: Path, seed: int) -> dict:
    """SeqKD and every GAD variant from the same initial student, on the same answers; the validation-chosen and the
    last students of each on the test prompts."""
    from gad.training.stages import run_stage

    init = build_llama(
        work / "init", world["tokenizer"], hidden=args.student_hidden, layers=args.student_layers, seed=seed,
        max_positions=world["max_positions"],
    )  # fmt: skip
    configs = stage_configs(args, world, seed, init, work)
    result: dict[str, Any] = {"seed": seed, "steps_per_epoch": steps_per_epoch(args),
                              "reference": {"init": evaluate(args, world, init, seed)}, "methods": {}}  # fmt: skip
    methods: dict[str, dict] = {}

    tracker = validation_tracker(world, args, seed, work / "seqkd-best")
    tracker.start_stage("seqkd", 0)
    clock = time.perf_counter()
    with _log_stdout(work / "seqkd"):
        seqkd = run_stage("seqkd", configs["seqkd"], overwrite=True, callbacks=[tracker])
    methods["seqkd"] = {
        "tracker": tracker,
        "last": seqkd.layout.student,
        "steps": {"seqkd": seqkd.global_step},
        "seconds": time.perf_counter() - clock,
        "curves": stage_curves(seqkd.log_history, "seqkd", 0, CURVE_KEYS),
    }
    logger.info("seed %d: seqkd done, %d steps in %.0f s", seed, seqkd.global_step, methods["seqkd"]["seconds"])

    if args.variants:
        shared = validation_tracker(world, args, seed, work / "warmup-best")
        shared.start_stage("warmup", 0)
        clock = time.perf_counter()
        with _log_stdout(work / "warmup"):
            warmup = run_stage("warmup", configs["warmup"], overwrite=True, callbacks=[shared])
        warmup_seconds = time.perf_counter() - clock
        result["warmup"] = {"steps": warmup.global_step, "train_seconds": warmup_seconds,
                            "validation_seconds": shared.seconds, "validation": shared.curve,
                            "curves": stage_curves(warmup.log_history, "warmup", 0, CURVE_KEYS),
                            "discriminator": discriminator_trace(warmup.output_dir)}  # fmt: skip
        logger.info("seed %d: warmup done, %d steps in %.0f s", seed, warmup.global_step, warmup_seconds)
        for variant in args.variants:
            tracker = shared.fork(work / f"{variant}-best")
            tracker.start_stage("gad", warmup.global_step)
            clock = time.perf_counter()
            with _log_stdout(work / variant):
                gad = run_stage("gad", configs[variant], overwrite=True, callbacks=[tracker])
            seconds = time.perf_counter() - clock
            methods[variant] = {
                "tracker": tracker, "last": gad.layout.student, "steps": {"warmup": warmup.global_step,
                "gad": gad.global_step}, "seconds": warmup_seconds + seconds,
                "curves": stage_curves(gad.log_history, "gad", warmup.global_step, CURVE_KEYS),
                "discriminator": discriminator_trace(gad.output_dir),
            }  # fmt: skip
            logger.info("seed %d: %s done, %d steps in %.0f s", seed, variant, gad.global_step, seconds)

    for name, method in methods.items():
        tracker, steps = method["tracker"], method["steps"]
        last = evaluate(args, world, method["last"], seed)
        best = tracker.best
        # a best point at the last step is the last student itself: evaluating it again would repeat the same numbers
        chosen_folder = method["last"] if best["step"] == sum(steps.values()) else Path(best["folder"])
        chosen = last if chosen_folder == method["last"] else evaluate(args, world, chosen_folder, seed)
        entry = {
            "steps": steps,
            "train_seconds": method["seconds"],  # validation included, the seed's shared warmup included for GAD
            "validation_seconds": tracker.seconds,  # part of train_seconds (so is the warmup's, for GAD)
            "chosen_step": best["step"],
            "chosen_stage": best["stage"],
            "chosen": chosen,
            "last": last,
        }
        if name == "seqkd":
            entry["chosen_T0.8"] = evaluate(args, world, chosen_folder, seed, temperature=0.8)
        if "discriminator" in method:
            entry["discriminator"] = method["discriminator"]
        entry["validation"] = tracker.curve
        entry["curves"] = method["curves"]
        result["methods"][name] = entry
        logger.info("seed %d: %s chosen at step %d: C2ST %.1f, NLL_oracle %.3f (last: %.1f, %.3f)", seed, name,
                    best["step"], chosen["c2st"], chosen["nll_oracle"], last["c2st"], last["nll_oracle"])  # fmt: skip
    return result


# The training metrics a seed file keeps per step.
CURVE_KEYS = ("loss", "sft_loss", "reward", "d_acc", "d_loss", "kl", "student_gate_open")


# -- merge ------------------------------------------------------------------------------------------------------------
def merge(paths: list[Path]) -> dict:
    """The table over seeds (per-seed values, mean, standard deviation), the paired differences variant - SeqKD
    with their 95 % intervals, and the goals."""
    seeds = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    if not seeds:
        raise SystemExit("oracle merge: no seed files (run `oracle.py run --seeds ...` first)")
    setups = [{k: v for k, v in s["config"].items() if k not in NOT_MEASURED} for s in seeds]
    differ = sorted({k for setup in setups for k in setup if setup.get(k) != setups[0].get(k)})
    if differ:  # a quick file, or another world or protocol, would make the mean meaningless
        raise SystemExit(f"oracle merge: the seed files differ in {', '.join(differ)}")
    numbers = [s["seed"] for s in seeds]
    if len(set(numbers)) != len(numbers):
        raise SystemExit(f"oracle merge: a seed appears twice in {numbers}")
    variants = list(dict.fromkeys(v for s in seeds for v in s["methods"] if v != "seqkd"))

    rows: dict[str, list[dict]] = {
        "oracle (floor)": [{"nll_oracle": s["oracle"]["entropy"], "nll_test": s["oracle"]["entropy"],
                            "c2st": s["oracle_c2st"]["c2st"]} for s in seeds],
        "init": [s["reference"]["init"] for s in seeds],
        "seqkd/chosen": [s["methods"]["seqkd"]["chosen"] for s in seeds],
        "seqkd/chosen T=0.8": [s["methods"]["seqkd"]["chosen_T0.8"] for s in seeds],
        "seqkd/last": [s["methods"]["seqkd"]["last"] for s in seeds],
    }  # fmt: skip
    for variant in variants:
        for which in ("chosen", "last"):
            rows[f"{variant}/{which}"] = [s["methods"][variant][which] for s in seeds if variant in s["methods"]]
    table = {name: _over_seeds(runs, (*METRICS, "entropy_own_samples")) for name, runs in rows.items()}
    compute = {name: {"steps": next(s["methods"][name]["steps"] for s in seeds if name in s["methods"]),
                      **_over_seeds([s["methods"][name] for s in seeds if name in s["methods"]],
                                    ("train_seconds", "validation_seconds", "chosen_step"))}
               for name in ("seqkd", *variants)}  # fmt: skip
    discriminator = {name: _over_seeds([s["methods"][name]["discriminator"] for s in seeds if name in s["methods"]],
                                       ("d_acc_first", "d_acc_last", "gate_open"))
                     for name in variants}  # fmt: skip
    discriminator["warmup"] = _over_seeds([s["warmup"]["discriminator"] for s in seeds if "warmup" in s],
                                          ("d_acc_first", "d_acc_last"))  # fmt: skip

    paired: dict[str, dict] = {}
    for variant in variants:
        both = [s for s in seeds if variant in s["methods"]]
        paired[variant] = {
            which: {key: paired_interval([_score(s["methods"][variant][which], key) -
                                          _score(s["methods"]["seqkd"][which], key) for s in both])
                    for key in ("c2st_gap", "nll_oracle", "nll_test")}
            for which in ("chosen", "last")
        }  # fmt: skip
    goals = {}
    for variant in variants:
        for key, what in (("c2st_gap", "|C2ST - 50|"), ("nll_oracle", "NLL_oracle")):
            interval = paired[variant]["chosen"][key]
            goals[f"{variant}_{key}_not_worse"] = goal(
                interval, not_worse(interval), f"{variant} - SeqKD {what} (same seed, chosen checkpoints): the 95 % "
                "interval's lower bound <= 0, i.e. not significantly worse",
            )  # fmt: skip
    return {"regime": "starved", "seeds": numbers, "inputs": [str(p) for p in paths], "config": seeds[0]["config"],
            "variants": {v: VARIANTS.get(v) for v in variants}, "oracle": seeds[0]["oracle"],
            "oracle_c2st": seeds[0]["oracle_c2st"], "table": table, "compute": compute,
            "discriminator": discriminator, "paired": paired, "goals": goals}  # fmt: skip


def not_worse(interval: dict) -> bool:
    """A paired difference (lower is better) is not significantly worse when its 95 % interval reaches 0 or below;
    without an interval (fewer than two seeds) nothing was measured, which meets no goal."""
    return interval["low"] is not None and interval["low"] <= 0


def _score(metrics: dict, key: str) -> float:
    return abs(metrics["c2st"] - 50) if key == "c2st_gap" else metrics[key]


def _over_seeds(runs: list[dict], keys: tuple[str, ...]) -> dict[str, dict]:
    out = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = {"per_seed": values, "mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0}  # fmt: skip
    return out


# -- tables -----------------------------------------------------------------------------------------------------------
def print_seed(result: dict) -> None:
    print(f"\nseed {result['seed']} (test prompts, T=1; oracle entropy {result['oracle']['entropy']:.3f}, "
          f"oracle-vs-oracle C2ST {result['oracle_c2st']['c2st']:.1f} %)")  # fmt: skip
    print(f"{'method':<18} {'chosen at':>10} {'NLL_oracle':>11} {'NLL_test':>9} {'C2ST %':>7}   {'last:':<6}"
          f"{'NLL_oracle':>11} {'NLL_test':>9} {'C2ST %':>7} {'steps':>6} {'train s':>8}")  # fmt: skip
    for name, entry in result["methods"].items():
        chosen, last = entry["chosen"], entry["last"]
        print(f"{name:<18} {entry['chosen_step']:>10} {chosen['nll_oracle']:>11.3f} {chosen['nll_test']:>9.3f} "
              f"{chosen['c2st']:>7.1f}   {'':<6}{last['nll_oracle']:>11.3f} {last['nll_test']:>9.3f} "
              f"{last['c2st']:>7.1f} {sum(entry['steps'].values()):>6} {entry['train_seconds']:>8.0f}")  # fmt: skip


def print_table(merged: dict) -> None:
    oracle = merged["oracle"]
    print(f"\noracle: entropy {oracle['entropy']:.3f} nats/token (the floor); wrong-prompt NLL "
          f"{oracle['nll_wrong_prompt']:.3f}; uniform answers {oracle['nll_uniform_answers']:.3f}")  # fmt: skip
    print(f"\n{'model':<22} {'NLL_oracle':>15} {'NLL_test':>15} {'C2ST %':>13}   (mean ± std over seeds "
          f"{merged['seeds']}; test prompts, T=1 unless named)")  # fmt: skip

    def cell(row, key, digits, width):
        stat = row.get(key)
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}".rjust(width) if stat else "-".rjust(width)

    for name, row in merged["table"].items():
        print(f"{name:<22} {cell(row, 'nll_oracle', 3, 15)} {cell(row, 'nll_test', 3, 15)} "
              f"{cell(row, 'c2st', 1, 13)}")  # fmt: skip
    print("\ncompute (not equalised): steps, training seconds (validation and GAD's shared warmup included)")
    for name, row in merged["compute"].items():
        seconds = row.get("train_seconds", {}).get("mean")
        print(f"  {name:<20} {row['steps']}  {seconds:.0f} s" if seconds is not None else f"  {name:<20} -")
    print("\npaired difference variant - SeqKD, same seed, chosen checkpoints: mean [95 % interval]; lower is better")
    for variant, entry in merged["paired"].items():
        parts = []
        for key in ("c2st_gap", "nll_oracle", "nll_test"):
            i = entry["chosen"][key]
            low = "-" if i["low"] is None else f"{i['low']:+.3f}"
            high = "-" if i["high"] is None else f"{i['high']:+.3f}"
            parts.append(f"{key} {i['mean']:+.3f} [{low}, {high}]")
        print(f"  {variant:<18} {', '.join(parts)}")
    print_goals(merged["goals"])


# -- main -------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    """``run``: {seed: the record written}; ``merge``: the merged record."""
    args = parse_args(argv)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    if args.command == "merge":
        merged = merge(args.inputs or sorted(OUT_DIR.glob("seed*.json")))  # quick_seed*.json are never merged
        print_table(merged)
        return write_result(args.out, "oracle", merged, argv)
    if args.quick:
        for key, value in QUICK_ARGS.items():
            setattr(args, key, value)
    with _quiet(args.threads):
        return _run(args, argv)


def _run(args, argv) -> dict:
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gad-oracle-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GAD_CACHE_DIR", str(workdir / "cache"))
    written = {}
    try:
        world = make_world(args, workdir)
        oracle_c2st = c2st(args, world, world["test_answers"], world["test_answers_2"], args.oracle_seed)
        world_seconds = time.perf_counter() - started
        logger.info("oracle ready in %.0f s: %s", world_seconds, world["oracle_stats"])
        for seed in args.seeds:
            clock = time.perf_counter()
            result = run_seed(args, world, workdir / f"seed{seed}", seed)
            record = {
                "regime": "starved",
                "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "variants": {v: VARIANTS[v] for v in args.variants},
                "oracle": world["oracle_stats"],
                "oracle_c2st": oracle_c2st,
                **result,
                "world_seconds": world_seconds,  # the oracle and its samples, once per process
                "wall_seconds": time.perf_counter() - clock,
                "goals": {},  # judged over seeds, by `merge`
            }
            print_seed(record)
            # a quick run is never merged with full ones (merge reads seed*.json)
            name = f"{'quick_' if args.quick else ''}seed{seed}"
            written[seed] = write_result(args.out_dir / f"{name}.json", "oracle", record, argv)
    finally:
        if args.workdir is None:  # several copies of every model
            shutil.rmtree(workdir, ignore_errors=True)
    return written


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
