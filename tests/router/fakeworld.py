"""A fake toy world for router tests: rule-based experts behind the real ``Engine`` protocol (no models).

It mirrors the toy world's tasks (``add 12 34``, ``rev abc``, ``sort dbca``, ``count a in abaca`` and the composed
``addrev`` / ``sortrev``) and its KTP (``"{question}\\nP: {previous}"``). Specialists solve their skill and, given a
``P:`` line, apply it to the previous answer; ``big`` (cost 4) solves every skill but only the first half of a
composed task; ``base`` repeats what it is given. So the best single expert is ``big`` (4/6 of the tasks), and a
router that chains adder > reverser or sorter > reverser solves everything at cost 1-2.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gateway.engines.base import Adapter, Chunk, Engine, Prompt, SamplingParams
from gateway.executors.base import ExpertHandle
from scoring.examples import Example

TOY_KTP = "{question}\nP: {previous}"
EXPERTS = ["base", "adder", "reverser", "sorter", "counter", "big"]
COSTS = [1.0, 1.0, 1.0, 1.0, 1.0, 4.0]
TASKS = ["add", "rev", "sort", "count", "addrev", "sortrev"]


def parse(content: str) -> tuple[str, str | None]:
    """(question, previous answer or None) from a KTP user message."""
    question, sep, previous = content.partition("\nP: ")
    return question, (previous if sep else None)


def skill_answer(skill: str, question: str, previous: str | None) -> str:
    words = question.split()
    task, args = (words[0], words[1:]) if words else ("", [])
    if skill == "base":
        return previous if previous is not None else "?"
    if skill == "adder":
        if task in ("add", "addrev") and len(args) == 2:
            return str(int(args[0]) + int(args[1]))
        return previous or "0"
    if skill == "reverser":
        if previous is not None:
            return previous[::-1]
        if task == "rev":
            return args[0][::-1]
        return (args[-1] if args else question)[::-1]
    if skill == "sorter":
        if task in ("sort", "sortrev"):
            return "".join(sorted(args[0]))
        return previous or ""
    if skill == "counter":
        if task == "count" and len(args) == 3:
            return str(args[2].count(args[0]))
        return "0"
    if skill == "big":
        if task in ("add", "addrev"):
            return str(int(args[0]) + int(args[1]))
        if task == "rev":
            return args[0][::-1]
        if task in ("sort", "sortrev"):
            return "".join(sorted(args[0]))
        if task == "count":
            return str(args[2].count(args[0]))
        return "?"
    raise ValueError(skill)


def answer_fn(expert: str, question: str, previous: str) -> str:
    """The env's injectable answer function over the fake experts."""
    return skill_answer(expert, question, previous or None)


def gold(question: str) -> str:
    task, *args = question.split()
    if task == "add":
        return str(int(args[0]) + int(args[1]))
    if task == "addrev":
        return str(int(args[0]) + int(args[1]))[::-1]
    if task == "rev":
        return args[0][::-1]
    if task == "sort":
        return "".join(sorted(args[0]))
    if task == "sortrev":
        return "".join(sorted(args[0]))[::-1]
    if task == "count":
        return str(args[2].count(args[0]))
    raise ValueError(question)


def make_examples(n_per_task: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for task in TASKS:
        for _ in range(n_per_task):
            if task in ("add", "addrev"):
                q = f"{task} {rng.randint(10, 99)} {rng.randint(10, 99)}"
            elif task == "count":
                s = "".join(rng.choice("abcd") for _ in range(rng.randint(3, 7)))
                q = f"count {rng.choice('abcd')} in {s}"
            else:
                q = f"{task} {''.join(rng.choice('abcdefgh') for _ in range(rng.randint(3, 6)))}"
            out.append(Example(q, gold(q), task))
    return out


@dataclass
class FakeSkillEngine(Engine):
    """One engine serving every fake skill: the adapter's name picks it (no adapter: ``default``)."""

    default: str = "base"
    token_delay_s: float = 0.0
    """Sleep per streamed character (to observe streaming)."""
    calls: list[tuple[str, str]] = field(default_factory=list)
    """(skill, user content) of every call, in order."""
    kind: str = "fake"

    @property
    def max_model_len(self) -> int:
        return 512

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def count_prompt_tokens(self, prompt: Prompt) -> int | None:
        return len(self._content(prompt))

    @staticmethod
    def _content(prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        users = [m for m in prompt if m.get("role") == "user"]
        return str(users[-1]["content"]) if users else ""

    async def stream(
        self, prompt: Prompt, params: SamplingParams, *, adapter: Adapter | None = None, request_id: str | None = None
    ) -> AsyncIterator[Chunk]:
        skill = adapter.name.split("@")[0] if adapter else self.default
        content = self._content(prompt)
        self.calls.append((skill, content))
        question, previous = parse(content)
        text = skill_answer(skill, question, previous)[: params.max_tokens]
        for ch in text:
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            yield Chunk(text=ch, token_ids=[ord(ch)])
        yield Chunk(text="", finish_reason="stop", prompt_tokens=len(content), completion_tokens=len(text))


def make_handles(token_delay_s: float = 0.0) -> tuple[dict[str, ExpertHandle], FakeSkillEngine, FakeSkillEngine]:
    """Expert handles as the runtime builds them: specialists share one engine (adapters), big has its own."""
    small = FakeSkillEngine(default="base", token_delay_s=token_delay_s)
    big = FakeSkillEngine(default="big", token_delay_s=token_delay_s)
    handles = {}
    for name, cost in zip(EXPERTS, COSTS, strict=True):
        if name == "big":
            handles[name] = ExpertHandle(name=name, engine=big, cost=cost)
        elif name == "base":
            handles[name] = ExpertHandle(name=name, engine=small, cost=cost)
        else:
            handles[name] = ExpertHandle(
                name=name, engine=small, adapter=Adapter(f"{name}@test", f"/fake/{name}"), cost=cost
            )
    return handles, small, big
