"""``gad eval`` as a function: answers from models (folders or answer files), the judge score, pairwise results
and judge-free metrics on one or more prompt sets, written to ``OUT/eval.json`` for ``gad report`` and selection.

Layout of ``OUT``::

    eval.json                        per model x set numbers, judge failures, pairwise counts, what produced them
    answers/<model>/<set>.jsonl      every model's answers (generated or copied), the teacher's and the judge's
    ratings/<model>/<set>.jsonl      the judge's per-prompt ratings, failures included
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gad import metrics
from gad.api.client import api_key_for
from gad.data import PromptRow
from gad.errors import GadError
from gad.evaluation.generate import generate_answers, is_model_folder, read_answers, write_answers
from gad.evaluation.prompt_sets import load_prompt_set, reference_answers
from gad.evaluation.results import EVAL_FILE, EvalResults
from gad.layout import answers_file
from gad.options import check_ranges, option_flag

log = logging.getLogger(__name__)

TEACHER = "teacher"
JUDGE_REFERENCE = "judge_reference"
NGRAM_ORDERS = (1, 2, 3, 4)
DISTINCT_ORDERS = (1, 2)
# Judge options on the command line are --judge-<field> (gad.options), and errors name them so.
JUDGE_PREFIX = "judge-"


@dataclass
class ModelSpec:
    """A model to evaluate: a Hugging Face folder (answers are generated), an answer file, or a folder of
    ``<set>.jsonl`` answer files (what ``gad eval`` writes under ``answers/<model>/``)."""

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``NAME=PATH`` or ``PATH`` (the name is then the folder or file name)."""
        name, sep, path = text.partition("=")
        if not sep or not name or "/" in name or os.sep in name:
            path, name = text, ""
        path_obj = Path(path).expanduser()
        if not path_obj.exists():
            raise GadError(f"model not found: {path_obj} (pass a model folder, an answer file, or NAME=PATH)")
        if not name:
            name = path_obj.stem if path_obj.is_file() else path_obj.name
        return cls(name, path_obj)

    @property
    def is_model(self) -> bool:
        return is_model_folder(self.path)


@dataclass
class JudgeConfig:
    """Where the judge is and how to talk to it; ``gad eval``'s judge options are generated from the fields, with
    :data:`JUDGE_PREFIX` (:mod:`gad.options`). ``api_key`` defaults to ``$OPENAI_API_KEY`` for https endpoints
    (:func:`gad.api.client.api_key_for`)."""

    base_url: str = field(
        metadata={"help": "API root of the judge, e.g. https://api.openai.com/v1", "flag": "--judge-url"}
    )
    model: str = field(default="gpt-4o", metadata={"help": "judge model name"})
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={"help": "the API key (the CLI reads it from --judge-api-key-env)", "cli": False},
    )
    cache: str | Path | None = field(
        default=None,
        metadata={
            "help": "SQLite answer cache for judge references; use the teacher's (`gad collect` OUT.cache.sqlite) to "
            "share it (gad eval's default: TEACHER.cache.sqlite when it exists, else OUT/judge-cache.sqlite)",
            "flag": "--cache",
        },
    )
    templates: dict[str, str | Path] = field(
        default_factory=dict,
        metadata={
            "help": "replace a prompt template: score=FILE, pairwise=FILE or reference=FILE (bare FILE = score)",
            "flag": "--judge-template",
            "metavar": "[KIND=]FILE",
            "bare_key": "score",
        },
    )
    concurrency: int = field(default=8, metadata={"help": "judge requests in flight at most"})
    rpm: float | None = field(default=None, metadata={"help": "judge requests per minute at most"})
    tpm: float | None = field(default=None, metadata={"help": "judge tokens per minute at most"})
    timeout: float = field(default=120.0, metadata={"help": "seconds per judge request"})
    max_retries: int = field(default=4, metadata={"help": "retries of a judge request that failed transiently"})
    parse_retries: int = field(
        default=2, metadata={"help": "re-asks of an unparsable rating", "flag": "--judge-retries"}
    )
    temperature: float = field(default=0.0, metadata={"help": "the judge's sampling temperature"})
    max_tokens: int = field(default=1024, metadata={"help": "rating reply length cap, in tokens"})
    reference_max_tokens: int = field(default=2048, metadata={"help": "judge reference answer length cap, in tokens"})

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            flag = option_flag(JudgeConfig, "base_url", JUDGE_PREFIX)
            raise GadError(f"{flag} must start with http:// or https://, got {self.base_url!r}")
        check_ranges(
            self,
            prefix=JUDGE_PREFIX,
            at_least_one=("concurrency", "max_tokens", "reference_max_tokens"),
            positive=("rpm", "tpm", "timeout"),
            non_negative=("max_retries", "parse_retries", "temperature"),
        )


