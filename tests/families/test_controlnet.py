"""ControlNets for SD3.5 and FLUX through Loom's ControlNet nodes give what diffusers'
StableDiffusion3ControlNetPipeline and FluxControlNetPipeline give for the same components,
prompts, hints and noise: strength, [start, end) windows, several ControlNets summed, guidance
batches; the loader tells the three kinds apart and a ControlNet of another family is refused.

The pipelines sample the hint's VAE latents from the posterior with the run's generator; Loom
takes the posterior's mode (deterministic, as its VAE encode node does), so the pipelines are
pinned to the mode here (`vae_mode`). Real VAEs' posteriors are narrow: the two barely differ.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import NodeInputError
from nodes.control import apply_controlnet, controlnet_family, load_controlnet
from nodes.latent import empty_latent
from nodes.loaders import load_checkpoint_handles
from nodes.sampling import run_sampler
from nodes.text import encode_text
from nodes.types import Image
from nodes.vae import vae_decode
from tools.make_tiny_model import make_flux_controlnet, make_sd3_controlnet

PROMPT = "a red circle on a blue background"
NEGATIVE = "a green square"


@pytest.fixture(scope="session")
def controlnets(models_dir):
    """models/controlnet: SD3 and FLUX ControlNets as diffusers folders, one SD3.5-Large-kind SD3
    ControlNet (reads latents through the transformer's patch embedding, no text attention), a
    FLUX one as a single file with its config beside it, and a UNet ControlNet."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    folder = models_dir / "controlnet"
    make_sd3_controlnet(1).save_pretrained(folder / "tiny-sd3-cn")
    make_sd3_controlnet(2).save_pretrained(folder / "tiny-sd3-cn-2")
    make_sd3_controlnet(3, use_pos_embed=False, joint_attention_dim=None, pos_embed_type=None,
                    force_zeros_for_pooled_projection=False).save_pretrained(folder / "tiny-sd35-large-cn")
    flux = make_flux_controlnet(4)
    flux.save_pretrained(folder / "tiny-flux-cn")
    make_flux_controlnet(5).save_pretrained(folder / "tiny-flux-cn-2")
    make_flux_controlnet(7, num_mode=3).save_pretrained(folder / "tiny-flux-union-cn")
    # XLabs' kind: a hint block reads the pixels down to the packed tokens' grid (8x here, as the
    # tiny VAE's 4x latents are packed 2x2)
    make_flux_controlnet(8, conditioning_embedding_channels=64).save_pretrained(folder / "tiny-flux-xlabs-cn")
    save_file(flux.state_dict(), str(folder / "tiny-flux-cn-single.safetensors"))
    (folder / "tiny-flux-cn-single.json").write_text(json.dumps({k: v for k, v in flux.config.items()
                                                                 if not k.startswith("_")}))
    sd3 = make_sd3_controlnet(1)
    save_file(sd3.state_dict(), str(folder / "tiny-sd3-cn-single.safetensors"))
    (folder / "tiny-sd3-cn-single.json").write_text(json.dumps({k: v for k, v in sd3.config.items()
                                                                if not k.startswith("_")}))
    # XLabs' own layout (not diffusers'): refused by name, with what Loom reads instead
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2), "pos_embed_input.weight": torch.zeros(2, 2)},
              str(folder / "xlabs-layout.safetensors"))
    (folder / "xlabs-layout.json").write_text("{}")
    torch.manual_seed(6)
    ControlNetModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    cross_attention_dim=32, layers_per_block=1, norm_num_groups=8,
                    conditioning_embedding_out_channels=(8, 16)).save_pretrained(folder / "tiny-unet-cn")
    return folder


@pytest.fixture
def vae_mode(monkeypatch):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())


def _hint(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 64, 64, 3, generator=g) > 0.7).float()


def _pil(hint: torch.Tensor):
    from PIL import Image as PILImage

    return PILImage.fromarray((hint[0].numpy() * 255).round().astype(np.uint8))


def _generators(seed, batch=1):
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]


def _ours(ctx, checkpoint, nets, seed, steps, cfg, negative=None, guidance=None, batch=1, mode=-1):
    """nets: (name, hint, strength, start, end) per ControlNet, chained."""
    model, te, vae = load_checkpoint_handles(ctx, checkpoint)
    for name, hint, strength, start, end in nets:
        model = apply_controlnet(model, load_controlnet(ctx, name), Image(hint), strength, start, end, vae=vae,
                                 mode=mode)
    neg = encode_text(ctx, te, negative) if negative is not None else None
    kwargs = {"guidance": guidance} if guidance is not None else {}
    latent = empty_latent(vae, width=64, height=64, batch=batch)
    out = run_sampler(ctx, model, encode_text(ctx, te, PROMPT), latent, neg,
                      seed=seed, steps=steps, cfg=cfg, scheduler="euler", **kwargs)
    return vae_decode(ctx, vae, out).pixels


