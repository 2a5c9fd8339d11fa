"""FLUX.1 (dev, schnell): a rectified-flow transformer over 16-channel latents read in 2x2 patches
("packed"), CLIP-L's pooled embedding + T5-XXL's tokens as conditioning, resolution-dependent
shift, and guidance distillation: dev takes the guidance value as an input (no negative pass);
true CFG with a negative prompt only when asked (cfg > 1).

Latents travel unpacked [B, 16, h, w] like every family's, so VAE, img2img and inpainting
nodes need nothing special; `predict` packs them for the transformer and unpacks its output.
"""
from __future__ import annotations

from . import ControlNetSupport, Family, TextSlot, has_component

T5_MAX_LENGTH = 512   # FluxPipeline's max_sequence_length


def _is_flux_keys(keys: dict[str, tuple]) -> bool:
    """Black Forest Labs' layout (double_blocks.*, as released and in GGUF files) or diffusers'."""
    return any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.", "single_transformer_blocks."))
               for k in keys)


def config_for_keys(keys: dict[str, tuple]) -> str:
    """dev has a guidance embedder (guidance_in.* / guidance_embedder.*), schnell has none."""
    return "flux-dev" if any("guidance_in." in k or "guidance_embedder." in k for k in keys) else "flux-schnell"


def _is_flux_folder(index: dict, folder) -> bool:
    return str(index.get("_class_name", "")).startswith("Flux") or (
        has_component(index, "transformer") and (index.get("text_encoder_2") or [None, None])[1] == "T5EncoderModel"
        and "text_encoder_3" not in index)


def encode(ctx, text_encoder, text: str, t5_text: str | None = None):
    """FLUX conditioning of one prompt: T5's tokens (weights apply to them) and CLIP-L's pooled
    embedding, as FluxPipeline.encode_prompt forms them; `t5_text` gives T5 its own prompt."""
    import torch

    from engine.errors import NodeInputError

    from .._common import on_device
    from ..lora import activate_text_encoders
    from ..text import _chunks, _to_cpu, _tokens, parse_weights
    from ..types import Conditioning
    from .sd3 import encode_t5

    fragments = parse_weights(text)
    clip, t5 = text_encoder.encoder_for("clip_l"), text_encoder.encoder_for("t5xxl")
    for role, pair in (("clip_l", clip), ("t5xxl", t5)):
        if pair is None:
            raise NodeInputError("text_encoder", f"this text encoder has no {role} model, which FLUX needs "
                                                 "(load clip_l and t5xxl with load_text_encoders)")
    activate_text_encoders(text_encoder)
    with on_device(ctx, *text_encoder.encoders), torch.no_grad():
        tokenizer, encoder = clip
        ids, _ = _chunks(tokenizer, *_tokens(tokenizer, fragments))[0]   # truncated to one window
        pooled = encoder(torch.tensor([ids], device=encoder.device), output_hidden_states=False).pooler_output
        embeds = encode_t5(*t5, fragments if t5_text is None else parse_weights(t5_text), T5_MAX_LENGTH)
    return Conditioning(_to_cpu(embeds), _to_cpu(pooled), family=text_encoder.family, text=text)


def pack(latents):
    """[B, C, h, w] -> [B, h/2 * w/2, C * 4]: each 2x2 patch one token."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens, h: int, w: int):
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device, dtype):
    """Position ids (0, row, column) of the packed tokens, for the rotary embedding."""
    import torch

    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def predict(model, latents, timestep, embeds, pooled, guidance, controlnet_block_samples=None,
            controlnet_single_block_samples=None, controlnet_blocks_repeat=False):
    """The transformer's velocity for unpacked latents, called as Flux(ControlNet)Pipeline calls it."""
    import torch

    transformer = model.unet
    b, _, h, w = latents.shape
    g = None
    if transformer.config.guidance_embeds:
        g = torch.full([b], float(guidance), device=latents.device, dtype=torch.float32)
    out = transformer(hidden_states=pack(latents), timestep=timestep.expand(b).to(latents.dtype) / 1000,
                      guidance=g, pooled_projections=pooled, encoder_hidden_states=embeds,
                      txt_ids=torch.zeros(embeds.shape[1], 3, device=latents.device, dtype=latents.dtype),
                      img_ids=image_ids(h, w, latents.device, latents.dtype),
                      controlnet_block_samples=controlnet_block_samples,
                      controlnet_single_block_samples=controlnet_single_block_samples,
                      controlnet_blocks_repeat=controlnet_blocks_repeat, return_dict=False)[0]
    return unpack(out, h, w)


