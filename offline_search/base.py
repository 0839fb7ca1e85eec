"""What Model Swarms (``model_swarms``) and Heterogeneous Swarms (``hetero_swarms``) share.

A search holds its prepared config, its output directory, one engine pool, its utilities (``utility`` selects on dev,
``report`` reports test) and a batched generator whose greedy outputs are cached in ``<output_dir>/cache.jsonl``;
it counts its utility evaluations. Each search adds its particles and its report; both end the same way: a
``summary.json`` (the same head and session facts, gains on test against named baselines), a ``done`` event in
``log.jsonl`` and ``convergence.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from gateway.engines.pool import EnginePool
from offline_search.config import ConfigError, Prepared, _SearchBase
from offline_search.evaluate import build_utilities, close_utilities, relative_gain
from offline_search.generation import BatchGenerator, OutputCache
from offline_search.tracking import RunLog, plot_convergence


def searched_for(tasks: list[str]) -> str:
    """The tasks a searched model was selected on, for its spec description (``sort and count only``): a user asking
    it for another task should not be surprised."""
    if not tasks:
        return "its dev set"
    named = tasks[0] if len(tasks) == 1 else f"{', '.join(tasks[:-1])} and {tasks[-1]}"
    return f"{named} only"


def check_output_dir(out: Path, *, resume: bool, config_path: Path, marker: str = "state/latest.json") -> None:
    """Refuse to overwrite a previous search unless resuming it."""
    if not resume and (out / marker).exists():
        raise ConfigError(
            config_path,
            "output_dir",
            f"{out} holds a previous search; pass --resume to continue it or --force to start over",
        )


def gains_on_test(value: float, against: dict[str, float]) -> dict[str, float | None]:
    """``test_gain_vs_<name>`` (absolute) and ``test_relative_gain_vs_<name>`` of a test utility over each baseline."""
    out: dict[str, float | None] = {}
    for name, base in against.items():
        out[f"test_gain_vs_{name}"] = value - base
        out[f"test_relative_gain_vs_{name}"] = relative_gain(value, base)
    return out


class BaseSearch:
    """The machinery of a search over experts; a subclass names its ``config_type`` and adds what differs."""

    config_type: ClassVar[type[_SearchBase]]

    def __init__(self, prepared: Prepared, *, progress: bool = True):
        if not isinstance(prepared.config, self.config_type):
            raise TypeError(f"{type(self).__name__} needs a {self.config_type.__name__}")
        self.p = prepared
        self.cfg = prepared.config
        self.out = prepared.output_dir
        self.progress = progress
        self.pool = EnginePool()
        self.utility, self.report = build_utilities(self.cfg, prepared.root)
        self.generator = BatchGenerator(OutputCache(self.out / "cache.jsonl") if self.cfg.cache else None)
        self.evaluations = 0
        """Utility evaluations so far (a resumed search counts on from its saved state)."""

    async def close(self) -> None:
        """Close the engines and the utilities (a judge's client, a reward model)."""
        await self.pool.close()
        await close_utilities(self.utility, self.report)

    def summary_head(self) -> dict[str, Any]:
        """The first keys of ``summary.json``: the search's name and its two utilities."""
        return {
            "name": self.cfg.name,
            "utility": self.utility.name,
            "report_utility": self.report.name,
            "tasks": self.p.splits.tasks(),
        }

    def session_facts(self, seconds: float) -> dict[str, Any]:
        """The last keys of ``summary.json``: what this session spent, and the splits' sizes."""
        return {
            "utility_evaluations": self.evaluations,
            "generation": self.generator.stats.snapshot(),
            "wall_seconds_this_session": round(seconds, 2),
            "dev_examples": len(self.p.splits.dev),
            "test_examples": len(self.p.splits.test),
        }

    def conclude(self, summary: dict[str, Any], run_log: RunLog, *, title: str, baselines: dict[str, float]) -> None:
        """Write ``summary.json``, log ``done`` and plot the dev utility per iteration against ``baselines``."""
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        run_log.write("done", summary=summary)
        plot_convergence(run_log.read(), self.out / "convergence.png", title=title, baselines=baselines)
