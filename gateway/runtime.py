"""The runtime: engines, experts and executors built from a spec, started, and swapped atomically on reload.

Experts on the same base model (same engine kind, model and engine arguments) share one engine. A reload builds the
new runtime completely (reusing engines whose key is unchanged) before it replaces the old one; if anything fails the
new engines are closed and the old runtime keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.engines import create_engine, resolve_engine_kind
from gateway.engines.adapters import adapter_mismatch
from gateway.engines.base import Adapter, Engine, EngineError
from gateway.executors.base import Executor, ExpertHandle
from gateway.executors.expert import ExpertExecutor
from gateway.spec import ChainEnsemble, DagEnsemble, ExpertEnsemble, ExpertSpec, Spec, SpecError

log = logging.getLogger(__name__)


def engine_key(kind: str, e: ExpertSpec) -> str:
    """Experts with equal keys share one engine."""
    return json.dumps(
        {
            "kind": kind,
            "model": e.model,
            "url": e.url,
            "api_key_env": e.api_key_env,
            "timeout_s": e.timeout_s if kind == "openai" else None,
            "args": e.engine_args,
        },
        sort_keys=True,
    )


def adapter_for(name: str, path: str) -> Adapter:
    """An Adapter whose name changes when the files change (engines cache adapters by name)."""
    h = hashlib.sha256(str(Path(path).resolve()).encode())
    for f in sorted(Path(path).glob("adapter_*")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return Adapter(name=f"{name}@{h.hexdigest()[:12]}", path=str(path))


@dataclass
class Runtime:
    spec: Spec
    spec_path: str | None
    engines: dict[str, Engine] = field(default_factory=dict)
    experts: dict[str, ExpertHandle] = field(default_factory=dict)
    executors: dict[str, Executor] = field(default_factory=dict)

    @classmethod
    async def build(
        cls,
        spec: Spec,
        *,
        spec_path: str | os.PathLike[str] | None = None,
        force_engine: str | None = None,
        reuse: Runtime | None = None,
    ) -> Runtime:
        """Create and start every engine, then every executor. Raises SpecError/EngineError; cleans up on failure."""
        rt = cls(spec=spec, spec_path=str(spec_path) if spec_path else None)
        created: list[Engine] = []
        try:
            for name, e in spec.experts.items():
                rt.experts[name] = rt._handle(name, e, force_engine, reuse, created, f"experts.{name}")
            await asyncio.gather(*(eng.start() for eng in created))
            for name in spec.experts:
                rt.executors[name] = ExpertExecutor(name, rt.experts[name])
            for name, ens in spec.ensembles.items():
                rt.executors[name] = await rt._ensemble(name, ens, force_engine, reuse, created)
        except BaseException:
            for eng in created:
                try:
                    await eng.close()
                except Exception:  # pragma: no cover - best effort cleanup
                    log.exception("closing engine after a failed build")
            raise
        return rt

    def _engine(self, e: ExpertSpec, force: str | None, reuse: Runtime | None, created: list[Engine]) -> Engine:
        kind = resolve_engine_kind(e.engine, force=force)
        key = engine_key(kind, e)
        if key in self.engines:
            return self.engines[key]
        if reuse is not None and key in reuse.engines:
            self.engines[key] = reuse.engines[key]
            return self.engines[key]
        args = dict(e.engine_args)
        if kind == "openai":
            args.update(url=e.url, api_key_env=e.api_key_env, timeout_s=e.timeout_s)
        eng = create_engine(kind, e.model, **args)
        self.engines[key] = eng
        created.append(eng)
        return eng

    def _handle(
        self, name: str, e: ExpertSpec, force: str | None, reuse: Runtime | None, created: list[Engine], key: str
    ) -> ExpertHandle:
        if e.adapter and Path(e.model).is_dir():
            problem = adapter_mismatch(e.adapter, e.model)
            if problem:
                raise SpecError(self.spec_path, f"{key}.adapter", problem)
        engine = self._engine(e, force, reuse, created)
        adapter = adapter_for(name, e.adapter) if e.adapter else None
        return ExpertHandle(name=name, engine=engine, adapter=adapter, cost=e.cost, description=e.description)

    async def _ensemble(
        self, name: str, ens: Any, force: str | None, reuse: Runtime | None, created: list[Engine]
    ) -> Executor:
        if isinstance(ens, ExpertEnsemble):
            handle = self._handle(name, ens, force, reuse, created, f"ensembles.{name}")
            await handle.engine.start()
            return ExpertExecutor(name, handle)
        if isinstance(ens, DagEnsemble):
            from gateway.executors.dag import DagExecutor

            return DagExecutor.from_spec(name, ens, self.experts)
        if isinstance(ens, ChainEnsemble):
            from gateway.executors.chain import ChainExecutor

            return ChainExecutor.from_spec(name, ens, self.experts)
        if getattr(ens, "kind", None) == "blend":
            from gateway.executors.blend import BlendExecutor

            try:
                return BlendExecutor.from_spec(name, ens, self.experts)
            except ValueError as exc:  # a member whose engine can't score (e.g. an openai engine forced by name)
                raise SpecError(self.spec_path, f"ensembles.{name}.experts", str(exc)) from None
        raise SpecError(self.spec_path, f"ensembles.{name}", f"unsupported kind {getattr(ens, 'kind', '?')!r}")

    def kind_of(self, model: str) -> str:
        ex = self.executors[model]
        return ex.kind

    async def close(self, *, keep: Runtime | None = None) -> None:
        """Close executors and the engines the ``keep`` runtime doesn't share."""
        for ex in self.executors.values():
            try:
                await ex.close()
            except Exception:  # pragma: no cover
                log.exception("closing executor %s", ex.name)
        shared = {id(e) for e in keep.engines.values()} if keep else set()
        for eng in self.engines.values():
            if id(eng) not in shared:
                try:
                    await eng.close()
                except Exception:  # pragma: no cover
                    log.exception("closing engine")


