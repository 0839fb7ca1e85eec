"""Retrain the router offline from the gateway's own request log.

The gateway (opt-in, ``SWARMGATE_REQUEST_LOG=path``) writes one JSON line per request with the question, the route
(per step: expert, output of intermediate steps) and the final answer. Every logged step is a transition
(expert, question, previous answer) -> answer, i.e. a trajectory-cache entry; logged single-expert requests give the
first step. ``retrain`` ingests those into the cache, optionally collects the transitions the log does not show
(the actions the policy did not take) through the engine layer, then trains PPO on the logged questions (plus the
configured training set) and publishes a new policy version atomically, only when it beats the serving one on
the held-out dev split.

Feedback (``POST /v1/feedback``) is appended to the same log as ``{"type": "feedback", "request_id", "score",
"answer"}`` lines; ``read_feedback`` collects the latest per request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.cache import Answer


@dataclass(frozen=True)
class Feedback:
    """What a user said about one served request (``POST /v1/feedback``, stored in the request log)."""

    request_id: str
    """The response's ``id``."""
    score: float | None = None
    """Quality in [0, 1] of the served answer."""
    answer: str | None = None
    """A corrected answer."""


def read_feedback(paths: Iterable[str | Path]) -> dict[str, Feedback]:
    """The latest feedback per request id in the logs (lines with ``"type": "feedback"``)."""
    out: dict[str, Feedback] = {}
    for _path, _lineno, rec in iter_log(paths):
        if not isinstance(rec, dict) or rec.get("type") != "feedback" or not isinstance(rec.get("request_id"), str):
            continue
        score, answer = rec.get("score"), rec.get("answer")
        out[rec["request_id"]] = Feedback(
            rec["request_id"],
            float(score) if isinstance(score, int | float) else None,
            answer if isinstance(answer, str) and answer.strip() else None,
        )
    return out


@dataclass
class LogDigest:
    """What a request log holds for the router."""

    answers: list[Answer] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """Reasons lines were not used, with counts."""
    finals: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Request id -> (question, final answer of its first choice), to attach feedback to."""
    feedback_lines: int = 0
    """Feedback records seen (read by ``read_feedback``)."""

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def iter_log(paths: Iterable[str | Path]) -> Iterator[tuple[str, int, Any]]:
    """(file, line number, parsed JSON or None) for every non-empty line of the logs."""
    for path in paths:
        with Path(path).open() as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield str(path), lineno, json.loads(line)
                except json.JSONDecodeError:
                    yield str(path), lineno, None


def digest_log(paths: Iterable[str | Path], experts: Iterable[str]) -> LogDigest:
    """Turn logged requests into cache answers for ``experts`` (other experts' steps are ignored)."""
    known = set(experts)
    out = LogDigest()
    questions: dict[str, None] = {}
    for _path, _lineno, rec in iter_log(paths):
        out.lines += 1
        if not isinstance(rec, dict):
            out.skip("not JSON")
            continue
        if rec.get("type") == "feedback":
            out.feedback_lines += 1
            continue
        if rec.get("status", 200) != 200:
            out.skip("error status")
            continue
        if rec.get("kind") not in ("chain", "expert"):
            out.skip(f"kind {rec.get('kind')!r}")
            continue
        question = rec.get("question")
        choices, routes = rec.get("choices") or [], rec.get("route") or []
        if not isinstance(question, str) or not question.strip() or not isinstance(choices, list):
            out.skip("no question")
            continue
        used = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            idx = choice.get("index", 0)
            route = routes[idx] if isinstance(idx, int) and 0 <= idx < len(routes) else None
            final = choice.get("text")
            if not isinstance(route, list) or not route or not isinstance(final, str):
                out.skip("no route")
                continue
            if choice.get("finish_reason") not in (None, "stop"):
                out.skip("truncated answer")
                continue
            previous = ""
            for i, step in enumerate(route):
                if not isinstance(step, dict):
                    break
                expert = step.get("expert")
                text = final if i == len(route) - 1 else step.get("output")
                if not isinstance(text, str):
                    out.skip("step without output")
                    break
                if expert in known:
                    out.answers.append(
                        Answer(
                            expert=str(expert),
                            question=question,
                            previous=previous,
                            answer=text,
                            prompt_tokens=int(step.get("prompt_tokens") or 0),
                            completion_tokens=int(step.get("completion_tokens") or 0),
                            finish_reason=step.get("finish_reason") or "stop",
                            source="log",
                        )
                    )
                    used = True
                previous = text.strip()
        if used:
            questions.setdefault(question, None)
            first = choices[0] if choices and isinstance(choices[0], dict) else {}
            if isinstance(rec.get("request_id"), str) and isinstance(first.get("text"), str):
                out.finals[rec["request_id"]] = (question, first["text"].strip())
    out.questions = list(questions)
    return out
