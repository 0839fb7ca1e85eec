"""A single expert: one engine call, streamed.

Every request field is honoured by the expert's engine or refused before the call (400 naming the field).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

from gateway.engines.base import InvalidEngineRequest, Prompt, PromptTooLong
from gateway.errors import InvalidRequestError
from gateway.executors.base import ExecEvent, ExecRequest, Executor, ExpertHandle
from gateway.executors.fields import refuse_unsupported


class ExpertExecutor(Executor):
    kind = "expert"

    def __init__(self, name: str, expert: ExpertHandle):
        super().__init__(name)
        self.expert = expert

    def experts(self) -> list[ExpertHandle]:
        return [self.expert]

    def max_model_len(self) -> int | None:
        return self.expert.engine.max_model_len

    def count_prompt_tokens(self, prompt: Prompt) -> int | None:
        with _field_errors():
            return self.expert.engine.count_prompt_tokens(prompt)

    async def stream(self, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        refuse_unsupported(self.name, self.expert, request.params)
        with _field_errors():
            async for event in self.expert.stream_step(
                "0", request.prompt, request.params, request_id=request.request_id
            ):
                yield event


@contextlib.contextmanager
def _field_errors() -> Iterator[None]:
    """An engine's refusal that names a field (bad token ids, a schema it can't compile) stays a 400 naming it."""
    try:
        yield
    except PromptTooLong:
        raise  # the serving layer words it (context_length_exceeded)
    except InvalidEngineRequest as exc:
        if exc.param is None:
            raise
        raise InvalidRequestError(str(exc), param=exc.param) from None
