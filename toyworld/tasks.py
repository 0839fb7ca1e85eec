"""Synthetic toy tasks: generators of examples, scored by exact match (``scoring.text.exact_match``).

Four *skills* a single small model can learn, and two *composed* tasks whose second step works on the first step's
result, so that a chain (or DAG) of two specialists solves what neither solves alone:

=========  ==========================  =========  =====================================
task       question                    answer     how it is solved
=========  ==========================  =========  =====================================
add        ``add 47 32``               ``79``     adder
rev        ``rev abcdef``              ``fedcba`` reverser
sort       ``sort dbca``               ``abcd``   sorter
count      ``count a in abaca``        ``3``      counter
addrev     ``addrev 12 34``            ``64``     adder (``46``) then reverser (``64``)
sortrev    ``sortrev dbca``            ``dcba``   sorter (``abcd``) then reverser (``dcba``)
=========  ==========================  =========  =====================================

Everything is deterministic given a ``random.Random``.

Questions can also come in other *phrasings* (``PHRASINGS``: ``sum 47 32``, ``please sort dbca``, ``dbca sorted
backwards``...), so that the first word need not name the route. ``ToyConfig.phrasings`` says how many the training
and dev splits use and how many the test split uses (the rest held out of training); the default world uses only
the canonical form above.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from scoring.examples import Example

ALPHABET = "abcdefgh"
"""Letters the string tasks draw from (small, so a tiny char-level model learns them quickly)."""
ADD_RANGE = (10, 99)
"""Inclusive operand range of ``add``/``addrev``: two-digit operands. The units digits never carry (their sum is
below 10; the tens may overflow into a third digit): a tiny model learns this in a few hundred steps, with carries
it needs thousands."""
REV_LEN = (3, 8)
"""Inclusive string length range of ``rev``."""
SORT_LEN = (3, 8)
"""Inclusive string length range of ``sort``/``sortrev``."""
COUNT_LEN = (3, 8)
"""Inclusive string length range of ``count``."""
COUNT_ALPHABET = "ab"
"""Letters of ``count`` strings (two letters keep it learnable; with lengths 3..8 there are 1008 distinct questions,
enough for disjoint dev, test and training sets)."""


@dataclass(frozen=True)
class Task:
    """A task: a name, a generator of (question, answer) pairs and, for composed tasks, its two steps."""

    name: str
    """Key in ``TASKS``; also the question's first word."""  # in the canonical phrasing, PHRASINGS[name][0]
    generate: Callable[[random.Random], tuple[str, str]]
    """Draws one (question, answer) pair from ``rng``."""
    steps: tuple[str, ...] = ()
    """For composed tasks: the skills that solve it in order (e.g. ``("add", "rev")``); empty for skills."""
    intermediate: Callable[[str], str] | None = None
    """For composed tasks: the first step's answer for a question (what a ``P:`` line should hold)."""

    def sample(self, rng: random.Random) -> Example:
        """One example drawn with ``rng`` (deterministic for a seeded ``rng``)."""
        question, answer = self.generate(rng)
        return Example(question=question, answer=answer, task=self.name)

    @property
    def composed(self) -> bool:
        """Whether this task needs two skills."""
        return bool(self.steps)


def _letters(rng: random.Random, bounds: tuple[int, int], alphabet: str = ALPHABET) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(*bounds)))


def _operands(rng: random.Random) -> tuple[int, int]:
    while True:
        a, b = rng.randint(*ADD_RANGE), rng.randint(*ADD_RANGE)
        if a % 10 + b % 10 < 10:
            return a, b


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = _operands(rng)
    return f"add {a} {b}", str(a + b)


def _rev(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng, REV_LEN)
    return f"rev {s}", s[::-1]


def _sort(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng, SORT_LEN)
    return f"sort {s}", "".join(sorted(s))


def _count(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng, COUNT_LEN, COUNT_ALPHABET)
    c = rng.choice(COUNT_ALPHABET)
    return f"count {c} in {s}", str(s.count(c))


def _addrev(rng: random.Random) -> tuple[str, str]:
    a, b = _operands(rng)
    return f"addrev {a} {b}", str(a + b)[::-1]


def _sortrev(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng, SORT_LEN)
    return f"sortrev {s}", "".join(sorted(s))[::-1]


def _addrev_intermediate(question: str) -> str:
    a, b = arguments(question).split()
    return str(int(a) + int(b))


def _sortrev_intermediate(question: str) -> str:
    return "".join(sorted(arguments(question)))


