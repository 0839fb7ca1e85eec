"""Reading, checking and writing the weights a search moves: PEFT LoRA adapters and full checkpoints.

Everything written here loads directly in PEFT / transformers / vLLM:
- an adapter directory is ``adapter_config.json`` (``base_model_name_or_path`` = the base's absolute path) plus
  ``adapter_model.safetensors``, with the experts' own LoRA settings and dtype;
- a full checkpoint directory is the base's non-weight files (config, tokenizer, generation config) plus
  ``model.safetensors``.
Directories are named by content hash and written atomically, so the same weights always get the same directory
and the same ``Adapter.name`` (which engines use to cache loaded adapters).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_LORA_SETTINGS = (
    "r",
    "lora_alpha",
    "target_modules",
    "rank_pattern",
    "alpha_pattern",
    "use_rslora",
    "use_dora",
    "bias",
    "fan_in_fan_out",
)


class CheckpointError(ValueError):
    """Weights that can't be searched over (wrong base, incompatible shapes, unreadable files)."""


# --------------------------------------------------------------------------------------------------- base model
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"can't read {path}: {exc}") from None


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no *.safetensors weights (only safetensors checkpoints are supported)")
    return files


def weight_shapes(model_dir: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a safetensors checkpoint, read from the headers only."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in weight_files(Path(model_dir)):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():  # noqa: SIM118 (safe_open has no __iter__)
                shapes[k] = tuple(h.get_slice(k).get_shape())
    return shapes


_ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "vocab_size",
    "intermediate_size",
    "num_attention_heads",
)


def architecture(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    cfg = _read_json(Path(model_dir) / "config.json")
    return {k: cfg.get(k) for k in _ARCH_KEYS}


# --------------------------------------------------------------------------------------------------- adapters
@dataclass
class LoraAdapter:
    path: Path
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.tensors.values())).dtype

    def settings(self) -> dict[str, Any]:
        """The LoRA settings that must match for weights to be combined (rank, alpha, targets, ...)."""
        out = {k: self.config.get(k) for k in _LORA_SETTINGS}
        if isinstance(out["target_modules"], list):
            out["target_modules"] = sorted(out["target_modules"])
        return out


def read_adapter(path: str | os.PathLike[str]) -> LoraAdapter:
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"adapter directory not found: {p}")
    cfg_path, w_path = p / ADAPTER_CONFIG, p / ADAPTER_WEIGHTS
    if not cfg_path.is_file():
        raise CheckpointError(f"{p} is not a PEFT adapter (no {ADAPTER_CONFIG})")
    if not w_path.is_file():
        raise CheckpointError(f"{p}: no {ADAPTER_WEIGHTS} (only safetensors adapters are supported)")
    cfg = _read_json(cfg_path)
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise CheckpointError(f"{p}: peft_type {cfg.get('peft_type')!r} is not LORA")
    return LoraAdapter(p, cfg, load_file(str(w_path)))


def _base_key(adapter_key: str) -> tuple[str, str] | None:
    """``base_model.model.X.lora_A.weight`` -> (``X.weight``, ``A``); None for non-LoRA-matrix tensors."""
    key = adapter_key.removeprefix(_PEFT_PREFIX)
    for part in ("lora_A", "lora_B"):
        marker = f".{part}."
        if marker in key:
            module = key.split(marker)[0]
            module = module.removesuffix(".default")
            return f"{module}.weight", part[-1]
    return None


