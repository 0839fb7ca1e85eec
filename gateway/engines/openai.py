"""The openai engine: any OpenAI-compatible server (a vLLM pod, a hosted API) over HTTP, through ``httpx``.

Chat messages go to ``POST {url}/chat/completions``, text prompts to ``POST {url}/completions``; always streamed
(``stream: true`` with ``stream_options.include_usage``) and parsed from server-sent events.

Behaviour the gateway relies on:
- **Usage** comes from the server's final usage chunk. A server that sends none gets 0 prompt and 0 completion
  tokens (we do not guess from chunk counts: one chunk may carry several tokens).
- **Token ids** are not part of the OpenAI protocol: ``Chunk.token_ids`` stays empty.
- **Timeouts**: ``timeout_s`` bounds each wait on the server (connecting, the response headers, every next chunk),
  not a whole generation; exceeding it raises ``EngineTimeout``.
- **Retries** only on connection failures (refused, unreachable, connect timeout): nothing reached the server, so
  resending is safe. Never on an HTTP error status and never mid-stream.
- **HTTP errors** become ``EngineError`` with the remote status and message; a 400 saying the context is too long
  (vLLM's and OpenAI's wording) becomes ``PromptTooLong``.
- **Adapters**: the server owns them. An ``Adapter`` is sent as the request's ``model`` field by its ``name``
  (vLLM serves LoRAs started with ``--lora-modules name=path`` under that name); its ``path`` is not read here.
  With ``load_adapters=True`` the engine first asks the server to load it (``POST {url}/load_lora_adapter`` with
  the name and path, once per name; vLLM needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, and the path must be
  visible to the server, e.g. a shared volume): how an offline search fans its particles out over vLLM pods.
- **Cancellation** (consumer cancelled or ``aclose()``) closes the HTTP stream; vLLM aborts the request when the
  connection drops.
- ``max_model_len``: the argument, else the ``max_model_len`` that vLLM lists for this model on ``GET {url}/models``
  (asked at ``start()``; if the server was unreachable, asked again in the background on later requests until it
  answers), else 4096.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from gateway.engines.base import (
    Adapter,
    Chunk,
    Engine,
    EngineError,
    EngineTimeout,
    FinishReason,
    Prompt,
    PromptTooLong,
    SamplingParams,
    TokenLogprob,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_LEN = 4096
"""Context length assumed when neither the spec nor the server says."""
RETRY_BACKOFF_S = 0.25
"""First wait before retrying a connection failure; doubles per attempt."""

_CONTEXT_TOO_LONG = re.compile(r"maximum context length|context length exceeded|context_length_exceeded", re.I)


class RemotePromptTooLong(PromptTooLong):
    """``PromptTooLong`` as the remote server reported it (its numbers where they parse; its message verbatim)."""

    def __init__(self, message: str, *, max_tokens: int, max_model_len: int):
        limit = re.search(r"maximum context length is (\d+)", message)
        prompt = re.search(r"contains (?:at least )?(\d+) input tokens", message) or re.search(
            r"\((\d+) in the messages", message
        )
        super().__init__(
            int(prompt.group(1)) if prompt else 0, max_tokens, int(limit.group(1)) if limit else max_model_len
        )
        self.remote_message = message
        self.args = (message,)

    def __str__(self) -> str:
        return self.remote_message


class OpenAIEngine(Engine):
    """A remote OpenAI-compatible server, one base model (``model`` is its served name)."""

    kind = "openai"
    supported_fields = frozenset(
        {
            "seed",
            "logprobs",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "response_format",
            "tools",
            # vLLM's extensions, passed through as top-level fields (a vLLM server honours them)
            "repetition_penalty",
            "top_k",
            "min_p",
            "min_tokens",
            "ignore_eos",
        }
    )
    """Passed through to the server. Not ``prompt_logprobs``: servers don't return them on a stream."""

    def __init__(
        self,
        model: str,
        *,
        url: str,
        api_key: str | None = None,
        api_key_env: str | None = None,
        timeout_s: float = 120,
        max_retries: int = 2,
        max_model_len: int | None = None,
        load_adapters: bool = False,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.model = model
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self._max_model_len = max_model_len
        self._client: Any = None  # httpx.AsyncClient once started
        self._discovery: asyncio.Task[None] | None = None  # a background GET /models while the length is unknown
        self.load_adapters = load_adapters
        self._adapter_loads: dict[str, asyncio.Future[None]] = {}  # adapter name -> its (shared) load request

    @property
    def max_model_len(self) -> int:
        return self._max_model_len or DEFAULT_MAX_MODEL_LEN

    # ---- lifecycle ------------------------------------------------------------------------------------------------
    def _resolve_api_key(self) -> str | None:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise EngineError(
                    f"openai engine for {self.model!r} at {self.url}: environment variable {self.api_key_env} "
                    "(api_key_env) is not set"
                )
            return key
        return None

    async def start(self) -> None:
        if self._client is not None:
            return
        import httpx

        headers = {"Accept": "text/event-stream"}
        key = self._resolve_api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        if self._max_model_len is None:
            await self._discover_max_model_len()

    async def close(self) -> None:
        client, self._client = self._client, None
        self._adapter_loads.clear()
        discovery, self._discovery = self._discovery, None
        if discovery is not None and not discovery.done():
            discovery.cancel()
        if client is not None:
            await client.aclose()

    def _http(self) -> Any:
        if self._client is None:
            raise EngineError(f"openai engine for {self.model!r} at {self.url} is not started (call start() first)")
        return self._client

    def _discovery_done(self, task: asyncio.Task[None]) -> None:
        if self._discovery is task:
            self._discovery = None

    async def _discover_max_model_len(self) -> None:
        """Ask ``GET /models`` for this model's ``max_model_len`` (vLLM lists it); keep the default otherwise."""
        import httpx

        try:
            resp = await self._http().get(f"{self.url}/models", timeout=min(self.timeout_s, 10.0))
            resp.raise_for_status()
            models = resp.json().get("data", [])
        except (httpx.HTTPError, ValueError, AttributeError) as e:
            log.warning(
                "openai engine %s at %s: GET /models failed (%s); max_model_len unknown", self.model, self.url, e
            )
            return
        for card in models:
            if isinstance(card, dict) and card.get("id") == self.model and card.get("max_model_len"):
                self._max_model_len = int(card["max_model_len"])
                return
        log.info(
            "openai engine %s at %s: /models gives no max_model_len; assuming %d",
            self.model,
            self.url,
            DEFAULT_MAX_MODEL_LEN,
        )
        self._max_model_len = DEFAULT_MAX_MODEL_LEN

    # ---- requests ---------------------------------------------------------------------------------------------------
    def _body(self, prompt: Prompt, params: SamplingParams, adapter: Adapter | None) -> tuple[str, dict[str, Any]]:
        chat = not isinstance(prompt, str | tuple)  # text and token-id prompts go to /completions
        body: dict[str, Any] = {
            "model": adapter.name if adapter is not None else self.model,
            "messages" if chat else "prompt": prompt,
            "max_tokens": params.max_tokens,
            "temperature": max(params.temperature, 0.0),
            "top_p": params.top_p if params.temperature > 0 else 1.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None and params.temperature > 0:
            body["seed"] = params.seed
        if params.logprobs is not None:
            if chat:
                body["logprobs"] = True
                body["top_logprobs"] = params.logprobs
            else:
                body["logprobs"] = params.logprobs
        if isinstance(prompt, tuple):  # token ids
            body["prompt"] = list(prompt)
        for name in ("presence_penalty", "frequency_penalty", "min_p"):
            if getattr(params, name):
                body[name] = getattr(params, name)
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if params.min_tokens:
            body["min_tokens"] = params.min_tokens
        if params.ignore_eos:
            body["ignore_eos"] = True
        if params.logit_bias:
            body["logit_bias"] = {str(t): b for t, b in params.logit_bias}
        if params.structured is not None:
            body["response_format"] = params.structured.to_openai()
        if params.tools is not None:
            body["tools"] = params.tools.tool_list()
            body["tool_choice"] = params.tools.choice()
            if params.tools.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = params.tools.parallel_tool_calls
        return ("/chat/completions" if chat else "/completions"), body

    async def _open(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        """Send the request and return the streaming response (headers read), retrying connection failures only."""
        import httpx

        client = self._http()
        attempt = 0
        while True:
            request = client.build_request("POST", f"{self.url}{path}", json=body, headers=headers)
            try:
                return await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if attempt >= self.max_retries:
                    where = f"{self.url}{path}"
                    if isinstance(e, httpx.ConnectTimeout):
                        raise EngineTimeout(
                            f"openai engine for {self.model!r}: connecting to {where} timed out "
                            f"({attempt + 1} attempts)"
                        ) from e
                    raise EngineError(
                        f"openai engine for {self.model!r}: can't connect to {where} ({attempt + 1} attempts): {e}"
                    ) from e
                await asyncio.sleep(RETRY_BACKOFF_S * 2**attempt)
                attempt += 1
            except httpx.HTTPError as e:
                where = f"{self.url}{path}"
                raise self._http_error(e, f"{where} sent no response in", f"{where} failed") from e

    def _http_error(self, e: Exception, timed_out: str, failed: str) -> EngineError:
        """httpx's error ``e`` as this engine's: ``EngineTimeout`` ending ``{timed_out} {timeout}s`` for a timeout,
        else ``EngineError`` ending ``{failed}: {e!r}``."""
        import httpx

        if isinstance(e, httpx.TimeoutException):
            return EngineTimeout(f"openai engine for {self.model!r}: {timed_out} {self.timeout_s:g}s")
        return EngineError(f"openai engine for {self.model!r}: {failed}: {e!r}")

    async def _raise_for_status(self, resp: Any, params: SamplingParams) -> None:
        if resp.status_code < 400:
            return
        try:
            raw = (await resp.aread()).decode("utf-8", "replace")
        except Exception:
            raw = ""
        finally:
            await resp.aclose()
        message = _error_message(raw) or resp.reason_phrase or "no message"
        if resp.status_code == 400 and _CONTEXT_TOO_LONG.search(message):
            raise RemotePromptTooLong(message, max_tokens=params.max_tokens, max_model_len=self.max_model_len)
        raise EngineError(
            f"openai engine for {self.model!r}: {resp.request.url} returned HTTP {resp.status_code}: {message}"
        )

    async def _ensure_adapter(self, adapter: Adapter) -> None:
        """Ask the server to load ``adapter`` (once per name; concurrent first requests share the call)."""
        loading = self._adapter_loads.get(adapter.name)
        if loading is None:
            loading = asyncio.ensure_future(self._load_adapter(adapter))
            self._adapter_loads[adapter.name] = loading
        try:
            await asyncio.shield(loading)
        except BaseException:
            if loading.done() and self._adapter_loads.get(adapter.name) is loading:
                del self._adapter_loads[adapter.name]  # a later request tries again
            raise

    async def _load_adapter(self, adapter: Adapter) -> None:
        import httpx

        where = f"{self.url}/load_lora_adapter"
        try:
            resp = await self._http().post(where, json={"lora_name": adapter.name, "lora_path": adapter.path})
        except httpx.HTTPError as e:
            raise EngineError(
                f"openai engine for {self.model!r}: loading adapter {adapter.name!r} failed: {e!r}"
            ) from e
        if resp.status_code == 200:
            return
        message = _error_message(resp.text) or resp.reason_phrase
        if resp.status_code == 400 and "already been loaded" in message:
            return
        raise EngineError(
            f"openai engine for {self.model!r}: {where} returned HTTP {resp.status_code} for adapter "
            f"{adapter.name!r} ({adapter.path}): {message}"
        )

    async def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        adapter: Adapter | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        import httpx

        if self._max_model_len is None and self._client is not None and self._discovery is None:
            # The server was unreachable at start(): ask again in the background, never delaying this request.
            self._discovery = asyncio.create_task(self._discover_max_model_len())
            self._discovery.add_done_callback(self._discovery_done)
        if adapter is not None and self.load_adapters:
            await self._ensure_adapter(adapter)
        self.check_supported(params)
        path, body = self._body(prompt, params, adapter)
        # vLLM names its request after X-Request-Id (its logs then match ours); other servers ignore the header.
        headers = {"X-Request-Id": request_id} if request_id else None
        resp = await self._open(path, body, headers)
        try:
            await self._raise_for_status(resp, params)
            final: Chunk | None = None
            usage: dict[str, Any] = {}
            async for data in _sse_data(resp):
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except ValueError as e:
                    raise EngineError(f"openai engine for {self.model!r}: bad stream frame {data[:200]!r}") from e
                if "error" in event:  # vLLM reports mid-stream failures as one error frame
                    raise EngineError(
                        f"openai engine for {self.model!r}: server error mid-stream: {_error_text(event['error'])}"
                    )
                usage = event.get("usage") or usage  # its own last frame (OpenAI, vLLM) or on the finish frame
                for choice in event.get("choices") or []:
                    chunk = _choice_chunk(choice, chat=path == "/chat/completions", top_k=params.logprobs)
                    if chunk.finish_reason is not None:
                        final = chunk
                    elif chunk.text or chunk.logprobs or chunk.tool_calls:
                        yield chunk
            if final is None:
                raise EngineError(
                    f"openai engine for {self.model!r}: {self.url}{path} ended the stream without a finish reason"
                )
            final.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            final.completion_tokens = int(usage.get("completion_tokens") or 0)
            yield final
        except httpx.HTTPError as e:
            where = f"{self.url}{path}"
            raise self._http_error(e, f"{where} stalled for more than", f"stream from {where} broke") from e
        finally:
            await resp.aclose()


async def _sse_data(resp: Any) -> AsyncIterator[str]:
    """The ``data`` payloads of a server-sent event stream (multi-line data joined with newlines)."""
    lines: list[str] = []
    async for line in resp.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            lines.append(value[1:] if value.startswith(" ") else value)
    if lines:
        yield "\n".join(lines)


def _finish_reason(value: Any) -> FinishReason | None:
    if value is None:
        return None
    if value in ("length", "abort", "tool_calls"):
        return value  # type: ignore[no-any-return]
    return "stop"  # stop, eos, content_filter: the sequence ended


def _choice_chunk(choice: dict[str, Any], *, chat: bool, top_k: int | None) -> Chunk:
    source = (choice.get("delta") or {}) if chat else choice
    text = source.get("content" if chat else "text") or ""
    chunk = Chunk(text=text, finish_reason=_finish_reason(choice.get("finish_reason")))
    if chat and source.get("tool_calls"):
        chunk.tool_calls = [dict(c) for c in source["tool_calls"]]
    if top_k is not None:
        chunk.logprobs = _logprobs(choice.get("logprobs"), chat=chat, top_k=top_k)
    return chunk


def _lp(value: Any) -> float:
    return float(value) if value is not None else -math.inf


def _logprobs(raw: Any, *, chat: bool, top_k: int) -> list[TokenLogprob]:
    """Both OpenAI logprob shapes -> ``TokenLogprob``s with the ``top_k`` best alternatives, best first."""
    if not raw:
        return []
    out: list[TokenLogprob] = []
    if chat:  # {"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}
        for item in raw.get("content") or []:
            top = sorted(
                ((t["token"], _lp(t.get("logprob"))) for t in item.get("top_logprobs") or []), key=lambda x: -x[1]
            )
            out.append(TokenLogprob(item["token"], _lp(item.get("logprob")), tuple(top[:top_k])))
        return out
    # completions: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...]}
    tokens = raw.get("tokens") or []
    token_lps = raw.get("token_logprobs") or [None] * len(tokens)
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    for token, lp, top in zip(tokens, token_lps, tops, strict=False):
        ranked = sorted(((t, _lp(v)) for t, v in (top or {}).items()), key=lambda x: -x[1])
        out.append(TokenLogprob(token, _lp(lp), tuple(ranked[:top_k])))
    return out


def _error_text(err: Any) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


def _error_message(raw: str) -> str:
    """The message of an error body (``{"error": {...}}`` or vLLM's older ``{"message": ...}``), else the raw text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.strip()[:1000]
    if isinstance(body, dict):
        if "error" in body:
            return _error_text(body["error"])
        if "message" in body:
            return str(body["message"])
        if "detail" in body:
            return str(body["detail"])
    return raw.strip()[:1000]
