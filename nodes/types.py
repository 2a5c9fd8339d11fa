"""Port types of the diffusion nodes: what flows along the edges of a graph.

Two kinds of values travel here:

* Values (Latent, Conditioning, Image, Mask): dataclasses of tensors, numbers,
  strings, lists and dicts. The engine's cache may persist them to disk and hand
  them back with every tensor ON THE CPU, so a node always moves its tensor
  inputs to `ctx.settings.device` itself.
* Model handles (DiffusionModel, TextEncoder, Vae): live objects wrapping torch
  modules. They are never persisted; their loader node re-creates them from the
  fingerprinted file, and `ctx.models` keeps one instance per file and device.
  A handle is never mutated in place by a node: patching nodes (LoRA,
  ControlNet, IP-Adapter) return a copy via `with_patch(...)`.

Conventions (shared by every node family):

* Image: float32 tensor [B, H, W, C] in 0..1, C = 3 (RGB), on the CPU.
* Mask: float32 tensor [B, H, W] in 0..1; 1 marks the area to (re)generate.
* Latent: [B, C, h, w] already multiplied by the VAE's scaling factor (and
  shifted where the VAE has a shift), i.e. what the UNet sees. h = H / the
  VAE's spatial factor, which comes from the VAE config
  (2 ** (len(block_out_channels) - 1)), never a hard-coded 8.
* Conditioning: prompt embeddings [B, T, D] (T a multiple of the encoder's
  context length when the prompt was chunked), plus SDXL pooled embeddings and
  micro-conditioning.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import torch

__all__ = [
    "Image", "Mask", "Latent", "Conditioning", "DiffusionModel", "TextEncoder", "Vae",
    "UNetHook", "StepInfo", "LoraSpec",
]


def float32() -> torch.dtype:
    """The default dtype of model handles; a factory so that declaring the port types (what
    the node catalogue needs) does not import torch."""
    import torch

    return torch.float32


class _PortType:
    """Lets pydantic check an optional port (`Conditioning | None`) by isinstance only: the
    engine validates values arriving at inputs that also accept a JSON literal (None here),
    and these classes hold tensors and modules pydantic has no schema for."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        from pydantic_core import core_schema

        return core_schema.is_instance_schema(cls)


# ---------------------------------------------------------------------------
# values (persistable)
# ---------------------------------------------------------------------------