def check_adapter_fits_base(adapter: LoraAdapter, base_dir: str | os.PathLike[str]) -> None:
    """Raise CheckpointError when ``adapter`` was made for another base than ``base_dir``.

    Checks (1) the adapter's ``base_model_name_or_path``, when it is a local directory, has the base's architecture;
    (2) every LoRA matrix fits the shape of the base weight it adapts.
    """
    base = Path(base_dir)
    named = adapter.config.get("base_model_name_or_path")
    if named:
        named_path = Path(named)
        if not named_path.is_absolute():
            named_path = (adapter.path / named_path).resolve()
        if named_path.is_dir() and (named_path / "config.json").is_file() and named_path.resolve() != base.resolve():
            theirs, ours = architecture(named_path), architecture(base)
            if theirs != ours:
                diff = {k: (theirs[k], ours[k]) for k in ours if theirs[k] != ours[k]}
                raise CheckpointError(
                    f"adapter {adapter.path} was made for {named} whose architecture differs from base {base} "
                    f"(adapter base vs this base: {diff})"
                )
    shapes = weight_shapes(base)
    checked = 0
    for key, t in adapter.tensors.items():
        bk = _base_key(key)
        if bk is None:
            continue
        base_key, which = bk
        if base_key not in shapes:
            raise CheckpointError(
                f"adapter {adapter.path} adapts {base_key!r}, which base {base} does not have (made for another base?)"
            )
        out_f, in_f = shapes[base_key][0], shapes[base_key][-1]
        if adapter.config.get("fan_in_fan_out"):
            out_f, in_f = in_f, out_f
        if (which == "A" and t.shape[-1] != in_f) or (which == "B" and t.shape[0] != out_f):
            raise CheckpointError(
                f"adapter {adapter.path}: {key} has shape {tuple(t.shape)}, which does not fit base weight "
                f"{base_key} {shapes[base_key]} (made for another base?)"
            )
        checked += 1
    if checked == 0:
        raise CheckpointError(f"adapter {adapter.path} has no LoRA matrices")


def check_same_settings(adapters: list[LoraAdapter]) -> None:
    """All adapters must have the same LoRA settings and tensors to be combined in weight space."""
    ref = adapters[0]
    for a in adapters[1:]:
        if a.settings() != ref.settings():
            diff = {
                k: (ref.settings()[k], a.settings()[k]) for k in ref.settings() if ref.settings()[k] != a.settings()[k]
            }
            raise CheckpointError(f"adapter {a.path} has different LoRA settings from {ref.path}: {diff}")
        if set(a.tensors) != set(ref.tensors):
            raise CheckpointError(f"adapter {a.path} adapts different modules from {ref.path}")
        for k, t in a.tensors.items():
            if t.shape != ref.tensors[k].shape:
                raise CheckpointError(
                    f"adapter {a.path}: {k} has shape {tuple(t.shape)}, {ref.path} has {tuple(ref.tensors[k].shape)}"
                )


