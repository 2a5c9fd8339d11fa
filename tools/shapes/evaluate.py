"""Measure the exported models on held-out images and print JSON.

    python -m tools.shapes.evaluate [--count 90] [--write-cards]

Both pipelines are loaded with plain diffusers from the exported folders
(local_files_only=True), exactly as a user would. Each held-out image's caption
is generated and the result judged with simple pixel statistics: background =
the palette colour most common on the border, foreground = the most common other
colour, shape = how much of its bounding box the foreground fills (triangle 0.5,
circle 0.785, square 1.0). With the ControlNet, the held-out image's Canny edges
are given as well and the generated shape is compared with the true one (IoU).
"""

import argparse
import json

import cv2
import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)

from tools.shapes import data, model_cards, paths

STEPS = 20
GUIDANCE = 4.0
CHUNK = 30
PALETTE = np.array(list(data.PALETTE.values()), dtype=np.float32)
# Fill ratios half-way between triangle (0.5), circle (0.785) and square (1.0).
TRIANGLE_BELOW, SQUARE_ABOVE = 0.64, 0.89


def nearest_palette_labels(image: np.ndarray) -> np.ndarray:
    distances = ((image[..., None, :].astype(np.float32) - PALETTE) ** 2).sum(-1)
    return distances.argmin(-1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return mask
    biggest = 1 + stats[1:, cv2.CC_STAT_AREA].argmax()
    return labels == biggest


def analyse(image: np.ndarray) -> dict:
    """Colour names, shape guess and foreground mask of one HxWx3 uint8 image."""
    labels = nearest_palette_labels(image)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = np.bincount(border, minlength=len(PALETTE)).argmax()
    others = labels[labels != background]
    if others.size == 0:
        return {
            "background": data.COLOURS[background],
            "colour": None,
            "shape": None,
            "mask": labels < 0,
        }
    foreground = np.bincount(others, minlength=len(PALETTE)).argmax()
    pixels = image.astype(np.float32)
    closer_to_foreground = ((pixels - PALETTE[foreground]) ** 2).sum(-1) < (
        (pixels - PALETTE[background]) ** 2
    ).sum(-1)
    mask = largest_component(closer_to_foreground)
    rows, cols = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
    shape = (
        "triangle"
        if fill < TRIANGLE_BELOW
        else "square"
        if fill > SQUARE_ABOVE
        else "circle"
    )
    return {
        "background": data.COLOURS[background],
        "colour": data.COLOURS[foreground],
        "shape": shape,
        "mask": mask,
    }


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def generate(pipeline, specs, **extra) -> list[np.ndarray]:
    pipeline.set_progress_bar_config(disable=True)
    images = []
    for start in range(0, len(specs), CHUNK):
        chunk = specs[start : start + CHUNK]
        chunk_extra = {
            key: value[start : start + CHUNK] for key, value in extra.items()
        }
        result = pipeline(
            [spec.caption for spec in chunk],
            height=data.IMAGE_SIZE,
            width=data.IMAGE_SIZE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=[
                torch.Generator().manual_seed(start + i) for i in range(len(chunk))
            ],
            output_type="np",
            **chunk_extra,
        ).images
        images += [(image * 255).round().astype(np.uint8) for image in result]
    return images


def accuracy(specs, analyses, key: str, truth) -> float:
    return sum(
        analysis[key] == truth(spec) for spec, analysis in zip(specs, analyses)
    ) / len(specs)


def text_to_image_figures(specs) -> tuple[dict, list[np.ndarray]]:
    pipeline = StableDiffusionPipeline.from_pretrained(
        paths.CHECKPOINT_DIR, local_files_only=True
    )
    images = generate(pipeline, specs)
    analyses = [analyse(image) for image in images]
    figures = {
        "foreground_colour_accuracy": accuracy(
            specs, analyses, "colour", lambda spec: spec.colour
        ),
        "background_colour_accuracy": accuracy(
            specs, analyses, "background", lambda spec: spec.background
        ),
        "shape_accuracy": accuracy(specs, analyses, "shape", lambda spec: spec.shape),
    }
    return figures, images


def controlnet_figures(specs) -> tuple[dict, list[np.ndarray]]:
    controlnet = ControlNetModel.from_pretrained(
        paths.CONTROLNET_DIR, local_files_only=True
    )
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(
        paths.CHECKPOINT_DIR,
        controlnet=controlnet,
        local_files_only=True,
    )
    edges = [data.canny_edges(data.render(spec)) for spec in specs]
    images = generate(pipeline, specs, image=edges)
    analyses = [analyse(image) for image in images]
    ious = [
        iou(analysis["mask"], data.shape_mask(spec))
        for spec, analysis in zip(specs, analyses)
    ]
    figures = {
        "controlnet_mean_iou": float(np.mean(ious)),
        "controlnet_min_iou": float(np.min(ious)),
        "controlnet_foreground_colour_accuracy": accuracy(
            specs, analyses, "colour", lambda spec: spec.colour
        ),
        "controlnet_background_colour_accuracy": accuracy(
            specs, analyses, "background", lambda spec: spec.background
        ),
    }
    return figures, images


def save_contact_sheet(images: list[np.ndarray], name: str) -> None:
    """A grid of the generated images, 10 per row, for looking at by eye."""
    per_row = 10
    padded = images + [np.zeros_like(images[0])] * (-len(images) % per_row)
    rows = [
        np.concatenate(padded[i : i + per_row], axis=1)
        for i in range(0, len(padded), per_row)
    ]
    cv2.imwrite(
        str(paths.WORKDIR / name),
        cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--count", type=int, default=90, help="number of held-out images"
    )
    parser.add_argument(
        "--write-cards",
        action="store_true",
        help="put the figures into the model cards",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    specs = [data.spec_for("eval", index) for index in range(args.count)]
    figures = {
        "held_out_images": len(specs),
        "steps": STEPS,
        "guidance_scale": GUIDANCE,
    }
    text_figures, images = text_to_image_figures(specs)
    figures.update(text_figures)
    save_contact_sheet(images, "samples.png")
    if (paths.CONTROLNET_DIR / "config.json").exists():
        control_figures, control_images = controlnet_figures(specs)
        figures.update(control_figures)
        save_contact_sheet(control_images, "controlnet-samples.png")
    print(json.dumps(figures, indent=2))
    if args.write_cards:
        model_cards.write_all(evaluation=figures)


if __name__ == "__main__":
    main()
