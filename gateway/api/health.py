"""Liveness, readiness, Prometheus metrics, and the admin reload.

Probes stay open (a plain status for kubelet); the details (``/ready``'s body, ``/metrics``) need a key when keys
are configured. ``/ready`` is 503 while loading, draining (SIGTERM) or when a local engine died; ``/health`` is
503 only when a local engine died (a dead vLLM engine core never recovers in-process: the pod must restart).
"""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.deps import AdminDep, HolderDep, MetricsDep, SettingsDep, has_any_key
from gateway.engines.base import EngineError
from gateway.errors import GatewayError, InvalidRequestError
from gateway.runtime import ReloadError
from gateway.spec import SpecError

router = APIRouter()


@router.get("/health")
async def health(holder: HolderDep) -> JSONResponse:
    """The process is up (liveness); 503 when a local engine died."""
    rt = holder.runtime
    dead = rt.dead_engines() if rt is not None else []
    if dead:
        return JSONResponse({"status": "engine_dead"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request, holder: HolderDep, settings: SettingsDep) -> JSONResponse:
    """Serving (readiness): 503 while loading, draining or with a dead engine; details only with a key."""
    rt = holder.runtime
    lifecycle = getattr(request.app.state, "lifecycle", None)
    dead = rt.dead_engines() if rt is not None else []
    if rt is None:
        status = "loading"
    elif lifecycle is not None and lifecycle.draining:
        status = "draining"
    elif dead:
        status = "engine_dead"
    else:
        status = "ready"
    body: dict[str, object] = {"status": status}
    if has_any_key(request, settings):
        body["last_reload_error"] = holder.last_error
        if rt is not None:
            body["models"] = len(rt.executors)
            body["engines"] = sorted({e.kind for e in rt.engines.values()})
            body["dead_engines"] = dead
    return JSONResponse(body, status_code=200 if status == "ready" else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(m: MetricsDep) -> Response:
    """Prometheus text exposition (needs a key when keys are configured)."""
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)


@router.post("/admin/reload", dependencies=[AdminDep])
async def reload_spec(holder: HolderDep, m: MetricsDep) -> dict:
    """Reload the spec file now; a bad spec is refused (400) and the old one keeps serving."""
    try:
        rt = await holder.load()
    except (SpecError, EngineError) as exc:
        m.spec_reloads.labels("refused").inc()
        raise InvalidRequestError(f"spec refused, still serving the previous one: {exc}", param="spec") from None
    except ReloadError:
        m.spec_reloads.labels("failed").inc()
        raise GatewayError("reload failed (see the gateway log); still serving the previous spec") from None
    m.spec_reloads.labels("ok").inc()
    return {"status": "reloaded", "models": sorted(rt.executors)}
