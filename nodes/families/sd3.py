"""Stable Diffusion 3 / 3.5: an MMDiT transformer over 16-channel latents, flow matching with a
shift, CLIP-L + CLIP-G (pooled, penultimate layer) + T5-XXL text, classifier-free guidance.

Conditioning as StableDiffusion3Pipeline forms it: both CLIPs' penultimate hidden states side
by side, zero-padded to T5's width, followed by T5's tokens along the sequence; the pooled
embedding is both CLIPs' projections side by side. A checkpoint without T5 gets zeros in its
place, as diffusers does.
"""
from __future__ import annotations

from . import ControlNetSupport, Family, TextSlot, has_component

T5_MAX_LENGTH = 256   # StableDiffusion3Pipeline's max_sequence_length


def _is_sd3_keys(keys: dict[str, tuple]) -> bool:
    """Stability's layout (joint_blocks.*, as released) or diffusers' (context_embedder + pos_embed)."""
    return any(k.startswith(("model.diffusion_model.joint_blocks.", "joint_blocks.")) for k in keys) or (
        "context_embedder.weight" in keys and "pos_embed.proj.weight" in keys)


def config_for_keys(keys: dict[str, tuple]) -> str:
    """The shipped config of an SD3 single file: MMDiT-X (SD3.5 Medium) has a second attention in
    its first blocks; otherwise 38 blocks is SD3.5 Large and fewer SD3 Medium's layout."""
    if any(".x_block.attn2." in k or (k.startswith("transformer_blocks.0.attn2.")) for k in keys):
        return "sd35-medium"
    blocks = {k.split("joint_blocks.")[1].split(".")[0] for k in keys if "joint_blocks." in k}
    blocks |= {k.split(".")[1] for k in keys if k.startswith("transformer_blocks.")}
    return "sd35-large" if len(blocks) >= 38 or not blocks else "sd3-medium"


def encode(ctx, text_encoder, text: str):
    """SD3 conditioning of one prompt (see the module's docstring); `(word:1.3)` weights apply to
    every encoder's tokens."""
    import torch
    import torch.nn.functional as F

    from .._common import on_device
    from ..lora import activate_text_encoders
    from ..text import _apply_weights, _chunks, _hidden, _to_cpu, _tokens, parse_weights
    from ..types import Conditioning

    fragments = parse_weights(text)
    activate_text_encoders(text_encoder)
    with on_device(ctx, *text_encoder.encoders), torch.no_grad():
        clip_states, pooled = [], []
        for role in ("clip_l", "clip_g"):
            pair = text_encoder.encoder_for(role)
            if pair is None:
                raise _missing(role)
            tokenizer, encoder = pair
            ids, weights = _chunks(tokenizer, *_tokens(tokenizer, fragments))[0]  # truncated to one window
            hidden, pool = _hidden(text_encoder, encoder, torch.tensor([ids], device=encoder.device), True)
            clip_states.append(_apply_weights(hidden, weights))
            pooled.append(pool)
        clip = torch.cat(clip_states, dim=-1)
        t5 = text_encoder.encoder_for("t5xxl")
        if t5 is None:   # no T5 in this checkpoint: zeros where its tokens would be
            sequence = torch.zeros(1, T5_MAX_LENGTH, clip.shape[-1], dtype=clip.dtype, device=clip.device)
        else:
            sequence = encode_t5(*t5, fragments, T5_MAX_LENGTH)
            clip = F.pad(clip, (0, sequence.shape[-1] - clip.shape[-1]))
        embeds = torch.cat([clip, sequence.to(clip)], dim=-2)
    return Conditioning(_to_cpu(embeds), _to_cpu(torch.cat(pooled, dim=-1)), family=text_encoder.family, text=text)


def encode_t5(tokenizer, encoder, fragments: list[tuple[str, float]], max_length: int):
    """T5's last hidden state [1, max_length, D] for a weighted prompt: tokens truncated to
    max_length - 1, then </s> and padding, as the pipelines' tokenizer call gives them."""
    import torch

    from ..text import _apply_weights, _tokens

    ids, weights = _tokens(tokenizer, fragments)
    ids, weights = ids[:max_length - 1], weights[:max_length - 1]
    pad = max_length - 1 - len(ids)
    ids = [*ids, tokenizer.eos_token_id, *[tokenizer.pad_token_id] * pad]
    weights = [*weights, 1.0, *[1.0] * pad]
    hidden = encoder(torch.tensor([ids], device=encoder.device))[0]
    return _apply_weights(hidden, weights)


