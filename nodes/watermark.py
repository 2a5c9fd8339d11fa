"""Watermarks: an invisible, error-checked mark saying "made by a machine", and a visible one.

Methods
-------
``loom`` (default), built here: additive spread spectrum in the luminance. Each payload bit
modulates its own key-derived +-1 pattern laid out on a grid of `cell` x `cell` pixel cells
(smoothly interpolated), and all patterns are added to the image. The amplitude follows the
image: full `strength` where it is textured, a third of it on flat colours, where the eye
would see a pattern (PSNR >= 42 dB there). Detection removes the image's local mean and
correlates the cell sums of the rest with each pattern; the sign of the correlation is the
bit. Every bit is spread over the whole image, so the mark is not held by the fine detail
that JPEG quantisation and down-scaling throw away, and it is additive, so flat and bright
areas carry it too (where dwtDct/dwtDctSvd, which modulate existing coefficients, fail).
Embedding checks the marked image after JPEG 75 and a half-size round trip and strengthens
only the bits that would not survive. The payload carries a CRC-16, so a detector says
"found" only when the bits check out rather than reading noise as a message; when they do
not, flipping up to two of the least confident bits is tried (CRC-aided soft decoding).

``dwtDct`` / ``dwtDctSvd``: the invisible-watermark package (SDXL's convention is dwtDct),
kept for compatibility with marks made elsewhere. Measured robustness of the three:
`python bench/watermark.py` (figures in its docstring).
"""
from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from engine.errors import NodeInputError
from engine.node import node

from .control_types import WatermarkReport
from .types import Image

if TYPE_CHECKING:
    import numpy as np
    import torch

Method = Literal["loom", "dwtDct", "dwtDctSvd"]
DEFAULT_KEY = "loom-watermark-v1"
CELL = 4


# ---------------------------------------------------------------------------
# payload: text or bits, with a CRC-16 (CCITT) so detection can tell a mark from noise
# ---------------------------------------------------------------------------

def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _to_bits(data: bytes) -> list[int]:
    return [(byte >> (7 - i)) & 1 for byte in data for i in range(8)]


def _to_bytes(bits: list[int]) -> bytes:
    return bytes(sum(b << (7 - i) for i, b in enumerate(bits[k:k + 8])) for k in range(0, len(bits) - 7, 8))


def encode_payload(data: bytes) -> list[int]:
    """Payload bits + 16 CRC bits."""
    return _to_bits(data) + _to_bits(crc16(data).to_bytes(2, "big"))


def decode_payload(bits: list[int]) -> tuple[bytes, bool]:
    data, check = _to_bytes(bits[:-16]), _to_bytes(bits[-16:])
    return data, crc16(data).to_bytes(2, "big") == check


def decode_soft(soft: torch.Tensor, flips: int = 2, weakest: int = 8) -> tuple[list[int], bool, int]:
    """CRC-aided soft decoding: the hard bits, or, when their CRC fails, the first variant
    with up to `flips` of the `weakest` least confident bits flipped whose CRC checks out.
    (1 + 8 + 28 = 37 candidates: a random image passes by chance with p ~ 37 / 65536.)"""
    from itertools import combinations

    bits = [int(v > 0) for v in soft.tolist()]
    if decode_payload(bits)[1]:
        return bits, True, 0
    order = soft.abs().argsort().tolist()[:weakest]
    for k in range(1, flips + 1):
        for combo in combinations(order, k):
            trial = list(bits)
            for i in combo:
                trial[i] ^= 1
            if decode_payload(trial)[1]:
                return trial, True, k
    return bits, False, 0


def parse_bits(text: str) -> list[int]:
    bits = [c for c in text if c not in " _,"]
    if not bits or any(c not in "01" for c in bits) or len(bits) % 8:
        raise NodeInputError("bits", "bits must be 0/1 characters, a multiple of 8 in number")
    return [int(c) for c in bits]


