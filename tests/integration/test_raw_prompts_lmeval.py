"""A real evaluation harness against the served toy world: lm-eval's ``local-completions`` (raw prompts, the toy
format ``"Q: {question}\\nA: "``) and ``local-chat-completions`` (the bare question as a user message) on held-out test
questions of the composed tasks. Every ensemble must score at least its best member through ``/v1/completions``,
and as well as through chat.

Slow (a few minutes on two CPU cores); needs ``lm-eval`` (``pip install lm-eval``), run offline against loopback only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import running_gateway
from tests.integration.test_raw_prompts import ENSEMBLES, FIRST, ensemble_spec

pytestmark = pytest.mark.slow
LIMIT = 40  # held-out test questions per task

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: {doc_to_text}
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "</s>"]
  max_gen_toks: 12
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def write_tasks(toy_world: Any, root: Path) -> None:
    for task in ENSEMBLES:
        data = Path(toy_world.data_dir) / task / "test.jsonl"
        for kind, doc in (("raw", json.dumps("Q: {{question}}\nA: ")), ("chat", json.dumps("{{question}}"))):
            (root / f"toy_{task}_{kind}.yaml").write_text(
                TASK.format(name=f"toy_{task}_{kind}", data=data, doc_to_text=doc)
            )


def score(base_url: str, tasks_dir: Path, model: str, task: str, *, chat: bool) -> float:
    import lm_eval
    from lm_eval.tasks import TaskManager

    kind = "chat" if chat else "raw"
    endpoint = "chat/completions" if chat else "completions"
    out = lm_eval.simple_evaluate(
        model="local-chat-completions" if chat else "local-completions",
        model_args=(
            f"model={model},base_url={base_url}/{endpoint},tokenized_requests=False,tokenizer_backend=None,"
            "num_concurrent=4,max_retries=1"
        ),
        tasks=[f"toy_{task}_{kind}"],
        task_manager=TaskManager(include_path=str(tasks_dir)),
        limit=LIMIT,
        apply_chat_template=chat,
        log_samples=False,
    )
    return float(out["results"][f"toy_{task}_{kind}"]["exact_match,none"])


@pytest.fixture(scope="module")
def served(toy_world: Any, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("lm_eval", reason="needs lm-eval (pip install lm-eval)")
    tmp = tmp_path_factory.mktemp("lmeval")
    (tmp / "tasks").mkdir()
    write_tasks(toy_world, tmp / "tasks")
    with running_gateway(ensemble_spec(toy_world, tmp)) as url:
        yield url, tmp / "tasks"


@pytest.mark.parametrize("task", sorted(ENSEMBLES))
def test_lm_eval_ensembles_on_raw_prompts(served: tuple[str, Path], task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    url, tasks_dir = served
    members = {m: score(url, tasks_dir, m, task, chat=False) for m in (FIRST[task], "toy-reverser", "toy-big")}
    for model in ENSEMBLES[task]:
        raw = score(url, tasks_dir, model, task, chat=False)
        chat = score(url, tasks_dir, model, task, chat=True)
        print(f"{task} {model}: raw {raw:.3f} chat {chat:.3f} members {members}")
        assert raw >= max(members.values()), (model, raw, members)
        assert raw >= chat - 1e-9, (model, raw, chat)
        assert raw >= 0.5, (model, raw)
