"""Scoring rules, as the benchmarks define them (see docs/benchmarks-howto.md).

- S-NIAH (RULER `string_match_all`, one reference): 1 if the gold value is a case-insensitive
  substring of the prediction.
- OOLONG (`synth_process_response`): take the text after the last ':' and strip whitespace and
  `*`, `[`, `]`. Labels and users: exact match (case-insensitive, as the reference RLM
  environment does). Comparisons: 1 if the one phrase of "more common" / "less common" /
  "same frequency" the answer uses is in the gold. Numbers: 0.75 ** |gold - prediction|.
  Dates: equal once parsed.
- OOLONG-Pairs: pairs matched by `\\((\\d+),\\s*(\\d+)\\)`, each normalised to (low, high), deduped;
  F1 against the gold pairs; both empty = 1, exactly one empty = 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime

from rlm.errors import ConfigurationError

Scorer = Callable[[str, str], float]

COMPARISON_PHRASES = ("more common", "less common", "same frequency")
PAIR_RE = re.compile(r"\((\d+),\s*(\d+)\)")
_INT_RE = re.compile(r"-?\d+")
_DATE_FORMATS = (
    "%m/%d/%Y",
    "%Y-%m-%d",
    "%b %d, %Y",
    "%B %d, %Y",
    "%b %d %Y",
    "%B %d %Y",
    "%d %B %Y",
    "%d %b %Y",
    "%m/%d/%y",
)


def substring_score(gold: str, prediction: str) -> float:
    """S-NIAH: the needle's value appears anywhere in the answer, ignoring case."""
    return 1.0 if gold.strip().casefold() in prediction.casefold() else 0.0


def extract_answer(prediction: str) -> str:
    """OOLONG's answer extraction: the text after the last ':', without `*`, `[`, `]`."""
    tail = prediction.rsplit(":", 1)[-1]
    return tail.translate(str.maketrans("", "", "*[]")).strip()


def exact_score(gold: str, prediction: str) -> float:
    """Labels and users: the extracted answer equals the gold (case-insensitive)."""
    return 1.0 if extract_answer(prediction).casefold() == gold.strip().casefold() else 0.0


def comparison_score(gold: str, prediction: str) -> float:
    """ "A is more common / less common / the same frequency as B": the phrase must match.

    An answer naming more than one of the phrases (hedging) scores 0.
    """
    answer = extract_answer(prediction).casefold()
    if answer == gold.strip().casefold():
        return 1.0
    used = [p for p in COMPARISON_PHRASES if p in answer]
    if len(used) != 1:
        return 0.0
    return 1.0 if used[0] in gold.casefold() else 0.0


def parse_int(text: str) -> int | None:
    """The first integer in `text` (thousands separators allowed), or None."""
    match = _INT_RE.search(text.replace(",", ""))
    return int(match.group()) if match else None


def numeric_score(gold: str, prediction: str) -> float:
    """0.75 ** |gold - prediction|: 1 when exact, 0.75 off by one, 0.5625 off by two."""
    expected = parse_int(gold)
    got = parse_int(extract_answer(prediction))
    if expected is None or got is None:
        return 0.0
    return 0.75 ** abs(expected - got)


def parse_date(text: str) -> date | None:
    """A date in one of the common written forms, or None."""
    cleaned = " ".join(text.strip().rstrip(".").split())
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(cleaned, fmt).date()
        except ValueError:
            continue
    return None


def date_score(gold: str, prediction: str) -> float:
    """Dates: equal once parsed, whatever the format."""
    expected = parse_date(gold)
    got = parse_date(extract_answer(prediction))
    return 1.0 if expected is not None and expected == got else 0.0


def parse_pairs(text: str) -> set[tuple[int, int]]:
    """All `(a, b)` pairs in `text`, normalised to (low, high) and deduplicated."""
    pairs: set[tuple[int, int]] = set()
    for a, b in PAIR_RE.findall(text):
        x, y = int(a), int(b)
        pairs.add((min(x, y), max(x, y)))
    return pairs


def pair_f1(gold: str, prediction: str) -> float:
    """F1 of the predicted pairs against the gold pairs; both empty is a perfect 1."""
    expected = parse_pairs(gold)
    got = parse_pairs(prediction)
    if not expected and not got:
        return 1.0
    if not expected or not got:
        return 0.0
    hits = len(expected & got)
    if hits == 0:
        return 0.0
    precision = hits / len(got)
    recall = hits / len(expected)
    return 2 * precision * recall / (precision + recall)


SCORERS: dict[str, Scorer] = {
    "substring": substring_score,
    "label": exact_score,
    "user": exact_score,
    "numeric": numeric_score,
    "comparison": comparison_score,
    "date": date_score,
    "pairs": pair_f1,
}


def scorer_for(answer_type: str) -> Scorer:
    try:
        return SCORERS[answer_type]
    except KeyError:
        raise ConfigurationError(f"unknown answer type {answer_type!r}") from None
