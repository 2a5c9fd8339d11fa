"""The denoising loop of the flow-matching transformer families (SD3, FLUX).

It follows diffusers' StableDiffusion3Pipeline and FluxPipeline (and their img2img and
inpaint variants) step by step, so that given the same components, conditioning and noise
it returns the same latents; what differs between the families (the denoiser call, latent
packing, the sigma schedule) comes from the family. Latents travel unpacked, [B, C, h, w],
scaled and shifted as the VAE node leaves them, so img2img, inpainting and decoding work
alike for every family. The noise rule is the UNet sampler's (nodes/sampling.py): pure
noise for an empty or masked latent from the first step, else noise mixed into the latent
at the first timestep run (img2img), or none for a hand-off (add_noise false).

Hooks on the model (ControlNets) are called at every step with a `FlowStepInfo`, as the UNet
sampler calls them; what they return (the ControlNets' residuals) is summed across hooks
and handed to the family's `predict`, which knows where its denoiser takes them.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from engine.context import Context
from engine.errors import NodeInputError

from .._common import no_grad, on_device, seeded_noise
from ..types import Conditioning, DiffusionModel, Latent, StepInfo
from . import Family, family

# sampler names (the `sample` node's) that have a flow-matching implementation in diffusers
FLOW_SCHEDULERS = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "heun": ("FlowMatchHeunDiscreteScheduler", {}),
    "lcm": ("FlowMatchLCMScheduler", {}),
}
# `schedule` values that map to options of the flow-matching schedulers; "simple" and "sgm_uniform"
# (ComfyUI's defaults for these models) space the steps evenly over the shifted schedule, as the
# pipelines' own default does
FLOW_SCHEDULES = {"default": {}, "simple": {}, "sgm_uniform": {}, "karras": {"use_karras_sigmas": True},
                  "exponential": {"use_exponential_sigmas": True}, "beta": {"use_beta_sigmas": True}}


@dataclass
class FlowStepInfo(StepInfo):
    """What a hook sees at each flow-matching step: the denoiser's input rows ([negatives...,
    positives...] under guidance, each `batch` images), their embeddings and pooled embeddings,
    the distilled guidance value, how many leading rows are the negative pass, and the run's
    context (for hooks that prepare inputs with other models, e.g. a hint through the VAE)."""

    pooled: Any = None
    guidance: float | None = None
    batch: int = 1
    negative_rows: int = 0
    ctx: Any = None


def per_row(tensor, rows: int, batch: int):
    """One image's or one per image's worth of `tensor` ([1 or batch, ...]) laid out for `rows`
    denoiser rows: repeated over the batch and the guidance groups."""
    import torch

    if tensor.shape[0] == 1:
        return tensor.repeat(rows, *[1] * (tensor.ndim - 1))
    if tensor.shape[0] != batch:
        raise NodeInputError("hint", f"{tensor.shape[0]} hint images for a batch of {batch} "
                                     "(give one for all, or one per image)")
    return torch.cat([tensor] * (rows // batch))


def _add_residuals(into: dict, extra: dict) -> None:
    """Several hooks' residuals add up entry by entry, as diffusers' Multi ControlNet models sum them;
    other values (flags) are taken as they come."""
    import torch

    for key, value in extra.items():
        if value is None:
            continue
        if key not in into:
            into[key] = list(value) if isinstance(value, (list, tuple)) else value
        elif isinstance(value, (list, tuple)):
            into[key] = [a + b for a, b in zip(into[key], value)]
        elif isinstance(value, torch.Tensor):
            into[key] = into[key] + value
        else:
            into[key] = value


def make_flow_scheduler(name: str, config: dict, schedule: str = "default"):
    """A fresh flow-matching scheduler of the named kind, from the checkpoint's scheduler config."""
    import diffusers

    if name not in FLOW_SCHEDULERS:
        raise NodeInputError("scheduler", f"{name!r} has no flow-matching version; flow-matching models "
                                          f"sample with one of {', '.join(FLOW_SCHEDULERS)}")
    if schedule not in FLOW_SCHEDULES:
        raise NodeInputError("schedule", f"schedule {schedule!r} does not apply to flow matching "
                                         f"(one of {', '.join(FLOW_SCHEDULES)})")
    class_name, overrides = FLOW_SCHEDULERS[name]
    cls = getattr(diffusers, class_name)
    accepted = set(inspect.signature(cls.__init__).parameters)
    options = {**overrides, **FLOW_SCHEDULES[schedule]}
    missing = [k for k in options if k not in accepted]
    if missing:
        raise NodeInputError("schedule", f"the {name} flow scheduler has no {schedule} sigmas")
    return cls.from_config(config, **options)


