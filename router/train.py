"""PPO training of the router (stable-baselines3) and export to the pickle-free serving format.

Only this module (and the CLI that calls it) imports stable-baselines3; the gateway never does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.routing.encoders import Encoder, HashedNgramEncoder, build_encoder, build_vocab
from router.cache import TableAnswers
from router.config import EncoderConfig, RouterConfig, to_dict
from router.env import ChainRoutingEnv, make_layout
from router.publish import publish_policy, write_policy_files
from scoring.base import Scorer
from scoring.examples import Example

log = logging.getLogger(__name__)

ACTIVATION_NAMES = {"tanh": "Tanh", "relu": "ReLU"}


def encoder_from_config(cfg: EncoderConfig, texts: Sequence[str] = ()) -> Encoder:
    """The encoder a new policy is trained with; ``texts`` (the training questions) give the vocabulary when
    ``cfg.vocab_min_questions`` > 0."""
    if cfg.kind == "hashed":
        vocab = None
        if cfg.vocab_min_questions > 0:
            if not texts:
                raise ValueError("encoder.vocab_min_questions needs the training questions to build its vocabulary")
            vocab = build_vocab(texts, cfg.vocab_min_questions)
        return HashedNgramEncoder(dim=cfg.dim, ngrams=cfg.ngrams, words=cfg.words, vocab=vocab)
    return build_encoder({"kind": cfg.kind, "model_path": cfg.model_path, "max_length": cfg.max_length})


def ppo_kwargs(cfg: RouterConfig) -> dict[str, Any]:
    """``cfg.ppo`` as stable-baselines3 keyword arguments (activation names turned into torch classes)."""
    import torch

    kwargs = dataclasses.asdict(cfg.ppo)
    policy_kwargs = dict(kwargs.get("policy_kwargs") or {})
    act = policy_kwargs.get("activation_fn")
    if isinstance(act, str):
        if act not in ACTIVATION_NAMES:
            raise ValueError(f"ppo.policy_kwargs.activation_fn: use one of {sorted(ACTIVATION_NAMES)}, got {act!r}")
        policy_kwargs["activation_fn"] = getattr(torch.nn, ACTIVATION_NAMES[act])
    kwargs["policy_kwargs"] = policy_kwargs
    return kwargs


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, then restore the previous setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_ppo(
    cfg: RouterConfig,
    make_env: Callable[[], ChainRoutingEnv],
    *,
    total_timesteps: int | None = None,
    progress_bar: bool | None = None,
) -> Any:
    """Train PPO on ``cfg.train.n_envs`` routing envs that ``make_env`` builds (``cfg.env`` their configuration);
    returns the stable-baselines3 model."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    seed = cfg.train.seed
    with torch_threads(cfg.train.torch_threads):
        venv = make_vec_env(make_env, n_envs=cfg.train.n_envs, seed=seed)
        if cfg.train.normalize_reward:
            from stable_baselines3.common.vec_env import VecNormalize

            venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=cfg.ppo.gamma)
        model = PPO("MlpPolicy", venv, seed=seed, **ppo_kwargs(cfg))
        model.learn(
            total_timesteps=total_timesteps or cfg.train.total_timesteps,
            progress_bar=cfg.train.progress_bar if progress_bar is None else progress_bar,
        )
    return model


def sb3_actor_layers(model: Any) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The actor of an SB3 ``MlpPolicy`` as (weight, bias) numpy pairs and the activation name."""
    import torch
    from stable_baselines3.common.torch_layers import FlattenExtractor

    policy = model.policy
    if not isinstance(policy.pi_features_extractor, FlattenExtractor):
        raise ValueError("only MlpPolicy with the default FlattenExtractor can be exported")
    names = {v: k for k, v in ACTIVATION_NAMES.items()}
    act_name = names.get(policy.activation_fn.__name__)
    if act_name is None:
        raise ValueError(f"activation {policy.activation_fn.__name__} can't be exported (use tanh or relu)")
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for module in policy.mlp_extractor.policy_net:
        if isinstance(module, torch.nn.Linear):
            layers.append((module.weight.detach().cpu().numpy().copy(), module.bias.detach().cpu().numpy().copy()))
    head = policy.action_net
    layers.append((head.weight.detach().cpu().numpy().copy(), head.bias.detach().cpu().numpy().copy()))
    return layers, act_name


def export_policy(
    model: Any,
    directory: str | Path,
    cfg: RouterConfig,
    experts: Sequence[str],
    costs: Sequence[float],
    encoder: Encoder,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write the SB3 model's actor as ``policy.safetensors`` + ``policy.json`` into ``directory``."""
    layers, activation = sb3_actor_layers(model)
    return write_policy_files(
        directory,
        experts=experts,
        costs=costs,
        layers=layers,
        activation=activation,
        encoder=encoder.describe(),
        layout=make_layout(cfg.env, costs),
        ktp_template=cfg.ktp_template,
        cost_weights=cfg.env.cost_weights,
        training=training,
    )


def train_and_publish(
    cfg: RouterConfig,
    examples: Sequence[Example],
    experts: Sequence[str],
    costs: Sequence[float],
    table: dict[tuple[str, str, str], str],
    scorer: Scorer,
    encoder: Encoder,
    *,
    policy_root: str | Path | None = None,
    total_timesteps: int | None = None,
    progress_bar: bool | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Train on cached answers and publish the policy as the next version under ``policy_root`` (atomically)."""
    t0 = time.perf_counter()
    steps = total_timesteps or cfg.train.total_timesteps
    answers = TableAnswers(table)
    model = train_ppo(
        cfg,
        lambda: ChainRoutingEnv(examples, experts, costs, answers, scorer, encoder, cfg.env),
        total_timesteps=steps,
        progress_bar=progress_bar,
    )
    training = {
        "algorithm": "PPO (stable-baselines3)",
        "total_timesteps": steps,
        "seed": cfg.train.seed,
        "examples": len(examples),
        "seconds": round(time.perf_counter() - t0, 1),
        "env": to_dict(cfg.env),
        "ppo": to_dict(cfg.ppo),
        "scorer": to_dict(cfg.scorer),
        **(extra_meta or {}),
    }
    root = Path(policy_root or cfg.policy_dir)
    return publish_policy(root, lambda d: export_policy(model, d, cfg, experts, costs, encoder, training))
