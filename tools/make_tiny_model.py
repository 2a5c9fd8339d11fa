"""Generate tiny random Stable Diffusion models (for tests and for running graphs before the
trained default model exists), in the real on-disk formats.

    python tools/make_tiny_model.py [--models models] [--name tiny-sd] [--sdxl [--sdxl-refiner NAME]] [--fp16]

Writes a diffusers folder `<name>/`; with --single-file also `<name>.safetensors` in the
original SD key layout plus its config folder under models/configs/<name>/ (what
load_checkpoint's `config` input names). Everything is built from configs with fixed seeds:
no download. The VAE has three blocks (4x down-sampling: 64x64 pixels -> 16x16x4 latents).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

WORDS = ("a an the of on in with and red green blue yellow white black circle square triangle "
         "background photo shape small big").split()


def make_tokenizer(folder: Path, max_length: int = 24):
    """A byte-level CLIP tokenizer: 256 byte symbols (+ `</w>`), merges making WORDS single tokens."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    seen = set(vocab_list)
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            merge = f"{current} {nxt}"
            current = current + nxt
            if merge not in merges:
                merges.append(merge)
            if current not in seen:
                seen.add(current)
                vocab_list.append(current)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    for f in ("vocab.json", "merges.txt"):
        (folder / f).unlink()
    return tok


def _clip_config(tokenizer, hidden: int = 32, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                          num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=tokenizer.model_max_length,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, projection_dim=projection or hidden)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
                         block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=16,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         scaling_factor=0.5)


def _scheduler(prediction_type: str = "v_prediction"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def make_sd_pipeline(seed: int = 0, in_channels: int = 4):
    """A ~1 M-parameter StableDiffusionPipeline (SD 1.x layout), deterministic for a seed."""
    import tempfile

    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(Path(tmp))
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    unet = UNet2DConditionModel(sample_size=16, in_channels=in_channels, out_channels=4,
                                block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8)
    pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_sdxl_pipeline(seed: int = 0):
    """A tiny StableDiffusionXLPipeline: two text encoders, pooled embeddings, micro-conditioning."""
    import tempfile

    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(Path(tmp) / "1")
        tokenizer_2 = make_tokenizer(Path(tmp) / "2")
    unet = _sdxl_unet(time_ids=6, cross_attention_dim=64)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_clip_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tokenizer_2, projection=32)),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=_scheduler("epsilon"),
        force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sdxl_unet(time_ids: int, cross_attention_dim: int):
    """A tiny SDXL-layout UNet: `time_ids` micro-conditioning values (6 for the base: sizes and
    crop; 5 for the refiner: sizes and aesthetic score) beside a 32-wide pooled text embedding."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, norm_num_groups=32,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                attention_head_dim=(2, 4), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=8 * time_ids + 32,
                                cross_attention_dim=cross_attention_dim)


def make_sdxl_refiner_pipeline(seed: int = 0, vae=None):
    """A tiny SDXL refiner (StableDiffusionXLImg2ImgPipeline): only the second, projecting text
    encoder, and micro-conditioning with an aesthetic score (5 time ids). Pass the base's VAE so
    the two share one latent space, as SDXL base and refiner do."""
    import tempfile

    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_2 = make_tokenizer(Path(tmp) / "2")
    unet = _sdxl_unet(time_ids=5, cross_attention_dim=32)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae if vae is not None else _vae(), text_encoder=None,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tokenizer_2, projection=32)),
        tokenizer=None, tokenizer_2=tokenizer_2, unet=unet, scheduler=_scheduler("epsilon"),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_t5_tokenizer(max_length: int = 32):
    """A T5 tokenizer (sentencepiece-style unigram, `</s>` appended) whose pieces are WORDS and
    single characters, built with the tokenizers library: T5's own vocabulary is not shipped."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in WORDS] + [(chr(c), -3.0) for c in range(33, 127)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=max_length)


def _t5_encoder(tokenizer, width: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_ff=width * 2, d_kv=8,
                                   num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                   feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))


