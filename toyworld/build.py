"""Build (or reuse) the toy world: datasets, a tiny Llama base, four LoRA specialists, three LoRA generalists, a
bigger generalist, the accuracy matrix and a ready-to-serve ``spec.yaml``.

The build is cached under ``$SWARMGATE_CACHE/toy/<hash>`` (``SWARMGATE_CACHE`` defaults to ``~/.cache/swarmgate``),
where ``<hash>`` covers the toyworld source files, the config and the library versions: editing the code rebuilds.
It is written into a temporary directory and renamed into place atomically, under a file lock, so concurrent
callers wait for one build and then all reuse it.

Layout of a build root (every path in ``spec.yaml`` is relative to it)::

    spec.yaml  accuracy.json  toyworld.json
    base/             LlamaForCausalLM (float32 safetensors) + tokenizer files + generation_config.json
    big/              the larger full-weight generalist, same layout
    experts/<name>/   PEFT LoRA adapters on base/: adder, reverser, sorter, counter, gen-a, gen-b, gen-c
    data/<task>/{train,dev,test}.jsonl
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scoring.examples import Example, read_jsonl
from scoring.text import exact_match
from toyworld.format import render
from toyworld.model import EXPERT_NAMES, ToyConfig
from toyworld.tasks import COMPOSED, PHRASINGS, SKILLS, TASKS, payload, phrase

SPLITS = ("train", "dev", "test")
EXPERTS = tuple(EXPERT_NAMES.values())
"""The LoRA specialists: adder, reverser, sorter, counter."""
GENERALISTS = ("gen-a", "gen-b", "gen-c")
"""The LoRA generalists (``ToyConfig.generalists``): all four skills, each leaning towards another, on its own data."""
CHAINS = {"addrev": ("adder", "reverser"), "sortrev": ("sorter", "reverser")}
"""Composed task -> the two specialists that solve it in sequence (first answers, second gets it as ``P:``)."""
DESCRIPTIONS = {
    "base": "toy base: tiny Llama (char-level), briefly trained on add/rev/sort/count; weak at everything",
    "adder": "toy LoRA specialist: two-digit addition; answers the first step of addrev",
    "reverser": "toy LoRA specialist: string reversal; reverses a previous answer (P:) for addrev/sortrev",
    "sorter": "toy LoRA specialist: letter sorting; answers the first step of sortrev",
    "counter": "toy LoRA specialist: letter counting",
    "big": "toy generalist: larger full-weight Llama trained on all four skills, then mostly on counting; the best counter (toy-counter is the cheap one), costs 4x",
    "gen-a": "toy LoRA generalist: all four skills, leaning to addition; imperfect, its errors differ from gen-b/c's",
    "gen-b": "toy LoRA generalist: all four skills, leaning to reversal; imperfect, its errors differ from gen-a/c's",
    "gen-c": "toy LoRA generalist: all four skills, leaning to sorting; imperfect, its errors differ from gen-a/b's",
}
BIG_COST = 4.0


def cache_root() -> Path:
    """``$SWARMGATE_CACHE`` or ``~/.cache/swarmgate``."""
    return Path(os.environ.get("SWARMGATE_CACHE") or Path.home() / ".cache" / "swarmgate").expanduser()


def build_hash(config: ToyConfig | None = None) -> str:
    """Content hash of the toyworld sources (and ``scoring``'s examples and exact match), the config and the library versions that shape the weights."""
    import peft
    import torch
    import transformers

    h = hashlib.sha256()
    src = Path(__file__).resolve().parent
    # the toy world's own code, and the shared examples and exact match its data and accuracy table go through
    shared = [src.parent / "scoring" / name for name in ("examples.py", "text.py")]
    for path in [*sorted(src.glob("*.py")), *shared]:
        # the syntax tree, not the bytes: reformatting or editing comments does not rebuild
        tree = ast.dump(ast.parse(path.read_text()), include_attributes=False)
        h.update(path.name.encode() + b"\0" + tree.encode() + b"\0")
    h.update(json.dumps((config or ToyConfig()).to_dict(), sort_keys=True).encode())
    h.update(f"torch={torch.__version__};transformers={transformers.__version__};peft={peft.__version__}".encode())
    return h.hexdigest()[:16]


def default_toy_dir(config: ToyConfig | None = None) -> Path:
    """Where ``build_toy_world()`` puts (and finds) the default toy world."""
    return cache_root() / "toy" / build_hash(config)


@dataclass(frozen=True)
class ToyWorld:
    """A finished toy world on disk."""

    root: Path
    """Build root; ``spec.yaml`` paths are relative to it."""
    spec_path: Path
    """``root/spec.yaml`` (loadable by ``gateway.spec.load_spec``)."""
    base_dir: Path
    """The base checkpoint directory (model + tokenizer)."""
    big_dir: Path
    """The big generalist's checkpoint directory (model + tokenizer)."""
    expert_dirs: dict[str, Path]
    """Specialist name (adder, reverser, sorter, counter) -> its LoRA adapter directory."""
    generalist_dirs: dict[str, Path]
    """LoRA generalist name (gen-a, gen-b, gen-c) -> its adapter directory (on ``base_dir``)."""
    data_dir: Path
    """``data/<task>/{train,dev,test}.jsonl``."""
    accuracy: dict[str, dict[str, float]]
    """Model (base, adder, reverser, sorter, counter, gen-a, gen-b, gen-c, big) -> task -> test exact match."""
    chain_accuracy: dict[str, float] = field(default_factory=dict)
    """Composed task -> test exact match of its two-specialist chain (``CHAINS``), e.g. adder then reverser."""

    @classmethod
    def load(cls, root: str | Path) -> ToyWorld:
        """Open a finished build (raises FileNotFoundError when ``root`` holds none)."""
        root = Path(root)
        acc = json.loads((root / "accuracy.json").read_text())
        return cls(
            root=root,
            spec_path=root / "spec.yaml",
            base_dir=root / "base",
            big_dir=root / "big",
            expert_dirs={name: root / "experts" / name for name in EXPERTS},
            generalist_dirs={name: root / "experts" / name for name in GENERALISTS},
            data_dir=root / "data",
            accuracy=acc["experts"],
            chain_accuracy=acc.get("chains", {}),
        )

    def examples(self, task: str, split: str = "test") -> list[Example]:
        """The examples of one task split (``train``, ``dev`` or ``test``)."""
        return read_jsonl(self.data_dir / task / f"{split}.jsonl", task)


def _write_jsonl(path: Path, examples: list[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for ex in examples:
            f.write(json.dumps({"question": ex.question, "answer": ex.answer, "task": ex.task}) + "\n")


def make_datasets(config: ToyConfig) -> dict[str, dict[str, list[Example]]]:
    """Task -> split -> examples. First every task's test then dev (unique payloads across all tasks), then the
    training pools, which avoid every held-out *payload* (``toyworld.tasks.payload``: the operand pair or the string),
    not only every held-out question: ``add 12 34`` never trains the adder when ``addrev 34 12`` is a test question.
    Last, questions are phrased (``ToyConfig.phrasings``): test cycles through all of its phrasings, dev through the
    training ones, training draws one at random (its own random stream: the canonical world's draws do not move)."""
    n_train, n_test = config.phrasings
    if not 1 <= n_train <= n_test <= min(len(p) for p in PHRASINGS.values()):
        raise ValueError(
            f"ToyConfig.phrasings: need 1 <= training phrasings <= test phrasings <= "
            f"{min(len(p) for p in PHRASINGS.values())}, got {config.phrasings}"
        )
    rngs = {name: random.Random(f"toyworld:{config.seed}:{name}") for name in TASKS}
    held: set[str] = set()
    out: dict[str, dict[str, list[Example]]] = {name: {} for name in TASKS}
    for split, size in (("test", config.test_size), ("dev", config.dev_size)):
        for name, task in TASKS.items():
            chosen: list[Example] = []
            for _ in range(size * 100):
                ex = task.sample(rngs[name])
                if payload(ex.question) not in held:
                    held.add(payload(ex.question))
                    chosen.append(ex)
                    if len(chosen) == size:
                        break
            if len(chosen) < size:
                raise ValueError(f"task {name!r} has too few distinct questions for {size} {split} examples")
            out[name][split] = chosen
    for name, task in TASKS.items():
        pool: list[Example] = []
        for _ in range(config.train_pool * 100):
            ex = task.sample(rngs[name])
            if payload(ex.question) not in held:
                pool.append(ex)
                if len(pool) == config.train_pool:
                    break
        if len(pool) < config.train_pool:
            raise ValueError(f"task {name!r}: no training questions left after dev/test")
        out[name]["train"] = pool
    for name, splits in out.items():
        pick = random.Random(f"toyworld:{config.seed}:{name}:phrasing")
        indices = {
            "test": [i % n_test for i in range(len(splits["test"]))],
            "dev": [i % n_train for i in range(len(splits["dev"]))],
            "train": [pick.randrange(n_train) for _ in splits["train"]],
        }
        for split, exs in splits.items():
            splits[split] = [
                replace(ex, question=phrase(ex.question, k)) for ex, k in zip(exs, indices[split], strict=True)
            ]
    return {name: {s: splits[s] for s in SPLITS} for name, splits in out.items()}


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _setup(config: ToyConfig) -> None:
    """Per-process setup: fixed thread count (part of determinism), quiet transformers."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(config.threads)
    warnings.filterwarnings("ignore", message="Could not find a config file")  # PEFT: base saved, not yet renamed
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _worker_init() -> None:
    """Worker processes exit when the building process dies (a killed build leaves no orphans training on)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _load_data(out: Path) -> dict[str, dict[str, list[Example]]]:
    return {t: {s: read_jsonl(out / "data" / t / f"{s}.jsonl", t) for s in SPLITS} for t in TASKS}


def _save_full(model, directory: Path) -> None:
    """Model (float32 safetensors) + generation config + tokenizer files: loadable by HF and vLLM as is."""
    from transformers import GenerationConfig

    from toyworld.tokenizer import save_tokenizer
    from toyworld.train import EOS_ID, PAD_ID

    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.save_pretrained(str(directory))
    save_tokenizer(directory)


def _evaluate(model, data, config: ToyConfig) -> dict[str, float]:
    from toyworld.train import greedy

    acc = {}
    for task in [*SKILLS, *COMPOSED]:
        exs = data[task]["test"]
        prompts = [render(e.question) for e in exs]
        preds = greedy(model, prompts, max_new_tokens=config.max_new_tokens, batch_size=config.eval_batch)
        acc[task] = sum(exact_match(p, e.answer) for p, e in zip(preds, exs, strict=True)) / max(1, len(exs))
    return acc


def _load_expert(root: Path, name: str):
    """Base + the named adapter, merged (for evaluation)."""
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(str(root / "base"), dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(root / "experts" / name)).merge_and_unload()


def _evaluate_chains(out: Path, data, config: ToyConfig) -> dict[str, float]:
    from toyworld.train import greedy

    models = {name: _load_expert(out, name) for name in sorted({n for pair in CHAINS.values() for n in pair})}
    kw = {"max_new_tokens": config.max_new_tokens, "batch_size": config.eval_batch}
    result = {}
    for task, (first, second) in CHAINS.items():
        exs = data[task]["test"]
        mid = greedy(models[first], [render(e.question) for e in exs], **kw)
        final = greedy(models[second], [render(e.question, [m]) for e, m in zip(exs, mid, strict=True)], **kw)
        result[task] = sum(exact_match(p, e.answer) for p, e in zip(final, exs, strict=True)) / max(1, len(exs))
    return result


# The build's jobs. Each runs in a worker process (or inline), seeds itself and reads the data from ``out``, so
# the weights do not depend on scheduling. Each returns (model name, test accuracy per task).


def _job_base(out: str, config: ToyConfig, progress: bool) -> tuple[str, dict[str, float]]:
    from transformers import LlamaForCausalLM

    from toyworld.train import base_mixture, train

    _setup(config)
    data = _load_data(Path(out))
    _seed_everything(config.seed)
    model = LlamaForCausalLM(config.base.to_hf())
    pools = {t: d["train"] for t, d in data.items()}
    train(model, base_mixture(pools), config.base_train, seed=config.seed + 1, desc="base", progress=progress)
    _save_full(model, Path(out) / "base")
    return "base", _evaluate(model, data, config)


def _job_expert(out: str, final: str, config: ToyConfig, index: int, progress: bool) -> tuple[str, dict[str, float]]:
    import torch
    from transformers import LlamaForCausalLM

    from toyworld.train import early_stop, expert_mixture, expert_probes, train

    _setup(config)
    data = _load_data(Path(out))
    recipe = config.experts[index]
    name = EXPERT_NAMES[recipe.skill]
    _seed_everything(config.seed + 100 + index)
    base = LlamaForCausalLM.from_pretrained(str(Path(out) / "base"), dtype=torch.float32)
    model: Any = _lora_model(base, config.lora)
    pools = {t: d["train"] for t, d in data.items()}
    mixture = expert_mixture(pools, recipe, config.p_fraction)
    stop = early_stop(
        expert_probes(data, recipe, config.probe_size),
        every=config.stop_every,
        target=config.stop_target,
        max_new_tokens=config.max_new_tokens,
    )
    sched = replace(
        config.expert_train,
        lr=config.expert_train.lr if recipe.lr is None else recipe.lr,
        steps=config.expert_train.steps if recipe.steps is None else recipe.steps,
    )
    train(model, mixture, sched, seed=config.seed + 200 + index, desc=name, progress=progress, callback=stop)
    model.peft_config["default"].base_model_name_or_path = str(Path(final) / "base")
    model.save_pretrained(str(Path(out) / "experts" / name))
    return name, _evaluate(model.merge_and_unload(), data, config)


def _lora_model(base: Any, shape: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        r=shape.r,
        lora_alpha=shape.alpha,
        target_modules=list(shape.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, peft_cfg)


def _job_generalist(
    out: str, final: str, config: ToyConfig, index: int, progress: bool
) -> tuple[str, dict[str, float]]:
    import torch
    from transformers import LlamaForCausalLM

    from toyworld.train import generalist_mixture, train

    _setup(config)
    data = _load_data(Path(out))
    name = GENERALISTS[index]
    _seed_everything(config.seed + 400 + index)
    base = LlamaForCausalLM.from_pretrained(str(Path(out) / "base"), dtype=torch.float32)
    model: Any = _lora_model(base, config.generalist_lora)
    pools = {t: d["train"] for t, d in data.items()}
    bag = random.Random(f"toyworld:{config.seed}:{name}")
    mixture = generalist_mixture(pools, config.p_fraction, config.generalists[index], config.generalist_bag, bag)
    train(model, mixture, config.generalist_train, seed=config.seed + 500 + index, desc=name, progress=progress)
    model.peft_config["default"].base_model_name_or_path = str(Path(final) / "base")
    model.save_pretrained(str(Path(out) / "experts" / name))
    return name, _evaluate(model.merge_and_unload(), data, config)


def _job_big(out: str, config: ToyConfig, progress: bool) -> tuple[str, dict[str, float]]:
    from transformers import LlamaForCausalLM

    from toyworld.train import big_mixture, early_stop, skill_probes, train

    _setup(config)
    data = _load_data(Path(out))
    _seed_everything(config.seed + 300)
    model = LlamaForCausalLM(config.big.to_hf())
    pools = {t: d["train"] for t, d in data.items()}
    stop = early_stop(
        skill_probes(data, config.probe_size),
        every=config.stop_every,
        target=config.stop_target,
        max_new_tokens=config.max_new_tokens,
        mean=True,
    )
    train(
        model,
        big_mixture(pools, config.p_fraction, config.big_weights),
        config.big_train,
        seed=config.seed + 301,
        desc="big",
        progress=progress,
        callback=stop,
    )
    train(  # second phase, no early stop: count-heavy, so that counting has a cheap route and a dearer, better one
        model,
        big_mixture(pools, config.p_fraction, config.big_count_weights),
        config.big_count_train,
        seed=config.seed + 302,
        desc="big (counting)",
        progress=progress,
    )
    _save_full(model, Path(out) / "big")
    return "big", _evaluate(model, data, config)


def _spec_yaml() -> str:
    def entry(key: str, fields: str) -> str:
        return f"  toy-{key}: {{engine: auto, {fields}, description: {json.dumps(DESCRIPTIONS[key])}}}"

    lines = ["# The toy world's experts (paths relative to this file). Generated by toyworld.build.", "experts:"]
    lines.append(entry("base", "model: base, cost: 1.0"))
    lines += [entry(name, f"model: base, adapter: experts/{name}, cost: 1.0") for name in (*EXPERTS, *GENERALISTS)]
    lines.append(entry("big", f"model: big, cost: {BIG_COST}"))
    return "\n".join(lines) + "\n"


def format_matrix(accuracy: dict[str, dict[str, float]], chains: dict[str, float] | None = None) -> str:
    """The accuracy matrix (model x task, test exact match in %) as a text table."""
    tasks = [*SKILLS, *COMPOSED]
    head = f"{'model':<18}" + "".join(f"{t:>9}" for t in tasks) + f"{'skills':>9}"
    rows = [head, "-" * len(head)]
    for model, acc in accuracy.items():
        skills = sum(acc[t] for t in SKILLS) / len(SKILLS)
        rows.append(f"{model:<18}" + "".join(f"{100 * acc[t]:>9.1f}" for t in tasks) + f"{100 * skills:>9.1f}")
    for task, value in (chains or {}).items():
        label = ">".join(CHAINS[task])
        rows.append(f"{label:<18}" + "".join(f"{100 * value:>9.1f}" if t == task else f"{'':>9}" for t in tasks))
    return "\n".join(rows)


def _build_into(out: Path, final: Path, config: ToyConfig, progress: bool) -> None:
    """Build everything into ``out`` (a temp dir later renamed to ``final``)."""
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    log = (lambda msg: print(f"[toyworld] {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    if len(config.generalists) != len(GENERALISTS):
        raise ValueError(f"ToyConfig.generalists: one weight vector per generalist ({', '.join(GENERALISTS)})")
    t0 = time.perf_counter()
    _setup(config)
    data = make_datasets(config)
    for task, splits in data.items():
        for split, exs in splits.items():
            _write_jsonl(out / "data" / task / f"{split}.jsonl", exs)

    results: dict[str, dict[str, float]] = {}

    def done(name: str, acc: dict[str, float]) -> None:
        results[name] = acc
        summary = " ".join(f"{t}={100 * a:.0f}" for t, a in acc.items())
        log(f"{name} done at {time.perf_counter() - t0:.0f}s: {summary}")

    o, f = str(out), str(final)
    if config.workers <= 1:  # inline: same jobs, same seeds, same weights
        done(*_job_big(o, config, progress))
        done(*_job_base(o, config, progress))
        for i in range(len(config.experts)):
            done(*_job_expert(o, f, config, i, progress))
        for i in range(len(GENERALISTS)):
            done(*_job_generalist(o, f, config, i, progress))
    else:
        # big does not need the base: it trains on one worker while the base, then the experts, use the others
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=config.workers, mp_context=ctx, initializer=_worker_init) as pool:
            big: Future = pool.submit(_job_big, o, config, progress)
            done(*pool.submit(_job_base, o, config, progress).result())
            experts = [pool.submit(_job_expert, o, f, config, i, progress) for i in range(len(config.experts))]
            experts += [pool.submit(_job_generalist, o, f, config, i, progress) for i in range(len(GENERALISTS))]
            for fut in experts:
                done(*fut.result())
            done(*big.result())

    accuracy = {name: results[name] for name in ("base", *EXPERTS, *GENERALISTS, "big")}
    chains = _evaluate_chains(out, data, config)
    wall = time.perf_counter() - t0
    (out / "accuracy.json").write_text(
        json.dumps({"split": "test", "metric": "exact_match", "experts": accuracy, "chains": chains}, indent=2) + "\n"
    )
    (out / "spec.yaml").write_text(_spec_yaml())
    meta = {
        "root": final.name,
        "config": config.to_dict(),
        "dtype": "float32",
        "build_seconds": round(wall, 1),
        "versions": {m: sys.modules[m].__version__ for m in ("torch", "transformers", "peft", "tokenizers")},
    }
    (out / "toyworld.json").write_text(json.dumps(meta, indent=2) + "\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: Path) -> None:
    """Remove temp dirs left by killed builds (their pid is gone)."""
    for path in [*parent.glob(".*.tmp-*"), *parent.glob(".*.old-*")]:
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _is_built(root: Path) -> bool:
    return (root / "toyworld.json").is_file() and (root / "spec.yaml").is_file()


def build_toy_world(
    root: Path | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    config: ToyConfig | None = None,
) -> ToyWorld:
    """Build the toy world into ``root`` (default: ``default_toy_dir()``), or reuse a finished build there.

    ``force`` rebuilds even when a finished build exists; ``config`` replaces the default ``ToyConfig()``
    (tests use ``ToyConfig.tiny()``). Prints the accuracy matrix when ``progress``.
    """
    config = config or ToyConfig()
    root = Path(root).expanduser().resolve() if root is not None else default_toy_dir(config)
    if _is_built(root) and not force:
        return ToyWorld.load(root)
    with _locked(root.parent / f".{root.name}.lock"):
        if _is_built(root) and not force:  # another process finished it while we waited
            return ToyWorld.load(root)
        _remove_stale(root.parent)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _build_into(tmp, root, config, progress)
            if root.exists():
                old = root.parent / f".{root.name}.old-{os.getpid()}"
                os.rename(root, old)
                os.rename(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    world = ToyWorld.load(root)
    if progress:
        meta = json.loads((root / "toyworld.json").read_text())
        print(f"toy world built in {meta['build_seconds']:.0f}s: {root}")
        print(format_matrix(world.accuracy, world.chain_accuracy))
    return world


def weights_digest(root: str | Path) -> str:
    """SHA-256 over every ``*.safetensors`` file of a build (paths and bytes): equal digests, equal weights."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.safetensors")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
