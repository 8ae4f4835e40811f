"""The paper's LLM-judge protocol (arXiv:2511.10643, §3.1) and a pairwise win/tie/loss judge, over any
OpenAI-compatible API.

Score protocol, after MiniLLM: the judge first writes its own *reference answer* to each prompt (cached in the same
SQLite cache as teacher answers, so it is paid for once across evaluations and checkpoints), then rates the model's
answer and the reference 1-10 each, in one call whose first line holds the two scores. A prompt's score is
``model / (model + reference) * 100``; 50 means parity with the judge's own answer. A reply whose first line does
not hold exactly two scores in 1..10 is asked again (``retries`` times) and then counted as a *failure*: it is
reported, never scored by guess, because a guessed score would bias the mean.

Pairwise protocol: the judge sees both answers and says ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). Each pair is judged in
both orders and the two verdicts are summed (+1 win, 0 tie, -1 loss for the first model), which cancels the judge's
position bias: a model that wins only when shown first gets a tie.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gad.data import PromptRow
from gad.errors import GadError
from gad.resources import resource

log = logging.getLogger(__name__)

TEMPLATE_KINDS = ("reference", "score", "pairwise")
PLACEHOLDERS = {
    "reference": ("{question}",),
    "score": ("{question}", "{answer}", "{reference}"),
    "pairwise": ("{question}", "{answer_a}", "{answer_b}"),
}
SYSTEM_MARK, USER_MARK = "<<<system>>>", "<<<user>>>"
MIN_SCORE, MAX_SCORE = 1.0, 10.0
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_OUT_OF_TEN = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b")
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


class JudgeParseError(ValueError):
    """The judge's reply does not follow the template's output format (or a score is outside 1..10)."""


# --- templates -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeTemplates:
    """The three prompt templates; the defaults ship in ``gad/resources/templates/``, any can be replaced by a file."""

    reference: str
    score: str
    pairwise: str

    @classmethod
    def load(cls, overrides: dict[str, str | Path] | None = None) -> JudgeTemplates:
        """Bundled templates, with ``overrides`` (kind -> file) replacing some of them."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(TEMPLATE_KINDS)
        if unknown:
            raise GadError(f"unknown judge template kind(s) {sorted(unknown)}; use {', '.join(TEMPLATE_KINDS)}")
        texts = {}
        for kind in TEMPLATE_KINDS:
            if kind in overrides:
                path = Path(overrides[kind]).expanduser()
                if not path.is_file():
                    raise GadError(f"judge template file not found: {path}")
                texts[kind] = path.read_text(encoding="utf-8")
            else:
                texts[kind] = resource("templates", f"judge_{kind}.txt").read_text(encoding="utf-8")
            missing = [p for p in PLACEHOLDERS[kind] if p not in texts[kind]]
            if missing:
                raise GadError(f"the {kind} judge template lacks the placeholder(s) {', '.join(missing)}")
        return cls(**texts)

    def digest(self) -> str:
        """A short hash of the templates, stored with results so that scores from other prompts are not mixed."""
        return hashlib.sha256("\0".join((self.reference, self.score, self.pairwise)).encode()).hexdigest()[:12]

    @property
    def model_first(self) -> bool:
        """Whether the score template shows the model's answer before the reference (then its score is first)."""
        return self.score.index("{answer}") < self.score.index("{reference}")


def render(template: str, **values: str) -> list[dict[str, str]]:
    """Fill ``{name}`` placeholders by plain replacement (answers may contain braces) and split into messages."""
    text = template
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    if USER_MARK not in text:
        return [{"role": "user", "content": text.strip()}]
    before, user = text.split(USER_MARK, 1)
    messages = []
    if SYSTEM_MARK in before:
        system = before.split(SYSTEM_MARK, 1)[1].strip()
        if system:
            messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user.strip()})
    return messages


def parse_scores(reply: str) -> tuple[float, float]:
    """The two scores on the first non-empty line of a rating reply, both within 1..10.

    Accepts ``8 7``, ``8, 7``, ``**8** **7**``, ``8/10 7/10`` and ``Scores: 8 7``; anything else (one number, three
    numbers, a score of 0 or 11) raises :class:`JudgeParseError`.
    """
    line = next((part for part in reply.splitlines() if part.strip()), "")
    if not line:
        raise JudgeParseError("empty reply")
    cleaned = _OUT_OF_TEN.sub(r"\1", line)
    numbers = [float(n) for n in _NUMBER.findall(cleaned)]
    if len(numbers) != 2:
        raise JudgeParseError(f"first line must hold two scores, got {line.strip()[:80]!r}")
    for value in numbers:
        if not MIN_SCORE <= value <= MAX_SCORE:
            raise JudgeParseError(f"score {value:g} outside {MIN_SCORE:g}..{MAX_SCORE:g} in {line.strip()[:80]!r}")
    return numbers[0], numbers[1]


