"""POST /v1/chat/completions (HTTP only; logic in ``serving``)."""

from fastapi import APIRouter, Request

from gateway.api.deps import AuthDep, ServingDep
from gateway.api.protocol import ChatCompletionRequest, mark_ignored

router = APIRouter(dependencies=[AuthDep])


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request, serving: ServingDep):
    return mark_ignored(await serving.chat(body, request), body)
