"""The one prompt format every toy model is trained on, and the templates that reproduce it through a chat template.

A toy prompt is ``"Q: {question}\\n"``, then one ``"P: {previous answer}\\n"`` line per earlier answer, then ``"A: "``;
the model answers and ends with ``</s>``. The tokenizer's chat template wraps a user message as
``"Q: {content}\\nA: "``, so a user message built from ``KTP_TEMPLATE`` or ``PREDECESSOR_TEMPLATE`` renders
byte-identically to ``render(question, previous)``.
"""

from __future__ import annotations

from collections.abc import Sequence

EOS = "</s>"
"""End-of-answer token (a special token of the toy tokenizer)."""

KTP_TEMPLATE = "{question}\nP: {previous}"
"""User-message content of the chain router's knowledge-transfer prompt (one previous answer)."""
PREDECESSOR_TEMPLATE = "{question}{responses}"
"""User-message content of a DAG node: ``responses`` is ``"".join(PREDECESSOR_RESPONSE.format(response=r) ...)``."""
PREDECESSOR_RESPONSE = "\nP: {response}"
"""How each predecessor response is rendered inside ``PREDECESSOR_TEMPLATE``."""


def render(question: str, previous: Sequence[str] = ()) -> str:
    """The prompt text the toy models were trained on, ending with ``"A: "``."""
    lines = [f"Q: {question}\n", *(f"P: {p}\n" for p in previous), "A: "]
    return "".join(lines)


def render_example(question: str, answer: str, previous: Sequence[str] = ()) -> str:
    """A full training text: the prompt, the answer and the end-of-answer token."""
    return render(question, previous) + answer + EOS


def user_content(question: str, previous: Sequence[str] = ()) -> str:
    """User-message content whose chat-template rendering equals ``render(question, previous)``."""
    return PREDECESSOR_TEMPLATE.format(
        question=question, responses="".join(PREDECESSOR_RESPONSE.format(response=p) for p in previous)
    )
