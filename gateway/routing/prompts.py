"""Knowledge Transfer Prompts: how the next expert in a chain sees the question and the previous answer.

The template is the *user message content* of a step after the first; its placeholders are ``{question}`` and
``{previous}``. It lives in the router config and in the exported policy, so collection, training and serving use the
same one. The toy models use ``"{question}\\nP: {previous}"`` (their chat template wraps it as ``Q: ...\\nA: ``);
real chat models get ``router.config.NATURAL_KTP_TEMPLATE``.
"""

from __future__ import annotations

from typing import Any

from gateway.engines.base import Prompt


def ktp_content(template: str, question: str, previous: str) -> str:
    """The KTP user message text (``str.replace``, so braces in questions or answers are safe)."""
    return template.replace("{question}", question).replace("{previous}", previous)


def step_prompt(template: str, question: str, previous: str | None) -> list[dict[str, Any]]:
    """Chat messages for one chain step on a bare question: the question alone first, then the KTP."""
    content = question if not previous else ktp_content(template, question, previous)
    return [{"role": "user", "content": content}]


def chain_prompt(template: str, original: Prompt, question: str, previous: str | None) -> Prompt:
    """The prompt of one chain step when serving a client's request.

    The first step (no previous answer) gets the client's prompt unchanged. Later steps keep the client's messages
    and replace the last user message's content with the KTP; a raw-text prompt becomes one KTP user message.
    """
    if not previous:
        return original
    content = ktp_content(template, question, previous)
    if isinstance(original, str):
        return [{"role": "user", "content": content}]
    messages = [dict(m) for m in original]
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            messages[i]["content"] = content
            return messages
    return [*messages, {"role": "user", "content": content}]
