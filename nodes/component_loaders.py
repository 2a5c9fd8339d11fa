"""Loading a model from separate files, as FLUX and SD3.5 users keep them (ComfyUI's layout):
the denoiser in models/diffusion_models (or models/unet), text encoders in
models/text_encoders (or models/clip), the VAE in models/vae.

Each part is a single file or a folder. Single files are read in their released key layout
(or diffusers'), with the architecture from the family's shipped config (nodes/configs); a
GGUF-quantized denoiser loads through diffusers' GGUF support and stays quantized; fp8
safetensors are upcast tensor by tensor to the run's dtype as they load. A text-encoder
folder is a transformers folder (config.json, weights, tokenizer files); a single CLIP file
uses the shipped CLIP vocabulary, a single T5 file the tokenizer in models/text_encoders/
t5-tokenizer/ (T5's vocabulary cannot be shipped; the error says where to put it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.models import file_digest
from engine.node import node
from engine.settings import Settings
from engine.types import model_name

from ._common import fingerprint_model, read_state_dict, refuse_pickle, resolve_model, torch_dtype
from .loaders import CONFIGS_DIR, shared_clip_tokenizer, single_file_keys
from .types import DiffusionModel, TextEncoder, Vae

DENOISER_KINDS = ("diffusion_models", "unet")
TEXT_KINDS = ("text_encoders", "clip")
T5_TOKENIZER = "t5-tokenizer"


def _resolve(ctx_or_settings, kinds: tuple[str, ...], name: str, input_name: str) -> Path:
    """`name` in the first of `kinds` that has it (ComfyUI's old and new folder names)."""
    errors = []
    for kind in kinds:
        try:
            return resolve_model(ctx_or_settings, kind, name, input_name)
        except NodeInputError as exc:
            errors.append(exc.message if hasattr(exc, "message") else str(exc))
    raise NodeInputError(input_name, "; ".join(errors))


def _fingerprint(kinds: tuple[str, ...], settings: Settings, name: str) -> str:
    marks = [fingerprint_model(settings, kind, name) for kind in kinds]
    return next((m for m in marks if not m.startswith("missing:")), marks[0])


def tensor_keys(path: Path, settings: Settings) -> dict[str, tuple]:
    """Tensor name -> shape of a .safetensors or .gguf file, without loading the tensors."""
    if path.suffix == ".gguf":
        try:
            from gguf import GGUFReader
        except ImportError:
            raise NodeInputError("name", f"{path.name}: reading GGUF files needs the gguf package "
                                         "(pip install 'loom[gguf]')") from None

        try:
            return {t.name: tuple(int(d) for d in reversed(t.shape)) for t in GGUFReader(str(path)).tensors}
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
            raise NodeInputError("name", f"{path.name} is not a readable GGUF file: {exc}") from None
    return single_file_keys(path, settings)


# ---------------------------------------------------------------------------
# denoiser
# ---------------------------------------------------------------------------

def _denoiser_family(path: Path, settings: Settings):
    """(family, keys or None) of a denoiser folder (its config's class) or file (its keys)."""
    from .families import FamilyError, detect_keys, families

    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise NodeInputError("name", f"{path.name} is a folder without config.json (not a diffusers model)")
        cls = json.loads(config.read_text()).get("_class_name")
        for fam in families():
            if fam.denoiser[1] == cls:
                return fam, None
        raise NodeInputError("name", f"{path.name}: no model family has a {cls} denoiser")
    keys = tensor_keys(path, settings)
    try:
        return detect_keys(keys), keys
    except FamilyError as exc:
        raise NodeInputError("name", str(exc)) from None


def _denoiser_weights(path: Path, keys: dict, config_dir: Path):
    """What from_single_file reads: the file itself, or its tensors renamed first when they are
    in Black Forest Labs' FLUX layout (diffusers' own renaming assumes the released width)."""
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    from .families._flux_layout import is_bfl_layout

    if not is_bfl_layout(keys):
        return str(path)
    return bfl_renamed(load_single_file_checkpoint(str(path), local_files_only=True), config_dir, path.name)


def bfl_renamed(state: dict, config_dir: Path, source: str) -> dict:
    """A FLUX transformer's tensors in Black Forest Labs' layout renamed to diffusers', sized by
    the config folder's transformer; a foreign key is refused naming it."""
    from .families._flux_layout import bfl_to_diffusers

    config = json.loads((config_dir / "transformer" / "config.json").read_text())
    try:
        return bfl_to_diffusers(state, config["num_attention_heads"] * config["attention_head_dim"], source)
    except ValueError as exc:
        raise NodeInputError("name", str(exc)) from None


def _family_config(ctx: Context, fam, keys: dict | None, config: str) -> Path:
    if config != "auto":
        local = CONFIGS_DIR / config
        return local if (local / "model_index.json").is_file() else resolve_model(ctx, "configs", config, "config")
    name = fam.config_name(False, keys) if keys is not None else fam.config
    if name is None:
        raise NodeInputError("config", f"no shipped config for {fam.label}; name one with the config input")
    return CONFIGS_DIR / name


def load_denoiser(ctx: Context, name: str, config: str = "auto") -> DiffusionModel:
    """What load_diffusion_model returns; callable from other nodes and tests."""
    import diffusers

    path = _resolve(ctx, DENOISER_KINDS, name, "name")
    refuse_pickle(ctx.settings, path)
    fam, keys = _denoiser_family(path, ctx.settings)
    config_dir = _family_config(ctx, fam, keys, config)
    subfolder, cls_name = fam.denoiser
    cls = getattr(diffusers, cls_name)
    device, dtype = ctx.settings.device, torch_dtype(ctx.settings)
    identity = f"{file_digest(path)}|{config_dir.name}|{device}|{dtype}"

    def load():
        if path.is_dir():
            module = cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
        else:
            quantized = {"quantization_config": diffusers.GGUFQuantizationConfig(compute_dtype=dtype)
                         } if path.suffix == ".gguf" else {}
            module = cls.from_single_file(_denoiser_weights(path, keys, config_dir), config=str(config_dir),
                                          subfolder=subfolder, local_files_only=True, torch_dtype=dtype, **quantized)
        module.eval().requires_grad_(False)
        if not ctx.settings.options.get("cpu_offload"):
            module.to(device)
        return module

    module = ctx.models.get(("denoiser", identity), load, name=name, kind="diffusion_model",
                            describe=lambda module: load_details(path, module))
    scheduler = json.loads((config_dir / "scheduler" / "scheduler_config.json").read_text())
    vae_blocks = json.loads((config_dir / "vae" / "config.json").read_text())["block_out_channels"]
    return DiffusionModel(module, scheduler, fam.name, latent_scale=2 ** (len(vae_blocks) - 1),
                          identity=f"denoiser:{identity}", device=device, dtype=dtype)


@node("load_diffusion_model", category="loaders", version=1, output="model",
      fingerprint=lambda name, config="auto", *, settings, **_: _fingerprint(DENOISER_KINDS, settings, name) + f"|{config}")
def load_diffusion_model(ctx: Context, name: model_name("diffusion_models"),
                         config: Annotated[str, Field(description="config folder: 'auto' picks the family's "
                                                                  "from the file's keys")] = "auto") -> DiffusionModel:
    """Load a denoiser on its own (ComfyUI's UNETLoader) from models/diffusion_models or
    models/unet: a FLUX or SD3.5 transformer as a single .safetensors file (released or diffusers
    key layout, fp8 upcast as it loads), a GGUF-quantized file, or a diffusers model folder."""
    return load_denoiser(ctx, name, config)


# ---------------------------------------------------------------------------
# text encoders
# ---------------------------------------------------------------------------

def t5_tokenizer(ctx: Context, folder: Path | None):
    from .loaders import load_tokenizer

    candidates = [folder] if folder is not None else []
    for kind in TEXT_KINDS:
        try:
            candidates.append(resolve_model(ctx, kind, T5_TOKENIZER))
        except NodeInputError:
            pass
    for candidate in candidates:
        if any((candidate / f).is_file() for f in ("tokenizer.json", "spiece.model")):
            from .families import TextSlot

            return load_tokenizer(candidate, TextSlot("t5xxl", tokenizer_class="T5TokenizerFast"))
    raise NodeInputError("t5xxl", "no T5 tokenizer: a single T5 file carries no vocabulary. Put the tokenizer "
                                  "folder of the model you downloaded (tokenizer.json or spiece.model, e.g. FLUX.1's "
                                  f"tokenizer_2/) in models/text_encoders/{T5_TOKENIZER}/")


def load_details(path: Path, module) -> dict[str, str]:
    """What loading changed about a file's weights, for the model report: the GGUF quantization
    kept in memory, or the narrow floats (fp8) stored in the file and upcast as they loaded."""
    if path.suffix == ".gguf":
        from gguf import GGMLQuantizationType

        kinds = sorted({GGMLQuantizationType(p.quant_type).name for p in module.parameters()
                        if getattr(p, "quant_type", None) is not None})
        kinds = [k for k in kinds if k not in ("F32", "F16", "BF16")]
        return {"quantization": "GGUF " + ", ".join(kinds)} if kinds else {}
    if path.is_file() and path.suffix in (".safetensors", ".sft"):
        from engine.model_files import safetensors_header

        stored = {entry["dtype"] for key, entry in safetensors_header(path).items() if key != "__metadata__"}
        narrow = sorted(d for d in stored if d.startswith("F8"))
        if narrow:
            loaded = str(next(module.parameters()).dtype).removeprefix("torch.")
            return {"upcast": f"{', '.join(narrow)} -> {loaded}"}
    return {}


def _upcast_state(state: dict, dtype) -> dict:
    """fp8 (and other narrow float) tensors upcast one by one to the run's dtype."""
    import torch

    narrow = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)}
    return {k: v.to(dtype) if v.dtype in narrow else v for k, v in state.items()}


