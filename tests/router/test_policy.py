"""The pickle-free policy: export equals the SB3 actor, every broken policy is refused clearly, hot reload is atomic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gateway.routing.encoders import HashedNgramEncoder
from gateway.routing.holder import PolicyHolder
from gateway.routing.policy import POINTER, POLICY_JSON, WEIGHTS_FILE, PolicyError, load_policy, resolve_policy_dir
from router.config import RouterConfig
from router.env import ChainRoutingEnv
from router.publish import publish_policy
from router.train import export_policy, train_ppo
from scoring.reference import ExactMatch
from tests.router.conftest import scripted_policy
from tests.router.fakeworld import COSTS, EXPERTS, answer_fn, make_examples


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A PPO model trained for a few hundred steps on the fake world, exported."""
    from tests.router.conftest import small_config

    tmp = tmp_path_factory.mktemp("trained")
    cfg: RouterConfig = small_config(tmp)
    enc = HashedNgramEncoder(dim=32)
    examples = make_examples(3, seed=0)
    scorer = ExactMatch()
    model = train_ppo(
        cfg, lambda: ChainRoutingEnv(examples, EXPERTS, COSTS, answer_fn, scorer, enc, cfg.env), progress_bar=False
    )
    path = export_policy(model, tmp / "export", cfg, EXPERTS, COSTS, enc, {"note": "test"})
    return model, path, cfg


def test_export_reproduces_the_sb3_actor_logits(trained) -> None:
    model, path, _ = trained
    policy = load_policy(path)
    assert policy.experts == EXPERTS and policy.actions[-1] == "stop" and policy.costs == COSTS
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, size=(16, model.observation_space.shape[0])).astype(np.float32)
    with torch.no_grad():
        dist = model.policy.get_distribution(torch.as_tensor(obs))
        expected = dist.distribution.logits.numpy()
    ours = np.stack([policy.logits(o) for o in obs])
    # SB3 normalises logits (log-softmax); compare up to the per-row constant
    ours = ours - np.log(np.exp(ours).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    greedy, _ = model.predict(obs, deterministic=True)
    assert [int(np.argmax(policy.logits(o))) for o in obs] == greedy.tolist()


def test_policy_json_names_encoder_experts_costs_and_version(trained) -> None:
    _, path, _ = trained
    meta = json.loads((path / POLICY_JSON).read_text())
    assert meta["format"] == "swarmgate.router.policy" and meta["version"] == 1
    assert meta["encoder"] == {"kind": "hashed", "dim": 32, "ngrams": [1, 2, 3], "lowercase": True, "words": False}
    assert [e["name"] for e in meta["experts"]] == EXPERTS and [e["cost"] for e in meta["experts"]] == COSTS
    assert meta["weights"]["file"] == WEIGHTS_FILE and len(meta["weights"]["sha256"]) == 64
    assert meta["ktp_template"] == "{question}\nP: {previous}"
    assert not list(path.glob("*.pkl")) and not list(path.glob("*.zip"))


def test_serving_import_does_not_pull_stable_baselines3() -> None:
    code = (
        "import sys, gateway.routing.policy, gateway.routing.holder, gateway.executors.chain; "
        "bad = [m for m in sys.modules if m.startswith(('stable_baselines3', 'gymnasium'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_json(d: Path, **changes: object) -> None:
    meta = json.loads((d / POLICY_JSON).read_text())
    meta.update(changes)
    (d / POLICY_JSON).write_text(json.dumps(meta))


BROKEN = {
    "bad json": (lambda d: (d / POLICY_JSON).write_text("{not json"), "not valid JSON"),
    "other format": (lambda d: _edit_json(d, format="something-else"), "not a swarmgate router policy"),
    "wrong version": (lambda d: _edit_json(d, version=99), "format version 99"),
    "missing weights": (lambda d: (d / WEIGHTS_FILE).unlink(), "weights file not found"),
    "flipped bytes": (
        lambda d: (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:-8] + b"\x00" * 8),
        "checksum does not match",
    ),
    "garbage safetensors": (
        lambda d: ((d / WEIGHTS_FILE).write_bytes(b"garbage"), _edit_json(d, weights={"file": WEIGHTS_FILE})),
        "not a readable safetensors",
    ),
    "actions mismatch": (lambda d: _edit_json(d, actions=["a", "stop"]), "'actions' must be the experts"),
    "layer shapes": (
        lambda d: _edit_json(d, network={"activation": "tanh", "layers": [[10, 7]]}),
        "layer 0 has shape",
    ),
    "unknown activation": (
        lambda d: _edit_json(d, network={"activation": "gelu", "layers": [[67, 7]]}),
        "unknown activation",
    ),
    "encoder size": (lambda d: _edit_json(d, encoder={"kind": "hashed", "dim": 64}), "the network takes 67 inputs"),
    "missing field": (lambda d: _edit_json(d, observation=None), "'observation' has the wrong type"),
}


@pytest.mark.parametrize("breakage", list(BROKEN))
def test_broken_policies_are_refused_with_a_clear_error(tmp_path: Path, breakage: str) -> None:
    good = scripted_policy(tmp_path / "good", "adder", "reverser", publish=False)
    bad = _copy(good, tmp_path / "bad")
    damage, message = BROKEN[breakage]
    damage(bad)
    with pytest.raises(PolicyError, match=message):
        load_policy(bad)


def test_missing_policy_and_dangling_pointer(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="policy not found"):
        load_policy(tmp_path / "nope")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / POINTER).write_text("v0007\n")
    with pytest.raises(PolicyError, match="names 'v0007'"):
        load_policy(tmp_path / "root")


