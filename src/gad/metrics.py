"""Text metrics shared by training diagnostics and evaluation (reference-based, judge-free).

Words are whitespace tokens after lower-casing; ROUGE-L is the LCS-based F1 used by MiniLLM and the GAD paper's
training logs (a diagnostic only: GAD can score better with a lower ROUGE-L).
"""

from __future__ import annotations

import re

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
