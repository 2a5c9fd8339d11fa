"""Loading checkpoints and LoRAs into model handles, fully offline.

A checkpoint is a diffusers folder (model_index.json) or a single file in the original
Stable Diffusion key layout (.safetensors; pickles only with settings.allow_pickle).
Single files are read with diffusers' `from_single_file(config=<local folder>)`, the
folder being one of the small config sets shipped in nodes/configs/ (picked from the
file's keys) or one named by the `config` input (nodes/configs/<name> or
models/configs/<name>). Every load goes through `ctx.models`, keyed by the file's
content digest, device and dtype, so a file used by two nodes is in memory once.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.models import file_digest
from engine.node import node
from engine.settings import Settings
from engine.types import model_name

from ._common import PICKLE_SUFFIXES, fingerprint_model, read_state_dict, refuse_pickle, resolve_model, torch_dtype
from .types import DiffusionModel, LoraSpec, TextEncoder, Vae

if TYPE_CHECKING:
    import torch

CONFIGS_DIR = Path(__file__).parent / "configs"


class CheckpointOutputs(NamedTuple):
    model: DiffusionModel
    text_encoder: TextEncoder
    vae: Vae


def _checkpoint_fingerprint(name: str, config: str = "auto", *, settings: Settings, **_) -> str:
    return fingerprint_model(settings, "checkpoints", name) + f"|{config}"


# ---------------------------------------------------------------------------
# family detection
# ---------------------------------------------------------------------------

def single_file_keys(path: Path, settings: Settings) -> dict[str, tuple]:
    """Key -> shape of a single-file checkpoint, without loading the tensors of a safetensors file."""
    if path.suffix in PICKLE_SUFFIXES:
        state = read_state_dict(settings, path)
        while isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
        raise NodeInputError("name", f"{path.name} is not a readable safetensors file: {exc}") from None


def detect_family(keys: dict[str, tuple]) -> tuple[str, bool]:
    """(family name, inpainting?) of a single file, from its keys (see nodes/families)."""
    from .families import FamilyError, detect_keys

    try:
        fam = detect_keys(keys)
    except FamilyError as exc:
        raise NodeInputError("name", str(exc)) from None
    conv_in = keys.get("model.diffusion_model.input_blocks.0.0.weight")
    return fam.name, bool(conv_in and len(conv_in) > 1 and conv_in[1] == 9)


def _folder_family(folder: Path) -> str:
    from .families import FamilyError, detect_folder

    try:
        return detect_folder(folder).name
    except FamilyError as exc:
        raise NodeInputError("name", str(exc)) from None


def config_folder_name(family_name: str, inpainting: bool, keys: dict[str, tuple] | None = None) -> str:
    """The shipped config folder for a single file of this family (nodes/configs/<name>)."""
    from .families import family

    name = family(family_name).config_name(inpainting, keys)
    if name is None:
        raise NodeInputError("config", f"no shipped config for {family(family_name).label} single files; "
                                       "name a config folder with the config input")
    return name


def _config_folder(ctx: Context, config: str, family: str, inpainting: bool,
                   keys: dict[str, tuple] | None = None) -> Path:
    if config != "auto":
        local = CONFIGS_DIR / config
        if (local / "model_index.json").is_file():
            return local
        return resolve_model(ctx, "configs", config, "config")
    name = config_folder_name(family, inpainting, keys)
    folder = CONFIGS_DIR / name
    if not (folder / "model_index.json").is_file():
        have = sorted(p.parent.name for p in CONFIGS_DIR.glob("*/model_index.json"))
        raise NodeInputError("config", f"no shipped config for a {name} checkpoint "
                                       f"(have: {', '.join(have) or 'none'}); "
                                       "name a config folder with the config input")
    return folder


def shared_clip_tokenizer(folder: Path):
    """The CLIPTokenizer a config folder describes: its tokenizer_config.json (padding differs:
    '<|endoftext|>' for OpenAI CLIP, '!' for OpenCLIP) over the CLIP vocabulary shipped once in
    nodes/configs/clip-tokenizer (tools/build_clip_tokenizer.py)."""
    from transformers import CLIPTokenizer

    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("tokenizer_class", None)
    shared = CONFIGS_DIR / "clip-tokenizer"
    return CLIPTokenizer(str(shared / "vocab.json"), str(shared / "merges.txt"), **settings)


def _config_tokenizers(config_dir: Path) -> dict:
    """Tokenizers to hand to from_single_file for a config folder that carries only their settings."""
    out = {}
    for slot in ("tokenizer", "tokenizer_2"):
        folder = config_dir / slot
        has_vocab = any((folder / f).is_file() for f in ("vocab.json", "tokenizer.json"))
        if (folder / "tokenizer_config.json").is_file() and not has_vocab:
            out[slot] = shared_clip_tokenizer(folder)
    return out


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------

def _load_components(path: Path, family_name: str, inpainting: bool, config_dir: Path | None,
                     dtype: torch.dtype) -> dict:
    """Denoiser ("unet"), vae, tokenizers, text encoders and the scheduler config of one checkpoint (CPU)."""
    import diffusers

    from .families import family

    fam = family(family_name)
    if config_dir is None:  # a diffusers folder: load each component, no pipeline needed
        subfolder, denoiser_class = fam.denoiser
        kw = dict(local_files_only=True, torch_dtype=dtype)
        comps = {
            "unet": getattr(diffusers, denoiser_class).from_pretrained(path, subfolder=subfolder, **kw),
            "vae": diffusers.AutoencoderKL.from_pretrained(path, subfolder="vae", **kw),
            "scheduler_config": dict(diffusers.DDIMScheduler.load_config(path, subfolder="scheduler",
                                                                           local_files_only=True)),
            "tokenizers": [], "encoders": [], "roles": [],
        }
        for slot in fam.text:
            if not (path / slot.encoder).is_dir():
                continue  # a component the folder leaves out (SD3 without T5): conditioning pads for it
            comps["tokenizers"].append(load_tokenizer(path / slot.tokenizer, slot))
            comps["encoders"].append(load_text_model(path / slot.encoder, slot, dtype))
            comps["roles"].append(slot.role)
        return comps
    pipe = fam.pipeline_class(inpainting).from_single_file(
        str(path), config=str(config_dir), local_files_only=True, torch_dtype=dtype,
        **_config_tokenizers(config_dir))
    comps = {"unet": getattr(pipe, fam.denoiser[0]), "vae": pipe.vae,
             "scheduler_config": dict(pipe.scheduler.config), "tokenizers": [], "encoders": [], "roles": []}
    for slot in fam.text:
        encoder = getattr(pipe, slot.encoder, None)
        if encoder is not None:
            comps["tokenizers"].append(getattr(pipe, slot.tokenizer))
            comps["encoders"].append(encoder)
            comps["roles"].append(slot.role)
    return comps


def _transformer_family(family_name: str) -> bool:
    from .families import family

    return family(family_name).denoiser[0] == "transformer"


def _load_transformer_file(ctx: Context, path: Path, family_name: str, config_dir: Path,
                           keys: dict[str, tuple], dtype: torch.dtype) -> dict:
    """The parts of a transformer family's single file (Stability's SD3.5 layout, ComfyUI's FLUX
    checkpoints): the denoiser (model.diffusion_model.*; FLUX's renamed by Loom, see
    families/_flux_layout.py) and VAE (first_stage_model.*) through diffusers' conversion, and
    each text encoder the file carries, picked by its role (text_encoders.<role>.transformer.*)
    rather than by its width, so that any encoder may be left out (sd3.5_large.safetensors has
    none, the *_incl_clips files no T5) and fp8 encoders are upcast as split files are."""
    import diffusers

    from .component_loaders import bfl_renamed, t5_tokenizer, text_model_from_state
    from .families import family
    from .families._flux_layout import is_bfl_layout

    fam = family(family_name)
    if not any(k.startswith("first_stage_model.") for k in keys):
        raise NodeInputError("name", f"{path.name} holds no VAE (first_stage_model.*), so it is not a whole "
                                     f"{fam.label} checkpoint: put a transformer-only file in "
                                     "models/diffusion_models and load it with load_diffusion_model, its text "
                                     "encoders with load_text_encoders and its VAE with load_vae")
    state = read_state_dict(ctx.settings, path)
    encoders = {}
    for slot in fam.text:
        prefix = f"text_encoders.{slot.role}.transformer."
        if any(k.startswith(prefix) for k in keys):
            encoders[slot.role] = {k[len(prefix):]: state.pop(k) for k in list(state) if k.startswith(prefix)}
    denoiser_state = state
    if is_bfl_layout(keys):
        denoiser_state = bfl_renamed({k: state.pop(k) for k in list(state) if k.startswith("model.diffusion_model.")},
                                     config_dir, path.name)
    kw = dict(config=str(config_dir), local_files_only=True, torch_dtype=dtype)
    denoiser = getattr(diffusers, fam.denoiser[1]).from_single_file(denoiser_state, subfolder=fam.denoiser[0], **kw)
    vae = diffusers.AutoencoderKL.from_single_file(state, subfolder="vae", **kw)
    comps = {"unet": denoiser, "vae": vae, "tokenizers": [], "encoders": [], "roles": [],
             "scheduler_config": json.loads((config_dir / "scheduler" / "scheduler_config.json").read_text())}
    for slot in fam.text:
        if slot.role not in encoders:
            continue
        folder = config_dir / slot.tokenizer
        if slot.tokenizer_class.startswith("T5"):
            tokenizer = t5_tokenizer(ctx, folder)
        elif any((folder / f).is_file() for f in ("vocab.json", "tokenizer.json")):
            tokenizer = load_tokenizer(folder, slot)
        else:
            tokenizer = shared_clip_tokenizer(folder)
        comps["tokenizers"].append(tokenizer)
        comps["encoders"].append(text_model_from_state(slot, config_dir, encoders.pop(slot.role), dtype,
                                                       f"{path.name} ({slot.role})", "name"))
        comps["roles"].append(slot.role)
    return comps


def load_tokenizer(folder: Path, slot):
    """The tokenizer a slot of a diffusers folder holds; a clear error when its files are missing
    (a T5 tokenizer needs tokenizer.json, or spiece.model with the sentencepiece package)."""
    import transformers

    cls = getattr(transformers, slot.tokenizer_class)
    if slot.tokenizer_class.startswith("T5"):
        if (folder / "tokenizer.json").is_file():
            return transformers.T5TokenizerFast.from_pretrained(folder, local_files_only=True)
        if not (folder / "spiece.model").is_file():
            raise NodeInputError("name", f"no T5 tokenizer in {folder}: it needs tokenizer.json (or spiece.model) "
                                         f"from the model's {folder.name}/ folder")
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, ImportError) as exc:
        raise NodeInputError("name", f"cannot read the {slot.role} tokenizer in {folder}: {exc}") from None


def load_text_model(folder: Path, slot, dtype: torch.dtype):
    import transformers

    return getattr(transformers, slot.encoder_class).from_pretrained(folder, local_files_only=True,
                                                                      torch_dtype=dtype)


def load_checkpoint_handles(ctx: Context, name: str, config: str = "auto") -> CheckpointOutputs:
    """What the load_checkpoint node returns; callable from other nodes and tests."""
    path = resolve_model(ctx, "checkpoints", name)
    device, dtype = ctx.settings.device, torch_dtype(ctx.settings)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise NodeInputError("name", f"{path.name} is a folder without model_index.json "
                                         "(not a diffusers checkpoint)")
        family, inpainting, config_dir, keys = _folder_family(path), None, None, {}
    else:
        keys = single_file_keys(path, ctx.settings)
        family, inpainting = detect_family(keys)
        config_dir = _config_folder(ctx, config, family, inpainting, keys)
    digest = file_digest(path)
    identity = f"{digest}|{config_dir.name if config_dir else ''}|{device}|{dtype}"

    def load() -> dict:
        if config_dir is not None and keys and _transformer_family(family):
            comps = _load_transformer_file(ctx, path, family, config_dir, keys, dtype)
        else:
            comps = _load_components(path, family, bool(inpainting), config_dir, dtype)
        for module in (comps["unet"], comps["vae"], *comps["encoders"]):
            module.eval().requires_grad_(False)
            if not ctx.settings.options.get("cpu_offload"):
                module.to(device)
        return comps

    comps = ctx.models.get(("checkpoint", identity), load, name=name, kind="checkpoint",
                           describe=lambda comps: _checkpoint_details(path, family, comps))
    vae = Vae(comps["vae"], identity=f"vae:{identity}", device=device, dtype=dtype)
    model = DiffusionModel(comps["unet"], dict(comps["scheduler_config"]), family,
                           latent_scale=vae.scale_factor, identity=f"unet:{identity}",
                           device=device, dtype=dtype)
    text_encoder = TextEncoder(comps["tokenizers"], comps["encoders"], family,
                               identity=f"te:{identity}", device=device, dtype=dtype, roles=comps["roles"])
    return CheckpointOutputs(model, text_encoder, vae)


def _checkpoint_details(path: Path, family: str, comps: dict) -> dict[str, str]:
    """The checkpoint's family and parts, and narrow floats its single file stored (upcast on load)."""
    from .component_loaders import load_details

    return {"family": family, "parts": ", ".join(["denoiser", *comps["roles"], "vae"]),
            **load_details(path, comps["unet"])}


