"""Tool calling on local vLLM experts: vLLM's own tool parsers turn the model's text into OpenAI ``tool_calls``.

The parser is named per base model in the spec, with vLLM's flag name: ``engine_args: {tool_call_parser: hermes}``
(any name ``vllm serve --tool-call-parser`` accepts). The tools are rendered into the prompt by the model's chat
template (``apply_chat_template(..., tools=...)``), as ``vllm serve`` does. ``tool_choice``:
- ``auto``: the parser reads the finished output (text, tool calls, or both);
- ``required`` / a named function: the output is constrained to JSON by vLLM's structured outputs, exactly the schema
  ``vllm serve`` uses (``get_json_schema_from_tools``), and read back as the calls.
The parser runs on the whole output, so a streamed request gets its tool calls in one delta at the end.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from gateway.engines.base import EngineError, ToolRequest


def _call(name: str, arguments: Any, index: int) -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {
        "index": index,
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


class VLLMToolCalls:
    """One base model's tool parser (a vLLM ``ToolParser`` class, instantiated per request: parsers keep state)."""

    def __init__(self, parser_name: str, tokenizer: Any, model: str):
        from vllm.tool_parsers import ToolParserManager

        try:
            self._parser_cls = ToolParserManager.get_tool_parser(parser_name)
        except KeyError as exc:
            raise EngineError(f"vllm engine for {model!r}: unknown tool_call_parser {parser_name!r}") from exc
        self.name = parser_name
        self._tokenizer = tokenizer
        self._model = model

    def structured_schema(self, tools: ToolRequest) -> Any:
        """The JSON schema that forces a call (``required`` / named ``tool_choice``), or None for ``auto``."""
        from vllm.tool_parsers.utils import get_json_schema_from_tools

        request = self._request(tools)
        return get_json_schema_from_tools(
            tool_choice=request.tool_choice, tools=request.tools, parallel_tool_calls=tools.parallel_tool_calls
        )

    def _request(self, tools: ToolRequest, messages: list[dict[str, Any]] | None = None) -> Any:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        return ChatCompletionRequest(
            model=self._model,
            messages=messages or [{"role": "user", "content": ""}],
            tools=tools.tool_list(),
            tool_choice=tools.choice(),
            parallel_tool_calls=tools.parallel_tool_calls,
        )

    def parse(self, text: str, tools: ToolRequest) -> tuple[str, list[dict[str, Any]]]:
        """(content, tool calls) of a finished output."""
        choice = tools.choice()
        if isinstance(choice, dict):  # named: the output is the function's arguments
            return "", [_call(choice["function"]["name"], text, 0)]
        if choice == "required":  # a JSON list of {"name", "parameters"}
            try:
                calls = json.loads(text)
            except ValueError:
                return text, []
            if isinstance(calls, dict):
                calls = [calls]
            return "", [_call(c.get("name", ""), c.get("parameters", {}), i) for i, c in enumerate(calls)]
        parser = self._parser_cls(self._tokenizer, tools=None)
        info = parser.extract_tool_calls(text, self._request(tools))
        if not info.tools_called:
            return text, []
        out = []
        for i, c in enumerate(info.tool_calls):
            call = _call(c.function.name, c.function.arguments, i)
            if getattr(c, "id", None):
                call["id"] = c.id
            out.append(call)
        return info.content or "", out
