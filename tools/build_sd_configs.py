"""Write the config folders in nodes/configs/ that single-file SD 1.x / 2.x / SDXL checkpoints load with.

    python tools/build_sd_configs.py

A single .safetensors checkpoint holds weights only; diffusers' `from_single_file(config=<folder>)`
needs the architecture of each component beside it. These folders hold exactly that, with the
public hyperparameters of the released models (runwayml SD 1.5, stabilityai SD 2.1 768-v and
2.1-base, SDXL 1.0 base and refiner): model_index.json, unet/, vae/, text_encoder(s)/,
scheduler/ configs and tokenizer settings. No weights. The CLIP vocabulary is shipped once in
nodes/configs/clip-tokenizer/ (tools/build_clip_tokenizer.py); each tokenizer folder holds only
its tokenizer_config.json (what differs between the models: the padding token).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "nodes" / "configs"

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              hidden_act="quick_gelu", projection_dim=768)
OPENCLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                  hidden_act="gelu", projection_dim=512)
OPENCLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                     hidden_act="gelu", projection_dim=1280)
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, set_alpha_to_one=False, steps_offset=1)
SD_UNET = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, in_channels=4, out_channels=4,
               down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
               up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
XL_SCHED = ("EulerDiscreteScheduler", dict(SD_BETAS, prediction_type="epsilon", timestep_spacing="leading",
                                           interpolation_type="linear", use_karras_sigmas=False))

# name -> (pipeline class, unet kwargs, vae kwargs, [(text folder, class, config, pad token)], scheduler, extra index)
MODELS = {
    "sd15": ("StableDiffusionPipeline",
             dict(SD_UNET, cross_attention_dim=768, attention_head_dim=8, sample_size=64),
             dict(sample_size=512, scaling_factor=0.18215),
             [("text_encoder", "CLIPTextModel", CLIP_L, "<|endoftext|>")],
             ("PNDMScheduler", dict(SD_BETAS, prediction_type="epsilon", skip_prk_steps=True)),
             dict(requires_safety_checker=False)),
    "sd21": ("StableDiffusionPipeline",
             dict(SD_UNET, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True,
                  upcast_attention=True, sample_size=96),
             dict(sample_size=768, scaling_factor=0.18215),
             [("text_encoder", "CLIPTextModel", OPENCLIP_H, "!")],
             ("DDIMScheduler", dict(SD_BETAS, prediction_type="v_prediction")),
             dict(requires_safety_checker=False)),
    "sd2-base": ("StableDiffusionPipeline",
                 dict(SD_UNET, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                      use_linear_projection=True, sample_size=64),
                 dict(sample_size=512, scaling_factor=0.18215),
                 [("text_encoder", "CLIPTextModel", OPENCLIP_H, "!")],
                 ("PNDMScheduler", dict(SD_BETAS, prediction_type="epsilon", skip_prk_steps=True)),
                 dict(requires_safety_checker=False)),
    "sdxl-base": ("StableDiffusionXLPipeline",
                  dict(block_out_channels=[320, 640, 1280], layers_per_block=2, in_channels=4, out_channels=4,
                       down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                       up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                       transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20],
                       cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                       addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, sample_size=128),
                  dict(sample_size=1024, scaling_factor=0.13025, force_upcast=True),
                  [("text_encoder", "CLIPTextModel", CLIP_L, "<|endoftext|>"),
                   ("text_encoder_2", "CLIPTextModelWithProjection", OPENCLIP_BIGG, "!")],
                  XL_SCHED, dict(force_zeros_for_empty_prompt=True)),
    "sdxl-refiner": ("StableDiffusionXLImg2ImgPipeline",
                     dict(block_out_channels=[384, 768, 1536, 1536], layers_per_block=2, in_channels=4, out_channels=4,
                          down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                          up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                          transformer_layers_per_block=4, attention_head_dim=[6, 12, 24, 24],
                          cross_attention_dim=1280, use_linear_projection=True, addition_embed_type="text_time",
                          addition_time_embed_dim=256, projection_class_embeddings_input_dim=2560, sample_size=128),
                     dict(sample_size=1024, scaling_factor=0.13025, force_upcast=True),
                     [("text_encoder_2", "CLIPTextModelWithProjection", OPENCLIP_BIGG, "!")],
                     XL_SCHED, dict(requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)),
}
# inpainting variants: the same model with a 9-channel UNet input (latents + mask + masked image)
INPAINTING = {"sd15-inpainting": ("sd15", "StableDiffusionInpaintPipeline"),
              "sdxl-base-inpainting": ("sdxl-base", "StableDiffusionXLInpaintPipeline")}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_config(name: str, pipeline: str, unet: dict, vae: dict, texts: list, scheduler: tuple, extra: dict) -> None:
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", scheduler[0]], **extra}
    for slot in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "feature_extractor",
                 "safety_checker", "image_encoder"):
        index.setdefault(slot, [None, None])
    if pipeline.startswith("StableDiffusionXL"):
        index.pop("safety_checker")
    else:
        index.pop("text_encoder_2"), index.pop("tokenizer_2")
    _write(folder / "unet" / "config.json", {"_class_name": "UNet2DConditionModel",
                                            "_diffusers_version": diffusers.__version__,
                                            **UNet2DConditionModel.extract_init_dict(unet)[0]})
    _write(folder / "vae" / "config.json",
           {"_class_name": "AutoencoderKL", "_diffusers_version": diffusers.__version__,
            **AutoencoderKL.extract_init_dict(dict(
                in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, act_fn="silu", **vae))[0]})
    sched_cls = getattr(diffusers, scheduler[0])
    _write(folder / "scheduler" / "scheduler_config.json",
           {"_class_name": scheduler[0], "_diffusers_version": diffusers.__version__,
            **sched_cls.extract_init_dict(scheduler[1])[0]})
    for text_folder, cls, cfg, pad in texts:
        config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                                pad_token_id=1, layer_norm_eps=1e-5, **cfg).to_dict()
        config["architectures"] = [cls]
        _write(folder / text_folder / "config.json", config)
        index[text_folder] = ["transformers", cls]
        tok_folder = text_folder.replace("text_encoder", "tokenizer")
        index[tok_folder] = ["transformers", "CLIPTokenizer"]
        _write(folder / tok_folder / "tokenizer_config.json",
               {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": pad, "clean_up_tokenization_spaces": True})
    _write(folder / "model_index.json", index)


def main() -> None:
    for name, spec in MODELS.items():
        write_config(name, *spec)
        print(f"wrote {OUT / name}")
    for name, (base, pipeline) in INPAINTING.items():
        _, unet, vae, texts, scheduler, extra = MODELS[base]
        write_config(name, pipeline, dict(unet, in_channels=9), vae, texts, scheduler, extra)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