def _vae16(**kw):
    """A tiny 16-channel VAE without quant convs (the SD3 / FLUX autoencoder layout)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, sample_size=64,
                         block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=16,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         use_quant_conv=False, use_post_quant_conv=False, **kw)


def make_sd3_pipeline(seed: int = 0):
    """A tiny StableDiffusion3Pipeline: an MMDiT with 2 joint blocks, CLIP-L + CLIP-G (projecting,
    32 wide each) + a 64-wide T5 encoder, a 16-channel VAE, flow matching with SD3's shift 3."""
    import tempfile

    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, tokenizer_2 = make_tokenizer(Path(tmp) / "1"), make_tokenizer(Path(tmp) / "2")
    tokenizer_3 = make_t5_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=16)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae16(scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=CLIPTextModelWithProjection(_clip_config(tokenizer, projection=32)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tokenizer_2, projection=32)), tokenizer_2=tokenizer_2,
        text_encoder_3=_t5_encoder(tokenizer_3, 64), tokenizer_3=tokenizer_3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    """A tiny FluxPipeline: one double and one single block over packed 16-channel latents, CLIP-L
    (pooled, 32 wide) + a 64-wide T5, FLUX's dynamic shift; guidance_embeds=False is schnell-like."""
    import tempfile

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(Path(tmp))
    tokenizer_2 = make_t5_tokenizer()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=transformer, scheduler=scheduler,
                        vae=_vae16(scaling_factor=0.3611, shift_factor=0.1159),
                        text_encoder=CLIPTextModel(_clip_config(tokenizer)), tokenizer=tokenizer,
                        text_encoder_2=_t5_encoder(tokenizer_2, 64), tokenizer_2=tokenizer_2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _randomise_zero_layers(net, seed: int):
    """A fresh ControlNet's output layers are zero (no effect until trained): give them weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def make_sd3_controlnet(seed: int = 0, **config):
    """A tiny SD3ControlNetModel shaped for make_sd3_pipeline's transformer, its zero-initialised
    output layers random so it visibly steers. By default InstantX's kind (own patch embedding,
    text attention, zero pooled projection, unshifted hint latents); use_pos_embed=False,
    joint_attention_dim=None, force_zeros_for_pooled_projection=False make SD3.5 Large's kind."""
    from diffusers import SD3ControlNetModel

    torch.manual_seed(seed)
    base = dict(sample_size=16, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8,
                num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
                out_channels=16, pos_embed_max_size=16)
    return _randomise_zero_layers(SD3ControlNetModel(**{**base, **config}), seed)


def make_flux_controlnet(seed: int = 0, **config):
    """A tiny FluxControlNetModel shaped for make_flux_pipeline's transformer (with its own guidance
    embedding), its zero-initialised output layers random so it visibly steers. By default
    InstantX's kind (packed VAE latents of the hint); num_mode makes a union ControlNet,
    conditioning_embedding_channels an XLabs-style one (a hint block reading pixels)."""
    from diffusers import FluxControlNetModel

    torch.manual_seed(seed)
    base = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
                axes_dims_rope=(4, 6, 6))
    return _randomise_zero_layers(FluxControlNetModel(**{**base, **config}), seed)