def parse_verdict(reply: str) -> str:
    """``"A"``, ``"B"`` or ``"C"`` (tie) from the last ``[[X]]`` in a pairwise reply."""
    found = _VERDICT.findall(reply)
    if not found:
        raise JudgeParseError(f"no [[A]]/[[B]]/[[C]] verdict in {reply.strip()[:80]!r}")
    return found[-1]


def score_ratio(model_score: float, reference_score: float) -> float:
    """The paper's per-prompt score: model / (model + reference) x 100 (both are at least 1, so never 0/0)."""
    return 100.0 * model_score / (model_score + reference_score)


# --- results ---------------------------------------------------------------------------------------------------------


@dataclass
class Rating:
    """One prompt's rating: the two raw scores and the ratio, or why there is none (``failure``)."""

    id: str
    model_score: float | None = None
    reference_score: float | None = None
    score: float | None = None
    failure: str | None = None
    attempts: int = 0
    reply: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PairOutcome:
    """One prompt's pairwise result for the first model: ``win``, ``tie``, ``loss`` or ``None`` with a failure."""

    id: str
    outcome: str | None = None
    verdicts: list[str] = field(default_factory=list)  # per order, for the first model: "win"/"tie"/"loss"
    failure: str | None = None
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_ratings(ratings: list[Rating]) -> dict[str, Any]:
    """Mean score over the rated prompts, and the failures (count and first few reasons)."""
    scored = [r for r in ratings if r.score is not None]
    failures = [r for r in ratings if r.failure is not None]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "judge_score": mean([r.score for r in scored]),
        "judge_model_mean": mean([r.model_score for r in scored]),
        "judge_reference_mean": mean([r.reference_score for r in scored]),
        "judge_scored": len(scored),
        "judge_failures": len(failures),
        "judge_failure_examples": [f"{r.id}: {r.failure}" for r in failures[:5]],
    }


def summarize_pairs(outcomes: list[PairOutcome]) -> dict[str, Any]:
    """Win/tie/loss counts and rates (over the judged prompts), failures, and how often both orders agreed."""
    judged = [o for o in outcomes if o.outcome is not None]
    counts = {k: sum(o.outcome == k for o in judged) for k in ("win", "tie", "loss")}
    n = len(judged)
    return {
        **counts,
        "judged": n,
        "failures": len(outcomes) - n,
        "win_rate": counts["win"] / n if n else None,
        "tie_rate": counts["tie"] / n if n else None,
        "loss_rate": counts["loss"] / n if n else None,
        "consistent": sum(len(set(o.verdicts)) == 1 for o in judged),
        "failure_examples": [f"{o.id}: {o.failure}" for o in outcomes if o.failure][:5],
    }


# --- the judge -------------------------------------------------------------------------------------------------------


