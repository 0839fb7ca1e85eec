"""The built toy world (session fixture ``toy_world``, cached by content hash) and the build's determinism."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from toyworld.build import CHAINS, EXPERTS, GENERALISTS, ToyWorld, build_toy_world, weights_digest
from toyworld.format import KTP_TEMPLATE, render
from toyworld.model import EXPERT_NAMES, ToyConfig
from toyworld.tasks import COMPOSED, SKILLS, TASKS, payload

MARGIN = 0.30
"""A specialist beats the base on its own skill by at least this much (test exact match)."""


def _skills_mean(acc: dict[str, float]) -> float:
    return sum(acc[t] for t in SKILLS) / len(SKILLS)


def test_layout(toy_world: ToyWorld) -> None:
    w = toy_world
    assert w.spec_path == w.root / "spec.yaml" and w.spec_path.is_file()
    for d in (w.base_dir, w.big_dir):
        for name in (
            "config.json",
            "model.safetensors",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ):
            assert (d / name).is_file(), d / name
    assert set(w.expert_dirs) == {"adder", "reverser", "sorter", "counter"} == set(EXPERTS)
    assert set(w.generalist_dirs) == {"gen-a", "gen-b", "gen-c"} == set(GENERALISTS)
    for d in (*w.expert_dirs.values(), *w.generalist_dirs.values()):
        assert (d / "adapter_config.json").is_file() and (d / "adapter_model.safetensors").is_file()
    assert set(w.accuracy) == {"base", "big", *EXPERTS, *GENERALISTS}
    assert ToyWorld.load(w.root) == w


def test_spec_loads(toy_world: ToyWorld) -> None:
    from gateway.spec import load_spec

    spec = load_spec(toy_world.spec_path)
    assert set(spec.experts) == {"toy-base", "toy-big", *(f"toy-{n}" for n in (*EXPERTS, *GENERALISTS))}
    assert Path(spec.experts["toy-adder"].model) == toy_world.base_dir
    assert Path(spec.experts["toy-adder"].adapter or "") == toy_world.expert_dirs["adder"]
    assert Path(spec.experts["toy-gen-b"].adapter or "") == toy_world.generalist_dirs["gen-b"]
    assert spec.experts["toy-big"].cost > spec.experts["toy-base"].cost


def test_checkpoints(toy_world: ToyWorld) -> None:
    cfg = json.loads((toy_world.base_dir / "config.json").read_text())
    big = json.loads((toy_world.big_dir / "config.json").read_text())
    for c in (cfg, big):
        assert c["architectures"] == ["LlamaForCausalLM"]
        assert c["hidden_size"] // c["num_attention_heads"] == 64 == c.get("head_dim", 64)
    assert big["hidden_size"] * big["num_hidden_layers"] > cfg["hidden_size"] * cfg["num_hidden_layers"]
    gen = json.loads((toy_world.base_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
    for d in (*toy_world.expert_dirs.values(), *toy_world.generalist_dirs.values()):
        ad = json.loads((d / "adapter_config.json").read_text())
        assert ad["peft_type"] == "LORA" and ad["r"] <= 16
        assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= set(ad["target_modules"])


def test_datasets(toy_world: ToyWorld) -> None:
    for task in TASKS:
        train, dev, test = (toy_world.examples(task, s) for s in ("train", "dev", "test"))
        assert len(dev) == 200 and len(test) == 200 and len(train) >= 1000
        assert all(e.task == task for e in (*train, *dev, *test))
        qs = {s: {e.question for e in exs} for s, exs in (("train", train), ("dev", dev), ("test", test))}
        assert not qs["train"] & qs["dev"] and not qs["train"] & qs["test"] and not qs["dev"] & qs["test"]
    # across tasks: no held-out operand pair or string in any training pool (``toyworld.tasks.payload``)
    held = {payload(e.question) for t in TASKS for s in ("dev", "test") for e in toy_world.examples(t, s)}
    assert not held & {payload(e.question) for t in TASKS for e in toy_world.examples(t, "train")}


def test_specialisation(toy_world: ToyWorld) -> None:
    acc = toy_world.accuracy
    for skill, name in EXPERT_NAMES.items():
        assert acc[name][skill] >= acc["base"][skill] + MARGIN, (name, skill, acc[name][skill], acc["base"][skill])
    assert 0.0 < _skills_mean(acc["base"]) < 0.7, "the base should be weak but not useless"
    assert _skills_mean(acc["big"]) > _skills_mean(acc["base"]) + 0.1
    assert all(_skills_mean(acc["big"]) > _skills_mean(acc[n]) for n in EXPERTS), "big: best single expert on skills"


def test_counting_has_a_cheap_route_and_a_dearer_better_one(toy_world: ToyWorld) -> None:
    """The cost-quality family (issue 11): the counter (cost 1) counts well, big (cost 4) better, so whether big is
    worth its cost for a counting question depends on lambda. Every other skill has a specialist that beats big."""
    from gateway.spec import load_spec

    acc, spec = toy_world.accuracy, load_spec(toy_world.spec_path)
    assert spec.experts["toy-big"].cost > spec.experts["toy-counter"].cost
    assert acc["counter"]["count"] >= 0.5 and acc["big"]["count"] >= acc["counter"]["count"] + 0.05, acc
    for skill in ("add", "rev", "sort"):
        assert acc[EXPERT_NAMES[skill]][skill] > acc["big"][skill], (skill, acc)


def test_generalists_lean_to_different_skills(toy_world: ToyWorld) -> None:
    """The generalists leaning to reversal and sorting are the best of the three at it, and none is good at
    everything: their errors differ, which is what a token-level blend of them needs (issue 7). Addition stays at its
    floor for all three (3.5-11% on test, by machine: 11.0 / 3.5 / 6.5 on the machine of 2026-12-06, 5.0 / 6.0 / 6.0
    on that of 2026-12-07), so gen-a's lean to it is no measurable lead and is checked only as that floor."""
    acc = toy_world.accuracy
    for name, skill in zip(GENERALISTS[1:], ("rev", "sort"), strict=True):
        others = [g for g in GENERALISTS if g != name]
        assert all(acc[name][skill] > acc[g][skill] for g in others), (name, skill, {g: acc[g] for g in GENERALISTS})
    assert all(acc[g]["add"] < 0.15 for g in GENERALISTS), {g: acc[g]["add"] for g in GENERALISTS}
    for name in GENERALISTS:
        assert _skills_mean(acc["base"]) + 0.1 < _skills_mean(acc[name]) < 0.8, (name, acc[name])