@dataclass
class GenerationConfig:
    """Decoding for model folders; the defaults follow the paper (greedy), with a shorter cap for speed. The
    generation options of ``gad generate`` and ``gad eval`` are generated from the fields (:mod:`gad.options`)."""

    batch_size: int = field(default=8, metadata={"help": "prompts per generate() call"})
    max_new_tokens: int = field(default=512, metadata={"help": "answer length cap in new tokens; the paper uses 1536"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy, the paper's setting"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling when --temperature > 0"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ... (default: cuda when available)"})

    def __post_init__(self) -> None:
        check_ranges(
            self, at_least_one=("batch_size", "max_new_tokens"), non_negative=("temperature",), fraction=("top_p",)
        )


def load_answers_for(spec: ModelSpec, set_name: str, rows: list[PromptRow]) -> dict[str, str]:
    """Answers of a non-model spec for one set, keyed by prompt id; ids not in the set are ignored."""
    path = spec.path
    if path.is_dir():
        path = path / f"{set_name}.jsonl"
        if not path.is_file():
            raise GadError(f"{spec.name}: no answers for '{set_name}' ({path} not found)")
    answers = read_answers(path)
    ids = {row.id for row in rows}
    kept = {k: v for k, v in answers.items() if k in ids}
    if not kept:
        raise GadError(f"{spec.name}: {path} has no answer for any prompt id of '{set_name}'")
    return kept


def evaluate(
    models: list[ModelSpec | str],
    prompt_sets: list[str],
    *,
    out_dir: str | Path,
    judge: JudgeConfig | None = None,
    teacher: str | Path | None = None,
    discriminator: str | Path | None = None,
    pairs: list[tuple[str, str]] | None = None,
    tokenizer: str | Path | None = None,
    limit: int | None = None,
    generation: GenerationConfig | None = None,
    judge_teacher: bool = True,
    progress: bool = True,
) -> EvalResults:
    """Evaluate models on prompt sets and write ``OUT/eval.json``; returns its content.

    ``teacher`` is an answer file or folder of the teacher's answers to the sets (``gad collect`` output): the
    judge-free metrics compare against it, and it gets its own row. Without it the set's ``reference`` answers
    (see gad/resources/prompt_sets/README.md), then the judge's references, stand in. ``pairs`` are
    ``(first, second)`` model names judged pairwise in both orders.
    """
    started = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = [m if isinstance(m, ModelSpec) else ModelSpec.parse(m) for m in models]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise GadError(f"model names must differ, got {names}; name them with NAME=PATH")
    if not specs and teacher is None:
        raise GadError("nothing to evaluate: pass at least one model (or --teacher)")
    teacher_spec = ModelSpec(TEACHER, Path(teacher).expanduser()) if teacher is not None else None
    if teacher_spec is not None and not teacher_spec.path.exists():
        raise GadError(f"teacher answers not found: {teacher_spec.path}")
    pairs = list(pairs or [])
    known = set(names) | ({TEACHER} if teacher_spec else set())
    for first, second in pairs:
        if first not in known or second not in known:
            raise GadError(f"pairwise pair {first}:{second} names an unknown model; known: {', '.join(sorted(known))}")
    if discriminator is not None and not Path(discriminator).is_dir():
        raise GadError(f"discriminator folder not found: {discriminator}")
    generation = generation or GenerationConfig()

    sets: dict[str, list[PromptRow]] = {}
    set_files: dict[str, str] = {}
    for requested in prompt_sets:
        name, rows = load_prompt_set(requested, limit=limit)
        if name in sets:
            raise GadError(f"prompt set '{name}' given twice")
        sets[name], set_files[name] = rows, str(requested)

    # 1. Answers: generated for model folders, read for answer files; all copied under OUT/answers.
    answers: dict[str, dict[str, dict[str, str]]] = {}
    for spec in specs:
        answers[spec.name] = {}
        for set_name, rows in sets.items():
            if spec.is_model:
                generated = generate_answers(
                    spec.path,
                    rows,
                    batch_size=generation.batch_size,
                    max_new_tokens=generation.max_new_tokens,
                    temperature=generation.temperature,
                    top_p=generation.top_p,
                    seed=generation.seed,
                    device=generation.device,
                    progress=progress,
                    desc=f"generate {spec.name} / {set_name}",
                )
                answers[spec.name][set_name] = {r["id"]: r["response"] for r in generated}
            else:
                answers[spec.name][set_name] = load_answers_for(spec, set_name, rows)
    if teacher_spec is not None:
        answers[TEACHER] = {s: load_answers_for(teacher_spec, s, rows) for s, rows in sets.items()}
    evaluated = [*([TEACHER] if teacher_spec and judge_teacher else []), *names]
    for model_name, per_set in answers.items():
        for set_name, by_id in per_set.items():
            _write_set_answers(answers_file(out, model_name, set_name), sets[set_name], by_id)

    # 2. The judge: references (cached), ratings, pairwise.
    results: dict[str, dict[str, dict[str, Any]]] = {m: {s: {} for s in sets} for m in evaluated}
    pairwise: list[dict[str, Any]] = []
    judge_info = None
    judge_refs: dict[str, dict[str, str]] = {}
    if judge is not None:
        judge_info, judge_refs = asyncio.run(_run_judge(judge, sets, answers, evaluated, pairs, results, pairwise, out))
        for set_name, refs in judge_refs.items():
            _write_set_answers(answers_file(out, JUDGE_REFERENCE, set_name), sets[set_name], refs)

    # 3. Judge-free metrics against the teacher (or the best stand-in), and lengths.
    set_info: dict[str, dict[str, Any]] = {}
    tokenizers = _Tokenizers(tokenizer, specs)
    for set_name, rows in sets.items():
        source, baseline = _metric_reference(set_name, rows, answers, judge_refs)
        set_info[set_name] = {"n": len(rows), "source": set_files[set_name], "reference_source": source}
        for model_name in evaluated:
            spec_path = next((s.path for s in specs if s.name == model_name), None)
            results[model_name][set_name].update(
                judge_free_metrics(rows, answers[model_name][set_name], baseline, tokenizers.get(model_name, spec_path))
            )

    # 4. The discriminator's score, when one is given.
    if discriminator is not None:
        _discriminator_scores(discriminator, sets, answers, evaluated, results)

    report = EvalResults(
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
        seconds=round(time.time() - started, 1),
        models={
            **{s.name: {"path": str(s.path), "kind": "model" if s.is_model else "answers"} for s in specs},
            **({TEACHER: {"path": str(teacher_spec.path), "kind": "teacher"}} if teacher_spec else {}),
        },
        order=evaluated,
        sets=set_info,
        judge=judge_info,
        generation=asdict(generation),
        discriminator=str(discriminator) if discriminator else None,
        results=results,
        pairwise=pairwise,
    )
    report.write(out / EVAL_FILE)
    return report


def judge_free_metrics(
    rows: list[PromptRow], answers: dict[str, str], reference: dict[str, str], tokenizer: Any = None
) -> dict[str, Any]:
    """Reference-based overlap (ROUGE-L, n-gram F1), lengths against the reference, and diversity for one set."""
    present = [row.id for row in rows if row.id in answers]
    texts = [answers[i] for i in present]
    paired = [i for i in present if i in reference]
    result: dict[str, Any] = {
        "n": len(rows),
        "answered": len(present),
        "words": _mean([metrics.word_count(t) for t in texts]),
        **{f"distinct_{n}": metrics.distinct_n(texts, n) if texts else None for n in DISTINCT_ORDERS},
    }
    if tokenizer is not None:
        result["tokens"] = _mean([_count_tokens(tokenizer, t) for t in texts])
    if paired:
        result["rouge_l"] = _mean([metrics.rouge_l(answers[i], reference[i]) for i in paired])
        for n in NGRAM_ORDERS:
            result[f"ngram_f1_{n}"] = _mean([metrics.ngram_f1(answers[i], reference[i], n) for i in paired])
        result["ref_words"] = _mean([metrics.word_count(reference[i]) for i in paired])
        if tokenizer is not None:
            result["ref_tokens"] = _mean([_count_tokens(tokenizer, reference[i]) for i in paired])
        unit = "tokens" if tokenizer is not None else "words"
        own = _mean([_length(tokenizer, answers[i]) for i in paired])
        ref = result[f"ref_{unit}"]
        result["len_ratio"] = own / ref if own is not None and ref else None
        result["len_unit"] = unit
    return result


# --- helpers -----------------------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _length(tokenizer: Any, text: str) -> int:
    return _count_tokens(tokenizer, text) if tokenizer is not None else metrics.word_count(text)


class _Tokenizers:
    """The tokenizer lengths are counted in: a model folder's own, else ``--tokenizer``, else the first folder's."""

    def __init__(self, default: str | Path | None, specs: list[ModelSpec]):
        self.default_path = Path(default) if default else next((s.path for s in specs if s.is_model), None)
        self._loaded: dict[Path, Any] = {}

    def _load(self, path: Path) -> Any:
        if path not in self._loaded:
            from transformers import AutoTokenizer

            try:
                self._loaded[path] = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError) as error:
                raise GadError(f"cannot load a tokenizer from {path}: {error}") from None
        return self._loaded[path]

    def get(self, model_name: str, path: Path | None) -> Any:
        if path is not None and is_model_folder(path):
            return self._load(path)
        return self._load(self.default_path) if self.default_path else None


def _metric_reference(
    set_name: str, rows: list[PromptRow], answers: dict, judge_refs: dict[str, dict[str, str]]
) -> tuple[str, dict[str, str]]:
    if TEACHER in answers:
        return "teacher", answers[TEACHER][set_name]
    dataset = reference_answers(rows)
    if dataset:
        return "dataset", dataset
    if judge_refs.get(set_name):
        return "judge", judge_refs[set_name]
    return "none", {}


def _write_set_answers(path: Path, rows: list[PromptRow], by_id: dict[str, str]) -> None:
    write_answers(
        path,
        [{"id": r.id, "prompt": r.messages[-1]["content"], "response": by_id[r.id]} for r in rows if r.id in by_id],
    )


async def _run_judge(
    config: JudgeConfig,
    sets: dict[str, list[PromptRow]],
    answers: dict[str, dict[str, dict[str, str]]],
    evaluated: list[str],
    pairs: list[tuple[str, str]],
    results: dict[str, dict[str, dict[str, Any]]],
    pairwise: list[dict[str, Any]],
    out: Path,
) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    from gad.api.cache import TeacherCache
    from gad.api.client import ChatClient
    from gad.evaluation.judge import Judge, JudgeTemplates, summarize_pairs, summarize_ratings

    templates = JudgeTemplates.load(config.templates)
    cache = TeacherCache(config.cache) if config.cache else None
    try:
        async with ChatClient(
            config.base_url,
            api_key=config.api_key if config.api_key is not None else api_key_for(config.base_url, None),
            concurrency=config.concurrency,
            rpm=config.rpm,
            tpm=config.tpm,
            timeout=config.timeout,
            max_retries=config.max_retries,
        ) as client:
            judge = Judge(
                client,
                config.model,
                cache=cache,
                templates=templates,
                temperature=config.temperature,
                max_tokens=config.max_tokens,
                reference_max_tokens=config.reference_max_tokens,
                retries=config.parse_retries,
            )
            references: dict[str, dict[str, str]] = {}
            for set_name, rows in sets.items():
                refs = await judge.references(rows, desc=f"judge references / {set_name}")
                references[set_name] = {k: v for k, v in refs.items() if v is not None}
                for model_name in evaluated:
                    ratings = await judge.rate_all(
                        rows, answers[model_name][set_name], refs, desc=f"judge {model_name} / {set_name}"
                    )
                    results[model_name][set_name].update(summarize_ratings(ratings))
                    write_answers(out / "ratings" / model_name / f"{set_name}.jsonl", [r.to_dict() for r in ratings])
                for first, second in pairs:
                    outcomes = await judge.compare_all(
                        rows,
                        answers[first][set_name],
                        answers[second][set_name],
                        desc=f"pairwise {first} vs {second} / {set_name}",
                    )
                    pairwise.append({"first": first, "second": second, "set": set_name, **summarize_pairs(outcomes)})
                    write_answers(
                        out / "ratings" / f"pairwise-{first}-vs-{second}" / f"{set_name}.jsonl",
                        [o.to_dict() for o in outcomes],
                    )
            info = {**judge.describe(), "requests": dict(judge.requests), "cache": str(config.cache or "")}
    finally:
        if cache is not None:
            cache.close()
    return info, references


def _discriminator_scores(
    folder: str | Path,
    sets: dict[str, list[PromptRow]],
    answers: dict[str, dict[str, dict[str, str]]],
    evaluated: list[str],
    results: dict[str, dict[str, dict[str, Any]]],
) -> None:
    """Mean discriminator score of each model's answers (and of the teacher's, its target)."""
    from gad.training.discriminator import Discriminator

    disc = Discriminator.from_pretrained(folder)
    for set_name, rows in sets.items():
        by_id = {row.id: row for row in rows}
        for model_name in evaluated:
            ids = [i for i in answers[model_name][set_name] if i in by_id]
            if not ids:
                continue
            scores = disc.score([by_id[i].messages for i in ids], [answers[model_name][set_name][i] for i in ids])
            results[model_name][set_name]["disc_score"] = float(scores.mean())
