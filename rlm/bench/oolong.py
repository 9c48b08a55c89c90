"""OOLONG (`trec_coarse`, synth split): exact aggregate statistics over unlabelled lines.

Each context line is `Date: {Mon DD, YYYY} || User: {id} || Instance: {question}`; every
instance is a general-knowledge question whose TREC coarse label (one of six) is not shown and
must be inferred from its text. Instances come from per-label templates, so the label is a
function of the text (a perfect reader gets it right) yet needs reading. The question asks for
an exact statistic (counts, most/least common label, comparisons, users, months, date ranges);
its gold answer is computed by counting the hidden labels.

Sizes follow OOLONG's formula N = floor((L * 0.95 - 168 - 250) / 39) lines for L tokens; user IDs
are 5-digit ints with 20% of the IDs holding about 80% of the lines; dates are uniform over
2022-2025; the label mix is Dirichlet(1) per window.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TypeVar

from rlm.bench.oolong_instances import make_instance
from rlm.bench.tasks import Task, task_rng
from rlm.bench.tasks import word_list as _options
from rlm.errors import ConfigurationError

T = TypeVar("T")

BENCHMARK = "oolong"
LABELS = (
    "abbreviation",
    "entity",
    "description and abstract concept",
    "human being",
    "location",
    "numeric value",
)
PROMPT_TOKENS = 168
PER_EXAMPLE_TOKENS = 39
MIN_LINES = 12
FIRST_DAY = date(2022, 1, 1)
DAYS = (date(2025, 12, 31) - FIRST_DAY).days + 1
ALL_DAYS = tuple(FIRST_DAY + timedelta(days=i) for i in range(DAYS))
DATE_FORMAT = "%b %d, %Y"  # in the lines: "Jan 05, 2023"
QUESTION_DATE_FORMAT = "%B %d, %Y"  # in questions: "January 05, 2023"
_DAY_TEXT = {d: d.strftime(DATE_FORMAT) for d in ALL_DAYS}
MONTHS = _options(
    "January|February|March|April|May|June|July|August|September|October|November|December"
)
LINE_RE = re.compile(r"^Date: (.+?) \|\| User: (\d+) \|\| Instance: (.*)$")


# ---------------------------------------------------------------------------- windows


def n_lines(length: int) -> int:
    """OOLONG's line count for a context of `length` tokens."""
    return max(MIN_LINES, int((length * 0.95 - PROMPT_TOKENS - 250) // PER_EXAMPLE_TOKENS))


@dataclass
class Window:
    """The hidden truth of one context window: per line its date, user, label and text."""

    dates: list[date]
    users: list[int]
    labels: list[str]
    user_ids: list[int]
    instances: list[str] = field(default_factory=list)

    def line(self, i: int) -> str:
        return (
            f"Date: {_DAY_TEXT[self.dates[i]]} || User: {self.users[i]} || "
            f"Instance: {self.instances[i]}"
        )

    def hidden(self) -> dict[str, object]:
        return {
            "labels": list(self.labels),
            "users": list(self.users),
            "dates": [d.isoformat() for d in self.dates],
            "instances": list(self.instances),
            "user_ids": list(self.user_ids),
        }


def draw_window(
    rng: random.Random,
    n: int,
    n_users: int,
    accept: Callable[[Window], T | None],
    max_attempts: int = 200,
) -> tuple[Window, T] | None:
    """Draw users, dates and labels until `accept` returns something, then write the texts.

    `accept` sees the window before its instance texts exist and returns the question (or
    None to redraw), so rejection costs no text generation.
    """
    if n_users < 2:
        raise ConfigurationError(f"a window needs at least 2 users, got {n_users}")
    for _ in range(max_attempts):
        user_ids = rng.sample(range(10_000, 100_000), n_users)
        heavy = user_ids[: max(1, n_users // 5)]
        light = user_ids[len(heavy) :]
        weights = [0.8 / len(heavy)] * len(heavy) + [0.2 / len(light)] * len(light)
        users = rng.choices(user_ids, weights=weights, k=n)  # 20% of IDs get 80% of lines
        dates = rng.choices(ALL_DAYS, k=n)
        mix = [rng.gammavariate(1.0, 1.0) for _ in LABELS]  # Dirichlet(1) label mix
        labels = rng.choices(LABELS, weights=mix, k=n)
        window = Window(dates, users, labels, user_ids)
        chosen = accept(window)
        if chosen is not None:
            window.instances = [make_instance(rng, label) for label in labels]
            return window, chosen
    return None


def header(n: int) -> str:
    names = ", ".join(f"'{label}'" for label in LABELS)
    return (
        f"The following lines contain {n} general-knowledge questions, one per line. Each line "
        "has a date, a user ID and an instance (the question). Each question can be answered "
        f"as one of 6 categories: {names}. The category (label) of a question is not given: "
        "work it out from the question's meaning. You will be asked for exact statistics over "
        "these labels. Do not try to guess, estimate, or approximate the result."
    )


def footer(n: int) -> str:
    names = ", ".join(f"'{label}'" for label in LABELS)
    return (
        f"Recall: the preceding lines contain {n} general-knowledge questions, one per line, "
        f"each answerable as one of 6 categories: {names}. Compute the requested statistic "
        "exactly; do not guess, estimate, or approximate."
    )


def render_context(window: Window) -> str:
    n = len(window.labels)
    lines = [header(n), ""]
    lines.extend(window.line(i) for i in range(n))
    lines.extend(["", footer(n)])
    return "\n".join(lines)


def parse_lines(context: str) -> list[tuple[date, int, str]]:
    """(date, user, instance) of every data line: what a model can read without labelling."""
    from datetime import datetime

    rows = []
    for line in context.splitlines():
        match = LINE_RE.match(line)
        if match:
            day = datetime.strptime(match.group(1), DATE_FORMAT).date()
            rows.append((day, int(match.group(2)), match.group(3)))
    return rows


# ---------------------------------------------------------------------------- questions

FAMILIES = (
    "most_common_label",
    "least_common_label",
    "label_comparison",
    "label_count",
    "most_common_user",
    "user_most_label",
    "user_subset_count",
    "month_count",
    "date_range_count",
    "months_a_over_b",
    "label_date_extreme",
)

ANSWER_TYPES = {
    "most_common_label": "label",
    "least_common_label": "label",
    "label_comparison": "comparison",
    "label_count": "numeric",
    "most_common_user": "user",
    "user_most_label": "user",
    "user_subset_count": "numeric",
    "month_count": "numeric",
    "date_range_count": "numeric",
    "months_a_over_b": "numeric",
    "label_date_extreme": "date",
}


@dataclass(frozen=True)
class Question:
    """A question family and its parameters; `render` writes it, `parse_question` reads it."""

    family: str
    label: str | None = None
    label_b: str | None = None
    users: tuple[int, ...] = ()
    month: int | None = None  # 1..12
    start: date | None = None
    end: date | None = None
    extreme: str | None = None  # "earliest" | "latest"

    @property
    def answer_type(self) -> str:
        return ANSWER_TYPES[self.family]

    def render(self) -> str:
        return _render(self)


_FORMATS = {
    "label": "Give your final answer in the form 'Label: answer'.",
    "user": "Give your final answer in the form 'User: answer'.",
    "numeric": "Give your final answer in the form 'Answer: number'.",
    "date": "Give your final answer in the form 'Date: MM/DD/YYYY'.",
}


def _fmt_day(day: date | None) -> str:
    assert day is not None
    return day.strftime(QUESTION_DATE_FORMAT)


def _render(q: Question) -> str:
    f = q.family
    if f == "most_common_label":
        body = "Which of the labels is the most common among all the instances?"
    elif f == "least_common_label":
        body = "Which of the labels is the least common among all the instances?"
    elif f == "label_comparison":
        return (
            f"Is the label '{q.label}' more common, less common, or the same frequency as the "
            f"label '{q.label_b}'? Give your final answer in the form 'Answer: {q.label} is [X] "
            f"{q.label_b}', where [X] is 'more common than', 'less common than' or "
            "'same frequency as'."
        )
    elif f == "label_count":
        body = f"How many data points should be classified as label '{q.label}'?"
    elif f == "most_common_user":
        body = "Which user has the most instances?"
    elif f == "user_most_label":
        body = f"Which user has the most instances with the label '{q.label}'?"
    elif f == "user_subset_count":
        ids = ", ".join(str(u) for u in q.users)
        body = (
            f"Considering only the instances from the users with IDs {ids}, how many of them "
            f"should be classified as label '{q.label}'?"
        )
    elif f == "month_count":
        assert q.month is not None
        body = (
            f"Considering only the instances that occur in {MONTHS[q.month - 1]} of any year, "
            f"how many of them should be classified as label '{q.label}'?"
        )
    elif f == "date_range_count":
        body = (
            f"Considering only the instances dated from {_fmt_day(q.start)} to "
            f"{_fmt_day(q.end)} inclusive, how many of them should be classified as label "
            f"'{q.label}'?"
        )
    elif f == "months_a_over_b":
        body = (
            "For how many months (each calendar month of each year, e.g. March 2023, counts "
            f"once) does the label '{q.label}' occur more frequently than the label "
            f"'{q.label_b}'?"
        )
    elif f == "label_date_extreme":
        body = (
            f"What is the {q.extreme} date on which an instance with the label '{q.label}' occurs?"
        )
    else:
        raise ConfigurationError(f"unknown OOLONG question family {f!r}")
    return f"{body} {_FORMATS[q.answer_type]}"


_LABEL = "(" + "|".join(re.escape(x) for x in LABELS) + ")"
_DAY = r"([A-Z][a-z]+ \d{2}, \d{4})"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (family, re.compile(pattern))
    for family, pattern in (
        ("most_common_label", r"Which of the labels is the most common"),
        ("least_common_label", r"Which of the labels is the least common"),
        (
            "label_comparison",
            rf"Is the label '{_LABEL}' more common, less common.*?label '{_LABEL}'",
        ),
        ("label_count", rf"How many data points should be classified as label '{_LABEL}'"),
        ("most_common_user", r"Which user has the most instances\?"),
        ("user_most_label", rf"Which user has the most instances with the label '{_LABEL}'"),
        ("user_subset_count", rf"from the users with IDs ([\d, ]+?), how many.*?label '{_LABEL}'"),
        ("month_count", rf"occur in ([A-Z][a-z]+) of any year.*?label '{_LABEL}'"),
        ("date_range_count", rf"dated from {_DAY} to {_DAY} inclusive.*?label '{_LABEL}'"),
        (
            "months_a_over_b",
            rf"For how many months .*?label '{_LABEL}' occur more frequently "
            rf"than the label '{_LABEL}'",
        ),
        ("label_date_extreme", rf"What is the (earliest|latest) date .*?label '{_LABEL}'"),
    )
)


def parse_question(text: str) -> Question:
    """The `Question` a rendered question text asks (what the oracle root reads off it)."""
    from datetime import datetime

    def day(s: str) -> date:
        return datetime.strptime(s, QUESTION_DATE_FORMAT).date()

    for family, pattern in _PATTERNS:
        m = pattern.search(text)
        if m is None:
            continue
        g = m.groups()
        if family in ("most_common_label", "least_common_label", "most_common_user"):
            return Question(family)
        if family in ("label_count", "user_most_label"):
            return Question(family, label=g[0])
        if family in ("label_comparison", "months_a_over_b"):
            return Question(family, label=g[0], label_b=g[1])
        if family == "user_subset_count":
            users = tuple(int(u) for u in g[0].split(","))
            return Question(family, label=g[1], users=users)
        if family == "month_count":
            return Question(family, label=g[1], month=MONTHS.index(g[0]) + 1)
        if family == "date_range_count":
            return Question(family, label=g[2], start=day(g[0]), end=day(g[1]))
        return Question(family, label=g[1], extreme=g[0])
    raise ConfigurationError(f"not an OOLONG question: {text[:200]!r}")


# ---------------------------------------------------------------------------- gold answers


def comparison_phrase(count_a: int, count_b: int) -> str:
    if count_a > count_b:
        return "more common than"
    if count_a < count_b:
        return "less common than"
    return "same frequency as"


def compute_gold(
    q: Question, dates: Sequence[date], users: Sequence[int], labels: Sequence[str]
) -> str:
    """The exact answer to `q` over the hidden per-line (date, user, label)."""
    rows = list(zip(dates, users, labels, strict=True))
    f = q.family
    counts = Counter(labels)
    if f == "most_common_label":
        return max(LABELS, key=lambda x: counts[x])
    if f == "least_common_label":
        return min(LABELS, key=lambda x: counts[x])
    if f == "label_comparison":
        assert q.label is not None and q.label_b is not None
        phrase = comparison_phrase(counts[q.label], counts[q.label_b])
        return f"{q.label} is {phrase} {q.label_b}"
    if f == "label_count":
        assert q.label is not None
        return str(counts[q.label])
    if f == "most_common_user":
        per_user = Counter(users)
        return str(max(per_user, key=lambda u: per_user[u]))
    if f == "user_most_label":
        per_user = Counter(u for _, u, y in rows if y == q.label)
        return str(max(per_user, key=lambda u: per_user[u]))
    if f == "user_subset_count":
        chosen = set(q.users)
        return str(sum(1 for _, u, y in rows if u in chosen and y == q.label))
    if f == "month_count":
        return str(sum(1 for d, _, y in rows if d.month == q.month and y == q.label))
    if f == "date_range_count":
        assert q.start is not None and q.end is not None
        return str(sum(1 for d, _, y in rows if q.start <= d <= q.end and y == q.label))
    if f == "months_a_over_b":
        a = Counter((d.year, d.month) for d, _, y in rows if y == q.label)
        b = Counter((d.year, d.month) for d, _, y in rows if y == q.label_b)
        return str(sum(1 for month in set(a) | set(b) if a[month] > b[month]))
    if f == "label_date_extreme":
        days = [d for d, _, y in rows if y == q.label]
        pick = min(days) if q.extreme == "earliest" else max(days)
        return pick.strftime("%m/%d/%Y")
    raise ConfigurationError(f"unknown OOLONG question family {f!r}")


def _unique_extreme(
    counter: Counter[T], keys: Sequence[T], *, largest: bool, margin: float
) -> bool:
    """True when the top (or bottom) key leads the runner-up by more than `margin`."""
    ordered = sorted((counter[k] for k in keys), reverse=largest)
    if len(ordered) < 2:
        return bool(ordered)
    return abs(ordered[0] - ordered[1]) > margin


def choose_question(family: str, rng: random.Random, w: Window) -> Question | None:
    """Parameters for `family` that give a well-defined answer on this window, or None.

    OOLONG's rules: most/least common only when the extreme label leads by more than 2% of
    the items; comparisons only when the counts differ by more than 2% or are equal.
    """
    n = len(w.labels)
    counts = Counter(w.labels)
    margin = 0.02 * n
    if family == "most_common_label":
        ok = _unique_extreme(counts, LABELS, largest=True, margin=margin)
        return Question(family) if ok else None
    if family == "least_common_label":
        ok = _unique_extreme(counts, LABELS, largest=False, margin=margin)
        return Question(family) if ok else None
    if family == "label_comparison":
        pairs = [
            (a, b)
            for a in LABELS
            for b in LABELS
            if a != b and (counts[a] == counts[b] or abs(counts[a] - counts[b]) > margin)
        ]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        return Question(family, label=a, label_b=b)
    if family == "label_count":
        return Question(family, label=rng.choice(LABELS))
    if family == "most_common_user":
        per_user = Counter(w.users)
        ok = _unique_extreme(per_user, list(per_user), largest=True, margin=0)
        return Question(family) if ok else None
    if family == "user_most_label":
        present = [x for x in LABELS if counts[x]]
        label = rng.choice(present)
        per_user = Counter(u for u, y in zip(w.users, w.labels, strict=True) if y == label)
        ok = _unique_extreme(per_user, list(per_user), largest=True, margin=0)
        return Question(family, label=label) if ok else None
    if family == "user_subset_count":
        k = min(len(w.user_ids), rng.randint(2, 5))
        users = tuple(sorted(rng.sample(sorted(set(w.users)), min(k, len(set(w.users))))))
        return Question(family, label=rng.choice(LABELS), users=users)
    if family == "month_count":
        return Question(family, label=rng.choice(LABELS), month=rng.randint(1, 12))
    if family == "date_range_count":
        start = FIRST_DAY + timedelta(days=rng.randrange(DAYS - 30))
        end = min(start + timedelta(days=rng.randint(30, 365)), FIRST_DAY + timedelta(DAYS - 1))
        return Question(family, label=rng.choice(LABELS), start=start, end=end)
    if family == "months_a_over_b":
        a, b = rng.sample(LABELS, 2)
        return Question(family, label=a, label_b=b)
    if family == "label_date_extreme":
        present = [x for x in LABELS if counts[x]]
        extreme = rng.choice(("earliest", "latest"))
        return Question(family, label=rng.choice(present), extreme=extreme)
    raise ConfigurationError(f"unknown OOLONG question family {family!r}")


def generate(length: int, index: int, *, seed: int = 0, family: str | None = None) -> Task:
    """The OOLONG task `index` at `length` tokens; families rotate with the index."""
    if family is not None and family not in FAMILIES:
        raise ConfigurationError(f"unknown OOLONG family {family!r}; known: {', '.join(FAMILIES)}")
    rng = task_rng(BENCHMARK, length, index, seed)
    n = n_lines(length)
    n_users = max(5, min(500, n // 10))
    first = FAMILIES.index(family) if family else index % len(FAMILIES)
    # A family that cannot be asked on this window size (e.g. no unique extreme at all)
    # hands over to the next one, so every index yields a task.
    for step in range(len(FAMILIES)):
        name = FAMILIES[(first + step) % len(FAMILIES)]
        drawn = draw_window(rng, n, n_users, functools.partial(choose_question, name, rng))
        if drawn is not None:
            window, question = drawn
            break
    else:  # pragma: no cover - label_count always accepts
        raise ConfigurationError(f"could not draw an OOLONG task at length {length}")
    gold = compute_gold(question, window.dates, window.users, window.labels)
    hidden = window.hidden()
    hidden["n_lines"] = n
    return Task(
        benchmark=BENCHMARK,
        length=length,
        index=index,
        seed=seed,
        context=render_context(window),
        question=question.render(),
        gold=gold,
        answer_type=question.answer_type,
        family=question.family,
        hidden=hidden,
    )