def load_text_model(ctx: Context, slot, config_dir: Path, name: str, input_name: str):
    """(tokenizer, encoder) of one text-encoder slot from a transformers folder or a single file."""
    import transformers

    path = _resolve(ctx, TEXT_KINDS, name, input_name)
    dtype = torch_dtype(ctx.settings)
    cls = getattr(transformers, slot.encoder_class)
    if path.is_dir():
        from .loaders import load_tokenizer

        encoder = cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
        if slot.tokenizer_class.startswith("T5"):
            tokenizer = t5_tokenizer(ctx, path)
        else:
            tokenizer = load_tokenizer(path, slot)
        return tokenizer, encoder
    state = read_state_dict(ctx.settings, path, input_name)
    state = {k.removeprefix("transformer."): v for k, v in state.items()}   # some CLIP exports nest it
    encoder = text_model_from_state(slot, config_dir, state, dtype, path.name, input_name)
    return _single_file_tokenizer(ctx, slot, config_dir / slot.tokenizer), encoder


def text_model_from_state(slot, config_dir: Path, state: dict, dtype, source: str, input_name: str):
    """One text-encoder slot's model from its weights in transformers' key layout, architecture
    from the config folder; narrow floats (fp8) upcast to `dtype`. `source` names the weights in errors."""
    import transformers

    cls = getattr(transformers, slot.encoder_class)
    config = cls.config_class.from_pretrained(config_dir / slot.encoder)
    if slot.encoder_class.endswith("WithProjection"):
        state = _identity_projection(state, config)
    try:
        encoder = cls.from_pretrained(None, config=config, state_dict=_upcast_state(state, dtype), torch_dtype=dtype)
    except (RuntimeError, ValueError) as exc:
        raise NodeInputError(input_name, f"{source} does not fit a {slot.role} encoder: {exc}") from None
    missing = [n for n, p in encoder.named_parameters() if n not in state and p.is_meta]
    if missing:
        raise NodeInputError(input_name, f"{source} is not a {slot.role} text encoder "
                                         f"(missing {len(missing)} weights, e.g. {missing[0]})")
    return encoder.to(dtype)


