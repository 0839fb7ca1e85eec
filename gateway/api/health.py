"""Liveness, readiness, Prometheus metrics, and the admin reload."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.deps import AuthDep, HolderDep, MetricsDep
from gateway.engines.base import EngineError
from gateway.errors import InvalidRequestError
from gateway.spec import SpecError

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(holder: HolderDep) -> JSONResponse:
    """Engines are loaded and the spec is serving (readiness)."""
    rt = holder.runtime
    if rt is None:
        return JSONResponse({"status": "loading", "error": holder.last_error}, status_code=503)
    return JSONResponse(
        {
            "status": "ready",
            "models": len(rt.executors),
            "engines": sorted({f"{e.kind}" for e in rt.engines.values()}),
            "last_reload_error": holder.last_error,
        }
    )


@router.get("/metrics")
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)


@router.post("/admin/reload", dependencies=[AuthDep])
async def reload_spec(holder: HolderDep, m: MetricsDep) -> dict:
    """Reload the spec file now; a bad spec is refused (400) and the old one keeps serving."""
    try:
        rt = await holder.load()
    except (SpecError, EngineError) as exc:
        m.spec_reloads.labels("refused").inc()
        raise InvalidRequestError(f"spec refused, still serving the previous one: {exc}", param="spec") from None
    m.spec_reloads.labels("ok").inc()
    return {"status": "reloaded", "models": sorted(rt.executors)}
