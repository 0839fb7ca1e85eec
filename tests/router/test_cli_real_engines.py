"""`swarmgate router collect`, `train` and `retrain` as a user runs them: real subprocesses, the real toy world's
checkpoints through the transformers engine, tiny budgets (one question per task, two steps)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from gateway.routing.policy import POINTER, load_policy
from tests.helpers import REPO
from tests.router.conftest import toy_router_config
from tests.router.test_workflow import log_line


def swarmgate(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "swarmgate.cli", "router", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)


def first_question(data: Path, task: str, split: str) -> dict:
    return json.loads((data / task / f"{split}.jsonl").read_text().splitlines()[0])


def test_collect_train_and_retrain_from_a_log_on_real_engines(toy_world, tmp_path: Path) -> None:
    cfg, config = toy_router_config(toy_world, tmp_path, limit=1, timesteps=128, max_steps=2)
    cfg["ppo"].update(n_steps=64, batch_size=64, n_epochs=2)
    config.write_text(yaml.safe_dump(cfg))

    done = swarmgate("collect", "--config", str(config), "--split", "train")
    assert done.returncode == 0, done.stdout + done.stderr
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        rows = db.execute("SELECT expert, question, previous, answer FROM answers").fetchall()
    # 6 questions x 6 experts at step 1, and each distinct first answer expanded once more at step 2
    first = [r for r in rows if r[2] == ""]
    assert len(first) == 36 and len(rows) > 36
    adder = {q: a for e, q, p, a in first if e == "toy-adder"}
    q_add = first_question(toy_world.data_dir, "add", "train")
    # the real adder checkpoint answered: a number near the sum (it is exact on ~92% of held-out pairs, not on all)
    got = adder[q_add["question"]]
    assert got.isdigit() and abs(int(got) - int(q_add["answer"])) <= 10, (q_add, got)

    done = swarmgate("train", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "policy" / POINTER).read_text().strip() == "v0001"

    # traffic: a training question, a dev question (must be dropped), and a new question corrected by feedback
    train_q = first_question(toy_world.data_dir, "rev", "train")
    dev_q = first_question(toy_world.data_dir, "addrev", "dev")
    new_q = "rev abcdefg"
    everything = "".join(p.read_text() for p in toy_world.data_dir.glob("*/*.jsonl"))
    assert f'"{new_q}"' not in everything  # new to the world: only the feedback gives its reference
    log = tmp_path / "requests.jsonl"
    log.write_text(
        log_line(train_q["question"], [("toy-reverser", "")], train_q["answer"], request_id="a")
        + log_line(dev_q["question"], [("toy-adder", "x"), ("toy-reverser", "")], "x", request_id="b")
        + log_line(new_q, [("toy-sorter", "")], "abcdefg", request_id="c")
        + json.dumps({"type": "feedback", "request_id": "c", "answer": "gfedcba", "ts": 1.0})
        + "\n"
    )
    args = ["--config", str(config), "--log", str(log), "--judge", "none", "--timesteps", "128"]
    done = swarmgate("retrain", *args, "--force-publish")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 logged questions are dev/test questions; left out of training" in out
    assert "'reference': 1, 'correction': 1" in out
    assert "published" in out and (tmp_path / "policy" / POINTER).read_text().strip() == "v0002"
    meta = load_policy(tmp_path / "policy").meta["training"]
    assert meta["logged_questions"] == 2 and meta["signals"]["correction"] == 1
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:  # collect-missing ran every expert on the new question
        got = db.execute(
            "SELECT DISTINCT expert FROM answers WHERE question = ? AND previous = ''", (new_q,)
        ).fetchall()
    assert {e for (e,) in got} == set(cfg["experts"])

    # the same again without --force-publish: a candidate is only published if it beats the serving one on dev
    done = swarmgate("retrain", *args)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    kept = "NOT published: the candidate's dev utility" in out
    assert kept or "published " in out
    assert (tmp_path / "policy" / POINTER).read_text().strip() == ("v0002" if kept else "v0003")
