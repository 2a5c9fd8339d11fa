"""Which files of a Hugging Face model repository a Loom loader needs.

A diffusers repository often carries each weight several times: `.bin` beside
`.safetensors`, an fp16 variant beside the full one, flax/ONNX exports, and a
single-file checkpoint at the top beside the component folders. A pull fetches one
copy: configs, tokenizers and scheduler files, plus per folder the weights of the
requested variant in the safest format present.
"""
from __future__ import annotations

import posixpath
import re
from collections import defaultdict

from .errors import LoomError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".gguf")
PICKLED_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
_FOREIGN = (".onnx", ".onnx_data", ".msgpack", ".h5", ".ot", ".tflite", ".mlmodel", ".pb")
_KEEP_SUFFIXES = (".json", ".txt", ".model", ".yaml", ".md")
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")
_VARIANT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # so `sd_xl_base_1.0.safetensors` has none


class NothingToPull(LoomError):
    pass


def variant_of(path: str) -> str | None:
    """`fp16` for `unet/diffusion_pytorch_model.fp16.safetensors`, its shards
    (`...fp16-00001-of-00002.safetensors`) and index (`....safetensors.index.fp16.json`)."""
    name = posixpath.basename(path)
    parts = name.split(".")
    if ".index." in name:
        candidate = parts[-2] if len(parts) >= 5 else ""
    else:
        candidate = _SHARD.sub("", parts[-2]) if len(parts) >= 3 else ""
    return candidate if _VARIANT.match(candidate) else None


def _is_weight(path: str) -> bool:
    return path.endswith(WEIGHT_SUFFIXES) or ".index." in posixpath.basename(path)


def _format_of(path: str) -> str:
    name = posixpath.basename(path)
    if name.endswith(".safetensors") or ".safetensors.index" in name:
        return "safetensors"
    if name.endswith(".gguf"):
        return "gguf"
    return "pickle"


def select_files(files: list[str], variant: str | None = None,
                 allow_pickle: bool = False) -> list[str]:
    """The subset of a repository's files to download (see the module docstring)."""
    is_pipeline = "model_index.json" in files
    keep: list[str] = []
    weights_by_folder: dict[str, list[str]] = defaultdict(list)
    for path in files:
        if path.endswith(_FOREIGN) or posixpath.basename(path).startswith("."):
            continue
        folder = posixpath.dirname(path)
        if _is_weight(path):
            if is_pipeline and folder == "":
                continue  # a single-file copy of the pipeline the folders already hold
            weights_by_folder[folder].append(path)
        elif path.endswith(_KEEP_SUFFIXES) or folder.startswith("tokenizer"):
            keep.append(path)
    refused: list[str] = []
    for folder, weights in sorted(weights_by_folder.items()):
        chosen = [w for w in weights if variant_of(w) == variant] if variant else []
        if not chosen:
            chosen = [w for w in weights if variant_of(w) is None]
        formats = {_format_of(w) for w in chosen}
        for preferred in ("safetensors", "gguf"):
            if preferred in formats:
                chosen = [w for w in chosen if _format_of(w) == preferred]
                break
        else:
            if chosen and not allow_pickle:
                refused.extend(chosen)
                chosen = []
        keep.extend(chosen)
    if refused:
        raise NothingToPull("these weights exist only in pickled formats, which can run code "
                            f"when loaded: {', '.join(refused)}; pass --allow-pickle if you "
                            "trust the repository")
    if not any(_is_weight(p) for p in keep):
        wanted = f" of variant {variant!r}" if variant else ""
        raise NothingToPull(f"the repository has no model weights{wanted} Loom can load "
                            f"(files: {', '.join(sorted(files)[:20])})")
    return sorted(keep)


# diffusers class names of a standalone component -> the models folder it belongs in
_KIND_OF_CLASS = {
    "ControlNetModel": "controlnet", "FluxControlNetModel": "controlnet",
    "SD3ControlNetModel": "controlnet", "ControlNetXSAdapter": "controlnet",
    "AutoencoderKL": "vae", "AutoencoderTiny": "vae",
    "UNet2DConditionModel": "diffusion_models", "SD3Transformer2DModel": "diffusion_models",
    "FluxTransformer2DModel": "diffusion_models",
    "CLIPVisionModelWithProjection": "clip_vision",
    "CLIPTextModel": "text_encoders", "CLIPTextModelWithProjection": "text_encoders",
    "T5EncoderModel": "text_encoders",
}


def guess_kind(files: list[str], top_config: dict | None) -> str | None:
    """The models folder a repository belongs in, from its layout and top-level config."""
    if "model_index.json" in files:
        return "checkpoints"
    if top_config:
        for key in ("_class_name", "architectures"):
            value = top_config.get(key)
            names = value if isinstance(value, list) else [value]
            for name in names:
                if name in _KIND_OF_CLASS:
                    return _KIND_OF_CLASS[name]
    weights = [f for f in files if f.endswith(WEIGHT_SUFFIXES)]
    if weights and all("lora" in posixpath.basename(f).lower() for f in weights):
        return "loras"
    return None
