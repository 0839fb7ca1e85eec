"""The blend executor on the transformers engine and the toy world: speculative == naive, exact sampling, gating,
the route, stop strings and logprobs, and the spec's refusals."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from gateway import blending as B
from gateway.engines.base import SamplingParams
from gateway.executors.base import ExecRequest, StepInfo
from gateway.runtime import Runtime
from gateway.spec import SpecError, parse_spec
from toyworld.format import render

pytestmark = pytest.mark.timeout(900)

MEMBERS = ["big", "adder", "rev"]
WEIGHTS = [0.5, 0.3, 0.2]


def toy_spec(root: Path, ensembles: dict[str, Any], engine: str = "transformers") -> dict[str, Any]:
    return {
        "experts": {
            "base": {"engine": engine, "model": f"{root}/base"},
            "adder": {"engine": engine, "model": f"{root}/base", "adapter": f"{root}/experts/adder"},
            "rev": {"engine": engine, "model": f"{root}/base", "adapter": f"{root}/experts/reverser"},
            "sorter": {"engine": engine, "model": f"{root}/base", "adapter": f"{root}/experts/sorter"},
            "big": {"engine": engine, "model": f"{root}/big"},
        },
        "ensembles": ensembles,
    }


def blends(**over: Any) -> dict[str, Any]:
    common = {"kind": "blend", "experts": MEMBERS, "weights": WEIGHTS, **over}
    return {
        "naive": {**common, "speculate": 0},
        "spec": {**common, "speculate": 4},
        "spec1": {**common, "speculate": 1},
        "gate0_step": {**common, "speculate": 0, "gate": {"threshold": 0.0}},
        "gate0_spec": {**common, "speculate": 3, "gate": {"threshold": 0.0}},
        "gated_step": {**common, "speculate": 0, "gate": {"threshold": 0.4}},
        "gated_spec": {**common, "speculate": 4, "gate": {"threshold": 0.4}},
        "pexp_naive": {**common, "speculate": 0, "rule": "loglinear"},
        "pexp_spec": {**common, "speculate": 4, "rule": "loglinear"},
        "lora_only": {"kind": "blend", "experts": ["base", "adder", "sorter"], "speculate": 4},
    }


def toy_prompts(root: Path, n: int) -> list[str]:
    out: list[str] = []
    tasks = ["add", "rev", "sort", "count"]
    rows = {t: [json.loads(x) for x in (root / "data" / t / "dev.jsonl").read_text().splitlines()] for t in tasks}
    i = 0
    while len(out) < n:
        t = tasks[i % len(tasks)]
        out.append(render(rows[t][i // len(tasks)]["question"]))
        i += 1
    return out


async def run(ex: Any, prompt: Any, params: SamplingParams) -> tuple[str, list[int], list[dict[str, Any]], Any]:
    text, ids, steps, last = "", [], [], None
    async for ev in ex.stream(ExecRequest(prompt, params, "t")):
        if isinstance(ev, StepInfo):
            steps.append(ev.public())
        else:
            text += ev.text
            ids += ev.token_ids
            last = ev
    return text, ids, steps, last


@pytest.fixture(scope="module")
async def rt(toy_world: Any):
    runtime = await Runtime.build(parse_spec(toy_spec(toy_world.root, blends())))
    yield runtime
    await runtime.close()


GREEDY = SamplingParams(max_tokens=10, temperature=0.0)


@pytest.mark.parametrize(
    ("n", "variants"),
    [
        (24, ("spec", "spec1", "gate0_step", "gate0_spec")),
        pytest.param(120, ("spec", "gate0_spec"), marks=pytest.mark.slow, id="120-prompts"),
    ],
)
async def test_greedy_speculative_and_gate_off_equal_naive(
    rt: Runtime, toy_world: Any, n: int, variants: tuple[str, ...]
) -> None:
    prompts = toy_prompts(toy_world.root, n)
    differ: dict[str, list[str]] = {}
    accepted = drafted = 0
    for p in prompts:
        _ref, ref_ids, _, _ = await run(rt.executors["naive"], p, GREEDY)
        for name in variants:
            _text, ids, steps, _ = await run(rt.executors[name], p, GREEDY)
            if ids != ref_ids:
                differ.setdefault(name, []).append(p)
            if name == "spec":
                blend = steps[0]["blend"]
                accepted += blend["accepted"]
                drafted += blend["drafted"]
    assert not differ, {k: len(v) for k, v in differ.items()}
    assert drafted > 0 and accepted / drafted > 0.5  # the lead agrees with the blend most of the time


async def test_naive_equals_a_hand_blend_from_full_recomputation(rt: Runtime, toy_world: Any) -> None:
    """The executor's KV-cached sessions against next_token_logprobs over the whole sequence every step."""
    members = [rt.experts[n] for n in MEMBERS]
    for rule, ens in (("linear", "naive"), ("loglinear", "pexp_naive")):
        for p in toy_prompts(toy_world.root, 12):
            ids = members[0].engine.encode_for_blend(p)
            want: list[int] = []
            for _ in range(GREEDY.max_tokens):
                lps = [await m.engine.next_token_logprobs(ids + want, adapter=m.adapter) for m in members]
                tok = int(torch.argmax(B.combine(lps, WEIGHTS, rule)))  # type: ignore[arg-type]
                want.append(tok)
                if tok in members[0].engine.blend_eos_ids():
                    break
            _, got, _, _ = await run(rt.executors[ens], p, GREEDY)
            assert got == want, (rule, p)