def _control_args(ctx, nets):
    """The pipelines' ControlNet arguments for the same nets (lists and a Multi model for several)."""
    modules = [load_controlnet(ctx, name).model for name, *_ in nets]
    columns = list(zip(*[(_pil(hint), *rest) for _, hint, *rest in nets]))
    values = [column[0] if len(nets) == 1 else list(column) for column in columns]
    names = ("control_image", "controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")
    return modules, dict(zip(names, values))


def _sd3_pipeline(ctx, nets, seed, steps, cfg, batch=1):
    from diffusers import (FlowMatchEulerDiscreteScheduler, SD3MultiControlNetModel,
                           StableDiffusion3ControlNetPipeline)

    model, te, vae = load_checkpoint_handles(ctx, "tiny-sd3")
    modules, args = _control_args(ctx, nets)
    parts = dict(zip(("text_encoder", "text_encoder_2", "text_encoder_3"), te.encoders))
    parts.update(zip(("tokenizer", "tokenizer_2", "tokenizer_3"), te.tokenizers))
    pipe = StableDiffusion3ControlNetPipeline(
        transformer=model.unet, vae=vae.vae,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config),
        controlnet=modules[0] if len(modules) == 1 else SD3MultiControlNetModel(modules), **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=steps, guidance_scale=cfg,
                num_images_per_prompt=batch, generator=_generators(seed, batch), output_type="pt",
                **args).images.permute(0, 2, 3, 1)


def _flux_pipeline(ctx, nets, seed, steps, guidance, negative=None, true_cfg=1.0, batch=1, mode=None):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetPipeline, FluxMultiControlNetModel

    model, te, vae = load_checkpoint_handles(ctx, "tiny-flux")
    modules, args = _control_args(ctx, nets)
    pipe = FluxControlNetPipeline(
        transformer=model.unet, vae=vae.vae,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config),
        text_encoder=te.encoders[0], tokenizer=te.tokenizers[0], text_encoder_2=te.encoders[1],
        tokenizer_2=te.tokenizers[1],
        controlnet=modules[0] if len(modules) == 1 else FluxMultiControlNetModel(modules))
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, negative_prompt=negative, true_cfg_scale=true_cfg, height=64, width=64,
                num_inference_steps=steps, guidance_scale=guidance, num_images_per_prompt=batch,
                generator=_generators(seed, batch), output_type="pt", control_mode=mode,
                **args).images.permute(0, 2, 3, 1)


@pytest.mark.parametrize("batch", [1, 2])
def test_sd3_controlnet_matches_the_pipeline(ctx, controlnets, vae_mode, batch):
    nets = [("tiny-sd3-cn", _hint(0), 0.7, 0.0, 1.0)]
    ours = _ours(ctx, "tiny-sd3", nets, seed=7, steps=4, cfg=4.5, negative=NEGATIVE, batch=batch)
    plain = _ours(ctx, "tiny-sd3", [], seed=7, steps=4, cfg=4.5, negative=NEGATIVE, batch=batch)
    theirs = _sd3_pipeline(ctx, nets, seed=7, steps=4, cfg=4.5, batch=batch)
    assert ours.shape == (batch, 64, 64, 3)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert (ours - plain).abs().max() > 1e-3          # the ControlNet steers the result


def test_two_sd3_controlnets_with_windows_match_the_multi_pipeline(ctx, controlnets, vae_mode):
    nets = [("tiny-sd3-cn", _hint(1), 1.0, 0.0, 0.5), ("tiny-sd3-cn-2", _hint(2), 0.6, 0.25, 1.0)]
    ours = _ours(ctx, "tiny-sd3", nets, seed=3, steps=4, cfg=4.0, negative=NEGATIVE)
    torch.testing.assert_close(ours, _sd3_pipeline(ctx, nets, seed=3, steps=4, cfg=4.0), atol=1e-4, rtol=1e-4)


def test_sd35_large_kind_controlnet_matches_the_pipeline(ctx, controlnets, vae_mode):
    """No patch embedding of its own (the transformer's is used), no text attention, the pooled
    projection and the shifted hint latents as they are."""
    nets = [("tiny-sd35-large-cn", _hint(3), 0.8, 0.25, 0.75)]
    ours = _ours(ctx, "tiny-sd3", nets, seed=5, steps=4, cfg=4.0, negative=NEGATIVE)
    plain = _ours(ctx, "tiny-sd3", [], seed=5, steps=4, cfg=4.0, negative=NEGATIVE)
    theirs = _sd3_pipeline(ctx, nets, seed=5, steps=4, cfg=4.0)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert (ours - plain).abs().max() > 1e-3


