"""The sampler node: denoise a latent with a UNet, a named scheduler and classifier-free guidance.

It follows diffusers' Stable Diffusion pipelines step by step (so that, given the same
components, prompt embeddings, noise and scheduler, it returns the same latents), with the
pieces a node graph needs on top: the latent comes in and goes out (img2img, inpainting,
hand-off between a base and a refiner sampler via start/end steps), the noise comes from
the seed per batch item, and every step reports progress and may be cancelled.

Noise rule: when sampling starts at the first step and the latent is empty (all zeros) or
carries an inpainting mask, the start is pure noise (times the scheduler's initial sigma);
otherwise noise is added to the latent at the first timestep run (img2img, denoise < 1), or
not at all for a hand-off (add_noise = false).
"""
from __future__ import annotations

import inspect
import math
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.limits import Limit
from engine.node import node

from ._common import no_grad, on_device, option, seeded_noise
from .families import family
from .lora import activate_unet
from .text import pad_tokens
from .types import Conditioning, DiffusionModel, Latent, StepInfo

if TYPE_CHECKING:
    import torch

SchedulerName = Literal["ddpm", "ddim", "euler", "euler_ancestral", "heun", "lms", "dpm_2", "dpm_2_ancestral",
                        "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde", "deis", "unipc", "lcm"]
# How the steps are spread over the noise levels: the scheduler's own spacing ("default"),
# Karras / exponential / beta sigmas, or a timestep spacing: "normal" (evenly from the
# noisiest step to the last), "simple" and "sgm_uniform" (evenly, ending one interval above
# zero), "ddim_uniform" (DDIM's leading steps, offset by one).
SigmaSchedule = Literal["default", "karras", "exponential", "beta", "normal", "simple", "sgm_uniform",
                        "ddim_uniform"]
SCHEDULE_OPTIONS: dict[str, dict] = {
    "default": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "normal": {"timestep_spacing": "linspace"},
    "simple": {"timestep_spacing": "trailing"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading", "steps_offset": 1},
}

SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}


def make_scheduler(name: str, config: dict, karras: bool = False, schedule: str = "default"):
    """A fresh diffusers scheduler of the named kind, configured from the checkpoint's config,
    spreading its steps by `schedule` (karras=True is schedule "karras")."""
    import diffusers

    if name not in SCHEDULERS:
        raise NodeInputError("scheduler", f"unknown scheduler {name!r} (one of {', '.join(SCHEDULERS)})")
    class_name, overrides = SCHEDULERS[name]
    cls = getattr(diffusers, class_name)
    overrides = dict(overrides)
    if karras and schedule not in ("default", "karras"):
        raise NodeInputError("schedule", f"karras and the {schedule} schedule exclude each other")
    if schedule not in SCHEDULE_OPTIONS:
        raise NodeInputError("schedule", f"unknown schedule {schedule!r} (one of {', '.join(SCHEDULE_OPTIONS)})")
    accepted = inspect.signature(cls.__init__).parameters
    for option_name, value in SCHEDULE_OPTIONS["karras" if karras else schedule].items():
        if option_name not in accepted:
            raise NodeInputError("karras" if karras else "schedule",
                                 f"the {name} scheduler has no {'karras' if karras else schedule} schedule")
        overrides[option_name] = value
    if "timestep_spacing" in overrides or "use_karras_sigmas" in overrides:
        # one way of spreading the steps at a time: the checkpoint's config may name another
        overrides.setdefault("use_karras_sigmas", False)
        for other in ("use_exponential_sigmas", "use_beta_sigmas"):
            if other in accepted:
                overrides.setdefault(other, False)
    return cls.from_config(config, **overrides)


