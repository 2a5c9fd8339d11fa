"""SD3.5 and FLUX from the files people download, in their released key layouts, give the
diffusers folder's image through Loom's real loaders.

The files are tiny random models converted from diffusers' layout to the released one (the
inverse of the key mapping in diffusers' single-file conversion): Stability's single-file
SD3.5 checkpoints (`model.diffusion_model.joint_blocks.*`, `first_stage_model.*`,
`text_encoders.clip_l/clip_g/t5xxl.transformer.*`) with all, some or none of the text
encoders inside, CLIP-L files without a projection as SD3.5's text_encoders/clip_l is, and
FLUX transformers in Black Forest Labs' layout (`double_blocks.*`, `single_blocks.*`, `img_in`,
..., bare or under ComfyUI's `model.diffusion_model.`, as safetensors and GGUF) beside the
split ae / clip_l / t5xxl files. The SD3 conversion is checked by converting back with
diffusers' own code; Loom's FLUX renaming (nodes/families/_flux_layout.py, which diffusers'
fixed-width one cannot replace for tiny models) is checked against diffusers' at the released
width.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nodes.latent import empty_latent
from nodes.loaders import load_checkpoint_handles
from nodes.sampling import run_sampler
from nodes.text import encode_text
from nodes.vae import vae_decode

PROMPT = "a red circle on a blue background"


# ---------------------------------------------------------------------------
# diffusers -> released key layouts
# ---------------------------------------------------------------------------

def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """diffusers' AdaLayerNormContinuous reads (scale, shift), the released models (shift, scale)."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


SD3_RENAMES = {
    "pos_embed.pos_embed": "pos_embed", "pos_embed.proj.": "x_embedder.proj.",
    "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
    "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.",
    "context_embedder.": "context_embedder.", "proj_out.": "final_layer.linear.",
}
SD3_BLOCK = {"attn.to_out.0.": "x_block.attn.proj.", "attn.to_add_out.": "context_block.attn.proj.",
             "attn2.to_out.0.": "x_block.attn2.proj.",
             "norm1.linear.": "x_block.adaLN_modulation.1.", "norm1_context.linear.": "context_block.adaLN_modulation.1.",
             "ff.net.0.proj.": "x_block.mlp.fc1.", "ff.net.2.": "x_block.mlp.fc2.",
             "ff_context.net.0.proj.": "context_block.mlp.fc1.", "ff_context.net.2.": "context_block.mlp.fc2.",
             "attn.norm_q.": "x_block.attn.ln_q.", "attn.norm_k.": "x_block.attn.ln_k.",
             "attn.norm_added_q.": "context_block.attn.ln_q.", "attn.norm_added_k.": "context_block.attn.ln_k.",
             "attn2.norm_q.": "x_block.attn2.ln_q.", "attn2.norm_k.": "x_block.attn2.ln_k."}
SD3_QKV = {"attn.to_": "x_block.attn.qkv.", "attn.add_": "context_block.attn.qkv.", "attn2.to_": "x_block.attn2.qkv."}


def sd3_to_stability(transformer) -> dict:
    """An SD3Transformer2DModel's weights in Stability's MMDiT layout (without the prefix)."""
    state = dict(transformer.state_dict())
    last = transformer.config.num_layers - 1
    out = {}
    for i in range(transformer.config.num_layers):
        head = f"transformer_blocks.{i}."
        for src, dst in SD3_QKV.items():
            for kind in ("weight", "bias"):
                names = [f"{head}{src}{p}.{kind}" for p in (("q", "k", "v") if src.endswith("to_")
                                                            else ("q_proj", "k_proj", "v_proj"))]
                if names[0] in state:
                    out[f"joint_blocks.{i}.{dst}{kind}"] = torch.cat([state.pop(n) for n in names])
        for key in [k for k in state if k.startswith(head)]:
            rest = key[len(head):]
            src = next(s for s in SD3_BLOCK if rest.startswith(s))
            value = state.pop(key)
            if i == last and src == "norm1_context.linear.":
                value = _swap_halves(value)
            out[f"joint_blocks.{i}.{SD3_BLOCK[src]}{rest[len(src):]}"] = value
    out["final_layer.adaLN_modulation.1.weight"] = _swap_halves(state.pop("norm_out.linear.weight"))
    out["final_layer.adaLN_modulation.1.bias"] = _swap_halves(state.pop("norm_out.linear.bias"))
    for key, value in state.items():
        src = next(s for s in SD3_RENAMES if key.startswith(s))
        out[SD3_RENAMES[src] + key[len(src):]] = value
    return out


