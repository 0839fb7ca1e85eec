"""Examples and the one JSONL reader: defaults, extra keys, limits, and errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scoring.examples import Example, read_jsonl


def write(path: Path, *rows: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_an_example_is_a_frozen_value() -> None:
    ex = Example(question="add 1 2", answer="3", task="add")
    assert (ex.question, ex.answer, ex.task, ex.choices, ex.id) == ("add 1 2", "3", "add", (), "")
    assert Example("q") == Example("q", None) and hash(Example("q", meta={"x": 1})) == hash(Example("q"))
    with pytest.raises(AttributeError):
        ex.answer = "4"  # type: ignore[misc]


def test_rows_become_examples(tmp_path: Path) -> None:
    path = write(
        tmp_path / "add.jsonl",
        {"question": "add 1 2", "answer": "3"},
        "",
        {"question": "which?", "answer": 1, "task": "mc", "choices": ["x", "y"], "id": "q7", "split": "dev"},
        {"question": "logged"},
    )
    a, b, c = read_jsonl(path, "add")
    assert a == Example("add 1 2", "3", "add", id="add-0")
    assert b == Example("which?", "1", "mc", ("x", "y"), "q7") and b.meta == {"split": "dev"}
    assert c.answer is None and c.id == "add-3"  # ids count lines, blank ones included
    assert read_jsonl(path, "add", limit=2) == [a, b]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["q", "a"]', "not a JSON object"),
        ('{"answer": "a"}', "no 'question'"),
        ('{"question": "q", "answer": "a", "choices": "xy"}', "'choices' must be a list"),
        ('{"question": "q"}', "no 'answer'"),
    ],
)
def test_a_bad_row_names_its_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path / "bad.jsonl", {"question": "ok", "answer": "1"}, line)
    with pytest.raises(ValueError, match=f"bad.jsonl:2: {problem}"):
        read_jsonl(path, require_answer=True)
