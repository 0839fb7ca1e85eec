"""Engines: one protocol (``base.Engine``), three implementations, chosen per expert.

``create_engine`` is the one way to build one; heavy imports (torch, vllm, httpx) happen only for the kind asked.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from gateway.engines.base import Adapter, Chunk, Completion, Engine, EngineError, PromptTooLong, SamplingParams

__all__ = [
    "Adapter",
    "Chunk",
    "Completion",
    "Engine",
    "EngineError",
    "PromptTooLong",
    "SamplingParams",
    "create_engine",
    "resolve_engine_kind",
    "vllm_available",
]

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    """vLLM (GPU or CPU build) is importable here."""
    return importlib.util.find_spec("vllm") is not None


def resolve_engine_kind(kind: str, *, force: str | None = None) -> str:
    """``auto`` -> vllm where it imports, else transformers (logged). ``force`` overrides auto (tests, laptops)."""
    if kind != "auto":
        return kind
    if force:
        return force
    if vllm_available():
        return "vllm"
    log.warning("engine 'auto': vLLM is not installed here, falling back to the transformers engine (slower)")
    return "transformers"


def create_engine(kind: str, model: str, **engine_args: Any) -> Engine:
    """Build an engine of ``kind`` ('transformers', 'vllm', 'openai') for ``model`` (not started yet)."""
    if kind == "transformers":
        from gateway.engines.transformers import TransformersEngine

        return TransformersEngine(model, **engine_args)
    if kind == "vllm":
        from gateway.engines.vllm import VLLMEngine

        return VLLMEngine(model, **engine_args)
    if kind == "openai":
        from gateway.engines.openai import OpenAIEngine

        return OpenAIEngine(model, **engine_args)
    raise ValueError(f"unknown engine kind {kind!r} (expected transformers, vllm or openai)")
