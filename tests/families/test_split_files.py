"""FLUX from the files people download, in ComfyUI's layout: a transformer file (or a GGUF one),
separate clip_l / t5xxl files and an ae file give what the diffusers folder gives."""
from __future__ import annotations

import pytest
import torch

from nodes.component_loaders import load_denoiser, load_text_encoders, load_vae
from nodes.latent import empty_latent
from nodes.loaders import load_checkpoint_handles
from nodes.sampling import run_sampler
from nodes.text import encode_text
from nodes.vae import vae_decode

PROMPT = "a red circle on a blue background"


def _image(ctx, model, te, vae):
    out = run_sampler(ctx, model, encode_text(ctx, te, PROMPT), empty_latent(vae, width=64, height=64),
                      seed=3, steps=3, cfg=1.0, scheduler="euler", guidance=3.5)
    return vae_decode(ctx, vae, out).pixels


@pytest.fixture
def folder_image(ctx):
    return _image(ctx, *load_checkpoint_handles(ctx, "tiny-flux"))


def test_split_files_give_the_folder_image(ctx, folder_image):
    model = load_denoiser(ctx, "tiny-flux.safetensors", config="tiny-flux")
    te = load_text_encoders(ctx, family="flux", clip_l="tiny-flux-clip_l.safetensors",
                            t5xxl="tiny-flux-t5xxl.safetensors", config="tiny-flux")
    vae = load_vae(ctx, "tiny-flux-ae.safetensors", config="tiny-flux")
    assert model.family == te.family == "flux" and te.roles == ["clip_l", "t5xxl"]
    torch.testing.assert_close(_image(ctx, model, te, vae), folder_image, atol=1e-5, rtol=1e-5)


def test_a_gguf_transformer_loads_quantized_and_samples_close_to_full_precision(ctx, folder_image):
    model = load_denoiser(ctx, "tiny-flux-Q8_0.gguf", config="tiny-flux")
    quantized = [n for n, p in model.unet.named_parameters() if type(p).__name__ == "GGUFParameter"]
    assert quantized, "the GGUF weights should stay quantized in memory"
    _, te, vae = load_checkpoint_handles(ctx, "tiny-flux")
    image = _image(ctx, model, te, vae)
    assert (image - folder_image).abs().mean() < 0.02 and image.std() > 0.01


def test_missing_t5_tokenizer_is_named(ctx, models_dir, tmp_path):
    import shutil

    from engine.errors import NodeInputError

    moved = tmp_path / "t5-tokenizer"
    shutil.move(models_dir / "text_encoders" / "t5-tokenizer", moved)
    from nodes.component_loaders import load_text_model
    from nodes.families import family

    try:
        with pytest.raises(NodeInputError, match="models/text_encoders/t5-tokenizer"):
            load_text_model(ctx, family("flux").text[1], models_dir / "configs" / "tiny-flux",
                            "tiny-flux-t5xxl.safetensors", "t5xxl")
    finally:
        shutil.move(moved, models_dir / "text_encoders" / "t5-tokenizer")


def test_flux_needs_both_of_its_encoders(ctx):
    from engine.errors import NodeInputError

    with pytest.raises(NodeInputError, match="t5xxl"):
        load_text_encoders(ctx, family="flux", clip_l="tiny-flux-clip_l.safetensors", config="tiny-flux")


def test_fp8_text_encoder_is_upcast_as_it_loads(ctx, models_dir):
    from safetensors.torch import load_file, save_file

    from nodes.component_loaders import load_text_model
    from nodes.families import family

    texts = models_dir / "text_encoders"
    state = load_file(str(texts / "tiny-flux-t5xxl.safetensors"))
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()}
    save_file(fp8, str(texts / "tiny-flux-t5xxl-fp8.safetensors"))
    _, encoder = load_text_model(ctx, family("flux").text[1], models_dir / "configs" / "tiny-flux",
                                 "tiny-flux-t5xxl-fp8.safetensors", "t5xxl")
    weight = encoder.encoder.block[0].layer[0].SelfAttention.q.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, fp8["encoder.block.0.layer.0.SelfAttention.q.weight"].float())


def test_sd3_split_files_give_the_folder_image(ctx):
    def image(model, te, vae):
        pos, neg = encode_text(ctx, te, PROMPT), encode_text(ctx, te, "")
        out = run_sampler(ctx, model, pos, empty_latent(vae, width=64, height=64), neg, seed=3, steps=3, cfg=4.0,
                          scheduler="euler")
        return vae_decode(ctx, vae, out).pixels

    folder = image(*load_checkpoint_handles(ctx, "tiny-sd3"))
    te = load_text_encoders(ctx, family="sd3", clip_l="tiny-sd3-clip_l.safetensors", clip_g="tiny-sd3-clip_g.safetensors",
                            t5xxl="tiny-sd3-t5xxl.safetensors", config="tiny-sd3")
    split = image(load_denoiser(ctx, "tiny-sd3.safetensors", config="tiny-sd3"), te,
                  load_vae(ctx, "tiny-sd3-ae.safetensors", config="tiny-sd3"))
    assert te.roles == ["clip_l", "clip_g", "t5xxl"]
    torch.testing.assert_close(split, folder, atol=1e-5, rtol=1e-5)


def test_sd3_without_t5_pads_as_diffusers_does(ctx):
    """No T5 file: zeros in its place, as StableDiffusion3Pipeline does with text_encoder_3=None."""
    from diffusers import StableDiffusion3Pipeline

    te = load_text_encoders(ctx, family="sd3", clip_l="tiny-sd3-clip_l.safetensors",
                            clip_g="tiny-sd3-clip_g.safetensors", config="tiny-sd3")
    model, _, vae = load_checkpoint_handles(ctx, "tiny-sd3")
    cond = encode_text(ctx, te, PROMPT)
    pipe = StableDiffusion3Pipeline(transformer=model.unet, vae=vae.vae, scheduler=None, text_encoder=te.encoders[0],
                                    tokenizer=te.tokenizers[0], text_encoder_2=te.encoders[1],
                                    tokenizer_2=te.tokenizers[1], text_encoder_3=None, tokenizer_3=None)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, PROMPT, PROMPT, do_classifier_free_guidance=False)
    width = model.unet.config.joint_attention_dim
    torch.testing.assert_close(torch.nn.functional.pad(cond.embeds, (0, width - cond.embeds.shape[-1])), embeds)
    torch.testing.assert_close(cond.pooled, pooled)
