"""OOLONG's instances: general-knowledge questions written from per-label templates, so a
question's TREC coarse label is a function of its text (a perfect reader gets it right) yet
takes reading to tell. Used by `oolong.py` (and through it OOLONG-Pairs).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

from rlm.bench.tasks import word_list as _options

T = TypeVar("T")

_ORGS = _options(
    "World Health Organization|National Aeronautics and Space Administration|European Union|"
    "International Monetary Fund|United Nations Educational, Scientific and Cultural "
    "Organization|North Atlantic Treaty Organization|Federal Bureau of Investigation|"
    "International Olympic Committee|World Trade Organization|Central Intelligence Agency"
)
_THINGS = _options(
    "telephone|printing press|light bulb|bicycle|steam engine|radio|television|microscope|"
    "telescope|zipper|parachute|compass|thermometer|calculator|typewriter|airplane|camera|"
    "piano|refrigerator|barometer|submarine|helicopter|stethoscope|dishwasher"
)
_FEATS = _options(
    "climb Mount Everest|fly across the Atlantic|walk on the Moon|sail around the world|"
    "reach the South Pole|swim the English Channel|split the atom|orbit the Earth|"
    "cross the Sahara on foot|run a mile in under four minutes"
)
_ADJ = _options("Silent|Broken|Golden|Hidden|Last|Crimson|Distant|Winter|Quiet|Burning|Lost|Open")
_NOUN = _options("Harbor|Garden|Empire|River|Window|Mountain|Letter|Voyage|Orchard|Crown|Lantern")
_PLACES = _options(
    "Timbuktu|Kathmandu|Reykjavik|Marrakesh|Ushuaia|Tromso|Valparaiso|Zanzibar|Samarkand|"
    "Hobart|Galway|Lhasa|Cusco|Bergen|Dubrovnik|Hanoi|Quito|Tbilisi|Windhoek|Yerevan"
)
_LANDMARKS = _options(
    "Great Barrier Reef|Eiffel Tower|Angel Falls|Machu Picchu|Table Mountain|Ha Long Bay|"
    "Giant's Causeway|Uluru|Chichen Itza|Mont Saint-Michel|Petra|Victoria Falls"
)
_UNITS = (
    ("inches", "foot"),
    ("feet", "mile"),
    ("ounces", "pound"),
    ("seconds", "hour"),
    ("days", "leap year"),
    ("cups", "gallon"),
    ("grams", "kilogram"),
    ("centimeters", "meter"),
    ("minutes", "day"),
    ("pints", "quart"),
    ("players", "rugby team"),
    ("keys", "piano"),
)
_ANIMALS = _options(
    "otter|falcon|dolphin|beaver|penguin|frog|bee|whale|parrot|lizard|owl|camel|eagle|"
    "squirrel|turtle|rabbit|shark|ant|bat|elephant"
)
_VERBS = _options(
    "migrate|hibernate|sing at dawn|shed their skin|swim in groups|build nests|glow at night|"
    "travel in herds|change color|sleep during the day"
)
_CONCEPTS = _options(
    "democracy|entropy|irony|photosynthesis|inflation|nostalgia|gravity|justice|metaphor|"
    "erosion|empathy|supply and demand|the placebo effect|natural selection"
)
_HABITATS = _options(
    "the desert|the Arctic|coral reefs|rainforests|mangrove swamps|the deep ocean|"
    "alpine meadows|the savanna|caves|freshwater lakes"
)
_FRUITS = _options("banana|plum|lime|mango|blueberry|pomegranate|kiwi|apricot|cherry|fig")
_FIRST = _options("Ada|Milo|Nora|Ivan|Lena|Omar|Ruth|Felix|Iris|Hugo|Clara|Tariq|Mae|Otto")
_LAST = _options("Varga|Okafor|Lindqvist|Moreau|Takeda|Quinn|Haldane|Petrov|Alvarez|Brandt")


def _pick(rng: random.Random, options: Sequence[T]) -> T:
    """`rng.choice`, about twice as fast (1M-token windows have 25k lines to write)."""
    return options[int(rng.random() * len(options))]


def _acronym(rng: random.Random) -> str:
    return "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=rng.randint(2, 5)))


def _title(rng: random.Random) -> str:
    return f"The {_pick(rng, _ADJ)} {_pick(rng, _NOUN)}"


def _person(rng: random.Random) -> str:
    return f"{_pick(rng, _FIRST)} {_pick(rng, _LAST)}"


_TEMPLATES: dict[str, tuple[Callable[[random.Random], str], ...]] = {
    "abbreviation": (
        lambda r: f"What does {_acronym(r)} stand for ?",
        lambda r: f"What is the full form of {_acronym(r)} ?",
        lambda r: f"What is the abbreviation of the {_pick(r, _ORGS)} ?",
    ),
    "entity": (
        lambda r: f"What {_pick(r, _ANIMALS)} lives in {_pick(r, _HABITATS)} ?",
        lambda r: f"What color is a ripe {_pick(r, _FRUITS)} ?",
        lambda r: f"What instrument did {_person(r)} play ?",
    ),
    "description and abstract concept": (
        lambda r: f"Why do {_pick(r, _ANIMALS)}s {_pick(r, _VERBS)} ?",
        lambda r: f"What is the meaning of {_pick(r, _CONCEPTS)} ?",
        lambda r: f"How does a {_pick(r, _THINGS)} work ?",
    ),
    "human being": (
        lambda r: f"Who invented the {_pick(r, _THINGS)} ?",
        lambda r: f"Who was the first person to {_pick(r, _FEATS)} ?",
        lambda r: f"Who wrote the book {_title(r)} ?",
    ),
    "location": (
        lambda r: f"Where is {_pick(r, _PLACES)} located ?",
        lambda r: f"In what country is {_pick(r, _PLACES)} ?",
        lambda r: f"Where can you find the {_pick(r, _LANDMARKS)} ?",
    ),
    "numeric value": (
        lambda r: "How many {} are in a {} ?".format(*_pick(r, _UNITS)),
        lambda r: f"When was the {_pick(r, _THINGS)} invented ?",
        lambda r: f"How far is {_pick(r, _PLACES)} from {_pick(r, _PLACES)} ?",
    ),
}


def make_instance(rng: random.Random, label: str) -> str:
    """A question whose coarse label is `label` (the template decides it)."""
    templates = _TEMPLATES[label]
    return templates[int(rng.random() * len(templates))](rng)
