"""The loom watermark stays invisible on flat colours (PSNR >= 42 dB) and still reads back
exactly after JPEG 75 and a half-size round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("colour", [(0.5, 0.5, 0.5), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.1, 0.6, 0.3)])
def test_flat_colour_keeps_42_db_and_the_payload_survives(colour):
    from bench.watermark import jpeg, quantise, resize_half_and_back
    from nodes.types import Image
    from nodes.watermark import watermark_detect, watermark_embed

    flat = quantise(torch.tensor(colour).expand(1, 256, 256, 3).clone())
    marked = watermark_embed(Image(flat), text="loom:ai").pixels
    psnr = 10 * np.log10(1 / float(((marked - flat) ** 2).mean()))
    assert psnr >= 42, psnr
    for attack in (lambda x: x, jpeg, resize_half_and_back):
        report = watermark_detect(Image(attack(marked)), expected="loom:ai")
        assert report.found and report.expected_bit_errors == 0


def test_texture_carries_more_of_the_mark_than_flat_areas():
    from nodes.watermark import _luma, masking

    rng = np.random.default_rng(0)
    half = torch.full((1, 64, 128), 0.5)
    half[:, :, 64:] = torch.from_numpy(rng.random((64, 64)).astype(np.float32))
    amplitude = masking(half, strength=3.0)[0]
    assert amplitude[:, 72:].mean() > 2.5 * amplitude[:, :56].mean()
    assert _luma(torch.ones(1, 2, 2, 3)).allclose(torch.ones(1, 2, 2))
