"""The avatar attribute checker: does a portrait show what its prompt asked for?

A tiny CNN (models/classifiers/avatar-attributes.safetensors, trained by
tools/avatars/train_checker.py on drawn portraits) predicts hair colour, hair style, eye
colour, expression, background and glasses from a 64x64 image. The prompt is read for the
same attributes in the avatar prompt node's wording ("red short hair", "green eyes",
"smiling", "nature background", "glasses"); an attribute the prompt does not name, or names
with a word the checker was not trained on, is not judged. The score of an image is the
share of judged attributes whose predicted label is the asked one.

The file carries its own label lists and layer sizes in the safetensors metadata, so the
network is rebuilt from the file alone.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.node import node
from engine.settings import Settings
from engine.types import model_name

from ._common import fingerprint_model, no_grad, refuse_pickle, resolve_model
from .control_types import QualityReport
from .types import Image, _PortType

if TYPE_CHECKING:
    import torch

INPUT_SIZE = 64
MODEL_KIND = "classifiers"

# How each attribute is named in a prompt; {} is one label (a regular expression's text).
PROMPT_PATTERNS = {
    "hair_color": r"\b{}\b[\w -]*\bhair\b",
    "hair_style": r"\b{} hair\b",
    "eye_color": r"\b{} eyes\b",
    "expression": r"\b{}\b",
    "background": r"\b{}\b",
}


def build_network(channels: list[int], hidden: int, outputs: int) -> torch.nn.Module:
    """Conv-ReLU-maxpool stages (64 -> 4 pixels for four stages), then a small MLP whose
    outputs are every attribute's logits side by side."""
    from torch import nn

    layers: list[nn.Module] = []
    width = 3
    for out in channels:
        layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        width = out
    side = INPUT_SIZE >> len(channels)
    layers += [nn.Flatten(), nn.Linear(width * side * side, hidden), nn.ReLU(), nn.Linear(hidden, outputs)]
    return nn.Sequential(*layers)


