"""The config folders shipped for single-file checkpoints describe the real released models.

Checked without downloads: every component is built from its shipped config on the meta
device (no memory, no weights) and its parameter count compared with the published model's;
the shared CLIP vocabulary encodes as CLIP does; each detected family maps to its folder.
"""
from __future__ import annotations

import json

import pytest
import torch

from nodes.loaders import CONFIGS_DIR, config_folder_name, detect_family, shared_clip_tokenizer

UNET = {"sd15": 859_520_964, "sd21": 865_910_724, "sd2-base": 865_910_724, "sdxl-base": 2_567_463_684,
        "sdxl-refiner": 2_259_526_660, "sd15-inpainting": 859_535_364}
TEXT = {"sd15": [123_060_480], "sd21": [340_387_840], "sd2-base": [340_387_840],
        "sdxl-base": [123_060_480, 694_659_840], "sdxl-refiner": [694_659_840]}
VAE = 83_653_863
ASTRONAUT = [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(UNET))
def test_components_have_the_published_parameter_counts(name):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = CONFIGS_DIR / name
    index = json.loads((folder / "model_index.json").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        texts = []
        for slot, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            if (index.get(slot) or [None])[0]:
                assert index[slot][1] == cls.__name__
                texts.append(_count(cls(CLIPTextConfig.from_pretrained(folder / slot))))
    assert _count(unet) == UNET[name]
    assert _count(vae) == VAE
    assert texts == TEXT[name.removesuffix("-inpainting")]


def test_latent_scaling_and_prediction_types():
    def cfg(name, part, file="config.json"):
        return json.loads((CONFIGS_DIR / name / part / file).read_text())

    assert cfg("sd15", "vae")["scaling_factor"] == 0.18215
    assert cfg("sdxl-base", "vae")["scaling_factor"] == 0.13025
    assert cfg("sd21", "scheduler", "scheduler_config.json")["prediction_type"] == "v_prediction"
    assert cfg("sd21", "unet")["sample_size"] * 8 == 768
    assert cfg("sd2-base", "scheduler", "scheduler_config.json")["prediction_type"] == "epsilon"
    assert cfg("sdxl-base", "unet")["transformer_layers_per_block"] == [1, 2, 10]
    assert cfg("sdxl-base", "unet")["addition_embed_type"] == "text_time"


@pytest.mark.parametrize("folder, pad", [("sd15/tokenizer", "<|endoftext|>"), ("sd21/tokenizer", "!"),
                                         ("sdxl-base/tokenizer", "<|endoftext|>"),
                                         ("sdxl-base/tokenizer_2", "!"), ("sdxl-refiner/tokenizer_2", "!")])
def test_shared_clip_tokenizer_encodes_as_clip(folder, pad):
    tok = shared_clip_tokenizer(CONFIGS_DIR / folder)
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a photograph of an astronaut riding a horse").input_ids == ASTRONAUT
    assert tok.pad_token == pad


def _keys(*prefixes: str, in_channels: int = 4) -> dict:
    keys = {p + "x": (1,) for p in prefixes}
    keys["model.diffusion_model.input_blocks.0.0.weight"] = (320, in_channels, 3, 3)
    return keys


@pytest.mark.parametrize("keys, folder, context", [
    (_keys("model.diffusion_model.", "cond_stage_model.transformer."), "sd15", 768),
    (_keys("model.diffusion_model.", "cond_stage_model.transformer.", in_channels=9), "sd15-inpainting", 768),
    (_keys("model.diffusion_model.", "cond_stage_model.model."), "sd21", 1024),
    (_keys("model.diffusion_model.", "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
     "sdxl-base", 2048),
    (_keys("model.diffusion_model.", "conditioner.embedders.0.model."), "sdxl-refiner", 1280),
])
def test_detected_family_picks_its_config_folder(keys, folder, context):
    family, inpainting = detect_family(keys)
    assert config_folder_name(family, inpainting) == folder
    unet = json.loads((CONFIGS_DIR / folder / "unet" / "config.json").read_text())
    assert unet["cross_attention_dim"] == context


def test_single_file_with_a_config_that_uses_the_shared_vocabulary(tmp_path, ctx, models_dir):
    """A single file whose config folder has only tokenizer settings loads with the shipped vocabulary."""
    import shutil

    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from nodes.loaders import load_checkpoint_handles
    from nodes.text import encode_prompt
    from tools.make_tiny_model import make_sd_pipeline, save_configs, to_original_sd

    pipe = make_sd_pipeline(seed=2)
    torch.manual_seed(2)
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=2, num_attention_heads=4,
                                                     max_position_embeddings=77, projection_dim=32))
    save_file(to_original_sd(pipe), str(models_dir / "checkpoints" / "tiny-clip-vocab.safetensors"))
    config = save_configs(pipe, models_dir / "configs" / "tiny-clip-vocab")
    shutil.rmtree(config / "tokenizer")
    shutil.copytree(CONFIGS_DIR / "sd15" / "tokenizer", config / "tokenizer")
    _, te, _ = load_checkpoint_handles(ctx, "tiny-clip-vocab", "tiny-clip-vocab")
    assert te.tokenizers[0]("a photograph of an astronaut riding a horse").input_ids == ASTRONAUT
    embeds, _, _ = encode_prompt(te, "a photograph of an astronaut riding a horse")
    assert embeds.shape == (1, 77, 32)