def _atomic_dir(root: Path, name: str, write: Any) -> Path:
    final = root / name
    if final.is_dir():
        return final
    tmp = root / f".{name}.{os.getpid()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    try:
        os.replace(tmp, final)
    except OSError:  # someone else wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _tensor_digest(tensors: dict[str, torch.Tensor], extra: bytes = b"") -> str:
    h = hashlib.sha256(extra)
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(k.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes of any dtype (bf16 included)
    return h.hexdigest()


def write_adapter(
    root: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    template: LoraAdapter,
    base_dir: str | os.PathLike[str],
) -> tuple[Path, str]:
    """Write ``tensors`` as a PEFT adapter like ``template`` under ``root/<hash>``; returns (dir, content hash)."""
    from safetensors.torch import save_file

    cast = {k: t.detach().to(template.dtype).contiguous().cpu() for k, t in tensors.items()}
    config = dict(template.config)
    config["base_model_name_or_path"] = str(Path(base_dir).resolve())
    config.pop("inference_mode", None)
    config["inference_mode"] = True
    cfg_bytes = json.dumps(config, indent=2, sort_keys=True).encode()
    digest = _tensor_digest(cast, cfg_bytes)

    def write(d: Path) -> None:
        (d / ADAPTER_CONFIG).write_bytes(cfg_bytes)
        save_file(cast, str(d / ADAPTER_WEIGHTS), metadata={"format": "pt"})

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return _atomic_dir(root, digest[:24], write), digest


def lora_scale(config: dict[str, Any], module: str) -> float:
    """PEFT's scaling of one module's ``B @ A``: ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), per-module patterns
    included (a pattern key matches a module name's suffix, as in PEFT)."""

    def pattern(name: str, default: Any) -> Any:
        for key, value in (config.get(name) or {}).items():
            if module == key or module.endswith(f".{key}"):
                return value
        return default

    r = float(pattern("rank_pattern", config.get("r", 8)))
    alpha = float(pattern("alpha_pattern", config.get("lora_alpha", r)))
    return alpha / (r**0.5 if config.get("use_rslora") else r)


def lora_deltas(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """The adapter as the weight changes it makes: base weight name -> ``scale * B @ A`` (float32, the shape of
    the base weight). Sums and multiples of these are what the adapters' sums and multiples mean (task
    arithmetic), which is not true of their A and B factors when the adapters started from different random A."""
    if adapter.config.get("fan_in_fan_out") or adapter.config.get("use_dora"):
        raise CheckpointError(f"{adapter.path}: fan_in_fan_out and DoRA adapters are not supported as weight deltas")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in adapter.tensors.items():
        bk = _base_key(key)
        if bk is not None:
            factors.setdefault(bk[0], {})[bk[1]] = t.to(torch.float32)
    out: dict[str, torch.Tensor] = {}
    for weight, ab in sorted(factors.items()):
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{adapter.path}: {weight} has lora_{'A' if 'A' not in ab else 'B'} missing")
        out[weight] = lora_scale(adapter.config, weight.removesuffix(".weight")) * (ab["B"] @ ab["A"])
    return out


def delta_rank(deltas: list[dict[str, torch.Tensor]], adapters: list[LoraAdapter]) -> int:
    """The LoRA rank that holds any linear combination of the adapters' deltas exactly: the sum of their ranks,
    capped by the smallest weight's side."""
    total = sum(int(a.config.get("r", 8)) for a in adapters)
    sides = [min(t.shape) for d in deltas for t in d.values()]
    return max(1, min([total, *sides]))


def write_delta_adapter(
    root: str | os.PathLike[str],
    deltas: dict[str, torch.Tensor],
    template: LoraAdapter,
    base_dir: str | os.PathLike[str],
    rank: int,
) -> tuple[Path, str]:
    """Write weight deltas as a rank-``rank`` PEFT adapter (truncated SVD per weight, ``alpha = r``: scale 1).

    Exact when every delta's rank is at most ``rank``, as for any combination of the experts' deltas with
    ``rank = delta_rank(...)``. Served like any adapter (multi-LoRA batches on vLLM, at ``max_lora_rank >= rank``)."""
    tensors: dict[str, torch.Tensor] = {}
    modules: set[str] = set()
    for weight, delta in sorted(deltas.items()):
        module = weight.removesuffix(".weight")
        modules.add(module.rsplit(".", 1)[-1])
        u, s, vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
        k = min(rank, s.shape[0])
        root_s = s[:k].sqrt()
        a = torch.zeros(rank, delta.shape[1], dtype=torch.float64)
        b = torch.zeros(delta.shape[0], rank, dtype=torch.float64)
        a[:k] = root_s[:, None] * vh[:k]
        b[:, :k] = u[:, :k] * root_s[None, :]
        tensors[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = a
        tensors[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = b
    config = dict(template.config)
    config.update(
        r=int(rank),
        lora_alpha=int(rank),
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        target_modules=sorted(modules),
    )
    return write_adapter(root, tensors, LoraAdapter(template.path, config, template.tensors), base_dir)


# --------------------------------------------------------------------------------------------------- full weights
def read_full(model_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in weight_files(Path(model_dir)):
        out.update(load_file(str(f)))
    return out


def write_full(
    root: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    template_dir: str | os.PathLike[str],
    dtype: torch.dtype,
    *,
    static: dict[str, torch.Tensor] | None = None,
) -> tuple[Path, str]:
    """A full checkpoint: the template's non-weight files plus ``model.safetensors`` of ``tensors`` (cast to
    ``dtype``) and ``static`` (non-float tensors, written as they are)."""
    from safetensors.torch import save_file

    cast = {k: t.detach().to(dtype).contiguous().cpu() for k, t in tensors.items()}
    cast.update({k: t.contiguous().cpu() for k, t in (static or {}).items()})
    digest = _tensor_digest(cast)
    template = Path(template_dir)

    def write(d: Path) -> None:
        for f in template.iterdir():
            if (
                f.is_file()
                and not f.name.endswith((".safetensors", ".bin", ".pt"))
                and f.name != "model.safetensors.index.json"
            ):
                shutil.copy2(f, d / f.name)
        save_file(cast, str(d / "model.safetensors"), metadata={"format": "pt"})

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return _atomic_dir(root, digest[:24], write), digest