@dataclass(eq=False)
class AvatarChecker(_PortType):
    """A loaded attribute classifier: `labels` maps each attribute to its label list, in the
    order of the network's outputs."""

    network: Any
    labels: dict[str, list[str]]
    identity: str

    def probabilities(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per attribute, [B, labels] probabilities for [B, H, W, 3] images in 0..1."""
        return predict(self.network, self.labels, pixels)


def to_network_input(pixels: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] in 0..1 -> [B, 3, 64, 64] in -1..1 (area-resampled, as drawn images are)."""
    import torch.nn.functional as F

    x = pixels.float().permute(0, 3, 1, 2).clamp(0, 1)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
    return x * 2 - 1


@no_grad
def predict(network: torch.nn.Module, labels: dict[str, list[str]], pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    logits = network(to_network_input(pixels))
    out, start = {}, 0
    for attribute, names in labels.items():
        out[attribute] = logits[:, start:start + len(names)].softmax(-1)
        start += len(names)
    return out


def asked_attributes(prompt: str, labels: dict[str, list[str]]) -> dict[str, str]:
    """The attributes a prompt names, in the checker's labels. Longer labels are tried first
    so "long flowing" wins over a shorter label inside it."""
    text = prompt.lower()
    asked = {}
    for attribute, pattern in PROMPT_PATTERNS.items():
        for label in sorted(labels.get(attribute, []), key=len, reverse=True):
            if re.search(pattern.format(re.escape(label)), text):
                asked[attribute] = label
                break
    if "glasses" in labels:
        # The avatar prompts mention glasses only when wanted, so silence means none.
        asked["glasses"] = "yes" if re.search(r"\bglasses\b", text) else "no"
    return asked


def attribute_metrics(checker: AvatarChecker, pixels: torch.Tensor, prompt: str) -> list[dict[str, float]]:
    """Per image: `attribute_match` (share of asked attributes predicted as asked),
    `attributes_checked`, and per attribute the probability of the asked label."""
    asked = asked_attributes(prompt, checker.labels)
    probabilities = checker.probabilities(pixels)
    metrics = []
    for i in range(pixels.shape[0]):
        m: dict[str, float] = {"attributes_checked": float(len(asked))}
        matched = 0
        for attribute, label in asked.items():
            p = probabilities[attribute][i]
            wanted = checker.labels[attribute].index(label)
            m[attribute] = float(p[wanted])
            matched += int(p.argmax()) == wanted
        m["attribute_match"] = matched / len(asked) if asked else 1.0
        metrics.append(m)
    return metrics


def mismatches(checker: AvatarChecker, pixels: torch.Tensor, prompt: str) -> list[list[str]]:
    """Per image, "attribute: asked X, looks Y" for each asked attribute predicted otherwise."""
    asked = asked_attributes(prompt, checker.labels)
    probabilities = checker.probabilities(pixels)
    out = []
    for i in range(pixels.shape[0]):
        misses = []
        for attribute, label in asked.items():
            seen = checker.labels[attribute][int(probabilities[attribute][i].argmax())]
            if seen != label:
                misses.append(f"{attribute}: asked {label}, looks {seen}")
        out.append(misses)
    return out


def _checker_fingerprint(name: str, settings: Settings, **_) -> str:
    return fingerprint_model(settings, MODEL_KIND, name)


def read_checker_file(path) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], dict[str, Any]]:
    """(weights, labels, architecture) of a checker file; ValueError says what is wrong."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        weights = {key: f.get_tensor(key) for key in f.keys()}
    try:
        labels = json.loads(metadata["labels"])
        architecture = json.loads(metadata["architecture"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"metadata has no valid {exc} entry (labels, architecture)") from None
    return weights, labels, architecture


@node("load_avatar_checker", category="quality", version=1, fingerprint=_checker_fingerprint)
def load_avatar_checker(ctx: Context, name: model_name(MODEL_KIND) = "avatar-attributes.safetensors") -> AvatarChecker:
    """Load an avatar attribute classifier from models/classifiers (a .safetensors file whose
    metadata lists its attributes and labels)."""
    from engine.models import file_digest

    path = resolve_model(ctx, MODEL_KIND, name)
    refuse_pickle(ctx.settings, path)
    identity = f"{file_digest(path)}|{ctx.settings.device}"

    def load():
        try:
            weights, labels, architecture = read_checker_file(path)
            network = build_network(architecture["channels"], architecture["hidden"],
                                    sum(len(v) for v in labels.values()))
            network.load_state_dict({k: v.float() for k, v in weights.items()})
        except Exception as exc:  # noqa: BLE001 - not a checker file, wrong shapes, corrupt
            raise NodeInputError("name", f"{path.name} is not an avatar checker: {exc}") from None
        return network.eval().to(ctx.settings.device), labels

    network, labels = ctx.models.get(("avatar_checker", identity), load)
    return AvatarChecker(network, labels, identity)


@node("avatar_check", category="quality", version=1)
def avatar_check(image: Image, checker: AvatarChecker, prompt: str,
                 min_match: Annotated[float, Field(ge=0, le=1, description="share of asked attributes "
                                                   "that must be seen")] = 1.0) -> QualityReport:
    """Score how well each image shows the attributes its avatar prompt asks for (hair colour
    and style, eye colour, expression, background, glasses); passes when every image's
    `attribute_match` reaches `min_match`. `reasons` names each attribute seen otherwise."""
    pixels = image.pixels.to(next(checker.network.parameters()).device)
    metrics, misses = judge(checker, pixels, prompt, min_match)
    reasons = [(f"image {i}: " if len(metrics) > 1 else "") + why
               for i, image_misses in enumerate(misses) for why in image_misses]
    return QualityReport(passed=not reasons, reasons=reasons, metrics=metrics)


def judge(checker: AvatarChecker, pixels: torch.Tensor, prompt: str,
          min_match: float) -> tuple[list[dict[str, float]], list[list[str]]]:
    """(metrics, reasons) per image; an image has a reason when its match is below min_match."""
    metrics = attribute_metrics(checker, pixels, prompt)
    reasons = [[f"attribute match {m['attribute_match']:.2f} < {min_match} ({'; '.join(seen)})"]
               if m["attribute_match"] < min_match else []
               for m, seen in zip(metrics, mismatches(checker, pixels, prompt))]
    return metrics, reasons
