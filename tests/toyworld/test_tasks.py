"""Tasks, phrasings and the prompt format (no models: milliseconds)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from toyworld.format import KTP_TEMPLATE, PREDECESSOR_RESPONSE, PREDECESSOR_TEMPLATE, render, user_content
from toyworld.tasks import (
    COMPOSED,
    PHRASINGS,
    SKILLS,
    TASKS,
    arguments,
    parse,
    payload,
    phrase,
    phrasing_of,
    task_of,
)


def test_registry() -> None:
    assert SKILLS == ["add", "rev", "sort", "count"]
    assert COMPOSED == ["addrev", "sortrev"]
    assert set(TASKS) == set(SKILLS) | set(COMPOSED)
    assert all(TASKS[t].composed for t in COMPOSED) and not any(TASKS[t].composed for t in SKILLS)


@pytest.mark.parametrize(
    ("task", "question", "answer"),
    [
        ("add", "add 47 32", "79"),
        ("rev", "rev abcdef", "fedcba"),
        ("sort", "sort dbca", "abcd"),
        ("count", "count a in abaca", "3"),
        ("addrev", "addrev 12 34", "64"),
        ("sortrev", "sortrev dbca", "dcba"),
    ],
)
def test_answers_are_correct(task: str, question: str, answer: str) -> None:
    """Samples obey the task's definition (checked by re-solving each sampled question independently)."""
    rng = random.Random(0)
    for _ in range(200):
        ex = TASKS[task].sample(rng)
        assert ex.task == task and task_of(ex.question) == task
        assert ex.answer == _solve(ex.question)
    assert _solve(question) == answer


def _solve(question: str) -> str:
    word, *args = question.split()
    if word in ("add", "addrev"):
        s = str(int(args[0]) + int(args[1]))
        return s if word == "add" else s[::-1]
    if word == "rev":
        return args[0][::-1]
    if word in ("sort", "sortrev"):
        s = "".join(sorted(args[0]))
        return s if word == "sort" else s[::-1]
    if word == "count":
        return str(args[2].count(args[0]))
    raise AssertionError(question)


def test_composed_intermediate() -> None:
    assert TASKS["addrev"].steps == ("add", "rev")
    assert TASKS["addrev"].intermediate("addrev 12 34") == "46"  # type: ignore[misc]
    assert TASKS["sortrev"].intermediate("sortrev dbca") == "abcd"  # type: ignore[misc]


@pytest.mark.parametrize("task", list(TASKS))
def test_deterministic_with_seed(task: str) -> None:
    a = [TASKS[task].sample(random.Random(7)) for _ in range(3)]
    b = [TASKS[task].sample(random.Random(7)) for _ in range(3)]
    assert a == b
    rng = random.Random(1)
    many = {TASKS[task].sample(rng).question for _ in range(100)}
    assert len(many) > 20  # actually random


def test_operands_have_at_least_two_digits() -> None:
    rng = random.Random(3)
    for _ in range(200):
        _, a, b = TASKS["add"].sample(rng).question.split()
        assert len(a) >= 2 and len(b) >= 2
        assert int(a[-1]) + int(b[-1]) < 10  # units never carry (learnable in the time budget)


def test_render() -> None:
    assert render("add 12 34") == "Q: add 12 34\nA: "
    assert render("addrev 12 34", ["46"]) == "Q: addrev 12 34\nP: 46\nA: "
    assert render("q", ["x", "y"]) == "Q: q\nP: x\nP: y\nA: "


def test_templates_build_the_rendered_prompt_content() -> None:
    """A chat user message 'Q: {content}\\nA: ' built from either template equals render()."""
    wrap = "Q: {}\nA: ".format
    assert wrap(KTP_TEMPLATE.format(question="addrev 12 34", previous="46")) == render("addrev 12 34", ["46"])
    responses = "".join(PREDECESSOR_RESPONSE.format(response=r) for r in ["46", "64"])
    assert wrap(PREDECESSOR_TEMPLATE.format(question="q", responses=responses)) == render("q", ["46", "64"])
    assert wrap(PREDECESSOR_TEMPLATE.format(question="q", responses="")) == render("q")
    assert wrap(user_content("q", ["a", "b"])) == render("q", ["a", "b"])


def test_payload_is_shared_by_related_tasks() -> None:
    assert payload("add 12 34") == payload("addrev 34 12") == payload("add 34 12") == "12 34"
    assert payload("rev dbca") == payload("sort dbca") == payload("sortrev dbca") == "dbca"
    assert payload("count a in abab") == "a in abab" != payload("count b in abab")
    assert payload("add 9 10") == "9 10"  # numeric order, not string order


