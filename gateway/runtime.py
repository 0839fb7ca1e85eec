"""The runtime: engines, experts and executors built from a spec, started, and swapped atomically on reload.

Experts on the same base model (same engine kind, model and engine arguments) share one engine from the runtime's
engine pool (``gateway.engines.pool``), which names adapters by path and content, so a reload serves an adapter whose
files changed. A reload builds the new runtime completely (reusing engines whose key is unchanged) before it replaces
the old one; if anything fails the new engines are closed and the old runtime keeps serving (``last_error`` says why).

Requests pin the runtime they started on (``RuntimeHolder.acquire``): a request that is running or queued during a
reload finishes on the executors it started with. A replaced runtime's engines are closed when its last request
ends and no newer runtime shares them (engines are reference-counted by the runtimes that hold them). Spec loading
and executor builds (policy, encoder, topology files) run off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.engines.adapters import adapter_mismatch
from gateway.engines.base import Engine, EngineError
from gateway.engines.pool import EnginePool
from gateway.executors.base import Executor, ExpertHandle
from gateway.executors.expert import ExpertExecutor
from gateway.spec import ChainEnsemble, DagEnsemble, ExpertEnsemble, ExpertSpec, Spec, SpecError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Runtime:
    spec: Spec
    spec_path: str | None
    pool: EnginePool = field(default_factory=EnginePool)
    """The engines this runtime's experts run on (shared with the runtime it replaced where keys are equal)."""
    experts: dict[str, ExpertHandle] = field(default_factory=dict)
    executors: dict[str, Executor] = field(default_factory=dict)
    active: int = 0
    """Requests pinned to this runtime (running or queued)."""
    retired: bool = False
    """Replaced by a newer runtime: its engines close when ``active`` drops to zero."""
    on_idle: Callable[[], None] | None = None
    """Called once a retired runtime's last request ends (set by the holder)."""

    @property
    def engines(self) -> dict[str, Engine]:
        """Engines by key (``gateway.engines.pool.engine_key``)."""
        return self.pool.engines

    def enter(self) -> None:
        """Pin a request to this runtime (its executors and engines stay open until ``exit``)."""
        self.active += 1

    def exit(self) -> None:
        """Unpin a request; the last one out of a retired runtime lets the holder close what nothing else uses."""
        self.active -= 1
        if self.active <= 0 and self.retired and self.on_idle is not None:
            cb, self.on_idle = self.on_idle, None
            cb()

    def dead_engines(self) -> list[str]:
        """Local engines that died (a dead vLLM engine core, a stopped worker thread): the pod needs a restart."""
        return [f"{e.kind}:{i}" for i, e in enumerate(self.engines.values()) if engine_problem(e)]

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
        pool = EnginePool(force_engine=force_engine, reuse=reuse.pool if reuse is not None else None)
        rt = cls(spec=spec, spec_path=str(spec_path) if spec_path else None, pool=pool)
        try:
            for name, e in spec.experts.items():
                rt.experts[name] = rt._handle(name, e, f"experts.{name}")
            await pool.start()
            for name in spec.experts:
                rt.executors[name] = ExpertExecutor(name, rt.experts[name])
            for name, ens in spec.ensembles.items():
                rt.executors[name] = await rt._ensemble(name, ens)
        except BaseException:
            await pool.close(keep=reuse.pool if reuse is not None else None)  # the engines this build created
            raise
        return rt

    def _handle(self, name: str, e: ExpertSpec, key: str) -> ExpertHandle:
        if e.adapter and Path(e.model).is_dir():
            problem = adapter_mismatch(e.adapter, e.model)
            if problem:
                raise SpecError(self.spec_path, f"{key}.adapter", problem)
        return self.pool.expert(name, e)

    async def _ensemble(self, name: str, ens: Any) -> Executor:
        if isinstance(ens, ExpertEnsemble):
            handle = self._handle(name, ens, f"ensembles.{name}")
            await handle.engine.start()
            return ExpertExecutor(name, handle)
        # executor builders read files and may load models (policy, encoder): keep them off the event loop
        if isinstance(ens, DagEnsemble):
            from gateway.executors.dag import DagExecutor

            return await asyncio.to_thread(DagExecutor.from_spec, name, ens, self.experts)
        if isinstance(ens, ChainEnsemble):
            from gateway.executors.chain import ChainExecutor

            return await asyncio.to_thread(ChainExecutor.from_spec, name, ens, self.experts)
        if getattr(ens, "kind", None) == "blend":
            from gateway.executors.blend import BlendExecutor

            try:
                return BlendExecutor.from_spec(name, ens, self.experts)
            except ValueError as exc:  # a member whose engine can't score (e.g. an openai engine forced by name)
                raise SpecError(self.spec_path, f"ensembles.{name}.experts", str(exc)) from None
        raise SpecError(self.spec_path, f"ensembles.{name}", f"unsupported kind {getattr(ens, 'kind', '?')!r}")

    async def close(self, *, keep: Runtime | None = None) -> None:
        """Close executors and the engines the ``keep`` runtime doesn't share."""
        for ex in self.executors.values():
            try:
                await ex.close()
            except Exception:  # pragma: no cover
                log.exception("closing executor %s", ex.name)
        await self.pool.close(keep=keep.pool if keep is not None else None)


