"""The multitask utility: the harmonic mean over tasks of another utility's per-task means."""

from __future__ import annotations

import pytest

from offline_search.multitask import Multitask, harmonic_mean
from scoring.examples import Example
from scoring.reference import ExactMatch

ADD = [Example("add 1 2", "3", "add"), Example("add 2 2", "4", "add")]
REV = [Example("rev ab", "ba", "rev"), Example("rev abc", "cba", "rev")]


async def test_multitask_is_the_harmonic_mean_over_tasks():
    mt = Multitask(ExactMatch())
    r = await mt.score(ADD + REV, ["3", "4", "ba", "x"])  # add 1.0, rev 0.5
    assert r.per_task == {"add": 1.0, "rev": 0.5}
    assert r.value == pytest.approx(2 / (1 / 1.0 + 1 / 0.5))
    assert (await mt.score(ADD + REV, ["3", "4", "x", "x"])).value == 0.0  # useless at one task: 0
    # a task the config names but the batch lacks counts as 0
    assert (await Multitask(ExactMatch(), ["add", "sort"]).score(ADD, ["3", "4"])).value == 0.0
    assert harmonic_mean([]) == 0.0
