"""The chain executor over fake engines (the real Engine protocol): routing, KTP, streaming, overrides, reload."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.engines.base import Chunk, SamplingParams
from gateway.errors import InvalidRequestError
from gateway.executors.base import ExecRequest, StepInfo
from gateway.executors.chain import ChainExecutor
from gateway.routing.policy import POINTER, WEIGHTS_FILE
from gateway.spec import ChainEnsemble, SpecError
from router.publish import publish_policy
from tests.router.conftest import scripted_policy
from tests.router.fakeworld import COSTS, EXPERTS, make_handles

PARAMS = SamplingParams(max_tokens=16, temperature=0.0)


def chain(root: Path, **spec: object) -> tuple[ChainExecutor, object, object]:
    handles, small, big = make_handles()
    ens = ChainEnsemble(kind="chain", policy=str(root), experts=EXPERTS, **spec)  # type: ignore[arg-type]
    return ChainExecutor.from_spec("toy-router", ens, handles, reload_interval_s=0.0), small, big


async def run(ex: ChainExecutor, question: str, **extra: object) -> tuple[str, list[StepInfo], list[Chunk]]:
    req = ExecRequest(prompt=[{"role": "user", "content": question}], params=PARAMS, request_id="r1", extra=dict(extra))
    chunks, steps = [], []
    async for ev in ex.stream(req):
        (steps if isinstance(ev, StepInfo) else chunks).append(ev)
    return "".join(c.text for c in chunks), steps, chunks


async def test_routes_through_two_experts_with_a_ktp_and_stops(tmp_path: Path) -> None:
    scripted_policy(tmp_path / "p", "adder", "reverser")
    ex, small, _ = chain(tmp_path / "p", max_steps=3)
    text, steps, chunks = await run(ex, "addrev 12 34")
    assert text == "64"
    assert [s.expert for s in steps] == ["adder", "reverser"]
    assert [s.node for s in steps] == ["0", "1"]
    assert small.calls == [("adder", "addrev 12 34"), ("reverser", "addrev 12 34\nP: 46")]  # the KTP carries "46"
    first, last = steps
    assert first.output == "46" and last.output is None  # intermediate outputs only
    assert first.extra["action"] == "adder" and last.extra["action"] == "reverser"
    assert all(s.extra["decision_ms"] >= 0 for s in steps) and "stop_decision_ms" in last.extra
    assert all(s.extra["policy_version"] == "v0001" for s in steps)
    assert [s.cost for s in steps] == [1.0, 1.0] and all(s.completion_tokens > 0 for s in steps)
    assert chunks[-1].finish_reason == "stop"


async def test_the_step_limit_call_streams_live(tmp_path: Path) -> None:
    scripted_policy(tmp_path / "p", "adder", "reverser")
    ex, _, _ = chain(tmp_path / "p", max_steps=3)
    text, steps, chunks = await run(ex, "addrev 12 34", max_steps=2)
    assert text == "64" and len(steps) == 2
    assert len([c for c in chunks if c.text]) == 2  # char by char from the engine, not one block
    assert "stop_decision_ms" not in steps[-1].extra  # no decision needed after the last allowed call


async def test_max_steps_one_is_a_single_routed_call(tmp_path: Path) -> None:
    scripted_policy(tmp_path / "p", "adder", "reverser")
    ex, _, _ = chain(tmp_path / "p")
    text, steps, _ = await run(ex, "addrev 12 34", max_steps=1)
    assert text == "46" and [s.expert for s in steps] == ["adder"]


async def test_spec_max_steps_beyond_the_policy_is_capped(tmp_path: Path) -> None:
    scripted_policy(tmp_path / "p", "adder", "reverser", max_steps=2)
    ex, _, _ = chain(tmp_path / "p", max_steps=8)
    text, steps, _ = await run(ex, "addrev 12 34")
    assert text == "64" and len(steps) == 2


async def test_cost_weight_override_changes_the_route(tmp_path: Path) -> None:
    scripted_policy(tmp_path / "p", "adder", "reverser")
    ex, _, _ = chain(tmp_path / "p")
    cheap, steps, _ = await run(ex, "addrev 12 34", cost_weight=1.0)
    assert cheap == "46" and len(steps) == 1 and steps[0].extra["stop_decision_ms"] >= 0
    _, steps, _ = await run(ex, "addrev 12 34", cost_weight=0.0)
    assert len(steps) == 2


async def test_spec_cost_weight_is_the_default(tmp_path: Path) -> None:
    scripted_policy(tmp_path / "p", "adder", "reverser")
    ex, _, _ = chain(tmp_path / "p", cost_weight=1.0)
    _, steps, _ = await run(ex, "addrev 12 34")
    assert len(steps) == 1


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"cost_weight": 2.0}, "cost_weight"),
        ({"cost_weight": "x"}, "cost_weight"),
        ({"max_steps": 4}, "max_steps"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_steps": 1.5}, "max_steps"),
    ],
)
async def test_out_of_range_overrides_are_client_errors(tmp_path: Path, extra: dict, param: str) -> None:
    scripted_policy(tmp_path / "p", "adder", "reverser")
    ex, _, _ = chain(tmp_path / "p")
    with pytest.raises(InvalidRequestError) as err:
        await run(ex, "addrev 12 34", **extra)
    assert err.value.param == param


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "policy not found"),
        (lambda root: scripted_policy(root, "adder", "reverser", experts=EXPERTS[:-1], costs=COSTS[:-1]), "must match"),
        (lambda root: scripted_policy(root, "adder", "reverser", costs=[*COSTS[:-1], 9.0]), "trained with cost 9.0"),
        (
            lambda root: (
                scripted_policy(root, "adder", "reverser"),
                (root / "v0001" / WEIGHTS_FILE).write_bytes(b"x"),
            ),
            "checksum",
        ),
    ],
    ids=["missing", "experts", "costs", "corrupted"],
)
def test_unservable_policies_raise_spec_errors(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "policy"
    setup(root)
    with pytest.raises(SpecError) as err:
        chain(root, max_steps=3)
    assert err.value.key == "ensembles.toy-router.policy" and message in err.value.problem


def test_spec_cost_weight_outside_the_trained_range_is_refused(tmp_path: Path) -> None:
    scripted_policy(tmp_path / "p", "adder", "reverser")
    with pytest.raises(SpecError, match="outside the range"):
        chain(tmp_path / "p", cost_weight=3.0)


async def test_hot_reload_between_requests_and_refusal_keeps_serving(tmp_path: Path) -> None:
    root = tmp_path / "policy"
    scripted_policy(root, "adder", "reverser")
    ex, _, _ = chain(root)
    assert (await run(ex, "addrev 12 34"))[0] == "64"

    scripted_policy(root, "sorter", "reverser")  # v0002
    text, steps, _ = await run(ex, "sortrev dbca")
    assert text == "dcba" and steps[0].extra["policy_version"] == "v0002"

    def corrupted(d: Path) -> None:
        scripted_policy(d, "adder", "reverser", publish=False)
        (d / WEIGHTS_FILE).write_bytes(b"\x00" * 32)

    publish_policy(root, corrupted)  # v0003, refused
    assert (root / POINTER).read_text().strip() == "v0003"
    text, steps, _ = await run(ex, "sortrev dbca")
    assert text == "dcba" and steps[0].extra["policy_version"] == "v0002"
    assert "checksum" in (ex.holder.last_error or "")


async def test_a_request_keeps_its_policy_when_a_reload_lands_mid_request(tmp_path: Path) -> None:
    root = tmp_path / "policy"
    scripted_policy(root, "adder", "reverser")
    handles, _, _ = make_handles(token_delay_s=0.01)
    ens = ChainEnsemble(kind="chain", policy=str(root), experts=EXPERTS, max_steps=3)
    ex = ChainExecutor.from_spec("toy-router", ens, handles, reload_interval_s=0.0)

    async def publish_soon() -> None:
        await asyncio.sleep(0.01)
        await asyncio.to_thread(scripted_policy, root, "sorter", "reverser")

    (text, steps, _), _ = await asyncio.gather(run(ex, "addrev 12 34"), publish_soon())
    assert text == "64" and {s.extra["policy_version"] for s in steps} == {"v0001"}
    _, steps, _ = await run(ex, "sortrev abc")
    assert steps[0].extra["policy_version"] == "v0002"


def test_executor_reports_its_experts_and_context(tmp_path: Path) -> None:
    scripted_policy(tmp_path / "p", "adder", "reverser")
    ex, _, _ = chain(tmp_path / "p")
    assert [e.name for e in ex.experts()] == EXPERTS and ex.kind == "chain"
    assert ex.max_model_len() == 512
    assert ex.count_prompt_tokens([{"role": "user", "content": "abc"}]) == 3


async def test_the_gateway_passes_the_route_so_far_to_the_policy(tmp_path: Path) -> None:
    """A hand-set policy that decides on the route features alone (calls per expert): adder, then reverser, then stop.
    Given no route, it would call the adder at every step."""
    import numpy as np

    from gateway.routing.observation import ObservationLayout
    from tests.router.conftest import DIM, write_linear_policy

    steps_limit, n = 3, len(EXPERTS)
    layout = ObservationLayout(max_steps=steps_limit, cost_scale=12.0, cost_weight_scale=1.0, n_experts=n)
    w = np.zeros((n + 1, layout.size(DIM)), dtype=np.float32)
    b = np.full(n + 1, -10.0, dtype=np.float32)
    route0 = 2 * DIM + 3  # the route features follow [question, answer, step, spent, cost_weight]
    adder, reverser, stop = EXPERTS.index("adder"), EXPERTS.index("reverser"), n
    b[adder], w[adder, route0 + adder] = 2.0, -30.0  # once called (feature 1/3), its logit falls to -8
    b[reverser], w[reverser, route0 + reverser] = 1.0, -30.0
    b[stop] = 0.0
    write_linear_policy(tmp_path / "p", w, b, layout, scripted="adder > reverser > stop, on route features")
    ex, _, _ = chain(tmp_path / "p", max_steps=3)
    text, steps, _ = await run(ex, "addrev 12 34")
    assert [s.expert for s in steps] == ["adder", "reverser"] and text == "64"