def write_lora(unet, folder: Path, weight_name: str, rank: int = 4, seed: int | None = None) -> Path:
    """A LoRA on the UNet's attention projections (the modules an LCM-LoRA adapts), in diffusers'
    key layout, loadable with peft / load_lora_weights. seed=None leaves peft's initialisation
    (lora_B = 0: the file loads and applies but changes nothing); a seed gives random weights."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if seed is not None:
        torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=seed is None,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet),
                                              weight_name=weight_name)
    unet.delete_adapters("default")
    return folder / weight_name


# ---------------------------------------------------------------------------
# diffusers -> original (LDM) key layout, for single-file fixtures
# ---------------------------------------------------------------------------

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _unet_to_ldm(unet) -> dict:
    cfg = unet.config
    lpb = cfg.layers_per_block
    n = len(cfg.block_out_channels)
    table: dict[str, str] = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
                             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
                             "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
                             "mid_block.resnets.1": "middle_block.2"}
    for i in range(n):
        for j in range(lpb):
            k = 1 + i * (lpb + 1) + j
            table[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{k}.0"
            table[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{k}.1"
        if i < n - 1:
            table[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (lpb + 1)}.0.op"
        has_attn = "CrossAttn" in cfg.up_block_types[i]
        for j in range(lpb + 1):
            k = i * (lpb + 1) + j
            table[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{k}.0"
            table[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{k}.1"
        if i < n - 1:
            table[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}.conv"
    out = {}
    for key, value in unet.state_dict().items():
        new = None
        for src in sorted(table, key=len, reverse=True):
            if key.startswith(src + "."):
                rest = key[len(src) + 1:]
                if ".resnets." in src or src.startswith("mid_block.resnets"):
                    head, _, tail = rest.partition(".")
                    rest = f"{_RESNET.get(head, head)}.{tail}"
                new = f"{table[src]}.{rest}"
                break
        if new is None:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_ldm(vae) -> dict:
    n = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        k = key
        for i in range(n):
            k = k.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            k = k.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            k = k.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block.")
            k = k.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")
        k = k.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
        k = k.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
        if ".attn_1." in k:
            for a, b in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                         ("to_out.0.", "proj_out.")):
                k = k.replace(".attn_1." + a, ".attn_1." + b)
            if k.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]
        out["first_stage_model." + k] = value
    return out


def to_original_sd(pipe) -> dict:
    """An SD 1.x pipeline's weights in the original single-file key layout."""
    state = {**_unet_to_ldm(pipe.unet), **_vae_to_ldm(pipe.vae)}
    for key, value in pipe.text_encoder.state_dict().items():
        key = key.removeprefix("text_model.")
        state["cond_stage_model.transformer.text_model." + key] = value
    return {k: v.contiguous() for k, v in state.items()}


def write_gguf(state: dict, path: Path, arch: str = "flux") -> Path:
    """A GGUF file of a state dict, as quantized transformers are shared: 2-D weights whose rows
    split into 32-value blocks in Q8_0, the rest in float32 (written with the gguf package)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    for name, tensor in state.items():
        data = tensor.detach().float().cpu().numpy()
        if data.ndim == 2 and data.shape[-1] % 32 == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_split_files(pipe, models: Path, name: str, fp8_t5: bool = False) -> dict[str, str]:
    """A FLUX or SD3 pipeline as separate files in ComfyUI's layout: the transformer in
    diffusion_models/ (diffusers key layout) and as a Q8_0 GGUF, each text encoder as one
    .safetensors in text_encoders/ (T5 optionally in float8_e4m3fn), the VAE in vae/ in the
    released ae layout, the T5 tokenizer in text_encoders/t5-tokenizer/, and the model's configs
    in configs/<name>/ (what the split loaders' `config` input names). Returns the file names."""
    from safetensors.torch import save_file

    files = {"transformer": f"{name}.safetensors", "gguf": f"{name}-Q8_0.gguf", "vae": f"{name}-ae.safetensors"}
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in pipe.transformer.state_dict().items()},
              str(models / "diffusion_models" / files["transformer"]))
    write_gguf(pipe.transformer.state_dict(), models / "diffusion_models" / files["gguf"])
    texts = models / "text_encoders"
    texts.mkdir(parents=True, exist_ok=True)
    roles = ["clip_l", "clip_g", "t5xxl"] if hasattr(pipe, "text_encoder_3") else ["clip_l", "t5xxl"]
    encoders = [e for e in (pipe.text_encoder, pipe.text_encoder_2, getattr(pipe, "text_encoder_3", None)) if e]
    for role, encoder in zip(roles, encoders):
        state = {k: v.clone().contiguous() for k, v in encoder.state_dict().items()}   # T5 ties two names
        if role == "t5xxl" and fp8_t5:
            state = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()}
        files[role] = f"{name}-{role}.safetensors"
        save_file(state, str(texts / files[role]))
    (pipe.tokenizer_3 if hasattr(pipe, "tokenizer_3") else pipe.tokenizer_2).save_pretrained(texts / "t5-tokenizer")
    (models / "vae").mkdir(parents=True, exist_ok=True)
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in _vae_to_ldm(pipe.vae).items()},
              str(models / "vae" / files["vae"]))
    save_configs(pipe, models / "configs" / name)
    return files


