"""The shipped SD3 / SD3.5 and FLUX.1 config folders describe the released models.

Each component is built from its shipped config on the meta device (no memory, no weights)
and its parameter count compared with the released model's. Published figures: FLUX.1 dev
11 901 408 320 (schnell lacks the 10 229 760-parameter guidance embedder), T5-XXL encoder
4 762 310 656, CLIP-L 123 060 480 (+ 589 824 with SD3's projection), CLIP-G 694 659 840,
SD3 Medium MMDiT 2 028 328 000; SD3.5 Large and Medium are the published model totals
(9 048 410 595 and 3 371 793 763, CLIPs and VAE included, positional table counted as
weights) less the CLIPs, the VAE and that fixed table.
"""
from __future__ import annotations

import json

import pytest
import torch

from nodes.loaders import CONFIGS_DIR

DENOISER = {"sd3-medium": 2_028_328_000, "sd35-medium": 2_243_171_520, "sd35-large": 8_056_627_520,
            "flux-dev": 11_901_408_320, "flux-schnell": 11_891_178_560}
CLIP_L, CLIP_L_PROJ, CLIP_G, T5_XXL = 123_060_480, 123_650_304, 694_659_840, 4_762_310_656
TEXT = {"StableDiffusion3Pipeline": [CLIP_L_PROJ, CLIP_G, T5_XXL], "FluxPipeline": [CLIP_L, T5_XXL]}
VAE = 83_819_683


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(DENOISER))
def test_components_have_the_released_parameter_counts(name):
    import diffusers
    import transformers

    folder = CONFIGS_DIR / name
    index = json.loads((folder / "model_index.json").read_text())
    with torch.device("meta"):
        cls = getattr(diffusers, index["transformer"][1])
        denoiser = cls.from_config(cls.load_config(folder / "transformer"))
        vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(folder / "vae"))
        texts = []
        for slot in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if slot in index:
                text_cls = getattr(transformers, index[slot][1])
                texts.append(_count(text_cls(text_cls.config_class.from_pretrained(folder / slot))))
    assert _count(denoiser) == DENOISER[name]
    assert _count(vae) == VAE
    assert texts == TEXT[index["_class_name"]]


def test_latent_conventions_of_the_released_models():
    def cfg(name, part, file="config.json"):
        return json.loads((CONFIGS_DIR / name / part / file).read_text())

    assert (cfg("sd35-large", "vae")["scaling_factor"], cfg("sd35-large", "vae")["shift_factor"]) == (1.5305, 0.0609)
    assert (cfg("flux-dev", "vae")["scaling_factor"], cfg("flux-dev", "vae")["shift_factor"]) == (0.3611, 0.1159)
    assert cfg("sd35-large", "scheduler", "scheduler_config.json")["shift"] == 3.0
    assert cfg("flux-dev", "scheduler", "scheduler_config.json")["use_dynamic_shifting"] is True
    assert cfg("flux-schnell", "transformer")["guidance_embeds"] is False
    assert cfg("flux-dev", "tokenizer_2", "tokenizer_config.json")["model_max_length"] == 512


@pytest.mark.parametrize("keys, folder", [
    ([f"model.diffusion_model.joint_blocks.{i}.x_block.attn.qkv.weight" for i in range(38)], "sd35-large"),
    (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"], "sd3-medium"),
    (["model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight"], "sd35-medium"),
])
def test_sd3_single_files_pick_their_config(keys, folder):
    from nodes.loaders import config_folder_name, detect_family

    keys = {k: (1,) for k in keys}
    family, inpainting = detect_family(keys)
    assert config_folder_name(family, inpainting, keys) == folder
