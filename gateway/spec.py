"""The serving spec: one YAML file of experts and ensembles, validated on load.

```yaml
experts:
  toy-base:  {engine: auto, model: base, cost: 1.0}
  toy-adder: {engine: auto, model: base, adapter: experts/adder, cost: 1.0}
  remote:    {engine: openai, url: http://big:8000/v1, model: big, cost: 4.0}
ensembles:
  toy-swarm:  {kind: expert, model: base, adapter: search/swarm/best}
  toy-dag:    {kind: dag, topology: search/graph/topology.json}
  toy-router: {kind: chain, policy: router/policy, experts: [toy-adder, toy-big], max_steps: 4}
```

Relative paths are resolved against the spec file's directory. Every error names the file, the key and the problem
(``SpecError``); a spec that fails to load never replaces one that is serving.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

EngineKind = Literal["auto", "transformers", "vllm", "openai"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"


class SpecError(ValueError):
    """A spec file that can't be served: says which file, which key, and what is wrong."""

    def __init__(self, path: str | os.PathLike[str] | None, key: str, problem: str):
        self.path = str(path) if path is not None else "<spec>"
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpertSpec(_Strict):
    """One model the gateway can call."""

    engine: EngineKind = "auto"
    """Which engine runs it; ``auto`` is vllm where it imports, else transformers."""
    model: str
    """Local checkpoint directory (or hub name) for local engines; the served model name for ``openai``."""
    adapter: str | None = None
    """LoRA adapter directory (PEFT format) on top of ``model``."""
    url: str | None = None
    """Base URL (``.../v1``) of a remote OpenAI-compatible server; required for ``engine: openai``."""
    api_key_env: str | None = None
    """Environment variable holding the remote server's API key (never the key itself)."""
    cost: float = Field(default=1.0, ge=0.0)
    """Cost of one call, in the units the router and reports use."""
    description: str = ""
    """Shown in /v1/models."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Per-call timeout (remote engines)."""
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Extra engine arguments (e.g. vLLM's ``max_model_len``, ``max_loras``); experts on one base share them."""

    @model_validator(mode="after")
    def _check_engine(self) -> ExpertSpec:
        if self.engine == "openai":
            if not self.url:
                raise ValueError("engine 'openai' needs 'url' (the remote server's base URL, ending in /v1)")
            if self.adapter:
                raise ValueError("engine 'openai' can't load a local 'adapter'; serve it on the remote server")
        elif self.url:
            raise ValueError(f"'url' is only for engine 'openai', not '{self.engine}'")
        return self


class ExpertEnsemble(ExpertSpec):
    """A single (e.g. swarmed) expert listed among the ensembles."""

    kind: Literal["expert"]


class DagEnsemble(_Strict):
    """A searched topology (Heterogeneous Swarms output) executed by message passing."""

    kind: Literal["dag"]
    topology: str
    """Path of ``topology.json``."""
    description: str = ""


class ChainEnsemble(_Strict):
    """A DER-style routed chain driven by a trained policy."""

    kind: Literal["chain"]
    policy: str
    """Policy directory (or the pointer file of a versioned policy directory)."""
    experts: list[str] = Field(min_length=1)
    """Expert names, in the policy's action order."""
    max_steps: int = Field(default=4, ge=1, le=32)
    cost_weight: float | None = Field(default=None, ge=0.0)
    """Overrides the policy's trained lambda for the stop decision (None: as trained)."""
    description: str = ""


class BlendGate(_Strict):
    """Blend only where the lead is unsure; elsewhere the lead decodes alone."""

    metric: Literal["entropy", "margin"] = "entropy"
    """``entropy`` of the lead's next-token distribution (nats), or its top-1 minus top-2 probability ``margin``."""
    threshold: float = Field(default=0.5, ge=0.0)
    """Blend where entropy > threshold (or margin < threshold)."""


class BlendEnsemble(_Strict):
    """Token-level blending: the members' next-token distributions mixed at every step (see gateway/executors/blend)."""

    kind: Literal["blend"]
    experts: list[str] = Field(min_length=1)
    """Member expert names (local engines: transformers or vllm)."""
    weights: list[float] | None = None
    """One weight per member, >= 0, normalised to sum 1 (None: uniform)."""
    rule: Literal["linear", "loglinear"] = "linear"
    """``linear``: Σ wᵢpᵢ; ``loglinear``: product of experts, softmax(Σ wᵢ log pᵢ)."""
    lead: str | None = None
    """The member that drafts and gates (None: the first)."""
    gate: BlendGate | None = None
    """Blend only uncertain positions (None: all)."""
    speculate: int = Field(default=4, ge=0, le=32)
    """Tokens the lead drafts per round, verified exactly against the blend (0: step by step)."""
    top_k: int | None = Field(default=None, ge=1)
    """Tokens per position each member reports (vLLM; None: the whole vocabulary). Blends over their union."""
    description: str = ""

    @model_validator(mode="after")
    def _check_blend(self) -> BlendEnsemble:
        if self.weights is not None:
            if len(self.weights) != len(self.experts):
                raise ValueError(f"weights: {len(self.weights)} weights for {len(self.experts)} experts")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights: must be >= 0 with at least one > 0")
        if self.lead is not None and self.lead not in self.experts:
            raise ValueError(f"lead: {self.lead!r} is not one of the experts {self.experts}")
        return self


EnsembleSpec = Annotated[
    ExpertEnsemble | DagEnsemble | ChainEnsemble | BlendEnsemble,
    Field(discriminator="kind"),
]


class Spec(_Strict):
    """The whole serving spec."""

    experts: dict[str, ExpertSpec] = Field(default_factory=dict)
    ensembles: dict[str, EnsembleSpec] = Field(default_factory=dict)

    @field_validator("experts", "ensembles")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        import re

        for name in value:
            if not re.match(NAME_PATTERN, str(name)):
                raise ValueError(f"bad model name {name!r}: use letters, digits and . _ : / - (at most 128)")
        return value

    @model_validator(mode="after")
    def _cross(self) -> Spec:
        if not self.experts and not self.ensembles:
            raise ValueError("the spec serves nothing: add at least one expert")
        clash = sorted(set(self.experts) & set(self.ensembles))
        if clash:
            raise ValueError(f"names used both as expert and ensemble: {clash}")
        return self

    def model_names(self) -> list[str]:
        return [*self.experts, *self.ensembles]


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        # pydantic puts the discriminator value ("chain", ...) or function names in the location; skip those.
        if item in {"expert", "dag", "chain", "blend"} and parts[:1] == ["ensembles"] and len(parts) == 2:
            continue
        parts.append(str(item))
    return ".".join(parts)


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p))


