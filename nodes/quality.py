"""Quality checks: measure an image, compare with thresholds, return a typed report.

The report has `passed`, so it can be the `check` of the `retry` flow node: a graph that
regenerates with the next seed until the image passes, at most N tries (see
graphs/avatar.json). Every figure is computed on the luminance (Rec. 601 weights) unless
said otherwise; the sharpness is measured at a fixed working size so that it does not
depend on the resolution of the image.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from engine.context import Context
from engine.node import node
from engine.settings import Settings
from engine.types import model_name

from ._common import fingerprint_model, no_grad
from .avatar_check import AvatarChecker, judge
from .control_types import ClipModel, QualityReport
from .types import Image

if TYPE_CHECKING:
    import torch

WORK_SIZE = 256          # sharpness is measured at this size (area-resampled)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def luminance(pixels: torch.Tensor) -> torch.Tensor:
    """[B, H, W] from [B, H, W, 3] RGB in 0..1."""
    return pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114


def measure(pixels: torch.Tensor) -> list[dict[str, float]]:
    """Per image: finite, sharpness, brightness, clipped, contrast, colourfulness."""
    import torch
    import torch.nn.functional as F
    out = []
    for img in pixels.float():
        finite = bool(torch.isfinite(img).all())
        img = torch.nan_to_num(img, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)
        y = luminance(img)
        small = F.interpolate(y[None, None], size=(WORK_SIZE, WORK_SIZE), mode="area")
        kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
        lap = F.conv2d(F.pad(small, (1, 1, 1, 1), mode="replicate"), kernel)
        rg = img[..., 0] - img[..., 1]
        yb = 0.5 * (img[..., 0] + img[..., 1]) - img[..., 2]
        colourfulness = math.hypot(rg.std().item(), yb.std().item()) + 0.3 * math.hypot(rg.mean().item(), yb.mean().item())
        clipped = ((img <= 1 / 255).all(-1) | (img >= 254 / 255).all(-1)).float().mean().item()
        out.append({"finite": float(finite), "sharpness": lap.var().item() * 1000.0,
                    "brightness": y.mean().item(), "clipped": clipped, "contrast": y.std().item(),
                    "colourfulness": colourfulness})
    return out


@no_grad
def clip_scores(clip: ClipModel, pixels: torch.Tensor, text: str) -> list[float]:
    """100 x cosine similarity between each image and the text, as CLIPScore defines it."""
    import torch
    import torch.nn.functional as F
    model = clip.model
    size = model.config.vision_config.image_size
    x = F.interpolate(pixels.permute(0, 3, 1, 2).float(), size=(size, size), mode="bicubic",
                      align_corners=False).clamp(0, 1)
    mean, std = torch.tensor(CLIP_MEAN)[None, :, None, None], torch.tensor(CLIP_STD)[None, :, None, None]
    device = next(model.parameters()).device
    x = ((x - mean) / std).to(device)
    tokens = clip.tokenizer([text], padding="max_length", truncation=True, return_tensors="pt").to(device)
    image = model.get_image_features(pixel_values=x)
    words = model.get_text_features(**tokens)
    image = getattr(image, "pooler_output", image)
    words = getattr(words, "pooler_output", words)
    cos = F.cosine_similarity(image, words.expand_as(image), dim=-1)
    return [max(0.0, 100.0 * c) for c in cos.tolist()]


def _clip_fingerprint(name: str, settings: Settings, **_) -> str:
    return fingerprint_model(settings, "clip", name)


@node("load_clip", category="quality", version=1, fingerprint=_clip_fingerprint)
def load_clip(ctx: Context, name: model_name("clip")) -> ClipModel:
    """Load a CLIP model (transformers CLIPModel folder with its tokenizer) from models/clip,
    for CLIP scores."""
    from ._common import resolve_model

    path = resolve_model(ctx, "clip", name)

    def load():
        from transformers import CLIPModel, CLIPTokenizer

        model = CLIPModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        return model.to(ctx.settings.device), CLIPTokenizer.from_pretrained(path, local_files_only=True)

    from engine.models import file_digest

    identity = f"{file_digest(path)}|{ctx.settings.device}"
    model, tokenizer = ctx.models.get(("clip", identity), load)
    return ClipModel(model, tokenizer, identity=identity)


Unit = Annotated[float, Field(ge=0, le=1)]


@node("quality_check", category="quality", version=1)
def quality_check(image: Image,
                  min_sharpness: Annotated[float, Field(ge=0)] = 0.0,
                  min_brightness: Unit = 0.03, max_brightness: Unit = 0.97,
                  max_clipped: Unit = 0.6, min_contrast: Unit = 0.02,
                  min_colourfulness: Annotated[float, Field(ge=0)] = 0.0,
                  clip: ClipModel | None = None, prompt: str = "",
                  min_clip_score: Annotated[float, Field(ge=0, le=100)] = 0.0,
                  checker: AvatarChecker | None = None, min_attribute_match: Unit = 1.0) -> QualityReport:
    """Measure sharpness, exposure (brightness, clipped fraction), contrast, colourfulness and,
    with a CLIP model, the CLIP score against `prompt`; with an avatar checker, the share of
    the attributes `prompt` asks for that the image shows (`attribute_match`). The report
    passes when every image of the batch is finite, not blank and within every threshold.
    `reasons` names each miss."""
    metrics = measure(image.pixels)
    attribute_misses: list[list[str]] = [[] for _ in metrics]
    if checker is not None:
        seen, attribute_misses = judge(checker, image.pixels, prompt, min_attribute_match)
        for m, attributes in zip(metrics, seen):
            m.update(attributes)
    if clip is not None:
        for m, score in zip(metrics, clip_scores(clip, image.pixels, prompt)):
            m["clip_score"] = score
    reasons = []
    for i, m in enumerate(metrics):
        tag = f"image {i}: " if len(metrics) > 1 else ""
        checks = [
            (m["finite"] < 1, "contains NaN or infinite values"),
            (m["contrast"] < 0.004, f"is blank (luminance spread {m['contrast']:.4f})"),
            (m["sharpness"] < min_sharpness, f"sharpness {m['sharpness']:.3g} < {min_sharpness}"),
            (m["brightness"] < min_brightness, f"too dark: brightness {m['brightness']:.3f} < {min_brightness}"),
            (m["brightness"] > max_brightness, f"too bright: brightness {m['brightness']:.3f} > {max_brightness}"),
            (m["clipped"] > max_clipped, f"clipped fraction {m['clipped']:.3f} > {max_clipped}"),
            (m["contrast"] < min_contrast, f"contrast {m['contrast']:.3f} < {min_contrast}"),
            (m["colourfulness"] < min_colourfulness,
             f"colourfulness {m['colourfulness']:.3f} < {min_colourfulness}"),
            ("clip_score" in m and m["clip_score"] < min_clip_score,
             f"CLIP score {m.get('clip_score', 0):.1f} < {min_clip_score}"),
        ]
        reasons += [tag + why for failed, why in checks if failed]
        reasons += [tag + why for why in attribute_misses[i]]
    return QualityReport(passed=not reasons, reasons=reasons, metrics=metrics)
