"""An LLM judge: a model behind any OpenAI-compatible ``/chat/completions`` endpoint rates each answer.

Called with temperature 0; its scores are normalised to [0, 1] and cached per (question, reference, output).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Sequence
from typing import Any

from scoring.base import Utility
from scoring.examples import Example

JUDGE_SYSTEM = (
    "You are a strict grader. Rate how well the response answers the question"
    "{reference_clause}. Reply with a single integer from {min_score} to {max_score} and nothing else."
)
JUDGE_USER = "Question:\n{question}\n\n{reference}Response:\n{output}\n\nScore ({min_score}-{max_score}):"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class LLMJudge(Utility):
    """Scores from a judge model behind any OpenAI-compatible endpoint, normalised to [0, 1].

    An unparseable or failed judgement scores 0 (and is counted in ``failures``).
    """

    name = "llm_judge"

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        min_score: int = 1,
        max_score: int = 10,
        use_reference: bool = True,
        system: str = JUDGE_SYSTEM,
        user: str = JUDGE_USER,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_tokens: int = 8,
    ):
        if max_score <= min_score:
            raise ValueError("max_score must be > min_score")
        self.url = url.rstrip("/")
        self.model = model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.min_score, self.max_score = min_score, max_score
        self.use_reference = use_reference
        self.system, self.user = system, user
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self._sem = asyncio.Semaphore(concurrency)
        self._cache: dict[str, float] = {}
        self._client: Any = None
        self.failures = 0
        self.calls = 0

    def _messages(self, ex: Example, output: str) -> list[dict[str, str]]:
        fill = {
            "min_score": str(self.min_score),
            "max_score": str(self.max_score),
            "reference_clause": " (a reference answer is given)" if self.use_reference else "",
            "reference": f"Reference answer:\n{ex.answer or ''}\n\n" if self.use_reference else "",
            "question": ex.question,
            "output": output,
        }
        return [
            {"role": "system", "content": _fill(self.system, fill)},
            {"role": "user", "content": _fill(self.user, fill)},
        ]

    def parse(self, text: str) -> float | None:
        m = _NUMBER.search(text or "")
        if not m:
            return None
        v = min(max(float(m.group()), self.min_score), self.max_score)
        return (v - self.min_score) / (self.max_score - self.min_score)

    async def _judge(self, ex: Example, output: str) -> float:
        import httpx

        key = hashlib.sha256("\x00".join((ex.question, ex.answer or "", output)).encode()).hexdigest()
        if key in self._cache:
            return self._cache[key]
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(timeout=self.timeout_s, headers=headers)
        body = {
            "model": self.model,
            "messages": self._messages(ex, output),
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        async with self._sem:
            self.calls += 1
            try:
                r = await self._client.post(f"{self.url}/chat/completions", json=body)
                r.raise_for_status()
                text = r.json()["choices"][0]["message"]["content"]
                value = self.parse(text)
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                value = None
        if value is None:
            self.failures += 1
            return 0.0  # not cached: a transient failure may succeed next time
        self._cache[key] = value
        return value

    async def score_examples(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[float]:
        return list(await asyncio.gather(*(self._judge(e, o) for e, o in zip(examples, outputs, strict=True))))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)
