"""Which model family a file or folder in the models folders holds, read from its keys or
configs (never its name), for `loom models list`. Only headers are read: no weights load."""
from __future__ import annotations

from pathlib import Path

from engine.model_files import BadModelFile, file_format, safetensors_header

from .families import FamilyError, detect_folder, detect_keys

# LoRA key fragments that only one family's networks have
_LORA_MARKERS = (("double_blocks", "flux"), ("single_transformer_blocks", "flux"),
                 ("joint_blocks", "sd3"), ("context_block", "sd3"), ("lora_te2_", "sdxl"),
                 ("text_encoder_2.", "sdxl"))
# cross-attention context width of a LoRA's to_k down-projection -> family
_LORA_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def detect_model_family(path: Path, kind: str) -> str | None:
    try:
        if path.is_dir():
            return detect_folder(path).name if (path / "model_index.json").is_file() else None
        if file_format(path) != "safetensors":
            return None
        header = safetensors_header(path)
    except (FamilyError, BadModelFile, OSError, ValueError):
        return None
    keys = {name: tuple(entry.get("shape", ())) for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict)}
    if any("lora" in name for name in keys):
        return _lora_family(keys)
    try:
        return detect_keys(keys).name
    except FamilyError:
        return None


def _lora_family(keys: dict[str, tuple]) -> str | None:
    for marker, name in _LORA_MARKERS:
        if any(marker in key for key in keys):
            return name
    for key, shape in keys.items():
        if ("to_k" in key or "attn2_to_k" in key) and "attn2" in key and "down" in key and shape:
            return _LORA_CONTEXT.get(shape[-1])
    return None