async def test_loglinear_speculative_equals_naive(rt: Runtime, toy_world: Any) -> None:
    for p in toy_prompts(toy_world.root, 30):
        assert (await run(rt.executors["pexp_spec"], p, GREEDY))[1] == (
            await run(rt.executors["pexp_naive"], p, GREEDY)
        )[1]


async def test_gated_blend_reports_fraction_and_matches_between_decoders(rt: Runtime, toy_world: Any) -> None:
    fractions = []
    for p in toy_prompts(toy_world.root, 40):
        a = await run(rt.executors["gated_step"], p, GREEDY)
        b = await run(rt.executors["gated_spec"], p, GREEDY)
        assert a[1] == b[1], p
        fractions.append(a[2][0]["blend"]["fraction_blended"])
        assert b[2][0]["blend"]["fraction_blended"] == pytest.approx(fractions[-1])
    assert 0.0 < sum(fractions) / len(fractions) < 1.0
    # a gated round whose drafts are all confident never calls the other members: fewer member forward passes
    _, _, naive_steps, _ = await run(rt.executors["spec"], toy_prompts(toy_world.root, 1)[0], GREEDY)
    _, _, gated_steps, _ = await run(rt.executors["gated_spec"], toy_prompts(toy_world.root, 1)[0], GREEDY)
    assert gated_steps[1]["forward_passes"] <= naive_steps[1]["forward_passes"]


def _chi2_pvalue(observed: Counter, expected: dict[tuple[int, ...], float], n: int) -> float:
    from scipy.stats import chi2

    cells, rest_o, rest_e = [], 0, 0.0
    for outcome, prob in expected.items():
        if prob * n >= 5:
            cells.append((observed.get(outcome, 0), prob * n))
        else:
            rest_o += observed.get(outcome, 0)
            rest_e += prob * n
    rest_o += sum(c for o, c in observed.items() if o not in expected)
    cells.append((rest_o, rest_e))
    stat = sum((o - e) ** 2 / e for o, e in cells if e > 0)
    return float(chi2.sf(stat, len(cells) - 1))


async def _exact_two_token_law(
    rt: Runtime, prompt: str, temperature: float, names: list[str] = MEMBERS, weights: list[float] = WEIGHTS
) -> dict[tuple[int, ...], float]:
    members = [rt.experts[n] for n in names]
    eos = members[0].engine.blend_eos_ids()
    ids = members[0].engine.encode_for_blend(prompt)

    async def probs(prefix: list[int]) -> torch.Tensor:
        lps = [await m.engine.next_token_logprobs(ids + prefix, adapter=m.adapter) for m in members]
        return B.sampling_probs(B.combine(lps, weights), temperature)

    law: dict[tuple[int, ...], float] = {}
    first = await probs([])
    for t1 in torch.nonzero(first > 1e-6).flatten().tolist():
        if t1 in eos:
            law[(t1,)] = float(first[t1])
            continue
        second = await probs([t1])
        for t2 in torch.nonzero(second > 1e-7).flatten().tolist():
            law[(t1, t2)] = float(first[t1] * second[t2])
    return law