def test_flux_controlnet_matches_the_pipeline(ctx, controlnets, vae_mode):
    nets = [("tiny-flux-cn", _hint(4), 0.8, 0.0, 1.0)]
    ours = _ours(ctx, "tiny-flux", nets, seed=2, steps=4, cfg=1.0, guidance=3.5)
    plain = _ours(ctx, "tiny-flux", [], seed=2, steps=4, cfg=1.0, guidance=3.5)
    torch.testing.assert_close(ours, _flux_pipeline(ctx, nets, seed=2, steps=4, guidance=3.5), atol=1e-4, rtol=1e-4)
    assert (ours - plain).abs().max() > 1e-3


def test_two_flux_controlnets_with_windows_match_the_multi_pipeline(ctx, controlnets, vae_mode):
    nets = [("tiny-flux-cn", _hint(5), 1.0, 0.0, 0.5), ("tiny-flux-cn-2", _hint(6), 0.5, 0.25, 1.0)]
    ours = _ours(ctx, "tiny-flux", nets, seed=4, steps=4, cfg=1.0, guidance=4.0)
    torch.testing.assert_close(ours, _flux_pipeline(ctx, nets, seed=4, steps=4, guidance=4.0), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 2])
def test_flux_controlnet_with_true_cfg_matches_the_pipeline(ctx, controlnets, vae_mode, batch):
    """The negative pass reuses the positive prompt's residuals, as FluxControlNetPipeline does."""
    nets = [("tiny-flux-cn", _hint(7), 0.9, 0.0, 0.75)]
    ours = _ours(ctx, "tiny-flux", nets, seed=6, steps=4, cfg=2.5, negative=NEGATIVE, guidance=3.5, batch=batch)
    theirs = _flux_pipeline(ctx, nets, seed=6, steps=4, guidance=3.5, negative=NEGATIVE, true_cfg=2.5, batch=batch)
    assert ours.shape == (batch, 64, 64, 3)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_flux_controlnet_on_img2img_matches_the_img2img_pipeline(ctx, controlnets, vae_mode):
    """The ControlNet hook composes with image to image: FluxControlNetImg2ImgPipeline, its window
    counted over the steps run (8 at 0.6: 5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetImg2ImgPipeline

    from nodes.vae import vae_encode

    model, te, vae = load_checkpoint_handles(ctx, "tiny-flux")
    pixels = (torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1)) * 255).round() / 255
    hint, net = _hint(12), load_controlnet(ctx, "tiny-flux-cn")
    patched = apply_controlnet(model, net, Image(hint), 0.8, 0.2, 0.8, vae=vae)
    out = run_sampler(ctx, patched, encode_text(ctx, te, PROMPT), vae_encode(ctx, vae, Image(pixels)), seed=3, steps=8,
                      cfg=1.0, scheduler="euler", denoise=0.6, guidance=3.5)
    ours = vae_decode(ctx, vae, out).pixels
    pipe = FluxControlNetImg2ImgPipeline(
        transformer=model.unet, vae=vae.vae, controlnet=net.model,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config),
        text_encoder=te.encoders[0], tokenizer=te.tokenizers[0], text_encoder_2=te.encoders[1],
        tokenizer_2=te.tokenizers[1])
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=_pil(pixels), control_image=_pil(hint), strength=0.6, num_inference_steps=8,
                  guidance_scale=3.5, controlnet_conditioning_scale=0.8, control_guidance_start=0.2,
                  control_guidance_end=0.8, height=64, width=64, generator=_generators(3),
                  output_type="pt").images.permute(0, 2, 3, 1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_flux_union_controlnet_with_a_mode_matches_the_pipeline(ctx, controlnets, vae_mode):
    nets = [("tiny-flux-union-cn", _hint(9), 0.8, 0.0, 1.0)]
    ours = _ours(ctx, "tiny-flux", nets, seed=1, steps=3, cfg=1.0, guidance=3.5, mode=2)
    other_mode = _ours(ctx, "tiny-flux", nets, seed=1, steps=3, cfg=1.0, guidance=3.5, mode=0)
    torch.testing.assert_close(ours, _flux_pipeline(ctx, nets, seed=1, steps=3, guidance=3.5, mode=2),
                               atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours, other_mode, atol=1e-4)     # the mode reaches the ControlNet


def test_xlabs_kind_flux_controlnet_reads_pixels_and_matches_the_pipeline(ctx, controlnets):
    """No VAE: the ControlNet's own hint block reads the -1..1 pixels; its residuals repeat over
    the transformer's double blocks."""
    model, te, vae = load_checkpoint_handles(ctx, "tiny-flux")
    patched = apply_controlnet(model, load_controlnet(ctx, "tiny-flux-xlabs-cn"), Image(_hint(10)), 0.9, 0.0, 0.75)
    out = run_sampler(ctx, patched, encode_text(ctx, te, PROMPT), empty_latent(vae, width=64, height=64), seed=8,
                      steps=4, cfg=1.0, scheduler="euler", guidance=3.5)
    ours = vae_decode(ctx, vae, out).pixels
    nets = [("tiny-flux-xlabs-cn", _hint(10), 0.9, 0.0, 0.75)]
    torch.testing.assert_close(ours, _flux_pipeline(ctx, nets, seed=8, steps=4, guidance=3.5), atol=1e-4, rtol=1e-4)
    assert (ours - _ours(ctx, "tiny-flux", [], seed=8, steps=4, cfg=1.0, guidance=3.5)).abs().max() > 1e-3