TASKS: dict[str, Task] = {
    "add": Task("add", _add),
    "rev": Task("rev", _rev),
    "sort": Task("sort", _sort),
    "count": Task("count", _count),
    "addrev": Task("addrev", _addrev, steps=("add", "rev"), intermediate=_addrev_intermediate),
    "sortrev": Task("sortrev", _sortrev, steps=("sort", "rev"), intermediate=_sortrev_intermediate),
}
"""Every task by name."""
SKILLS: list[str] = ["add", "rev", "sort", "count"]
"""Tasks a single specialist solves."""
COMPOSED: list[str] = ["addrev", "sortrev"]
"""Tasks that need two skills in sequence."""


PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": ("add {x}", "sum {x}", "please add {x}", "{x} summed", "please sum {x}"),
    "rev": ("rev {x}", "reverse {x}", "please rev {x}", "{x} backwards", "please reverse {x}"),
    "sort": ("sort {x}", "order {x}", "please sort {x}", "{x} sorted", "please order {x}"),
    "count": ("count {x}", "how many {x}", "please count {x}", "{x} counted", "please how many {x}"),
    "addrev": (
        "addrev {x}",
        "sum {x} backwards",
        "please addrev {x}",
        "{x} summed backwards",
        "please sum {x} backwards",
    ),
    "sortrev": (
        "sortrev {x}",
        "order {x} backwards",
        "please sortrev {x}",
        "{x} sorted backwards",
        "please order {x} backwards",
    ),
}
"""Task -> the phrasings of its questions, ``{x}`` standing for the arguments in canonical layout (``47 32``,
``dbca``, ``a in abaca``: operands keep one layout, since the tiny adder fails to learn several). Index 0 is the
canonical ``<task> <args>``; 1 and 2 are a synonym and a polite prefix. The phrased world (``ToyConfig.phrased()``)
trains on those three and holds the last two out for test, as two kinds of novelty:

- 3 puts the task words after the arguments, a *layout* no training question has (the first word is an operand);
- 4 joins the prefix of 2 to the synonym of 1, a *combination* of words every expert has seen, only never together
  (``please sum 47 32``)."""
_ARGUMENTS = {
    "add": r"\d+ \d+",
    "addrev": r"\d+ \d+",
    "rev": f"[{ALPHABET}]+",
    "sort": f"[{ALPHABET}]+",
    "sortrev": f"[{ALPHABET}]+",
    "count": f"[{COUNT_ALPHABET}] in [{COUNT_ALPHABET}]+",
}
_PATTERNS: list[tuple[str, int, re.Pattern[str]]] = [
    (task, i, re.compile("^" + re.escape(p).replace(re.escape("{x}"), f"(?P<x>{_ARGUMENTS[task]})") + "$"))
    for task, phrasings in PHRASINGS.items()
    for i, p in enumerate(phrasings)
]


def phrase(question: str, index: int) -> str:
    """A canonical question (``sort dbca``) in its task's phrasing number ``index`` (``please sort dbca``)."""
    task, _, args = question.partition(" ")
    return PHRASINGS[task][index].format(x=args)


def parse(question: str) -> tuple[str, str] | None:
    """(task, canonical arguments) of a question in any phrasing, or None when it is not a toy question. Each
    phrasing is matched whole with its task's argument grammar, so ``dbca sorted backwards`` is ``sortrev`` and not
    ``rev`` of ``dbca sorted``."""
    found = _match(question)
    return (found[0], found[2]) if found else None


def phrasing_of(question: str) -> int | None:
    """The index in ``PHRASINGS[task]`` of the phrasing a question is written in, or None for a non-toy question."""
    found = _match(question)
    return found[1] if found else None


def _match(question: str) -> tuple[str, int, str] | None:
    q = question.strip()
    for task, index, pattern in _PATTERNS:
        m = pattern.match(q)
        if m:
            return task, index, m.group("x")
    return None


def arguments(question: str) -> str:
    """The canonical arguments of a question in any phrasing (``47 32``, ``dbca``, ``a in abaca``)."""
    parsed = parse(question)
    if parsed is None:
        raise ValueError(f"not a toy question: {question!r}")
    return parsed[1]


def payload(question: str) -> str:
    """What a question is *about*, in a form related tasks share: the unordered operand pair of ``add``/``addrev``
    (``addrev 34 12`` and ``add 12 34`` share ``12 34``: the adder answers both), the string of ``rev``/``sort``/
    ``sortrev`` (``sort dbca`` and ``sortrev dbca`` share ``dbca``), the whole argument of ``count``. The build keeps
    every payload of dev and test out of every training pool, so no expert has seen a held-out question's operands
    under another task's name (issue 11: 66% of addrev test operand pairs used to be adder training questions)."""
    task, args = parse(question) or ("", question.strip().partition(" ")[2])
    if task in ("add", "addrev"):
        a, b = sorted(args.split(), key=int)
        return f"{a} {b}"
    return args


def task_of(question: str) -> str | None:
    """The task a question belongs to, in any phrasing, or None when it is not a toy question."""
    parsed = parse(question)
    return parsed[0] if parsed else None