@pytest.mark.slow  # 400 seeded samples (30 s); CI runs it
async def test_seeded_speculative_samples_follow_the_blend_chi_square(rt: Runtime) -> None:
    prompt, temperature, n = render("sort qzb"), 1.6, 400
    law = await _exact_two_token_law(rt, prompt, temperature)
    lead_law = await _exact_two_token_law(rt, prompt, temperature, ["big"], [1.0])
    params = SamplingParams(max_tokens=2, temperature=temperature)
    seen: Counter = Counter()
    for seed in range(n):
        _, ids, _, _ = await run(rt.executors["spec"], prompt, SamplingParams(**{**params.__dict__, "seed": seed}))
        seen[tuple(ids)] += 1
    assert _chi2_pvalue(seen, law, n) > 1e-3
    # the test has power: the same samples are rejected as draws from the lead's own law (what the drafts follow)
    assert _chi2_pvalue(seen, lead_law, n) < 1e-3
    # seeded: the same seed gives the same sample
    again = await run(rt.executors["spec"], prompt, SamplingParams(**{**params.__dict__, "seed": 7}))
    first = await run(rt.executors["spec"], prompt, SamplingParams(**{**params.__dict__, "seed": 7}))
    assert again[1] == first[1]


async def test_route_stop_logprobs_and_length(rt: Runtime, toy_world: Any) -> None:
    p = toy_prompts(toy_world.root, 2)[1]  # a rev prompt
    _text, ids, steps, last = await run(rt.executors["spec"], p, SamplingParams(max_tokens=3, temperature=0.0))
    assert last.finish_reason == "length" and len(ids) == 3
    assert [s["expert"] for s in steps] == MEMBERS
    assert [s["role"] for s in steps] == ["lead", "member", "member"]
    assert sum(s["weight"] for s in steps) == pytest.approx(1.0)
    assert all(s["completion_tokens"] == 3 for s in steps)
    blend = steps[0]["blend"]
    assert blend["mode"] == "speculative" and blend["positions"] == 3 and 0 <= blend["acceptance_rate"] <= 1
    full, _, _, _ = await run(rt.executors["spec"], p, SamplingParams(max_tokens=10, temperature=0.0))
    cut = full[2]
    stopped, _, _, last = await run(rt.executors["spec"], p, SamplingParams(max_tokens=10, temperature=0, stop=(cut,)))
    assert last.finish_reason == "stop" and stopped == full[: full.index(cut)]
    # logprobs are the blended distribution's
    params = SamplingParams(max_tokens=2, temperature=0.0, logprobs=3)
    chunks = []
    async for ev in rt.executors["naive"].stream(ExecRequest(p, params, "t")):
        if not isinstance(ev, StepInfo):
            chunks.append(ev)
    lps = [lp for c in chunks for lp in (c.logprobs or [])]
    members = [rt.experts[n] for n in MEMBERS]
    ids0 = members[0].engine.encode_for_blend(p)
    want = B.combine([await m.engine.next_token_logprobs(ids0, adapter=m.adapter) for m in members], WEIGHTS)
    assert lps[0].logprob == pytest.approx(float(want.max()), abs=1e-4)
    assert len(lps[0].top) == 3 and lps[0].top[0][1] == pytest.approx(float(want.max()), abs=1e-4)


async def test_lora_members_share_one_engine_and_one_forward_per_step(rt: Runtime, toy_world: Any) -> None:
    ex = rt.executors["lora_only"]
    assert len({id(m.engine) for m in ex.experts()}) == 1
    _, ids, steps, _ = await run(ex, toy_prompts(toy_world.root, 1)[0], GREEDY)
    assert ids and steps[1]["forward_passes"] == steps[2]["forward_passes"]  # the two others are rows of one batch


def test_spec_refuses_bad_blends_naming_the_key(toy_world: Any) -> None:
    root = toy_world.root
    cases = [
        ({"experts": ["big", "nope"]}, "ensembles.b.experts[1]", "unknown expert"),
        ({"experts": ["big", "adder"], "weights": [1.0]}, "ensembles.b", "1 weights for 2 experts"),
        ({"experts": ["big", "adder"], "lead": "rev"}, "ensembles.b", "lead"),
        ({"experts": ["big", "remote"]}, "ensembles.b.experts[1]", "can't score tokens"),
        ({"experts": ["big", "adder"], "weights": [0, 0]}, "ensembles.b", ">= 0 with at least one > 0"),
        ({"experts": ["big"], "speculate": -1}, "ensembles.b.speculate", "greater than or equal"),
    ]
    for body, key, problem in cases:
        spec = toy_spec(root, {"b": {"kind": "blend", **body}})
        spec["experts"]["remote"] = {"engine": "openai", "url": "http://127.0.0.1:9/v1", "model": "x"}
        with pytest.raises(SpecError) as err:
            parse_spec(spec)
        assert err.value.key.startswith(key) and problem in err.value.problem, (body, err.value)