# ---------------------------------------------------------------------------
# the spread-spectrum method
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _grid(n_bits: int, grid_h: int, grid_w: int, key: str) -> torch.Tensor:
    """[n_bits, gh, gw] key-derived +-1 patterns, one value per `CELL` x `CELL` cell, each made
    zero-mean. The mark is built and read on this grid: a pixel pattern is its smooth
    (bilinear) enlargement, so correlating with it is correlating the cell sums with the grid."""
    import torch

    seed = int.from_bytes(hashlib.sha256(f"{key}|{n_bits}".encode()).digest()[:8], "big")
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, 2, (n_bits, grid_h, grid_w), generator=g).float() * 2 - 1
    return grid - grid.mean(dim=(1, 2), keepdim=True)


def _grid_shape(height: int, width: int, cell: int = CELL) -> tuple[int, int]:
    return -(-height // cell), -(-width // cell)


def _enlarge(grid: torch.Tensor, height: int, width: int, cell: int = CELL) -> torch.Tensor:
    """[..., gh, gw] cell values -> [..., H, W] pixels, bilinearly smoothed."""
    import torch.nn.functional as F

    gh, gw = grid.shape[-2:]
    up = F.interpolate(grid.reshape(-1, 1, gh, gw), size=(gh * cell, gw * cell), mode="bilinear",
                       align_corners=False)
    return up.reshape(*grid.shape[:-2], gh * cell, gw * cell)[..., :height, :width]


def _cell_sums(x: torch.Tensor, cell: int = CELL) -> torch.Tensor:
    """[B, H, W] -> [B, gh, gw] sums over each cell (the adjoint of enlarging, up to smoothing)."""
    import torch.nn.functional as F

    b, h, w = x.shape
    gh, gw = _grid_shape(h, w, cell)
    padded = F.pad(x[:, None], (0, gw * cell - w, 0, gh * cell - h))
    return F.avg_pool2d(padded, cell)[:, 0] * cell * cell


def _box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """[B, H, W] mean over k x k neighbourhoods (edges replicated), as two 1-D passes."""
    import torch.nn.functional as F

    padded = F.pad(x[:, None], (k // 2 + 1, (k - 1) // 2) * 2, mode="replicate")[:, 0]
    rows = padded.cumsum(1)
    rows = rows[:, k:] - rows[:, :-k]       # running sums: constant cost whatever k is
    cols = rows.cumsum(2)
    return (cols[:, :, k:] - cols[:, :, :-k]) / (k * k)


def _residual(y: torch.Tensor, cell: int = CELL) -> torch.Tensor:
    """Luminance minus its local mean: most of the image goes, the pattern stays."""
    return y - _box_blur(y, 3 * cell)


def _luma(pixels: torch.Tensor) -> torch.Tensor:
    return pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114


def masking(y: torch.Tensor, strength: float) -> torch.Tensor:
    """[B, H, W] amplitude of the mark per pixel, in 0..1 units.

    The eye sees a pattern on a flat colour and not in texture, so the amplitude follows the
    local activity (mean absolute deviation from the local mean, in 8-bit levels): `strength`
    levels in textured areas, a third of it on flat colours (where the robustness loop of
    `embed_loom` raises single bits only as far as an attack needs)."""
    activity = _box_blur((y - _box_blur(y, 5)).abs(), 9) * 255.0
    return strength / 255.0 * (1 / 3 + 2 / 3 * (activity / 4.0).clamp(max=1.0))


def _robustness_attacks(pixels: torch.Tensor) -> list[torch.Tensor]:
    """What the mark must survive: JPEG quality 75, and halving the size then restoring it."""
    import io

    import numpy as np
    import torch
    from PIL import Image as PILImage

    arr = (pixels.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    pil = PILImage.fromarray(arr)
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=75)
    jpeg = PILImage.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    w, h = pil.size
    resized = pil.resize((max(1, w // 2), max(1, h // 2)), PILImage.BICUBIC).resize((w, h), PILImage.BICUBIC)
    return [torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0) for im in (jpeg, resized)]


def embed_loom(pixels: torch.Tensor, bits: list[int], key: str = DEFAULT_KEY,
               strength: float = 3.0, refine: int = 4, margin: float = 4.0) -> torch.Tensor:
    """[B, H, W, 3] with the bits added; `strength` is the amplitude in 8-bit levels where the
    image is textured (a third of it on flat colours).

    Informed embedding: each bit starts at the same amplitude; then the marked, 8-bit image
    is read back as it is and after JPEG 75 and a half-size round trip, and every bit that
    reads back with less than `margin` (in noise sigmas) in any of them is strengthened, up
    to 4x, so that a bit the image happens to oppose still survives the attacks.
    """
    import torch

    b, h, w, _ = pixels.shape
    grid = _grid(len(bits), *_grid_shape(h, w), key)
    signs = torch.tensor([1.0 if x else -1.0 for x in bits])
    base = 1.0 / len(bits) ** 0.5
    out = []
    for img in pixels:
        amplitude = masking(_luma(img[None].float()), strength)[0]
        ceiling = 3 * strength / 255.0   # no pixel moves more than 3x the nominal amplitude
        weights = torch.full((len(bits),), base)
        marked = img
        for attempt in range(refine + 1):
            mark = (_enlarge(torch.einsum("n,nhw->hw", weights * signs, grid), h, w) * amplitude
                    ).clamp(-ceiling, ceiling)
            marked = ((img + mark[:, :, None]).clamp(0, 1) * 255).round() / 255
            if attempt == refine:
                break
            views = [marked, *_robustness_attacks(marked)]
            got = detect_loom(torch.stack(views), len(bits), key) * signs
            weak = (got < margin).any(dim=0)
            if not weak.any():
                break
            weights = torch.where(weak, (weights * 1.5).clamp(max=4 * base), weights)
        out.append(marked)
    return torch.stack(out)


def detect_loom(pixels: torch.Tensor, n_bits: int, key: str = DEFAULT_KEY) -> torch.Tensor:
    """[B, n_bits] normalised correlations (sign = bit, magnitude = confidence in noise sigmas)."""
    import torch

    _, h, w, _ = pixels.shape
    r = _residual(_luma(pixels.float()))
    # edges are image, not mark: clip the residual so a few strong edges cannot outvote it
    typical = r[:, ::4, ::4].abs().flatten(1).median(dim=1).values   # a sample is enough
    limit = 3 * typical.clamp_min(1 / 255)[:, None, None]
    r = torch.maximum(torch.minimum(r, limit), -limit)
    sums = _cell_sums(r)
    corr = torch.einsum("bhw,nhw->bn", sums, _grid(n_bits, *sums.shape[1:], key))
    # noise scale: how the residual correlates with patterns that carry nothing
    null = _grid(16, *sums.shape[1:], key + "|null")
    sigma = torch.einsum("bhw,nhw->bn", sums, null).std(dim=1, keepdim=True).clamp_min(1e-12)
    return corr / sigma


# ---------------------------------------------------------------------------
# invisible-watermark methods
# ---------------------------------------------------------------------------

def _bgr(pixels: torch.Tensor, i: int) -> np.ndarray:
    import numpy as np
    return np.ascontiguousarray((pixels[i].clamp(0, 1).numpy()[..., ::-1] * 255).round().astype(np.uint8))


def embed_imwatermark(pixels: torch.Tensor, bits: list[int], method: str) -> torch.Tensor:
    import numpy as np
    import torch
    from imwatermark import WatermarkEncoder

    enc = WatermarkEncoder()
    enc.set_watermark("bits", bits)
    out = []
    for i in range(pixels.shape[0]):
        if min(pixels.shape[1:3]) < 256:
            raise NodeInputError("method", f"{method} needs images of at least 256 px on each side")
        bgr = enc.encode(_bgr(pixels, i), method)
        out.append(torch.from_numpy(bgr[..., ::-1].astype(np.float32) / 255.0))
    return torch.stack(out)


def detect_imwatermark(pixels: torch.Tensor, n_bits: int, method: str) -> torch.Tensor:
    import torch
    from imwatermark import WatermarkDecoder

    dec = WatermarkDecoder("bits", n_bits)
    rows = [[1.0 if b else -1.0 for b in dec.decode(_bgr(pixels, i), method)] for i in range(pixels.shape[0])]
    return torch.tensor(rows)


def embed(pixels: torch.Tensor, bits: list[int], method: str = "loom", key: str = DEFAULT_KEY,
          strength: float = 3.0) -> torch.Tensor:
    if method == "loom":
        return embed_loom(pixels, bits, key, strength)
    return embed_imwatermark(pixels, bits, method)


def detect_soft(pixels: torch.Tensor, n_bits: int, method: str = "loom", key: str = DEFAULT_KEY) -> torch.Tensor:
    if method == "loom":
        return detect_loom(pixels, n_bits, key)
    return detect_imwatermark(pixels, n_bits, method)


# ---------------------------------------------------------------------------
# nodes
# ---------------------------------------------------------------------------

def _payload(text: str, bits: str) -> list[int]:
    if bits:
        return encode_payload(_to_bytes(parse_bits(bits)))
    data = text.encode()
    if not 1 <= len(data) <= 32:
        raise NodeInputError("text", f"the payload is {len(data)} bytes; give 1 to 32")
    return encode_payload(data)


@node("watermark_embed", category="watermark", version=1)
def watermark_embed(image: Image, text: Annotated[str, Field(max_length=32)] = "loom:ai",
                    bits: Annotated[str, Field(description="payload as 0/1 (overrides text)")] = "",
                    method: Method = "loom", key: Annotated[str, Field(min_length=1)] = DEFAULT_KEY,
                    strength: Annotated[float, Field(gt=0, le=20, description="8-bit levels in textured "
                                                     "areas; a third of it on flat colours (loom)")] = 3.0
                    ) -> Image:
    """Embed an invisible watermark (text or bits payload, with a CRC-16) in every image."""
    return Image(embed(image.pixels, _payload(text, bits), method, key, strength))


@node("watermark_detect", category="watermark", version=1)
def watermark_detect(image: Image, length: Annotated[int, Field(ge=1, le=32, description="payload bytes")] = 7,
                     expected: str = "", method: Method = "loom",
                     key: Annotated[str, Field(min_length=1)] = DEFAULT_KEY) -> WatermarkReport:
    """Read a watermark of `length` payload bytes (the length of `expected` when given) from
    the first image. `found` means the CRC checks out; with `expected`, the report also counts
    bit errors against it."""
    data_len = len(expected.encode()) if expected else length
    n = data_len * 8 + 16
    soft = detect_soft(image.pixels[:1], n, method, key)[0]
    bits, ok, corrected = decode_soft(soft)
    data, _ = decode_payload(bits)
    report = WatermarkReport(found=ok, bits=bits, text=data.decode("utf-8", "replace") if ok else "",
                             confidence=float(soft.abs().mean()),
                             details={"method": method, "corrected_bits": corrected})
    if expected:
        want = encode_payload(expected.encode())
        report.expected_bit_errors = sum(a != b for a, b in zip(bits, want))
    return report


Position = Literal["bottom_right", "bottom_left", "top_right", "top_left", "center"]


@node("visible_watermark", category="watermark", version=1)
def visible_watermark(image: Image, text: Annotated[str, Field(min_length=1, max_length=200)] = "AI generated",
                      position: Position = "bottom_right",
                      opacity: Annotated[float, Field(ge=0, le=1)] = 0.6,
                      size: Annotated[float, Field(gt=0, le=1, description="text height / image height")] = 0.08
                      ) -> Image:
    """Stamp a visible text label (white with a dark outline) on every image."""
    import numpy as np
    import torch
    from PIL import Image as PILImage, ImageDraw, ImageFont

    h, w = image.height, image.width
    font_px = max(8, int(h * size))
    try:
        font = ImageFont.load_default(size=font_px)
    except TypeError:
        font = ImageFont.load_default()
    layer = PILImage.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=1)
    tw, th = right - left, bottom - top
    m = max(2, font_px // 4)
    x = {"bottom_right": w - tw - m, "top_right": w - tw - m, "center": (w - tw) // 2}.get(position, m)
    y = {"bottom_right": h - th - m, "bottom_left": h - th - m, "center": (h - th) // 2}.get(position, m)
    alpha = int(round(opacity * 255))
    draw.text((x - left, y - top), text, font=font, fill=(255, 255, 255, alpha), stroke_width=1,
              stroke_fill=(0, 0, 0, alpha))
    a = torch.from_numpy(np.asarray(layer, dtype=np.float32) / 255.0)
    rgb, mask = a[..., :3], a[..., 3:]
    return Image((image.pixels * (1 - mask) + rgb * mask).contiguous())