def test_loader_tells_the_kinds_apart(ctx, controlnets):
    from diffusers import ControlNetModel, FluxControlNetModel, SD3ControlNetModel

    kinds = {name: load_controlnet(ctx, name) for name in (
        "tiny-sd3-cn", "tiny-sd3-cn-single.safetensors", "tiny-sd35-large-cn", "tiny-flux-cn",
        "tiny-flux-cn-single.safetensors", "tiny-unet-cn")}
    assert [(c.family, type(c.model)) for c in kinds.values()] == [
        ("sd3", SD3ControlNetModel), ("sd3", SD3ControlNetModel), ("sd3", SD3ControlNetModel),
        ("flux", FluxControlNetModel), ("flux", FluxControlNetModel), (None, ControlNetModel)]
    for folder, single in (("tiny-sd3-cn", "tiny-sd3-cn-single.safetensors"),
                           ("tiny-flux-cn", "tiny-flux-cn-single.safetensors")):
        a, b = kinds[folder].model.state_dict(), kinds[single].model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(NodeInputError) as err:
        load_controlnet(ctx, "xlabs-layout.safetensors")
    assert err.value.input == "name" and "xlabs-layout.safetensors" in str(err.value) and "diffusers" in str(err.value)


@settings(max_examples=40, deadline=None)
@given(marker=st.sampled_from(["pos_embed_input.proj.weight", "controlnet_x_embedder.weight",
                               "controlnet_cond_embedding.conv_in.weight"]),
       others=st.lists(st.sampled_from(["transformer_blocks.0.attn.to_q.weight", "controlnet_blocks.0.weight",
                                        "time_text_embed.text_embedder.linear_1.weight", "x_embedder.weight",
                                        "context_embedder.weight", "pos_embed.proj.weight", "down_blocks.0.weight"]),
                       max_size=5),
       declared=st.sampled_from([None, "SD3ControlNetModel", "FluxControlNetModel", "ControlNetModel"]))
def test_kind_follows_the_declared_class_else_the_marker_key(marker, others, declared):
    keys = {k: (1,) for k in [*others, marker]}
    config = {"_class_name": declared} if declared else {}
    by_class = {"SD3ControlNetModel": "sd3", "FluxControlNetModel": "flux", "ControlNetModel": None}
    by_key = {"pos_embed_input.proj.weight": "sd3", "controlnet_x_embedder.weight": "flux"}
    assert controlnet_family(config, keys) == (by_class[declared] if declared else by_key.get(marker))


def test_a_controlnet_of_another_family_is_refused_naming_the_input(ctx, controlnets):
    model, _, vae = load_checkpoint_handles(ctx, "tiny-flux")
    hint = Image(_hint(0))
    for name in ("tiny-sd3-cn", "tiny-unet-cn"):
        with pytest.raises(NodeInputError) as err:
            apply_controlnet(model, load_controlnet(ctx, name), hint, vae=vae)
        assert err.value.input == "controlnet" and "FLUX.1" in str(err.value)
    with pytest.raises(NodeInputError) as err:
        apply_controlnet(model, load_controlnet(ctx, "tiny-flux-cn"), hint)
    assert err.value.input == "vae"
    for name, mode in (("tiny-flux-union-cn", -1), ("tiny-flux-union-cn", 3), ("tiny-flux-cn", 0)):
        with pytest.raises(NodeInputError) as err:
            apply_controlnet(model, load_controlnet(ctx, name), hint, vae=vae, mode=mode)
        assert err.value.input == "mode"
    sd3, _, sd3_vae = load_checkpoint_handles(ctx, "tiny-sd3")
    with pytest.raises(NodeInputError) as err:
        apply_controlnet(sd3, load_controlnet(ctx, "tiny-flux-cn"), hint, vae=sd3_vae)
    assert err.value.input == "controlnet" and "Stable Diffusion 3.5" in str(err.value)


