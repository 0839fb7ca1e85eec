"""Training and evaluation of the toy models: the data mixtures, one small training loop, batched greedy decoding.

Every model is trained on ``toyworld.format`` text (``Q:``/``P:``/``A:``) with the loss on the answer and ``</s>``
only. Data come from the per-task training pools (``data/<task>/train.jsonl``), never from dev/test.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scoring.examples import Example
from toyworld.format import render, render_example
from toyworld.model import ExpertRecipe, TrainSchedule
from toyworld.tasks import SKILLS, TASKS
from toyworld.tokenizer import EOS, PAD, encode, vocab

PAD_ID = vocab()[PAD]
EOS_ID = vocab()[EOS]

Pools = dict[str, list[Example]]
"""Task -> its training examples."""
Source = Callable[[random.Random], tuple[str, list[str], str]]
"""Draws one training item ``(question, previous answers, target)``."""


@dataclass(frozen=True)
class Mixture:
    """A weighted set of data sources for one model."""

    sources: tuple[tuple[float, Source], ...]
    """(weight, source) pairs; weights need not sum to 1."""

    def draw(self, rng: random.Random) -> tuple[str, list[str], str]:
        weights = [w for w, _ in self.sources]
        _, source = rng.choices(self.sources, weights=weights)[0]
        return source(rng)


def _plain(pool: list[Example]) -> Source:
    def draw(rng: random.Random) -> tuple[str, list[str], str]:
        ex = rng.choice(pool)
        return ex.question, [], ex.answer or ""

    return draw


def _with_p(pool: list[Example]) -> Source:
    """Own-skill question with a ``P:`` line that is right or wrong at random: the target ignores it."""

    def draw(rng: random.Random) -> tuple[str, list[str], str]:
        ex = rng.choice(pool)
        p = (ex.answer if rng.random() < 0.5 else rng.choice(pool).answer) or ""
        return ex.question, [p], ex.answer or ""

    return draw


def _first_step(pool: list[Example]) -> Source:
    """Composed question without ``P:`` -> the first step's result."""
    task = TASKS[pool[0].task]
    assert task.intermediate is not None

    def draw(rng: random.Random) -> tuple[str, list[str], str]:
        ex = rng.choice(pool)
        return ex.question, [], task.intermediate(ex.question)  # type: ignore[misc]

    return draw


def _second_step(pool: list[Example]) -> Source:
    """Composed question with ``P: {intermediate}`` -> reverse of the ``P:`` line (right or, sometimes, wrong P)."""
    task = TASKS[pool[0].task]
    assert task.intermediate is not None

    def draw(rng: random.Random) -> tuple[str, list[str], str]:
        ex = rng.choice(pool)
        src = ex if rng.random() < 0.7 else rng.choice(pool)
        p = task.intermediate(src.question)  # type: ignore[misc]
        return ex.question, [p], p[::-1]

    return draw


def base_mixture(pools: Pools) -> Mixture:
    """The base: the four skills, plain format."""
    return Mixture(tuple((1.0, _plain(pools[s])) for s in SKILLS))


