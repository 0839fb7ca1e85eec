"""A rule-based engine that implements the real ``Engine`` protocol, for executor/generation tests.

Each adapter name's prefix picks a skill applied to the toy-format user message (``question`` then ``\\nP: ...``
lines): ``add`` sums the two numbers of the question, ``rev`` reverses the last ``P:`` line (or the question's
argument), ``echo`` repeats the question. It counts calls, batches and the most requests in flight at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from gateway.engines.base import Adapter, Chunk, Completion, Engine, Prompt, SamplingParams


def _content(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def apply_skill(skill: str, content: str) -> str:
    lines = content.split("\nP: ")
    question, previous = lines[0], lines[1:]
    words = question.split()
    if skill == "add":
        nums = [int(w) for w in words if w.isdigit()]
        return str(sum(nums[:2])) if len(nums) >= 2 else "?"
    if skill == "rev":
        target = previous[-1] if previous else (words[-1] if words else "")
        return target[::-1]
    if skill == "echo":
        return question
    return "?"


class RuleEngine(Engine):
    kind = "rule"

    def __init__(self, model: str = "rules", *, delay_s: float = 0.0):
        self.model_path = model
        self.delay_s = delay_s
        self.calls = 0
        self.batches: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.prompts: list[str] = []

    @property
    def max_model_len(self) -> int:
        return 4096

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def stream(
        self, prompt: Prompt, params: SamplingParams, *, adapter: Adapter | None = None, request_id: str | None = None
    ) -> AsyncIterator[Chunk]:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            content = _content(prompt)
            self.prompts.append(content)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            skill = (adapter.name if adapter else "echo").split("@")[0].split("-")[-1]
            text = apply_skill(skill, content)[: params.max_tokens]
            for ch in text[:-1]:
                yield Chunk(text=ch, token_ids=[ord(ch)])
            last = text[-1:] if text else ""
            yield Chunk(
                text=last,
                token_ids=[ord(c) for c in last],
                finish_reason="stop",
                prompt_tokens=len(content),
                completion_tokens=len(text),
            )
        finally:
            self.in_flight -= 1

    async def complete_batch(
        self, prompts: Sequence[Prompt], params: SamplingParams, *, adapters: Sequence[Adapter | None] | None = None
    ) -> list[Completion]:
        self.batches.append(len(prompts))
        return await super().complete_batch(prompts, params, adapters=adapters)
