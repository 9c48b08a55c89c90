"""S-NIAH: a single needle in a haystack, RULER style (`niah_single`).

The haystack is seeded pseudo-prose from a built-in word list (or RULER's repeated noise
sentences) of about 4 characters per nominal token; one needle "One of the special magic
numbers for {adjective}-{noun} is: {7 digits}." sits at a sentence boundary at one of 40 evenly
spaced depths. The answer scores 1 if it contains the number (case-insensitive substring).
`distractors` adds needles for other keys (RULER's multikey hard mode).
"""

from __future__ import annotations

import bisect
import itertools
import random
import re

from rlm.bench.tasks import CHARS_PER_TOKEN, Task, task_rng
from rlm.errors import ConfigurationError

BENCHMARK = "sniah"


def _options(text: str) -> tuple[str, ...]:
    """A word list written as one space-separated string."""
    return tuple(text.split(" "))


DEPTHS = tuple(i / 39 for i in range(40))  # RULER's 40 evenly spaced depths, 0% .. 100%
NOISE = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
QUESTION = "What is the special magic number for {key} mentioned in the provided text?"
QUESTION_RE = re.compile(r"special magic number for ([a-z]+-[a-z]+) mentioned")
NEEDLE = "One of the special magic numbers for {key} is: {value}."

ADJECTIVES = _options(
    "amber brave calm dusty eager fancy gentle hollow icy jolly keen lively mellow noble odd "
    "proud quiet rapid silent tidy upbeat vivid wary young zesty bitter brisk cosmic damp "
    "early faint grand humble ivory jagged lucky misty narrow orange pale rustic sandy tender"
)
NOUNS = _options(
    "anchor badger canyon dolphin ember falcon garden harbor island jungle kettle lantern "
    "meadow nectar orchard pebble quarry river saddle tundra valley walnut yarrow zephyr "
    "beacon cobalt drum forest glacier hammer ledger mirror novel oyster pillar ribbon summit"
)
WORDS = _options(
    "the a of and to in is was for on with as by at from that this it he she they we you "
    "time year people way day man woman child world life hand part place case week company "
    "system program question work government home water room mother area money story fact "
    "month lot right study book eye job word business issue side kind head house service "
    "friend father power hour game line end member law car city community name president team "
    "minute idea kid body information back parent face others level office door health person "
    "art war history party result change morning reason research girl guy moment air teacher "
    "force education foot boy age policy music market sense nation plan college interest "
    "death experience effect class control care field development role effort rate heart "
    "drug show leader light voice wife police mind price report decision son view relationship "
    "town road arm difference value building action model season society tax director position "
    "player record paper space ground form event official matter center couple site project "
    "activity star table need court oil situation cost industry figure street image phone data "
    "picture practice piece land product doctor wall patient worker news test movie north love "
    "support technology step baby computer type attention film tree source organization hair "
    "window evidence population site garden river stone bridge valley harbor winter summer "
    "walked found made took said gave kept built carried opened followed watched learned "
    "quickly slowly often never always quietly gently nearly almost rather simply really "
    "old new good small large long great little own other right big high different local "
    "early young important few public bad same able late hard major better economic strong "
    "possible whole free military true federal international full special easy clear recent"
)
WORDS = tuple(w for w in WORDS if w not in {"special", "magic", "number", "numbers"})


def _prose_pool(rng: random.Random, size: int = 512) -> list[str]:
    """Sentences of 6-18 random words; sampled from again to fill the haystack quickly."""
    pool = []
    for _ in range(size):
        words = rng.choices(WORDS, k=rng.randint(6, 18))
        pool.append(" ".join(words).capitalize() + ".")
    return pool


def _haystack(rng: random.Random, kind: str, target_chars: int) -> list[str]:
    """Sentences whose joined length (with one space between them) is just under the target."""
    pool = list(NOISE) if kind == "noise" else _prose_pool(rng)
    mean = sum(len(s) + 1 for s in pool) / len(pool)
    count = int(target_chars / mean * 1.1) + 8
    sentences = (
        [pool[i % len(pool)] for i in range(count)]
        if kind == "noise"
        else rng.choices(pool, k=count)
    )
    ends = list(itertools.accumulate(len(s) + 1 for s in sentences))
    keep = bisect.bisect_right(ends, target_chars + 1)
    return sentences[: max(1, keep)]


def _keys(rng: random.Random, count: int) -> list[str]:
    combos = [f"{a}-{n}" for a in ADJECTIVES for n in NOUNS]
    return rng.sample(combos, count)


def generate(
    length: int,
    index: int,
    *,
    seed: int = 0,
    haystack: str = "prose",
    distractors: int = 0,
) -> Task:
    """The S-NIAH task `index` at `length` tokens (≈ 4 * length characters)."""
    if haystack not in ("prose", "noise"):
        raise ConfigurationError(f"haystack must be 'prose' or 'noise', got {haystack!r}")
    rng = task_rng(BENCHMARK, length, index, seed)
    keys = _keys(rng, 1 + distractors)
    values = rng.sample(range(1_000_000, 10_000_000), 1 + distractors)
    needles = [NEEDLE.format(key=k, value=v) for k, v in zip(keys, values, strict=True)]
    budget = max(1, length * CHARS_PER_TOKEN - sum(len(n) + 1 for n in needles))
    sentences = _haystack(rng, haystack, budget)

    depth = rng.choice(DEPTHS)
    slots = [round(depth * len(sentences))] + [
        rng.randint(0, len(sentences)) for _ in range(distractors)
    ]
    # Insert from the back so the earlier slot indices stay valid.
    order = sorted(range(len(needles)), key=lambda i: (slots[i], -i), reverse=True)
    for i in order:
        sentences.insert(slots[i], needles[i])
    context = " ".join(sentences)

    key, value, needle = keys[0], str(values[0]), needles[0]
    return Task(
        benchmark=BENCHMARK,
        length=length,
        index=index,
        seed=seed,
        context=context,
        question=QUESTION.format(key=key),
        gold=value,
        answer_type="substring",
        family="single_needle" if not distractors else "multikey",
        hidden={
            "key": key,
            "value": value,
            "needle": needle,
            "offset": context.index(needle),
            "depth": depth,
            "haystack": haystack,
            "needles": {k: str(v) for k, v in zip(keys, values, strict=True)},
        },
    )


def parse_question(question: str) -> str:
    """The needle key a question asks about (what the oracle root reads off the question)."""
    match = QUESTION_RE.search(question)
    if match is None:
        raise ConfigurationError(f"not an S-NIAH question: {question!r}")
    return match.group(1)
