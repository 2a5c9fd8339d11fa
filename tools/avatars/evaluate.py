"""Measure avatars-tiny on held-out attribute sets and print the tables (and JSON).

    python -m tools.avatars.evaluate [--count 100] [--gate 50] [--write-card]

The exported pipeline is loaded with plain diffusers (local_files_only=True), as a user
would. Each held-out portrait's caption (an attribute set plus unlabelled variation never
drawn in training) is generated once and judged two ways:

* by the shipped attribute checker: per-attribute accuracy, and the share of images
  showing every asked attribute;
* by pixel statistics that know nothing of the checker (tools/avatars/pixels.py): hair
  colour at the crown and the kind of background beside the head.

--gate N measures the quality gate of graphs/avatar.json on N held-out sets: without it
the first seed's image is kept; with it seeds are tried in turn (at most 4) until the
checker sees every attribute, else the try with the fewest misses is kept. Reported: the
share of final images matching (by the checker, and by the independent pixel judge) and
the mean number of tries.
"""

import argparse
import json

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from nodes.avatar_check import asked_attributes, predict
from tools.avatars import data, paths, pixels
from tools.avatars.train_checker import held_out_accuracy, load_exported

STEPS = 20
GUIDANCE = 4.0
CHUNK = 25
GATE_TRIES = 4


def load_pipeline() -> StableDiffusionPipeline:
    pipeline = StableDiffusionPipeline.from_pretrained(paths.CHECKPOINT_DIR, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(pipeline, captions: list[str], seeds: list[int]) -> np.ndarray:
    """[N, 64, 64, 3] uint8 images, each from its own seeded generator."""
    images = []
    for start in range(0, len(captions), CHUNK):
        result = pipeline(
            captions[start : start + CHUNK],
            negative_prompt=[""] * len(captions[start : start + CHUNK]),
            height=data.IMAGE_SIZE,
            width=data.IMAGE_SIZE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds[start : start + CHUNK]],
            output_type="np",
        ).images
        images.append((result * 255).round().astype(np.uint8))
    return np.concatenate(images)


class Judge:
    """The checker's view and the pixel view of generated images."""

    def __init__(self):
        self.network, self.labels = load_exported()

    def seen(self, images: np.ndarray) -> list[dict[str, str]]:
        probabilities = predict(self.network, self.labels, torch.from_numpy(images).float() / 255)
        return [
            {attribute: self.labels[attribute][int(p[i].argmax())] for attribute, p in probabilities.items()}
            for i in range(len(images))
        ]

    def misses(self, spec: data.AvatarSpec, seen: dict[str, str]) -> int:
        asked = asked_attributes(spec.caption, self.labels)
        return sum(seen[attribute] != label for attribute, label in asked.items())

    def matches(self, spec: data.AvatarSpec, seen: dict[str, str]) -> bool:
        return self.misses(spec, seen) == 0


def pixel_match(spec: data.AvatarSpec, image: np.ndarray) -> bool:
    return pixels.hair_colour(image) == spec.hair_color and pixels.background_kind(image) == spec.background


def accuracy_figures(pipeline, judge: Judge, specs: list[data.AvatarSpec]) -> tuple[dict, np.ndarray]:
    images = generate(pipeline, [spec.caption for spec in specs], list(range(len(specs))))
    seen = judge.seen(images)
    figures = {
        f"{attribute}_accuracy": float(np.mean([s[attribute] == spec.attributes[attribute]
                                                for s, spec in zip(seen, specs)]))
        for attribute in data.ATTRIBUTES
    }
    figures["all_attributes_accuracy"] = float(np.mean([judge.matches(spec, s) for spec, s in zip(specs, seen)]))
    figures["pixel_hair_colour_accuracy"] = float(np.mean(
        [pixels.hair_colour(image) == spec.hair_color for image, spec in zip(images, specs)]))
    figures["pixel_background_accuracy"] = float(np.mean(
        [pixels.background_kind(image) == spec.background for image, spec in zip(images, specs)]))
    return figures, images


def gate_figures(pipeline, judge: Judge, specs: list[data.AvatarSpec]) -> dict:
    """Try seeds 0, 1, ... for every set still failing, up to GATE_TRIES rounds; a set that never
    passes keeps the try with the fewest missed attributes, as the graph's retry (keep "best") does."""
    captions = [spec.caption for spec in specs]
    final: list[np.ndarray | None] = [None] * len(specs)
    first: list[np.ndarray | None] = [None] * len(specs)
    fewest_misses = [len(data.ATTRIBUTES) + 1] * len(specs)
    tries = [0] * len(specs)
    pending = list(range(len(specs)))
    for seed in range(GATE_TRIES):
        if not pending:
            break
        images = generate(pipeline, [captions[i] for i in pending], [seed] * len(pending))
        still = []
        for i, image, seen in zip(pending, images, judge.seen(images)):
            tries[i] += 1
            if seed == 0:
                first[i] = image
            misses = judge.misses(specs[i], seen)
            if misses < fewest_misses[i]:
                final[i], fewest_misses[i] = image, misses
            if misses:
                still.append(i)
        pending = still

    def share(images, match) -> float:
        return float(np.mean([match(spec, image) for spec, image in zip(specs, images)]))

    def checker_match(spec, image):
        return judge.matches(spec, judge.seen(image[None])[0])

    return {
        "gate_sets": len(specs),
        "gate_max_tries": GATE_TRIES,
        "without_gate_checker_match": share(first, checker_match),
        "with_gate_checker_match": share(final, checker_match),
        "without_gate_pixel_match": share(first, pixel_match),
        "with_gate_pixel_match": share(final, pixel_match),
        "gate_mean_tries": float(np.mean(tries)),
    }


def save_contact_sheet(images: np.ndarray, name: str) -> None:
    from PIL import Image

    per_row = 10
    padded = list(images) + [np.zeros_like(images[0])] * (-len(images) % per_row)
    rows = [np.concatenate(padded[i : i + per_row], axis=1) for i in range(0, len(padded), per_row)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(paths.WORKDIR / name)


def table(figures: dict) -> str:
    return "| measure | value |\n|---|---|\n" + "".join(
        f"| {key} | {value:.3g} |\n" for key, value in figures.items() if isinstance(value, float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="held-out attribute sets to generate")
    parser.add_argument("--gate", type=int, default=0, help="held-out sets for the gate measurement (0: skip)")
    parser.add_argument("--write-card", action="store_true", help="put the figures into the model card")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipeline, judge = load_pipeline(), Judge()
    specs = [data.spec_for("eval", index) for index in range(args.count)]
    figures = {"held_out_sets": len(specs), "steps": STEPS, "guidance_scale": GUIDANCE}
    generated, images = accuracy_figures(pipeline, judge, specs)
    figures.update(generated)
    save_contact_sheet(images, "samples.png")
    figures.update({f"checker_{k}_on_drawings": v for k, v in held_out_accuracy().items()})
    if args.gate:
        gate_specs = [data.spec_for("eval", index) for index in range(10_000, 10_000 + args.gate)]
        figures.update(gate_figures(pipeline, judge, gate_specs))
    print(table(figures))
    print(json.dumps(figures, indent=2))
    if args.write_card:
        from tools.avatars import model_card

        model_card.write(figures)


if __name__ == "__main__":
    main()
