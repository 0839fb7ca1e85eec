"""A single expert: one engine call, streamed.

Every request field is honoured by the expert's engine or refused before the call (400 naming the field).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.engines.base import Prompt
from gateway.executors.base import ExecEvent, ExecRequest, Executor, ExpertHandle
from gateway.executors.raw import refuse_unsupported


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
        return self.expert.engine.count_prompt_tokens(prompt)

    async def stream(self, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        refuse_unsupported(self.name, self.expert, request.params)
        async for event in self.expert.stream_step("0", request.prompt, request.params, request_id=request.request_id):
            yield event
