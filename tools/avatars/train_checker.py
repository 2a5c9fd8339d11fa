"""Train the avatar attribute checker and measure it on held-out drawings.

    python -m tools.avatars.train_checker --minutes 8 --steps 3000   (rerun to continue)
    python -m tools.avatars.train_checker --evaluate                 (held-out accuracy, JSON)

The network is nodes/avatar_check.py's, so the node loads exactly what was trained.
Training images are drawn portraits, softened at random (blur, noise, colour shift) so
the checker also reads the smoother images a diffusion model makes. The export is
models/classifiers/avatar-attributes.safetensors with its labels in the metadata.
"""

import argparse
import json
import random

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.transforms.functional import gaussian_blur

from nodes.avatar_check import build_network, predict, read_checker_file
from tools.avatars import data, paths
from tools.shapes import resumable

SEED = 4321
CHANNELS = [8, 16, 32, 32]
HIDDEN = 64
BATCH = 32
TRAINING_IMAGES = 6000
STAGE_DIR = paths.WORKDIR / "checker"


def label_targets(specs: list[data.AvatarSpec]) -> torch.Tensor:
    """[N, attributes] label indices, in data.ATTRIBUTES order."""
    return torch.tensor(
        [[values.index(spec.attributes[name]) for name, values in data.ATTRIBUTES.items()]
         for spec in specs]
    )


def softened(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Drawn portraits ([B, 3, H, W] in 0..1) as a generator might render them: blurred,
    noisy, colour-shifted."""
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
    pixels = torch.stack([gaussian_blur(image, 5, rng.uniform(0.3, 1.2)) if rng.random() < 0.6 else image
                          for image in pixels])
    batch = pixels.shape[0]
    gain = 0.9 + 0.2 * torch.rand(batch, 1, 1, 1, generator=generator)
    shift = 0.08 * torch.rand(batch, 3, 1, 1, generator=generator) - 0.04
    noise = torch.randn(pixels.shape, generator=generator) * 0.04 * torch.rand(batch, 1, 1, 1, generator=generator)
    return (pixels * gain + shift + noise).clamp(0, 1)


def make_network() -> torch.nn.Module:
    return build_network(CHANNELS, HIDDEN, sum(len(v) for v in data.ATTRIBUTES.values()))


def loss_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    loss, start = 0.0, 0
    for column, values in enumerate(data.ATTRIBUTES.values()):
        loss = loss + F.cross_entropy(logits[:, start : start + len(values)], targets[:, column])
        start += len(values)
    return loss


def train(args) -> None:
    network = make_network()
    specs = [data.spec_for("train", index, SEED) for index in range(TRAINING_IMAGES)]
    images = torch.from_numpy(np.stack([np.asarray(data.render(spec)) for spec in specs])).permute(0, 3, 1, 2)
    targets = label_targets(specs)
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = resumable.warmup_cosine(optimizer, 100, args.steps)

    def step_fn(step: int) -> float:
        network.train()
        generator = resumable.batch_generator(SEED, step)
        indices = torch.randint(0, len(images), (BATCH,), generator=generator).tolist()
        pixels = softened(images[indices].float() / 255, generator)
        logits = network(pixels * 2 - 1)
        loss = loss_of(logits, targets[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return loss.item()

    components = {"network": network, "optimizer": optimizer, "schedule": schedule}
    resumable.run(STAGE_DIR, components, step_fn, args.steps, args.minutes)
    export(network)


def export(network: torch.nn.Module) -> None:
    paths.CHECKER_FILE.parent.mkdir(parents=True, exist_ok=True)
    weights = {key: value.contiguous() for key, value in network.state_dict().items()}
    save_file(
        weights,
        str(paths.CHECKER_FILE),
        metadata={
            "labels": json.dumps(data.ATTRIBUTES),
            "architecture": json.dumps({"channels": CHANNELS, "hidden": HIDDEN}),
            "input": "64x64 RGB, area-resampled; trained on tools/avatars drawings",
        },
    )
    print(f"checker -> {paths.CHECKER_FILE}")


def load_exported() -> tuple[torch.nn.Module, dict[str, list[str]]]:
    weights, labels, architecture = read_checker_file(paths.CHECKER_FILE)
    network = build_network(architecture["channels"], architecture["hidden"],
                            sum(len(v) for v in labels.values()))
    network.load_state_dict(weights)
    return network.eval(), labels


def held_out_accuracy(count: int = 1000) -> dict[str, float]:
    """Per attribute, the share of held-out drawings (never in training) classified right."""
    network, labels = load_exported()
    specs = [data.spec_for("eval", index) for index in range(count)]
    pixels = torch.from_numpy(np.stack([np.asarray(data.render(spec), dtype=np.float32) / 255 for spec in specs]))
    probabilities = predict(network, labels, pixels)
    return {
        attribute: float(np.mean([labels[attribute][int(p.argmax())] == spec.attributes[attribute]
                                  for p, spec in zip(probabilities[attribute], specs)]))
        for attribute in labels
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget of this invocation")
    parser.add_argument("--steps", type=int, default=3000, help="total steps (sets the LR schedule)")
    parser.add_argument("--evaluate", action="store_true", help="print held-out accuracy of the export")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    if args.evaluate:
        print(json.dumps({"held_out_drawings": 1000, **held_out_accuracy()}, indent=2))
    else:
        train(args)


if __name__ == "__main__":
    main()
