"""Benchmark, informative regime, with the paper's comparison protocol: can a student learn a teacher's *hidden*
persona from its answers alone, and does GAD learn it better than SeqKD?

The teacher is a pretrained chat model (default SmolLM2-135M-Instruct) answering under a hidden system prompt (default:
the persona of ``gad demo``, answers that start with "Ahoy" and say "matey"); the student is the same model *without*
that prompt and sees only (prompt, teacher answer) pairs. The answers ship in ``benchmarks/data/persona/``, collected
once through ``gad serve-teacher`` + ``gad collect`` (``persona.py collect`` regenerates them), so a run spends no
time on collection.

Protocol (arXiv:2511.10643, §3.1): **equal teacher data and equal passes over it** — SeqKD 3 epochs; GAD 1 warmup
epoch (student SFT + discriminator) then 2 adversarial epochs. Compute is not equalised: wall-clock and steps are
reported beside. Both methods are evaluated every ``--eval-every`` steps on a separate **validation** set (never the
test set); each method's checkpoint is the one with the best validation C2ST (closest to 50 %) whose mean length is
within 0.5–2 × the teacher's. Test metrics (out-of-distribution prompts from Vicuna and Self-Instruct) are reported for
the chosen and for the last checkpoints:

- C2ST: accuracy of a fresh classifier (logistic regression on hashed word 1-2-grams) telling teacher answers from
  student answers, trained on half of the prompts and scored on the other half; 50 % = indistinguishable. The main
  number.
- the persona check's pass rate, beside two degeneration measures (a style check counts a looped persona phrase as a
  pass): the share of answers caught in a repeated-3-gram loop, and distinct-2;
- ROUGE-L against the teacher's answer to the same prompt, mean length (words).

With ``--methods ... oracle_rl``, a third method is the diagnosis for when GAD does not win: GAD's adversarial stage
from the same warmup with the persona check itself as the reward (``reward_source: style_regex``, 1 for a matching
answer), its checkpoint chosen among its RL steps. If that cannot beat SeqKD at this step count, the limit is RL's
sample efficiency at this scale, not the discriminator.

Each seed runs on its own and writes its own JSON; ``merge`` builds the table over seeds with the **paired**
GAD − SeqKD differences and their 95 % intervals (t distribution over seeds). A run of only some methods writes
``seedN-METHODS.json``, and ``merge`` joins the files of one seed, so a method can be added to a seed later (its
warmup is rerun, and the merge reports how far the rerun's validation C2ST is from the first one's; or, with
``--reuse-warmup``, taken from the seed's ``--workdir``, so that the variant differs from GAD only after warmup)::

    python benchmarks/persona.py collect                       # once: the shipped teacher answers (minutes)
    nice python benchmarks/persona.py run --seeds 0            # -> benchmarks/results/persona/seed0.json (+ .html)
    nice python benchmarks/persona.py run --seeds 1 2 --jobs 2  # side by side, a process and a thread each
    python benchmarks/persona.py merge                         # -> benchmarks/results/persona.json
    python benchmarks/persona.py run --seeds 0 --quick         # minutes: a smaller everything, for iteration
    nice python benchmarks/persona.py run --seeds 0 --methods oracle_rl   # the diagnosis -> seed0-oracle_rl.json
    nice python benchmarks/persona.py run --seeds 0 --methods gad --gad-name gad_student --discriminator student
                                                               # a GAD variant -> seed0-gad_student.json
    nice python benchmarks/persona.py run --seeds 0 --methods gad --gad-name gad_d2 --reuse-warmup --workdir W \
        --set gad.discriminator_updates=2                      # from the warmup a `--workdir W` run of GAD left
    nice python benchmarks/persona.py noise WORKDIR/seed0/seqkd-best   # one model's test C2ST, sampled 3 times
    nice python benchmarks/persona.py probe WORKDIR/seed0/gad  # does its discriminator still reward the persona?
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from _common import RESULTS, ROOT, goal, paired_interval, print_goals, stage_curves, write_result

DATA = ROOT / "benchmarks" / "data" / "persona"
OUT_DIR = RESULTS / "persona"
GOAL_C2ST_POINTS = 3.0
LENGTH_GUARD = (0.5, 2.0)
METHODS = ("seqkd", "gad", "oracle_rl")
# the students' sampling seed per split is this plus the run's seed, so every method and checkpoint of a seed is
# measured on answers drawn alike
SAMPLING_SEEDS = {"val": 10_000, "test": 40_000}

log = logging.getLogger("persona")


# ---------------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    collect = commands.add_parser("collect", help="regenerate the teacher answers in --data-dir")
    _teacher_options(collect)
    collect.add_argument("--train-prompts", type=int, default=192)
    collect.add_argument("--val-prompts", type=int, default=48)
    collect.add_argument("--val-samples", type=int, default=4, help="teacher answers per validation prompt")
    collect.add_argument("--test-prompts", type=int, default=80, help="per test set (vicuna80, selfinst252)")
    collect.add_argument("--test-samples", type=int, default=4, help="teacher answers per test prompt")
    collect.add_argument("--max-prompt-chars", type=int, default=200, help="test prompts at most this long")

    run = commands.add_parser("run", help="train and evaluate SeqKD and GAD for some seeds (one JSON per seed)")
    _teacher_options(run)
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--quick", action="store_true", help="iteration mode: the first 24/8/8 train/val/test prompts, "
                     "1 epoch per stage, validation every 3 steps, 1 test sample, 2 C2ST splits (overrides those "
                     "flags); writes quick_seedN.json")  # fmt: skip
    run.add_argument("--style-regex", default=None, help="the persona check as a regex (default: the demo's check)")
    run.add_argument("--seqkd-epochs", type=float, default=3.0, help="SeqKD epochs (paper: 3)")
    run.add_argument("--warmup-epochs", type=float, default=1.0, help="GAD warmup epochs (paper: 1)")
    run.add_argument("--gad-epochs", type=float, default=2.0, help="GAD adversarial epochs (paper: 2)")
    run.add_argument("--seqkd-batch", type=int, default=8, help="SeqKD prompts per step")
    run.add_argument("--prompts-per-step", type=int, default=4, help="warmup/GAD prompts per step")
    run.add_argument("--generations", type=int, default=4, help="warmup/GAD samples per prompt")
    run.add_argument("--sft-lr", type=float, default=1e-4, help="SeqKD and warmup student learning rate")
    run.add_argument("--gad-lr", type=float, default=1e-5, help="adversarial-stage student learning rate")
    run.add_argument("--disc-lr", type=float, default=5e-5, help="discriminator learning rate")
    run.add_argument("--d-only-steps", type=int, default=2, help="discriminator-only steps at the start of warmup")
    run.add_argument("--beta", type=float, default=0.0, help="GAD KL weight (0 saves the reference pass on CPU)")
    run.add_argument(
        "--discriminator",
        default="student",
        help="student (the paper's: the full student), first:K (its first K layers), minilm (a 22.7 M encoder), or a "
        "model folder",
    )
    run.add_argument("--disc-top-layers", type=int, default=None, help="train only the discriminator's top K layers")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a stage setting as on `gad train` (KEY=VALUE for every stage that has it, "
                     "gad.KEY=VALUE for one), e.g. discriminator_updates=2")  # fmt: skip
    run.add_argument("--methods", nargs="+", choices=METHODS, default=["seqkd", "gad"],
                     help="what to train; oracle_rl is the diagnosis: GAD's adversarial stage from the same warmup "
                     "with the persona check as the reward (reward_source: style_regex) instead of the discriminator, "
                     "what RL reaches at this step count with a perfect reward (not GAD)")  # fmt: skip
    run.add_argument("--gad-name", default="gad", type=_method_name,
                     help="the name GAD's results are recorded under; another name adds a GAD variant to seeds that "
                     "already have GAD (e.g. --methods gad --gad-name gad_student --discriminator student -> "
                     "seedN-gad_student.json), trained in WORKDIR/seedN/NAME; merge pairs each variant with SeqKD and "
                     "judges it by the same goals as `gad`")  # fmt: skip
    run.add_argument("--reuse-warmup", action="store_true",
                     help="start the adversarial stage (GAD's, oracle_rl's) from the warmup an earlier run of the "
                          "seed left in --workdir (refused unless its settings are these) instead of training it "
                          "again: a variant that changes only the adversarial stage then starts from the very "
                          "warmup of `gad`; its checkpoint candidates are the warmup's last step and the adversarial "
                          "steps")  # fmt: skip
    run.add_argument("--eval-every", type=int, default=12, help="validation every N steps, both methods")
    run.add_argument("--eval-samples", type=int, default=None,
                     help="student answers per test prompt (default: as many as the teacher's, so that C2ST compares "
                     "equal numbers)")  # fmt: skip
    run.add_argument("--temperature", type=float, default=0.8, help="rollout and evaluation sampling temperature")
    run.add_argument("--c2st-splits", type=int, default=5, help="random halvings of the prompts for C2ST")
    run.add_argument("--threads", type=int, default=None,
                     help="torch threads (default: all cores, shared among --jobs)")  # fmt: skip
    run.add_argument("--jobs", type=int, default=1,
                     help="seeds trained at once, each in a process of its own with an equal share of the cores "
                     "(--threads each if given)")  # fmt: skip
    run.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep each seed's models in DIR/seedN (default: a temporary folder, removed)",
    )
    run.add_argument("--out-dir", type=Path, default=OUT_DIR, help="one seedN.json (and seedN.html) per seed")

    merge = commands.add_parser("merge", help="the table over seeds, with paired differences")
    merge.add_argument("inputs", nargs="*", type=Path, help=f"seed JSON files (default: {OUT_DIR}/seed*.json)")
    merge.add_argument("--out", type=Path, default=RESULTS / "persona.json")

    noise = commands.add_parser("noise", help="how much one model's C2ST moves from one sampling to the next")
    noise.add_argument("model_folder", type=Path, help="a student folder (e.g. WORKDIR/seed0/seqkd-best)")
    _teacher_options(noise)
    noise.add_argument("--split", choices=tuple(SAMPLING_SEEDS), default="test",
                       help="the prompts measured: test, or val (what checkpoint selection sees; its first sampling "
                       "is the one seed 0's run drew)")  # fmt: skip
    noise.add_argument("--repeats", type=int, default=3, help="samplings of the answers, each with its own seed")
    noise.add_argument("--temperature", type=float, default=0.8)
    noise.add_argument("--c2st-splits", type=int, default=5)
    noise.add_argument("--out", type=Path, default=RESULTS / "persona_noise.json")

    probe = commands.add_parser(
        "probe", help="does a run's discriminator reward the persona? (its student's validation answers, by check)"
    )
    probe.add_argument("run_folders", nargs="+", type=Path, help="stage folders with student/ and discriminator/")
    _teacher_options(probe)
    probe.add_argument("--style-regex", default=None, help="the persona check as a regex (default: the demo's check)")
    probe.add_argument("--temperature", type=float, default=0.8)
    probe.add_argument("--seed", type=int, default=0, help="the runs' seed: answers are sampled as its selection did")
    probe.add_argument("--threads", type=int, default=None, help="torch threads (1 beside another run)")
    probe.add_argument("--out", type=Path, default=RESULTS / "persona_probe.json")
    args = parser.parse_args(argv)
    if args.command == "run" and args.reuse_warmup and (args.workdir is None or "seqkd" in args.methods):
        parser.error("--reuse-warmup needs --workdir (where the earlier run left the warmup) and no seqkd")
    return args


def _method_name(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in ("seqkd", "oracle_rl"):
        raise argparse.ArgumentTypeError(f"{name!r}: lower-case letters, digits and _, not seqkd or oracle_rl")
    return name


def _teacher_options(parser) -> None:
    parser.add_argument("--model", default="smollm2", help="teacher = student start: smollm2, a folder, builtin:...")
    parser.add_argument("--persona-file", type=Path, default=None, help="the hidden system prompt (default: demo's)")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="where the teacher answers are")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="answer length cap (teacher and student)")


# The seed report's validation plots, as gad.evaluation.report.plot_curves takes them.
VALIDATION_CURVES = (
    ("Validation C2ST (50 % = indistinguishable)", "val_c2st", ("c2st",), "accuracy (%)"),
    ("Validation persona pass rate", "val_style", ("style_pass",), "% of answers"),
    ("Validation length over the teacher's", "val_len", ("len_ratio",), "ratio"),
)
# --quick: the first prompts of each split, and shorter everything (the shipped data stays the same).
QUICK_PROMPTS = {"train": 24, "val": 8, "test": 8}
QUICK_ARGS = {"seqkd_epochs": 1.0, "warmup_epochs": 1.0, "gad_epochs": 1.0, "eval_every": 3, "c2st_splits": 2}


# ---------------------------------------------------------------------------------------------------------------------
# persona and data


def persona(args) -> tuple[str, str, str]:
    """(hidden system prompt, the persona check as a regular expression, what it checks). The regex is both the
    evaluation's check (``re.search``) and the oracle reward's (``reward_source: style_regex``)."""
    from gad.demo.presets import load_preset

    spec = load_preset("default")
    system = args.persona_file.read_text(encoding="utf-8") if args.persona_file else spec.teacher_system
    regex = getattr(args, "style_regex", None)
    if regex:
        return system, f"(?i){regex}", f"regex {regex}"
    return system, style_regex(spec.style_starts_with, spec.style_contains), spec.style_description


def style_regex(starts_with: str | None, contains: str | None) -> str:
    """The regex twin of :func:`gad.metrics.style_pass` (case-insensitive; starts with, after blanks; contains)."""
    ahead = f"(?=.*{re.escape(contains)})" if contains else ""
    return rf"(?is)^\s*{ahead}{re.escape(starts_with or '')}"


def checker_for(regex: str):
    compiled = re.compile(regex)
    return lambda text: compiled.search(text) is not None


def collect_data(args) -> dict:
    """Ask the teacher (served over HTTP, hidden prompt) for the train, validation and test answers, once."""
    from gad.collect import CollectConfig, collect
    from gad.data import load_prompts, write_prompts
    from gad.evaluation.prompt_sets import load_prompt_set
    from gad.models import cache_dir, resolve_model
    from gad.resources import resource
    from gad.serve import TeacherServer

    system, _, _ = persona(args)
    out = args.data_dir
    out.mkdir(parents=True, exist_ok=True)
    prompts = {
        "train": load_prompts(resource("demo", "demo-train.jsonl"))[0][: args.train_prompts],
        "val": load_prompts(resource("demo", "demo-eval.jsonl"))[0][: args.val_prompts],
        "test": [],
    }
    for name in ("vicuna80", "selfinst252"):
        rows = [r for r in load_prompt_set(name)[1] if len(r.messages[-1]["content"]) <= args.max_prompt_chars]
        random.Random(1234).shuffle(rows)
        prompts["test"] += rows[: args.test_prompts]
    cache = cache_dir() / "persona-teacher.sqlite"  # outside the tree, so that an interrupted collection resumes
    # The hidden prompt never reaches the request, so it goes into the model name: the cache key changes with it.
    teacher = f"{Path(resolve_model(args.model)).name}+persona-{hashlib.sha256(system.encode()).hexdigest()[:10]}"
    with tempfile.TemporaryDirectory(prefix="gad-persona-collect-") as tmp:
        with TeacherServer(resolve_model(args.model), system=system, log_path=Path(tmp) / "server.log") as server:
            for split, rows in prompts.items():
                prompt_file = write_prompts(rows, Path(tmp) / f"{split}-prompts.jsonl")
                config = CollectConfig(
                    prompts=prompt_file, out=out / f"{split}.jsonl", model=teacher, base_url=server.base_url,
                    n={"train": 1, "val": args.val_samples, "test": args.test_samples}[split], temperature=0.7,
                    max_tokens=args.max_new_tokens, seed=0, cache=cache, drop_truncated=False, refusal_regex=None,
                    timeout=600, progress=True,
                )  # fmt: skip
                summary = collect(config)
                log.info("%s: %d teacher answers", split, summary.rows_written)
    (out / "persona.txt").write_text(system, encoding="utf-8")
    return {split: len(rows) for split, rows in prompts.items()}


def load_split(data_dir: Path, split: str, limit: int | None = None) -> list[dict]:
    """Rows {id, prompt_id, sample, prompt (text), response, stop} of a collected split."""
    rows = []
    for line in (data_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        meta = record.get("metadata", {})
        rows.append({
            "id": meta.get("prompt_id", record["id"]), "sample": meta.get("sample_index", 0),
            "prompt": record["prompt"][-1]["content"], "response": record["teacher_response"],
            "stop": meta.get("finish_reason", "stop") != "length",
        })  # fmt: skip
    if limit is not None:
        keep = list(dict.fromkeys(r["id"] for r in rows))[:limit]
        rows = [r for r in rows if r["id"] in set(keep)]
    return rows


def first_answers(source: Path, out: Path, limit: int | None) -> int:
    """Write the first teacher answer of each of the first ``limit`` prompts of a collected split; returns how many."""
    lines = [line for line in source.read_text(encoding="utf-8").splitlines()
             if json.loads(line).get("metadata", {}).get("sample_index", 0) == 0][:limit]  # fmt: skip
    out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def answers_per_prompt(rows: list[dict]) -> int:
    """How many teacher answers each prompt of a split has: a student is sampled as often, so that C2ST weighs both
    sides equally."""
    counts = set(collections.Counter(r["id"] for r in rows).values())
    if len(counts) != 1:
        raise SystemExit(f"persona: the teacher answers per prompt differ ({sorted(counts)}); recollect the split")
    return counts.pop()


def data_fingerprint(data_dir: Path) -> dict:
    """Answers, prompts and a content hash of each split: seeds measured on other data are never merged."""
    out = {}
    for split in ("train", "val", "test"):
        rows = load_split(data_dir, split)
        digest = hashlib.sha256((data_dir / f"{split}.jsonl").read_bytes()).hexdigest()[:12]
        out[split] = {"answers": len(rows), "prompts": len({r["id"] for r in rows}), "sha256": digest}
    return out


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
    the prompts and scored on the other half (both ways, ``splits`` random halvings). Accuracy (%) and its binomial
    standard error over the answers."""
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
    return {"acc": 100 * acc, "se": 100 * math.sqrt(acc * (1 - acc) / max(len(texts), 1)), "n": len(texts)}


