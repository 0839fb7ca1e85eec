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
    """Interface to bind (``swarmgate serve --host`` overrides it)."""
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
    admin_api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Bearer keys for ``/admin/*`` (comma-separated). Empty: admin answers only loopback clients, and only when
    ``api_keys`` is empty too; with ``api_keys`` set and no admin key, ``/admin/*`` is closed (403)."""
    drain_timeout_s: float = Field(default=30.0, ge=0)
    """On SIGTERM: ``/ready`` turns 503 and new requests get 503 at once; in-flight ones finish up to this bound,
    then are cancelled. Keep it below Kubernetes' ``terminationGracePeriodSeconds``."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 beyond it), checked before the body is read or parsed."""
    max_prompt_chars: int = Field(default=1_000_000, ge=1)
    """Most characters in one request's prompts (all messages / all prompts together); 400 beyond it."""
    max_prompts_times_n: int = Field(default=64, ge=1)
    """Fan-out cap: prompts in a completions list times ``n`` (sequences one request may run under one slot)."""
    max_stop_sequences: int = Field(default=4, ge=0)
    """Most stop strings per request."""
    max_stop_chars: int = Field(default=256, ge=1)
    """Longest stop string, in characters."""
    max_messages: int = Field(default=1024, ge=1)
    """Most chat messages per request."""
    queue_timeout_s: float = Field(default=60.0, gt=0)
    """Longest wait for a concurrency slot (503 ``queue_timeout`` past it); queue time also counts toward
    ``request_timeout_s``."""
    stream_idle_timeout_s: float = Field(default=30.0, gt=0)
    """A streaming client that reads nothing for this long loses its slot (its engine work is cancelled)."""
    stream_buffer_events: int = Field(default=256, ge=1)
    """Events buffered per streaming request before its engine work waits for the client (bounded memory)."""
    request_log_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Rotate the request log when it grows past this size (0: never rotate)."""
    request_log_backups: int = Field(default=5, ge=0)
    """Rotated request logs kept (``requests.jsonl.1`` ... ``.N``)."""

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("api_keys", "admin_api_keys")
    @classmethod
    def _safe_keys(cls, keys: list[str]) -> list[str]:
        for k in keys:
            if len(k) < 8 or k.lower() in {"changeme", "password", "secret", "sk-xxxxxxxx"}:
                raise ValueError("API keys must be at least 8 characters and not a placeholder value")
        return keys
