"""Settings from the environment (the README's ``SWARMGATE_*`` variables), read by the real ``Settings`` class."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import Settings


def test_environment_fills_every_documented_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "SWARMGATE_SPEC": str(tmp_path / "spec.yaml"),
        "SWARMGATE_HOST": "127.0.0.1",
        "SWARMGATE_PORT": "8123",
        "SWARMGATE_API_KEYS": " sk-first-0123456 , sk-second-789abc,,",
        "SWARMGATE_ENGINE": "transformers",
        "SWARMGATE_MAX_CONCURRENCY": "3",
        "SWARMGATE_MAX_QUEUE": "0",
        "SWARMGATE_REQUEST_TIMEOUT_S": "2.5",
        "SWARMGATE_REQUEST_LOG": str(tmp_path / "requests.jsonl"),
        "SWARMGATE_SPEC_RELOAD_INTERVAL_S": "0.5",
        "SWARMGATE_LOG_LEVEL": "debug",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.spec == tmp_path / "spec.yaml" and (s.host, s.port) == ("127.0.0.1", 8123)
    assert s.api_keys == ["sk-first-0123456", "sk-second-789abc"]  # comma-separated, trimmed, empties dropped
    assert s.engine == "transformers" and (s.max_concurrency, s.max_queue) == (3, 0)
    assert s.request_timeout_s == 2.5 and s.request_log == tmp_path / "requests.jsonl"
    assert s.spec_reload_interval_s == 0.5 and s.log_level == "debug"


def test_no_keys_means_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMGATE_API_KEYS", "")
    assert Settings().api_keys == []


@pytest.mark.parametrize("keys", ["changeme", "sk-good-0123456,password", "short", "SECRET", "sk-xxxxxxxx"])
def test_placeholder_or_short_keys_are_refused(monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    monkeypatch.setenv("SWARMGATE_API_KEYS", keys)
    with pytest.raises(ValidationError, match="at least 8 characters and not a placeholder"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [("SWARMGATE_ENGINE", "tpu"), ("SWARMGATE_MAX_CONCURRENCY", "0"), ("SWARMGATE_PORT", "70000")],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_keyword_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMGATE_MAX_QUEUE", "9")
    assert Settings(max_queue=1).max_queue == 1
