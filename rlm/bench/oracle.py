"""The oracle backend: a scripted root that writes the decomposition code a good model would,
and a scripted sub-LM that reads like a perfect reader.

The root sees only what a real root sees (the metadata message with the question); it parses
the question and answers its first turn with one ```repl block: split the context, ask the
sub-LM about every chunk with `llm_query_batched`, aggregate in Python, return the answer. The
sub-LM is the only part that consults the task's hidden labels (needle key -> value, instance
text -> label): it knows what a perfect reader of its prompt would know, nothing more. So the
harness (generators, the RLM loop, batching, answer handling, scoring) is tested end to end
without a network, and a correct harness scores 1.0 at every length.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from rlm.bench import oolong, oolong_pairs, sniah
from rlm.bench.tasks import Task
from rlm.core.types import Message
from rlm.errors import ConfigurationError

ROOT_MODEL = "oracle-root"
SUB_MODEL = "oracle-sub"
PLAIN_MODEL = "oracle-plain"
CHUNK_CHARS = 100_000  # characters of context per sub-call

NEEDLE_PROMPT = "Find the special magic number for {key} in the text below."
NEEDLE_PROMPT_RE = re.compile(r"Find the special magic number for (\S+) in the text below\.")
TEXT_MARK = "\n\nTEXT:\n"
LABEL_PROMPT = "Label each numbered question below with its coarse TREC category."
QUESTIONS_MARK = "\n\nQUESTIONS:\n"
FAILED = "FINAL(the oracle's code failed; see the REPL output above)"

# ----------------------------------------------------------------------- the root's code

_SNIAH_CODE = """\
KEY = __KEY__
CHUNK = __CHUNK__

def split_at_sentences(text, size):
    # Cut after a sentence end so no needle straddles two chunks.
    pieces, start = [], 0
    while start < len(text):
        end = start + size
        cut = text.find(". ", end) if end < len(text) else -1
        end = len(text) if cut < 0 else cut + 2
        pieces.append(text[start:end])
        start = end
    return pieces

chunks = split_at_sentences(context, CHUNK)
prompts = [
    __PROMPT__ + " Reply with the number only, or with 'none' if the text does not mention it."
    + __TEXT_MARK__ + chunk
    for chunk in chunks
]
replies = llm_query_batched(prompts)
found = [r.strip() for r in replies if r.strip().lower() != "none" and not r.startswith("Error")]
print(len(chunks), "chunks; candidates:", found)
FINAL(found[0] if found else "not found")
"""

_LABEL_CODE = """\
import json
import re
from collections import Counter, defaultdict
from datetime import date, datetime

LABELS = __LABELS__
LINE = re.compile(r"^Date: (.+?) \\|\\| User: (\\d+) \\|\\| Instance: (.*)$")
rows = []
for line in context.splitlines():
    m = LINE.match(line)
    if m:
        day = datetime.strptime(m.group(1), "%b %d, %Y").date()
        rows.append((day, int(m.group(2)), m.group(3)))

# The labels need reading: give the sub-LLM about __CHUNK__ characters of questions per call.
batches, batch, size = [], [], 0
for _, _, question in rows:
    if batch and size + len(question) > __CHUNK__:
        batches.append(batch)
        batch, size = [], 0
    batch.append(question)
    size += len(question) + 8
if batch:
    batches.append(batch)
instruction = (
    __PROMPT__ + " The categories are: " + ", ".join(LABELS) + ". Reply with a JSON list "
    "holding one category per question, in order, and nothing else."
)
prompts = [
    instruction + __QUESTIONS_MARK__ + "\\n".join(f"{i}. {q}" for i, q in enumerate(b, 1))
    for b in batches
]
replies = llm_query_batched(prompts)
labels = []
for b, reply in zip(batches, replies):
    got = json.loads(reply[reply.find("[") : reply.rfind("]") + 1])
    if len(got) != len(b):
        raise ValueError(f"expected {len(b)} labels, got {len(got)}")
    labels.extend(got)