def answer_metrics(rows, teacher_rows, checker, splits: int, seed: int) -> dict:
    from gad.metrics import distinct_n, is_degenerate, rouge_l

    teacher = {(r["id"], r["sample"]): r["response"] for r in teacher_rows}
    words = statistics.mean(len(r["response"].split()) for r in rows)
    teacher_words = statistics.mean(len(r["response"].split()) for r in teacher_rows)
    matched = [rouge_l(r["response"], teacher[key]) for r in rows if (key := (r["id"], r["sample"])) in teacher]
    return {
        "n": len(rows),
        "c2st": c2st(teacher_rows, rows, splits, seed)["acc"] if rows is not teacher_rows else None,
        "style_pass": 100 * statistics.mean(bool(checker(r["response"])) for r in rows),
        "degenerate": 100 * statistics.mean(is_degenerate(r["response"]) for r in rows),
        "distinct_2": distinct_n([r["response"] for r in rows], 2),
        "rouge_l": 100 * statistics.mean(matched) if matched else None,
        "words": words,
        "len_ratio": words / max(teacher_words, 1e-9),
    }


def within_length_guard(metrics: dict) -> bool:
    return LENGTH_GUARD[0] <= metrics["len_ratio"] <= LENGTH_GUARD[1]


def measurement_noise(args) -> dict:
    """One model's measurement on ``--split``, repeated with other sampling seeds (the first is seed 0's own): the
    spread that a single C2ST carries before any training noise."""
    from gad.evaluation.generate import load_model

    teacher = load_split(args.data_dir, args.split)
    prompts, samples = list({r["id"]: r for r in teacher}.values()), answers_per_prompt(teacher)
    model, tokenizer = load_model(args.model_folder, "cpu")
    accuracies = []
    for k in range(args.repeats):  # minutes each on a CPU: say where it is
        answers = sample_answers(model, tokenizer, prompts, samples, args, seed=SAMPLING_SEEDS[args.split] + k)
        accuracies.append(c2st(teacher, answers, args.c2st_splits, 0)["acc"])
        log.info("sampling %d of %d: %s C2ST %.1f", k + 1, args.repeats, args.split, accuracies[-1])
    return {"data": data_fingerprint(args.data_dir), "model": str(args.model_folder), "split": args.split,
            "answers_per_side": len(teacher),
            "c2st": [_round(a) for a in accuracies], "mean": _round(statistics.mean(accuracies)),
            "sd": _round(statistics.stdev(accuracies)) if len(accuracies) > 1 else None, "goals": {}}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# training with periodic validation


