"""What both searches share at run time: engines, expert handles, prompts, utilities and scoring a model on a split."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.engines import create_engine
from gateway.engines.base import Adapter, Engine, Prompt, SamplingParams
from gateway.executors.base import ExpertHandle
from gateway.templates import fill
from offline_search.checkpoints import adapter_digest
from offline_search.config import GenerationConfig, ResolvedExpert, UtilityConfig, _SearchBase
from offline_search.datasets import Example
from offline_search.generation import BatchGenerator
from offline_search.utilities import (
    EditSimilarity,
    ExactMatch,
    LLMJudge,
    MultipleChoice,
    Multitask,
    RewardModel,
    Utility,
    UtilityResult,
)


class EnginePool:
    """Engines keyed by (kind, model, args): experts on one base share one engine (as the gateway does)."""

    def __init__(self) -> None:
        self._engines: dict[str, Engine] = {}

    @staticmethod
    def _key(kind: str, model: str, args: dict[str, Any]) -> str:
        return json.dumps([kind, str(Path(model).resolve()), args], sort_keys=True, default=str)

    async def get(self, kind: str, model: str, args: dict[str, Any] | None = None) -> Engine:
        args = dict(args or {})
        key = self._key(kind, model, args)
        if key not in self._engines:
            engine = create_engine(kind, model, **args)
            self._engines[key] = engine
            await engine.start()
        return self._engines[key]

    async def release(self, kind: str, model: str, args: dict[str, Any] | None = None) -> None:
        engine = self._engines.pop(self._key(kind, model, dict(args or {})), None)
        if engine is not None:
            await engine.close()

    async def close(self) -> None:
        engines, self._engines = list(self._engines.values()), {}
        for e in engines:
            await e.close()


def adapter_of(name: str, path: str | Path) -> Adapter:
    """An Adapter named by content, so equal weights share one loaded adapter and one cache entry."""
    return Adapter(name=f"{name}@{adapter_digest(path)[:16]}", path=str(path))


async def expert_handle(pool: EnginePool, expert: ResolvedExpert) -> ExpertHandle:
    engine = await pool.get(expert.engine, expert.model, expert.engine_args)
    adapter = adapter_of(expert.name, expert.adapter) if expert.adapter else None
    return ExpertHandle(name=expert.name, engine=engine, adapter=adapter, cost=expert.cost)


def build_utility(cfg: UtilityConfig, root: Path) -> Utility:
    base: Utility
    if cfg.kind == "exact_match":
        base = ExactMatch(case_sensitive=cfg.case_sensitive)
    elif cfg.kind == "edit_similarity":
        base = EditSimilarity(case_sensitive=cfg.case_sensitive)
    elif cfg.kind == "multiple_choice":
        base = MultipleChoice()
    elif cfg.kind == "reward_model":
        assert cfg.model is not None
        model = Path(cfg.model)
        base = RewardModel(
            str(model if model.is_absolute() else root / model),
            batch_size=cfg.batch_size,
            label=cfg.label,
            template=cfg.template,
        )
    else:
        assert cfg.url is not None and cfg.model is not None
        base = LLMJudge(
            cfg.url,
            cfg.model,
            api_key_env=cfg.api_key_env,
            min_score=cfg.min_score,
            max_score=cfg.max_score,
            concurrency=cfg.concurrency,
        )
    return Multitask(base, cfg.tasks) if cfg.multitask else base


def build_utilities(cfg: _SearchBase, root: Path) -> tuple[Utility, Utility]:
    """(what the search maximises on dev, what test is reported on): ``report_utility`` or the same utility."""
    search = build_utility(cfg.utility, root)
    return search, build_utility(cfg.report_utility, root) if cfg.report_utility else search


async def close_utilities(*utilities: Utility) -> None:
    for u in {id(u): u for u in utilities}.values():
        await u.close()


def sampling(gen: GenerationConfig) -> SamplingParams:
    """Searches score greedy outputs (deterministic, so they can be cached)."""
    return SamplingParams(max_tokens=gen.max_tokens, temperature=0.0, stop=tuple(gen.stop))


def question_prompt(gen: GenerationConfig, question: str) -> Prompt:
    text = fill(gen.prompt, {"question": question})
    return [{"role": "user", "content": text}] if gen.chat else text


async def score_expert(
    generator: BatchGenerator,
    expert: ExpertHandle,
    examples: Sequence[Example],
    gen: GenerationConfig,
    utility: Utility,
) -> tuple[UtilityResult, list[str]]:
    """One model answering every example alone."""
    outputs = await generator.generate(expert, [question_prompt(gen, e.question) for e in examples], sampling(gen))
    return await utility.score(examples, outputs), outputs


def relative_gain(new: float, old: float) -> float | None:
    """(new - old) / |old|, or None when old is 0."""
    return None if old == 0 else (new - old) / abs(old)


def write_spec_snippet(
    path: Path, *, experts: dict[str, dict[str, Any]] | None = None, ensembles: dict[str, dict[str, Any]]
) -> Path:
    """A spec fragment (absolute paths) to merge into the serving spec."""
    import yaml

    data: dict[str, Any] = {}
    if experts:
        data["experts"] = experts
    data["ensembles"] = ensembles
    header = "# Generated by `swarmgate search`: merge these entries into your serving spec.\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path
