"""Write the config folders in nodes/configs/ that SD3 / SD3.5 and FLUX.1 files load with.

    python tools/build_flow_configs.py

Like tools/build_sd_configs.py for SD 1.x/2.x/SDXL: the published hyperparameters of the
released models (SD3 Medium, SD3.5 Large, SD3.5 Medium; FLUX.1 dev and schnell), as
model_index.json plus each component's config and the tokenizers' settings. No weights and
no vocabularies: CLIP's comes from nodes/configs/clip-tokenizer, T5's from the model's own
tokenizer folder (see nodes/configs/README.md).
"""
from __future__ import annotations

import shutil

from build_sd_configs import CLIP_L, OPENCLIP_BIGG, OUT, _write

T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
              layer_norm_epsilon=1e-6, dropout_rate=0.1,
              pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=True)
AE16 = dict(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, norm_num_groups=32,
            block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, act_fn="silu", sample_size=1024,
            use_quant_conv=False, use_post_quant_conv=False, force_upcast=True, mid_block_add_attention=True)
SD3_VAE = dict(AE16, scaling_factor=1.5305, shift_factor=0.0609)
FLUX_VAE = dict(AE16, scaling_factor=0.3611, shift_factor=0.1159)
SD3_TEXT = [("text_encoder", "CLIPTextModelWithProjection", CLIP_L, "<|endoftext|>"),
            ("text_encoder_2", "CLIPTextModelWithProjection", OPENCLIP_BIGG, "!"),
            ("text_encoder_3", "T5EncoderModel", T5_XXL, 256)]
FLUX_TEXT = [("text_encoder", "CLIPTextModel", CLIP_L, "<|endoftext|>"),
             ("text_encoder_2", "T5EncoderModel", T5_XXL, 512)]
SD3_SCHED = dict(num_train_timesteps=1000, shift=3.0)
MMDIT = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
             joint_attention_dim=4096, pooled_projection_dim=2048)
FLUX_DIT = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                axes_dims_rope=[16, 56, 56])

# name -> (pipeline, (denoiser folder, class, config), vae, text slots, scheduler config)
MODELS = {
    "sd3-medium": ("StableDiffusion3Pipeline",
                   ("transformer", "SD3Transformer2DModel",
                    dict(MMDIT, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                         pos_embed_max_size=192)),
                   SD3_VAE, SD3_TEXT, SD3_SCHED),
    "sd35-medium": ("StableDiffusion3Pipeline",
                    ("transformer", "SD3Transformer2DModel",
                     dict(MMDIT, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                          pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=list(range(13)))),
                    SD3_VAE, SD3_TEXT, SD3_SCHED),
    "sd35-large": ("StableDiffusion3Pipeline",
                   ("transformer", "SD3Transformer2DModel",
                    dict(MMDIT, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                         pos_embed_max_size=192, qk_norm="rms_norm")),
                   SD3_VAE, SD3_TEXT, SD3_SCHED),
    "flux-dev": ("FluxPipeline", ("transformer", "FluxTransformer2DModel", dict(FLUX_DIT, guidance_embeds=True)),
                 FLUX_VAE, FLUX_TEXT,
                 dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)),
    "flux-schnell": ("FluxPipeline", ("transformer", "FluxTransformer2DModel",
                                      dict(FLUX_DIT, guidance_embeds=False)),
                     FLUX_VAE, FLUX_TEXT,
                     dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)),
}


def write_config(name: str, pipeline: str, denoiser: tuple, vae: dict, texts: list, scheduler: dict) -> None:
    import diffusers
    from transformers import CLIPTextConfig, T5Config

    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    subfolder, cls_name, config = denoiser
    cls = getattr(diffusers, cls_name)
    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__,
             subfolder: ["diffusers", cls_name], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "image_encoder": [None, None], "feature_extractor": [None, None]}
    version = {"_diffusers_version": diffusers.__version__}
    _write(folder / subfolder / "config.json", {"_class_name": cls_name, **version, **cls.extract_init_dict(config)[0]})
    _write(folder / "vae" / "config.json", {"_class_name": "AutoencoderKL", **version,
                                            **diffusers.AutoencoderKL.extract_init_dict(vae)[0]})
    _write(folder / "scheduler" / "scheduler_config.json",
           {"_class_name": "FlowMatchEulerDiscreteScheduler", **version,
            **diffusers.FlowMatchEulerDiscreteScheduler.extract_init_dict(scheduler)[0]})
    for text_folder, text_cls, cfg, pad_or_length in texts:
        tok_folder = text_folder.replace("text_encoder", "tokenizer")
        if text_cls == "T5EncoderModel":
            text_config = T5Config(**cfg).to_dict()
            tokenizer = {"tokenizer_class": "T5Tokenizer", "model_max_length": pad_or_length, "eos_token": "</s>",
                         "pad_token": "<pad>", "unk_token": "<unk>", "extra_ids": 100}
            index[tok_folder] = ["transformers", "T5TokenizerFast"]
        else:
            text_config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                                         pad_token_id=1, layer_norm_eps=1e-5, **cfg).to_dict()
            tokenizer = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                         "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                         "unk_token": "<|endoftext|>", "pad_token": pad_or_length,
                         "clean_up_tokenization_spaces": True}
            index[tok_folder] = ["transformers", "CLIPTokenizer"]
        text_config["architectures"] = [text_cls]
        _write(folder / text_folder / "config.json", text_config)
        _write(folder / tok_folder / "tokenizer_config.json", tokenizer)
        index[text_folder] = ["transformers", text_cls]
    _write(folder / "model_index.json", index)


def main() -> None:
    for name, spec in MODELS.items():
        write_config(name, *spec)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
