"""Reference-free scorers for real traffic, and the scorer that combines them with user feedback.

Real traffic has no reference answers. ``router retrain`` scores logged questions with, in order:
1. a corrected answer sent to ``POST /v1/feedback`` (it becomes the reference: exact match);
2. a feedback score on the logged answer (>= threshold: that answer is right, so it is the reference; below: that
   answer is wrong, and other answers fall to the judge);
3. a reference-free judge: ``LMJudge`` (a causal LM as a reward model: the geometric-mean probability it gives the
   answer, e.g. the toy world's big model) or ``OpenAIJudge`` (an LLM judge over any OpenAI-compatible server, e.g.
   a model the gateway serves, through ``scoring.judge.LLMJudge``).
Questions with none of these are left out (and counted).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scoring.base import Scorer
from scoring.examples import Example
from scoring.judge import LLMJudge
from scoring.reference import ExactMatch


class LMJudge:
    """A causal LM as a reward model: ``exp(mean log p(answer tokens, end-of-answer | question))`` in [0, 1].

    The question is rendered through the model's chat template (a user message), as the gateway would serve it,
    so a model that would answer this way itself scores it high. Memoised per (question, answer).
    """

    needs_reference = False

    def __init__(self, model_path: str, *, max_length: int = 256):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        self.max_length = max_length
        self._memo: dict[tuple[str, str], float] = {}

    def _prompt_ids(self, question: str) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
            )
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(question, add_special_tokens=True)["input_ids"])

    def __call__(self, prediction: str, reference: str | None = None, question: str = "") -> float:
        key = (question, prediction.strip())
        if key in self._memo:
            return self._memo[key]
        torch = self._torch
        prompt = self._prompt_ids(question)
        answer = list(self.tokenizer(prediction.strip(), add_special_tokens=False)["input_ids"])
        if self.tokenizer.eos_token_id is not None:
            answer.append(int(self.tokenizer.eos_token_id))
        ids = (prompt + answer)[-self.max_length :]
        n = min(len(answer), len(ids) - 1)
        with torch.inference_mode():
            logits = self.model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[-n - 1 : -1], dim=-1)
        target = torch.tensor(ids[-n:])
        mean = float(logp.gather(1, target[:, None]).mean())
        value = math.exp(mean)
        self._memo[key] = value
        return value


class OpenAIJudge:
    """An LLM judge over any OpenAI-compatible endpoint (no reference), scores normalised to [0, 1]."""

    needs_reference = False

    def __init__(self, url: str, model: str, *, api_key_env: str | None = None):
        self._judge = LLMJudge(url, model, api_key_env=api_key_env, use_reference=False)

    def __call__(self, prediction: str, reference: str | None = None, question: str = "") -> float:
        ex = Example(id="traffic", question=question, answer="")
        return asyncio.run(self._judge.score_examples([ex], [prediction]))[0]


def build_judge(cfg: Any, toy_big: Callable[[], str] | None = None) -> Scorer | None:
    """The reference-free scorer ``RetrainConfig`` names (None for ``judge: none``)."""
    if cfg.judge == "none":
        return None
    if cfg.judge == "reward_model":
        model = cfg.judge_model
        if model in (None, "@toy-big"):
            if toy_big is None:
                raise ValueError("retrain.judge_model: give a local causal-LM checkpoint")
            model = toy_big()
        return LMJudge(model)
    if not cfg.judge_url or not cfg.judge_model:
        raise ValueError("retrain.judge llm_judge needs judge_url and judge_model")
    return OpenAIJudge(cfg.judge_url, cfg.judge_model)


@dataclass
class TrafficScorer:
    """Quality of an answer to a logged question: reference (from a correction or a good score) first, then
    answers feedback marked wrong, then the judge at ``threshold`` (0/1, the routing MDP's success scale)."""

    judge: Scorer | None = None
    threshold: float = 0.5
    wrong: set[tuple[str, str]] = field(default_factory=set)
    """(question, answer) pairs a user scored below the threshold."""
    exact: ExactMatch = field(default_factory=ExactMatch)
    needs_reference: bool = False

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float:
        if reference is not None:
            return self.exact(prediction, reference, question)
        if (question, prediction.strip()) in self.wrong or self.judge is None:
            return 0.0
        return 1.0 if self.judge(prediction, None, question) >= self.threshold else 0.0
