"""The procedural portraits avatars-tiny and the checker learn from: captions in the
avatar prompt node's own words, a clean held-out split, and drawings whose attributes the
pixel judge (used on generated images) reads back."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nodes.compose import TABLES, avatar_prompt
from tools.avatars import data, pixels
from tools.avatars.tokenizer import build_tokenizer


def test_drawn_attribute_words_are_the_avatar_tables_words():
    tables = TABLES["avatar"]
    assert set(data.HAIR_COLOURS) == set(tables["hair_colors"])
    assert set(data.HAIR_STYLES) <= set(tables["hair_styles"])
    assert {"blue", "green", "brown"} <= set(data.EYE_COLOURS) <= set(tables["eye_colors"])
    assert {"smiling", "serious"} <= set(data.EXPRESSIONS) <= set(tables["expressions"])
    assert set(data.BACKGROUNDS) == set(tables["backgrounds"])
    assert data.STYLE in tables["styles"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@settings(max_examples=40, deadline=None)
@given(index=st.integers(0, 10**9))
def test_caption_is_what_the_prompt_node_builds_and_one_token_per_word(tokenizer, index):
    spec = data.spec_for("train", index)
    built = avatar_prompt(hair_style=spec.hair_style, hair_color=spec.hair_color, eye_color=spec.eye_color,
                          style="cartoon", expression=spec.expression, background=spec.background,
                          details="glasses" if spec.glasses else "").prompt
    assert spec.caption == built
    ids = tokenizer(spec.caption).input_ids
    assert len(ids) <= tokenizer.model_max_length
    words = spec.caption.replace(",", " ").replace("8k", "").split()
    assert all(f"{w}</w>" in tokenizer.get_vocab() for w in words)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["train", "eval"]), st.integers(0, 10**9))
def test_held_out_split_is_deterministic_and_disjoint(split, index):
    spec = data.spec_for(split, index)
    assert spec == data.spec_for(split, index)
    assert spec.is_held_out() == (split == "eval")


def test_pixel_judge_reads_drawn_hair_colour_and_background():
    specs = [data.spec_for("eval", i) for i in range(120)]
    images = [np.asarray(data.render(spec)) for spec in specs]
    assert all(pixels.hair_colour(im) == spec.hair_color for im, spec in zip(images, specs))
    backgrounds = [pixels.background_kind(im) == spec.background for im, spec in zip(images, specs)]
    assert np.mean(backgrounds) >= 0.95
    # every attribute value occurs among them, so the check covers the whole table
    assert {s.hair_color for s in specs} == set(data.HAIR_COLOURS)
    assert {s.background for s in specs} == set(data.BACKGROUNDS)


def test_drawing_is_a_pure_function_of_the_spec():
    spec = data.spec_for("eval", 3)
    assert np.array_equal(np.asarray(data.render(spec)), np.asarray(data.render(spec)))
    assert data.render(spec).size == (data.IMAGE_SIZE, data.IMAGE_SIZE)


@pytest.mark.parametrize("index", [0, 7])
def test_a_drawing_at_twice_the_size_is_the_same_portrait(index):
    """Scale 2 is the ground truth of the avatar upscaler: reduced 2x it is the 64 px drawing."""
    from PIL import Image

    spec = data.spec_for("eval", index)
    large = data.render(spec, scale=2)
    assert large.size == (128, 128)
    reduced = np.asarray(large.resize((64, 64), Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(reduced - np.asarray(data.render(spec), dtype=np.float32)).mean() < 4


def test_upscaler_batches_pair_a_damaged_half_size_crop_with_its_clean_crop():
    """What avatars-2x-compact is fine-tuned on: a pure function of the step, 2x apart in size,
    and the input is the target reduced (close to it once scaled back up)."""
    import torch
    import torch.nn.functional as F

    from tools.avatars import upscaler

    low, high = upscaler.batch(3)
    assert low.shape[-2:] == (high.shape[-2] // 2, high.shape[-1] // 2) and low.shape[0] == high.shape[0]
    assert torch.equal(upscaler.batch(3)[0], low) and not torch.equal(upscaler.batch(4)[0], low)
    assert (F.avg_pool2d(high, 2) - low).abs().mean() < 0.08
