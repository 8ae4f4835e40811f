"""Benchmark, informative regime: can a student learn a teacher's *hidden* style from its answers alone?

The teacher is a pretrained chat model (default SmolLM2-135M-Instruct) answering under a hidden system prompt that a
checker can verify (default ``--style demo``: the persona of ``make demo``, answers that start with "Ahoy" and say
"matey"). The student is the same pretrained model *without* that prompt; it sees only (prompt, teacher answer) pairs
from ``dolly_train``. SeqKD and GAD
(warmup + adversarial stage) get the same teacher answers (equal teacher budget) and the same training wall-clock.
Tested on out-of-distribution prompts (``vicuna80``, ``selfinst252``):

- C2ST: accuracy of a fresh classifier (logistic regression on hashed word 1-2-grams) that tells teacher answers from
  student answers, trained on half of the test prompts and scored on the other half (several random halvings);
  50 % = indistinguishable. The main number.
- style pass rate (the checker), ROUGE-L against the teacher's answer to the same prompt, mean length (words);
- the discriminator's held-out pairwise accuracy through training (``d_acc``: measured on fresh student samples before
  the discriminator trains on them) and, at the end, on the test prompts.

The teacher is run in-process (the same weights plus the hidden system prompt), not through ``gad.serve``: on a shared
2-core CPU an HTTP round trip per answer would only add overhead; the student never sees anything but the answers.

CPU-scale defaults (about 35 min on 2 cores), the training settings of recipes/demo-default.yaml: 96 train prompts,
60 test prompts x 2 samples, answers of at most 40 tokens, full fine-tuning, a discriminator made of SmolLM2's first 4
layers, 300 s of training per method and seed.

    .venv/bin/python benchmarks/persona.py [--seeds 0 1] [--train-seconds 300] [--out benchmarks/results/persona.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import statistics
import tempfile
import time
import zlib
from pathlib import Path

from _common import goal, print_goals, write_result

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "persona.json"

# Built-in styles: (hidden system prompt, checker regex, searched case-insensitively in the answer).
# SmolLM2-135M ignores a bare format instruction (an answer prefix, ALL CAPS: 0 of 12 in a probe) and follows a bare
# pirate persona on about a quarter of the prompts ("pirate": the regime stays barely informative, see the README).
# With three example exchanges in the hidden prompt it follows a checkable format on most prompts: "demo", the
# persona of `make demo`, read from recipes/demo-default.yaml so that both always use the same teacher.
STYLES = {
    "pirate": (
        "You are a pirate. Always start your answer with 'Arr!' and speak like a pirate.",
        r"\b(arr+|ahoy|matey|mateys|ye|yer|aye|avast|pirates?|treasures?|booty|plunder\w*|scallywags?|landlubbers?|"
        r"hearties|buccaneers?|doubloons?|shipmates?|captain|seas|sail\w*|shiver|timbers)\b",
    ),
}


def style(name: str, regex: str | None = None):
    """(hidden system prompt, checker: text -> bool, its description) of a built-in style; ``regex`` replaces the
    checker with a case-insensitive regex search."""
    if name in STYLES:
        system, pattern = STYLES[name]
    else:
        from gad.demo.presets import load_preset
        from gad.metrics import style_pass

        spec = load_preset("default")
        system, pattern = spec.teacher_system, None
        if regex is None:
            return (
                system,
                lambda text: style_pass(text, spec.style_starts_with, spec.style_contains),
                (f"the demo's check: {spec.style_description}"),
            )
    compiled = re.compile(regex or pattern, re.IGNORECASE)
    return system, lambda text: bool(compiled.search(text)), f"regex {compiled.pattern}"


GOAL_C2ST_POINTS = 5.0

log = logging.getLogger("persona")


# ---------------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_argument_group("teacher, student, style")
    g.add_argument(
        "--model",
        default="smollm2",
        help="teacher = student start: 'smollm2', a HF folder, or 'builtin:tiny-llama' (smoke tests)",
    )
    g.add_argument("--style", default="demo", choices=["demo", *sorted(STYLES)], help="built-in persona and checker")
    g.add_argument("--system-prompt", default=None, help="hidden teacher system prompt (overrides --style's)")
    g.add_argument("--checker-regex", default=None, help="style checker: a regex searched case-insensitively")
    g.add_argument(
        "--filter-teacher",
        action="store_true",
        help="train only on teacher answers that pass the checker (dropped ones are counted). Off by "
        "default: the test-time teacher is unfiltered, and C2ST compares against it",
    )
    g.add_argument(
        "--disc-layers",
        type=int,
        default=4,
        help="discriminator = the model's first K layers + a scalar head (0: the full student, as in the paper)",
    )
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=os.environ.get("GAD_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    g.add_argument("--train-set", default="dolly_train")
    g.add_argument("--test-sets", nargs="+", default=["vicuna80", "selfinst252"])
    g.add_argument("--train-prompts", type=int, default=96)
    g.add_argument("--teacher-samples", type=int, default=1, help="teacher answers per train prompt")
    g.add_argument("--test-prompts", type=int, default=30, help="per test set")
    g.add_argument("--eval-samples", type=int, default=2, help="answers per test prompt, teacher and student")
    g.add_argument("--max-prompt-chars", type=int, default=200, help="keep prompts at most this long")
    g.add_argument("--max-new-tokens", type=int, default=40, help="answer length cap (teacher, student, rollouts)")
    g.add_argument("--temperature", type=float, default=0.8, help="teacher, rollout and evaluation sampling")
    g = p.add_argument_group("training (per method and seed)")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    g.add_argument(
        "--train-seconds",
        type=float,
        default=300.0,
        help="training-loop wall-clock per method and seed (GAD: warmup + adversarial stage)",
    )
    g.add_argument("--seqkd-batch", type=int, default=8, help="SeqKD prompts per step")
    g.add_argument("--sft-lr", type=float, default=1e-4, help="SeqKD and warmup student learning rate")
    g.add_argument("--gad-lr", type=float, default=1e-5, help="GAD stage student learning rate")
    g.add_argument("--disc-lr", type=float, default=5e-5)
    g.add_argument("--disc-updates", type=int, default=1, help="discriminator steps per training step")
    g.add_argument("--prompts-per-step", type=int, default=4, help="warmup/GAD prompts per step")
    g.add_argument("--generations", type=int, default=4, help="warmup/GAD samples per prompt")
    g.add_argument(
        "--gad-warmup",
        choices=["sft", "joint"],
        default="sft",
        help="GAD's warmup before the adversarial stage. sft: the generator warmup is SFT on the teacher answers with "
        "SeqKD's trainer and settings for --warmup-epochs, then the discriminator trains alone for --d-only-steps "
        "steps on the warmed student's samples (the paper's two warmups, one after the other). joint: gad's warmup "
        "stage (student SFT and discriminator together, rollouts every step; discriminator alone for the first "
        "--d-only-steps), at most --warmup-steps",
    )
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="sft warmup: epochs over the answers (paper: 1)")
    g.add_argument("--warmup-steps", type=int, default=6, help="joint warmup steps (at most; the budget is shared)")
    g.add_argument("--d-only-steps", type=int, default=4, help="discriminator-only warmup steps")
    g.add_argument("--beta", type=float, default=0.0, help="GAD KL weight (0 saves the reference forward on CPU)")
    g.add_argument("--lora-r", type=int, default=0, help="student LoRA rank (0: full fine-tuning)")
    g.add_argument("--lora-alpha", type=int, default=32)
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--c2st-splits", type=int, default=5, help="random halvings of the test prompts")
    g.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is several times faster than 2 on a contended 2-core machine)",
    )
    g.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, deleted)")
    g.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# data and teacher


def load_set(data_dir: Path, name: str, count: int, max_chars: int, seed: int):
    from gad.data import load_prompts
    from gad.evaluation.prompt_sets import resolve_prompt_set

    path = data_dir / f"{name}.jsonl"
    if not path.is_file():
        path = resolve_prompt_set(name)[1]
    rows, _ = load_prompts(path)
    rows = [r for r in rows if len(r.messages) == 1 and len(r.messages[0]["content"]) <= max_chars]
    random.Random(seed).shuffle(rows)
    if len(rows) < count:
        log.warning("%s: only %d prompts of at most %d characters (asked for %d)", name, len(rows), max_chars, count)
    return [{"id": f"{name}/{r.id}", "prompt": r.messages[0]["content"]} for r in rows[:count]]


def answer(model_dir, prompts, samples, system, args, seed, desc):
    """``samples`` sampled answers per prompt: rows {id, prompt, sample, response, tokens, stop}."""
    from gad.data import PromptRow
    from gad.evaluation.generate import generate_answers

    rows = []
    for p in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": p["prompt"]}
        ]
        rows += [PromptRow(f"{p['id']}#{k}", messages) for k in range(samples)]
    out = generate_answers(
        model_dir, rows, batch_size=8, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        seed=seed, device="cpu", progress=False, desc=desc,
    )  # fmt: skip
    return [
        {
            "id": r["id"].rsplit("#", 1)[0],
            "prompt": r["prompt"],
            "sample": int(r["id"].rsplit("#", 1)[1]),
            "response": r["response"],
            "tokens": r["response_tokens"],
            "stop": r["finish_reason"] == "stop",
        }
        for r in out
    ]


# ---------------------------------------------------------------------------------------------------------------------
# training


def time_budget_callback(seconds: float):
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stops training once the loop has run ``seconds`` (checked after each optimizer step)."""

        def __init__(self):
            self.start = None
            self.elapsed = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            self.elapsed = time.monotonic() - self.start
            if self.elapsed >= seconds:
                control.should_training_stop = True

    return TimeBudget()