@dataclass
class Image(_PortType):
    """A batch of RGB images: `pixels` float32 [B, H, W, 3] in 0..1 (ComfyUI's layout)."""

    pixels: torch.Tensor

    @property
    def batch(self) -> int:
        return self.pixels.shape[0]

    @property
    def height(self) -> int:
        return self.pixels.shape[1]

    @property
    def width(self) -> int:
        return self.pixels.shape[2]

    def limit_amounts(self) -> dict[str, int]:
        """What this batch counts against a run's limits (`engine.limits`)."""
        return {"width": self.width, "height": self.height, "pixels": self.width * self.height,
                "batch": self.batch}

    def to_nchw(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """[B, 3, H, W] in -1..1 (float32 unless `dtype` says otherwise), as a VAE or a ControlNet wants it."""
        return (self.pixels.to(device=device, dtype=dtype or float32()).permute(0, 3, 1, 2) * 2.0 - 1.0).contiguous()

    @classmethod
    def from_nchw(cls, x: torch.Tensor) -> "Image":
        """From [B, 3, H, W] in -1..1 (a VAE's output): clamped, float32, on the CPU."""
        pixels = (x.detach().float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
        return cls(pixels.cpu().contiguous())


@dataclass
class Mask(_PortType):
    """A batch of masks: `mask` float32 [B, H, W] in 0..1; 1 = regenerate this pixel."""

    mask: torch.Tensor


@dataclass
class Latent(_PortType):
    """Latents as the UNet sees them (already scaled by the VAE's scaling factor).

    samples         [B, C, h, w]
    batch_index     seed offset of each item: item i's noise comes from seed + batch_index[i],
                    so one seed gives the same image alone or anywhere in a batch
    noise_mask      [B, 1, h, w] or None; where 1 the sampler regenerates, elsewhere it keeps
                    `samples` (inpainting with an ordinary UNet)
    masked_image    [B, C, h, w] latents of the image with the hole blanked, or None; what a
                    9-channel inpainting UNet takes beside the mask
    """

    samples: torch.Tensor
    batch_index: list[int] | None = None
    noise_mask: torch.Tensor | None = None
    masked_image: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.samples.shape[0]

    def limit_amounts(self) -> dict[str, int]:
        """What this batch counts against a run's limits (`engine.limits`)."""
        return {"batch": self.batch}

    def offsets(self) -> list[int]:
        return list(self.batch_index) if self.batch_index is not None else list(range(self.batch))

    def replace(self, **changes: Any) -> "Latent":
        return dataclasses.replace(self, **changes)


@dataclass
class Conditioning(_PortType):
    """Encoded prompt(s), ready for the UNet's cross-attention.

    embeds          [B, T, D] (B is usually 1 and broadcast to the latent batch)
    pooled          [B, P] pooled text embeddings (SDXL's `text_embeds`), else None
    pad_chunk       [1, L, D] the encoding of an empty chunk, used to pad the shorter of two
                    conditionings when a chunked (> L tokens) prompt meets a short one
    family          model family the encoder belongs to ("sd1", "sd2", "sdxl", "sdxl_refiner", ...)
    original_size   SDXL micro-conditioning [height, width]; None = the image size being sampled
    target_size     idem
    crop_coords     [top, left]
    aesthetic_score SDXL refiner's micro-conditioning (None: 6.0 positive, 2.5 negative)
    text            the prompt text, for the PNG `parameters` chunk
    combined        further conditionings whose noise predictions the sampler averages with
                    this one's (conditioning_combine)
    guidance        distilled guidance for a guidance-distilled model (ComfyUI's FluxGuidance puts
                    it here); the sampler's own `guidance` input wins when given
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    pad_chunk: torch.Tensor | None = None
    family: str = "sd1"
    original_size: list[int] | None = None
    target_size: list[int] | None = None
    crop_coords: list[int] = field(default_factory=lambda: [0, 0])
    aesthetic_score: float | None = None
    text: str = ""
    combined: list["Conditioning"] = field(default_factory=list)
    guidance: float | None = None

    def entries(self) -> list["Conditioning"]:
        """This conditioning and those combined with it (conditioning_combine), flat."""
        return [dataclasses.replace(self, combined=[]), *self.combined]

    def replace(self, **changes: Any) -> "Conditioning":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------
# model handles (never persisted)
# ---------------------------------------------------------------------------

@dataclass
class LoraSpec(_PortType):
    """One LoRA applied to a model: file identity, where it is, and its weights."""

    name: str
    path: str
    digest: str
    strength_model: float = 1.0
    strength_clip: float = 1.0


@dataclass
class StepInfo(_PortType):
    """What a UNet hook sees at each denoising step (the CFG pair already batched)."""

    sample: torch.Tensor                 # latent model input [2B or B, C, h, w], scaled by the scheduler
    timestep: torch.Tensor
    encoder_hidden_states: torch.Tensor
    step_index: int                      # 0-based among the steps this sampler runs
    total_steps: int
    cfg_batched: bool                    # True when sample is [negative..., positive...]
    added_cond_kwargs: dict | None = None


class UNetHook(Protocol):
    """A patch applied at every UNet call (ControlNet, IP-Adapter, ...).

    Returns extra keyword arguments for the UNet call. The sampler adds up
    `down_block_additional_residuals` (lists, element-wise) and
    `mid_block_additional_residual` from several hooks; other keys are merged
    (`added_cond_kwargs` dicts are merged key by key, `cross_attention_kwargs` likewise).
    """

    def __call__(self, model: "DiffusionModel", step: StepInfo) -> dict[str, Any]: ...


@dataclass(eq=False)
class DiffusionModel(_PortType):
    """A denoising UNet with what the sampler needs to drive it.

    unet              the denoiser: a UNet, or the transformer of SD3 / FLUX
    family            the model family's name (nodes/families: "sd1", "sd2", "sdxl", "sdxl_refiner",
                      "sd3", "flux"); nodes ask the family how to encode, sample and decode
    scheduler_config  the checkpoint's scheduler config (prediction_type, betas, ...)
    latent_scale      pixels per latent pixel, from the checkpoint's VAE config (for SDXL
                      micro-conditioning and size checks)
    identity          stable description of the weights (file digest + device + dtype)
    loras             LoRAs to activate on the UNet while sampling
    hooks             UNet hooks (ControlNet, IP-Adapter), called at every step
    """

    unet: Any
    scheduler_config: dict
    family: str
    latent_scale: int
    identity: str
    device: str = "cpu"
    dtype: torch.dtype = field(default_factory=float32)
    loras: list[LoraSpec] = field(default_factory=list)
    hooks: list[Callable] = field(default_factory=list)

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def is_inpainting(self) -> bool:
        return self.in_channels == 9

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    def with_patch(self, *, loras: list[LoraSpec] | None = None,
                   hooks: list[Callable] | None = None) -> "DiffusionModel":
        """A new handle on the same UNet with LoRAs and/or hooks appended (the original is untouched)."""
        return dataclasses.replace(self, loras=[*self.loras, *(loras or [])],
                                   hooks=[*self.hooks, *(hooks or [])])


@dataclass(eq=False)
class TextEncoder(_PortType):
    """Tokenizer(s) and text encoder(s) of a checkpoint, in the order of the family's text slots
    (nodes/families): one for SD 1.x/2.x, CLIP-L + bigG for SDXL (the refiner has only bigG),
    CLIP-L + CLIP-G + T5-XXL for SD3, CLIP-L + T5-XXL for FLUX. `roles` names each encoder
    (clip_l, clip_g, t5xxl, ...); a slot a checkpoint leaves out (SD3 without T5) is absent.
    """

    tokenizers: list[Any]
    encoders: list[Any]
    family: str
    identity: str
    device: str = "cpu"
    dtype: torch.dtype = field(default_factory=float32)
    loras: list[LoraSpec] = field(default_factory=list)
    clip_skip: int = 0
    roles: list[str] = field(default_factory=list)

    def encoder_for(self, role: str) -> tuple[Any, Any] | None:
        """(tokenizer, encoder) of the named slot, or None when this checkpoint lacks it."""
        for r, tok, enc in zip(self.roles, self.tokenizers, self.encoders):
            if r == role:
                return tok, enc
        return None

    def with_patch(self, *, loras: list[LoraSpec] | None = None,
                   clip_skip: int | None = None) -> "TextEncoder":
        return dataclasses.replace(self, loras=[*self.loras, *(loras or [])],
                                   clip_skip=self.clip_skip if clip_skip is None else clip_skip)


@dataclass(eq=False)
class Vae(_PortType):
    """An AutoencoderKL and its latent conventions.

    scale_factor     pixels per latent pixel: 2 ** (len(block_out_channels) - 1)
    scaling_factor   latent multiplier from the VAE config (0.18215 for SD 1.x)
    shift_factor     latent shift (None for SD VAEs)
    """

    vae: Any
    identity: str
    device: str = "cpu"
    dtype: torch.dtype = field(default_factory=float32)

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float | None:
        return getattr(self.vae.config, "shift_factor", None)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)
