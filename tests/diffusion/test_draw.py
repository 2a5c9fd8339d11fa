"""Drawn sources: the shapes and masks the example graphs start from, without files on disk."""
from __future__ import annotations

import pytest
import torch

from engine.errors import NodeInputError
from nodes.draw import PALETTE, draw_mask, draw_shape
from nodes.types import Image


def test_shape_in_the_default_models_colours():
    img = draw_shape("circle", "red", "blue", size=32, width=64, height=64)
    assert img.pixels.shape == (1, 64, 64, 3)
    centre, corner = img.pixels[0, 32, 32], img.pixels[0, 0, 0]
    assert torch.equal(centre, torch.tensor(PALETTE["red"], dtype=torch.float32) / 255)
    assert torch.equal(corner, torch.tensor(PALETTE["blue"], dtype=torch.float32) / 255)
    red = img.pixels[0, ..., 0]                 # anti-aliased: in-between values along the rim
    assert ((red > 0.1) & (red < 0.9)).sum() > 20


@pytest.mark.parametrize("shape, covered", [("square", 1.0), ("circle", 3.1416 / 4), ("triangle", 0.5)])
def test_shape_area_matches_its_kind(shape, covered):
    img = draw_shape(shape, "white", "black", size=40, width=64, height=64)
    area = img.pixels[0, ..., 0].sum().item() / 40 ** 2
    assert area == pytest.approx(covered, abs=0.03)


def test_shape_position_and_size():
    img = draw_shape("square", "yellow", "black", size=16, center_x=0.25, center_y=0.75, width=64, height=48)
    lit = img.pixels[0, ..., 0] > 0.5
    ys, xs = torch.nonzero(lit, as_tuple=True)
    assert (xs.min().item(), xs.max().item()) == (8, 23)
    assert (ys.min().item(), ys.max().item()) == (28, 43)


def test_mask_in_fractions_and_pixels_agree():
    a = draw_mask("rectangle", 0.25, 0.5, 0.75, 1.0, units="fraction", width=64, height=32)
    b = draw_mask("rectangle", 16, 16, 48, 32, units="pixels", width=64, height=32)
    assert a.mask.shape == (1, 32, 64) and torch.equal(a.mask, b.mask)
    assert a.mask.sum().item() == 32 * 16 and a.mask[0, 16:, 16:48].all()


def test_ellipse_mask_takes_the_image_size_feathers_and_inverts():
    image = Image(torch.zeros(1, 48, 80, 3))
    hard = draw_mask("ellipse", image=image)
    assert hard.mask.shape == (1, 48, 80)
    assert hard.mask[0, 24, 40] == 1 and hard.mask[0, 0, 0] == 0
    assert hard.mask.sum().item() == pytest.approx(3.1416 / 4 * 40 * 24, rel=0.05)
    soft = draw_mask("ellipse", image=image, feather=6)
    assert ((soft.mask > 0) & (soft.mask < 1)).any()
    assert torch.equal(draw_mask("ellipse", image=image, invert=True).mask, 1 - hard.mask)


def test_empty_box_names_the_input():
    with pytest.raises(NodeInputError) as info:
        draw_mask("rectangle", left=0.5, right=0.5)
    assert info.value.input == "right"
