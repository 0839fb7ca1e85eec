"""Shared fixtures: the toy world (built once, cached outside git) and the vLLM marker's skip."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if importlib.util.find_spec("vllm") is not None:
        return
    skip = pytest.mark.skip(reason="vLLM is not installed (install the 'cpu' or 'vllm' extra)")
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
