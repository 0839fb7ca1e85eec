"""Does a PEFT LoRA adapter fit a base model? Checked from safetensors headers alone (no weights loaded).

Every ``lora_A`` / ``lora_B`` tensor must sit on a module the base has, with matching in/out features. PEFT itself
may warn and skip mismatched keys, and vLLM fails late with an opaque error; this says up front what is wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def _shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is not a dict
                shapes[k] = tuple(st.get_slice(k).get_shape())
    return shapes


def base_weight_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape of a local safetensors checkpoint, or None when there is none to read."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    return _shapes(files) if files else None


def adapter_mismatch(adapter_dir: str | Path, model_dir: str | Path) -> str | None:
    """Why the adapter does not fit the base model, or None if it fits (or the base can't be inspected)."""
    adir = Path(adapter_dir)
    cfg_path = adir / "adapter_config.json"
    if not cfg_path.is_file():
        return f"no adapter_config.json in {adir}"
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        return f"adapter_config.json is not valid JSON: {exc}"
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        return f"only LoRA adapters are served (peft_type={cfg.get('peft_type')})"
    weights = adir / "adapter_model.safetensors"
    if not weights.is_file():
        return f"no adapter_model.safetensors in {adir}"
    base = base_weight_shapes(model_dir)
    if base is None:
        return None
    try:
        lora = _shapes([weights])
    except Exception as exc:  # corrupt header
        return f"can't read {weights}: {exc}"
    if not lora:
        return f"{weights} holds no tensors"
    for key, shape in sorted(lora.items()):
        m = _LORA_KEY.match(key)
        if not m:
            continue
        module = m.group("module")
        target = base.get(f"{module}.weight")
        if target is None:
            return f"adapter tensor {key} targets {module}, which the base model at {model_dir} does not have"
        out_f, in_f = target[0], target[-1]
        if m.group("ab") == "A" and shape[-1] != in_f:
            return f"{key} expects {shape[-1]} input features but {module} has {in_f} (adapter made for another base?)"
        if m.group("ab") == "B" and shape[0] != out_f:
            return f"{key} produces {shape[0]} features but {module} has {out_f} (adapter made for another base?)"
    return None
