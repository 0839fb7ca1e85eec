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
        Path | None, typer.Option(help="Spec YAML to serve (default: the toy world, built if missing).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    engine: Annotated[
        str | None,
        typer.Option(help="Force 'auto' experts onto 'transformers' or 'vllm' (default: vllm if installed)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Serve a spec over the OpenAI-compatible API (other settings: SWARMGATE_* environment variables)."""
    import uvicorn

    from gateway.api.app import create_app
    from gateway.settings import Settings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, object] = {"host": host, "port": port, "log_level": log_level}
    if engine is not None:
        overrides["engine"] = engine
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if spec is not None:
        settings.spec = spec
    if settings.spec is None:
        from toyworld.build import build_toy_world

        tw = build_toy_world()
        typer.echo(f"serving the toy world: {tw.spec_path}")
        settings.spec = tw.spec_path
    from gateway.spec import SpecError, load_spec

    try:
        load_spec(settings.spec)  # refuse a bad spec with one clear line before anything starts
    except SpecError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level.lower())


@toy_app.command("build")
def toy_build(
    root: Annotated[Path | None, typer.Option(help="Output directory (default: the content-hash cache dir).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a finished build exists.")] = False,
) -> None:
    """Build (or reuse) the toy world and print its accuracy matrix (expert x task, test split)."""
    from toyworld.build import build_toy_world, format_matrix

    tw = build_toy_world(root, force=force)
    typer.echo(format_matrix(tw.accuracy, tw.chain_accuracy))
    typer.echo(f"toy world: {tw.root}\nspec: {tw.spec_path}")


@toy_app.command("path")
def toy_path() -> None:
    """Print the toy world's directory (building it if missing)."""
    from toyworld.build import build_toy_world

    typer.echo(build_toy_world(progress=False).root)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