class Judge:
    """Writes references, rates answers and compares pairs through a :class:`gad.api.client.ChatClient`.

    ``cache`` is a :class:`gad.api.cache.TeacherCache` (or ``None``): references are looked up there first and
    stored the moment they arrive. Ratings are not cached: they depend on the answers, which change per checkpoint.
    """

    def __init__(
        self,
        client: Any,
        model: str,
        *,
        cache: Any = None,
        templates: JudgeTemplates | None = None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        reference_max_tokens: int = 2048,
        retries: int = 2,
    ):
        self.client, self.model, self.cache = client, model, cache
        self.templates = templates or JudgeTemplates.load()
        self.temperature, self.max_tokens, self.reference_max_tokens = temperature, max_tokens, reference_max_tokens
        self.retries = retries
        self.requests = {"reference": 0, "score": 0, "pairwise": 0}

    def describe(self) -> dict[str, Any]:
        """What produced the scores, stored in ``eval.json``."""
        return {
            "model": self.model,
            "base_url": getattr(self.client, "base_url", None),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "retries": self.retries,
            "templates": self.templates.digest(),
        }

    async def _ask(self, kind: str, messages: list[dict[str, str]], max_tokens: int) -> Any:
        """One request; a fatal failure (unreachable, bad key, unknown model) stops the evaluation with one line."""
        from gad.api.client import RequestFailed

        self.requests[kind] += 1
        try:
            result = await self.client.complete(
                messages, model=self.model, temperature=self.temperature, max_tokens=max_tokens
            )
        except RequestFailed as error:
            if error.fatal:
                url = getattr(self.client, "base_url", "the judge")
                raise GadError(f"judge {self.model} at {url} failed: {error}") from None
            raise
        return result

    async def reference(self, row: PromptRow) -> str:
        """The judge's own answer to the prompt, from the cache when it was paid for before."""
        from gad.api.cache import CacheEntry, TeacherCache

        messages = render(self.templates.reference, question=_question(row))
        params = {"temperature": self.temperature, "max_tokens": self.reference_max_tokens}
        key = TeacherCache.key(self.model, messages, params, 0)
        if self.cache is not None and (entry := self.cache.get(key)) is not None:
            return entry.text
        result = await self._ask("reference", messages, self.reference_max_tokens)
        if self.cache is not None:
            self.cache.put(key, CacheEntry.from_result(result, model=self.model))
        return result.text

    async def rate(self, row: PromptRow, answer: str, reference: str) -> Rating:
        """Rate ``answer`` against ``reference`` in one call; retry unparsable replies, then record a failure."""
        from gad.api.client import RequestFailed

        messages = render(self.templates.score, question=_question(row), answer=answer, reference=reference)
        rating = Rating(row.id)
        for attempt in range(1, self.retries + 2):
            rating.attempts = attempt
            try:
                reply = (await self._ask("score", messages, self.max_tokens)).text
                first, second = parse_scores(reply)
            except JudgeParseError as error:
                rating.failure = f"unparsable reply ({error})"
                continue
            except RequestFailed as error:
                rating.failure = f"request failed ({error})"
                return rating
            model_score, reference_score = (first, second) if self.templates.model_first else (second, first)
            rating.model_score, rating.reference_score = model_score, reference_score
            rating.score, rating.failure, rating.reply = score_ratio(model_score, reference_score), None, reply
            return rating
        return rating

    async def _verdict(self, row: PromptRow, answer_a: str, answer_b: str) -> tuple[str | None, str | None, int]:
        from gad.api.client import RequestFailed

        messages = render(self.templates.pairwise, question=_question(row), answer_a=answer_a, answer_b=answer_b)
        failure = None
        for attempt in range(1, self.retries + 2):
            try:
                reply = (await self._ask("pairwise", messages, self.max_tokens)).text
                return parse_verdict(reply), None, attempt
            except JudgeParseError as error:
                failure = f"unparsable reply ({error})"
            except RequestFailed as error:
                return None, f"request failed ({error})", attempt
        return None, failure, self.retries + 1

    async def compare(self, row: PromptRow, first: str, second: str) -> PairOutcome:
        """Judge ``first`` against ``second`` in both orders; the outcome is for ``first``."""
        (v1, f1, a1), (v2, f2, a2) = await asyncio.gather(
            self._verdict(row, first, second), self._verdict(row, second, first)
        )
        outcome = PairOutcome(row.id, attempts=a1 + a2)
        if v1 is None or v2 is None:
            outcome.failure = f1 or f2
            return outcome
        points = {"A": 1, "C": 0, "B": -1}
        as_first, as_second = points[v1], -points[v2]
        outcome.verdicts = [_word(as_first), _word(as_second)]
        outcome.outcome = _word(as_first + as_second)
        return outcome

    # --- batches (progress bars; one task per prompt, the client bounds what is in flight) ---

    async def references(self, rows: list[PromptRow], *, desc: str = "judge references") -> dict[str, str | None]:
        """References for every row (``None`` where the request failed for good)."""

        async def one(row: PromptRow) -> tuple[str, str | None]:
            from gad.api.client import RequestFailed

            try:
                return row.id, await self.reference(row)
            except RequestFailed as error:
                log.warning("no judge reference for %s: %s", row.id, error)
                return row.id, None

        return dict(await _gather([one(row) for row in rows], desc))

    async def rate_all(
        self, rows: list[PromptRow], answers: dict[str, str], references: dict[str, str | None], *, desc: str
    ) -> list[Rating]:
        """Ratings for every row, in order; a missing answer or reference is a failure, not a request."""

        async def one(row: PromptRow) -> Rating:
            if references.get(row.id) is None:
                return Rating(row.id, failure="no judge reference (the reference request failed)")
            if row.id not in answers:
                return Rating(row.id, failure="no answer for this prompt")
            return await self.rate(row, answers[row.id], references[row.id] or "")

        return await _gather([one(row) for row in rows], desc)

    async def compare_all(
        self, rows: list[PromptRow], first: dict[str, str], second: dict[str, str], *, desc: str
    ) -> list[PairOutcome]:
        """Both-order pairwise outcomes for every row present in both answer sets."""

        async def one(row: PromptRow) -> PairOutcome:
            if row.id not in first or row.id not in second:
                return PairOutcome(row.id, failure="an answer is missing")
            return await self.compare(row, first[row.id], second[row.id])

        return await _gather([one(row) for row in rows], desc)


def _word(points: int) -> str:
    return "win" if points > 0 else "loss" if points < 0 else "tie"


def _question(row: PromptRow) -> str:
    """The prompt as the judge sees it: the last user turn, with earlier turns quoted above it when there are any."""
    turns = [m for m in row.messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in turns)


async def _gather(coroutines: list, desc: str) -> list:
    """Run coroutines concurrently with a progress bar, returning results in order."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(coroutines), desc=desc, unit="req", leave=False)

    async def tracked(index: int, coroutine) -> tuple[int, Any]:
        try:
            return index, await coroutine
        finally:
            bar.update(1)

    try:
        done = await asyncio.gather(*(tracked(i, c) for i, c in enumerate(coroutines)))
    finally:
        bar.close()
    return [result for _, result in sorted(done, key=lambda pair: pair[0])]