def engine_problem(engine: Engine) -> str | None:
    """Why a started local engine can no longer serve, or None (remote engines are not probed here)."""
    llm = getattr(engine, "_llm", None)  # vLLM: AsyncLLM marks itself errored when its engine core dies
    if engine.kind == "vllm" and llm is not None and getattr(llm, "errored", False):
        return "vllm engine core is dead"
    thread = getattr(engine, "_thread", None)  # transformers: the worker thread owns the model
    if engine.kind == "transformers" and thread is not None and not thread.is_alive():
        return "transformers worker thread stopped"
    return None


class ReloadError(Exception):
    """A reload failed for a reason other than a bad spec or engine (an internal error); ``last_error`` has it."""


class RuntimeHolder:
    """Holds the serving runtime; swaps it atomically on reload and refuses a bad spec."""

    def __init__(self, spec_path: str | os.PathLike[str], *, force_engine: str | None = None):
        self.spec_path = Path(spec_path)
        self.force_engine = force_engine
        self.runtime: Runtime | None = None
        self.last_error: str | None = None
        self._mtime: int | None = None
        self._lock = asyncio.Lock()
        self._engine_refs: Counter[int] = Counter()  # id(engine) -> runtimes (serving or draining) holding it
        self._retired: set[Runtime] = set()  # replaced runtimes with requests still running
        self._closing: set[asyncio.Task[None]] = set()

    def acquire(self) -> Runtime | None:
        """The serving runtime, pinned for one request (call ``runtime.exit()`` when the request ends)."""
        rt = self.runtime
        if rt is not None:
            rt.enter()
        return rt

    def _retire(self, old: Runtime) -> None:
        old.retired = True
        if old.active <= 0:
            self._spawn_finish(old)
        else:
            self._retired.add(old)
            old.on_idle = lambda: self._spawn_finish(old)

    def _spawn_finish(self, rt: Runtime) -> None:
        self._retired.discard(rt)
        task = asyncio.get_running_loop().create_task(self._finish(rt))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _finish(self, rt: Runtime) -> None:
        """Close a replaced runtime's executors and the engines no other runtime holds any more."""
        for ex in rt.executors.values():
            try:
                await ex.close()
            except Exception:  # pragma: no cover
                log.exception("closing executor %s", ex.name)
        for eng in {id(e): e for e in rt.engines.values()}.values():
            self._engine_refs[id(eng)] -= 1
            if self._engine_refs[id(eng)] <= 0:
                del self._engine_refs[id(eng)]
                try:
                    await eng.close()
                except Exception:  # pragma: no cover
                    log.exception("closing engine")

    def _hold(self, rt: Runtime) -> None:
        for eng in {id(e): e for e in rt.engines.values()}.values():
            self._engine_refs[id(eng)] += 1

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
                spec = await asyncio.to_thread(load_spec, self.spec_path)
                new = await Runtime.build(
                    spec, spec_path=self.spec_path, force_engine=self.force_engine, reuse=self.runtime
                )
            except (SpecError, EngineError) as exc:
                self.last_error = str(exc)
                self._mtime = mtime  # don't retry the same bad file on every poll
                raise
            except (OSError, ValueError, TypeError, KeyError) as exc:  # unreadable file, bad engine_args types
                self.last_error = f"{self.spec_path}: {type(exc).__name__}: {exc}"
                self._mtime = mtime
                raise SpecError(self.spec_path, "spec", f"{type(exc).__name__}: {exc}") from exc
            except Exception as exc:
                log.exception("spec load failed unexpectedly; still serving the previous spec")
                self.last_error = f"{self.spec_path}: internal error: {type(exc).__name__}: {exc}"
                self._mtime = mtime
                raise ReloadError(self.last_error) from exc
            old, self.runtime = self.runtime, new
            self._hold(new)
            self._mtime = mtime
            self.last_error = None
            if old is not None:
                self._retire(old)  # closes now, or when its last pinned request ends
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
        except (SpecError, EngineError, ReloadError) as exc:
            log.error("spec reload refused, still serving the previous spec: %s", exc)
            return "refused"
        return "ok"

    async def close(self) -> None:
        """Shut down: close the serving runtime, every runtime still draining, and every engine they hold."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        runtimes = [rt for rt in (self.runtime, *self._retired) if rt is not None]
        self.runtime = None
        self._retired.clear()
        for rt in runtimes:
            rt.on_idle = None
            await self._finish(rt)
        for rt in runtimes:  # engines a test built outside ``load`` (no reference counts) still close
            await rt.close()
