"""`swarmgate router ...`: collect expert answers, train PPO, evaluate against baselines, retrain from gateway logs.

Every command reads one router config (``--config router.yaml``, see ``router.config``); flags override parts of it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from router.config import RouterConfig

app = typer.Typer(help="Train, evaluate and retrain the DER router.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Router config YAML (see router.config).")]


def _config(path: Path | None, **overrides: object) -> RouterConfig:
    from router.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        _fail(exc)
    train: dict[str, Any] = {k: v for k, v in overrides.items() if k in ("seed", "total_timesteps") and v is not None}
    if train:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))
    weights = overrides.get("cost_weights")
    if isinstance(weights, list) and weights:
        cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, cost_weights=tuple(weights)))
    if overrides.get("policy_dir"):
        cfg = dataclasses.replace(cfg, policy_dir=str(overrides["policy_dir"]))
    limit = overrides.get("limit")
    if isinstance(limit, int):
        data = dataclasses.replace(cfg.data, limit_per_task=limit, eval_limit_per_task=limit)
        cfg = dataclasses.replace(cfg, data=data)
    return cfg


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


def _fail(exc: Exception) -> NoReturn:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def collect(
    config: ConfigOpt = None,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="Dataset splits (repeatable; default train and eval split).")
    ] = None,
    rebuild: Annotated[bool, typer.Option(help="Drop answers of experts whose definition changed.")] = False,
    limit: Annotated[
        int | None, typer.Option(help="Examples per task and split (default: data.limit_per_task).")
    ] = None,
) -> None:
    """Collect expert answers for every reachable (expert, question, previous answer) into the trajectory cache."""
    from router.cache import CacheMismatch
    from router.workflow import collect_splits

    cfg = _config(config, limit=limit)
    splits = split or [cfg.data.train_split, cfg.data.eval_split]
    try:
        collect_splits(cfg, splits, rebuild=rebuild)
    except (CacheMismatch, ValueError, FileNotFoundError) as exc:
        _fail(exc)


@app.command()
def train(
    config: ConfigOpt = None,
    timesteps: Annotated[
        int | None, typer.Option(help="PPO environment steps (default: train.total_timesteps).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: train.seed).")] = None,
    cost_weights: Annotated[str | None, typer.Option(help="Comma-separated lambdas to train on.")] = None,
    out: Annotated[Path | None, typer.Option(help="Policy root (default: policy_dir); a new vNNNN + CURRENT.")] = None,
    limit: Annotated[
        int | None, typer.Option(help="Training examples per task (default: data.limit_per_task).")
    ] = None,
) -> None:
    """Train the router with PPO on cached answers and publish a new policy version."""
    from router.workflow import load_split, train_on

    cfg = _config(
        config, seed=seed, total_timesteps=timesteps, cost_weights=_floats(cost_weights), policy_dir=out, limit=limit
    )
    try:
        train_on(cfg, load_split(cfg, cfg.data.train_split))
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)


@app.command("eval")
def eval_(
    config: ConfigOpt = None,
    policy: Annotated[Path | None, typer.Option(help="Policy dir or root (default: policy_dir).")] = None,
    cost_weights: Annotated[
        str | None, typer.Option(help="Comma-separated lambdas (default: the trained ones).")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Split (default: data.eval_split, dev; the test split needs --final).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: eval_dir).")] = None,
    collect: Annotated[
        bool, typer.Option(help="First collect, through the engines, just the answers the table needs.")
    ] = False,
    oracle_depth: Annotated[
        int | None,
        typer.Option(help="Longest route the oracle searches (default and minimum: the policy's step limit)."),
    ] = None,
    final: Annotated[
        bool,
        typer.Option(
            "--final", help="Report the held-out test split (once, after selecting on dev); refused otherwise."
        ),
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Examples per task (default: data.eval_limit_per_task).")] = None,
) -> None:
    """Quality-versus-cost table and frontier plot of the router and the baselines."""
    from gateway.routing.policy import PolicyError
    from router.cache import CacheMismatch
    from router.workflow import evaluate_policy

    cfg = _config(config, limit=limit)
    try:
        evaluate_policy(
            cfg,
            policy_path=str(policy) if policy else None,
            cost_weights=_floats(cost_weights),
            split=split,
            out_dir=str(out) if out else None,
            oracle_depth=oracle_depth,
            collect_missing=collect,
            final=final,
        )
    except (PolicyError, CacheMismatch, ValueError, FileNotFoundError) as exc:
        _fail(exc)


@app.command()
def retrain(
    log: Annotated[list[Path], typer.Option("--log", help="Gateway request log JSONL (repeatable).")],
    config: ConfigOpt = None,
    references: Annotated[
        Path | None, typer.Option(help="Dataset folder giving reference answers by question.")
    ] = None,
    collect_missing: Annotated[
        bool, typer.Option(help="Collect transitions the log lacks through the engines.")
    ] = True,
    include_train: Annotated[bool, typer.Option(help="Also train on the configured training split.")] = True,
    timesteps: Annotated[int | None, typer.Option(help="PPO environment steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    judge: Annotated[
        str | None,
        typer.Option(help="Reference-free scorer: none, reward_model or llm_judge (default: retrain.judge)."),
    ] = None,
    judge_model: Annotated[
        str | None, typer.Option(help="reward_model: checkpoint (@toy-big); llm_judge: model name.")
    ] = None,
    judge_url: Annotated[str | None, typer.Option(help="llm_judge: OpenAI-compatible base URL.")] = None,
    force_publish: Annotated[
        bool, typer.Option("--force-publish", help="Publish even when the candidate does not beat the serving policy.")
    ] = False,
) -> None:
    """Learn from gateway traffic (logs, feedback, a judge); publish a new policy version only when it beats the
    serving one on the dev split (a serving gateway hot-reloads it)."""
    from router.cache import CacheMismatch
    from router.workflow import retrain_from_logs

    cfg = _config(config, seed=seed, total_timesteps=timesteps)
    rt = {
        k: v for k, v in {"judge": judge, "judge_model": judge_model, "judge_url": judge_url}.items() if v is not None
    }
    if rt:
        cfg = dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, **rt))
    try:
        retrain_from_logs(
            cfg,
            [str(p) for p in log],
            references=str(references) if references else None,
            collect_missing=collect_missing,
            include_train=include_train,
            force_publish=force_publish,
        )
    except (CacheMismatch, ValueError, FileNotFoundError) as exc:
        _fail(exc)


@app.command()
def spec(
    out: Annotated[Path, typer.Option(help="Spec file to write.")],
    config: ConfigOpt = None,
    name: Annotated[str, typer.Option(help="Model name of the routed chain.")] = "toy-router",
    policy: Annotated[Path | None, typer.Option(help="Policy root or dir (default: policy_dir).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Step limit (default: the policy's).")] = None,
) -> None:
    """Write a serving spec: the config's spec plus a kind: chain ensemble over the trained policy."""
    from gateway.routing.policy import PolicyError, load_policy
    from router.deploy import write_chain_spec

    cfg = _config(config)
    if not cfg.spec:
        _fail(ValueError("the router config has no `spec` to extend"))
    root = policy or Path(cfg.policy_dir)
    try:
        loaded = load_policy(root)
    except PolicyError as exc:
        _fail(exc)
    path = write_chain_spec(
        out, cfg.spec, root, name=name, experts=loaded.experts, max_steps=max_steps or loaded.max_steps
    )
    typer.echo(f"wrote {path}: serve it with `swarmgate serve --spec {path}`")
