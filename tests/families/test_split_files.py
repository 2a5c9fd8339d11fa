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
