"""POST /v1/feedback: a user's score and/or corrected answer for one served request, stored with the request log.

The request is named by the response's ``id`` (``chatcmpl-...`` / ``cmpl-...``). Feedback is appended to the
request log (``SWARMGATE_REQUEST_LOG``) as a ``{"type": "feedback", ...}`` line, next to the request it is about, so
``swarmgate router retrain --log FILE`` learns from it (a correction becomes the reference answer; a score marks the
served answer right or wrong). Errors use OpenAI's body: 400 for a bad body (``param`` names the field), 404 for an
id the log does not hold, 409 when the gateway keeps no request log (nothing to attach feedback to).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.deps import AuthDep, ServingDep
from gateway.errors import GatewayError, InvalidRequestError

router = APIRouter(dependencies=[AuthDep])

MAX_ANSWER_CHARS = 100_000


class FeedbackDisabled(GatewayError):
    """The gateway keeps no request log, so feedback has nothing to attach to (409)."""

    status = 409
    type = "invalid_request_error"
    code = "feedback_disabled"


class RequestNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "request_not_found"


class FeedbackRequest(BaseModel):
    """One piece of feedback; give ``score``, ``answer`` or both."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256, description="The `id` of the response the feedback is about.")
    score: float | None = Field(default=None, ge=0.0, le=1.0, description="Quality of the served answer, in [0, 1].")
    answer: str | None = Field(
        default=None, min_length=1, max_length=MAX_ANSWER_CHARS, description="The correct answer."
    )

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        if self.score is None and (self.answer is None or not self.answer.strip()):
            raise ValueError("'score' or 'answer': give a score in [0, 1], a corrected answer, or both")
        return self


class FeedbackResponse(BaseModel):
    """The stored feedback."""

    object: Literal["feedback"] = "feedback"
    id: str = Field(description="The request the feedback is about.")
    model: str | None = Field(default=None, description="The model that served it.")
    score: float | None = None
    answer: str | None = None
    created: int = Field(description="Unix time the feedback was stored.")


class RequestIndex:
    """Request ids in the log, read incrementally (new bytes only) as feedback arrives."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.models: dict[str, str | None] = {}
        self.lock = asyncio.Lock()

    def _scan(self) -> None:
        if not self.path.is_file():
            return
        if self.path.stat().st_size < self.offset:  # rotated: a new file
            self.offset = 0
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("type") != "feedback" and isinstance(rec.get("request_id"), str):
                self.models[rec["request_id"]] = rec.get("model")
        self.offset += end

    async def lookup(self, request_id: str) -> tuple[bool, str | None]:
        async with self.lock:
            if request_id not in self.models:
                await asyncio.to_thread(self._scan)
            return request_id in self.models, self.models.get(request_id)


def _index(request: Request, path: Path) -> RequestIndex:
    index: RequestIndex | None = getattr(request.app.state, "feedback_index", None)
    if index is None or index.path != path:
        index = RequestIndex(path)
        request.app.state.feedback_index = index
    return index


@router.post("/v1/feedback")
async def post_feedback(body: FeedbackRequest, request: Request, serving: ServingDep) -> FeedbackResponse:
    log = serving.request_log
    if log is None:
        raise FeedbackDisabled(
            "This gateway keeps no request log, so feedback has nothing to attach to: start it with "
            "SWARMGATE_REQUEST_LOG=<file>."
        )
    known, model = await _index(request, log.path).lookup(body.id)
    if not known:
        raise RequestNotFound(f"No logged request has the id `{body.id}`.", param="id")
    if body.answer is not None and not body.answer.strip():
        raise InvalidRequestError("'answer' is blank", param="answer")
    created = int(time.time())
    record: dict[str, Any] = {
        "type": "feedback",
        "ts": time.time(),
        "request_id": body.id,
        "model": model,
        "score": body.score,
        "answer": body.answer,
    }
    await log.write([record])
    return FeedbackResponse(id=body.id, model=model, score=body.score, answer=body.answer, created=created)
