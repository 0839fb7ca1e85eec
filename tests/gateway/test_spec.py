"""Spec loading: valid files resolve paths; every error names the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.spec import ChainEnsemble, SpecError, load_spec


@pytest.fixture()
def world(tmp_path: Path) -> Path:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    (tmp_path / "policy").mkdir()
    (tmp_path / "topo.json").write_text("{}")
    return tmp_path


def write(dir_: Path, text: str) -> Path:
    p = dir_ / "spec.yaml"
    p.write_text(text)
    return p


def test_valid_spec_resolves_relative_paths(world: Path) -> None:
    spec = load_spec(
        write(
            world,
            """
experts:
  a: {model: base, cost: 1}
  b: {engine: transformers, model: base, adapter: lora, cost: 2.5}
  r: {engine: openai, url: "http://x:8000/v1", model: remote}
ensembles:
  chain: {kind: chain, policy: policy, experts: [a, b], max_steps: 3}
  dag: {kind: dag, topology: topo.json}
  swarm: {kind: expert, model: base, adapter: lora}
""",
        )
    )
    assert spec.experts["a"].model == str(world / "base")
    assert spec.experts["b"].adapter == str(world / "lora")
    assert spec.experts["r"].model == "remote"
    chain = spec.ensembles["chain"]
    assert isinstance(chain, ChainEnsemble) and chain.policy == str(world / "policy")
    assert spec.model_names() == ["a", "b", "r", "chain", "dag", "swarm"]


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ("experts:\n  a: {model: missing}\n", "experts.a.model", "not found"),
        ("experts:\n  a: {model: base, adapter: base}\n", "experts.a.adapter", "not a PEFT adapter"),
        ("experts:\n  a: {engine: openai, model: m}\n", "experts.a", "needs 'url'"),
        ("experts:\n  a: {model: base, colour: red}\n", "experts.a.colour", "Extra inputs"),
        ("experts:\n  a: {model: base, cost: -1}\n", "experts.a.cost", "greater than or equal"),
        ("experts:\n  a: {model: base, engine: tgi}\n", "experts.a.engine", "Input should be"),
        (
            "experts:\n  a: {model: base}\nensembles:\n  c: {kind: chain, policy: policy, experts: [a, zz]}\n",
            "ensembles.c.experts[1]",
            "unknown expert 'zz'",
        ),
        (
            "experts:\n  a: {model: base}\nensembles:\n  d: {kind: dag, topology: nope.json}\n",
            "ensembles.d.topology",
            "not found",
        ),
        (
            "experts:\n  a: {model: base}\nensembles:\n  a: {kind: dag, topology: topo.json}\n",
            "",
            "both as expert and ensemble",
        ),
        ("experts: {}\n", "", "serves nothing"),
        ("experts:\n  a: {model: base}\nensembles:\n  x: {kind: blend2}\n", "ensembles.x", "tag"),
        ("- just\n- a list\n", "", "expected a mapping"),
    ],
)
def test_errors_name_file_key_and_problem(world: Path, body: str, key: str, problem: str) -> None:
    path = write(world, body)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert key in message, message
    assert problem in message, message


def test_invalid_yaml_names_line(world: Path) -> None:
    path = write(world, "experts:\n  a: {model: base\n")
    with pytest.raises(SpecError, match=r"line \d+, column \d+: invalid YAML"):
        load_spec(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_api_key_env_must_exist(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SG_TEST_KEY", raising=False)
    path = write(world, "experts:\n  r: {engine: openai, url: 'http://x/v1', model: m, api_key_env: SG_TEST_KEY}\n")
    with pytest.raises(SpecError, match=r"experts\.r\.api_key_env: environment variable SG_TEST_KEY is not set"):
        load_spec(path)
    monkeypatch.setenv("SG_TEST_KEY", "secret-value")
    assert load_spec(path).experts["r"].api_key_env == "SG_TEST_KEY"