INDEPENDENT_FLOOR = {"add": 0.8, "rev": 0.7, "sort": 0.7, "count": 0.6}
"""Exact match each specialist must reach on 50 held-out test questions, generated here (not read from the build's
report); the build reports about 92 / 83 / 90 / 72 %."""


async def test_specialists_answer_held_out_questions(toy_world: ToyWorld) -> None:
    """Real generation through the serving engine (chat template, base + LoRA, greedy), scored against the data."""
    from gateway.engines import create_engine
    from gateway.engines.base import Adapter, SamplingParams

    engine = create_engine("transformers", str(toy_world.base_dir))
    await engine.start()
    try:
        greedy = SamplingParams(max_tokens=12, temperature=0.0)
        for skill, name in EXPERT_NAMES.items():
            exs = toy_world.examples(skill, "test")[:50]
            prompts = [[{"role": "user", "content": e.question}] for e in exs]
            ad = Adapter(name=name, path=str(toy_world.expert_dirs[name]))
            tuned = await engine.complete_batch(prompts, greedy, adapters=[ad] * len(prompts))
            acc = sum(o.text.strip() == e.answer for o, e in zip(tuned, exs, strict=True)) / len(exs)
            assert acc >= INDEPENDENT_FLOOR[skill], (name, skill, acc)
    finally:
        await engine.close()


def test_composition_needs_two_experts(toy_world: ToyWorld) -> None:
    acc, chains = toy_world.accuracy, toy_world.chain_accuracy
    assert set(chains) == set(COMPOSED) == set(CHAINS)
    for task in COMPOSED:
        best_single = max(a[task] for a in acc.values())
        assert chains[task] >= best_single + MARGIN, (task, chains[task], best_single)


def test_chat_template_path_generates(toy_world: ToyWorld) -> None:
    """Served path: AutoTokenizer chat template -> base + LoRA (PEFT) -> greedy -> decode, as the gateway does."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(toy_world.base_dir))
    base = AutoModelForCausalLM.from_pretrained(str(toy_world.base_dir))
    model = PeftModel.from_pretrained(base, str(toy_world.expert_dirs["reverser"])).eval()
    exs = toy_world.examples("addrev", "dev")[:8]
    contents = [KTP_TEMPLATE.format(question=e.question, previous=e.answer[::-1]) for e in exs]
    right = 0
    for ex, content in zip(exs, contents, strict=True):
        text = tok.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        assert text == render(ex.question, [ex.answer[::-1]])
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=10, do_sample=False)
        right += tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True) == ex.answer
    assert right >= 6


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[ToyWorld, ToyWorld]:
    cfg = ToyConfig.tiny()
    a = build_toy_world(tmp_path_factory.mktemp("a") / "toy", config=cfg, progress=False)
    b = build_toy_world(tmp_path_factory.mktemp("b") / "toy", config=cfg, progress=False)
    return a, b


def test_build_is_deterministic(tiny_builds: tuple[ToyWorld, ToyWorld]) -> None:
    a, b = tiny_builds
    assert weights_digest(a.root) == weights_digest(b.root)
    assert a.accuracy == b.accuracy
    for task in TASKS:
        assert (a.data_dir / task / "test.jsonl").read_bytes() == (b.data_dir / task / "test.jsonl").read_bytes()


def test_finished_build_is_reused(tiny_builds: tuple[ToyWorld, ToyWorld]) -> None:
    a, _ = tiny_builds
    stamp = (a.root / "toyworld.json").stat().st_mtime_ns
    again = build_toy_world(a.root, config=ToyConfig.tiny(), progress=False)
    assert again == a and (a.root / "toyworld.json").stat().st_mtime_ns == stamp
    assert not list(a.root.parent.glob(".*tmp-*"))


def test_a_phrased_build_trains_and_tests_on_its_phrasings(tmp_path: Path) -> None:
    """The build path with phrasings on (tiny shapes, seconds): training and dev questions come in the training
    phrasings only, test in all of them, composed training targets (the ``P:`` steps) are read from phrased
    questions, and the finished world serves a spec like the canonical one."""
    from gateway.spec import load_spec
    from toyworld.tasks import phrasing_of

    config = replace(ToyConfig.tiny(), phrasings=ToyConfig.phrased().phrasings)
    world = build_toy_world(tmp_path / "toy", config=config, progress=False)
    for task in TASKS:
        used = {
            split: {phrasing_of(e.question) for e in world.examples(task, split)} for split in ("train", "dev", "test")
        }
        assert used == {"train": {0, 1, 2}, "dev": {0, 1, 2}, "test": {0, 1, 2, 3, 4}}, task
    assert set(world.accuracy) == {"base", "adder", "reverser", "sorter", "counter", "gen-a", "gen-b", "gen-c", "big"}
    assert load_spec(world.spec_path).experts.keys() >= {"toy-adder", "toy-big"}
