"""In-process Hugging Face engine: the embedded default on CPU and the reference for exactness tests.

- One ``AutoModelForCausalLM`` per engine; LoRA adapters (PEFT) loaded on demand into one ``PeftModel`` and kept in
  an LRU (``max_adapters``), so a batch may mix adapters (PEFT's ``adapter_names`` per row).
- One worker thread owns the model. Requests queue up; the worker takes up to ``max_batch_size`` of them, prefills
  them together (left padding, positions from the mask, as HF ``generate`` does) and decodes step by step with a KV
  cache, sampling each row with its own settings and its own seeded generator. Requests arriving mid-batch wait for
  the next batch (static batching; vLLM is the engine for throughput).
- Tokens stream back to the asyncio side as they are produced; stop strings are held back until they can't match.
- ``next_token_logprobs`` exposes the full next-token distribution (token-level blending).

Prompt tokenization rule (shared with the vLLM engine so both see the same ids): a text prompt is tokenized with
the tokenizer's special tokens (``add_special_tokens=True``); chat messages are rendered with the chat template and
tokenized without adding special tokens (the template carries them).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.engines.adapters import adapter_mismatch
from gateway.engines.base import (
    LOCAL_ENGINE_FIELDS,
    Adapter,
    Chunk,
    Engine,
    EngineError,
    InvalidEngineRequest,
    Prompt,
    SamplingParams,
    StructuredOutput,
    TokenLogprob,
)
from gateway.engines.sampling import (
    ConstraintCompiler,
    process,
    prompt_logprobs,
    sample,
    seeded_generator,
    sendable,
)

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class _GenRequest:
    """One sequence being generated; owned by the worker thread once queued."""

    prompt_ids: list[int]
    params: SamplingParams
    adapter: Adapter | None
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Chunk | BaseException | None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    sent_chars: int = 0
    finished: bool = False
    constraint: Any = None
    """Structured-output grammar state (``sampling.Constraint``), when the request has a ``response_format``."""
    all_ids: list[int] = field(default_factory=list)
    """Every sampled token (EOS included): the penalties' history and, for final-only requests, the one chunk's ids."""
    pending_lps: list[TokenLogprob] = field(default_factory=list)
    """Final-only requests: logprobs held for the one chunk at the end."""
    prompt_logprobs: list[dict[str, Any] | None] | None = None

    def emit(self, item: Chunk | BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


@dataclass
class _Call:
    """A function to run on the worker thread (adapter loading, full distributions), with its future."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class TransformersEngine(Engine):
    kind = "transformers"
    supported_fields = LOCAL_ENGINE_FIELDS
    """Everything but ``tools`` (no tool parser runs on this engine)."""

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        max_batch_size: int = 32,
        max_model_len: int | None = None,
        max_adapters: int = 64,
        num_threads: int | None = None,
    ):
        self.model_path = model
        self.dtype = dtype
        self.device = device
        self.max_batch_size = max_batch_size
        self._max_model_len = max_model_len
        self.max_adapters = max_adapters
        self.num_threads = num_threads
        self.tokenizer: Any = None
        self.model: Any = None
        self._peft = False
        self._adapters: OrderedDict[str, str] = OrderedDict()  # name -> path, LRU order (changed on the worker only)
        self._adapters_lock = threading.Lock()  # the event loop reads the LRU while the worker changes it
        self.in_flight = 0
        """Generations running or queued (0 when idle: a cancelled request leaves no work behind)."""
        self._eos_ids: set[int] = set()
        self._compiler: ConstraintCompiler | None = None  # structured outputs (xgrammar), built on first use
        self._jobs: queue.Queue[_GenRequest | _Call | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = asyncio.Lock()

    # ---------------------------------------------------------------- lifecycle
    @property
    def max_model_len(self) -> int:
        if self._max_model_len is None:
            raise EngineError("transformers engine not started")
        return self._max_model_len

    async def start(self) -> None:
        async with self._start_lock:
            if self._thread is not None:
                return
            # transformers' lazy module is not thread-safe: resolve the names here, on one thread, before the load
            # (engines start concurrently in worker threads).
            import peft  # noqa: F401
            from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache  # noqa: F401

            await asyncio.to_thread(self._load)
            self._thread = threading.Thread(target=self._worker, name=f"tf-engine:{self.model_path}", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, self.dtype))
        except Exception as exc:  # missing dir, bad config, unknown architecture
            raise EngineError(f"transformers engine can't load {self.model_path}: {exc}") from exc
        self.model.to(self.device).eval()
        cfg = self.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or 2048
        self._max_model_len = min(self._max_model_len or limit, limit)
        eos: set[int] = set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in (gen_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, list | tuple):
                eos.update(int(v) for v in value)
        self._eos_ids = eos
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = next(iter(eos), 0)
        log.info("transformers engine loaded %s (max_model_len=%d)", self.model_path, self._max_model_len)

    async def close(self) -> None:
        async with self._start_lock:  # never races a start()
            if self._thread is None:
                return
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None
            self.model = None
            while True:  # work queued behind the stop marker fails now instead of waiting forever
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(job, _GenRequest) and not job.finished:
                    job.finished = True
                    job.emit(EngineError("transformers engine closed"))
                elif isinstance(job, _Call):
                    job.loop.call_soon_threadsafe(_fail, job.future, EngineError("transformers engine closed"))

    # ---------------------------------------------------------------- prompts
    def render_prompt(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, tuple):  # token ids
            return self.tokenizer.decode(list(prompt))
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def tokenize(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, tuple):  # token ids (/v1/completions): exactly these, checked against the vocabulary
            vocab = int(self.model.config.vocab_size)
            bad = [t for t in prompt if not 0 <= int(t) < vocab]
            if bad:
                raise InvalidEngineRequest(
                    f"token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})", param="prompt"
                )
            return [int(t) for t in prompt]
        text = self.render_prompt(prompt)
        return list(self.tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"])

    def count_prompt_tokens(self, prompt: Prompt) -> int | None:
        return len(self.tokenize(prompt))

    # ---------------------------------------------------------------- generation
    async def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        adapter: Adapter | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        if self._thread is None:
            raise EngineError("transformers engine not started")
        ids = self.tokenize(prompt)
        params = params.fitted(len(ids), self.max_model_len)
        self.check_supported(params)
        constraint = None
        if params.structured is not None:
            constraint = await asyncio.to_thread(self._constraint, params.structured)
        if adapter is not None:
            await self._ensure_adapter(adapter)
        loop = asyncio.get_running_loop()
        req = _GenRequest(ids, params, adapter, loop, asyncio.Queue(), constraint=constraint)
        self.in_flight += 1
        self._jobs.put(req)
        try:
            while True:
                item = await req.out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.in_flight -= 1
            req.cancelled.set()  # client gone or consumer closed: the worker drops the row at its next step

    async def next_token_logprobs(self, prompt: str | list[int], *, adapter: Adapter | None = None) -> Any:
        """Full next-token log-distribution (1-D float32 tensor over the vocabulary)."""
        import torch

        ids = prompt if isinstance(prompt, list) else self.tokenize(prompt)
        if adapter is not None:
            await self._ensure_adapter(adapter)

        def run() -> Any:
            with torch.inference_mode():
                x = torch.tensor([ids], device=self.device)
                kwargs = self._adapter_kwargs([adapter])
                logits = self.model(input_ids=x, **kwargs).logits[0, -1].float()
                return torch.log_softmax(logits, dim=-1).cpu()

        return await self._call(run)

    # ---------------------------------------------------------------- adapters
    async def _ensure_adapter(self, adapter: Adapter) -> None:
        with self._adapters_lock:
            if adapter.name in self._adapters:
                return  # the worker re-checks before each batch (it may evict meanwhile)
        if not (Path(adapter.path) / "adapter_config.json").is_file():
            raise EngineError(f"adapter {adapter.name!r}: no PEFT adapter at {adapter.path}")
        problem = adapter_mismatch(adapter.path, self.model_path)
        if problem:
            raise EngineError(f"adapter {adapter.name!r} does not fit {self.model_path}: {problem}")
        await self._call(lambda: self._load_adapter(adapter))

    def _load_adapter(self, adapter: Adapter) -> None:
        from peft import PeftModel

        if adapter.name in self._adapters:
            with self._adapters_lock:
                self._adapters.move_to_end(adapter.name)
            return
        try:
            if not self._peft:
                self.model = PeftModel.from_pretrained(self.model, adapter.path, adapter_name=adapter.name)
                self.model.eval()
                self._peft = True
            else:
                self.model.load_adapter(adapter.path, adapter_name=adapter.name)
        except Exception as exc:
            raise EngineError(
                f"adapter {adapter.name!r} at {adapter.path} does not fit {self.model_path}: {exc}"
            ) from exc
        with self._adapters_lock:
            self._adapters[adapter.name] = adapter.path

    def _evict(self, keep: set[str]) -> None:
        while len(self._adapters) > self.max_adapters:
            victim = next((n for n in self._adapters if n not in keep), None)
            if victim is None:
                return
            self.model.delete_adapter(victim)
            with self._adapters_lock:
                del self._adapters[victim]

    def _adapter_kwargs(self, adapters: list[Adapter | None]) -> dict[str, Any]:
        if not self._peft:
            return {}
        names = [a.name if a is not None else BASE_ADAPTER for a in adapters]
        with self._adapters_lock:
            for n in names:
                if n in self._adapters:
                    self._adapters.move_to_end(n)
        return {"adapter_names": names}

    # ---------------------------------------------------------------- worker thread
    async def _call(self, fn: Callable[[], Any]) -> Any:
        if self._thread is None:
            raise EngineError("transformers engine not started")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._jobs.put(_Call(fn, loop, fut))
        return await fut

    def _worker(self) -> None:
        """Take what is queued (up to a batch), run calls at once, generate the batch; repeat until told to stop."""
        stopping = False
        while not stopping:
            job = self._jobs.get()
            batch: list[_GenRequest] = []
            while job is not None:
                if isinstance(job, _Call):
                    self._run_call(job)
                else:
                    batch.append(job)
                if len(batch) >= self.max_batch_size:
                    break
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
            stopping = job is None
            if batch:
                try:
                    self._run_batch(batch)
                except Exception as exc:  # never kill the worker: fail the batch, keep serving
                    log.exception("transformers engine batch failed")
                    for r in batch:
                        if not r.finished:
                            r.finished = True
                            r.emit(EngineError(f"transformers engine failed: {exc}"))

    def _run_call(self, call: _Call) -> None:
        def settle(result: Any = None, exc: BaseException | None = None) -> None:
            if call.future.done():
                return
            if exc is not None:
                call.future.set_exception(exc)
            else:
                call.future.set_result(result)

        try:
            result = call.fn()
        except BaseException as exc:
            call.loop.call_soon_threadsafe(settle, None, exc)
        else:
            call.loop.call_soon_threadsafe(settle, result, None)

    def _run_batch(self, batch: list[_GenRequest]) -> None:
        import torch

        live = [r for r in batch if not r.cancelled.is_set()]
        if not live:
            return
        for r in live:  # evicted since the event loop saw it loaded (another batch needed the room): load it again
            if r.adapter is not None and r.adapter.name not in self._adapters:
                self._load_adapter(r.adapter)
        if self._peft:
            self._evict({r.adapter.name for r in live if r.adapter is not None})
        pad = self.tokenizer.pad_token_id
        width = max(len(r.prompt_ids) for r in live)
        rows = len(live)
        input_ids = torch.full((rows, width), pad, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for i, r in enumerate(live):
            n = len(r.prompt_ids)
            input_ids[i, width - n :] = torch.tensor(r.prompt_ids)
            mask[i, width - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = [seeded_generator(r.params.seed) for r in live]
        adapter_kwargs = self._adapter_kwargs([r.adapter for r in live])
        from transformers import DynamicCache

        cache = DynamicCache()
        step_ids, step_pos = input_ids, positions
        max_new = max(r.params.max_tokens for r in live)
        with torch.inference_mode():
            for _ in range(max_new):
                out = self.model(
                    input_ids=step_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=step_pos.to(self.device),
                    past_key_values=cache,
                    use_cache=True,
                    **adapter_kwargs,
                )
                cache = out.past_key_values
                if step_ids is input_ids:  # the prefill: prompt logprobs, for rows that asked
                    for i, r in enumerate(live):
                        if r.params.prompt_logprobs is not None:
                            n = len(r.prompt_ids)
                            r.prompt_logprobs = prompt_logprobs(
                                out.logits[i, width - n :].cpu(),
                                r.prompt_ids,
                                r.params.prompt_logprobs,
                                self._token_text,
                            )
                logits = out.logits[:, -1, :].float().cpu()
                next_ids = torch.full((rows,), pad, dtype=torch.long)
                for i, r in enumerate(live):
                    if r.finished:
                        continue
                    if r.cancelled.is_set():
                        r.finished = True
                        continue
                    token = self._pick(r, logits[i], gens[i])
                    next_ids[i] = token
                    self._advance(r, token, logits[i])
                if all(r.finished for r in live):
                    return
                step_ids = next_ids.unsqueeze(1)
                step_pos = step_pos[:, -1:] + 1
                mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)

    def _pick(self, r: _GenRequest, logits: Any, gen: Any) -> int:
        """One row's next token: its logits processed as vLLM does (grammar, bias, penalties, ...), then sampled."""
        p = r.params
        plain = not (p.logit_bias or p.min_tokens or p.frequency_penalty or p.presence_penalty)
        if r.constraint is None and plain and p.repetition_penalty == 1.0:
            return sample(logits, p, gen)
        x = process(
            logits, p, prompt_ids=r.prompt_ids, output_ids=r.all_ids, eos_ids=self._eos_ids, constraint=r.constraint
        )
        token = sample(x, p, gen)
        if r.constraint is not None:
            r.constraint.accept(token)
        return token

    def _constraint(self, structured: StructuredOutput) -> Any:
        if self._compiler is None:
            self._compiler = ConstraintCompiler(self.tokenizer, int(self.model.config.vocab_size), self._eos_ids)
        return self._compiler.constraint(structured)

    def _advance(self, r: _GenRequest, token: int, logits: Any) -> None:
        """Append a token to a row; emit the new text (holding back what may start a stop string)."""
        import torch

        r.all_ids.append(token)
        is_eos = token in self._eos_ids and not r.params.ignore_eos
        lp: list[TokenLogprob] | None = None
        if r.params.logprobs is not None:
            logp = torch.log_softmax(logits, dim=-1)
            k = r.params.logprobs
            top: tuple[tuple[str, float], ...] = ()
            if k > 0:
                vals, idx = torch.topk(logp, k)
                top = tuple((self._token_text(int(t)), float(v)) for v, t in zip(vals, idx, strict=True))
            lp = [TokenLogprob(self._token_text(token), float(logp[token]), top)]
        if not is_eos:
            r.generated.append(token)
        text = self.tokenizer.decode(r.generated, skip_special_tokens=True)
        text, finish, emit_to = sendable(
            text,
            r.params.stop,
            r.sent_chars,
            eos=is_eos,
            full=len(r.generated) >= r.params.max_tokens,
            search_stop=len(r.all_ids) >= r.params.min_tokens,
        )
        delta = text[r.sent_chars : emit_to]
        r.sent_chars = max(r.sent_chars, emit_to)
        if r.params.final_only:  # one chunk at the end: the whole text, every token, every logprob
            if lp:
                r.pending_lps.extend(lp)
            if finish is None:
                return
            lps = r.pending_lps if r.params.logprobs is not None else None
            chunk = Chunk(text=text, token_ids=list(r.all_ids), logprobs=lps)
        else:
            chunk = Chunk(text=delta, token_ids=[token], logprobs=lp)
        if finish is not None:
            r.finished = True
            chunk.finish_reason = finish
            chunk.prompt_tokens = len(r.prompt_ids)
            chunk.completion_tokens = len(r.generated) + (1 if is_eos else 0)
            chunk.prompt_logprobs = r.prompt_logprobs
            r.emit(chunk)
            r.emit(None)
        elif delta or lp:
            r.emit(chunk)

    def _token_text(self, token: int) -> str:
        return (
            self.tokenizer.convert_ids_to_tokens(token)
            if token not in self._eos_ids
            else self.tokenizer.decode([token])
        )

    # ---------------------------------------------------------------- token-level blending (scoring sessions)
    async def open_scoring(self, adapters: Any, *, top_k: int | None = None) -> _ScoringSession:
        """A session whose rows (one per adapter) keep one KV cache across calls: each ``feed`` runs one forward pass
        over only the new tokens (full distributions; ``top_k`` is ignored: this engine always has them all)."""
        if self._thread is None:
            raise EngineError("transformers engine not started")
        for a in adapters:
            if a is not None:
                await self._ensure_adapter(a)
        return _ScoringSession(self, list(adapters))

    def blend_tokenizer(self) -> Any:
        return self.tokenizer

    def blend_eos_ids(self) -> set[int]:
        return set(self._eos_ids)

    def encode_for_blend(self, prompt: Prompt) -> list[int]:
        return self.tokenize(prompt)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class _ScoringSession:
    """Rows advancing over one token sequence with one batched ``DynamicCache`` (see ``ScoringSession``)."""

    def __init__(self, engine: TransformersEngine, adapters: list[Adapter | None]):
        self.engine = engine
        self.adapters = adapters
        self.rows = len(adapters)
        self.length = 0
        self._cache: Any = None

    async def feed(self, token_ids: Any, *, last: int = 1) -> Any:
        import torch

        ids = list(token_ids)
        if not ids:
            raise ValueError("feed needs at least one token")
        last = max(1, min(last, len(ids)))
        eng = self.engine

        def run() -> Any:
            from transformers import DynamicCache

            if self._cache is None:
                self._cache = DynamicCache()
            with torch.inference_mode():
                x = torch.tensor([ids] * self.rows, dtype=torch.long, device=eng.device)
                pos = torch.arange(self.length, self.length + len(ids), device=eng.device).unsqueeze(0)
                out = eng.model(
                    input_ids=x,
                    position_ids=pos.expand(self.rows, -1),
                    past_key_values=self._cache,
                    use_cache=True,
                    **eng._adapter_kwargs(self.adapters),
                )
                self._cache = out.past_key_values
                self.length += len(ids)
                return torch.log_softmax(out.logits[:, -last:, :].float(), dim=-1).cpu()

        return await eng._call(run)

    async def rollback(self, length: int) -> None:
        if length >= self.length:
            return

        def run() -> None:
            if self._cache is not None:
                self._cache.crop(length - self.length)  # negative: drop that many tokens from the end
            self.length = length

        await self.engine._call(run)

    async def close(self) -> None:
        self._cache = None