class RuntimeHolder:
    """Holds the serving runtime; swaps it atomically on reload and refuses a bad spec."""

    def __init__(self, spec_path: str | os.PathLike[str], *, force_engine: str | None = None):
        self.spec_path = Path(spec_path)
        self.force_engine = force_engine
        self.runtime: Runtime | None = None
        self.last_error: str | None = None
        self._mtime: int | None = None
        self._lock = asyncio.Lock()

    def _stat(self) -> int | None:
        try:
            return self.spec_path.stat().st_mtime_ns
        except OSError:
            return None

    async def load(self) -> Runtime:
        """Load the spec into a new runtime and swap it in. Raises SpecError/EngineError; the old one stays."""
        from gateway.spec import load_spec

        async with self._lock:
            mtime = self._stat()
            try:
                spec = load_spec(self.spec_path)
                new = await Runtime.build(
                    spec, spec_path=self.spec_path, force_engine=self.force_engine, reuse=self.runtime
                )
            except (SpecError, EngineError) as exc:
                self.last_error = str(exc)
                self._mtime = mtime  # don't retry the same bad file on every poll
                raise
            old, self.runtime = self.runtime, new
            self._mtime = mtime
            self.last_error = None
            if old is not None:
                await old.close(keep=new)
            engines = {
                f"{e.kind}:{Path(getattr(e, 'model_path', None) or getattr(e, 'model', '') or '').name or '?'}"
                for e in new.engines.values()
            }
            log.info(
                "serving %d models from %s on engines %s",
                len(new.executors),
                self.spec_path,
                ", ".join(sorted(engines)),
            )
            return new

    async def reload_if_changed(self) -> str:
        """Reload when the file changed: 'unchanged', 'ok', or 'refused' (the old runtime keeps serving)."""
        if self._stat() == self._mtime:
            return "unchanged"
        try:
            await self.load()
        except (SpecError, EngineError) as exc:
            log.error("spec reload refused, still serving the previous spec: %s", exc)
            return "refused"
        return "ok"

    async def close(self) -> None:
        if self.runtime is not None:
            await self.runtime.close()
            self.runtime = None