def _identity_projection(state: dict, config) -> dict:
    """SD3 takes CLIP-L's pooled output unprojected, so the released clip_l files carry no
    text_projection; an identity stands in for it, as diffusers puts in for Stability's files."""
    import torch

    if "text_projection.weight" in state or config.projection_dim != config.hidden_size:
        return state
    return {**state, "text_projection.weight": torch.eye(config.hidden_size)}


def _single_file_tokenizer(ctx: Context, slot, folder: Path):
    """A single file's tokenizer: T5's from models/text_encoders/t5-tokenizer; CLIP's from the
    config folder when it carries a vocabulary, else the shipped CLIP vocabulary."""
    from .loaders import load_tokenizer

    if slot.tokenizer_class.startswith("T5"):
        return t5_tokenizer(ctx, None)
    if any((folder / f).is_file() for f in ("vocab.json", "tokenizer.json")):
        return load_tokenizer(folder, slot)
    return shared_clip_tokenizer(folder)


def _text_fingerprint(*, settings: Settings, family: str = "flux", clip_l: str = "", clip_g: str = "",
                      t5xxl: str = "", config: str = "auto", **_) -> str:
    return "|".join([family, config] + [_fingerprint(TEXT_KINDS, settings, n) if n else "-" for n in (clip_l, clip_g, t5xxl)])


