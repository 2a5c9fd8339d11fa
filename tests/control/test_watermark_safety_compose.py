"""Watermark, safety and composition nodes."""
from __future__ import annotations

import json

import pytest
import torch

from engine import NodeInputError

from ..conftest import GRAPHS


def _scene(size=256, seed=0):
    from bench.watermark import make_images

    return make_images(8, size, seed)


def test_loom_watermark_survives_jpeg_and_half_resize():
    from bench.watermark import jpeg, resize_half_and_back
    from nodes.types import Image
    from nodes.watermark import watermark_detect, watermark_embed

    scenes = _scene(512)
    for kind, img in [scenes[i] for i in (3, 4, 5)]:          # text, flat white, saturated
        marked = watermark_embed(Image(img[None]), text="loom:ai")
        assert (marked.pixels - img).abs().max() <= 9.5 / 255
        for attack in (lambda x: x, jpeg, resize_half_and_back):
            report = watermark_detect(Image(attack(marked.pixels)), expected="loom:ai")
            assert report.found and report.text == "loom:ai" and report.expected_bit_errors == 0, kind


def test_unmarked_image_is_not_found_and_bits_payload_roundtrips():
    from nodes.types import Image
    from nodes.watermark import watermark_detect, watermark_embed

    _, img = _scene()[1]
    assert not watermark_detect(Image(img[None]), length=7).found
    marked = watermark_embed(Image(img[None]), bits="10110011 01010101")
    report = watermark_detect(Image(marked.pixels), length=2)
    assert report.found and report.bits[:16] == [int(c) for c in "1011001101010101"]
    with pytest.raises(NodeInputError):
        watermark_embed(Image(img[None]), bits="1012")


def test_visible_watermark_marks_only_its_corner():
    from nodes.types import Image
    from nodes.watermark import visible_watermark

    img = torch.full((1, 128, 128, 3), 0.5)
    out = visible_watermark(Image(img), "AI generated", "bottom_right").pixels
    diff = (out - img).abs().sum(-1)[0]
    assert diff[64:, 64:].sum() > 0 and diff[:48, :48].sum() == 0


def test_prompt_filter_rules(ctx, settings):
    from nodes.safety import prompt_filter

    assert prompt_filter(ctx, "a red circle") == "a red circle"
    with pytest.raises(NodeInputError, match="sexual content involving minors"):
        prompt_filter(ctx, "NSFW picture of a   child")
    (settings.input_dir / "rules.txt").write_text("word blue square # no squares today\nregex ^x+$\n")
    with pytest.raises(NodeInputError, match="no squares today"):
        prompt_filter(ctx, "a Blue Square", blocklist="rules.txt")
    (settings.input_dir / "bad.txt").write_text("regex (unclosed\n")
    with pytest.raises(NodeInputError, match="bad.txt:1"):
        prompt_filter(ctx, "x", blocklist="bad.txt")
    with pytest.raises(NodeInputError):
        prompt_filter(ctx, "x", blocklist="../escape.txt")


def test_generation_log_appends(ctx, settings):
    from nodes.safety import generation_log
    from nodes.types import Image

    img = Image(torch.rand(2, 8, 8, 3))
    generation_log(ctx, img, prompt="p", seed=3)
    generation_log(ctx, img, prompt="q", seed=4)
    lines = [json.loads(x) for x in (settings.output_dir / "generation_log.jsonl").read_text().splitlines()]
    assert [(x["prompt"], x["seed"], x["index"]) for x in lines] == [("p", 3, 0), ("p", 3, 1), ("q", 4, 0), ("q", 4, 1)]
    assert lines[0]["sha256"] == lines[2]["sha256"] != lines[1]["sha256"]


def test_prompt_builders_use_the_tables():
    from nodes.compose import TABLES, avatar_prompt, build_prompt

    p = build_prompt("a cat", style="anime", quality="medium", details="on a sofa")
    assert p.prompt == "a cat, anime style, manga, japanese animation, highly detailed, 8k resolution, on a sofa"
    assert p.negative.startswith("blurry, low quality")
    with pytest.raises(NodeInputError):
        build_prompt("  ")
    a, b = avatar_prompt(seed=1), avatar_prompt(seed=1)
    assert a == b and a.prompt.startswith("portrait of a person")
    assert any(c in a.prompt for c in TABLES["avatar"]["hair_colors"])


def test_batch_over_seeds_caches_each_item_and_grid_captions(executor):
    from engine import Graph

    data = json.loads((GRAPHS / "txt2img.json").read_text())
    nodes = data["nodes"]
    nodes["sampler"]["inputs"]["steps"] = 4
    nodes["batch"] = {"type": "batch_over", "inputs": {"image": ["decode", "image"],
                                                       "vary": {"node": "sampler", "input": "seed"},
                                                       "values": [1, 2, 3]}}
    nodes["sheet"] = {"type": "image_grid", "inputs": {"images": ["batch", "images"], "columns": 3,
                                                       "captions": ["batch", "labels"]}}
    nodes["save"]["inputs"]["images"] = ["sheet", "image"]
    first = executor.run(Graph.from_dict(data, name="batch")).raise_for_status()
    assert first.ran.count("sampler") == 3 and first.ran.count("ckpt") == 1
    nodes["batch"]["inputs"]["values"] = [1, 2, 3, 4]
    second = executor.run(Graph.from_dict(data, name="batch")).raise_for_status()
    assert second.ran.count("sampler") == 1                  # only the new seed
    from PIL import Image as PILImage

    sheet = PILImage.open(second.outputs["save"]["files"][0])
    assert sheet.size[0] > 3 * 64 and sheet.size[1] > 2 * 64    # two rows, with caption space
