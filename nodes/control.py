"""ControlNet: load a ControlNet, and patch a diffusion model so the sampler applies it.

Applying a ControlNet returns a copy of the model handle with one more hook (the shared
denoiser is untouched). At every denoiser call the hook runs the ControlNet on the same
latent input, timestep and prompt embeddings, scales its residuals by `strength` while
the step lies inside [start, end) of the schedule (diffusers' control_guidance_start/end
rule), and hands them to the sampler, which sums the residuals of every hook. Several
ControlNets at once are several chained apply nodes, each with its own hint, strength and
range, exactly what diffusers' Multi ControlNet models compute.

Two kinds: UNet ControlNets (SD 1.x, 2.x, SDXL; the hint goes in as pixels) and the
transformer ControlNets a family declares (SD3's, FLUX's: nodes/families), which take the
hint as latents of the model's VAE and whose residual call the family module makes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.models import file_digest
from engine.node import node
from engine.settings import Settings
from engine.types import model_name

from ._common import fingerprint_model, read_state_dict, resolve_model, torch_dtype
from .control_types import ControlNet
from .families import family, families
from .types import DiffusionModel, Image, StepInfo, Vae

if TYPE_CHECKING:
    import torch

def _single_file_config(ctx: Context, path: Path, config: str) -> Path:
    """The config folder or file for a single-file ControlNet: the `config` input (a folder
    under models/configs) or a `<name>.json` / `<name>/config.json` beside the file."""
    if config != "auto":
        return resolve_model(ctx, "configs", config, "config")
    for candidate in (path.with_suffix(".json"), path.with_suffix("") / "config.json"):
        if candidate.is_file():
            return candidate
    raise NodeInputError("config", f"{path.name} is a single file and no config was found beside it "
                                   f"({path.with_suffix('.json').name}); name a config folder under "
                                   "models/configs with the config input")


def _config_file(path: Path) -> Path:
    return path if path.is_file() else path / "config.json"


def controlnet_family(config: dict, keys: dict | None = None) -> str | None:
    """The family whose own ControlNet architecture this is, from the config's `_class_name`
    or, without one, from a single file's keys; None for a UNet ControlNet."""
    declared = config.get("_class_name")
    for fam in families():
        support = fam.controlnet
        if support is None:
            continue
        if declared == support.model_class or (not declared and keys is not None and support.matches_keys(keys)):
            return fam.name
    return None


def _controlnet_class(kind: str | None):
    """The diffusers class of a family's own ControlNet, or the UNet ControlNet's."""
    import diffusers

    return getattr(diffusers, family(kind).controlnet.model_class) if kind else diffusers.ControlNetModel