@node("load_checkpoint", category="loaders", version=1, fingerprint=_checkpoint_fingerprint)
def load_checkpoint(ctx: Context, name: model_name("checkpoints"),
                    config: Annotated[str, Field(description="config folder for a single file: "
                                                             "'auto' picks one from its keys")] = "auto"
                    ) -> CheckpointOutputs:
    """Load a Stable Diffusion checkpoint (diffusers folder or single .safetensors file) from
    models/checkpoints: the UNet, the text encoder(s) and the VAE as separate outputs."""
    return load_checkpoint_handles(ctx, name, config)


# ---------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------

class LoraOutputs(NamedTuple):
    model: DiffusionModel
    text_encoder: TextEncoder


def _lora_fingerprint(name: str, *, settings: Settings, **_) -> str:
    return fingerprint_model(settings, "loras", name)


@node("load_lora", category="loaders", version=1, fingerprint=_lora_fingerprint)
def load_lora(ctx: Context, model: DiffusionModel, text_encoder: TextEncoder, name: model_name("loras"),
              strength_model: Annotated[float, Field(ge=-10, le=10)] = 1.0,
              strength_clip: Annotated[float, Field(ge=-10, le=10)] = 1.0) -> LoraOutputs:
    """Apply a LoRA from models/loras (diffusers, kohya or LCM-LoRA .safetensors) to the model and
    the text encoder with its own strengths. Chain the node to stack several LoRAs; the base
    model in memory is shared and left unchanged."""
    path = resolve_model(ctx, "loras", name)
    refuse_pickle(ctx.settings, path)
    from . import lora as lora_mod

    spec = LoraSpec(name=name, path=str(path), digest=file_digest(path),
                    strength_model=strength_model, strength_clip=strength_clip)
    lora_mod.check_lora(ctx, spec, model.family)
    return LoraOutputs(model.with_patch(loras=[spec]), text_encoder.with_patch(loras=[spec]))