def sd3_single_file(pipe, roles=("clip_l", "clip_g", "t5xxl")) -> dict:
    """A whole SD3 pipeline as Stability's single file, with the text encoders named in `roles`."""
    from tools.make_tiny_model import _vae_to_ldm

    state = {f"model.diffusion_model.{k}": v for k, v in sd3_to_stability(pipe.transformer).items()}
    state.update(_vae_to_ldm(pipe.vae))
    encoders = {"clip_l": pipe.text_encoder, "clip_g": pipe.text_encoder_2, "t5xxl": pipe.text_encoder_3}
    for role in roles:
        for key, value in encoders[role].state_dict().items():
            if role == "clip_l" and key == "text_projection.weight":
                continue   # SD3.5's CLIP-L is used unprojected: the released file has no projection
            state[f"text_encoders.{role}.transformer.{key}"] = value
    return {k: v.clone().contiguous() for k, v in state.items()}


def flux_to_bfl(state: dict) -> dict:
    """A FluxTransformer2DModel state dict in Black Forest Labs' layout: the inverse of Loom's
    renaming tables (checked against diffusers' renaming in a test below)."""
    import re

    from nodes.families._flux_layout import BLOCKS, SWAPPED, TOP

    def reverse(table):
        out = {}
        for src, dst in table.items():
            for i, part in enumerate(dst if isinstance(dst, tuple) else (dst,)):
                out[part] = (src, i if isinstance(dst, tuple) else None)
        return out

    tables = {"": reverse(TOP), **{head: (kind, reverse(t)) for kind, (head, t) in BLOCKS.items()}}
    out, fused = {}, {}
    for key, value in state.items():
        block = re.match(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.*)$", key)
        if block:
            kind, table = tables[block.group(1)]
            head, rest = f"{kind}.{block.group(2)}.", block.group(3)
        else:
            table, head, rest = tables[""], "", key
        dst = max((d for d in table if rest.startswith(d)), key=len)
        src, part = table[dst]
        name = head + src + rest[len(dst):]
        if dst in SWAPPED:
            value = _swap_halves(value)
        if part is None:
            out[name] = value
        else:
            fused.setdefault(name, {})[part] = value
    out.update({name: torch.cat([parts[i] for i in sorted(parts)]) for name, parts in fused.items()})
    return {k: v.clone().contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd3_files(models_dir: Path) -> dict[str, str]:
    """The tiny SD3 with CLIP-L's projection an identity (as in the released model, whose files
    carry none), as a diffusers folder and as Stability's single files."""
    from diffusers import StableDiffusion3Pipeline
    from safetensors.torch import save_file

    pipe = StableDiffusion3Pipeline.from_pretrained(models_dir / "checkpoints" / "tiny-sd3", local_files_only=True)
    with torch.no_grad():
        pipe.text_encoder.text_projection.weight.copy_(torch.eye(pipe.text_encoder.config.hidden_size))
    pipe.save_pretrained(models_dir / "checkpoints" / "tiny-sd3-released")
    files = {"all": "tiny-sd3-released-all.safetensors", "clips": "tiny-sd3-released-clips.safetensors",
             "none": "tiny-sd3-released-mmdit.safetensors"}
    for which, roles in (("all", ("clip_l", "clip_g", "t5xxl")), ("clips", ("clip_l", "clip_g")), ("none", ())):
        save_file(sd3_single_file(pipe, roles), str(models_dir / "checkpoints" / files[which]))
    save_file({k: v.clone().contiguous() for k, v in pipe.text_encoder.state_dict().items()
               if k != "text_projection.weight"},
              str(models_dir / "text_encoders" / "tiny-sd3-released-clip_l.safetensors"))
    return files


@pytest.fixture(scope="module")
def flux_files(models_dir: Path) -> dict[str, str]:
    """The tiny FLUX transformer as BFL-layout files: bare, under model.diffusion_model., and GGUF,
    and the whole model as one checkpoint in ComfyUI's layout (flux1-dev-fp8.safetensors-style:
    the transformer, first_stage_model.*, text_encoders.clip_l/t5xxl.transformer.*)."""
    from diffusers import FluxPipeline
    from safetensors.torch import save_file

    from tools.make_tiny_model import _vae_to_ldm, write_gguf

    pipe = FluxPipeline.from_pretrained(models_dir / "checkpoints" / "tiny-flux", local_files_only=True)
    bfl = flux_to_bfl(pipe.transformer.state_dict())
    folder = models_dir / "diffusion_models"
    files = {"bare": "tiny-flux1-dev.safetensors", "comfy": "tiny-flux1-dev-comfy.safetensors",
             "gguf": "tiny-flux1-dev-Q8_0.gguf"}
    save_file(bfl, str(folder / files["bare"]))
    save_file({f"model.diffusion_model.{k}": v for k, v in bfl.items()}, str(folder / files["comfy"]))
    write_gguf(bfl, folder / files["gguf"])
    whole = {f"model.diffusion_model.{k}": v for k, v in bfl.items()}
    whole.update(_vae_to_ldm(pipe.vae))
    for role, encoder in (("clip_l", pipe.text_encoder), ("t5xxl", pipe.text_encoder_2)):
        whole.update({f"text_encoders.{role}.transformer.{k}": v for k, v in encoder.state_dict().items()})
    files["checkpoint"] = "tiny-flux1-dev-checkpoint.safetensors"
    save_file({k: v.clone().contiguous() for k, v in whole.items()}, str(models_dir / "checkpoints" / files["checkpoint"]))
    return files


def _flux_image(ctx, model, te, vae):
    out = run_sampler(ctx, model, encode_text(ctx, te, PROMPT), empty_latent(vae, width=64, height=64),
                      seed=3, steps=3, cfg=1.0, scheduler="euler", guidance=3.5)
    return vae_decode(ctx, vae, out).pixels


def _sd3_image(ctx, model, te, vae):
    pos, neg = encode_text(ctx, te, PROMPT), encode_text(ctx, te, "")
    out = run_sampler(ctx, model, pos, empty_latent(vae, width=64, height=64), neg, seed=3, steps=3, cfg=4.0,
                      scheduler="euler")
    return vae_decode(ctx, vae, out).pixels


@pytest.fixture
def sd3_folder_image(ctx, sd3_files):
    return _sd3_image(ctx, *load_checkpoint_handles(ctx, "tiny-sd3-released"))


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------

def test_stability_layout_converts_back_with_diffusers(models_dir, sd3_files):
    """The fixture's key mapping is the inverse of diffusers' (every weight, every value)."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    transformer = SD3Transformer2DModel.from_pretrained(models_dir / "checkpoints" / "tiny-sd3-released",
                                                        subfolder="transformer")
    back = convert_sd3_transformer_checkpoint_to_diffusers(
        {f"model.diffusion_model.{k}": v for k, v in sd3_to_stability(transformer).items()})
    original = transformer.state_dict()
    assert set(back) == set(original)
    for key, value in original.items():
        torch.testing.assert_close(back[key], value, msg=key)


def test_sd3_single_file_with_its_text_encoders_gives_the_folder_image(ctx, sd3_files, sd3_folder_image):
    model, te, vae = load_checkpoint_handles(ctx, sd3_files["all"], config="tiny-sd3")
    assert model.family == "sd3" and te.roles == ["clip_l", "clip_g", "t5xxl"]
    torch.testing.assert_close(_sd3_image(ctx, model, te, vae), sd3_folder_image, atol=1e-5, rtol=1e-5)


def test_sd3_single_file_without_t5_pads_for_it(ctx, sd3_files):
    """sd3_medium_incl_clips-style: CLIP-L and CLIP-G inside, no T5: zeros stand in for its tokens,
    as with a folder that leaves T5 out."""
    from nodes.component_loaders import load_text_encoders

    _, te, _ = load_checkpoint_handles(ctx, sd3_files["clips"], config="tiny-sd3")
    assert te.roles == ["clip_l", "clip_g"]
    split = load_text_encoders(ctx, family="sd3", clip_l="tiny-sd3-released-clip_l.safetensors",
                               clip_g="tiny-sd3-clip_g.safetensors", config="tiny-sd3")
    ours, theirs = encode_text(ctx, te, PROMPT), encode_text(ctx, split, PROMPT)
    torch.testing.assert_close(ours.embeds, theirs.embeds)
    torch.testing.assert_close(ours.pooled, theirs.pooled)


def test_sd3_single_file_without_text_encoders_takes_them_from_their_files(ctx, sd3_files, sd3_folder_image):
    """sd3.5_large.safetensors-style (MMDiT and VAE only): the checkpoint's text encoder output has
    no encoders (encoding with it names what is missing); the split files supply them."""
    from engine.errors import NodeInputError
    from nodes.component_loaders import load_text_encoders

    model, te, vae = load_checkpoint_handles(ctx, sd3_files["none"], config="tiny-sd3")
    assert te.roles == [] and te.encoders == []
    with pytest.raises(NodeInputError, match="clip_l"):
        encode_text(ctx, te, PROMPT)
    split = load_text_encoders(ctx, family="sd3", clip_l="tiny-sd3-released-clip_l.safetensors",
                               clip_g="tiny-sd3-clip_g.safetensors", t5xxl="tiny-sd3-t5xxl.safetensors",
                               config="tiny-sd3")
    torch.testing.assert_close(_sd3_image(ctx, model, split, vae), sd3_folder_image, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn])
def test_sd3_single_file_with_a_narrow_t5_is_upcast(ctx, models_dir, sd3_files, dtype):
    """sd3_medium_incl_clips_t5xxlfp8-style: T5 inside in fp16 or fp8 loads upcast to the run's dtype."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(models_dir / "checkpoints" / sd3_files["all"]))
    narrow = {k: v.to(dtype) if k.startswith("text_encoders.t5xxl.") and v.ndim == 2 else v for k, v in state.items()}
    name = f"tiny-sd3-released-t5{str(dtype).removeprefix('torch.')}.safetensors"
    save_file(narrow, str(models_dir / "checkpoints" / name))
    _, te, _ = load_checkpoint_handles(ctx, name, config="tiny-sd3")
    t5 = te.encoders[te.roles.index("t5xxl")]
    weight = t5.encoder.block[0].layer[0].SelfAttention.q.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, narrow["text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"]
                               .float())
    assert encode_text(ctx, te, PROMPT).embeds.isfinite().all()