def _missing(role: str):
    from engine.errors import NodeInputError

    return NodeInputError("text_encoder", f"this text encoder has no {role} model, which SD3 needs (a checkpoint "
                                          "without its text encoders: load them with load_text_encoders)")


def predict(model, latents, timestep, embeds, pooled, guidance, block_controlnet_hidden_states=None):
    """The MMDiT's velocity for a batch of latents, as StableDiffusion3(ControlNet)Pipeline calls it."""
    return model.unet(hidden_states=latents, timestep=timestep.expand(latents.shape[0]),
                      encoder_hidden_states=embeds, pooled_projections=pooled,
                      block_controlnet_hidden_states=block_controlnet_hidden_states, return_dict=False)[0]


def _is_controlnet_keys(keys: dict[str, tuple]) -> bool:
    """SD3ControlNetModel's own layer: the patch embedding of the hint latents."""
    return "pos_embed_input.proj.weight" in keys


def controlnet_hint(ctx, vae, controlnet, pixels):
    """The hint's VAE latents, as StableDiffusion3ControlNetPipeline encodes the control image:
    shifted and scaled, except for ControlNets made without the shift (InstantX's, which also
    take zeros for the pooled projection: `force_zeros_for_pooled_projection`)."""
    from ..vae import encode_pixels

    latents = encode_pixels(ctx, vae, pixels * 2 - 1)
    if controlnet.config.force_zeros_for_pooled_projection:
        latents = latents + (vae.shift_factor or 0.0) * vae.scaling_factor
    return latents


def controlnet_residuals(model, controlnet, hint, scale, mode, step):
    """The ControlNet's block residuals for this step, computed as StableDiffusion3ControlNetPipeline
    does: on every row of the guidance batch with that row's embeddings. ControlNets without a
    patch embedding of their own (SD3.5 Large's) read the latents through the transformer's."""
    import torch

    from ._flow import per_row

    x, rows = step.sample, step.sample.shape[0]
    cond = per_row(hint, rows, step.batch).to(device=x.device, dtype=controlnet.dtype)
    hidden = x if controlnet.pos_embed is not None else model.unet.pos_embed(x)
    pooled = torch.zeros_like(step.pooled) if controlnet.config.force_zeros_for_pooled_projection else step.pooled
    embeds = step.encoder_hidden_states if controlnet.config.joint_attention_dim is not None else None
    blocks = controlnet(hidden_states=hidden.to(controlnet.dtype), controlnet_cond=cond, conditioning_scale=scale,
                        encoder_hidden_states=embeds, pooled_projections=pooled,
                        timestep=step.timestep.expand(rows), return_dict=False)[0]
    return {"block_controlnet_hidden_states": list(blocks)}


SD3 = Family(
    name="sd3", label="Stable Diffusion 3.5", latent_channels=16, denoiser=("transformer", "SD3Transformer2DModel"),
    text=(TextSlot("clip_l", "text_encoder", "tokenizer", "CLIPTextModelWithProjection"),
          TextSlot("clip_g", "text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection"),
          TextSlot("t5xxl", "text_encoder_3", "tokenizer_3", "T5EncoderModel", "T5TokenizerFast")),
    encode="nodes.families.sd3:encode", sampler="nodes.families._flow:run_flow_sampler",
    predict="nodes.families.sd3:predict", default_scheduler="euler",
    pipeline="StableDiffusion3Pipeline", config="sd35-large", config_for_keys=config_for_keys,
    lora_loader="SD3LoraLoaderMixin",
    controlnet=ControlNetSupport("SD3ControlNetModel", _is_controlnet_keys, hint="nodes.families.sd3:controlnet_hint",
                                 residuals="nodes.families.sd3:controlnet_residuals"),
    matches_keys=_is_sd3_keys,
    matches_folder=lambda index, folder: (str(index.get("_class_name", "")).startswith("StableDiffusion3")
                                          or (has_component(index, "transformer") and "text_encoder_3" in index)),
    detection_order=10,
)
