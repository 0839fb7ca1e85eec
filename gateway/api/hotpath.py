"""Dependencies of the completion endpoints, as coroutines.

FastAPI runs a plain-function dependency in a worker thread (``run_in_threadpool``): one thread hop per dependency
per request, which a profile of the toy expert path showed at ~7% of the event loop's busy time. These do the same
as ``gateway.api.deps``'s ``AuthDep`` / ``ServingDep`` on the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.api.guard import bearer, check_inference_key
from gateway.api.serving import OpenAIServing


async def authorized(request: Request) -> None:
    """The bearer-key check (``FrontDoor`` already enforced it before the body was read; kept so the route is safe on
    its own)."""
    check_inference_key(request.app.state.settings, bearer(request.scope.get("headers", [])))


async def serving(request: Request) -> OpenAIServing:
    return request.app.state.serving


AuthorizedDep = Depends(authorized)
FastServingDep = Annotated[OpenAIServing, Depends(serving)]