def test_a_config_without_a_t5_vocabulary_takes_the_t5_tokenizer_folder(ctx, models_dir, sd3_files, sd3_folder_image):
    """The shipped configs carry no T5 vocabulary: T5's tokenizer comes from
    models/text_encoders/t5-tokenizer, as for a lone T5 file."""
    import shutil

    config = models_dir / "configs" / "tiny-sd3-no-t5-vocab"
    if not config.is_dir():
        shutil.copytree(models_dir / "configs" / "tiny-sd3", config)
        for path in (config / "tokenizer_3").iterdir():
            if path.name != "tokenizer_config.json":
                path.unlink()
    model, te, vae = load_checkpoint_handles(ctx, sd3_files["all"], config="tiny-sd3-no-t5-vocab")
    torch.testing.assert_close(_sd3_image(ctx, model, te, vae), sd3_folder_image, atol=1e-5, rtol=1e-5)


def test_flux_renaming_equals_diffusers_at_the_released_width():
    """At FLUX.1's own width diffusers can rename BFL files: Loom's renaming gives the same
    tensors. The weights are one column wide (renaming only splits and swaps rows), so the
    released shapes cost nothing."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from nodes.families._flux_layout import bfl_to_diffusers
    from nodes.loaders import CONFIGS_DIR

    config = FluxTransformer2DModel.load_config(CONFIGS_DIR / "flux-dev" / "transformer")
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config({**config, "num_layers": 1, "num_single_layers": 1})
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape[0], *[1] * (v.ndim - 1), generator=g) for k, v in model.state_dict().items()}
    bfl = flux_to_bfl(state)
    ours = bfl_to_diffusers(dict(bfl), config["num_attention_heads"] * config["attention_head_dim"])
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert set(ours) == set(theirs) == set(state)
    for key in state:
        torch.testing.assert_close(ours[key], theirs[key], msg=key)
        torch.testing.assert_close(ours[key], state[key], msg=key)


@pytest.mark.parametrize("layout", ["bare", "comfy"])
def test_flux_bfl_transformer_with_split_files_gives_the_folder_image(ctx, flux_files, layout):
    """flux1-dev.safetensors (or ComfyUI's save of it) + ae + clip_l + t5xxl files, as ComfyUI users keep them."""
    from nodes.component_loaders import load_denoiser, load_text_encoders, load_vae

    folder = _flux_image(ctx, *load_checkpoint_handles(ctx, "tiny-flux"))
    model = load_denoiser(ctx, flux_files[layout], config="tiny-flux")
    te = load_text_encoders(ctx, family="flux", clip_l="tiny-flux-clip_l.safetensors",
                            t5xxl="tiny-flux-t5xxl.safetensors", config="tiny-flux")
    vae = load_vae(ctx, "tiny-flux-ae.safetensors", config="tiny-flux")
    assert model.family == "flux"
    torch.testing.assert_close(_flux_image(ctx, model, te, vae), folder, atol=1e-5, rtol=1e-5)


def test_flux_checkpoint_in_comfyui_layout_gives_the_folder_image(ctx, flux_files):
    folder = _flux_image(ctx, *load_checkpoint_handles(ctx, "tiny-flux"))
    model, te, vae = load_checkpoint_handles(ctx, flux_files["checkpoint"], config="tiny-flux")
    assert model.family == "flux" and te.roles == ["clip_l", "t5xxl"]
    torch.testing.assert_close(_flux_image(ctx, model, te, vae), folder, atol=1e-5, rtol=1e-5)


def test_flux_bfl_gguf_loads_quantized(ctx, flux_files):
    from nodes.component_loaders import load_denoiser

    model = load_denoiser(ctx, flux_files["gguf"], config="tiny-flux")
    assert any(type(p).__name__ == "GGUFParameter" for p in model.unet.parameters())
    _, te, vae = handles = load_checkpoint_handles(ctx, "tiny-flux")
    folder = _flux_image(ctx, *handles)
    image = _flux_image(ctx, model, te, vae)
    assert (image - folder).abs().mean() < 0.02 and image.std() > 0.01


def test_a_foreign_key_in_a_bfl_file_is_named(ctx, models_dir, flux_files):
    from safetensors.torch import load_file, save_file

    from engine.errors import NodeInputError
    from nodes.component_loaders import load_denoiser

    state = load_file(str(models_dir / "diffusion_models" / flux_files["bare"]))
    state["double_blocks.0.img_attn.extra.weight"] = torch.zeros(2, 2)
    save_file(state, str(models_dir / "diffusion_models" / "tiny-flux-foreign.safetensors"))
    with pytest.raises(NodeInputError, match="double_blocks.0.img_attn.extra.weight"):
        load_denoiser(ctx, "tiny-flux-foreign.safetensors", config="tiny-flux")


def test_a_transformer_only_file_among_checkpoints_says_where_it_belongs(ctx, models_dir, flux_files):
    import shutil

    from engine.errors import NodeInputError

    shutil.copy(models_dir / "diffusion_models" / flux_files["bare"], models_dir / "checkpoints" / "tiny-flux-dit.safetensors")
    with pytest.raises(NodeInputError, match="holds no VAE.*load_diffusion_model"):
        load_checkpoint_handles(ctx, "tiny-flux-dit.safetensors", config="tiny-flux")
