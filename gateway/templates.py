"""Prompt templates for message passing: how a DAG node's user message is built from the question and its
predecessors' responses.

``PromptTemplates`` names a template per node role (source, inner, final) and one per predecessor response; the
offline graph search writes them into each node of a ``Topology`` (``gateway.topology``), whose ``render`` fills them
with ``fill``. ``PROMPT_PRESETS`` holds the toy models' format and the Heterogeneous Swarms paper's instructions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplates:
    """How a node's user message is built from the question and its predecessors' responses."""

    source: str = "{question}"
    """Template of a node without predecessors."""
    inner: str = "{question}{responses}"
    """Template of a node with predecessors that is not the final node."""
    final: str = "{question}{responses}"
    """Template of the final node (when it has predecessors)."""
    response: str = "\nP: {response}"
    """Each predecessor's response inside ``{responses}``; may use ``{response}``, ``{node}`` (1-based), ``{expert}``."""

    def for_node(self, *, has_predecessors: bool, is_final: bool) -> str:
        if not has_predecessors:
            return self.source
        return self.final if is_final else self.inner


PROMPT_PRESETS: dict[str, PromptTemplates] = {
    # The toy models' format (toyworld.format.PREDECESSOR_TEMPLATE / PREDECESSOR_RESPONSE): the chat template wraps
    # the user message as "Q: {content}\nA: ", so a node sees "Q: question\nP: response\n...A: ".
    "toy": PromptTemplates(
        source="{question}{responses}",
        inner="{question}{responses}",
        final="{question}{responses}",
        response="\nP: {response}",
    ),
    # For real instruction-tuned models (the Heterogeneous Swarms paper's instructions).
    "natural": PromptTemplates(
        source="Please answer the following question.\n{question}",
        inner=(
            "Please answer the following question with the help of previous responses, feel free to ignore wrong or "
            "unhelpful responses.\n{responses}{question}"
        ),
        final=(
            "Please answer the following question with the help of previous responses, feel free to ignore wrong or "
            "unhelpful responses. Make sure to provide a final answer.\n{responses}{question}"
        ),
        response="Previous response from node {node}: {response}\n\n",
    ),
}

_FIELD = re.compile(r"\{(question|responses|response|node|expert)\}")


def fill(template: str, values: dict[str, str]) -> str:
    """Substitute ``{name}`` fields in one pass (text inside values is never re-substituted; other braces stay)."""
    return _FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), template)