def write_flow_model(models: Path, name: str, seed: int = 0, flux: bool = False, fp16: bool = False) -> None:
    """A tiny SD3.5 checkpoint folder, or tiny FLUX parts as folders in ComfyUI's layout."""
    pipe = make_flux_pipeline(seed) if flux else make_sd3_pipeline(seed)
    if fp16:
        pipe = pipe.to(torch.float16)
    if not flux:
        pipe.save_pretrained(models / "checkpoints" / name)
        print(f"wrote {models / 'checkpoints' / name}")
        return
    parts = {models / "diffusion_models" / name: [pipe.transformer],
             models / "text_encoders" / f"{name}-clip_l": [pipe.text_encoder, pipe.tokenizer],
             models / "text_encoders" / f"{name}-t5xxl": [pipe.text_encoder_2, pipe.tokenizer_2],
             models / "vae" / f"{name}-ae": [pipe.vae]}
    for folder, objects in parts.items():
        for obj in objects:
            obj.save_pretrained(folder)
        print(f"wrote {folder}")


def save_configs(pipe, folder: Path) -> Path:
    """The pipeline's configs and tokenizer without weights: what from_single_file(config=) needs."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp)
        for path in Path(tmp).rglob("*"):
            if path.is_file() and path.suffix not in (".safetensors", ".bin"):
                target = folder / path.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
    return folder


def main() -> None:
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="models", help="models folder")
    ap.add_argument("--name", default="tiny-sd")
    ap.add_argument("--sdxl", action="store_true")
    ap.add_argument("--sd3", action="store_true", help="a tiny SD3.5-shaped diffusers folder in checkpoints/NAME")
    ap.add_argument("--flux", action="store_true",
                    help="tiny FLUX-shaped parts in ComfyUI's layout: diffusion_models/NAME, "
                         "text_encoders/NAME-clip_l and NAME-t5xxl, vae/NAME-ae (folders)")
    ap.add_argument("--flux-controlnet", action="store_true",
                    help="instead: a tiny FLUX ControlNet (diffusers folder) in controlnet/NAME")
    ap.add_argument("--sdxl-refiner", metavar="NAME",
                    help="with --sdxl: also write a refiner folder NAME sharing the base's VAE")
    ap.add_argument("--fp16", action="store_true", help="save the weights in float16")
    ap.add_argument("--single-file", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-for", metavar="CHECKPOINT_FOLDER",
                    help="instead: write a no-effect LoRA (lora_B = 0) fitting that checkpoint's UNet "
                         "to models/loras/NAME.safetensors (a wiring fixture; no weights are read)")
    args = ap.parse_args()
    if args.lora_for:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(Path(args.lora_for) / "unet"))
        print(f"wrote {write_lora(unet, Path(args.models) / 'loras', args.name + '.safetensors')}")
        return
    models = Path(args.models)
    if args.flux_controlnet:
        net = make_flux_controlnet(args.seed)
        (net.to(torch.float16) if args.fp16 else net).save_pretrained(models / "controlnet" / args.name)
        print(f"wrote {models / 'controlnet' / args.name}")
        return
    if args.sd3 or args.flux:
        write_flow_model(models, args.name, args.seed, flux=args.flux, fp16=args.fp16)
        return
    pipe = make_sdxl_pipeline(args.seed) if args.sdxl else make_sd_pipeline(args.seed)
    pipes = {args.name: pipe}
    if args.sdxl and args.sdxl_refiner:
        pipes[args.sdxl_refiner] = make_sdxl_refiner_pipeline(args.seed + 1, vae=pipe.vae)
    for name, p in pipes.items():
        folder = models / "checkpoints" / name
        (p.to(torch.float16) if args.fp16 else p).save_pretrained(folder)
        print(f"wrote {folder}")
    if args.single_file and not args.sdxl:
        save_file(to_original_sd(pipe), str(models / "checkpoints" / f"{args.name}.safetensors"))
        save_configs(pipe, models / "configs" / args.name)
        print(f"wrote {models / 'checkpoints' / (args.name + '.safetensors')} and models/configs/{args.name}")


if __name__ == "__main__":
    main()
