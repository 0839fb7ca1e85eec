"""POST /v1/completions (HTTP only; logic in ``serving``)."""

from fastapi import APIRouter, Request

from gateway.api.hotpath import AuthorizedDep, FastServingDep
from gateway.api.protocol import CompletionRequest, mark_ignored

router = APIRouter(dependencies=[AuthorizedDep])


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request, serving: FastServingDep):
    return mark_ignored(await serving.completions(body, request), body)
