"""Search configs (YAML) and their validation: every mistake is found before any model is loaded.

``load_swarm_config`` / ``load_graph_config`` parse a file; ``prepare`` resolves it against the serving spec and the
files on disk and returns everything a search needs, or raises ``ConfigError`` naming the file, the key and the
problem: a missing dataset, an empty dev split, an unknown expert, an adapter made for another base, ...

Relative paths resolve against the config file's directory, or against the toy world's root when
``toy_world: true`` (the toy world is built, or reused from its cache, first).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from offline_search.pso import PSOConfig

DEFAULT_CONFIGS = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A search config that can't run: names the file, the key and the problem."""

    def __init__(self, path: str | os.PathLike[str] | None, key: str, problem: str):
        self.path = str(path) if path is not None else "<config>"
        self.key = key
        self.problem = problem
        super().__init__(f"{self.path}: {key}: {problem}" if key else f"{self.path}: {problem}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InlineExpert(_Strict):
    """An expert given in the config instead of by a spec name."""

    name: str
    """Name used in logs, the topology and spec snippets."""
    model: str
    """Base checkpoint directory."""
    adapter: str | None = None
    """PEFT LoRA adapter directory on ``model`` (None: the model itself is the expert)."""
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    engine_args: dict[str, Any] = Field(default_factory=dict)
    cost: float = 1.0


class DataConfig(_Strict):
    paths: list[str] = Field(min_length=1)
    """Dataset sources: directories with dev.jsonl/test.jsonl, or JSONL files with a ``split`` column."""
    dev_limit: int | None = Field(default=None, ge=1)
    """Use the first N dev examples of each source (None: all)."""
    test_limit: int | None = Field(default=None, ge=1)
    """Use the first N test examples of each source (None: all)."""


class UtilityConfig(_Strict):
    kind: Literal["exact_match", "edit_similarity", "multiple_choice", "reward_model", "llm_judge"] = "exact_match"
    """Per-example scorer."""
    multitask: bool = False
    """Harmonic mean over tasks (the examples' ``task``) instead of the plain mean."""
    tasks: list[str] | None = None
    """Tasks of the harmonic mean (default: every task in the data)."""
    case_sensitive: bool = True
    """exact_match, edit_similarity: compare case-sensitively."""
    model: str | None = None
    """reward_model: checkpoint directory (any sequence-classification model); llm_judge: the judge's model name."""
    url: str | None = None
    """llm_judge: base URL of an OpenAI-compatible server (``.../v1``)."""
    api_key_env: str | None = None
    """llm_judge: environment variable holding the API key."""
    label: int | None = None
    """reward_model: class whose probability is the score (default: the last; ignored for 1-logit models)."""
    template: str | None = None
    """reward_model: one text from ``{question}``/``{output}`` instead of a (question, output) text pair."""
    min_score: int = 1
    max_score: int = 10
    """llm_judge: the judge's scale (normalised to [0, 1])."""
    batch_size: int = Field(default=16, ge=1)
    concurrency: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _check(self) -> UtilityConfig:
        if self.kind == "reward_model" and not self.model:
            raise ValueError("reward_model needs 'model' (a sequence-classification checkpoint directory)")
        if self.kind == "llm_judge" and not (self.url and self.model):
            raise ValueError("llm_judge needs 'url' (an OpenAI-compatible base URL) and 'model'")
        return self


class GenerationConfig(_Strict):
    max_tokens: int = Field(default=32, ge=1)
    """Most tokens per answer."""
    prompt: str = "{question}"
    """User-message (or raw prompt) template for single-model evaluation; ``{question}`` is filled in."""
    chat: bool = True
    """Send a chat message (rendered by the tokenizer's chat template) rather than raw text."""
    stop: list[str] = Field(default_factory=list)
    """Stop strings."""


class PSOSettings(_Strict):
    """``offline_search.pso.PSOConfig`` fields (see there)."""

    max_iterations: int = Field(default=10, ge=1)
    inertia: float = Field(default=0.2, ge=0)
    cognitive: float = Field(default=0.3, ge=0)
    social: float = Field(default=0.4, ge=0)
    repel: float = Field(default=0.05, ge=0)
    random_factors: bool = True
    step_length: float = Field(default=0.5, gt=0)
    step_decay: float = Field(default=0.95, gt=0, le=1)
    min_step_length: float = Field(default=0.1, ge=0)
    patience: int = Field(default=5, ge=1)
    restart_patience: int = Field(default=3, ge=1)
    initial_velocity: Literal["random", "zero", "best"] = "random"

    def build(self, seed: int) -> PSOConfig:
        return PSOConfig(**self.model_dump(), seed=seed)


class _SearchBase(_Strict):
    name: str = "search"
    """Model name the produced spec snippet serves the result under."""
    seed: int = 0
    """Seeds the initial swarm, every PSO draw and the G-Decode samples."""
    toy_world: bool = False
    """Build (or reuse) the toy world and resolve relative paths and ``spec`` against it."""
    spec: str | None = None
    """Serving spec whose experts ``experts`` names (default with toy_world: the toy world's spec)."""
    experts: list[str | InlineExpert] = Field(min_length=1)
    """Spec expert names, or inline experts."""
    data: DataConfig
    utility: UtilityConfig = Field(default_factory=UtilityConfig)
    """What the search maximises on dev (and reports on test unless ``report_utility`` is set)."""
    report_utility: UtilityConfig | None = None
    """Score test (and the baselines' test) with this instead, e.g. search on ``edit_similarity``, report
    ``exact_match``. Dev selection always uses ``utility``."""
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    engine: Literal["auto", "transformers", "vllm"] | None = None
    """Override every expert's engine kind (None: as the spec says)."""
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Extra engine arguments, over the spec's."""
    cache: bool = True
    """Cache greedy outputs (off: every evaluation generates; for benchmarks)."""
    output_dir: str = "runs/search"
    """Where artifacts, the log and the resumable state go (relative to the working directory)."""


class SwarmSearchConfig(_SearchBase):
    """Model Swarms: PSO over the experts' weights (LoRA adapters on one base, or full checkpoints)."""

    name: str = "swarm"
    particles: Literal["lora", "delta", "full"] = "lora"
    """What a particle is: the experts' LoRA factors (A and B, as in the paper), their weight deltas (``scale * B @ A``
    per adapted weight, written back as an exact LoRA of the summed rank: sums of particles are sums of what the
    adapters do, even when their A matrices started from different random draws), or full checkpoints of one
    architecture."""
    swarm_size: int = Field(default=10, ge=2)
    """Particles: the experts plus interpolated children."""
    child_weight_range: tuple[float, float] = (0.0, 2.0)
    """Children are w A + (1 - w) B with w ~ U(range)."""
    pso: PSOSettings = Field(default_factory=PSOSettings)
    export_merged: bool = False
    """Also write the best LoRA merged into the base as a full checkpoint (``best_merged/``)."""
    keep_particles: bool = False
    """Keep every particle's checkpoint directory (default: only the best)."""


class PromptTemplatesModel(_Strict):
    source: str = "{question}"
    inner: str = "{question}{responses}"
    final: str = "{question}{responses}"
    response: str = "\nP: {response}"


class WeightStepConfig(_Strict):
    iterations: int = Field(default=0, ge=0)
    """PSO iterations of the weight-step per round (0: no weight-step); overrides ``pso.max_iterations``."""
    assignments: int = Field(default=8, ge=1)
    """Random model-to-node assignments scored per iteration (the JFK-score samples)."""
    pso: PSOSettings = Field(default_factory=lambda: PSOSettings(step_length=0.2))
    """PSO over the weights of the experts in the best graph (particles = those experts)."""
    accept: Literal["improved", "always"] = "improved"
    """Keep the updated experts only if the best graph scores higher on dev with them, or always (as the paper)."""


class GraphSearchConfig(_SearchBase):
    """Heterogeneous Swarms: role-step PSO over adjacency matrices (G-Decode) and weight-step PSO with JFK-score."""

    name: str = "dag"
    prompts: Literal["toy", "natural"] | PromptTemplatesModel = "natural"
    """Node prompt templates: a preset or explicit templates (stored in topology.json)."""
    swarm_size: int = Field(default=10, ge=2)
    """Adjacency-matrix particles in the role-step."""
    pso: PSOSettings = Field(default_factory=PSOSettings)
    """Role-step PSO."""
    decode_top_p: float = Field(default=0.7, ge=0, le=1)
    """G-Decode top-p while searching (0: deterministic); the final graph is the best one actually scored."""
    edge_threshold: float | None = None
    """Drop a node whose chosen outgoing edge weight is <= this (None: every node joins the graph, as in the paper)."""
    rounds: int = Field(default=1, ge=1)
    """Role-step / weight-step alternations."""
    weight_step: WeightStepConfig = Field(default_factory=WeightStepConfig)


# ------------------------------------------------------------------------------------------------ loading
def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif item in ("str", "InlineExpert", "function-after[_check()]") or str(item).startswith(
            ("function-", "literal[")
        ):
            continue
        else:
            out += ("." if out else "") + str(item)
    return out


def _load(path: str | os.PathLike[str], model: type[_SearchBase], overrides: dict[str, Any] | None) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(p, "", "config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(p, "", f"invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(p, "", "expected a mapping of settings")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(p, _loc(tuple(err["loc"])), err["msg"].removeprefix("Value error, ")) from None


def load_swarm_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> SwarmSearchConfig:
    return _load(path, SwarmSearchConfig, overrides)


def load_graph_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> GraphSearchConfig:
    return _load(path, GraphSearchConfig, overrides)


# ------------------------------------------------------------------------------------------------ resolution
@dataclass
class ResolvedExpert:
    name: str
    model: str
    """Absolute base checkpoint directory."""
    adapter: str | None
    """Absolute adapter directory, or None."""
    engine: str
    """Engine kind (resolved: transformers or vllm)."""
    engine_args: dict[str, Any] = field(default_factory=dict)
    cost: float = 1.0


@dataclass
class Prepared:
    """A validated search: config plus everything resolved from disk."""

    config: Any
    config_path: Path
    root: Path
    """Directory relative paths resolved against."""
    experts: list[ResolvedExpert]
    splits: Any
    """offline_search.datasets.Splits"""
    output_dir: Path
    spec_path: Path | None


def _root_and_spec(cfg: _SearchBase, config_path: Path) -> tuple[Path, Path | None]:
    if cfg.toy_world:
        from toyworld.build import build_toy_world

        tw = build_toy_world()
        root = Path(tw.root)
        spec = Path(cfg.spec) if cfg.spec else Path(tw.spec_path)
        return root, (spec if spec.is_absolute() else root / spec)
    root = config_path.resolve().parent
    if cfg.spec is None:
        return root, None
    spec = Path(os.path.expanduser(cfg.spec))
    return root, (spec if spec.is_absolute() else root / spec)


def _abs(root: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else root / p


def resolve_experts(cfg: _SearchBase, config_path: Path, root: Path, spec_path: Path | None) -> list[ResolvedExpert]:
    from gateway.engines import resolve_engine_kind
    from gateway.spec import ExpertSpec, SpecError, load_spec

    spec_experts: dict[str, ExpertSpec] = {}
    if any(isinstance(e, str) for e in cfg.experts):
        if spec_path is None:
            raise ConfigError(
                config_path, "spec", "experts are given by name, so 'spec' (the serving spec) is required"
            )
        try:
            spec_experts = dict(load_spec(spec_path).experts)
        except SpecError as exc:
            raise ConfigError(config_path, "spec", str(exc)) from None
    out: list[ResolvedExpert] = []
    for i, e in enumerate(cfg.experts):
        key = f"experts[{i}]"
        if isinstance(e, str):
            if e not in spec_experts:
                raise ConfigError(
                    config_path, key, f"unknown expert {e!r} (the spec {spec_path} has: {sorted(spec_experts)})"
                )
            s = spec_experts[e]
            if s.engine == "openai":
                raise ConfigError(
                    config_path, key, f"expert {e!r} is remote (engine openai); searches need local weights"
                )
            kind = cfg.engine or s.engine
            out.append(ResolvedExpert(e, s.model, s.adapter, kind, {**s.engine_args, **cfg.engine_args}, s.cost))
        else:
            model = _abs(root, e.model)
            if not model.is_dir():
                raise ConfigError(config_path, f"{key}.model", f"model directory not found: {model}")
            adapter = None
            if e.adapter is not None:
                adapter = _abs(root, e.adapter)
                if not adapter.is_dir():
                    raise ConfigError(config_path, f"{key}.adapter", f"adapter directory not found: {adapter}")
            kind = cfg.engine or e.engine
            out.append(
                ResolvedExpert(
                    e.name,
                    str(model),
                    str(adapter) if adapter else None,
                    kind,
                    {**e.engine_args, **cfg.engine_args},
                    e.cost,
                )
            )
    names = [x.name for x in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(config_path, "experts", f"listed twice: {dup}")
    for x in out:
        x.engine = resolve_engine_kind(x.engine)
    return out


def _check_utility(config_path: Path, root: Path, key: str, ucfg: UtilityConfig, splits: Any) -> None:
    """What a utility needs from the data and the disk, checked before any model loads."""
    if ucfg.kind == "multiple_choice":
        from scoring.reference import MultipleChoice

        for ex in [*splits.dev, *splits.test]:
            try:
                MultipleChoice.gold_letter(ex)
            except ValueError as exc:
                raise ConfigError(config_path, f"{key}.kind", f"multiple_choice: {exc}") from None
    if ucfg.multitask and ucfg.tasks:
        missing = sorted(set(ucfg.tasks) - {e.task for e in splits.dev})
        if missing:
            raise ConfigError(
                config_path, f"{key}.tasks", f"no dev examples for tasks {missing} (have {splits.tasks()})"
            )
    if ucfg.kind == "reward_model":
        rm = _abs(root, ucfg.model or "")
        if not (rm / "config.json").is_file():
            raise ConfigError(config_path, f"{key}.model", f"reward model checkpoint not found: {rm}")


def prepare(cfg: _SearchBase, config_path: str | os.PathLike[str], *, output_dir: str | None = None) -> Prepared:
    """Resolve and check everything a search reads; raises ConfigError before any model is loaded."""
    from offline_search.checkpoints import (
        CheckpointError,
        check_adapter_fits_base,
        read_adapter,
        weight_shapes,
    )
    from offline_search.datasets import DatasetError, load_splits

    config_path = Path(config_path)
    root, spec_path = _root_and_spec(cfg, config_path)
    experts = resolve_experts(cfg, config_path, root, spec_path)

    try:
        splits = load_splits(
            [_abs(root, p) for p in cfg.data.paths],
            key="data.paths",
            dev_limit=cfg.data.dev_limit,
            test_limit=cfg.data.test_limit,
        )
    except DatasetError as exc:
        raise ConfigError(config_path, exc.key, exc.problem) from None
    for key, ucfg in (("utility", cfg.utility), ("report_utility", cfg.report_utility)):
        if ucfg is not None:
            _check_utility(config_path, root, key, ucfg, splits)

    for i, x in enumerate(experts):
        if not Path(x.model).is_dir():
            raise ConfigError(config_path, f"experts[{i}]", f"model directory not found: {x.model}")
        try:
            weight_shapes(x.model)
        except CheckpointError as exc:
            raise ConfigError(config_path, f"experts[{i}]", str(exc)) from None
        if x.adapter is not None:
            try:
                check_adapter_fits_base(read_adapter(x.adapter), x.model)
            except CheckpointError as exc:
                raise ConfigError(config_path, f"experts[{i}]", str(exc)) from None

    weight_space = isinstance(cfg, SwarmSearchConfig) or (
        isinstance(cfg, GraphSearchConfig) and cfg.weight_step.iterations > 0
    )
    if weight_space:
        _check_weight_space(cfg, config_path, experts)
    if isinstance(cfg, SwarmSearchConfig) and cfg.swarm_size < len(experts):
        raise ConfigError(config_path, "swarm_size", f"{cfg.swarm_size} is fewer than the {len(experts)} experts")
    if isinstance(cfg, GraphSearchConfig) and cfg.edge_threshold is None and len(experts) > 12:
        raise ConfigError(config_path, "experts", "at most 12 experts per graph (every expert becomes a node)")

    out = Path(output_dir or cfg.output_dir)
    return Prepared(cfg, config_path, root, experts, splits, out, spec_path)


def _check_weight_space(cfg: _SearchBase, config_path: Path, experts: list[ResolvedExpert]) -> None:
    from offline_search.checkpoints import (
        CheckpointError,
        architecture,
        check_same_settings,
        lora_deltas,
        read_adapter,
    )

    what = "weight-step" if isinstance(cfg, GraphSearchConfig) else "Model Swarms"
    if len(experts) < 2:
        raise ConfigError(config_path, "experts", f"{what} needs at least 2 experts")
    particles = getattr(cfg, "particles", "lora")
    base = Path(experts[0].model).resolve()
    if particles in ("lora", "delta"):
        for i, x in enumerate(experts):
            if x.adapter is None:
                raise ConfigError(
                    config_path, f"experts[{i}]", f"{what} over LoRA weights: expert {x.name!r} has no adapter"
                )
            if Path(x.model).resolve() != base:
                raise ConfigError(
                    config_path,
                    f"experts[{i}]",
                    f"expert {x.name!r} is on base {x.model}, not {base}: LoRA particles share one base",
                )
        try:
            adapters = [read_adapter(x.adapter) for x in experts if x.adapter]
            if particles == "lora":
                check_same_settings(adapters)
            else:
                for a in adapters:
                    lora_deltas(a)
        except CheckpointError as exc:
            raise ConfigError(config_path, "experts", str(exc)) from None
    else:
        arch0 = architecture(experts[0].model)
        for i, x in enumerate(experts):
            if x.adapter is not None:
                raise ConfigError(config_path, f"experts[{i}]", "particles: full needs full checkpoints, not adapters")
            if architecture(x.model) != arch0:
                raise ConfigError(
                    config_path, f"experts[{i}]", f"{x.model} has another architecture than {experts[0].model}"
                )


def default_config_path(kind: Literal["swarm", "graph"]) -> Path:
    return DEFAULT_CONFIGS / f"toy_{kind}.yaml"
