"""IP-Adapter nodes: parity with diffusers' load_ip_adapter pipeline, caching of the image
embeddings, several references, and use together with ControlNet."""
from __future__ import annotations

import pytest
import torch


from ..conftest import load_graph


def _reference(seed=5, n=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 48, 40, 3, generator=g)


def _run_ours(ctx, tiny, refs, scale, steps=5, seed=2):
    from nodes.ip_adapter import apply_ip_adapter, encode_ip_image, load_ip_adapter
    from nodes.loaders import load_checkpoint_handles
    from nodes.sampling import run_sampler
    from nodes.types import Conditioning, Image, Latent

    model, _, _ = load_checkpoint_handles(ctx, "tiny-sd")
    ip = load_ip_adapter(ctx, "tiny-ip", "tiny-clip-vision")
    if scale is not None:
        model = apply_ip_adapter(model, ip, encode_ip_image(ip, Image(refs)), scale)
    pos, neg = tiny.pipe.encode_prompt("a red circle", "cpu", 1, True, "")
    latent = Latent(torch.zeros(1, 4, 64 // tiny.factor, 64 // tiny.factor))
    return run_sampler(ctx, model, Conditioning(pos), latent, Conditioning(neg), seed=seed, steps=steps,
                       cfg=4.0, scheduler="ddim").samples, pos, neg


@pytest.mark.parametrize("n_refs", [1, 2])
def test_ip_adapter_matches_diffusers_load_ip_adapter(ctx, tiny, ip_models, n_refs):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from nodes.image import image_to_pil
    from nodes.types import Image

    encoder, processor = ip_models
    refs = _reference(n=n_refs)
    ours, pos, neg = _run_ours(ctx, tiny, refs, 0.7)
    plain, _, _ = _run_ours(ctx, tiny, refs, None)

    pipe = StableDiffusionPipeline.from_pretrained(tiny.root / "checkpoints" / "tiny-sd", local_files_only=True,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(str(tiny.root / "ipadapter"), subfolder="", weight_name="tiny-ip.safetensors",
                         image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.7)
    images = [image_to_pil(Image(refs), i) for i in range(n_refs)]
    ref = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, ip_adapter_image=[images],
               height=64, width=64, num_inference_steps=5, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(2), output_type="latent").images
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    assert (ours - plain).abs().max() > 1e-3


def test_scale_zero_is_the_plain_model(ctx, tiny, ip_models):
    off, _, _ = _run_ours(ctx, tiny, _reference(), 0.0)
    plain, _, _ = _run_ours(ctx, tiny, _reference(), None)
    assert torch.equal(off, plain)


def test_a_transformer_family_is_refused_before_its_attention_is_touched(ctx, tiny, ip_models):
    """The denoiser is shared by every handle on it: a refused adapter must leave it as it was."""
    import dataclasses

    from engine.errors import NodeInputError
    from nodes.ip_adapter import apply_ip_adapter, encode_ip_image, load_ip_adapter
    from nodes.loaders import load_checkpoint_handles
    from nodes.types import Image

    model, _, _ = load_checkpoint_handles(ctx, "tiny-sd")
    ip = load_ip_adapter(ctx, "tiny-ip", "tiny-clip-vision")
    before = dict(model.unet.attn_processors)
    with pytest.raises(NodeInputError, match="FLUX") as err:
        apply_ip_adapter(dataclasses.replace(model, family="flux"), ip, encode_ip_image(ip, Image(_reference())))
    assert err.value.input == "model"
    assert model.unet.attn_processors == before


def test_graph_with_ip_adapter_and_controlnet_reencodes_nothing_on_prompt_edit(executor, settings, ip_models):
    from PIL import Image as PILImage

    PILImage.new("RGB", (40, 40), (200, 30, 30)).save(settings.input_dir / "ref.png")
    graph = load_graph("ip_adapter.json")
    first = executor.run(graph).raise_for_status()
    assert first.outputs["save"]["files"]
    second = executor.run(graph, {"prompt": "a green square"}).raise_for_status()
    assert "apply_cn" in second.cached          # the patched model, image embeddings included
    assert not {"embeds", "load_ip", "reference"} & set(second.ran)
    assert "pos" in second.ran and "sampler" in second.ran