def test_comfy_controlnet_nodes_guide_flux_as_loom_s_do(ctx, controlnets):
    """ControlNetLoader + ControlNetApplyAdvanced (with its vae) + KSampler on the default
    "simple" schedule give Loom's apply_controlnet + sample result."""
    from nodes.comfy.conditioning import controlnet_apply_advanced
    from nodes.comfy.latent_image import ksampler
    from nodes.comfy.loaders import controlnet_loader

    model, te, vae = load_checkpoint_handles(ctx, "tiny-flux")
    pos, neg, hint = encode_text(ctx, te, PROMPT), encode_text(ctx, te, ""), Image(_hint(8))
    positive, negative = controlnet_apply_advanced(pos, neg, controlnet_loader(ctx, "tiny-flux-cn"), hint,
                                                   strength=0.7, start_percent=0.0, end_percent=0.5, vae=vae)
    latent = empty_latent(vae, width=64, height=64)
    comfy = ksampler(ctx, model, seed=9, steps=4, cfg=1.0, sampler_name="euler", scheduler="simple",
                     positive=positive, negative=negative, latent_image=latent)
    patched = apply_controlnet(model, load_controlnet(ctx, "tiny-flux-cn"), hint, 0.7, 0.0, 0.5, vae=vae)
    loom = run_sampler(ctx, patched, pos, latent, neg, seed=9, steps=4, cfg=1.0, scheduler="euler")
    plain = run_sampler(ctx, model, pos, latent, neg, seed=9, steps=4, cfg=1.0, scheduler="euler")
    torch.testing.assert_close(comfy.samples, loom.samples)
    assert (loom.samples - plain.samples).abs().max() > 1e-3


def test_comfy_controlnet_apply_on_the_positive_guides_only_that_pass_of_flux_true_cfg(ctx, controlnets):
    """ControlNetApply attaches to one conditioning: with true CFG its residuals reach the
    positive pass only (an XLabs-kind ControlNet: ControlNetApply has no vae input)."""
    from nodes.comfy.conditioning import controlnet_apply, controlnet_apply_advanced
    from nodes.comfy.latent_image import ksampler

    model, te, vae = load_checkpoint_handles(ctx, "tiny-flux")
    pos, neg, hint = encode_text(ctx, te, PROMPT), encode_text(ctx, te, NEGATIVE), Image(_hint(11))
    net = load_controlnet(ctx, "tiny-flux-xlabs-cn")
    latent = empty_latent(vae, width=64, height=64)

    def sample(positive, negative):
        return ksampler(ctx, model, seed=2, steps=3, cfg=2.5, sampler_name="euler", scheduler="simple",
                        positive=positive, negative=negative, latent_image=latent).samples
    positive_only = sample(controlnet_apply(pos, net, hint, strength=0.8), neg)
    both = sample(*controlnet_apply_advanced(pos, neg, net, hint, strength=0.8))
    plain = sample(pos, neg)
    assert (positive_only - both).abs().max() > 1e-4 and (positive_only - plain).abs().max() > 1e-4


@pytest.mark.parametrize("checkpoint, controlnet", [("tiny-sd3", "tiny-sd35-large-cn"), ("tiny-flux", "tiny-flux-cn")])
def test_controlnets_run_in_bfloat16(settings_factory, shared_models, controlnets, checkpoint, controlnet):
    """Half precision, as these models run on GPUs: every tensor the hook builds follows the models' dtype."""
    from engine import CancelToken, Context, Graph

    ctx = Context("t", "t", "t", settings_factory(dtype="bfloat16"), shared_models, Graph(), {}, CancelToken(),
                  lambda e: None)
    model, te, vae = load_checkpoint_handles(ctx, checkpoint)
    assert model.unet.dtype == torch.bfloat16
    patched = apply_controlnet(model, load_controlnet(ctx, controlnet), Image(_hint(13)), 0.8, vae=vae)
    pos, neg = encode_text(ctx, te, PROMPT), encode_text(ctx, te, NEGATIVE)
    out = run_sampler(ctx, patched, pos, empty_latent(vae, width=64, height=64), neg, seed=1, steps=2, cfg=3.0,
                      scheduler="euler")
    assert out.samples.shape == (1, 16, 16, 16) and out.samples.isfinite().all()
