"""Tiny-model fixtures for the control, adapter, upscale and quality tests, built once per session.

Everything is random but seeded, saved in the real on-disk formats under a temporary models
folder, and loaded back through the real loader nodes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def randomise_zero_convs(controlnet, seed: int) -> None:
    """A fresh ControlNet's output convolutions are zero (no effect until trained): give them weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                       controlnet.controlnet_cond_embedding.conv_out]:
            module.weight.copy_(torch.randn(module.weight.shape, generator=g) * 0.3)
            module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)


def make_controlnet(unet, vae_factor: int, seed: int):
    from diffusers import ControlNetModel

    n = vae_factor.bit_length()          # factor 4 -> 3 embedding stages (2 down-samplings)
    torch.manual_seed(seed)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32)[:n])
    randomise_zero_convs(cn, seed)
    return cn.eval()


def make_clip_vision(folder: Path, seed: int = 0):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=24)
    model = CLIPVisionModelWithProjection(cfg).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Namespace of the tiny components (the pipeline and ControlNets) and the models folder."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from tools.make_tiny_model import make_sd_pipeline

    root = tmp_path_factory.mktemp("models")
    pipe = make_sd_pipeline(seed=0)
    for name in ("tiny-sd", "shapes-tiny"):
        pipe.save_pretrained(root / "checkpoints" / name)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    cn1 = make_controlnet(pipe.unet, factor, seed=1)
    cn2 = make_controlnet(pipe.unet, factor, seed=2)
    cn1.save_pretrained(root / "controlnet" / "tiny-cn")
    cn1.save_pretrained(root / "controlnet" / "shapes-tiny-canny")
    cn2.save_pretrained(root / "controlnet" / "tiny-cn-2")
    save_file(cn1.state_dict(), str(root / "controlnet" / "tiny-cn-single.safetensors"))
    (root / "controlnet" / "tiny-cn-single.json").write_text(json.dumps(dict(cn1.config)))
    # the avatar graph upscales with the project's shipped upscaler
    (root / "upscale_models").mkdir(exist_ok=True)
    shutil.copy(REPO / "models" / "upscale_models" / "shapes-2x-compact.safetensors", root / "upscale_models")
    return SimpleNamespace(root=root, pipe=pipe, cn1=cn1, cn2=cn2, factor=factor)


@pytest.fixture(scope="session")
def models_dir(tiny) -> Path:
    return tiny.root


def make_ip_adapter_state(unet, embed_dim: int, tokens: int = 4, seed: int = 0) -> dict:
    """IP-Adapter weights in the original flat layout: image_proj.* and ip_adapter.{1,3,..}.to_k_ip/to_v_ip."""
    g = torch.Generator().manual_seed(seed)
    x = unet.config.cross_attention_dim
    state = {"image_proj.proj.weight": torch.randn(tokens * x, embed_dim, generator=g) * 0.2,
             "image_proj.proj.bias": torch.randn(tokens * x, generator=g) * 0.1,
             "image_proj.norm.weight": 1 + torch.randn(x, generator=g) * 0.1,
             "image_proj.norm.bias": torch.randn(x, generator=g) * 0.1}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
        state[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, x, generator=g) * 0.3
        state[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, x, generator=g) * 0.3
        key += 2
    return state


@pytest.fixture(scope="session")
def ip_models(tiny):
    """models/ipadapter/tiny-ip.safetensors and models/clip_vision/tiny-clip-vision (with its processor)."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    enc_dir = tiny.root / "clip_vision" / "tiny-clip-vision"
    encoder = make_clip_vision(enc_dir)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(enc_dir)
    (tiny.root / "ipadapter").mkdir(exist_ok=True)
    save_file(make_ip_adapter_state(tiny.pipe.unet, encoder.config.projection_dim),
              str(tiny.root / "ipadapter" / "tiny-ip.safetensors"))
    return encoder, processor


@pytest.fixture(scope="session")
def upscale_models(tiny):
    """ESRGAN (x2) and RealESRGAN compact (x4) with random weights as .safetensors, a .pth copy,
    and a tiny SD x4 upscaler pipeline folder."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    folder = tiny.root / "upscale_models"
    folder.mkdir(exist_ok=True)
    torch.manual_seed(0)
    esrgan = ESRGAN(num_filters=8, num_blocks=1, scale=2).eval()
    compact = Compact(num_feat=8, num_conv=2, upscale=4).eval()
    save_file(esrgan.state_dict(), str(folder / "tiny-esrgan-x2.safetensors"))
    save_file(compact.state_dict(), str(folder / "tiny-compact-x4.safetensors"))
    torch.save({"params_ema": compact.state_dict()}, folder / "tiny-compact-x4.pth")
    make_sd_x4_upscaler(tiny).save_pretrained(folder / "tiny-sd-x4")
    return {"esrgan": esrgan, "compact": compact}


def make_sd_x4_upscaler(tiny):
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=7, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, norm_num_groups=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8, num_class_embeds=1000)
    p = tiny.pipe
    pipe = StableDiffusionUpscalePipeline(
        vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", steps_offset=1,
                                clip_sample=False, set_alpha_to_one=False),
        max_noise_level=350)
    return pipe
