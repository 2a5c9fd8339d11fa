"""Quality checks and the avatar graph's quality gate (the retry node with a quality check)."""
from __future__ import annotations

import json

import pytest
import torch

from ..conftest import GRAPHS


def _avatar_graph(**extra_nodes):
    from engine import Graph

    data = json.loads((GRAPHS / "avatar.json").read_text())
    data["nodes"].update(extra_nodes)
    return Graph.from_dict(data, name="avatar-test")


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


def test_avatar_graph_runs_out_of_the_box(executor, settings):
    from PIL import Image as PILImage

    result = executor.run(_avatar_graph()).raise_for_status()
    [path] = result.outputs["save"]["files"]
    png = PILImage.open(path)
    assert png.size == (128, 128) and png.text["ai_generated"] == "true"
    assert json.loads(png.text["loom_provenance"])["watermark"] == "loom:ai"
    log = (settings.output_dir / "generation_log.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["sha256"] == result.outputs["log"]["entries"][0]


def test_gate_regenerates_until_a_later_seed_passes_without_rerunning_upstream(settings_factory, shared_models):
    from engine import Executor

    show = {"tries": {"type": "show", "inputs": {"value": ["gate", "tries"]}},
            "checks": {"type": "show", "inputs": {"value": ["gate", "checks"]}}}
    graph = _avatar_graph(**show)
    # measure the contrast each seed gives, then ask for more than the first seeds reach
    probe = Executor(settings=settings_factory(), models=shared_models)
    contrast = []
    for seed in range(5):
        out = probe.run(graph, {"seed": seed, "max_tries": 1}).raise_for_status().outputs
        contrast.append(out["checks"]["value"][0].metrics[0]["contrast"])
    k = next(i for i in range(1, 5) if contrast[i] > max(contrast[:i]))
    threshold = (max(contrast[:k]) + contrast[k]) / 2

    ex = Executor(settings=settings_factory(), models=shared_models)
    result = ex.run(graph, {"seed": 0, "max_tries": 5, "min_contrast": threshold}).raise_for_status()
    assert result.outputs["tries"]["value"] == k + 1
    checks = result.outputs["checks"]["value"]
    assert [c.passed for c in checks] == [False] * k + [True]
    assert all(any("contrast" in r for r in c.reasons) for c in checks[:-1])
    ran = result.ran
    for upstream in ("ckpt", "pos", "neg", "latent", "prompt", "filter"):
        assert ran.count(upstream) == 1, (upstream, ran)
    assert ran.count("sampler") == k + 1


def test_gate_with_require_pass_fails_with_a_readable_message(executor):
    from engine import Graph, NodeError

    data = json.loads((GRAPHS / "avatar.json").read_text())
    data["nodes"]["gate"]["inputs"]["require_pass"] = True
    with pytest.raises(NodeError) as err:
        executor.run(Graph.from_dict(data, name="avatar-require"), {"max_tries": 2, "min_sharpness": 1e12})
    assert "no try passed in 2 tries" in str(err.value)


def test_prompt_filter_rejects_with_rule_and_reason(executor):
    from engine import NodeError

    with pytest.raises(NodeError) as err:
        executor.run(_avatar_graph(), {"details": "gore everywhere"})
    assert "content filter" in str(err.value) and "graphic violence" in str(err.value)
    assert "sampler" not in err.value.result.ran
