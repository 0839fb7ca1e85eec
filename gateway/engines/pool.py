"""One engine pool: which engine serves an expert, what its adapter is called, and when engines start and close.

Everything that turns experts into engine calls builds them here: the gateway's runtime (one pool per spec load,
sharing the previous load's engines on hot reload), the router's trajectory collection and the offline searches.

- **Engines are shared by key.** Experts with the same engine kind, model and engine arguments share one engine (the
  adapters ride on it); the ``openai`` engine's arguments include the server's url, API-key variable and timeout.
- **Adapters are named by where and what they are**: ``<expert>@<digest>``, the digest over the adapter directory's
  resolved path and the bytes of its ``adapter_*`` files. Engines load and cache adapters by name (vLLM also keys its
  prefix cache by name and path, and refuses one name at two paths), so a changed or moved adapter gets a new name
  that a hot reload serves, and an unchanged one keeps its name: loaded once, found in a search's output cache on
  resume. Digests are remembered by the files' size and mtime, and a pool that replaces another takes over its
  memory, so a reload reads only the adapters whose files changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.engines import create_engine, resolve_engine_kind
from gateway.engines.base import Adapter, Engine
from gateway.executors.base import ExpertHandle

if TYPE_CHECKING:
    from gateway.spec import ExpertSpec

log = logging.getLogger(__name__)

_Stamp = tuple[tuple[str, int, int], ...]


def engine_args(kind: str, e: ExpertSpec) -> dict[str, Any]:
    """The arguments ``create_engine`` gets for a spec expert (for ``openai``: the server's url, key and timeout)."""
    args = dict(e.engine_args)
    if kind == "openai":
        args.update(url=e.url, api_key_env=e.api_key_env, timeout_s=e.timeout_s)
    return args


def engine_key(kind: str, model: str, args: Mapping[str, Any]) -> str:
    """Experts with equal keys share one engine (a local model path counts by where it really is)."""
    where = os.path.realpath(model) if os.path.isabs(model) else model
    return json.dumps([kind, where, dict(args)], sort_keys=True, default=str)


def _adapter_files(path: Path) -> list[Path]:
    return sorted(f for f in path.glob("adapter_*") if f.is_file())


def _stamp(path: Path) -> _Stamp:
    return tuple((f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in _adapter_files(path))


def adapter_digest(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of an adapter directory's resolved path and the names and bytes of its ``adapter_*`` files."""
    p = Path(path).resolve()
    h = hashlib.sha256(str(p).encode())
    for f in _adapter_files(p):
        h.update(f"\0{f.name}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()


class EnginePool:
    """Engines by key, created on first use and shared; adapters named by ``adapter_digest``.

    ``reuse``: the pool this one replaces (a hot reload): its engines are taken, not created again, and its
    remembered digests kept. ``force_engine`` decides what a spec expert's ``engine: auto`` means (tests, laptops).
    """

    def __init__(self, *, force_engine: str | None = None, reuse: EnginePool | None = None) -> None:
        self.force_engine = force_engine
        self.engines: dict[str, Engine] = {}
        """Every engine this pool hands out, by ``engine_key`` (those taken from ``reuse`` included)."""
        self._reuse = dict(reuse.engines) if reuse is not None else {}
        self._digests: dict[str, tuple[_Stamp, str]] = dict(reuse._digests) if reuse is not None else {}

    def engine(self, kind: str, model: str, args: Mapping[str, Any] | None = None) -> Engine:
        """The engine for (kind, model, args): this pool's, the replaced pool's, or a new one (not started yet)."""
        args = dict(args or {})
        key = engine_key(kind, model, args)
        if key not in self.engines:
            reused = self._reuse.get(key)
            self.engines[key] = reused if reused is not None else create_engine(kind, model, **args)
        return self.engines[key]

    async def get(self, kind: str, model: str, args: Mapping[str, Any] | None = None) -> Engine:
        """``engine``, started."""
        engine = self.engine(kind, model, args)
        await engine.start()
        return engine

    def adapter(self, name: str, path: str | os.PathLike[str]) -> Adapter:
        """``name``'s adapter at ``path``, named ``<name>@<digest>`` (see the module docstring)."""
        p = Path(path).resolve()
        stamp = _stamp(p)
        known = self._digests.get(str(p))
        if known is None or known[0] != stamp:
            known = (stamp, adapter_digest(p))
            self._digests[str(p)] = known
        return Adapter(name=f"{name}@{known[1][:16]}", path=str(path))

    def handle(
        self,
        name: str,
        kind: str,
        model: str,
        *,
        args: Mapping[str, Any] | None = None,
        adapter: str | os.PathLike[str] | None = None,
        cost: float = 1.0,
        description: str = "",
    ) -> ExpertHandle:
        """An expert on the shared engine for (kind, model, args) (not started yet), with its adapter named."""
        return ExpertHandle(
            name=name,
            engine=self.engine(kind, model, args),
            adapter=self.adapter(name, adapter) if adapter else None,
            cost=cost,
            description=description,
        )

    def expert(self, name: str, e: ExpertSpec) -> ExpertHandle:
        """A spec expert's handle (``engine: auto`` resolved here; the engine is not started yet)."""
        kind = resolve_engine_kind(e.engine, force=self.force_engine)
        return self.handle(
            name,
            kind,
            e.model,
            args=engine_args(kind, e),
            adapter=e.adapter,
            cost=e.cost,
            description=e.description,
        )

    async def start(self) -> None:
        """Start every engine (concurrently; started ones return at once). The first failure is raised once every
        start has ended, so a ``close`` that follows finds no engine still loading."""
        results = await asyncio.gather(*(e.start() for e in self.engines.values()), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def release(self, kind: str, model: str, args: Mapping[str, Any] | None = None) -> None:
        """Close the engine for (kind, model, args) and forget it (e.g. a full-weights particle scored)."""
        engine = self.engines.pop(engine_key(kind, model, dict(args or {})), None)
        if engine is not None:
            await engine.close()

    async def close(self, *, keep: EnginePool | None = None) -> None:
        """Close every engine, except those ``keep`` holds too; a failing close is logged and the rest still close."""
        shared = {id(e) for e in keep.engines.values()} if keep is not None else set()
        engines, self.engines = list({id(e): e for e in self.engines.values()}.values()), {}
        for engine in engines:
            if id(engine) in shared:
                continue
            try:
                await engine.close()
            except Exception:
                log.exception("closing %s engine", engine.kind)
