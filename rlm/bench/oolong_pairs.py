"""OOLONG-Pairs (RLM paper, App. D.1): list every pair of users that meets a label condition.

The context is an OOLONG `trec_coarse` window (see `rlm.bench.oolong`) with fewer users, so
answers stay listable. Twenty query shapes: 1-10 are symmetric ("both users have at least one
instance with a L1 or L2", some with a date clause on one label), 11-20 asymmetric ("one user
has P and the other user has Q", P and Q conjunctions of at-least/exactly one/two label counts).
Asking for all pairs defeats counting shortcuts; the score is F1 over the listed pairs.

A date clause "all instances that are a L for both users must be after D" reads as: every
instance of L of each user is after D, vacuously true for a user without L (our reading; the
paper does not say).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from rlm.bench import oolong
from rlm.bench.oolong import LABELS
from rlm.bench.tasks import Task, task_rng
from rlm.errors import ConfigurationError

BENCHMARK = "oolong_pairs"
QUANTIFIERS = {
    "at least one": (1, None),
    "at least two": (2, None),
    "exactly one": (1, 1),
    "exactly two": (2, 2),
}
CLAUSE_DATE_FORMAT = "%B %d, %Y"  # "January 06, 2023"

Condition = tuple[str, str]  # (quantifier, label)


@dataclass(frozen=True)
class PairQuery:
    """One query shape. Symmetric: `labels` (either counts) and an optional date clause.
    Asymmetric: `first` (P) and `second` (Q), conjunctions of (quantifier, label)."""

    symmetric: bool
    labels: tuple[str, ...] = ()
    date_label: str | None = None
    date_side: str | None = None  # "after" | "before"
    date_value: date | None = None
    first: tuple[Condition, ...] = ()
    second: tuple[Condition, ...] = ()

    def render(self) -> str:
        return render(self)


_ABBR, _ENT, _DESC, _HUM, _LOC, _NUM = LABELS
_SHORT = dict(zip(("ABBR", "ENT", "DESC", "HUM", "LOC", "NUM"), LABELS, strict=True))


def _asymmetric(first: str, second: str) -> PairQuery:
    """An asymmetric query from its two sides written as "at least one HUM, exactly one LOC"
    (labels by their short names)."""

    def conditions(text: str) -> tuple[Condition, ...]:
        parts = (part.strip().rsplit(" ", 1) for part in text.split(","))
        return tuple((quantifier, _SHORT[label]) for quantifier, label in parts)

    return PairQuery(False, first=conditions(first), second=conditions(second))


QUERIES: tuple[PairQuery, ...] = (
    PairQuery(True, (_NUM, _LOC)),
    PairQuery(True, (_ENT, _HUM)),
    PairQuery(True, (_DESC, _ABBR)),
    PairQuery(True, (_HUM, _LOC), _HUM, "after", date(2023, 1, 6)),
    PairQuery(True, (_ENT, _NUM), _ENT, "before", date(2023, 3, 15)),
    PairQuery(True, (_ABBR, _LOC)),
    PairQuery(True, (_DESC, _HUM), _DESC, "after", date(2023, 2, 1)),
    PairQuery(True, (_ENT, _LOC)),
    PairQuery(True, (_NUM, _ABBR), _NUM, "before", date(2023, 4, 10)),
    PairQuery(True, (_HUM, _DESC), _HUM, "after", date(2023, 5, 20)),
    *(
        _asymmetric(first, second)
        for first, second in (
            ("at least one ENT", "at least one ABBR"),
            ("at least two NUM", "at least one LOC, at least one HUM"),
            ("exactly one DESC", "at least one ENT"),
            ("at least one HUM, at least one LOC", "exactly one NUM"),
            ("exactly two ENT", "at least one DESC"),
            ("at least two LOC", "exactly one ABBR"),
            ("exactly one HUM", "exactly one ENT"),
            ("at least one ABBR, at least one NUM", "at least two HUM"),
            ("exactly two DESC", "at least one LOC"),
            ("at least two ENT", "at least two NUM"),
        )
    ),
)

_TAIL = (
    " Each of the questions can be labelled as one of the labels (the data does not provide "
    "the labels, you need to figure out the label from the semantics of the question): "
    + ", ".join(LABELS)
    + ". In your answer, list all pairs in the format (user_id_1, user_id_2), separated by "
    "newlines, sorted by the first user ID. If there is no answer, return an empty list []."
)
_HEAD = (
    "In the above data, list all pairs of user IDs (no duplicate pairs, list lower ID first) where "
)


def _article(label: str) -> str:
    return "an" if label[0] in "aeiou" else "a"


def _clause(condition: Condition) -> str:
    quantifier, label = condition
    noun = "instance" if quantifier.endswith("one") else "instances"
    return f"{quantifier} {noun} with {_article(label)} {label}"


def render(q: PairQuery) -> str:
    if q.symmetric:
        either = " or ".join(f"{_article(x)} {x}" for x in q.labels)
        body = f"both users have at least one instance with {either}"
        if q.date_label is not None:
            assert q.date_value is not None
            when = q.date_value.strftime(CLAUSE_DATE_FORMAT)
            body += (
                f", and all instances that are {_article(q.date_label)} {q.date_label} for both "
                f"users must be {q.date_side} {when}"
            )
    else:
        p = " and ".join(_clause(c) for c in q.first)
        r = " and ".join(_clause(c) for c in q.second)
        body = f"one user has {p} and the other user has {r}"
    return _HEAD + body + "." + _TAIL


_LABEL = "(" + "|".join(re.escape(x) for x in LABELS) + ")"
_CLAUSE_RE = re.compile(
    r"(at least one|at least two|exactly one|exactly two) instances? with an? " + _LABEL
)
_SYM_RE = re.compile(
    rf"both users have at least one instance with an? {_LABEL} or an? {_LABEL}"
    rf"(?:, and all instances that are an? {_LABEL} for both users must be (after|before) "
    r"([A-Z][a-z]+ \d{2}, \d{4}))?"
)
_ASYM_RE = re.compile(r"where one user has (.+?) and the other user has (.+?)\. Each of")


def parse_query(text: str) -> PairQuery:
    """The `PairQuery` a rendered question asks (what the oracle root reads off it)."""
    m = _SYM_RE.search(text)
    if m:
        a, b, date_label, side, when = m.groups()
        if date_label is None:
            return PairQuery(True, (a, b))
        day = datetime.strptime(when, CLAUSE_DATE_FORMAT).date()
        return PairQuery(True, (a, b), date_label, side, day)
    m = _ASYM_RE.search(text)
    if m:
        first = tuple((q, x) for q, x in _CLAUSE_RE.findall(m.group(1)))
        second = tuple((q, x) for q, x in _CLAUSE_RE.findall(m.group(2)))
        if first and second:
            return PairQuery(False, first=first, second=second)
    raise ConfigurationError(f"not an OOLONG-Pairs question: {text[:200]!r}")


# ---------------------------------------------------------------------------- gold


def _holds(conditions: Sequence[Condition], counts: Counter[str]) -> bool:
    for quantifier, label in conditions:
        low, high = QUANTIFIERS[quantifier]
        if counts[label] < low or (high is not None and counts[label] > high):
            return False
    return True


def qualifying(
    q: PairQuery, dates: Sequence[date], users: Sequence[int], labels: Sequence[str]
) -> tuple[set[int], set[int]]:
    """Users meeting the first and the second condition (the same set when symmetric)."""
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    days: dict[tuple[int, str], list[date]] = defaultdict(list)
    for d, u, y in zip(dates, users, labels, strict=True):
        counts[u][y] += 1
        days[(u, y)].append(d)
    everyone = set(users)
    if not q.symmetric:
        p = {u for u in everyone if _holds(q.first, counts[u])}
        r = {u for u in everyone if _holds(q.second, counts[u])}
        return p, r
    chosen = set()
    for u in everyone:
        if sum(counts[u][x] for x in q.labels) < 1:
            continue
        if q.date_label is not None:
            assert q.date_value is not None
            mine = days[(u, q.date_label)]
            if q.date_side == "after" and any(d <= q.date_value for d in mine):
                continue
            if q.date_side == "before" and any(d >= q.date_value for d in mine):
                continue
        chosen.add(u)
    return chosen, chosen


def gold_pairs(
    q: PairQuery, dates: Sequence[date], users: Sequence[int], labels: Sequence[str]
) -> list[tuple[int, int]]:
    """All (low, high) user pairs, low != high, where one meets P and the other Q."""
    p, r = qualifying(q, dates, users, labels)
    pairs = {(min(a, b), max(a, b)) for a in p for b in r if a != b}
    return sorted(pairs)


def format_pairs(pairs: Sequence[tuple[int, int]]) -> str:
    """The answer format the question asks for; "[]" when there are none."""
    return "\n".join(f"({a}, {b})" for a, b in pairs) if pairs else "[]"


def n_users_for(n_lines: int) -> int:
    """Fewer users than OOLONG so answers stay listable: 10 to 300, ~4 lines per user."""
    return max(10, min(300, n_lines // 4))


def generate(length: int, index: int, *, seed: int = 0, query: int | None = None) -> Task:
    """The OOLONG-Pairs task `index` at `length` tokens; query shapes 1-20 rotate with it."""
    number = (index % len(QUERIES)) + 1 if query is None else query
    if not 1 <= number <= len(QUERIES):
        raise ConfigurationError(f"OOLONG-Pairs query must be 1..{len(QUERIES)}, got {number}")
    q = QUERIES[number - 1]
    rng = task_rng(BENCHMARK, length, index, seed)
    n = oolong.n_lines(length)
    drawn = oolong.draw_window(rng, n, n_users_for(n), lambda w: True)
    assert drawn is not None
    window, _ = drawn
    pairs = gold_pairs(q, window.dates, window.users, window.labels)
    hidden = window.hidden()
    hidden.update(n_lines=n, query=number, gold_pairs=[list(p) for p in pairs])
    return Task(
        benchmark=BENCHMARK,
        length=length,
        index=index,
        seed=seed,
        context=oolong.render_context(window),
        question=q.render(),
        gold=format_pairs(pairs),
        answer_type="pairs",
        family=f"pairs_{number:02d}_{'symmetric' if q.symmetric else 'asymmetric'}",
        hidden=hidden,
    )