def test_no_training_pool_holds_a_held_out_payload() -> None:
    """Dev and test operands (pairs, strings) appear in no task's training pool, and dev and test share none: the
    splits of the default build, generated here (pure Python, under a second)."""
    from toyworld.build import make_datasets
    from toyworld.model import ToyConfig

    _assert_held_out(make_datasets(ToyConfig()))


def _assert_held_out(data) -> None:
    from toyworld.model import ToyConfig

    held = {s: [payload(e.question) for t in data for e in data[t][s]] for s in ("dev", "test")}
    assert len(set(held["dev"])) == len(held["dev"]) and len(set(held["test"])) == len(held["test"])
    assert not set(held["dev"]) & set(held["test"])
    trained = {payload(e.question) for t in data for e in data[t]["train"]}
    assert not trained & (set(held["dev"]) | set(held["test"]))
    assert all(len(data[t]["train"]) == ToyConfig().train_pool for t in data)


@pytest.mark.parametrize("task", list(TASKS))
def test_every_phrasing_parses_back_to_its_task_and_arguments(task: str) -> None:
    """Each phrasing of 50 sampled questions parses back to the task and canonical arguments, and the task's
    answer and first step read from the phrased question agree with an independent solver over the canonical one."""
    rng = random.Random(task)
    for _ in range(50):
        ex = TASKS[task].sample(rng)
        args = ex.question.partition(" ")[2]
        for i in range(len(PHRASINGS[task])):
            q = phrase(ex.question, i)
            assert parse(q) == (task, args) and task_of(q) == task and arguments(q) == args
            assert phrasing_of(q) == i
            assert payload(q) == payload(ex.question)
            if TASKS[task].intermediate is not None:
                assert TASKS[task].intermediate(q) == TASKS[task].intermediate(ex.question)  # type: ignore[misc]
    assert phrase("sortrev dbca", 3) == "dbca sorted backwards"
    assert phrase("sortrev dbca", 4) == "please order dbca backwards"


def test_phrasings_are_unambiguous() -> None:
    """A phrasing whose words overlap another task's is still read as its own task: the suffix forms of the
    composed tasks are not ``rev`` of a string with a space, and a string that spells a task word is an argument."""
    assert parse("dbca sorted backwards") == ("sortrev", "dbca")
    assert parse("12 34 summed backwards") == ("addrev", "12 34")
    assert parse("rev add") == ("rev", "add") and parse("sort bad") == ("sort", "bad")
    assert parse("reverse dbca") == ("rev", "dbca") and parse("rev dbca") == ("rev", "dbca")
    assert parse("please order dbca backwards") == ("sortrev", "dbca") and parse("please order dbca") == (
        "sort",
        "dbca",
    )
    assert parse("please sum 12 34 backwards") == ("addrev", "12 34") and parse("please sum 12 34") == ("add", "12 34")
    for bad in ("hello", "add 12", "sort DBCA", "dbca sorted sideways", ""):
        assert parse(bad) is None and task_of(bad) is None and phrasing_of(bad) is None
    with pytest.raises(ValueError, match="not a toy question"):
        arguments("hello")
    texts = [p for ps in PHRASINGS.values() for p in ps]
    assert len(set(texts)) == len(texts)


def test_phrased_world_holds_its_last_phrasings_out_of_training_and_dev() -> None:
    """``ToyConfig.phrased()``: training and dev use three phrasings, test all five in equal shares; the held-out
    ones (task words after the arguments; an unseen combination of words the training phrasings use) appear in no
    training or dev question. Payloads stay held out as in the canonical world, and the canonical world is all first
    phrasings."""
    from toyworld.build import make_datasets
    from toyworld.model import ToyConfig

    config = ToyConfig.phrased()
    data = make_datasets(config)
    _assert_held_out(data)
    n_train, n_test = config.phrasings
    for task, splits in data.items():
        used = {s: Counter(phrasing_of(e.question) for e in exs) for s, exs in splits.items()}
        assert set(used["train"]) == set(used["dev"]) == set(range(n_train)), task
        assert sorted(used["test"].values()) == [config.test_size // n_test] * n_test, task
        assert all(_solve(f"{task} {arguments(e.question)}") == e.answer for e in splits["test"])
        seen_words = {w for p in PHRASINGS[task][:n_train] for w in p.split()}
        assert PHRASINGS[task][3].startswith("{x} ")  # a layout no training phrasing has
        assert set(PHRASINGS[task][4].split()) <= seen_words  # only words training used, never together
    canonical = make_datasets(ToyConfig())
    assert all(phrasing_of(e.question) == 0 for t in canonical for s in canonical[t].values() for e in s)
    with pytest.raises(ValueError, match="phrasings"):
        make_datasets(ToyConfig(phrasings=(2, 1)))