def test_expert_and_cost_mismatch_are_refused(tmp_path: Path) -> None:
    policy = load_policy(scripted_policy(tmp_path / "p", "adder", "reverser"))
    policy.check_experts(EXPERTS, COSTS)
    with pytest.raises(PolicyError, match="names and their order must match"):
        policy.check_experts(list(reversed(EXPERTS)), COSTS)
    with pytest.raises(PolicyError, match=r"trained with cost 4\.0 for 'big'"):
        policy.check_experts(EXPERTS, [*COSTS[:-1], 2.0])


def test_publish_versions_and_pointer(tmp_path: Path) -> None:
    root = tmp_path / "policy"
    v1 = scripted_policy(root, "adder", "reverser")
    v2 = scripted_policy(root, "sorter", "reverser")
    assert (v1.name, v2.name) == ("v0001", "v0002")
    assert (root / POINTER).read_text().strip() == "v0002"
    assert resolve_policy_dir(root) == v2 and resolve_policy_dir(root / POINTER) == v2
    assert load_policy(v1).version == "v0001" and load_policy(root).version == "v0002"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_holder_follows_the_pointer_and_keeps_serving_on_a_broken_version(tmp_path: Path) -> None:
    root = tmp_path / "policy"
    scripted_policy(root, "adder", "reverser")
    holder = PolicyHolder(root, validate=lambda p: p.check_experts(EXPERTS, COSTS), interval_s=0.0)
    assert holder.current().version == "v0001"
    assert not holder.maybe_reload()  # nothing changed

    def broken(d: Path) -> None:
        scripted_policy(d, "adder", "reverser", publish=False)
        (d / WEIGHTS_FILE).write_bytes(b"\x00" * 64)

    publish_policy(root, broken)  # v0002: corrupted
    assert not holder.maybe_reload()
    assert holder.current().version == "v0001" and "checksum" in (holder.last_error or "")
    scripted_policy(root, "sorter", "reverser", experts=list(reversed(EXPERTS)), costs=list(reversed(COSTS)))  # v0003
    assert not holder.maybe_reload()
    assert holder.current().version == "v0001" and "order must match" in (holder.last_error or "")
    scripted_policy(root, "sorter", "reverser")  # v0004: good
    assert holder.maybe_reload()
    assert holder.current().version == "v0004" and holder.last_error is None and holder.reloads == 1


def test_holder_checks_the_pointer_only_every_interval(tmp_path: Path) -> None:
    root = tmp_path / "policy"
    scripted_policy(root, "adder", "reverser")
    holder = PolicyHolder(root, interval_s=3600)
    scripted_policy(root, "sorter", "reverser")
    assert not holder.maybe_reload() and holder.current().version == "v0001"
    assert holder.maybe_reload(force=True) and holder.current().version == "v0002"


def test_policy_decisions_match_the_env_rollout(trained) -> None:
    """The served decision loop sees what the env showed PPO, and decides what the SB3 model decides.

    The expected observation is built by hand from the documented layout ([enc(question), enc(answer) or zeros,
    step / max_steps, spent / (max_steps * max cost), lambda / max trained lambda, calls of each expert / max_steps]),
    not with the code both share;
    the served decision is checked against the SB3 model's own greedy action on the env's observation."""
    model, path, cfg = trained
    policy = load_policy(path)
    examples = make_examples(2, seed=5)
    env = ChainRoutingEnv(examples, EXPERTS, COSTS, answer_fn, ExactMatch(), policy.encoder, cfg.env)
    enc, steps, lam = policy.encoder, cfg.env.max_steps, 0.5
    for i in range(len(examples)):
        obs, info = env.reset(options={"index": i, "cost_weight": lam})
        answer, step, spent, route = "", 0, 0.0, []
        while True:
            q = enc.encode([examples[i].question])[0]
            a = enc.encode([answer])[0] if answer else np.zeros(enc.dim, dtype=np.float32)
            extra = [min(step / steps, 1.0), min(spent / (steps * max(COSTS)), 1.0), lam / max(cfg.env.cost_weights)]
            extra += [route.count(e) / steps for e in EXPERTS]  # the route so far (EnvConfig.route_in_state)
            np.testing.assert_allclose(obs, np.concatenate([q, a, np.array(extra, dtype=np.float32)]), atol=1e-6)
            d = policy.decide(examples[i].question, answer, step, spent, lam, route=route)
            sb3, _ = model.predict(obs, deterministic=True)
            if step > 0 or int(sb3) != len(policy.actions) - 1:  # before the first call, stop is masked
                assert d.action == int(sb3), (step, d, sb3)
            obs, _, term, _, info = env.step(d.action)
            if term:
                break
            answer, step, spent, route = info["answer"], info["calls"], info["cost"], info["route"]