data = [(d, u, y) for (d, u, _), y in zip(rows, labels)]
counts = Counter(y for _, _, y in data)
print(len(data), "lines labelled with", len(batches), "sub-calls:", dict(counts))
"""


def _family_code(q: oolong.Question) -> str:
    """Python that computes `result` for one OOLONG question from `data` (date, user, label)."""
    f = q.family
    if f == "most_common_label":
        return 'result = "Label: " + max(LABELS, key=lambda x: counts[x])'
    if f == "least_common_label":
        return 'result = "Label: " + min(LABELS, key=lambda x: counts[x])'
    if f == "label_comparison":
        return (
            f"a, b = {q.label!r}, {q.label_b!r}\n"
            'phrase = ("more common than" if counts[a] > counts[b] else "less common than" '
            'if counts[a] < counts[b] else "same frequency as")\n'
            'result = f"Answer: {a} is {phrase} {b}"'
        )
    if f == "label_count":
        return f'result = f"Answer: {{counts[{q.label!r}]}}"'
    if f == "most_common_user":
        return (
            "per_user = Counter(u for _, u, _ in data)\n"
            'result = f"User: {per_user.most_common(1)[0][0]}"'
        )
    if f == "user_most_label":
        return (
            f"per_user = Counter(u for _, u, y in data if y == {q.label!r})\n"
            'result = f"User: {per_user.most_common(1)[0][0]}"'
        )
    if f == "user_subset_count":
        return (
            f"chosen = {set(q.users)!r}\n"
            f"n = sum(1 for _, u, y in data if u in chosen and y == {q.label!r})\n"
            'result = f"Answer: {n}"'
        )
    if f == "month_count":
        return (
            f"n = sum(1 for d, _, y in data if d.month == {q.month} and y == {q.label!r})\n"
            'result = f"Answer: {n}"'
        )
    if f == "date_range_count":
        assert q.start is not None and q.end is not None
        return (
            f"start, end = date.fromisoformat({q.start.isoformat()!r}), "
            f"date.fromisoformat({q.end.isoformat()!r})\n"
            f"n = sum(1 for d, _, y in data if start <= d <= end and y == {q.label!r})\n"
            'result = f"Answer: {n}"'
        )
    if f == "months_a_over_b":
        return (
            f"a = Counter((d.year, d.month) for d, _, y in data if y == {q.label!r})\n"
            f"b = Counter((d.year, d.month) for d, _, y in data if y == {q.label_b!r})\n"
            "n = sum(1 for month in set(a) | set(b) if a[month] > b[month])\n"
            'result = f"Answer: {n}"'
        )
    if f == "label_date_extreme":
        pick = "min" if q.extreme == "earliest" else "max"
        return (
            f"day = {pick}(d for d, _, y in data if y == {q.label!r})\n"
            'result = "Date: " + day.strftime("%m/%d/%Y")'
        )
    raise ConfigurationError(f"the oracle has no code for OOLONG family {f!r}")


_PAIRS_CODE = """\
per_user = defaultdict(Counter)
days = defaultdict(list)
for d, u, y in data:
    per_user[u][y] += 1
    days[(u, y)].append(d)
QUANTIFIERS = {"at least one": (1, None), "at least two": (2, None),
               "exactly one": (1, 1), "exactly two": (2, 2)}

def holds(u, conditions):
    for quantifier, label in conditions:
        low, high = QUANTIFIERS[quantifier]
        n = per_user[u][label]
        if n < low or (high is not None and n > high):
            return False
    return True

def symmetric_ok(u, either, date_label, side, when):
    if sum(per_user[u][x] for x in either) < 1:
        return False
    if date_label is None:
        return True
    if side == "after":
        return all(d > when for d in days[(u, date_label)])
    return all(d < when for d in days[(u, date_label)])

