"""Text metrics shared by training diagnostics and evaluation (reference-based, judge-free).

Words are whitespace tokens after lower-casing; ROUGE-L is the LCS-based F1 used by MiniLLM and the GAD paper's
training logs (a diagnostic only: GAD can score better with a lower ROUGE-L).
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens."""
    return _WORD.findall(text.lower())


def _lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (0..1) between two texts."""
    a, b = words(candidate), words(reference)
    if not a or not b:
        return float(a == b)
    lcs = _lcs_length(a, b)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


# --- Judge-free evaluation metrics, as in the paper's analyses: n-gram overlap with the teacher, diversity, length


def ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    """Multiset of the n-grams of a token list (empty when the list is shorter than ``n``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def ngram_f1(candidate: str, reference: str, n: int) -> float:
    """F1 (0..1) of clipped n-gram matches between two texts, as in the paper's Fig. 4 overlap analysis.

    Matches are counted with multiplicity, clipped by the other text's count (the BLEU/ROUGE-N convention), so
    repeating a phrase does not inflate the score. Two texts that both have no n-grams score 1, one alone 0.
    """
    a, b = ngrams(words(candidate), n), ngrams(words(reference), n)
    total_a, total_b = sum(a.values()), sum(b.values())
    if not total_a or not total_b:
        return float(total_a == total_b)
    overlap = sum((a & b).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / total_a, overlap / total_b
    return 2 * precision * recall / (precision + recall)


def distinct_n(texts: list[str] | str, n: int) -> float:
    """Distinct-n (0..1): unique n-grams over all n-grams of a set of answers; low values mean repetition."""
    if isinstance(texts, str):
        texts = [texts]
    seen: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        seen.update(ngrams(words(text), n))
    total = sum(seen.values())
    return len(seen) / total if total else 0.0


def word_count(text: str) -> int:
    """Number of whitespace-separated words (the human notion of length, independent of any tokenizer)."""
    return len(text.split())


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share (0..1) of an answer's n-grams that repeat an earlier one: 0 for ordinary prose, 0.5 for
    "Ahoy! Ahoy! Ahoy!", near 1 for a phrase looped a dozen times."""
    grams = ngrams(words(text), n)
    total = sum(grams.values())
    return (total - len(grams)) / total if total else 0.0


def is_degenerate(text: str, n: int = 3, threshold: float = 0.5) -> bool:
    """An answer caught in a loop: at least half of its (at least four) 3-grams repeat an earlier one. A style
    check counts such loops as passes when they repeat the persona's phrase, so degeneration is measured beside it."""
    grams = ngrams(words(text), n)
    return sum(grams.values()) >= 4 and repeated_ngram_share(text, n) >= threshold


def style_pass(text: str, starts_with: str | None = None, contains: str | None = None) -> bool:
    """Does an answer follow a persona's format? Case-insensitive; both parts must hold when both are set."""
    lowered = text.strip().lower()
    if starts_with and not lowered.startswith(starts_with.lower()):
        return False
    return not contains or contains.lower() in lowered
