"""Quality checks: image statistics and CLIP scores (the avatar graph's gate, which uses
them, is tested with the shipped avatar models in tests/avatars)."""
from __future__ import annotations

import torch


def test_quality_report_flags_blank_nan_dark_and_passes_texture():
    from nodes.quality import quality_check
    from nodes.types import Image

    g = torch.Generator().manual_seed(0)
    texture = Image(torch.rand(1, 64, 64, 3, generator=g))
    ok = quality_check(texture)
    assert ok.passed and ok.reasons == [] and ok.metrics[0]["sharpness"] > 1
    blank = quality_check(Image(torch.full((1, 64, 64, 3), 0.5)))
    assert not blank.passed and any("blank" in r for r in blank.reasons)
    nan = torch.rand(1, 64, 64, 3, generator=g)
    nan[0, 3, 3, 0] = float("nan")
    assert any("NaN" in r for r in quality_check(Image(nan)).reasons)
    dark = quality_check(Image(torch.rand(1, 64, 64, 3, generator=g) * 0.02))
    assert any("too dark" in r for r in dark.reasons)
    blurred = torch.nn.functional.avg_pool2d(texture.pixels.permute(0, 3, 1, 2), 5, 1, 2).permute(0, 2, 3, 1)
    assert quality_check(Image(blurred)).metrics[0]["sharpness"] < ok.metrics[0]["sharpness"] / 4
    strict = quality_check(texture, min_sharpness=1e9)
    assert not strict.passed and "sharpness" in strict.reasons[0]


def test_clip_score_with_local_clip_model(tiny, ctx):
    from transformers import CLIPConfig, CLIPModel

    from nodes.quality import load_clip, quality_check
    from nodes.types import Image

    torch.manual_seed(0)
    folder = tiny.root / "clip" / "tiny-clip"
    cfg = CLIPConfig(text_config=dict(tiny.pipe.text_encoder.config.to_dict()),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=32, patch_size=8),
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(folder)
    tiny.pipe.tokenizer.save_pretrained(folder)
    clip = load_clip(ctx, "tiny-clip")
    report = quality_check(Image(torch.rand(1, 64, 64, 3)), clip=clip, prompt="a red circle", min_clip_score=101)
    assert 0 <= report.metrics[0]["clip_score"] <= 100 and not report.passed
    assert "CLIP score" in report.reasons[-1]
