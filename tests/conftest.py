"""Shared fixtures: the toy world (built once, cached outside git), and the vLLM marker: skipped where vLLM does not
import, except in CI (``CI=true``), where a missing vLLM fails the run."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in {"", "0", "false", "no", "off"}


def vllm_required() -> bool:
    """In CI (``CI=true``), or with ``SWARMGATE_REQUIRE_VLLM=1``, a missing vLLM fails the run instead of skipping."""
    return _truthy(os.environ.get("CI")) or _truthy(os.environ.get("SWARMGATE_REQUIRE_VLLM"))


@functools.cache
def _vllm_import_error() -> str | None:
    """Why ``import vllm`` fails here (None: it imports). Run in a subprocess: a broken install can crash on import."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (install the 'cpu' or 'vllm' extra)"
    probe = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        return "vLLM does not import: " + (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI, check vLLM before collecting: a module-level ``importorskip`` would otherwise skip it silently."""
    if not vllm_required() or "not vllm" in (session.config.option.markexpr or ""):
        return
    reason = _vllm_import_error()
    if reason is not None:
        raise pytest.UsageError(
            f"{reason}; CI=true (or SWARMGATE_REQUIRE_VLLM=1) requires vLLM, so the vLLM tests may not be skipped. "
            "Fix the install (`make install`), or deselect them explicitly with -m 'not vllm'."
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("vllm" in item.keywords for item in items):
        return
    reason = _vllm_import_error()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def toy_world():
    """The toy world (tiny real checkpoints), built on first use and cached by content hash.

    ``SWARMGATE_TEST_TOY_DIR`` points the tests at an existing build instead (e.g. while iterating on the toy world).
    """
    from toyworld.build import ToyWorld, build_toy_world

    override = os.environ.get("SWARMGATE_TEST_TOY_DIR")
    if override:
        return ToyWorld.load(override)
    return build_toy_world(progress=False)
