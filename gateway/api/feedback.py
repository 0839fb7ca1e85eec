"""POST /v1/feedback: a user's score and/or corrected answer for one served request, stored with the request log.

The request is named by the response's ``id`` (``chatcmpl-...`` / ``cmpl-...``). Feedback is appended to the
request log (``SWARMGATE_REQUEST_LOG``) as a ``{"type": "feedback", ...}`` line, next to the request it is about, so
``swarmgate router retrain --log FILE`` learns from it (a correction becomes the reference answer; a score marks the
served answer right or wrong). Errors use OpenAI's body: 400 for a bad body (``param`` names the field), 404 for an
id the log does not hold, 409 when the gateway keeps no request log (nothing to attach feedback to).
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.deps import AuthDep, ServingDep
from gateway.errors import FeedbackDisabled, InvalidRequestError, RequestNotFound

router = APIRouter(dependencies=[AuthDep])

MAX_ANSWER_CHARS = 100_000


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


@router.post("/v1/feedback")
async def post_feedback(body: FeedbackRequest, serving: ServingDep) -> FeedbackResponse:
    log = serving.request_log
    if log is None:
        raise FeedbackDisabled(
            "This gateway keeps no request log, so feedback has nothing to attach to: start it with "
            "SWARMGATE_REQUEST_LOG=<file>."
        )
    known, model = await log.lookup(body.id)
    if not known:
        raise RequestNotFound(f"No logged request has the id `{body.id}`.", param="id")
    if body.answer is not None and not body.answer.strip():
        raise InvalidRequestError("'answer' is blank", param="answer")
    created = int(time.time())
    await log.record_feedback(body.id, model, body.score, body.answer)
    return FeedbackResponse(id=body.id, model=model, score=body.score, answer=body.answer, created=created)
