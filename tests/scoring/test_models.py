"""Model-backed utilities: a real reward model, an LLM judge over HTTP."""

from __future__ import annotations

import contextlib
import re

import pytest

from scoring.examples import Example
from scoring.judge import LLMJudge
from scoring.reward import RewardModel

ADD = [Example("add 1 2", "3", "add"), Example("add 2 2", "4", "add")]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A real (randomly initialised) sequence-classification checkpoint on a real tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tests.gateway._fixtures_tiny import _char_tokenizer

    d = tmp_path_factory.mktemp("rm")
    tok = _char_tokenizer()
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForSequenceClassification(cfg).save_pretrained(d)
    return d


async def test_reward_model_scores_pairs(reward_model_dir):
    rm = RewardModel(str(reward_model_dir), batch_size=2)
    exs = [Example("add 1 2", "3"), Example("rev ab", "ba"), Example("add 2 2", "4")]
    r1 = await rm.score(exs, ["3", "ba", "4"])
    r2 = await rm.score(exs, ["3", "ba", "4"])
    r3 = await rm.score(exs, ["nonsense", "zz", "?"])
    # Deterministic to float32 precision: CPU matmul kernels may split work across threads differently between
    # calls, which moves the last bits (CI saw a 1e-6 relative difference), so compare at 1e-5, not bit for bit.
    assert r1.per_example == pytest.approx(r2.per_example, rel=1e-5, abs=1e-6)
    assert r1.per_example != pytest.approx(r3.per_example)  # depends on the output
    assert r1.value == pytest.approx(sum(r1.per_example) / 3)
    await rm.close()


@contextlib.contextmanager
def judge_server():
    """A tiny OpenAI-compatible server whose 'judge' gives 9 when the response contains the reference, else 2."""
    from fastapi import FastAPI

    from tests.helpers import serving

    app = FastAPI()
    seen: list[dict] = []

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        seen.append(body)
        user = body["messages"][-1]["content"]
        ref = re.search(r"Reference answer:\n(.*)\n", user).group(1)
        resp = user.split("Response:\n", 1)[1].split("\n\nScore", 1)[0]
        score = "9" if ref in resp else "2"
        return {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": score}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }  # fmt: skip

    with serving(app, timeout_s=60) as url:
        yield url, seen


async def test_llm_judge_over_an_openai_compatible_endpoint():
    with judge_server() as (url, seen):
        judge = LLMJudge(url, "judge-model", min_score=1, max_score=10)
        r = await judge.score(ADD, ["the sum is 3", "5"])
        assert r.per_example == pytest.approx([8 / 9, 1 / 9])
        n = len(seen)
        await judge.score(ADD, ["the sum is 3", "5"])  # cached
        assert len(seen) == n and seen[0]["temperature"] == 0.0 and seen[0]["model"] == "judge-model"
        await judge.close()
    dead = LLMJudge("http://127.0.0.1:9/v1", "m", timeout_s=2)
    assert (await dead.score(ADD[:1], ["3"])).value == 0.0 and dead.failures == 1
    await dead.close()