__SELECT__
pairs = sorted({(min(a, b), max(a, b)) for a in first for b in second if a != b})
print(len(first), "and", len(second), "qualifying users;", len(pairs), "pairs")
answer["content"] = "\\n".join(f"({a}, {b})" for a, b in pairs) if pairs else "[]"
answer["ready"] = True
"""


def _pairs_select(q: oolong_pairs.PairQuery) -> str:
    if q.symmetric:
        when = (
            "None" if q.date_value is None else f"date.fromisoformat({q.date_value.isoformat()!r})"
        )
        return (
            f"first = {{u for u in per_user if symmetric_ok(u, {list(q.labels)!r}, "
            f"{q.date_label!r}, {q.date_side!r}, {when})}}\n"
            "second = first"
        )
    return (
        f"first = {{u for u in per_user if holds(u, {list(q.first)!r})}}\n"
        f"second = {{u for u in per_user if holds(u, {list(q.second)!r})}}"
    )


def _fill(code: str, **values: Any) -> str:
    for name, value in values.items():
        code = code.replace(f"__{name.upper()}__", value if isinstance(value, str) else repr(value))
    return code


def root_code(benchmark: str, question: str) -> str:
    """The ```repl code a good model would write for this question (read off its text)."""
    if benchmark == sniah.BENCHMARK:
        key = sniah.parse_question(question)
        return _fill(
            _SNIAH_CODE,
            key=repr(key),
            chunk=repr(CHUNK_CHARS),
            prompt=repr(NEEDLE_PROMPT.format(key=key)),
            text_mark=repr(TEXT_MARK),
        )
    labelling = _fill(
        _LABEL_CODE,
        labels=repr(list(oolong.LABELS)),
        chunk=str(CHUNK_CHARS),
        prompt=repr(LABEL_PROMPT),
        questions_mark=repr(QUESTIONS_MARK),
    )
    if benchmark == oolong.BENCHMARK:
        family = _family_code(oolong.parse_question(question))
        return f"{labelling}{family}\nprint(result)\nFINAL(result)\n"
    if benchmark == oolong_pairs.BENCHMARK:
        query = oolong_pairs.parse_query(question)
        return labelling + _fill(_PAIRS_CODE, select=_pairs_select(query))
    raise ConfigurationError(f"the oracle does not know benchmark {benchmark!r}")


def _text(message: Message) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else str(content)


def make_root(benchmark: str) -> Callable[[list[Message]], str]:
    """The root's reply function: code on the first turn; a failure notice if asked again."""

    def reply(messages: list[Message]) -> str:
        if any(m.get("role") == "assistant" for m in messages):
            return FAILED
        user = "\n".join(_text(m) for m in messages if m.get("role") == "user")
        return "```repl\n" + root_code(benchmark, user) + "```"

    return reply


# ----------------------------------------------------------------------- the sub-LM


class OracleReader:
    """The sub-LM's reply function: a perfect reader, built on the task's hidden labels.

    Set `task` before each completion (tasks run one at a time on an oracle backend).
    """

    def __init__(self, task: Task | None = None) -> None:
        self._task: Task | None = None
        self._labels: dict[str, str] = {}
        if task is not None:
            self.task = task

    @property
    def task(self) -> Task | None:
        return self._task

    @task.setter
    def task(self, task: Task | None) -> None:
        self._task = task
        self._labels = {}
        if task is not None and "instances" in task.hidden:
            self._labels = dict(zip(task.hidden["instances"], task.hidden["labels"], strict=True))

    def __call__(self, messages: list[Message]) -> str:
        if self._task is None:
            raise ConfigurationError("OracleReader.task is not set")
        prompt = _text(messages[-1])
        match = NEEDLE_PROMPT_RE.search(prompt)
        if match is not None:
            return self._needle(match.group(1), prompt.partition(TEXT_MARK)[2])
        if LABEL_PROMPT in prompt:
            return self._label(prompt.partition(QUESTIONS_MARK)[2])
        return "I can only find needles and label questions."

    def _needle(self, key: str, text: str) -> str:
        needles: dict[str, str] = self._task.hidden.get("needles", {}) if self._task else {}
        value = needles.get(key)
        if value is not None and sniah.NEEDLE.format(key=key, value=value) in text:
            return value
        return "none"

    def _label(self, text: str) -> str:
        labels = []
        for line in text.splitlines():
            number, dot, question = line.partition(". ")
            if dot and number.isdigit():
                labels.append(self._labels.get(question, "unknown"))
        return json.dumps(labels)

    def plain_answer(self, messages: list[Message]) -> str:
        """What a perfect reader answers with the whole context in its prompt: the gold."""
        task = self._task
        if task is None:
            raise ConfigurationError("OracleReader.task is not set")
        prefix = {
            "substring": "The special magic number is: ",
            "label": "Label: ",
            "user": "User: ",
            "numeric": "Answer: ",
            "comparison": "Answer: ",
            "date": "Date: ",
            "pairs": "",
        }[task.answer_type]
        return prefix + task.gold


def backend_kwargs(
    benchmark: str, reader: OracleReader, extra: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`scripted` client kwargs for the oracle's root, sub-LM and plain-LM baseline.

    `extra` (e.g. {"prices": {"input": 1.0, "output": 4.0}}) goes to all three.
    """
    more = dict(extra or {})
    more.pop("model_name", None)
    more.pop("responses", None)
    root = {"model_name": ROOT_MODEL, "responses": make_root(benchmark), **more}
    sub = {"model_name": SUB_MODEL, "responses": reader, **more}
    plain = {"model_name": PLAIN_MODEL, "responses": reader.plain_answer, **more}
    return root, sub, plain
