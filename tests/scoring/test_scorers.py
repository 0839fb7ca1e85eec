"""Scoring answers against a reference: the one normalisation and exact match, edit similarity, token F1,
multiple choice; each reference scorer is both a per-answer ``Scorer`` (the router) and a batch ``Utility`` (the
searches)."""

from __future__ import annotations

import pytest

from scoring.base import PerExample
from scoring.examples import Example
from scoring.reference import EditSimilarity, ExactMatch, MultipleChoice, TokenF1
from scoring.text import exact_match, levenshtein, normalise

ADD = [Example("add 1 2", "3", "add"), Example("add 2 2", "4", "add")]
REV = [Example("rev ab", "ba", "rev"), Example("rev abc", "cba", "rev")]


async def test_exact_match_normalises_whitespace_and_case():
    em = ExactMatch()
    assert (await em.score(ADD, [" 3 ", "5"])).value == 0.5
    assert (await ExactMatch(case_sensitive=False).score([Example("q", "Paris")], ["paris"])).value == 1.0
    assert (await em.score([Example("q", "a b")], ["a   b\n"])).value == 1.0


async def test_edit_similarity_gives_partial_credit():
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3 and levenshtein("ab", "ab") == 0
    sim = EditSimilarity()
    r = await sim.score(REV, ["ba", "cab"])  # exact; two substitutions in three characters
    assert r.per_example == [1.0, pytest.approx(1 / 3)]
    assert (await sim.score([Example("q", "701")], ["107 "])).value == pytest.approx(1 / 3)  # digits right, order not
    assert (await sim.score([Example("q", "12")], ["1234"])).value == 0.5  # two extra characters over four
    assert (await sim.score([Example("q", "12")], [""])).value == 0.0
    assert (await EditSimilarity(case_sensitive=False).score([Example("q", "Ab")], ["aB"])).value == 1.0


async def test_multiple_choice_reads_the_committed_letter():
    exs = [
        Example("q1", "B", choices=("x", "y", "z")),
        Example("q2", "z", choices=("x", "y", "z")),
        Example("q3", "(A)", choices=("x", "y")),
    ]
    r = await MultipleChoice().score(exs, ["The answer is (B).", "C", "I think B"])
    assert r.per_example == [1.0, 1.0, 0.0]
    assert MultipleChoice.predicted_letter("A little thought: answer: D", 4) == "D"
    assert MultipleChoice.predicted_letter("no letter here", 4) is None
    with pytest.raises(ValueError, match="neither a letter"):
        MultipleChoice.gold_letter(Example("q", "w", choices=("x",)))


def test_one_normalisation_for_exact_match() -> None:
    assert normalise("  a \t b\n c ") == "a b c" and normalise(" Paris ", case_sensitive=False) == "paris"
    assert exact_match(" 85\n", "85") == 1.0
    assert exact_match("85", " 85 ") == 1.0
    assert exact_match("58", "85") == 0.0
    assert exact_match("", "85") == 0.0
    assert exact_match("8 5", "85") == 0.0  # inner whitespace collapses, it does not vanish
    assert exact_match("a   b\n", "a b") == 1.0
    assert exact_match("85", None) == 0.0


@pytest.mark.parametrize(
    ("pred", "ref", "exact", "f1"),
    [
        ("64", "64", 1.0, 1.0),
        (" 64\n", "64", 1.0, 1.0),
        ("46", "64", 0.0, 0.0),
        ("The cat sat", "the cat sat.", 0.0, 1.0),
        ("cat sat on mat", "the cat sat", 0.0, 2 * (2 / 4) * (2 / 2) / (2 / 4 + 2 / 2)),
        ("", "x", 0.0, 0.0),
    ],
)
def test_per_answer_scorers(pred: str, ref: str, exact: float, f1: float) -> None:
    assert ExactMatch()(pred, ref) == exact
    assert TokenF1()(pred, ref) == pytest.approx(f1)
    assert ExactMatch()(pred, None) == 0.0 and ExactMatch.needs_reference


async def test_a_per_answer_scorer_is_a_utility_with_the_same_scores() -> None:
    exs = [Example("q", "64"), Example("q", "the cat sat."), Example("q", None)]
    outs = ["64 ", "The cat sat", "x"]
    for scorer in (ExactMatch(), TokenF1(), EditSimilarity()):
        assert isinstance(scorer, PerExample)
        r = await scorer.score(exs, outs)
        assert r.per_example == [scorer(o, e.answer, e.question) for e, o in zip(exs, outs, strict=True)]
