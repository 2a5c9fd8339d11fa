"""A 2x upscaler for avatars: shapes-2x-compact fine-tuned on drawn portraits.

    python -m tools.avatars.upscaler train --minutes 5 --steps 1200   (resumable, .train/avatars/upscaler/)
    python -m tools.avatars.upscaler evaluate [--images 200]
    python -m tools.avatars.upscaler ship                             (evaluate; ship if it beats lanczos)

The shapes domain's upscaler smooths a portrait's eyes, mouth and hair strands into flat
patches (5.9 dB below lanczos on held-out avatars), so the avatar graphs get their own: the
same network (spandrel's compact RealESRGAN, tools/train_upscaler.py) starting from the
shipped shapes weights, trained on portraits from tools/avatars/data.py drawn at 128 px (the
target) and reduced 2x with a diffusion output's damage (train_upscaler's `degrade`).

Evaluation: PSNR (dB, of the mean squared error pooled over held-out portraits of the "eval"
split) of each shipped upscaler loaded through spandrel as the graphs load it, against the
resize_image node's bicubic and lanczos; the 64 px drawing against the same portrait drawn at
128 px, clean and damaged.
"""

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tools import train_upscaler as base
from tools.avatars import data, paths

NAME = "avatars-2x-compact"
STAGE_DIR = paths.WORKDIR / "upscaler"
MIN_GAIN_DB = 1.0
SEED = 2025


def load_file(path: Path) -> torch.nn.Module:
    from spandrel import ModelLoader

    return ModelLoader().load_from_file(path).model.eval()


def training_pair(rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """A (damaged 64 px crop, clean 128 px crop) pair: crops cover the head more often than the corners."""
    large = data.render(data.spec_for("train", rng.randrange(10**9), SEED), scale=2)
    small = base.degrade(large, rng)
    crop, half = base.HR_CROP, base.HR_CROP // base.SCALE
    x, y = (rng.randrange(0, large.width - crop + 1) // 2 * 2 for _ in range(2))
    if rng.random() < 0.6:   # the face: eyes, mouth, hair fringe
        x, y = rng.randrange(24, 42) // 2 * 2, rng.randrange(24, 46) // 2 * 2
    low = base.to_tensor(small)[:, y // 2:y // 2 + half, x // 2:x // 2 + half]
    return low, base.to_tensor(large)[:, y:y + crop, x:x + crop]


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(f"avatar-upscaler:{SEED}:{step}")
    pairs = [training_pair(rng) for _ in range(base.BATCH)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def scores(models: dict[str, torch.nn.Module], images: int) -> dict:
    sets: dict[str, list] = {"clean_64_to_128": [], "degraded_64_to_128": []}
    for index in range(images):
        spec = data.spec_for("eval", index)
        large = data.render(spec, scale=2)
        sets["clean_64_to_128"].append((data.render(spec), large))
        sets["degraded_64_to_128"].append((base.degrade(large, random.Random(f"avatar-eval:{index}")), large))
    result = {}
    for name, pairs in sets.items():
        errors: dict[str, list[float]] = {method: [] for method in (*models, "bicubic", "lanczos")}
        for small, large in pairs:
            low, high = base.to_tensor(small), base.to_tensor(large)
            for method in errors:
                upscaled = base._upscale("model" if method in models else method, models.get(method), low)
                errors[method].append(F.mse_loss(upscaled, high).item())
        result[name] = {method: round(base.psnr_of(float(np.mean(e))), 2) for method, e in errors.items()}
    return result


def table(result: dict) -> str:
    methods = list(next(iter(result.values())))
    rows = ["| set | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    rows += [f"| {name} | " + " | ".join(f"{row[m]:.2f}" for m in methods) + " |" for name, row in result.items()]
    return "\n".join(rows)


def shipped_shapes_upscaler() -> torch.nn.Module:
    return load_file(base.OUT_DIR / f"{base.NAME}.safetensors")


CARD = """# {name}: a 2x upscaler for avatars-tiny portraits

spandrel's compact RealESRGAN (`SRVGGNetCompact`, {num_feat} features, {num_conv} convolutions, x2),
{params:,} parameters, fp32 safetensors ({kib} KiB): `shapes-2x-compact` fine-tuned on drawn cartoon
portraits. `graphs/avatar.json` and `graphs/avatar_sheet.json` use it by default.

## Training

`python -m tools.avatars.upscaler train --minutes N --steps {total}` (resumable; `.train/avatars/upscaler/`,
seed {seed}), from the weights of `shapes-2x-compact`, then `python -m tools.avatars.upscaler ship`.
{steps} steps of {batch} crops ({crop} px targets, 60 % on the face) of portraits drawn by
`tools/avatars/data.py` at 128 px; inputs reduced 2x with `tools/train_upscaler.py`'s damage (blur, noise,
JPEG at random); mean squared error, EMA weights; {minutes:.1f} minutes on two shared CPU cores.

## Evaluation

`python -m tools.avatars.upscaler evaluate --images {images}`: PSNR in dB of the mean squared error pooled
over {images} held-out portraits (the "eval" split, never drawn in training), 64 px drawing against the
128 px drawing of the same portrait:

{table}

## Limits

It knows the avatar drawing domain only (flat cartoon colours, dark outlines); on photographs it
posterises. 2x only.
"""


def ship(images: int, total_steps: int) -> None:
    from safetensors.torch import save_file

    model, info = base.trained_model(STAGE_DIR)
    result = scores({base.NAME: shipped_shapes_upscaler(), NAME: model}, images)
    gain = result["clean_64_to_128"][NAME] - result["clean_64_to_128"]["lanczos"]
    if gain < MIN_GAIN_DB:
        sys.exit(f"not shipped: {gain:+.2f} dB over lanczos on clean portraits ({MIN_GAIN_DB} needed)")
    path = base.OUT_DIR / f"{NAME}.safetensors"
    save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"architecture": "SRVGGNetCompact", "scale": str(base.SCALE),
                        "domain": "avatars-tiny portraits", "steps": str(info["step"])})
    load_file(path)   # spandrel recognises what was written, as the graphs will load it
    card = CARD.format(name=NAME, num_feat=base.NUM_FEAT, num_conv=base.NUM_CONV,
                       params=sum(p.numel() for p in model.parameters()), kib=round(path.stat().st_size / 1024),
                       total=total_steps, seed=SEED, steps=info["step"], batch=base.BATCH,
                       crop=base.HR_CROP, minutes=info["seconds"] / 60, images=images, table=table(result))
    path.with_suffix(".md").write_text(card)
    print(table(result))
    print(f"shipped {path} ({path.stat().st_size} bytes) and its model card")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "evaluate", "ship"])
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget for this run")
    parser.add_argument("--steps", type=int, default=1200, help="total steps (the learning-rate schedule)")
    parser.add_argument("--images", type=int, default=200, help="held-out portraits per evaluation set")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.command == "train":
        base.train(args.minutes, args.steps, batch_of=batch, stage_dir=STAGE_DIR,
                   start_from=shipped_shapes_upscaler().state_dict())
    elif args.command == "evaluate":
        models = {base.NAME: shipped_shapes_upscaler()}
        if (base.OUT_DIR / f"{NAME}.safetensors").exists():
            models[NAME] = load_file(base.OUT_DIR / f"{NAME}.safetensors")
        result = scores(models, args.images)
        print(table(result))
        print(json.dumps({"images_per_set": args.images, **result}, indent=2))
    else:
        ship(args.images, args.steps)


if __name__ == "__main__":
    main()
