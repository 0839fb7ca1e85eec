"""POST /v1/completions (HTTP only; logic in ``serving``)."""

from fastapi import APIRouter, Request

from gateway.api.deps import AuthDep, ServingDep
from gateway.api.protocol import CompletionRequest, mark_ignored

router = APIRouter(dependencies=[AuthDep])


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request, serving: ServingDep):
    return mark_ignored(await serving.completions(body, request), body)