def train(stage, config, seconds):
    """One stage through the library's stage runner, with a wall-clock budget; returns (output folder, training-loop
    seconds, steps, log history)."""
    from gad.training.stages import run_stage

    budget = time_budget_callback(seconds)
    result = run_stage(stage, config, overwrite=True, callbacks=[budget])
    history = [h for h in result.log_history if "train_runtime" not in h]
    return result.output_dir, budget.elapsed, result.global_step, history


def common_config(args, seed, student, train_file, output_dir):
    return dict(
        output_dir=str(output_dir), student=str(student), train_file=str(train_file), seed=seed,
        max_prompt_length=256, max_completion_length=args.max_new_tokens, lora_r=args.lora_r or None,
        lora_alpha=args.lora_alpha, max_steps=10**6, save_strategy="no", logging_steps=1, report_to="none",
        use_cpu=True, disable_tqdm=True,
    )  # fmt: skip


def gad_config(args, seed, student, disc, train_file, output_dir, stage):
    from gad.training.config import GADConfig, WarmupConfig

    extra = dict(
        discriminator=str(disc), per_device_train_batch_size=args.prompts_per_step * args.generations,
        num_generations=args.generations, temperature=args.temperature,
        discriminator_learning_rate=args.disc_lr, discriminator_updates=args.disc_updates,
        discriminator_batch_size=16, discriminator_max_length=512,
    )  # fmt: skip
    base = common_config(args, seed, student, train_file, output_dir)
    if stage == "warmup":
        return WarmupConfig(**{**base, "max_steps": args.warmup_steps}, **extra, learning_rate=args.sft_lr,
                            d_only_steps=args.d_only_steps)  # fmt: skip
    return GADConfig(**base, **extra, learning_rate=args.gad_lr, beta=args.beta)


