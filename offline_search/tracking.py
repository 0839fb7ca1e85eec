"""Running a swarm to the end: evaluate, tell, log, save, plot; and resuming from the saved state.

``drive`` is the one loop every search uses. Per iteration it scores the positions (the caller's ``evaluate``),
tells the swarm, appends one JSON line to the log, saves its state (``ParticleSwarm.save``) and advances a progress
bar showing the best and mean utility. Killed at any point, a run restarts from the last saved iteration; log lines
of iterations after that save are dropped on resume, so the log and the state always agree.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from offline_search.pso import IterationRecord, Params, ParticleSwarm

log = logging.getLogger(__name__)

Evaluate = Callable[[list[Params], int], Awaitable[tuple[list[float | None], dict[str, Any]]]]
"""``(positions, iteration) -> (utilities, extra facts for the log line)``."""


class RunLog:
    """Append-only JSONL log of a search (one object per line, each with an ``event``)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"event": event, **fields}, default=_json_default) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def drop_after(self, phase: str, iteration: int) -> None:
        """Remove ``phase``'s iteration lines at or after ``iteration`` (they were not saved before a kill)."""
        kept = [
            r
            for r in self.read()
            if not (r.get("phase") == phase and r.get("event") == "iteration" and r["iteration"] >= iteration)
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


async def drive(
    swarm: ParticleSwarm,
    evaluate: Evaluate,
    *,
    state_dir: str | os.PathLike[str],
    run_log: RunLog,
    phase: str,
    extra_state: Callable[[], dict[str, Any]] | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> list[IterationRecord]:
    """Run ``swarm`` until it stops; returns the records of the iterations run here."""
    from tqdm.auto import tqdm

    run_log.drop_after(phase, swarm.iteration)
    done: list[IterationRecord] = []
    bar = tqdm(
        total=swarm.config.max_iterations,
        initial=swarm.iteration,
        desc=desc or phase,
        disable=not progress,
        dynamic_ncols=True,
        leave=True,
    )
    try:
        while not swarm.done:
            utilities, facts = await evaluate(swarm.ask(), swarm.iteration)
            record = swarm.tell(utilities)
            # log first, then save: a kill in between leaves a line that resuming drops and redoes
            run_log.write("iteration", phase=phase, **asdict(record), **facts)
            swarm.save(state_dir, extra=extra_state() if extra_state else None)
            done.append(record)
            bar.update(1)
            bar.set_postfix(best=_fmt(record.best), mean=_fmt(record.mean))
        if swarm.stop_reason and swarm.stop_reason != "max_iterations":
            log.info("%s stopped early: %s", phase, swarm.stop_reason)
    finally:
        bar.close()
    return done


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def plot_convergence(
    records: list[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str,
    baselines: dict[str, float] | None = None,
) -> Path:
    """Best-so-far and mean utility per iteration (one panel per phase), with horizontal baselines (not on weight-step
    panels, whose scores are JFK-scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    phases: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("event") == "iteration":
            phases.setdefault(r.get("phase", "search"), []).append(r)
    n = max(1, len(phases))
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    for ax, (phase, rows) in zip(axes[0], phases.items(), strict=False):
        it = [r["iteration"] for r in rows]
        ax.plot(it, [r["best"] for r in rows], marker="o", label="global best")
        ax.plot(it, [r["mean"] for r in rows], marker=".", linestyle="--", label="mean")
        for r in rows:
            us = [u for u in r["utilities"] if u is not None]
            ax.scatter([r["iteration"]] * len(us), us, s=8, alpha=0.35, color="gray")
        for k, (name, value) in enumerate((baselines or {}).items() if not phase.startswith("weight") else ()):
            ax.axhline(value, linestyle=":", linewidth=1.2, color=f"C{(k + 2) % 10}", label=name)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("JFK-score (dev)" if phase.startswith("weight") else "dev utility")
        ax.set_title(phase)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