def guidance_embedding(w: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The guidance-scale embedding of LCM-distilled UNets (as diffusers' LCM pipeline builds it)."""
    import torch
    w = w * 1000.0
    half = dim // 2
    emb = torch.exp(torch.arange(half, dtype=dtype) * -(math.log(10000.0) / (half - 1)))
    emb = w.to(dtype)[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 == 1 else emb


def _micro_ids(unet, cond: Conditioning, size: list[int], negative: bool) -> list[float] | None:
    """SDXL's add_time_ids for one conditioning: sizes + crop (+ aesthetic score for the refiner)."""
    if getattr(unet.config, "addition_embed_type", None) != "text_time":
        return None
    pooled_dim = cond.pooled.shape[-1]
    n = (unet.add_embedding.linear_1.in_features - pooled_dim) // unet.config.addition_time_embed_dim
    original = list(cond.original_size or size)
    if n == 5:
        score = cond.aesthetic_score if cond.aesthetic_score is not None else (2.5 if negative else 6.0)
        return original + list(cond.crop_coords) + [score]
    return original + list(cond.crop_coords) + list(cond.target_size or size)


def _batched_conditioning(model: DiffusionModel, groups: list[list[Conditioning]], batch: int,
                          size: list[int], negative_flags: list[bool]) -> tuple[torch.Tensor, dict | None]:
    """encoder_hidden_states [G*B, T, D] for the groups in order, and SDXL added_cond_kwargs."""
    import torch
    entries = [(c, neg) for group, neg in zip(groups, negative_flags) for c in group]
    pad = next((c.pad_chunk for c, _ in entries if c.pad_chunk is not None), None)
    length = max(c.embeds.shape[1] for c, _ in entries)
    device, dtype = model.device, model.unet.dtype

    def per_batch(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device=device, dtype=dtype)
        return t if t.shape[0] == batch else t[:1].repeat(batch, *[1] * (t.ndim - 1))

    embeds, pooled, time_ids = [], [], []
    for cond, neg in entries:
        e, _ = pad_tokens(cond.embeds, torch.empty(1, length, 1), pad)
        embeds.append(per_batch(e))
        ids = _micro_ids(model.unet, cond, size, neg) if cond.pooled is not None else None
        if ids is not None:
            pooled.append(per_batch(cond.pooled))
            time_ids.append(torch.tensor([ids], dtype=dtype, device=device).repeat(batch, 1))
    added = None
    if getattr(model.unet.config, "addition_embed_type", None) == "text_time":
        if len(pooled) != len(entries):
            raise NodeInputError("positive", "this SDXL model needs conditioning from an SDXL text "
                                             "encoder (pooled embeddings)")
        added = {"text_embeds": torch.cat(pooled), "time_ids": torch.cat(time_ids)}
    return torch.cat(embeds), added


def zero_conditioning(cond: Conditioning) -> Conditioning:
    """The conditioning with every embedding zeroed (the negative when none is given)."""
    import torch
    return cond.replace(embeds=torch.zeros_like(cond.embeds), pad_chunk=None, combined=[], text="",
                        pooled=None if cond.pooled is None else torch.zeros_like(cond.pooled),
                        aesthetic_score=None)


def _merge_hook_kwargs(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if key == "down_block_additional_residuals" and key in into:
            into[key] = [a + b for a, b in zip(into[key], value)]
        elif key == "mid_block_additional_residual" and key in into:
            into[key] = into[key] + value
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = {**into[key], **value}
        else:
            into[key] = value


_slicing_lock = threading.RLock()


@contextmanager
def attention_slicing(ctx: Context, unet):
    """With the attention_slicing option (true/"auto": half the heads at a time, "max": one,
    or a number), compute attention in slices for this sampling run, then restore the UNet's
    processors. Only layers on diffusers' default processors are sliced: custom ones (the
    IP-Adapter's) are left as they are. Slicing saves memory and gives the same result."""
    setting = option(ctx.settings, "attention_slicing", False)
    if setting in (False, None, 0, "false", "off"):
        yield
        return
    from diffusers.models.attention_processor import (Attention, AttnProcessor, AttnProcessor2_0,
                                                      SlicedAttnProcessor)

    with _slicing_lock:
        saved = {}
        for module in unet.modules():
            if isinstance(module, Attention) and type(module.processor) in (AttnProcessor, AttnProcessor2_0):
                heads = module.sliceable_head_dim
                size = heads // 2 if setting in (True, "auto", "true") else 1 if setting == "max" else int(setting)
                saved[module] = module.processor
                module.set_processor(SlicedAttnProcessor(max(1, min(size, heads))))
        try:
            yield
        finally:
            for module, processor in saved.items():
                module.set_processor(processor)


def run_sampler(ctx: Context, model: DiffusionModel, positive: Conditioning, latent: Latent,
                negative: Conditioning | None = None, *args: Any, guidance: float | None = None,
                **kwargs: Any) -> Latent:
    """The sampler (what the `sample` node runs), callable from other nodes and tests: the model
    family's own denoising loop (nodes/families) with the arguments of `run_unet_sampler`, plus
    `guidance` for guidance-distilled families (FLUX dev)."""
    fam = family(model.family)
    if guidance is not None:
        if fam.guidance != "distilled":
            raise NodeInputError("guidance", f"{fam.label} takes no distilled guidance value; "
                                             "cfg sets its classifier-free guidance")
        kwargs["guidance"] = guidance
    return fam.function("sampler")(ctx, model, positive, latent, negative, *args, **kwargs)


@no_grad
def run_unet_sampler(ctx: Context, model: DiffusionModel, positive: Conditioning, latent: Latent,
            negative: Conditioning | None = None, seed: int = 0, steps: int = 20, cfg: float = 7.0,
            scheduler: str = "dpmpp_2m", karras: bool = False, denoise: float = 1.0,
            start_step: int = 0, end_step: int = 10000, add_noise: bool = True,
            schedule: str = "default") -> Latent:
    """The denoising loop of the UNet families (SD 1.x, 2.x, SDXL)."""
    import torch
    unet, device = model.unet, model.device
    dtype = unet.dtype

    # 1. Check inputs
    if latent.samples.shape[1] != 4 and latent.samples.shape[1] != unet.config.in_channels:
        raise NodeInputError("latent", f"latent has {latent.samples.shape[1]} channels, the model expects "
                                       f"{unet.config.in_channels if not model.is_inpainting else 4}")
    if start_step >= min(end_step, steps):
        raise NodeInputError("start_step", f"start_step {start_step} leaves no step to run "
                                           f"(steps {steps}, end_step {end_step})")
    batch, _, h, w = latent.samples.shape
    size = [h * model.latent_scale, w * model.latent_scale]

    # 2. Guidance: classifier-free guidance on a batched [negatives..., positives...] pair,
    #    unless cfg <= 1 or the UNet is guidance-distilled (LCM: guidance goes in as an embedding)
    distilled = getattr(unet.config, "time_cond_proj_dim", None) is not None
    do_cfg = cfg > 1.0 and not distilled
    positives = positive.entries()
    negatives = (negative.entries() if negative is not None else [zero_conditioning(positive)]) if do_cfg else []
    groups, neg_flags = ([negatives, positives], [True, False]) if do_cfg else ([positives], [False])
    prompt_embeds, added_cond = _batched_conditioning(model, groups, batch, size, neg_flags)
    timestep_cond = None
    if distilled:
        w_emb = torch.full((batch,), cfg - 1.0)
        timestep_cond = guidance_embedding(w_emb, unet.config.time_cond_proj_dim, torch.float32).to(device, dtype)

    # 3. Timesteps: `steps` spread over the schedule; run the slice [begin, end)
    sched = make_scheduler(scheduler, model.scheduler_config, karras, schedule)
    sched.set_timesteps(steps, device=device)
    order = getattr(sched, "order", 1)
    begin = max(start_step, steps - min(int(steps * denoise), steps))
    end = min(end_step, steps)
    if begin >= end:
        raise NodeInputError("denoise", f"denoise {denoise} with {steps} steps leaves no step to run")
    timesteps = sched.timesteps[begin * order:end * order]
    if begin > 0 and hasattr(sched, "set_begin_index"):
        sched.set_begin_index(begin * order)

    # 4. Latents: per-item seeded noise, then pure noise or noise added to the input latent
    noise, generators = seeded_noise(tuple(latent.samples.shape), seed, latent.offsets())
    noise = noise.to(device=device, dtype=dtype)
    init_latents = latent.samples.to(device=device, dtype=dtype)
    mask = latent.noise_mask.to(device=device, dtype=dtype) if latent.noise_mask is not None else None
    if begin == 0 and (mask is not None or not init_latents.any()):
        latents = noise * sched.init_noise_sigma
    elif add_noise:
        latents = sched.add_noise(init_latents, noise, timesteps[:1].repeat(batch))
    else:
        latents = init_latents

    # 5. Inpainting inputs: a 9-channel UNet takes mask + masked-image latents; an ordinary one
    #    gets the known area blended back after every step
    inpaint_extra = None
    if model.is_inpainting:
        m = mask if mask is not None else torch.ones_like(latents[:, :1])
        masked = (latent.masked_image.to(device=device, dtype=dtype) if latent.masked_image is not None
                  else torch.zeros_like(latents))
        inpaint_extra = torch.cat([m, masked], dim=1)
        if do_cfg:
            inpaint_extra = torch.cat([inpaint_extra] * len(groups))
    blend = mask is not None and not model.is_inpainting

    # 6. Step keyword arguments the scheduler accepts (eta for DDIM, the per-item generators)
    step_params = set(inspect.signature(sched.step).parameters)
    step_kwargs: dict[str, Any] = {}
    if "eta" in step_params:
        step_kwargs["eta"] = 0.0
    if "generator" in step_params:
        step_kwargs["generator"] = generators

    # 7. Denoising loop
    activate_unet(model)
    total = len(timesteps)
    with on_device(ctx, unet), attention_slicing(ctx, unet):
        for i, t in enumerate(timesteps):
            model_input = torch.cat([latents] * len(groups)) if do_cfg else latents
            model_input = sched.scale_model_input(model_input, t)
            if inpaint_extra is not None:
                model_input = torch.cat([model_input, inpaint_extra], dim=1)
            kwargs: dict[str, Any] = {}
            if added_cond is not None:
                kwargs["added_cond_kwargs"] = dict(added_cond)
            for hook in model.hooks:
                extra = hook(model, StepInfo(model_input, t, prompt_embeds, i, total, do_cfg,
                                             kwargs.get("added_cond_kwargs")))
                _merge_hook_kwargs(kwargs, extra or {})
            noise_pred = unet(model_input, t, encoder_hidden_states=prompt_embeds,
                              timestep_cond=timestep_cond, return_dict=False, **kwargs)[0]
            if do_cfg:
                preds = noise_pred.chunk(len(negatives) + len(positives))
                uncond = torch.stack(preds[:len(negatives)]).mean(0) if len(negatives) > 1 else preds[0]
                cond_preds = preds[len(negatives):]
                text = torch.stack(cond_preds).mean(0) if len(cond_preds) > 1 else cond_preds[0]
                noise_pred = uncond + cfg * (text - uncond)
            elif len(positives) > 1:
                noise_pred = torch.stack(noise_pred.chunk(len(positives))).mean(0)
            latents = sched.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
            if blend:
                known = init_latents
                if i < total - 1:
                    known = sched.add_noise(init_latents, noise, timesteps[i + 1:i + 2].repeat(batch))
                latents = (1 - mask) * known + mask * latents
            ctx.progress(i + 1, total)

    return latent.replace(samples=latents.float().cpu())


@node("sample", category="sampling", version=1)
def sample(ctx: Context, model: DiffusionModel, positive: Conditioning, latent: Latent,
           negative: Conditioning | None = None,
           seed: Annotated[int, Field(ge=0, lt=2**64)] = 0,
           steps: Annotated[int, Field(ge=1, le=1000), Limit("steps")] = 20,
           cfg: Annotated[float, Field(ge=0, le=100)] = 7.0,
           scheduler: SchedulerName = "dpmpp_2m",
           karras: bool = False,
           denoise: Annotated[float, Field(ge=0, le=1)] = 1.0,
           start_step: Annotated[int, Field(ge=0, le=10000)] = 0,
           end_step: Annotated[int, Field(ge=1, le=10000)] = 10000,
           add_noise: bool = True,
           schedule: SigmaSchedule = "default",
           guidance: Annotated[float | None, Field(ge=0, le=100, description=(
               "distilled guidance of a guidance-distilled model (FLUX dev), empty: its default; "
               "there cfg > 1 with a negative prompt adds true CFG"))] = None) -> Latent:
    """Denoise a latent. Empty latent: text-to-image; encoded image with denoise < 1:
    image-to-image; latent with a noise mask: inpainting. Noise for batch item i comes from
    seed + i. start_step/end_step run part of the schedule, for handing a latent from a base
    sampler (end_step) to a refiner (start_step, add_noise false). Without a negative prompt,
    guidance uses zero embeddings. `schedule` spreads the steps over the noise levels (the
    scheduler's default, karras, exponential, beta, normal, simple, sgm_uniform, ddim_uniform)."""
    return run_sampler(ctx, model, positive, latent, negative, seed, steps, cfg, scheduler, karras,
                   denoise, start_step, end_step, add_noise, schedule, guidance=guidance)