def seqkd_config(args, seed, student, train_file, output_dir):
    from gad.training.config import SeqKDConfig

    return SeqKDConfig(
        **common_config(args, seed, student, train_file, output_dir),
        per_device_train_batch_size=args.seqkd_batch, learning_rate=args.sft_lr,
    )  # fmt: skip


def run_seqkd(args, seed, student, train_file, work):
    out, loop, steps, history = train("seqkd", seqkd_config(args, seed, student, train_file, work / "seqkd"),
                                      args.train_seconds)  # fmt: skip
    return out / "student", {"train_seconds": loop, "steps": steps, "history": _slim(history)}


def run_gad(args, seed, student, disc, train_file, work):
    sft_loop = sft_steps = 0
    sft_hist = []
    if args.gad_warmup == "sft":
        # Generator warmup: exactly SeqKD's trainer and settings (so, with the same seed, SeqKD's first steps).
        rows = sum(1 for line in Path(train_file).read_text().splitlines() if line.strip())
        config = seqkd_config(args, seed, student, train_file, work / "gad-sft")
        config.max_steps = max(1, math.ceil(args.warmup_epochs * rows / args.seqkd_batch))
        sft, sft_loop, sft_steps, sft_hist = train("seqkd", config, args.train_seconds)
        student = sft / "student"
    warm_config = gad_config(args, seed, student, disc, train_file, work / "warmup", "warmup")
    if args.gad_warmup == "sft":  # discriminator warmup only: the student is frozen throughout
        warm_config.max_steps = warm_config.d_only_steps = args.d_only_steps
    warm, warm_loop, warm_steps, warm_hist = train("warmup", warm_config, max(args.train_seconds - sft_loop, 1e-3))
    warm_loop += sft_loop
    remaining = max(args.train_seconds - warm_loop, 1e-3)  # at least one adversarial step
    out, loop, steps, history = train(
        "gad",
        gad_config(args, seed, warm / "student", warm / "discriminator", train_file, work / "gad", "gad"),
        remaining,
    )
    info = {
        "train_seconds": warm_loop + loop,
        "warmup_seconds": warm_loop,
        "sft_warmup_steps": sft_steps,
        "warmup_steps": warm_steps,
        "gad_steps": steps,
        "d_acc_warmup": [h.get("d_acc") for h in warm_hist if "d_acc" in h],
        "d_acc_gad": [h.get("d_acc") for h in history if "d_acc" in h],
        "history": _slim(sft_hist) + _slim(warm_hist) + _slim(history),
    }
    return out / "student", out / "discriminator", info


