"""collect -> train -> eval -> retrain on the fake world, through the same functions and CLI the toy world uses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gateway.engines.base import SamplingParams
from gateway.routing.policy import POINTER, load_policy
from router.cache import TrajectoryCache
from router.cli import app
from router.collect import collect
from router.config import RouterConfig, TrainConfig, load_config, to_dict
from router.retrain import digest_log
from router.workflow import evaluate_policy, load_split, retrain_from_logs, train_on
from scoring.examples import Example
from tests.router.conftest import small_config
from tests.router.fakeworld import EXPERTS, TASKS, TOY_KTP, make_examples, make_handles


def write_dataset(root: Path, splits: dict[str, list[Example]]) -> Path:
    for split, examples in splits.items():
        for task in TASKS:
            d = root / "data" / task
            d.mkdir(parents=True, exist_ok=True)
            rows = [{"question": e.question, "answer": e.answer, "task": e.task} for e in examples if e.task == task]
            (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


async def fill_cache(cfg: RouterConfig, examples: list[Example]) -> None:
    handles, *_ = make_handles()
    with TrajectoryCache(cfg.cache) as cache:
        await collect(
            handles,
            [e.question for e in examples],
            cache,
            template=TOY_KTP,
            params=SamplingParams(max_tokens=16),
            depth=cfg.env.max_steps,
            routes=[EXPERTS],
            progress=False,
        )


@pytest.fixture
async def world(tmp_path: Path) -> RouterConfig:
    train, dev = make_examples(4, seed=0), make_examples(3, seed=1)
    write_dataset(tmp_path, {"train": train, "dev": dev})
    cfg = small_config(tmp_path)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(tmp_path / "data")))
    await fill_cache(cfg, train + dev)
    return cfg


def test_train_then_eval_writes_policy_table_and_plot(world: RouterConfig) -> None:
    path = train_on(world, load_split(world, "train"), say=lambda _m: None)
    assert path.name == "v0001" and (Path(world.policy_dir) / POINTER).read_text().strip() == "v0001"
    meta = load_policy(world.policy_dir).meta
    assert meta["training"]["total_timesteps"] == 256 and meta["training"]["seed"] == 0
    report = evaluate_policy(world, cost_weights=[0.05, 0.5], say=lambda _m: None)
    rows = {(r["method"], r["cost_weight"]): r for r in report["rows"]}
    assert {m for m, _ in rows} == {
        *(f"single:{e}" for e in EXPERTS),
        *("random", "all-experts", "classifier", "oracle", "router"),
    }
    assert rows[("single:big", None)]["quality"] == pytest.approx(4 / 6)  # big can't do composed tasks
    assert rows[("single:big", None)]["cost"] == 4.0
    assert rows[("all-experts", None)]["cost"] == 9.0 and rows[("all-experts", None)]["calls"] == 6
    oracle = rows[("oracle", None)]
    assert oracle["quality"] == 1.0 and oracle["cost"] == pytest.approx((4 * 1 + 2 * 2) / 6)
    assert 0 < rows[("router", 0.05)]["calls"] <= 3
    assert report["best_single"]["method"] == "single:big"
    for name in ("table.md", "table.csv", "report.json", "frontier.png", "episodes.jsonl"):
        assert (Path(world.eval_dir) / "dev" / name).stat().st_size > 0
    # per question: every method but random, each question once, averaging back to the table's row
    lines = (Path(world.eval_dir) / "dev" / "episodes.jsonl").read_text().splitlines()
    episodes = [json.loads(line) for line in lines]
    questions = [x.question for x in load_split(world, "dev")]
    assert "episodes" not in json.loads((Path(world.eval_dir) / "dev" / "report.json").read_text())
    for key, row in rows.items():
        mine = [e for e in episodes if (e["method"], e["cost_weight"]) == key]
        if key[0] == "random":
            assert not mine
            continue
        assert [e["question"] for e in mine] == questions, key
        assert sum(e["quality"] for e in mine) / len(mine) == pytest.approx(row["quality"]), key
        assert sum(e["cost"] for e in mine) / len(mine) == pytest.approx(row["cost"]), key
    assert {tuple(e["route"]) for e in episodes if e["method"] == "single:big"} == {("big",)}


def test_eval_refuses_uncollected_questions(world: RouterConfig, tmp_path: Path) -> None:
    train_on(world, load_split(world, "train"), say=lambda _m: None)
    write_dataset(tmp_path, {"dev": make_examples(1, seed=9)})
    with pytest.raises(ValueError, match="router collect --split dev"):
        evaluate_policy(world, split="dev", say=lambda _m: None)


def test_a_vocabulary_policy_carries_its_vocabulary_to_serving(world: RouterConfig) -> None:
    """``encoder.vocab_min_questions``: the vocabulary comes from the training questions, travels in policy.json,
    and the served policy reads payloads by their shape, so it cannot tell two training strings of one length apart."""
    cfg = dataclasses.replace(world, encoder=dataclasses.replace(world.encoder, vocab_min_questions=3))
    said: list[str] = []
    train_on(cfg, load_split(cfg, "train"), say=said.append)
    assert any(m.startswith("encoder: ") and "addrev" in m and "by their shape" in m for m in said)
    policy = load_policy(cfg.policy_dir)
    vocab = policy.meta["encoder"]["vocab"]
    assert set(TASKS) <= set(vocab) and "in" in vocab  # every task word and the counting filler word
    assert not [w for w in vocab if w.isdigit() or len(w) > 7]  # no operand, no payload string
    questions = [x.question for x in load_split(cfg, "train") if x.question.startswith("rev ")]
    same = [q for q in questions if len(q) == len(questions[0])]
    assert len(same) > 1 and policy.decide(same[0], "", 0, 0.0).name == policy.decide(same[1], "", 0, 0.0).name
    assert np.allclose(*policy.encoder.encode(same[:2]))
    report = evaluate_policy(cfg, cost_weights=[0.05], say=lambda _m: None)
    assert any(r["method"] == "router" for r in report["rows"])
    blind = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, vocab_min_questions=1000))
    said.clear()
    train_on(blind, load_split(blind, "train"), say=said.append)
    assert any("no word is in 1000 training questions" in m for m in said)


def test_cli_train_and_eval_from_a_yaml_config(world: RouterConfig, tmp_path: Path) -> None:
    data = to_dict(world)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path) == dataclasses.replace(world, ppo=world.ppo)  # round trip
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--config", str(path), "--timesteps", "128", "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert load_policy(world.policy_dir).meta["training"]["seed"] == 3
    r = runner.invoke(app, ["eval", "--config", str(path), "--cost-weights", "0.05,0.5", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert "| oracle |" in r.output and (tmp_path / "ev" / "frontier.png").is_file()
    r = runner.invoke(app, ["eval", "--config", str(path), "--policy", str(tmp_path / "none")])
    assert r.exit_code == 1 and "policy not found" in r.output


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"env": {"max_step": 3}}))
    r = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert r.exit_code != 0 and "env: unknown keys ['max_step']" in r.output
    path.write_text(yaml.safe_dump({"ktp_template": "no placeholders"}))
    r = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert r.exit_code != 0 and "must contain {question}" in r.output
    path.write_text(yaml.safe_dump({"encoder": {"kind": "sentence", "vocab_min_questions": 5}}))
    r = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert r.exit_code != 0 and "only the hashed encoder reads words by their shape" in r.output
    path.write_text(yaml.safe_dump({"encoder": {"vocab_min_questions": -1}}))
    r = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert r.exit_code != 0 and "encoder.vocab_min_questions: give 0 (off)" in r.output


def log_line(question: str, route: list[tuple[str, str]], final: str, **over: object) -> str:
    steps = [
        {
            "node": str(i),
            "expert": e,
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "cost": 1.0,
            "latency_ms": 1.0,
            **({"output": out} if i < len(route) - 1 else {}),
        }
        for i, (e, out) in enumerate(route)
    ]
    rec = {
        "ts": 0.0,
        "request_id": "r",
        "model": "toy-router",
        "kind": "chain",
        "endpoint": "chat",
        "question": question,
        "prompt": [{"role": "user", "content": question}],
        "choices": [{"index": 0, "text": final, "finish_reason": "stop"}],
        "route": [steps],
        "usage": {},
        "status": 200,
    }
    rec.update(over)
    return json.dumps(rec) + "\n"


def test_digest_turns_logged_routes_into_transitions(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    log.write_text(
        log_line("addrev 12 34", [("adder", "46"), ("reverser", "")], "64")
        + log_line("add 1 2", [("adder", "")], "3", kind="expert", model="adder")
        + log_line("rev abc", [("reverser", "")], "cba", status=500)
        + log_line("sort cba", [("sorter", "")], "abc", kind="dag")
        + log_line("rev abc", [("other-expert", "x"), ("reverser", "")], "x")
        + "not json\n\n"
    )
    d = digest_log([log], EXPERTS)
    got = {(a.expert, a.question, a.previous, a.answer) for a in d.answers}
    assert got == {
        ("adder", "addrev 12 34", "", "46"),
        ("reverser", "addrev 12 34", "46", "64"),
        ("adder", "add 1 2", "", "3"),
        ("reverser", "rev abc", "x", "x"),
    }
    assert all(a.source == "log" for a in d.answers)
    assert d.questions == ["addrev 12 34", "add 1 2", "rev abc"]
    assert d.lines == 6 and d.skipped == {"error status": 1, "kind 'dag'": 1, "not JSON": 1}


async def test_retrain_from_logs_publishes_a_new_version(world: RouterConfig, tmp_path: Path) -> None:
    train_on(world, load_split(world, "train"), say=lambda _m: None)
    new_q = make_examples(1, seed=42)  # questions the gateway saw, not in the training set
    write_dataset(tmp_path / "refs", {"train": new_q})  # their references live in a dataset (by question)
    await fill_cache(world, new_q)  # the transitions the log does not show ("collect missing" through engines)
    log = tmp_path / "requests.jsonl"
    log.write_text("".join(log_line(e.question, [("big", "")], "?") for e in new_q))
    cfg = dataclasses.replace(world, train=TrainConfig(total_timesteps=128, n_envs=2, progress_bar=False))
    messages: list[str] = []
    result = retrain_from_logs(
        cfg,
        [str(log)],
        references=str(tmp_path / "refs"),
        collect_missing=False,
        force_publish=True,
        say=messages.append,
    )
    assert (
        result.published is not None
        and result.published.name == "v0002"
        and (Path(cfg.policy_dir) / POINTER).read_text().strip() == "v0002"
    )
    meta = load_policy(cfg.policy_dir).meta["training"]
    assert meta["logged_questions"] == len(new_q) and meta["examples"] == len(new_q) + 24
    with TrajectoryCache(cfg.cache) as cache:
        assert cache.stats().get("log", 0) == 0  # the engines' answers were there first; logs never overwrite
    assert any("6 log lines" in m for m in messages)