def sample_answers(model, tokenizer, prompts: list[dict], samples: int, args, seed: int) -> list[dict]:
    """``samples`` sampled answers per prompt from a model in memory: rows {id, sample, prompt, response}."""
    from gad.data import PromptRow
    from gad.evaluation.generate import generate_with

    rows = [PromptRow(f"{p['id']}#{k}", [{"role": "user", "content": p["prompt"]}]) for p in prompts
            for k in range(samples)]  # fmt: skip
    out = generate_with(model, tokenizer, rows, batch_size=16, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, seed=seed)  # fmt: skip
    return [{"id": r["id"].rsplit("#", 1)[0], "sample": int(r["id"].rsplit("#", 1)[1]), "prompt": r["prompt"],
             "response": r["response"]} for r in out]  # fmt: skip


def validation_tracker(method: str, val_teacher: list[dict], checker, args, seed: int, best_dir: Path | None):
    """A TrainerCallback that scores the student on the validation set every ``--eval-every`` steps (and at the end
    of each stage), and keeps the best checkpoint under the length guard in ``best_dir`` (None: keeps none)."""
    from transformers import TrainerCallback

    prompts = list({r["id"]: r for r in val_teacher}.values())
    samples = answers_per_prompt(val_teacher)

    class ValidationTracker(TrainerCallback):
        def __init__(self):
            self.curve: list[dict] = []
            self.best: dict | None = None
            self.offset = 0  # steps of earlier stages of the same method (GAD: warmup, then gad)
            self.stage = ""

        def start_stage(self, stage: str, offset: int) -> None:
            self.stage, self.offset = stage, offset

        def on_step_end(self, args_, state, control, model=None, processing_class=None, **kwargs):
            if state.global_step % args.eval_every == 0:
                self.evaluate(state.global_step, model, processing_class)

        def on_train_end(self, args_, state, control, model=None, processing_class=None, **kwargs):
            if not self.curve or self.curve[-1]["step"] != self.offset + state.global_step:
                self.evaluate(state.global_step, model, processing_class)

        def evaluate(self, step: int, model, tokenizer) -> None:
            answers = sample_answers(model, tokenizer, prompts, samples, args, seed=SAMPLING_SEEDS["val"] + seed)
            metrics = answer_metrics(answers, val_teacher, checker, args.c2st_splits, seed)
            point = {"step": self.offset + step, "stage": self.stage, **{k: _round(v) for k, v in metrics.items()}}
            gap = abs(metrics["c2st"] - 50)
            if within_length_guard(metrics) and (self.best is None or gap < self.best["c2st_gap"]):
                self.best = {**point, "c2st_gap": gap}
                if best_dir is not None:
                    model.save_pretrained(best_dir)
                    tokenizer.save_pretrained(best_dir)
            self.curve.append(point)
            log.info("%s validation at step %d: C2ST %.1f, style %.0f%%, len x%.2f", method, point["step"],
                     metrics["c2st"], metrics["style_pass"], metrics["len_ratio"])  # fmt: skip

    return ValidationTracker()


