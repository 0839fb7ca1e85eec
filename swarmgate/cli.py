"""The ``swarmgate`` command: serve, build the toy world, search, train the router."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from offline_search.cli import app as search_app
from router.cli import app as router_app

app = typer.Typer(help="swarmgate: an OpenAI-compatible gateway for composed LLM ensembles.", no_args_is_help=True)
toy_app = typer.Typer(
    help="The toy world: tiny real checkpoints trained locally (the embedded default).", no_args_is_help=True
)
app.add_typer(toy_app, name="toy")
app.add_typer(search_app, name="search")
app.add_typer(router_app, name="router")


@app.command()
def serve(
    spec: Annotated[
        Path | None, typer.Option(help="Spec YAML to serve (default: SWARMGATE_SPEC, else the toy world).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (default: SWARMGATE_HOST, else 0.0.0.0).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default: SWARMGATE_PORT, else 8000).")] = None,
    engine: Annotated[
        str | None,
        typer.Option(help="Force 'auto' experts onto 'transformers' or 'vllm' (default: vllm if installed)."),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="Log level (default: SWARMGATE_LOG_LEVEL, else info).")] = None,
) -> None:
    """Serve a spec over the OpenAI-compatible API. Flags override SWARMGATE_* environment variables, which set
    everything else (keys, limits, timeouts: see gateway/settings.py). SIGTERM drains (SWARMGATE_DRAIN_TIMEOUT_S)."""
    from gateway.api.app import create_app, run_server
    from gateway.settings import Settings

    overrides: dict[str, object] = {}
    for name, value in (("spec", spec), ("host", host), ("port", port), ("engine", engine), ("log_level", log_level)):
        if value is not None:
            overrides[name] = value
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:  # pydantic's ValidationError: a bad SWARMGATE_* value
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.spec is None:  # the toy world's experts plus its searched/trained ensembles (built once, cached)
        from swarmgate.ensembles import build_ensembles
        from toyworld.build import build_toy_world

        spec_path = build_ensembles(build_toy_world())
        typer.echo(f"serving the toy world and its ensembles: {spec_path}")
        settings.spec = spec_path
    from gateway.spec import SpecError, load_spec

    try:
        load_spec(settings.spec)  # refuse a bad spec with one clear line before anything starts
    except SpecError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    run_server(create_app(settings), settings, log_level=settings.log_level)


@toy_app.command("build")
def toy_build(
    root: Annotated[Path | None, typer.Option(help="Output directory (default: the content-hash cache dir).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a finished build exists.")] = False,
    phrased: Annotated[
        bool, typer.Option(help="The phrased world: several phrasings per task, two held out of training for test.")
    ] = False,
) -> None:
    """Build (or reuse) the toy world and print its accuracy matrix (expert x task, test split)."""
    from toyworld.build import build_toy_world, format_matrix
    from toyworld.model import ToyConfig

    tw = build_toy_world(root, force=force, config=ToyConfig.phrased() if phrased else None)
    typer.echo(format_matrix(tw.accuracy, tw.chain_accuracy))
    typer.echo(f"toy world: {tw.root}\nspec: {tw.spec_path}")


@toy_app.command("ensembles")
def toy_ensembles(
    force: Annotated[bool, typer.Option(help="Rebuild even if a finished build exists.")] = False,
) -> None:
    """Build (or reuse) toy-swarm, toy-dag and toy-router at small budgets; print the spec serving them."""
    from swarmgate.ensembles import build_ensembles
    from toyworld.build import build_toy_world

    typer.echo(build_ensembles(build_toy_world(), force=force))


@toy_app.command("path")
def toy_path() -> None:
    """Print the toy world's directory (building it if missing)."""
    from toyworld.build import build_toy_world

    typer.echo(build_toy_world(progress=False).root)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
