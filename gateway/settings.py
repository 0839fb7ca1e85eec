"""Gateway settings: environment variables with the ``SWARMGATE_`` prefix (or keyword arguments in tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARMGATE_", extra="ignore")

    spec: Path | None = None
    """The spec YAML to serve. None: the toy world's spec (built first if missing)."""
    host: str = "0.0.0.0"
    """Interface to bind."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port to bind."""
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Accepted bearer keys (comma-separated in the environment). Empty: no authentication."""
    engine: Literal["transformers", "vllm"] | None = None
    """Force every ``engine: auto`` expert onto this engine (None: vllm where it imports, else transformers)."""
    max_concurrency: int = Field(default=64, ge=1)
    """Requests executing at once; more wait in the queue."""
    max_queue: int = Field(default=256, ge=0)
    """Requests allowed to wait for a slot; beyond it the gateway answers 429."""
    request_timeout_s: float = Field(default=300.0, gt=0)
    """Whole-request limit (engine work included); past it the gateway answers 504."""
    request_log: Path | None = None
    """Opt-in JSONL log of requests, routes and answers (the router retrains from it)."""
    spec_reload_interval_s: float = Field(default=0.0, ge=0)
    """Poll the spec file (and reload it atomically when it changes) this often; 0 turns polling off."""
    log_level: str = "info"
    """Python logging level for the gateway."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _safe_keys(cls, keys: list[str]) -> list[str]:
        for k in keys:
            if len(k) < 8 or k.lower() in {"changeme", "password", "secret", "sk-xxxxxxxx"}:
                raise ValueError("API keys must be at least 8 characters and not a placeholder value")
        return keys
