"""``swarmgate search ...``: Model Swarms (``swarm``), Heterogeneous Swarms (``graph``) and blend weights (``blend``)
from a YAML config.

Without ``--config`` each command runs its default config on the toy world (``offline_search/configs/``).
Configs are validated completely (datasets, experts, adapters against their base) before any model is loaded;
a bad one exits with status 2 and a message naming the file, the key and the problem.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from offline_search.config import ConfigError, default_config_path, load_graph_config, load_swarm_config, prepare

app = typer.Typer(help="Offline PSO search: Model Swarms and Heterogeneous Swarms.", no_args_is_help=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Search config (YAML). Default: the toy-world config.")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the search saved in the output directory.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Delete a previous search in the output directory first.")]
OutOpt = Annotated[Path | None, typer.Option("--output-dir", "-o", help="Override the config's output_dir.")]
EngineOpt = Annotated[str | None, typer.Option("--engine", help="Override the engine kind: transformers or vllm.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Override the config's seed.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Disable the output cache (benchmarks).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
ReportOpt = Annotated[
    bool, typer.Option("--report", help="Print the baseline report of the search in the output directory; run nothing.")
]


def _overrides(engine: str | None, seed: int | None, no_cache: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"engine": engine, "seed": seed}
    if no_cache:
        out["cache"] = False
    return out


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def _start(output_dir: Path, resume: bool, force: bool) -> None:
    if force and resume:
        raise typer.BadParameter("--force and --resume exclude each other")
    if force and output_dir.exists():
        shutil.rmtree(output_dir)


def _table(rows: list[tuple[str, Any, Any]]) -> str:
    """A markdown table of (method, dev, test) rows: what a search is compared with (dev selects, test reports)."""

    def f(v: Any) -> str:
        return "" if v is None else f"{v:.4f}"

    lines = ["| method | dev | test |", "|---|---|---|"]
    lines += [f"| {m} | {f(d)} | {f(t)} |" for m, d, t in rows]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.1f}%"


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def print_swarm_report(s: dict[str, Any]) -> None:
    """Model Swarms against its baselines (dev selects, test reports)."""
    best_init = s["best_initial_expert"]
    typer.echo(
        f"best particle: dev {s['best']['dev']:.4f}  test {s['best']['test']:.4f}   "
        f"best initial expert ({best_init}): test {s['experts'][best_init]['test']:.4f}   "
        f"gain {s['test_gain_vs_best_initial']:+.4f}"
    )
    b = s.get("baselines", {})
    rows = [("Model Swarms best", s["best"]["dev"], s["best"]["test"])]
    rows += [(f"expert {n}", v["dev"], v["test"]) for n, v in s["experts"].items()]
    if "best_initial_particle" in b:
        rows.append(("best initial particle", b["best_initial_particle"]["dev"], b["best_initial_particle"]["test"]))
    if "uniform_average" in b:
        rows.append(("uniform average of experts", b["uniform_average"]["dev"], b["uniform_average"]["test"]))
    if "random_search" in b:
        r = b["random_search"]
        rows.append((f"random search ({r['evaluations']} particles)", r["dev"], r["test"]))
    typer.echo(_table(rows))
    typer.echo(
        f"best found at iteration {s['best'].get('found_at_iteration')}; relative test gain vs best initial particle: "
        f"{_pct(s.get('test_relative_gain_vs_best_initial_particle'))}, vs uniform average: "
        f"{_pct(s.get('test_relative_gain_vs_uniform_average'))}, vs random search: "
        f"{_pct(s.get('test_relative_gain_vs_random_search'))}"
    )


def print_graph_report(s: dict[str, Any]) -> None:
    """The searched DAG against every single expert, the best hand-wired chain and random graph search."""
    b = s.get("baselines", {})
    rows = [("Heterogeneous Swarms DAG", s["dag"]["dev"], s["dag"]["test"])]
    rows += [(f"expert {n}", v["dev"], v["test"]) for n, v in s["experts"].items()]
    if "best_chain" in b:
        rows.append(
            (f"best hand-wired chain ({b['best_chain']['chain']})", b["best_chain"]["dev"], b["best_chain"]["test"])
        )
    if "random_search" in b:
        rs = b["random_search"]
        rows.append((f"random graph search ({rs['evaluations']} evaluations)", rs["dev"], rs["test"]))
    typer.echo(_table(rows))


def _search(
    path: Path,
    load: Callable[[Path, dict[str, Any]], Any],
    overrides: dict[str, Any],
    run: Callable[..., Coroutine[Any, Any, Any]],
    report: Callable[[dict[str, Any]], None] | None = None,
    *,
    output_dir: Path | None,
    resume: bool,
    force: bool,
    quiet: bool,
) -> Any:
    """The body every search command shares: load and check the config, then run the search (``run``) and return its
    result; with ``report``, print the finished search's report with it instead and return None."""
    try:
        cfg = load(path, overrides)
        prepared = prepare(cfg, path, output_dir=str(output_dir) if output_dir else None)
        if report is not None:
            summary = prepared.output_dir / "summary.json"
            if not summary.is_file():
                raise ConfigError(path, "output_dir", f"{prepared.output_dir} holds no finished search")
            report(json.loads(summary.read_text()))
            return None
        _start(prepared.output_dir, resume, force)
        return asyncio.run(run(prepared, resume=resume, progress=not quiet))
    except ConfigError as exc:
        raise _fail(exc) from None


def _paths(paths: dict[str, Path]) -> None:
    """What a search wrote, one labelled line each, the paths aligned."""
    width = max(len(label) for label in paths) + 2
    for label, path in paths.items():
        typer.echo(f"{label + ':':<{width}}{path}")