def calculate_shift(seq_len: int, config: dict) -> float:
    """Resolution-dependent shift `mu`: linear in the image's token count (FLUX, dynamic SD3.5)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    return seq_len * m + base_shift - m * base_len


def _set_timesteps(sched, fam: Family, steps: int, seq_len: int, device) -> None:
    """As the family's pipeline sets them: FLUX passes linear sigmas 1 .. 1/steps, and a
    scheduler with dynamic shifting gets `mu` from the image's token count."""
    import numpy as np

    params = set(inspect.signature(sched.set_timesteps).parameters)
    kwargs: dict[str, Any] = {}
    if fam.linear_sigmas and "sigmas" in params:
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
    if sched.config.get("use_dynamic_shifting") and "mu" in params:
        kwargs["mu"] = calculate_shift(seq_len, dict(sched.config))
    sched.set_timesteps(steps, device=device, **kwargs)


def _conditioning(groups: list[list[Conditioning]], batch: int, device, dtype, width: int | None):
    """(sequence embeddings [G*B, T, width], pooled [G*B, P]) for the conditioning groups in order;
    narrower embeddings (SD3 without T5) are zero-padded to the denoiser's context width."""
    import torch
    import torch.nn.functional as F

    entries = [c for group in groups for c in group]
    length = max(c.embeds.shape[1] for c in entries)

    def per_batch(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device=device, dtype=dtype)
        return t if t.shape[0] == batch else t[:1].repeat(batch, *[1] * (t.ndim - 1))

    embeds, pooled = [], []
    for c in entries:
        if c.pooled is None:
            raise NodeInputError("positive", "this model needs conditioning with pooled text embeddings "
                                             "(encode the prompt with its own text encoders)")
        if c.embeds.shape[1] != length:
            raise NodeInputError("negative", f"conditionings of different token lengths ({c.embeds.shape[1]} "
                                             f"and {length}) cannot be batched")
        e = c.embeds if width is None or c.embeds.shape[-1] >= width else F.pad(c.embeds, (0, width - c.embeds.shape[-1]))
        embeds.append(per_batch(e))
        pooled.append(per_batch(c.pooled))
    return torch.cat(embeds), torch.cat(pooled)


def _zeros_like(cond: Conditioning) -> Conditioning:
    import torch

    return cond.replace(embeds=torch.zeros_like(cond.embeds), pooled=torch.zeros_like(cond.pooled),
                        pad_chunk=None, combined=[], text="")


def _average(pred, n: int):
    import torch

    return torch.stack(pred.chunk(n)).mean(0) if n > 1 else pred