def _looks_local(value: str) -> bool:
    """A path, not a hub name (hub names look like ``org/model``)."""
    return value.startswith((".", "/", "~")) or value.count("/") != 1


def parse_spec(data: Any, *, path: str | os.PathLike[str] | None = None, check_paths: bool = True) -> Spec:
    """Validate a spec dict; resolve relative paths against the file's directory; check that paths and names exist."""
    if not isinstance(data, dict):
        raise SpecError(path, "", f"expected a mapping with 'experts' and 'ensembles', got {type(data).__name__}")
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SpecError(path, _loc(tuple(err["loc"])), err["msg"].removeprefix("Value error, ")) from None

    experts: dict[str, ExpertSpec] = {}
    for name, e in spec.experts.items():
        experts[name] = _resolve_expert(e, base, path, f"experts.{name}", check_paths)
    ensembles: dict[str, Any] = {}
    for name, ens in spec.ensembles.items():
        key = f"ensembles.{name}"
        if isinstance(ens, ExpertEnsemble):
            ens = _resolve_expert(ens, base, path, key, check_paths)
        elif isinstance(ens, DagEnsemble):
            topo = _resolve(base, ens.topology)
            assert topo is not None
            if check_paths and not Path(topo).is_file():
                raise SpecError(path, f"{key}.topology", f"file not found: {topo}")
            ens = ens.model_copy(update={"topology": topo})
        elif isinstance(ens, ChainEnsemble):
            pol = _resolve(base, ens.policy)
            assert pol is not None
            if check_paths and not Path(pol).exists():
                raise SpecError(path, f"{key}.policy", f"not found: {pol}")
            _known(ens.experts, experts, path, f"{key}.experts")
            ens = ens.model_copy(update={"policy": pol})
        elif isinstance(ens, BlendEnsemble):
            _known(ens.experts, experts, path, f"{key}.experts")
            for i, n in enumerate(ens.experts):
                if experts[n].engine == "openai":
                    raise SpecError(
                        path,
                        f"{key}.experts[{i}]",
                        f"expert {n!r} runs on engine 'openai', which can't score tokens for blending "
                        "(use a local engine: auto, transformers or vllm)",
                    )
        ensembles[name] = ens
    return Spec.model_construct(experts=experts, ensembles=ensembles)


def _known(names: list[str], experts: dict[str, ExpertSpec], path: Any, key: str) -> None:
    for i, n in enumerate(names):
        if n not in experts:
            raise SpecError(path, f"{key}[{i}]", f"unknown expert {n!r} (known: {sorted(experts)})")
    if len(set(names)) != len(names):
        raise SpecError(path, key, "an expert is listed twice")


def _resolve_expert(e: ExpertSpec, base: Path, path: Any, key: str, check_paths: bool) -> Any:
    update: dict[str, Any] = {}
    if e.engine != "openai":
        model_path = _resolve(base, e.model)
        assert model_path is not None
        if Path(model_path).exists() or _looks_local(e.model):
            if check_paths and not Path(model_path).is_dir():
                raise SpecError(path, f"{key}.model", f"model directory not found: {model_path}")
            update["model"] = model_path
        # else: a hub name, left as is (loaded from the local HF cache; no hub at run time in the toy world)
    if e.adapter is not None:
        ad = _resolve(base, e.adapter)
        assert ad is not None
        if check_paths:
            if not Path(ad).is_dir():
                raise SpecError(path, f"{key}.adapter", f"adapter directory not found: {ad}")
            if not (Path(ad) / "adapter_config.json").is_file():
                raise SpecError(path, f"{key}.adapter", f"not a PEFT adapter (no adapter_config.json): {ad}")
        update["adapter"] = ad
    if e.api_key_env and check_paths and e.api_key_env not in os.environ:
        raise SpecError(path, f"{key}.api_key_env", f"environment variable {e.api_key_env} is not set")
    return e.model_copy(update=update)


def load_spec(path: str | os.PathLike[str], *, check_paths: bool = True) -> Spec:
    """Read and validate a spec file. Raises SpecError naming the file, key and problem."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(path, "", "spec file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(path, where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_spec(data, path=p, check_paths=check_paths)