@node("load_text_encoders", category="loaders", version=1, fingerprint=_text_fingerprint)
def load_text_encoders(ctx: Context, family: Literal["flux", "sd3"] = "flux",
                       clip_l: model_name("text_encoders") = "", clip_g: model_name("text_encoders") = "",
                       t5xxl: model_name("text_encoders") = "",
                       config: Annotated[str, Field(description="config folder describing single files: "
                                                                "'auto' is the family's released one")] = "auto"
                       ) -> TextEncoder:
    """Load a model's text encoders from separate files in models/text_encoders (or models/clip),
    ComfyUI's DualCLIPLoader / TripleCLIPLoader: FLUX takes clip_l + t5xxl, SD3.5 clip_l +
    clip_g (+ t5xxl, else zeros in its place). Each encoder loads once per file."""
    from .families import family as family_of

    fam = family_of(family)
    config_dir = _family_config(ctx, fam, None, config)
    names = {"clip_l": clip_l, "clip_g": clip_g, "t5xxl": t5xxl}
    device, dtype = ctx.settings.device, torch_dtype(ctx.settings)
    tokenizers, encoders, roles, digests = [], [], [], []
    for slot in fam.text:
        name = names.get(slot.role, "")
        if not name:
            if slot.role == "t5xxl" and family == "sd3":
                continue
            raise NodeInputError(slot.role, f"{fam.label} needs a {slot.role} text encoder")
        path = _resolve(ctx, TEXT_KINDS, name, slot.role)
        identity = f"{file_digest(path)}|{slot.role}|{device}|{dtype}"

        def load(slot=slot, name=name):
            tok, enc = load_text_model(ctx, slot, config_dir, name, slot.role)
            enc.eval().requires_grad_(False)
            if not ctx.settings.options.get("cpu_offload"):
                enc.to(device)
            return tok, enc

        tok, enc = ctx.models.get(("text_encoder", identity), load, name=name, kind=f"text_encoder ({slot.role})",
                                  describe=lambda parts, path=path: load_details(path, parts[1]))
        tokenizers.append(tok), encoders.append(enc), roles.append(slot.role), digests.append(identity)
    unused = [role for role, n in names.items() if n and role not in fam.roles]
    if unused:
        raise NodeInputError(unused[0], f"{fam.label} has no {unused[0]} text encoder")
    return TextEncoder(tokenizers, encoders, fam.name, identity="te:" + ";".join(digests), device=device,
                       dtype=dtype, roles=roles)


# ---------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------

def _vae_config(keys: dict[str, tuple], file_name: str) -> str:
    """The shipped config of a standalone VAE file: 16 latent channels is FLUX's ae, 4 is SD's,
    SDXL's when the name says xl (the weights' layout is the same; only the latent scale differs)."""
    conv_out = next((v for k, v in keys.items() if k.endswith("encoder.conv_out.weight")), None)
    if conv_out and conv_out[0] == 32:
        return "flux-dev"
    return "sdxl-base" if "xl" in file_name.lower() else "sd15"


@node("load_vae", category="loaders", version=1,
      fingerprint=lambda name, config="auto", *, settings, **_: fingerprint_model(settings, "vae", name) + f"|{config}")
def load_vae(ctx: Context, name: model_name("vae"),
             config: Annotated[str, Field(description="config folder whose vae/ describes the file: 'auto' "
                                                      "picks flux-dev for 16 latent channels, sd15 for 4 "
                                                      "(sdxl-base when the file's name says xl)")] = "auto"
             ) -> Vae:
    """Load a VAE on its own from models/vae (FLUX's ae.safetensors, an SD VAE file, a diffusers
    VAE folder or a pipeline folder's vae/); its latent scaling and shift come from its config."""
    from diffusers import AutoencoderKL

    path = resolve_model(ctx, "vae", name)
    refuse_pickle(ctx.settings, path)
    device, dtype = ctx.settings.device, torch_dtype(ctx.settings)
    if path.is_dir():
        config_dir = None
    elif config == "auto":
        config_dir = CONFIGS_DIR / _vae_config(single_file_keys(path, ctx.settings), path.name)
    else:
        config_dir = CONFIGS_DIR / config if (CONFIGS_DIR / config).is_dir() else resolve_model(ctx, "configs", config, "config")
    identity = f"{file_digest(path)}|{config_dir.name if config_dir else ''}|{device}|{dtype}"

    def load():
        if config_dir is None:
            subfolder = "vae" if (path / "vae" / "config.json").is_file() else None
            module = AutoencoderKL.from_pretrained(path, subfolder=subfolder, local_files_only=True,
                                                   torch_dtype=dtype)
        else:
            module = AutoencoderKL.from_single_file(str(path), config=str(config_dir), subfolder="vae",
                                                    local_files_only=True, torch_dtype=dtype)
        module.eval().requires_grad_(False)
        if not ctx.settings.options.get("cpu_offload"):
            module.to(device)
        return module

    module = ctx.models.get(("vae", identity), load, name=name, kind="vae",
                            describe=lambda module: load_details(path, module))
    return Vae(module, identity=f"vae:{identity}", device=device, dtype=dtype)