@no_grad
def run_flow_sampler(ctx: Context, model: DiffusionModel, positive: Conditioning, latent: Latent,
                     negative: Conditioning | None = None, seed: int = 0, steps: int = 20, cfg: float = 7.0,
                     scheduler: str = "euler", karras: bool = False, denoise: float = 1.0,
                     start_step: int = 0, end_step: int = 10000, add_noise: bool = True,
                     schedule: str = "default", guidance: float | None = None) -> Latent:
    """Flow-matching sampling of an SD3 or FLUX transformer (what `sample` runs for these families)."""
    import torch

    fam = family(model.family)
    transformer, device = model.unet, model.device
    dtype = transformer.dtype
    predict = fam.function("predict")

    # 1. Check inputs
    channels = latent.samples.shape[1]
    if channels != fam.latent_channels:
        raise NodeInputError("latent", f"latent has {channels} channels, {fam.label} expects "
                                       f"{fam.latent_channels} (make it with this model's VAE)")
    batch, _, h, w = latent.samples.shape
    if h % fam.packing or w % fam.packing:
        raise NodeInputError("latent", f"{fam.label} reads the latent in {fam.packing}x{fam.packing} patches: "
                                       f"its size {w}x{h} must be a multiple of {fam.packing} (an image size "
                                       f"a multiple of {fam.packing * model.latent_scale})")
    if start_step >= min(end_step, steps):
        raise NodeInputError("start_step", f"start_step {start_step} leaves no step to run "
                                           f"(steps {steps}, end_step {end_step})")
    if karras:
        schedule = "karras"

    # 2. Guidance: classifier-free guidance on a batched [negatives..., positives...] pair for CFG
    #    families when cfg > 1; a distilled family takes `guidance` as an input of the denoiser and
    #    adds a separate negative pass ("true CFG") only when cfg > 1 and a negative is given
    positives = positive.entries()
    if fam.guidance == "distilled":
        do_cfg = cfg > 1.0 and negative is not None
        if guidance is None:
            guidance = positive.guidance if positive.guidance is not None else fam.default_guidance
    else:
        do_cfg = cfg > 1.0
    negatives = (negative.entries() if negative is not None else [_zeros_like(positive)]) if do_cfg else []
    groups = [negatives, positives] if do_cfg else [positives]
    embeds, pooled = _conditioning(groups, batch, device, dtype,
                                   getattr(transformer.config, "joint_attention_dim", None))

    # 3. Timesteps: `steps` spread over the (shifted) flow schedule; run the slice [begin, end)
    sched = make_flow_scheduler(scheduler, model.scheduler_config, schedule)
    patch = fam.packing if fam.packing > 1 else getattr(transformer.config, "patch_size", 1)
    _set_timesteps(sched, fam, steps, (h // patch) * (w // patch), device)
    order = getattr(sched, "order", 1)
    # the flow pipelines' get_timesteps: the start is rounded down, so 8 steps at 0.6 run 5, not 4
    begin = max(start_step, int(max(steps - min(steps * denoise, steps), 0)))
    end = min(end_step, steps)
    if begin >= end:
        raise NodeInputError("denoise", f"denoise {denoise} with {steps} steps leaves no step to run")
    timesteps = sched.timesteps[begin * order:end * order]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(begin * order)

    # 4. Latents: per-item seeded noise, then pure noise or noise mixed into the input latent
    noise, _ = seeded_noise(tuple(latent.samples.shape), seed, latent.offsets())
    noise = noise.to(device=device, dtype=dtype)
    init_latents = latent.samples.to(device=device, dtype=dtype)
    mask = latent.noise_mask.to(device=device, dtype=dtype) if latent.noise_mask is not None else None
    if begin == 0 and (mask is not None or not init_latents.any()):
        latents = noise
    elif add_noise:
        latents = sched.scale_noise(init_latents, timesteps[:1].repeat(batch), noise)
    else:
        latents = init_latents

    # 5. Denoising loop
    from ..lora import activate_unet

    activate_unet(model)
    total = len(timesteps)
    n_neg, n_pos = len(negatives), len(positives)
    with on_device(ctx, transformer):
        for i, t in enumerate(timesteps):
            x = torch.cat([latents] * (n_neg + n_pos)) if do_cfg or n_pos > 1 else latents
            residuals: dict[str, Any] = {}
            for hook in model.hooks:
                _add_residuals(residuals, hook(model, FlowStepInfo(
                    x, t, embeds, i, total, do_cfg, pooled=pooled, guidance=guidance, batch=batch,
                    negative_rows=n_neg * batch, ctx=ctx)) or {})
            pred = predict(model, x, t, embeds, pooled, guidance, **residuals)
            if do_cfg:
                uncond, cond = _average(pred[:n_neg * batch], n_neg), _average(pred[n_neg * batch:], n_pos)
                pred = uncond + cfg * (cond - uncond)
            else:
                pred = _average(pred, n_pos)
            latents = sched.step(pred, t, latents, return_dict=False)[0]
            if mask is not None:
                known = init_latents
                if i < total - 1:
                    known = sched.scale_noise(init_latents, timesteps[i + 1:i + 2].repeat(batch), noise)
                latents = (1 - mask) * known + mask * latents
            ctx.progress(i + 1, total)

    return latent.replace(samples=latents.float().cpu())