def stage_configs(args, seed: int, model_dir: str, disc_dir: str, train_file: Path, work: Path, regex: str) -> dict:
    """The stages' configs, built from a recipe the way `gad train` builds them (``--set`` as its overrides): seqkd,
    warmup, gad, and with oracle_rl among ``--methods`` "oracle_rl", a gad stage from the same warmup rewarded by
    ``regex``."""
    from gad.training.recipe import parse_overrides, resolve_stage

    d_val_file = work / "discriminator-val.jsonl"
    d_val_size = first_answers(args.data_dir / "val.jsonl", d_val_file, QUICK_PROMPTS["val"] if args.quick else None)

    adversarial = dict(per_device_train_batch_size=args.prompts_per_step * args.generations,
                       num_generations=args.generations, temperature=args.temperature,
                       discriminator_learning_rate=args.disc_lr, discriminator_max_length=512,
                       discriminator_trainable_layers=args.disc_top_layers,
                       # d_acc_val: the discriminator on every validation prompt (never trained on), one teacher
                       # answer each, as often as the students are validated
                       discriminator_val_every=args.eval_every, discriminator_val_file=str(d_val_file),
                       discriminator_val_size=d_val_size,
                       # logs style_match, the persona rate of each step's samples; the reward stays the discriminator's
                       style_regex=regex)  # fmt: skip
    recipe = {
        "run_dir": str(work), "student": model_dir, "train_file": str(train_file), "seed": seed,
        "max_prompt_length": 256, "max_completion_length": args.max_new_tokens, "save_strategy": "no",
        "logging_steps": 1, "report_to": "none", "use_cpu": True, "disable_tqdm": True,
        "seqkd": {"per_device_train_batch_size": args.seqkd_batch, "learning_rate": args.sft_lr,
                  "num_train_epochs": args.seqkd_epochs},
        "warmup": {**adversarial, "discriminator": disc_dir, "learning_rate": args.sft_lr,
                   "num_train_epochs": args.warmup_epochs, "d_only_steps": args.d_only_steps},
        # each --gad-name trains in its own folder, so a variant never overwrites the models of gad or another one
        "gad": {**adversarial, "output_dir": str(work / args.gad_name), "learning_rate": args.gad_lr,
                "num_train_epochs": args.gad_epochs, "beta": args.beta},
    }  # fmt: skip
    overrides = parse_overrides(args.set)
    pending = {str(work / "warmup")}  # written by the warmup stage of this run
    configs = {stage: resolve_stage(recipe, stage, overrides, pending=pending) for stage in ("seqkd", "warmup", "gad")}
    if "oracle_rl" in args.methods:
        oracle = {**recipe["gad"], "output_dir": str(work / "oracle-rl"), "reward_source": "style_regex"}
        configs["oracle_rl"] = resolve_stage({**recipe, "gad": oracle}, "gad", overrides, pending=pending)
    return configs