def _is_controlnet_keys(keys: dict[str, tuple]) -> bool:
    """FluxControlNetModel's own layer: the projection of the packed hint latents."""
    return "controlnet_x_embedder.weight" in keys


def _takes_latents(controlnet) -> bool:
    """XLabs' ControlNets read the hint's pixels through their own hint block; the others, VAE latents."""
    return controlnet.input_hint_block is None


def controlnet_hint(ctx, vae, controlnet, pixels):
    """The hint as FluxControlNetPipeline prepares the control image: VAE latents, shifted and
    scaled (left unpacked, like every latent in Loom; the residual call packs them), or -1..1
    pixels for a ControlNet with its own hint block."""
    from ..vae import encode_pixels

    if not _takes_latents(controlnet):
        return pixels * 2 - 1
    return encode_pixels(ctx, vae, pixels * 2 - 1)


def controlnet_residuals(model, controlnet, hint, scale, mode, step):
    """The ControlNet's double- and single-block residuals for this step, as FluxControlNetPipeline
    computes them: from the positive prompt, with the ControlNet's own guidance input when it has
    one and a union ControlNet's control type; a true-CFG negative pass reuses the positive pass's
    residuals, as the pipeline does. XLabs' residuals repeat over the double blocks."""
    import torch

    from ._flow import per_row

    neg = step.negative_rows
    x = step.sample[neg:]
    rows, (_, _, h, w) = x.shape[0], x.shape
    cond = per_row(hint, rows, step.batch).to(device=x.device, dtype=controlnet.dtype)
    latents = _takes_latents(controlnet)
    g = None
    if controlnet.config.guidance_embeds:
        g = torch.full([rows], float(step.guidance), device=x.device, dtype=torch.float32)
    modes = None if mode is None else torch.full([rows, 1], mode, device=x.device, dtype=torch.long)
    embeds = step.encoder_hidden_states[neg:]
    blocks, singles = controlnet(
        hidden_states=pack(x).to(controlnet.dtype), controlnet_cond=pack(cond) if latents else cond,
        controlnet_mode=modes, conditioning_scale=scale, timestep=step.timestep.expand(rows).to(x.dtype) / 1000,
        guidance=g, pooled_projections=step.pooled[neg:], encoder_hidden_states=embeds,
        txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=x.dtype),
        img_ids=image_ids(h, w, x.device, x.dtype), return_dict=False)

    def with_negative_rows(samples):
        if samples is None or not neg:
            return samples
        return [torch.cat([s[:step.batch]] * (neg // step.batch) + [s]) for s in samples]
    return {"controlnet_block_samples": with_negative_rows(blocks),
            "controlnet_single_block_samples": with_negative_rows(singles),
            "controlnet_blocks_repeat": not latents}


FLUX = Family(
    name="flux", label="FLUX.1", latent_channels=16, packing=2, denoiser=("transformer", "FluxTransformer2DModel"),
    text=(TextSlot("clip_l"),
          TextSlot("t5xxl", "text_encoder_2", "tokenizer_2", "T5EncoderModel", "T5TokenizerFast")),
    encode="nodes.families.flux:encode", sampler="nodes.families._flow:run_flow_sampler",
    predict="nodes.families.flux:predict", guidance="distilled", default_guidance=3.5, linear_sigmas=True,
    default_scheduler="euler", pipeline="FluxPipeline", config="flux-dev", config_for_keys=config_for_keys,
    lora_loader="FluxLoraLoaderMixin",
    controlnet=ControlNetSupport("FluxControlNetModel", _is_controlnet_keys, hint="nodes.families.flux:controlnet_hint",
                                 residuals="nodes.families.flux:controlnet_residuals", takes_latents=_takes_latents),
    matches_keys=_is_flux_keys, matches_folder=_is_flux_folder,
    detection_order=10,
)