def _slim(history):
    keep = ("step", "loss", "sft_loss", "d_acc", "d_loss", "d_score_gap", "student_len", "rouge_l", "reward")
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items() if k in keep} for h in history]


# ---------------------------------------------------------------------------------------------------------------------
# metrics


def _features(text: str, dim: int) -> dict[int, float]:
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    feats = {zlib.crc32(g.encode()) % (dim - 1): 1.0 for g in grams}
    norm = math.sqrt(len(feats)) or 1.0
    feats = {k: v / norm for k, v in feats.items()}
    feats[dim - 1] = math.log1p(len(words)) / 4  # a length feature
    return feats


def c2st(teacher_rows, student_rows, splits: int, seed: int, dim: int = 4096, l2: float = 1e-2) -> dict:
    """Two-sample classifier test: logistic regression on hashed word 1-2-grams, trained on the answers to half of
    the prompts and scored on the other half (both ways, ``splits`` random halvings). Returns accuracy (%) and its
    binomial standard error over the distinct answers."""
    import torch

    texts = [(r["id"], r["response"], 1) for r in teacher_rows] + [(r["id"], r["response"], 0) for r in student_rows]
    x = torch.zeros(len(texts), dim)
    for i, (_, text, _) in enumerate(texts):
        for k, v in _features(text, dim).items():
            x[i, k] = v
    y = torch.tensor([t[2] for t in texts], dtype=torch.float32)
    ids = sorted({t[0] for t in texts})
    rng = random.Random(seed)
    correct = total = 0
    for _ in range(splits):
        rng.shuffle(ids)
        half = set(ids[: len(ids) // 2])
        in_a = torch.tensor([t[0] in half for t in texts])
        for train_mask in (in_a, ~in_a):
            test_mask = ~train_mask
            if train_mask.sum() == 0 or test_mask.sum() == 0:
                continue
            w = torch.zeros(dim, requires_grad=True)
            b = torch.zeros(1, requires_grad=True)
            opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")
            xt, yt = x[train_mask], y[train_mask]

            def closure(opt=opt, w=w, b=b, xt=xt, yt=yt):
                opt.zero_grad()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w * w).sum()
                loss.backward()
                return loss

            opt.step(closure)
            with torch.no_grad():
                pred = (x[test_mask] @ w + b) > 0
            correct += (pred.float() == y[test_mask]).sum().item()
            total += int(test_mask.sum())
    acc = correct / max(total, 1)
    n = len(texts)
    return {"acc": 100 * acc, "se": 100 * math.sqrt(acc * (1 - acc) / max(n, 1)), "n": n}


def answer_metrics(rows, teacher_rows, checker, args, seed) -> dict:
    from gad.metrics import rouge_l

    teacher = {(r["id"], r["sample"]): r["response"] for r in teacher_rows}
    words = [len(r["response"].split()) for r in rows]
    result = {
        "c2st": c2st(teacher_rows, rows, args.c2st_splits, seed) if rows is not teacher_rows else None,
        "style_pass": 100 * sum(bool(checker(r["response"])) for r in rows) / len(rows),
        "rouge_l": 100 * statistics.mean(rouge_l(r["response"], teacher[(r["id"], r["sample"])]) for r in rows),
        "words": statistics.mean(words),
        "stopped": 100 * sum(r["stop"] for r in rows) / len(rows),
    }
    teacher_words = statistics.mean(len(r["response"].split()) for r in teacher_rows)
    result["len_ratio"] = result["words"] / max(teacher_words, 1e-9)
    return result


def disc_test_accuracy(disc_dir, teacher_rows, student_rows) -> float:
    """Pairwise accuracy of a trained discriminator on the test prompts: teacher answer scored above the student's
    answer to the same prompt and sample index (held out: test prompts were never trained on)."""
    from gad.training.discriminator import Discriminator

    disc = Discriminator.from_pretrained(disc_dir, max_length=512)
    student = {(r["id"], r["sample"]): r for r in student_rows}
    pairs = [(t, student[(t["id"], t["sample"])]) for t in teacher_rows if (t["id"], t["sample"]) in student]
    prompts = [[{"role": "user", "content": t["prompt"]}] for t, _ in pairs]
    t_scores = disc.score(prompts, [t["response"] for t, _ in pairs])
    s_scores = disc.score(prompts, [s["response"] for _, s in pairs])
    return 100 * (t_scores > s_scores).float().mean().item()


# ---------------------------------------------------------------------------------------------------------------------
# main


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for name in ("gad", "transformers", "trl", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    system, checker, pattern = style(args.style, args.checker_regex)
    system = args.system_prompt or system

    from gad.models import resolve_model

    model_dir = resolve_model(args.model)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gad-persona-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data_dir)
    train_prompts = load_set(data_dir, args.train_set, args.train_prompts, args.max_prompt_chars, seed=1234)
    test_prompts = [
        p for name in args.test_sets for p in load_set(data_dir, name, args.test_prompts, args.max_prompt_chars, 1234)
    ]

    # Teacher: the same model with the hidden system prompt, queried once; both methods train on these answers.
    t0 = time.monotonic()
    teacher_train = answer(model_dir, train_prompts, args.teacher_samples, system, args, 10_000, "teacher train")
    teacher_train_pass = [bool(checker(r["response"])) for r in teacher_train]
    kept = [r for r, ok in zip(teacher_train, teacher_train_pass, strict=True) if ok or not args.filter_teacher]
    train_file = work / "teacher_train.jsonl"
    with train_file.open("w") as handle:
        for r in kept:
            # An answer cut by max_new_tokens is marked unfinished, so the student is not taught to stop there.
            handle.write(json.dumps({"id": f"{r['id']}#{r['sample']}", "prompt": r["prompt"],
                                     "teacher_response": r["response"],
                                     "finish_reason": "stop" if r["stop"] else "length"}) + "\n")  # fmt: skip
    teacher_test = answer(model_dir, test_prompts, args.eval_samples, system, args, 20_000, "teacher test")
    base_test = answer(model_dir, test_prompts, args.eval_samples, None, args, 30_000, "student before")
    teacher_seconds = time.monotonic() - t0
    log.info("teacher: %d train answers (%d pass the checker), %s s", len(teacher_train), sum(teacher_train_pass),
             round(teacher_seconds))  # fmt: skip

    disc_dir = model_dir
    if args.disc_layers:
        from gad.models import first_layers

        disc_dir = str(first_layers(model_dir, args.disc_layers))

    models = {
        "teacher": answer_metrics(teacher_test, teacher_test, checker, args, 0),
        "before": answer_metrics(base_test, teacher_test, checker, args, 0),
    }
    runs = []
    for seed in args.seeds:
        for method in ("seqkd", "gad"):
            log.info("seed %d: %s (%s s of training)", seed, method, args.train_seconds)
            run_dir = work / f"seed{seed}"
            t_method = time.monotonic()
            if method == "seqkd":
                student_dir, info = run_seqkd(args, seed, model_dir, train_file, run_dir)
                disc_final = None
            else:
                student_dir, disc_final, info = run_gad(args, seed, model_dir, disc_dir, train_file, run_dir)
            rows = answer(student_dir, test_prompts, args.eval_samples, None, args, 40_000 + seed, method)
            metrics = answer_metrics(rows, teacher_test, checker, args, seed)
            if disc_final is not None:
                metrics["disc_test_acc"] = disc_test_accuracy(disc_final, teacher_test, rows)
            wall = time.monotonic() - t_method
            runs.append({"seed": seed, "method": method, **metrics, **info, "method_wall_s": wall,
                         "examples": [r["response"] for r in rows[:4]], "answers": _answers(rows)})  # fmt: skip
            shutil.rmtree(run_dir, ignore_errors=True)
            log.info("seed %d %s: C2ST %.1f%%, style %.0f%%", seed, method, metrics["c2st"]["acc"],
                     metrics["style_pass"])  # fmt: skip

    summary = summarize(runs)
    result = {
        "wall_seconds": round(time.monotonic() - started, 1),
        "scale": f"CPU-scale run (2 cores): {len(train_prompts)} train prompts, {args.max_new_tokens}-token answers, "
        f"{args.train_seconds:.0f} s of training per method; see notes",
        "teacher": {
            "model": args.model,
            "system_prompt": system,
            "checker": pattern,
            "served": "in-process (same weights + hidden system prompt), not over HTTP",
            "train_answers": len(teacher_train),
            "train_pass_rate": 100 * sum(teacher_train_pass) / len(teacher_train),
            "train_rows_used": len(kept),
            "dropped_by_filter": len(teacher_train) - len(kept),
            "test_answers": len(teacher_test),
            "seconds": round(teacher_seconds, 1),
            "examples": [r["response"] for r in teacher_test[:4]],
        },
        "data": {
            "train_set": args.train_set,
            "train_prompts": len(train_prompts),
            "test_sets": args.test_sets,
            "test_prompts": len(test_prompts),
            "eval_samples": args.eval_samples,
        },  # fmt: skip
        "config": vars(args),
        "reference": models,
        "reference_answers": {"teacher": _answers(teacher_test), "before": _answers(base_test)},
        "runs": runs,
        "summary": summary,
        "goals": goals(summary, models["before"]),
        "notes": NOTES,
    }
    print_table(result)
    result = write_result(Path(args.out), "persona", result, argv)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return result


NOTES = [
    "CPU-scale: about a hundred teacher answers, 40-token answers, five minutes of training per method, a "
    "discriminator cut to the model's first layers. The numbers show whether the pipeline separates the methods at "
    "this scale, not the paper's effect sizes.",
    "A GPU run would use hundreds to thousands of train prompts, full-length answers (256+ tokens), the full student "
    "as discriminator (paper), 1 SeqKD epoch-equivalent of warmup and hundreds of GAD steps, and all 80 + 252 test "
    "prompts with more samples each (C2ST standard error about 1 point).",
    "C2ST uses a bag-of-ngrams classifier: it detects lexical style (the persona) and length, not fluency.",
    "Teacher answers cut at --max-new-tokens are marked unfinished (finish_reason length) and trained on without an "
    "end-of-turn token, so students are not taught to stop where the cap cut the teacher.",
]


def _answers(rows):
    """Every test answer, so that other metrics can be computed from the JSON later."""
    return [{"id": r["id"], "sample": r["sample"], "response": r["response"], "stop": r["stop"]} for r in rows]


def summarize(runs):
    out = {}
    for method in ("seqkd", "gad"):
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        c2 = [r["c2st"]["acc"] for r in mine]
        out[method] = {
            "seeds": len(mine),
            "c2st": statistics.mean(c2),
            "c2st_gap": statistics.mean(abs(c - 50) for c in c2),
            "c2st_seed_sd": statistics.stdev(c2) if len(c2) > 1 else None,
            "c2st_se": statistics.mean(r["c2st"]["se"] for r in mine) / math.sqrt(len(mine)),
            "style_pass": statistics.mean(r["style_pass"] for r in mine),
            "rouge_l": statistics.mean(r["rouge_l"] for r in mine),
            "words": statistics.mean(r["words"] for r in mine),
            "train_seconds": statistics.mean(r["train_seconds"] for r in mine),
        }
    return out


def goals(summary, before):
    """The goals, plus the check that keeps them honest: did either method move the student closer to the teacher
    than it was before training? A GAD that barely trains 'wins' the C2ST goal against a SeqKD that gets worse,
    without having learned anything."""
    if "seqkd" not in summary or "gad" not in summary:
        return {"both_methods": goal(sorted(summary), False, "both seqkd and gad ran")}
    s, g = summary["seqkd"], summary["gad"]
    closer = round(s["c2st_gap"] - g["c2st_gap"], 2)
    before_gap = abs(before["c2st"]["acc"] - 50)
    return {
        "c2st_points_closer_to_50": goal(
            closer, closer >= GOAL_C2ST_POINTS and g["seeds"] >= 2, f">= {GOAL_C2ST_POINTS:g} points, >= 2 seeds"
        ),
        "style_above_seqkd": goal(
            round(g["style_pass"] - s["style_pass"], 2), g["style_pass"] > s["style_pass"], "> 0"
        ),
        "gad_closer_than_before": goal(round(before_gap - g["c2st_gap"], 2), before_gap > g["c2st_gap"], "> 0"),
    }


def print_table(result):
    ref, runs = result["reference"], result["runs"]
    print(f"\nPersona benchmark ({result['scale']})")
    print(f"teacher system prompt (hidden): {result['teacher']['system_prompt']!r}")
    print(f"teacher train answers: {result['teacher']['train_answers']}, pass rate "
          f"{result['teacher']['train_pass_rate']:.0f}%, dropped {result['teacher']['dropped_by_filter']}")  # fmt: skip
    head = f"{'model':<16}{'C2ST %':>14}{'style %':>9}{'ROUGE-L':>9}{'words':>7}{'len x':>7}{'train s':>9}{'steps':>9}"
    head += f"{'stop %':>8}{'D acc end':>11}{'D acc test':>11}"
    print(head)
    print("-" * len(head))

    def line(name, m, secs="", steps="", dacc="", dtest=""):
        c = f"{m['c2st']['acc']:.1f}±{m['c2st']['se']:.1f}" if m.get("c2st") else "(50)"
        print(f"{name:<16}{c:>14}{m['style_pass']:>9.1f}{m['rouge_l']:>9.1f}{m['words']:>7.1f}{m['len_ratio']:>7.2f}"
              f"{secs:>9}{steps:>9}{m['stopped']:>8.0f}{dacc:>11}{dtest:>11}")  # fmt: skip

    line("teacher", ref["teacher"])
    line("student before", ref["before"])
    for r in runs:
        steps = str(r["steps"]) if r["method"] == "seqkd" else f"{r['warmup_steps']}+{r['gad_steps']}"
        if r.get("sft_warmup_steps"):
            steps = f"{r['sft_warmup_steps']}+{steps}"
        d = r.get("d_acc_gad") or r.get("d_acc_warmup") or []
        dacc = f"{100 * statistics.mean(d[-3:]):.0f}" if d else ""
        dtest = f"{r['disc_test_acc']:.0f}" if "disc_test_acc" in r else ""
        line(f"{r['method']} s{r['seed']}", r, f"{r['train_seconds']:.0f}", steps, dacc, dtest)
    for method, s in result["summary"].items():
        print(f"mean {method:<6} C2ST {s['c2st']:.1f} (|C2ST-50| {s['c2st_gap']:.1f}, SE {s['c2st_se']:.1f}), style "
              f"{s['style_pass']:.1f}%, ROUGE-L {s['rouge_l']:.1f}, words {s['words']:.1f}")  # fmt: skip
    print_goals(result["goals"])
    print("(a goal met without a gain over the untrained student is not evidence for GAD)")
    print(f"wall time {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