def load_controlnet_model(ctx: Context, path: Path, config: str = "auto"):
    """The diffusers ControlNet model of a folder or single file, of the class its config or keys name."""
    import diffusers

    dtype = torch_dtype(ctx.settings)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NodeInputError("name", f"{path.name} is a folder without config.json "
                                         "(not a diffusers ControlNet)")
        cls = _controlnet_class(controlnet_family(json.loads((path / "config.json").read_text())))
        return cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
    state = read_state_dict(ctx.settings, path)
    cfg_path = _single_file_config(ctx, path, config)
    cfg = json.loads(_config_file(cfg_path).read_text())
    kind = controlnet_family(cfg, state)
    if kind or "controlnet_cond_embedding.conv_in.weight" in state:   # diffusers key layout
        model = _controlnet_class(kind).from_config(cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise NodeInputError("name", f"{path.name} does not fit its config: missing {missing[:3]}, "
                                         f"unexpected {unexpected[:3]}")
        return model.to(dtype)
    if any(k.startswith(("double_blocks.", "single_blocks.", "joint_blocks.", "transformer_blocks.")) for k in state):
        raise NodeInputError("name", f"{path.name} is a transformer ControlNet in its maker's own key layout "
                                     "(XLabs', Stability's); Loom reads SD3 and FLUX ControlNets in diffusers' "
                                     "layout: a folder, or a .safetensors with its config beside it")
    # original (ldm) key layout: diffusers converts it given a local config
    return diffusers.ControlNetModel.from_single_file(
        str(path), config=str(cfg_path if cfg_path.is_dir() else cfg_path.parent), local_files_only=True,
        torch_dtype=dtype)


def _controlnet_fingerprint(name: str, settings: Settings, config: str = "auto", **_) -> str:
    return fingerprint_model(settings, "controlnet", name) + f"|{config}"


@node("load_controlnet", category="control", version=1, fingerprint=_controlnet_fingerprint)
def load_controlnet(ctx: Context, name: model_name("controlnet"),
                    config: Annotated[str, Field(description="config for a single file: 'auto' reads "
                                                             "<name>.json beside it")] = "auto") -> ControlNet:
    """Load a ControlNet from models/controlnet: a diffusers folder, or a single .safetensors
    file (diffusers or original key layout) with its config; pickles only with allow_pickle."""
    path = resolve_model(ctx, "controlnet", name)
    device, dtype = ctx.settings.device, torch_dtype(ctx.settings)
    identity = f"{file_digest(path)}|{config}|{device}|{dtype}"

    def load():
        model = load_controlnet_model(ctx, path, config)
        return model.eval().requires_grad_(False).to(device)

    model = ctx.models.get(("controlnet", identity), load)
    return ControlNet(model, identity=f"controlnet:{identity}", device=device, dtype=dtype,
                      family=controlnet_family({"_class_name": type(model).__name__}))


class ControlNetHook:
    """The hook one apply_controlnet node adds: residuals of one ControlNet for one hint."""

    def __init__(self, controlnet: ControlNet, hint: torch.Tensor, strength: float,
                 start: float, end: float, vae: Vae | None = None, mode: int | None = None):
        self.controlnet = controlnet
        self.hint = hint            # [B, 3, H, W] in 0..1, CPU
        self.strength = strength
        self.start = start
        self.end = end
        self.vae = vae              # encodes the hint for a family's own ControlNet
        self.mode = mode            # a union ControlNet's control type
        self._encoded: dict[tuple[int, int], torch.Tensor] = {}

    def active(self, step: StepInfo) -> bool:
        # diffusers: keep = 1 - (i / n < start or (i + 1) / n > end)
        i, n = step.step_index, step.total_steps
        return not (i / n < self.start or (i + 1) / n > self.end)

    def pixels_at(self, model: DiffusionModel, step: StepInfo, scale: int | None = None) -> torch.Tensor:
        """The hint at the sampled image size (latent size x `scale`, by default the model's)."""
        import torch.nn.functional as F
        h, w = (s * (scale or model.latent_scale) for s in step.sample.shape[-2:])
        hint = self.hint
        if hint.shape[-2:] != (h, w):
            hint = F.interpolate(hint, size=(h, w), mode="bilinear", align_corners=False)
        return hint

    def condition(self, model: DiffusionModel, step: StepInfo) -> torch.Tensor:
        """The hint at the sampled image size, batched like the UNet input (CFG pairs included)."""
        import torch
        hint = self.pixels_at(model, step)
        rows = step.sample.shape[0]
        groups = 2 if step.cfg_batched else 1
        per_group = rows // groups
        if hint.shape[0] != per_group:
            hint = hint[:1].repeat(per_group, 1, 1, 1)
        hint = torch.cat([hint] * groups)
        return hint.to(device=model.device, dtype=self.controlnet.model.dtype)

    def family_residuals(self, model: DiffusionModel, step) -> dict:
        """A family's own ControlNet: the hint encoded once per sampled size, the family's call.
        The VAE that encodes the hint knows its pixel size best (a transformer loaded on its own
        has only the family's usual factor)."""
        support = family(self.controlnet.family).controlnet
        size = tuple(step.sample.shape[-2:])
        if size not in self._encoded:
            scale = self.vae.scale_factor if self.vae is not None else None
            self._encoded[size] = support.function("hint")(step.ctx, self.vae, self.controlnet.model,
                                                           self.pixels_at(model, step, scale))
        return support.function("residuals")(model, self.controlnet.model, self._encoded[size], self.strength,
                                              self.mode, step)

    def __call__(self, model: DiffusionModel, step: StepInfo) -> dict:
        if self.strength == 0 or not self.active(step):
            return {}
        if self.controlnet.family is not None:
            return self.family_residuals(model, step)
        net = self.controlnet.model
        sample = step.sample[:, :net.config.in_channels]    # an inpainting UNet's extra channels are not ControlNet input
        kwargs = {}
        if step.added_cond_kwargs is not None and getattr(net.config, "addition_embed_type", None):
            kwargs["added_cond_kwargs"] = step.added_cond_kwargs
        down, mid = net(sample.to(net.dtype), step.timestep, encoder_hidden_states=step.encoder_hidden_states,
                        controlnet_cond=self.condition(model, step), conditioning_scale=self.strength,
                        guess_mode=False, return_dict=False, **kwargs)
        return {"down_block_additional_residuals": list(down), "mid_block_additional_residual": mid}


Fraction = Annotated[float, Field(ge=0, le=1)]


def _kind(name: str | None) -> str:
    return f"a {family(name).label} ControlNet" if name else "a UNet ControlNet (SD 1.x / 2.x / SDXL)"


def check_fits(model: DiffusionModel, controlnet: ControlNet, vae: Vae | None, mode: int) -> None:
    """A NodeInputError naming the input when this ControlNet (or VAE, or mode) cannot guide this model."""
    fam = family(model.family)
    expected = fam.name if fam.controlnet is not None else None
    if controlnet.family != expected:
        raise NodeInputError("controlnet", f"this is {_kind(controlnet.family)}; the model is {fam.label}, "
                                           f"which takes {_kind(expected)}")
    net = controlnet.model
    modes = getattr(net.config, "num_mode", None)
    if modes is None and mode >= 0:
        raise NodeInputError("mode", "this ControlNet has a single control type: leave mode at -1")
    if modes is not None and not 0 <= mode < modes:
        raise NodeInputError("mode", f"this union ControlNet needs its control type: a mode from 0 to {modes - 1} "
                                     "(its model card lists them)")
    if expected is None:
        cross = getattr(net.config, "cross_attention_dim", None)
        unet_cross = getattr(model.unet.config, "cross_attention_dim", None)
        if cross is not None and unet_cross is not None and cross != unet_cross:
            raise NodeInputError("controlnet", f"this ControlNet was made for a model with cross-attention "
                                               f"width {cross}, the model has {unet_cross} (wrong model family?)")
        return
    if net.inner_dim != model.unet.inner_dim:
        raise NodeInputError("controlnet", f"this ControlNet was made for a {fam.label} transformer of width "
                                           f"{net.inner_dim}, the model's is {model.unet.inner_dim} "
                                           "(another size of the family?)")
    if not fam.controlnet.takes_latents(net):
        return
    if vae is None:
        raise NodeInputError("vae", f"{_kind(expected)} takes its hint as VAE latents: connect the model's VAE")
    if vae.latent_channels != fam.latent_channels:
        raise NodeInputError("vae", f"this VAE makes {vae.latent_channels}-channel latents, {fam.label} "
                                    f"uses {fam.latent_channels} (connect the model's own VAE)")


@node("apply_controlnet", category="control", version=1)
def apply_controlnet(model: DiffusionModel, controlnet: ControlNet, hint: Image,
                     strength: Annotated[float, Field(ge=0, le=10)] = 1.0,
                     start: Fraction = 0.0, end: Fraction = 1.0, vae: Vae | None = None,
                     mode: Annotated[int, Field(ge=-1, le=63, description="control type of a union ControlNet, "
                                                "numbered as its model card lists them; -1 for others")] = -1
                     ) -> DiffusionModel:
    """Patch the model with a ControlNet guided by `hint` (an edge map, depth map, pose ...,
    0..1 pixels; resized to the sampled size) at `strength`, active from `start` to `end`
    (fractions of the schedule). Chain several for multi-ControlNet. SD3 and FLUX ControlNets
    take the hint through the model's VAE: connect it to `vae`."""
    if start >= end:
        raise NodeInputError("end", f"end ({end}) must be after start ({start})")
    check_fits(model, controlnet, vae, mode)
    pixels = hint.pixels.permute(0, 3, 1, 2).float().contiguous()
    return model.with_patch(hooks=[ControlNetHook(controlnet, pixels, strength, start, end, vae,
                                                  mode if mode >= 0 else None)])