def _swarm_done(result: Any) -> None:
    print_swarm_report(result.summary)
    _paths(
        {
            "best checkpoint": result.best_dir,
            "spec snippet": result.spec_snippet,
            "summary": result.output_dir / "summary.json",
        }
    )


def _graph_done(result: Any) -> None:
    s = result.summary
    single = s["best_single_expert"]
    edges = ", ".join(f"{a} -> {b}" for a, b in s["dag"]["edges"]) or s["dag"]["final"]
    typer.echo(f"DAG: {edges}")
    typer.echo(
        f"DAG: dev {s['dag']['dev']:.4f}  test {s['dag']['test']:.4f}   best single expert ({single}): "
        f"test {s['experts'][single]['test']:.4f}   gain {s['test_gain_vs_best_single']:+.4f}"
    )
    print_graph_report(s)
    _paths(
        {
            "topology": result.topology_path,
            "spec snippet": result.spec_snippet,
            "summary": result.output_dir / "summary.json",
        }
    )


async def _run_swarm(prepared: Any, **kw: Any) -> Any:
    from offline_search.model_swarms import run_swarm_search  # imported when a search runs: --help stays quick

    return await run_swarm_search(prepared, **kw)


async def _run_graph(prepared: Any, **kw: Any) -> Any:
    from offline_search.hetero_swarms import run_graph_search

    return await run_graph_search(prepared, **kw)


def _swarm_command(
    kind: str,
    load: Callable[[Path, dict[str, Any]], Any],
    run: Callable[..., Coroutine[Any, Any, Any]],
    printer: Callable[[dict[str, Any]], None],
    done: Callable[[Any], None],
) -> Callable[..., None]:
    """``swarmgate search swarm|graph``: the same options and steps; ``printer`` prints a summary's baseline report
    (``--report``), ``done`` what a finished run found and wrote."""

    def command(
        config: ConfigOpt = None,
        resume: ResumeOpt = False,
        force: ForceOpt = False,
        output_dir: OutOpt = None,
        engine: EngineOpt = None,
        seed: SeedOpt = None,
        no_cache: NoCacheOpt = False,
        quiet: QuietOpt = False,
        report: ReportOpt = False,
    ) -> None:
        _setup_logging(quiet)
        path = config or default_config_path(kind)  # type: ignore[arg-type]
        result = _search(
            path,
            load,
            _overrides(engine, seed, no_cache),
            run,
            printer if report else None,
            output_dir=output_dir,
            resume=resume,
            force=force,
            quiet=quiet,
        )
        if result is not None:
            done(result)

    return command


app.command(
    "swarm",
    help="Model Swarms: PSO over the experts' LoRA (or full) weights; writes the best checkpoint and a spec snippet.",
)(_swarm_command("swarm", load_swarm_config, _run_swarm, print_swarm_report, _swarm_done))
app.command(
    "graph",
    help="Heterogeneous Swarms: PSO over DAGs of experts (G-Decode) and their weights (JFK); writes topology.json.",
)(_swarm_command("graph", load_graph_config, _run_graph, print_graph_report, _graph_done))


@app.command("blend")
def blend(
    config: ConfigOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    output_dir: OutOpt = None,
    engine: EngineOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Blend weights: PSO over a token-level blend's mixture weights (and gate); writes a kind: blend spec snippet."""
    from offline_search.blend_search import DEFAULT_CONFIG, load_blend_config, run_blend_search

    _setup_logging(quiet)
    path = config or DEFAULT_CONFIG
    result = _search(
        path,
        load_blend_config,
        _overrides(engine, seed, False),
        run_blend_search,
        output_dir=output_dir,
        resume=resume,
        force=force,
        quiet=quiet,
    )
    s = result.summary
    best = s["best_member_on_test"]
    typer.echo(
        f"weights: {dict(zip(s['experts'], s['searched']['weights'], strict=True))}  gate: {s['searched']['gate']}"
    )
    typer.echo(
        f"blend: dev {s['searched']['dev']:.4f}  test {s['searched']['test']:.4f}   uniform: test "
        f"{s['uniform']['test']:.4f}   best member ({best}): test {s['experts'][best]['test']:.4f}   "
        f"gain {s['test_gain_vs_best_member']}"
    )
    _paths({"spec snippet": result.spec_snippet, "summary": result.output_dir / "summary.json"})


@app.command("config")
def show_config(kind: Annotated[str, typer.Argument(help="swarm or graph")]) -> None:
    """Print the default (toy-world) config of a search, to copy and edit."""
    if kind not in ("swarm", "graph"):
        raise typer.BadParameter("kind must be 'swarm' or 'graph'")
    typer.echo(default_config_path(kind).read_text())  # type: ignore[arg-type]


@app.command("validate")
def validate(
    kind: Annotated[str, typer.Argument(help="swarm or graph")],
    config: ConfigOpt = None,
) -> None:
    """Check a config (datasets, experts, adapters) without running anything."""
    if kind not in ("swarm", "graph"):
        raise typer.BadParameter("kind must be 'swarm' or 'graph'")
    path = config or default_config_path(kind)  # type: ignore[arg-type]
    try:
        cfg = load_swarm_config(path) if kind == "swarm" else load_graph_config(path)
        p = prepare(cfg, path)
    except ConfigError as exc:
        raise _fail(exc) from None
    typer.echo(
        json.dumps(
            {
                "config": str(path),
                "experts": [e.name for e in p.experts],
                "dev_examples": len(p.splits.dev),
                "test_examples": len(p.splits.test),
                "tasks": p.splits.tasks(),
                "output_dir": str(p.output_dir),
            },
            indent=2,
        )
    )
