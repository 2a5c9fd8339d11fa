"""Building diffusers' SD3 / FLUX pipelines on the very modules Loom loaded, for equivalence tests."""
from __future__ import annotations

SD3_SLOTS = ["", "_2", "_3"]    # text_encoder, text_encoder_2, text_encoder_3 (and their tokenizers)
FLUX_SLOTS = ["", "_2"]


def pipeline_parts(handles, slots: list[str]) -> dict:
    """The keyword arguments of a flow pipeline from Loom's (model, text encoder, VAE) handles."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    model, te, vae = handles
    parts = dict(zip([f"text_encoder{s}" for s in slots], te.encoders))
    parts.update(zip([f"tokenizer{s}" for s in slots], te.tokenizers))
    return dict(transformer=model.unet, vae=vae.vae,
                scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config), **parts)
