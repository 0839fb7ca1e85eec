"""What a raw completion prompt means for an ensemble (``/v1/completions``).

**Raw prompts.** An evaluation harness sends every model the same raw text, in the model's own format (for the toy
models ``"Q: addrev 12 34\\nA: "``). An ensemble treats it as an expert would:

1. every node without predecessors (the first step of a chain) gets the raw prompt exactly as sent: no chat
   template, the same tokens an expert would see;
2. every later node gets its message-passing text (the DAG node's template with the predecessors' responses, the
   chain's knowledge-transfer prompt) *in the same raw format*: the prompt's last user turn is located with the
   receiving model's chat-template frame (the text its template puts before and after one user message: for the toy
   models ``"Q: "`` and ``"\\nA: "``) and its content is replaced by the message-passing text; everything before it
   (few-shot examples, instructions) stays byte for byte. So ``"Q: addrev 12 34\\nA: "`` becomes
   ``"Q: addrev 12 34\\nP: 46\\nA: "`` for the reverser, exactly what the chat path renders;
3. the *question* (what DAG templates and the router's policy see) is that last user turn's content
   (``"addrev 12 34"``), as in chat, where it is the last user message.
When the frame is not found (a model without a chat template, a prompt in another format), the whole prompt is the
question and later nodes get the message-passing text as their whole raw prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.executors.base import ExpertHandle


@dataclass(frozen=True)
class RawPrompt:
    """A raw prompt split around its last user turn: ``head + question + tail`` is the prompt."""

    head: str
    """Everything before the last user turn's content (earlier turns and the frame's prefix)."""
    question: str
    """The last user turn's content."""
    tail: str
    """The frame's suffix as the prompt has it (the generation prompt, e.g. ``"\\nA: "``), or ''."""

    def with_content(self, content: str) -> str:
        """The same raw prompt with the last user turn's content replaced."""
        return self.head + content + self.tail


def split_raw(prompt: str, expert: ExpertHandle) -> RawPrompt:
    """Locate the last user turn of ``prompt`` with ``expert``'s chat-template frame (see the module docstring)."""
    frame = expert.engine.chat_frame()
    if frame is None:
        return RawPrompt("", prompt, "")
    prefix, suffix = frame
    tail = ""
    for candidate in (suffix, suffix.rstrip()):  # harnesses often strip the trailing space ("A:" for "A: ")
        if candidate and prompt.endswith(candidate):
            tail = candidate
            break
    body = prompt[: len(prompt) - len(tail)]
    # the content starts after the frame's prefix (its last line when the prefix carries a BOS or a system turn)
    for p in (prefix, prefix.split("\n")[-1]):
        if p and p in body:
            start = body.rindex(p) + len(p)
            return RawPrompt(body[:start], body[start:], tail)
    return RawPrompt("", body, tail)