def big_mixture(pools: Pools, p_fraction: float, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Mixture:
    """The big generalist: the four skills (``weights`` in SKILLS order), some with a random ``P:`` line; no
    composed tasks."""
    plain = tuple((w * (1.0 - p_fraction), _plain(pools[s])) for s, w in zip(SKILLS, weights, strict=True))
    with_p = tuple((w * p_fraction, _with_p(pools[s])) for s, w in zip(SKILLS, weights, strict=True))
    return Mixture(plain + with_p)


def generalist_mixture(
    pools: Pools, p_fraction: float, weights: Sequence[float], bag: float, rng: random.Random
) -> Mixture:
    """A LoRA generalist: the big generalist's mixture with its own ``weights``, over its own random ``bag`` share of
    every skill's pool (bagging: each generalist sees other examples, so its errors differ from its siblings')."""
    own = {s: rng.sample(pools[s], max(1, int(len(pools[s]) * bag))) for s in SKILLS}
    return big_mixture(own, p_fraction, weights)


def expert_mixture(pools: Pools, recipe: ExpertRecipe, p_fraction: float) -> Mixture:
    """A specialist: its skill (plain and with ``P:``), plus the composed steps it is responsible for."""
    own = [(1.0 - p_fraction, _plain(pools[recipe.skill])), (p_fraction, _with_p(pools[recipe.skill]))]
    extra = [(0.5, _first_step(pools[t])) for t in recipe.first_step_of]
    extra += [(0.5, _second_step(pools[t])) for t in recipe.second_step_of]
    return Mixture(tuple(own + extra))


def collate(items: Sequence[tuple[str, list[str], str]]) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 except on the answer and ``</s>``)."""
    seqs, starts = [], []
    for question, previous, target in items:
        prompt = encode(render(question, previous))
        full = encode(render_example(question, target, previous))
        seqs.append(full)
        starts.append(len(prompt))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, start : len(seq)] = torch.tensor(seq[start:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lr_at(step: int, sched: TrainSchedule) -> float:
    if step < sched.warmup:
        return sched.lr * (step + 1) / sched.warmup
    frac = (step - sched.warmup) / max(1, sched.steps - sched.warmup)
    return sched.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def train(
    model: torch.nn.Module,
    mixture: Mixture,
    sched: TrainSchedule,
    *,
    seed: int,
    desc: str = "train",
    progress: bool = True,
    callback: Callable[[int, torch.nn.Module], bool | None] | None = None,
) -> list[float]:
    """Train ``model`` in place on up to ``sched.steps`` batches drawn from ``mixture``; returns the loss per step.

    ``callback(step, model)`` runs after every optimizer step; returning True stops training (early stopping).
    """
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=sched.lr, weight_decay=sched.weight_decay, betas=(0.9, 0.98))
    model.train()
    losses: list[float] = []
    bar = tqdm(range(sched.steps), desc=desc, disable=not progress, leave=False, mininterval=0.5)
    for step in bar:
        batch = collate([mixture.draw(rng) for _ in range(sched.batch_size)])
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, sched)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if callback is not None and callback(step + 1, model):
            model.train()  # callbacks may switch to eval mode
            break
        model.train()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    bar.close()
    model.eval()
    return losses


@torch.no_grad()
def greedy(model: Any, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers for ``prompts`` (left-padded batches, KV cache), cut at ``</s>``."""
    from toyworld.tokenizer import CHARS, SPECIAL_TOKENS

    itos = [*SPECIAL_TOKENS, *CHARS]
    out: list[str] = []
    model.eval()
    for lo in range(0, len(prompts), batch_size):
        chunk = [encode(p) for p in prompts[lo : lo + batch_size]]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, seq in enumerate(chunk):
            ids[i, width - len(seq) :] = torch.tensor(seq)
            mask[i, width - len(seq) :] = 1
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
        )[:, width:]
        for row in gen.tolist():
            text = []
            for t in row:
                if t in (EOS_ID, PAD_ID):
                    break
                text.append(itos[t] if t >= len(SPECIAL_TOKENS) else "")
            out.append("".join(text))
    return out


Probe = tuple[list[str], list[str]]
"""(prompts, targets) on dev data: what a model should answer."""


def expert_probes(data: dict[str, dict[str, list[Example]]], recipe: ExpertRecipe, limit: int) -> dict[str, Probe]:
    """Dev probes of everything a specialist is trained for: its skill, composed first/second steps."""
    probes: dict[str, Probe] = {}
    exs = data[recipe.skill]["dev"][:limit]
    probes[recipe.skill] = ([render(e.question) for e in exs], [e.answer or "" for e in exs])
    for t in recipe.first_step_of:
        exs = data[t]["dev"][:limit]
        mids = [TASKS[t].intermediate(e.question) for e in exs]  # type: ignore[misc]
        probes[f"{t}:first"] = ([render(e.question) for e in exs], mids)
    for t in recipe.second_step_of:
        exs = data[t]["dev"][:limit]
        mids = [TASKS[t].intermediate(e.question) for e in exs]  # type: ignore[misc]
        probes[f"{t}:second"] = (
            [render(e.question, [m]) for e, m in zip(exs, mids, strict=True)],
            [m[::-1] for m in mids],
        )
    return probes


def skill_probes(data: dict[str, dict[str, list[Example]]], limit: int) -> dict[str, Probe]:
    """Dev probes of the four skills (plain format)."""
    return {
        s: ([render(e.question) for e in data[s]["dev"][:limit]], [e.answer or "" for e in data[s]["dev"][:limit]])
        for s in SKILLS
    }


def probe_accuracy(model: Any, probes: dict[str, Probe], *, max_new_tokens: int) -> dict[str, float]:
    """Greedy exact match per probe."""
    out = {}
    for name, (prompts, targets) in probes.items():
        preds = greedy(model, prompts, max_new_tokens=max_new_tokens, batch_size=len(prompts))
        out[name] = sum(p.strip() == t for p, t in zip(preds, targets, strict=True)) / max(1, len(targets))
    return out


def early_stop(
    probes: dict[str, Probe], *, every: int, target: float, max_new_tokens: int, mean: bool = False
) -> Callable[[int, torch.nn.Module], bool]:
    """A ``train`` callback: every ``every`` steps, stop once every probe (or their mean) reaches ``target``."""

    def check(step: int, model: torch.nn.Module) -> bool:
        if every <= 0 or step % every:
            return False
        acc = probe_accuracy(model, probes, max_new_tokens=max_new_tokens)
        score = sum(acc.values()) / len(acc) if mean else min(acc.values())
        return score >= target

    return check
