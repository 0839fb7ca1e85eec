"""A small real OpenAI-compatible server (FastAPI + uvicorn, in a thread) that misbehaves on demand.

It speaks the streaming wire format of vLLM's server (SSE ``data:`` frames, a final usage frame, ``data: [DONE]``)
for ``/v1/chat/completions`` and ``/v1/completions``, and lists one model with ``max_model_len`` on ``/v1/models``.
The request's ``model`` field picks a behaviour (see ``FakeOpenAIServer.app``); every request body is recorded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

REPLY = "Hello there!"
MAX_MODEL_LEN = 321


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FakeOpenAIServer:
    port: int = field(default_factory=free_port)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)
    closed_streams: list[str] = field(default_factory=list)
    """Models whose streams the server saw closed by the client before the end."""
    loaded_adapters: set[str] = field(default_factory=set)
    """Adapters loaded through POST /v1/load_lora_adapter (paths under /adapters/ 'exist')."""
    models_payload: dict[str, Any] | None = None
    """Override for GET /v1/models (None: one card for 'fake' with MAX_MODEL_LEN)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> Any:
        """Behaviours by ``model``: ``fake`` (normal), ``no-usage``, ``http-500``, ``too-long`` (400 context length),
        ``slow`` (headers after 5 s), ``stall`` (one token, then silence), ``drop`` (connection dropped mid-stream),
        ``error-frame`` (an error frame mid-stream), ``endless`` (tokens until the client leaves). Any other model
        name behaves like ``fake`` (adapters are served by name)."""
        app = FastAPI()
        server = self

        @app.get("/v1/models")
        async def models() -> Any:
            if server.models_payload is not None:
                return server.models_payload
            return {"object": "list", "data": [{"id": "fake", "object": "model", "max_model_len": MAX_MODEL_LEN}]}

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(request: Request) -> Any:
            body = await request.json()
            name, path = body.get("lora_name"), body.get("lora_path")
            server.hits["load_lora_adapter"] += 1
            if not str(path).startswith("/adapters/"):
                msg = f"Loading lora {name} failed: No adapter found for {path}"
                return JSONResponse({"error": {"message": msg, "type": "NotFoundError", "code": 404}}, 404)
            if name in server.loaded_adapters:
                msg = f"The lora adapter '{name}' has already been loaded."
                return JSONResponse({"error": {"message": msg, "type": "InvalidUserInput", "code": 400}}, 400)
            server.loaded_adapters.add(name)
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        async def handle(request: Request, chat: bool) -> Any:
            body = await request.json()
            server.bodies.append(body)
            server.headers.append(dict(request.headers))
            model = body.get("model", "")
            server.hits[model] += 1
            if model == "http-500":
                return JSONResponse(
                    {"error": {"message": "the GPU caught fire", "type": "InternalServerError", "code": 500}},
                    status_code=500,
                )
            if model == "too-long":
                msg = (
                    "This model's maximum context length is 321 tokens. However, your prompt contains 400 input "
                    "tokens, which exceeds this limit even without any output tokens. Please reduce the length of "
                    "the input prompt."
                )
                return JSONResponse(
                    {"error": {"message": msg, "type": "BadRequestError", "param": "input_tokens", "code": 400}},
                    status_code=400,
                )
            if model == "slow":
                await asyncio.sleep(5)
            return StreamingResponse(server._events(body, chat, model), media_type="text/event-stream")

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Any:
            return await handle(request, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Any:
            return await handle(request, chat=False)

        return app

    async def _events(self, body: dict[str, Any], chat: bool, model: str) -> Any:
        k = body.get("top_logprobs") if chat else body.get("logprobs")
        want_lp = bool(body.get("logprobs")) if chat else body.get("logprobs") is not None
        tokens = list(REPLY)[: int(body.get("max_tokens") or 16)]
        finished = False
        try:
            i = 0
            while True:
                if model == "endless":
                    tok = "x"
                elif i < len(tokens):
                    tok = tokens[i]
                else:
                    break
                choice: dict[str, Any] = {"index": 0, "finish_reason": None}
                if chat:
                    choice["delta"] = {"role": "assistant", "content": tok} if i == 0 else {"content": tok}
                else:
                    choice["text"] = tok
                if want_lp:
                    choice["logprobs"] = _logprobs(tok, int(k or 0), chat)
                last = model != "endless" and i == len(tokens) - 1
                if last:
                    choice["finish_reason"] = "length" if len(tokens) < len(REPLY) else "stop"
                yield _frame({"id": "cmpl-1", "object": "chunk", "model": model, "choices": [choice]})
                i += 1
                if model == "stall":
                    await asyncio.sleep(5)
                if model == "drop" and i == 3:
                    raise RuntimeError("dropping the connection mid-stream (test)")
                if model == "error-frame" and i == 3:
                    yield _frame({"error": {"message": "engine core died", "type": "InternalServerError", "code": 500}})
                    yield "data: [DONE]\n\n"
                    finished = True
                    return
                if model == "endless":
                    await asyncio.sleep(0.01)
            if model != "no-usage":
                usage = {"prompt_tokens": 7, "completion_tokens": len(tokens), "total_tokens": 7 + len(tokens)}
                yield _frame({"id": "cmpl-1", "object": "chunk", "model": model, "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:
                self.closed_streams.append(model)

    def __enter__(self) -> FakeOpenAIServer:
        import uvicorn

        self._server = uvicorn.Server(
            uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def _frame(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _logprobs(tok: str, k: int, chat: bool) -> dict[str, Any]:
    """Both OpenAI shapes; alternatives are ``tok`` (-0.1) then ``#``, ``$``, ... with falling logprobs."""
    alts = [(tok, -0.1)] + [(c, -1.0 - j) for j, c in enumerate("#$%&'()*+,")]
    if chat:
        return {
            "content": [
                {
                    "token": tok,
                    "logprob": -0.1,
                    "bytes": list(tok.encode()),
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts[:k]],
                }
            ]
        }
    # vLLM's completions shape: the chosen token first, then the top k (so up to k+1 entries), unordered by JSON
    top = dict(reversed(alts[: k + 1])) if k else {tok: -0.1}
    return {"tokens": [tok], "token_logprobs": [-0.1], "top_logprobs": [top], "text_offset": [0]}
