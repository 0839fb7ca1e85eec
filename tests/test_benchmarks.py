"""Every script in ``benchmarks/`` runs to the end on a tiny budget and writes the JSON its docstring promises.

Speed is never asserted (the numbers are the benchmark's, quoted from quiet runs); what is checked is that each
script still runs against today's gateway, engines and toy world, and that what it writes is consistent: every
request accounted for, positive rates, ratios that are the quotient of the rates they name.
Slow (each starts servers or engines); the vLLM ones also carry the vllm marker. CI runs both.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO
from tests.router.conftest import scripted_policy

pytestmark = pytest.mark.slow


def bench(script: str, out: Path, *args: str, timeout: float = 540) -> tuple[dict, str]:
    cmd = [sys.executable, str(REPO / "benchmarks" / script), *args, "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


@pytest.mark.vllm
def test_gateway_overhead(toy_world, tmp_path: Path) -> None:
    args = ["--requests", "16", "--rounds", "2", "--warmup-passes", "1", "--concurrency", "1", "4"]
    res, stdout = bench("gateway_overhead.py", tmp_path / "o.json", *args)
    assert [r["concurrency"] for r in res["summary"]] == [1, 4]
    assert len(res["runs"]) == 3 * 2 * 2  # targets x concurrency levels x rounds
    for row in res["summary"]:
        for target in ("engine (direct)", "vllm serve", "swarmgate"):
            assert row[target]["rps"] > 0 and 0 < row[target]["p50_ms"] <= row[target]["p95_ms"]
        assert row["rps_ratio_vs_vllm_serve"] == pytest.approx(row["swarmgate"]["rps"] / row["vllm serve"]["rps"])
        assert len(row["rps_ratio_per_round"]) == 2
        assert row["gateway_overhead_header_ms"]["p50"] >= 0  # the gateway sent x-swarmgate-overhead-ms
    # CPU per request, by role, from the kernel's counters (10 ms ticks: summed over a target's passes, not per pass)
    cpu = {t: {k: 0.0 for k in ("client", "api", "core")} for t in ("engine (direct)", "vllm serve", "swarmgate")}
    for run in res["runs"]:
        c = run["cpu_ms_per_request"]
        assert c["total"] == pytest.approx(c["client"] + c["api"] + c["core"], abs=0.01)
        for k in ("client", "api", "core"):
            cpu[run["target"]][k] += c[k]
    for target, c in cpu.items():
        assert c["client"] > 0 and c["core"] > 0, (target, c)  # the engine core did the work, whoever served it
        assert (c["api"] > 0) == (target != "engine (direct)"), (target, c)  # the direct target has no API process
    assert "gateway/vllm" in stdout


@pytest.mark.vllm
def test_streaming(toy_world, tmp_path: Path) -> None:
    args = ["--requests", "8", "--rounds", "1", "--warmup-passes", "0", "--concurrency", "2", "--max-tokens", "8"]
    res, _ = bench("streaming.py", tmp_path / "s.json", *args)
    assert len(res["runs"]) == 2  # vllm serve and swarmgate, one round at one concurrency
    (row,) = res["summary"]
    for target in ("vllm serve", "swarmgate"):
        m = row[target]
        assert m["rps"] > 0 and 0 < m["ttft_p50_ms"] <= m["ttft_p95_ms"] and 0 < m["itl_p50_ms"] <= m["itl_p95_ms"]
    assert row["added_ttft_p50_ms"] == pytest.approx(row["swarmgate"]["ttft_p50_ms"] - row["vllm serve"]["ttft_p50_ms"])
    for run in res["runs"]:  # both servers' API processes are found and counted (streaming costs them per frame)
        assert run["cpu_ms_per_request"]["api"] > 0 and run["cpu_ms_per_request"]["core"] > 0, run


def test_blend(toy_world, tmp_path: Path) -> None:
    # two engines (the default members, the three generalists, share one base engine: nothing to count across engines)
    args = ["--engine", "transformers", "--prompts", "2", "--max-tokens", "4", "--rounds", "1"]
    args += ["--members", "toy-big", "toy-adder", "toy-reverser"]
    res, stdout = bench("blend.py", tmp_path / "b.json", *args)
    configs = {row["config"]: row for row in res["table"]}
    assert set(configs) == {
        "lead alone",
        "2 naive",
        "3 naive",
        "3 gated",
        "2 speculative",
        "3 speculative",
        "3 spec+gated",
        "lead generate",
    }
    assert configs["lead alone"]["vs_lead_alone"] == 1.0
    for name, row in configs.items():
        # the JSON rounds seconds to 1 us and the rate to 0.01 tokens/s: compare within that rounding, not a fixed ratio
        lo, hi = row["tokens"] / (row["seconds"] + 1e-6), row["tokens"] / max(row["seconds"] - 1e-6, 1e-9)
        assert row["tokens"] > 0 and lo - 0.01 <= row["tokens_per_s"] <= hi + 0.01, (name, row)
        speculative = "speculative" in name or "spec+" in name
        assert (row["acceptance_rate"] is not None) == speculative, name
        if speculative:
            assert 0 <= row["acceptance_rate"] <= 1
    # naive blending steps every engine once per token: toy-big leads; toy-adder and toy-reverser are LoRA adapters
    # on one base engine, scored together in one forward pass (the shared-base fast path)
    assert configs["3 naive"]["lead_forwards_per_token"] == pytest.approx(1.0, abs=0.3)
    assert configs["3 naive"]["other_forwards_per_token"] == pytest.approx(1.0, abs=0.3)
    assert configs["3 naive"]["fraction_blended"] == 1.0 and 0 <= configs["3 gated"]["fraction_blended"] <= 1
    assert configs["3 naive"]["tokens"] == configs["3 speculative"]["tokens"]
    assert "wrote" in stdout


def test_load(toy_world, tmp_path: Path) -> None:
    args = ["--levels", "1", "6", "--duration", "2", "--max-concurrency", "2", "--max-queue", "2"]
    res, _ = bench("load.py", tmp_path / "l.json", *args)
    assert [lv["concurrency"] for lv in res["levels"]] == [1, 6]
    for lv in res["levels"]:
        assert lv["lost"] == 0 and not lv["outcomes"].get("hung")  # every request answered: 200, 429 or 503
        assert lv["in_flight_after"] == 0 and lv["queued_after"] == 0
        assert sum(lv["outcomes"].values()) == lv["sent"]


def test_router_bench(toy_world, tmp_path: Path) -> None:
    experts = ["toy-base", "toy-adder", "toy-reverser", "toy-sorter", "toy-counter", "toy-big"]
    policy = tmp_path / "policy"
    scripted_policy(policy, "toy-adder", "toy-reverser", experts=experts, costs=[1, 1, 1, 1, 1, 4], max_steps=2)
    cfg = yaml.safe_load((REPO / "router" / "toy.yaml").read_text())
    cfg.update(spec=str(toy_world.spec_path), cache=str(tmp_path / "cache.sqlite"), policy_dir=str(policy))
    cfg["data"].update(dir=str(toy_world.data_dir))
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(cfg))
    args = ["--config", str(config), "--requests", "6", "--concurrency", "2", "--skip-sentence"]
    res, _ = bench("router_bench.py", tmp_path / "r.json", *args)
    assert res["decide"]["hashed"]["p50_ms"] > 0
    text = json.dumps(res)
    assert '"executor"' in text and '"http"' in text


def test_swarm_search(toy_world, tmp_path: Path) -> None:
    args = [
        "--engines",
        "transformers",
        "--particles",
        "4",
        "--iterations",
        "1",
        "--dev-limit",
        "2",
        "--test-limit",
        "2",
        "--quiet",
    ]
    res, _ = bench("swarm_search.py", tmp_path / "w.json", *args)
    runs = res["runs"]
    assert {r["search"] for r in runs} == {"swarm", "graph"}
    assert all(r["engine"] == "transformers" for r in runs)
    for search in ("swarm", "graph"):
        variants = [r for r in runs if r["search"] == search]
        assert len(variants) >= 2 and len({r["cache"] for r in variants}) == len(variants)
        # the output cache changes the time, never the result
        assert len({(r["best_dev"], r["best_test"]) for r in variants}) == 1
        assert all(r["utility_evaluations"] > 0 and r["evals_per_s"] > 0 for r in variants)


def test_phrasings(tmp_path: Path) -> None:
    """On a tiny phrased build (seconds): every model and both chains scored per phrasing, the held-out ones named."""
    from dataclasses import replace

    from toyworld.build import build_toy_world
    from toyworld.model import ToyConfig
    from toyworld.tasks import phrasing_of

    world = build_toy_world(tmp_path / "toy", config=replace(ToyConfig.tiny(), phrasings=(3, 5)), progress=False)
    # a router eval folder as `swarmgate router eval` writes it: the router at two lambdas (dev selected 0.1) and a
    # baseline, each question once, quality 1 on the held-out combination phrasing (4) only, cost its phrasing index
    questions = [e.question for t in ("add", "addrev") for e in world.examples(t, "test")]
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"split": "test", "selected_cost_weight": 0.1}))
    (folder / "episodes.jsonl").write_text(
        "".join(
            json.dumps({"method": m, "cost_weight": w, "question": q, "quality": float(k == 4), "cost": float(k)})
            + "\n"
            for m, w in (("router", 0.1), ("router", 0.5), ("keyword", None))
            for q in questions
            for k in [phrasing_of(q)]
        )
    )
    args = ("--root", str(world.root), "--router-eval", str(folder))
    res, stdout = bench("phrasings.py", tmp_path / "p.json", *args)
    assert res["phrasings"] == [3, 5] and res["held_out"] == ["3", "4"]
    acc = res["accuracy"]
    assert set(acc) == {*world.accuracy, "adder>reverser", "sorter>reverser"}
    assert set(acc["adder>reverser"]) == {"addrev"} and set(acc["sorter>reverser"]) == {"sortrev"}
    for row in acc.values():
        for cells in row.values():
            assert set(cells) == {"0", "1", "2", "3", "4", "all"} and all(0.0 <= v <= 1.0 for v in cells.values())
    # the overall score of a model is its build-time test accuracy (same greedy decoding, same questions)
    for name, row in world.accuracy.items():
        assert {t: acc[name][t]["all"] for t in row} == pytest.approx(row), name
    assert "held-out phrasing 3: " in stdout and "held-out phrasing 4: " in stdout
    routing = res["router_eval"]
    assert routing["split"] == "test" and routing["selected_cost_weight"] == 0.1
    assert set(routing["methods"]) == {"router (lambda 0.1)", "keyword"}  # the unselected lambda is left out
    count = [sum(phrasing_of(q) == k for q in questions) for k in range(5)]
    assert all(count)  # test asks every phrasing
    for row in routing["methods"].values():
        assert set(row) == {"seen", "held-out 3", "held-out 4", "all"}
        assert row["held-out 3"] == {"n": count[3], "quality": 0.0, "cost": 3.0}
        assert row["held-out 4"] == {"n": count[4], "quality": 1.0, "cost": 4.0}
        seen = sum(count[:3])
        assert row["seen"]["n"] == seen and row["seen"]["quality"] == 0.0
        assert row["seen"]["cost"] == pytest.approx((count[1] + 2 * count[2]) / seen)
        assert row["all"]["n"] == len(questions) and row["all"]["quality"] == pytest.approx(count[4] / len(questions))
    assert "routing on test by phrasing" in stdout


def test_lengths(tmp_path: Path) -> None:
    """On a tiny build (seconds): per length, the training questions and each model's right/asked on dev and test
    add up to the splits, and match what the build's data files hold."""
    from collections import Counter

    from toyworld.build import build_toy_world
    from toyworld.model import ToyConfig

    world = build_toy_world(tmp_path / "toy", config=ToyConfig.tiny(), progress=False)
    res, stdout = bench("lengths.py", tmp_path / "l.json", "--root", str(world.root), "--tasks", "count", "add")

    def lengths(task: str, split: str) -> dict[str, int]:  # `count a in abab`: 4 letters; `add 12 345`: 5 digits
        words = [e.question.split() for e in world.examples(task, split)]
        return dict(Counter(str(len(w[-1]) if task == "count" else len(w[1] + w[2])) for w in words))

    for task in ("count", "add"):
        got = res["tasks"][task]
        assert {k: v for k, v in got["train_questions"].items() if v} == lengths(task, "train")
        for split in ("dev", "test"):
            for model in ("counter", "big"):
                cells = got["splits"][split][model]
                assert {k: c[1] for k, c in cells.items() if c[1]} == lengths(task, split)
                assert all(0 <= right <= asked for right, asked in cells.values())
    assert "count: exact match by length" in stdout
