"""A request without ``max_tokens`` fits every node's context, as OpenAI and vLLM do for one model.

Before, an ensemble's nodes got the gateway's default (512) on a 256-token toy context and the request was refused
with ``context_length_exceeded`` while the same request to an expert was served.
"""

from __future__ import annotations

import openai
import pytest

from gateway.engines.base import PromptTooLong, SamplingParams
from tests.helpers import running_gateway
from tests.integration.test_vllm_gateway import _write_spec


def test_fitted_shortens_only_when_the_client_set_no_limit() -> None:
    assert SamplingParams(max_tokens=10).fitted(20, 256).max_tokens == 10
    assert SamplingParams(max_tokens=512, fit_context=True).fitted(20, 256).max_tokens == 236
    with pytest.raises(PromptTooLong):
        SamplingParams(max_tokens=512).fitted(20, 256)
    with pytest.raises(PromptTooLong):  # no room at all is refused either way
        SamplingParams(max_tokens=512, fit_context=True).fitted(256, 256)


def test_ensembles_answer_without_max_tokens(toy_world, tmp_path) -> None:
    spec = _write_spec(toy_world, tmp_path)
    with running_gateway(spec) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        for model in ("toy-adder", "toy-dag", "toy-router"):
            r = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "addrev 23 45"}], temperature=0
            )
            assert r.choices[0].finish_reason == "stop", model
        assert r.choices[0].message.content == "86"
        r = client.completions.create(model="toy-dag", prompt="Q: addrev 23 45\nA: ", temperature=0)
        assert r.choices[0].text == "86"