def discriminator_folder(args, model_dir: str) -> str:
    from gad.models import first_layers, resolve_model

    if args.discriminator == "student":
        return model_dir
    if args.discriminator.startswith("first:"):
        return str(first_layers(model_dir, int(args.discriminator.split(":", 1)[1])))
    return resolve_model(args.discriminator)


def run_seed(args, seed: int, work: Path) -> dict:
    """The methods of ``--methods`` (SeqKD, GAD, the oracle-reward diagnosis) from the same start, on the same answers;
    the chosen and the last students on the test set."""
    from gad.models import resolve_model
    from gad.training.stages import run_stage

    _, regex, checker_text = persona(args)
    checker = checker_for(regex)
    limits = QUICK_PROMPTS if args.quick else {}
    val_teacher = load_split(args.data_dir, "val", limits.get("val"))
    test_teacher = load_split(args.data_dir, "test", limits.get("test"))
    model_dir = resolve_model(args.model)
    train_file = work / "train.jsonl"  # the collected file, or its first prompts with --quick
    lines = (args.data_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()
    train_file.write_text("".join(line + "\n" for line in lines[: limits.get("train")]), encoding="utf-8")
    configs = stage_configs(args, seed, model_dir, discriminator_folder(args, model_dir), train_file, work, regex)

    methods: dict[str, dict] = {}
    if "seqkd" in args.methods:
        started = time.monotonic()
        tracker = validation_tracker("seqkd", val_teacher, checker, args, seed, work / "seqkd-best")
        tracker.start_stage("seqkd", 0)
        seqkd = run_stage("seqkd", configs["seqkd"], overwrite=True, callbacks=[tracker])
        methods["seqkd"] = {
            "tracker": tracker,
            "last": seqkd.layout.student,
            "steps": {"seqkd": seqkd.global_step},
            "seconds": time.monotonic() - started,
            "history": stage_curves(seqkd.log_history, "seqkd", 0, CURVE_KEYS),
        }
    if "gad" not in args.methods and "oracle_rl" not in args.methods:
        return evaluate_methods(args, seed, work, methods, checker, checker_text, test_teacher)

    started = time.monotonic()
    # GAD's checkpoint may be its warmup's, so its tracker watches the warmup too; without GAD it only draws the curve
    best_dir = work / f"{args.gad_name}-best" if "gad" in args.methods else None
    tracker = validation_tracker(args.gad_name, val_teacher, checker, args, seed, best_dir)
    tracker.start_stage("warmup", 0)
    if args.reuse_warmup:
        warmup = reused_warmup(configs["warmup"], tracker)
    else:
        warmup = run_stage("warmup", configs["warmup"], overwrite=True, callbacks=[tracker])
    warmup_seconds, warmup_curve = time.monotonic() - started, list(tracker.curve)
    warmup_history = stage_curves(warmup.log_history, "warmup", 0, CURVE_KEYS)
    if "gad" in args.methods:
        tracker.start_stage("gad", warmup.global_step)
        gad = run_stage("gad", configs["gad"], overwrite=True, callbacks=[tracker])
        methods[args.gad_name] = {
            "tracker": tracker,
            "last": gad.layout.student,
            "steps": {"warmup": warmup.global_step, "gad": gad.global_step},
            "seconds": time.monotonic() - started,
            "history": warmup_history + stage_curves(gad.log_history, "gad", warmup.global_step, CURVE_KEYS),
        }
    if "oracle_rl" in args.methods:  # the diagnosis: the same warmup, the persona check as the reward
        started = time.monotonic()
        tracker = validation_tracker("oracle_rl", val_teacher, checker, args, seed, work / "oracle_rl-best")
        tracker.curve = list(warmup_curve)  # drawn, not chosen from: its checkpoint is chosen among its RL steps
        tracker.start_stage("oracle_rl", warmup.global_step)
        oracle = run_stage("gad", configs["oracle_rl"], overwrite=True, callbacks=[tracker])
        methods["oracle_rl"] = {
            "tracker": tracker,
            "last": oracle.layout.student,
            "steps": {"warmup": warmup.global_step, "oracle_rl": oracle.global_step},
            "seconds": warmup_seconds + time.monotonic() - started,
            "history": warmup_history + stage_curves(oracle.log_history, "oracle_rl", warmup.global_step, CURVE_KEYS),
        }
    return evaluate_methods(args, seed, work, methods, checker, checker_text, test_teacher)


def reused_warmup(config, tracker):
    """The warmup an earlier run of this seed left in its workdir, refused unless it finished with exactly these
    settings; the tracker validates its last student, the first checkpoint candidate of the method."""
    import yaml

    from gad.evaluation.generate import load_model
    from gad.layout import StageLayout
    from gad.training.stages import StageResult

    layout = StageLayout(Path(config.output_dir))
    if not layout.finished_marker.exists():
        raise SystemExit(f"--reuse-warmup: no finished warmup in {layout.root}; run this seed's gad first")
    saved = yaml.safe_load(layout.config.read_text(encoding="utf-8"))
    wanted = yaml.safe_load(yaml.safe_dump(config.to_dict()))  # through YAML, as the saved one went
    changed = sorted(k for k in (wanted.keys() | saved.keys()) - {"stage", "data"} if saved.get(k) != wanted.get(k))
    if changed:
        raise SystemExit(f"--reuse-warmup: {layout.config} was trained with other settings "
                         f"({', '.join(changed)}); change only the adversarial stage (--gad-lr, --beta, "
                         "--set gad.KEY=VALUE) or drop the flag")  # fmt: skip
    history = [json.loads(line) for line in layout.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    step = max(h["step"] for h in history if "step" in h)
    log.info("reusing the warmup in %s (%d steps)", layout.root, step)
    model, tokenizer = load_model(layout.student, "cpu")
    tracker.evaluate(step, model, tokenizer)
    return StageResult("warmup", layout, global_step=step, log_history=history)


def evaluate_methods(args, seed: int, work: Path, methods: dict, checker, checker_text: str, test_teacher) -> dict:
    """Each method's chosen and last students on the test set; the seed's JSON body and its HTML report."""
    from gad.evaluation.generate import load_model

    test_prompts = list({r["id"]: r for r in test_teacher}.values())
    samples = args.eval_samples or answers_per_prompt(test_teacher)
    result = {"seed": seed, "checker": checker_text, "data": data_fingerprint(args.data_dir), "eval_samples": samples,
              "methods": {}}  # fmt: skip
    for name, method in methods.items():
        tracker = method["tracker"]
        folders = {"last": method["last"], "chosen": tracker.best and (work / f"{name}-best")}
        entry = {
            "steps": method["steps"],
            "train_seconds": round(method["seconds"], 1),
            "chosen_step": tracker.best and tracker.best["step"],
            "validation": tracker.curve,
            "curves": method["history"],
        }
        for which, folder in folders.items():
            if folder is None:  # no checkpoint passed the length guard
                entry[which] = None
                continue
            model, tokenizer = load_model(folder, "cpu")
            answers = sample_answers(model, tokenizer, test_prompts, samples, args, seed=SAMPLING_SEEDS["test"] + seed)
            metrics = answer_metrics(answers, test_teacher, checker, args.c2st_splits, seed)
            entry[which] = {k: _round(v) for k, v in metrics.items()}
            entry[which]["examples"] = [a["response"] for a in answers[:3]]
        result["methods"][name] = entry
    result["teacher_test"] = {k: _round(v) for k, v in
                              answer_metrics(test_teacher, test_teacher, checker, 1, 0).items()}  # fmt: skip
    report(work, result, args.out_dir / f"{seed_file_stem(args, seed)}.html")
    return result


# The training metrics a seed file keeps per step; frac_reward_zero_std (TRL's share of prompts whose samples all got
# the same reward, so no gradient) is how much of an RL step a 0/1 reward such as the persona check wastes;
# style_match is the persona rate of the step's training samples (on the train prompts).
CURVE_KEYS = ("loss", "sft_loss", "reward", "frac_reward_zero_std", "style_match", "d_acc", "d_acc_val", "d_loss",
              "student_len", "teacher_len")  # fmt: skip


def seed_file_stem(args, seed: int) -> str:
    """seedN, or seedN-METHODS for a run of only some methods; a quick run is never merged with full ones (merge reads
    seed*.json)."""
    named = [args.gad_name if m == "gad" else m for m in METHODS if m in args.methods]
    methods = "" if named[:2] == ["seqkd", "gad"] else "-" + "+".join(named)
    return f"{'quick_' if args.quick else ''}seed{seed}{methods}"


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def report(work: Path, result: dict, path: Path) -> None:
    """The seed's HTML report: its test figures, the validation curves of every method, and the training curves of
    its stages."""
    from gad.evaluation.report import Section, Table, build_report, fmt, plot_curves

    header = ["method", "checkpoint", "step", "C2ST", "style %", "degenerate %", "distinct-2", "ROUGE-L", "len x"]
    rows = []
    for name, entry in result["methods"].items():
        for which in ("chosen", "last"):
            m = entry[which] or {}
            step = entry["chosen_step"] if which == "chosen" else sum(entry["steps"].values())
            rows.append([name, which, fmt(step, 0), *(fmt(m.get(k), d) for k, d in
                         (("c2st", 1), ("style_pass", 0), ("degenerate", 0), ("distinct_2", 2), ("rouge_l", 1),
                          ("len_ratio", 2)))])  # fmt: skip
    section = Section(f"Persona benchmark, seed {result['seed']}",
                      paragraphs=[f"Persona check: {result['checker']}. C2ST 50 % = indistinguishable."],
                      tables=[Table("Test set (out of distribution)", header, rows)],
                      plots=plot_curves({name: {"validation": entry["validation"]}
                                         for name, entry in result["methods"].items()}, VALIDATION_CURVES))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    build_report([work], path, title="Persona benchmark", summary=section)


# ---------------------------------------------------------------------------------------------------------------------
# merge


def merge(paths: list[Path]) -> dict:
    seeds = join_seed_files(paths)
    # SeqKD, GAD, the GAD variants of --gad-name (in the order first met), the diagnosis
    found = list(dict.fromkeys(m for s in seeds for m in s["methods"]))
    variants = [m for m in found if m not in METHODS]
    methods = [m for m in ("seqkd", "gad", *variants, "oracle_rl") if m in found]
    table: dict[str, dict] = {}
    for name in methods:
        for which in ("chosen", "last"):
            runs = [s["methods"][name][which] for s in seeds if (s["methods"].get(name) or {}).get(which)]
            table[f"{name}/{which}"] = {
                key: {"per_seed": [r[key] for r in runs], "mean": _round(statistics.mean(r[key] for r in runs))}
                for key in ("c2st", "style_pass", "degenerate", "distinct_2", "rouge_l", "len_ratio")
                if runs
            }
    gad = paired_differences(seeds, "gad")
    merged = {"seeds": [s["seed"] for s in seeds], "data": seeds[0].get("data"), "per_seed": seeds, "table": table,
              "paired": gad,
              "goals": judge_goals(gad, d_acc_val_after_warmup(seeds, "gad"))}  # fmt: skip
    if variants:  # measured beside GAD, paired with the same SeqKD, each judged by the same goals (`goals` stays GAD's)
        merged["variants"] = {}
        for name in variants:
            paired, d_val = paired_differences(seeds, name), d_acc_val_after_warmup(seeds, name)
            merged["variants"][name] = {
                "seeds": [s["seed"] for s in seeds if name in s["methods"]],
                **paired,
                "d_acc_val_after_warmup": d_val,
                "goals": judge_goals(paired, d_val),
                # what the variant's settings change, on seeds that have both (the same warmup with --reuse-warmup)
                "against_gad": paired_differences(seeds, name, base="gad"),
            }
    # the last checkpoints, paired the same way: no selection on validation; not what the goals judge
    merged["paired_last"] = {name: paired_differences(seeds, name, "last") for name in methods if name != "seqkd"}
    if "oracle_rl" in methods:  # the diagnosis of item 4: what RL reaches with the persona check as its reward
        merged["diagnosis_oracle_rl"] = paired_differences(seeds, "oracle_rl")
        merged["diagnosis_oracle_rl"]["warmup_c2st_max_difference"] = {
            str(s["seed"]): warmup_difference(s) for s in seeds if "gad" in s["methods"] and "oracle_rl" in s["methods"]
        }
    return merged


def judge_goals(paired: dict, d_val_mean: float | None) -> dict:
    """The issue's goals for one method: its paired differences with SeqKD and its d_acc_val at the end of warmup."""
    closer, style, degenerate = paired["c2st_points_closer"], paired["style_pass"], paired["degenerate"]
    return {
        "c2st_points_closer_to_50": goal(closer, _at_least(closer["mean"], GOAL_C2ST_POINTS) and
                                         _at_least(closer["low"], 1e-12), f">= {GOAL_C2ST_POINTS:g} points, 95 % "
                                         "interval above 0"),
        "style_at_least_seqkd": goal(style, _at_least(style["mean"], 0), "GAD - SeqKD persona pass rate >= 0"),
        "no_more_degenerate": goal(degenerate, _at_least(None if degenerate["mean"] is None else -degenerate["mean"],
                                                         0), "GAD - SeqKD degenerate share <= 0"),
        "d_acc_val_after_warmup": goal(d_val_mean, _at_least(d_val_mean, 0.8),
                                       ">= 0.8 at the end of warmup, mean over seeds (logged as d_acc_val)"),
    }  # fmt: skip


def d_acc_val_after_warmup(seeds: list[dict], method: str) -> float | None:
    """d_acc_val at the end of each seed's warmup (its last measurement in that stage), averaged over seeds."""
    ends = [vals[-1] for s in seeds if (vals := [h["d_acc_val"] for h in s["methods"].get(method, {}).get("curves", [])
                                                 if "d_acc_val" in h and h.get("stage") == "warmup"])]  # fmt: skip
    return _round(statistics.mean(ends)) if ends else None


def join_seed_files(paths: list[Path]) -> list[dict]:
    """One entry per seed, its methods joined from every file of that seed (``seedN.json``, ``seedN-oracle_rl.json``);
    ``parts`` says which file's command trained which methods."""
    seeds: dict[int, dict] = {}
    data: dict[str, Path] = {}  # each data fingerprint met, with the first file that had it
    for path in paths:
        part = json.loads(path.read_text(encoding="utf-8"))
        data.setdefault(json.dumps(part.get("data"), sort_keys=True), path)
        if len(data) > 1:
            first, other = data.values()
            raise SystemExit(f"persona merge: {first} and {other} were measured on different teacher answers (their "
                             "`data`); merge the seed files of one data set")  # fmt: skip
        seed = seeds.setdefault(part["seed"], {**part, "methods": {}, "parts": []})
        if clash := set(seed["methods"]) & set(part["methods"]):
            raise SystemExit(f"persona merge: {path}: seed {part['seed']} already has {sorted(clash)} from "
                             f"{seed['parts'][0]['file']}; merge one file per method and seed")  # fmt: skip
        seed["methods"].update(part["methods"])
        seed["parts"].append({"file": path.name, "command": part["command"], "methods": sorted(part["methods"])})
    if not seeds:
        raise SystemExit("persona merge: no seed files (run `persona.py run --seeds ...` first)")
    return [seeds[k] for k in sorted(seeds)]


def warmup_difference(seed: dict) -> float | None:
    """How far apart GAD's and the oracle's warmup validation C2STs are at the steps both measured (0 when one run
    trained both, or when the oracle reused GAD's warmup; a rerun's warmup on other threads may differ by float
    noise)."""
    gad, oracle = ({p["step"]: p["c2st"] for p in seed["methods"][m]["validation"] if p["stage"] == "warmup"}
                   for m in ("gad", "oracle_rl"))  # fmt: skip
    both = gad.keys() & oracle.keys()
    return _round(max(abs(gad[step] - oracle[step]) for step in both)) if both else None


def paired_differences(seeds: list[dict], method: str, which: str = "chosen", base: str = "seqkd") -> dict:
    """Paired differences (method - SeqKD, or another ``base``; ``which`` checkpoints of seeds that have both) with
    their 95 % intervals, and the seeds they pair."""
    both = {s["seed"]: (m, b) for s in seeds
            if (m := (s["methods"].get(method) or {}).get(which)) and
            (b := (s["methods"].get(base) or {}).get(which))}  # fmt: skip
    return {
        "paired_seeds": list(both),
        "c2st_points_closer": paired_interval([abs(b["c2st"] - 50) - abs(m["c2st"] - 50) for m, b in both.values()]),
        "style_pass": paired_interval([m["style_pass"] - b["style_pass"] for m, b in both.values()]),
        "degenerate": paired_interval([m["degenerate"] - b["degenerate"] for m, b in both.values()]),
    }


def _at_least(value: float | None, bound: float) -> bool:
    """A goal is met only by a measured value: None (no seed had both chosen checkpoints) is not met."""
    return value is not None and value >= bound


def print_table(merged: dict) -> None:
    print(f"\nPersona benchmark, seeds {merged['seeds']} (test set; C2ST 50 % = indistinguishable)")
    keys = ("c2st", "style_pass", "degenerate", "distinct_2", "rouge_l", "len_ratio")
    width = max(map(len, merged["table"])) + 2  # table names are the longest: "NAME/chosen"
    print(f"{'':<{width}}" + "".join(f"{k:>12}" for k in keys))
    for name, row in merged["table"].items():
        print(f"{name:<{width}}" + "".join(f"{row[k]['mean']:>12.2f}" if k in row else f"{'-':>12}" for k in keys))
    paired = {"gad": merged["paired"], **merged.get("variants", {})}
    if "diagnosis_oracle_rl" in merged:
        paired["oracle_rl"] = merged["diagnosis_oracle_rl"]
    for which, entries in (("chosen", paired), ("last", merged["paired_last"])):
        print(f"\nPaired with SeqKD ({which} checkpoints): mean [95 % interval]")
        for name, entry in entries.items():
            print(f"{name:<{width}}" + "  ".join(f"{key} {_interval(entry[key])}" for key in
                                              ("c2st_points_closer", "style_pass", "degenerate")) +
                  f"  (seeds {entry['paired_seeds']})")  # fmt: skip
    print("\nGoals (gad)")
    print_goals(merged["goals"])
    for name, variant in merged.get("variants", {}).items():
        print(f"\n{name} against gad (chosen checkpoints): " + "  ".join(
            f"{key} {_interval(variant['against_gad'][key])}" for key in ("c2st_points_closer", "style_pass",
                                                                         "degenerate")))  # fmt: skip
        print(f"Goals ({name}, beside; seeds {variant['seeds']})")
        print_goals(variant["goals"])


def _interval(paired: dict) -> str:
    if paired["mean"] is None:
        return "-"
    if paired["low"] is None:
        return f"{paired['mean']:+.1f}"
    return f"{paired['mean']:+.1f} [{paired['low']:+.1f}, {paired['high']:+.1f}]"


# ---------------------------------------------------------------------------------------------------------------------
# main


def persona_preference(args) -> dict:
    """For each run folder (of seed ``--seed``): its student's validation answers (sampled as that seed's selection
    sampled them) and the teacher's, scored by the folder's discriminator and split by the persona check.
    ``within_prompt`` is the mean, over prompts where the student answered both ways, of D(persona answers) -
    D(plain answers): a reward that points towards the teacher's rate is negative there once the student uses the
    persona more often than the teacher does."""
    from gad.evaluation.generate import load_model
    from gad.training.discriminator import Discriminator

    check = checker_for(persona(args)[1])
    teacher = load_split(args.data_dir, "val")
    prompts, samples = list({r["id"]: r for r in teacher}.values()), answers_per_prompt(teacher)
    runs = {}
    for folder in args.run_folders:
        model, tokenizer = load_model(folder / "student", "cpu")
        student = sample_answers(model, tokenizer, prompts, samples, args, seed=SAMPLING_SEEDS["val"] + args.seed)
        del model
        disc = Discriminator.from_pretrained(folder / "discriminator", max_length=512).eval()
        sides = {}
        for side, rows in (("student", student), ("teacher", teacher)):
            scores = disc.score([[{"role": "user", "content": r["prompt"]}] for r in rows],
                                [r["response"] for r in rows]).tolist()  # fmt: skip
            by_prompt = collections.defaultdict(lambda: ([], []))
            for row, score in zip(rows, scores, strict=True):
                by_prompt[row["id"]][0 if check(row["response"]) else 1].append(score)
            both = [statistics.fmean(a) - statistics.fmean(b) for a, b in by_prompt.values() if a and b]
            persona_scores = [x for a, _ in by_prompt.values() for x in a]
            plain_scores = [x for _, b in by_prompt.values() for x in b]
            sides[side] = {
                "persona_rate": _round(100 * len(persona_scores) / len(rows)),
                "score_persona": _round(statistics.fmean(persona_scores)) if persona_scores else None,
                "score_plain": _round(statistics.fmean(plain_scores)) if plain_scores else None,
                "within_prompt": _round(statistics.fmean(both)) if both else None,
                "prompts_both_ways": len(both),
            }
        runs[str(folder)] = sides
        log.info("%s: student persona %s%% (teacher %s%%), D persona - plain within a prompt %s over %d prompts",
                 folder, sides["student"]["persona_rate"], sides["teacher"]["persona_rate"],
                 sides["student"]["within_prompt"], sides["student"]["prompts_both_ways"])  # fmt: skip
    return {"data": data_fingerprint(args.data_dir), "runs": runs, "goals": {}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for name in ("gad", "transformers", "trl", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.command == "merge":
        merged = merge(args.inputs or sorted(OUT_DIR.glob("seed*.json")))
        print_table(merged)
        return write_result(args.out, "persona", merged, argv)
    if args.command == "noise":
        result = measurement_noise(args)
        print(f"{args.split} C2ST over {args.repeats} samplings: {result['c2st']} (sd {result['sd']})")
        return write_result(args.out, "persona", result, argv)
    if args.command == "collect":
        counts = collect_data(args)
        print(f"wrote {args.data_dir}: {counts}")
        return counts
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.command == "probe":
        return write_result(args.out, "persona", persona_preference(args), argv)
    if args.quick:
        for key, value in QUICK_ARGS.items():
            setattr(args, key, value)
    if args.jobs > 1 and len(args.seeds) > 1:
        return run_seed_processes(args, argv)
    written = {}
    for seed in args.seeds:
        started = time.monotonic()
        # A scratch folder of its own (two runs at once must not share one); it holds several copies of the model.
        work = args.workdir / f"seed{seed}" if args.workdir else Path(tempfile.mkdtemp(prefix=f"gad-persona-{seed}-"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            result = run_seed(args, seed, work)
        finally:
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
        result["wall_seconds"] = round(time.monotonic() - started, 1)
        result["goals"] = {}  # the goals are judged over seeds, by `merge`
        written[seed] = write_result(args.out_dir / f"{seed_file_stem(args, seed)}.json", "persona", result, argv)
    return written


def run_seed_processes(args, argv) -> dict:
    """``--jobs`` seeds at a time, each in a process of its own running this command for that seed alone (the cores
    shared among them); each writes its own JSON as a run of one seed does. A failed seed stops nothing else and is
    named at the end; an interrupted run stops its processes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    waiting, running, failed = list(args.seeds), {}, []
    try:
        while waiting or running:
            while waiting and len(running) < args.jobs:
                seed = waiting.pop(0)
                # the last of a repeated option wins
                command = [sys.executable, __file__, *argv, "--seeds", str(seed), "--jobs", "1", "--threads",
                           str(threads)]  # fmt: skip
                running[seed] = subprocess.Popen(command)
                log.info("seed %d: process %d, %d thread(s)", seed, running[seed].pid, threads)
            time.sleep(1)
            for seed, process in list(running.items()):
                if process.poll() is not None:
                    del running[seed]
                    if process.returncode:
                        failed.append(seed)
    finally:
        for process in running.values():
            process.terminate()
            process.wait()
    if failed:
        raise SystemExit(
            f"persona run: seed(s) {sorted(failed)} failed (their output is above); the other seeds wrote their files"
        )
    paths = {seed: args.out_dir / f"{seed_file_stem(args, seed)}.json" for seed in args.seeds}
    return {seed: json.loads(path.read_text(encoding="utf-8")) for seed, path in paths.items()}


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
