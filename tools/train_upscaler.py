"""Train, evaluate and ship a small 2x upscaler for the shapes domain.

    python tools/train_upscaler.py --minutes 3      (repeat to continue; checkpoint in .train/upscaler/)
    python tools/train_upscaler.py --evaluate       (PSNR vs bicubic and lanczos on held-out drawings, JSON)
    python tools/train_upscaler.py --ship           (evaluate, and write models/upscale_models/ only if it
                                                     beats lanczos by MIN_GAIN_DB)

The network is spandrel's compact RealESRGAN (SRVGGNetCompact) with 32 features and 8 convolutions, so the
shipped .safetensors loads through spandrel's ModelLoader with the architecture and scale auto-detected.

Data: the `shapes-tiny` domain (one circle/square/triangle in one of six colours on a plain background of
another), drawn by tools/shapes/data.py's own drawing function at 128x128 or 256x256 (4x supersampled, box
filtered). Low-resolution inputs are the drawing reduced 2x (box or bicubic) with, at random, the mild damage
a diffusion output carries: slight blur, a little gaussian noise, JPEG at q 70-95. The target is the clean
drawing. Mean squared error (L1 was tried first: it learns to pick hard edges, the median of the
ambiguous sub-pixel edge positions, and lost to lanczos on circles and triangles), Adam with warm-up and
cosine decay, EMA weights shipped.
Batches are a pure function of (seed, step), so a resumed run sees what an unbroken one would.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from tools.shapes import data, resumable

SEED = 2024
STAGE_DIR = ROOT / ".train" / "upscaler"
OUT_DIR = ROOT / "models" / "upscale_models"
NAME = "shapes-2x-compact"
NUM_FEAT, NUM_CONV, SCALE = 32, 8, 2
BATCH, HR_CROP = 16, 64
LR, WARMUP, EMA_DECAY = 2e-3, 100, 0.995
EVAL_IMAGES = 200
MIN_GAIN_DB = 1.5


# --- drawing ---------------------------------------------------------------------------------------

def draw(spec: data.ShapeSpec, factor: int) -> Image.Image:
    """`spec` drawn at (64*factor)^2 with tools/shapes/data.py's own drawing function: the spec scaled by
    `factor`, drawn 4x supersampled and box-filtered, the way data.render draws at 64 px."""
    scaled = dataclasses.replace(spec, size=spec.size * factor, left=spec.left * factor, top=spec.top * factor)
    side = data.IMAGE_SIZE * factor
    big = Image.new("RGB", (side * data.SUPERSAMPLE,) * 2, data.PALETTE[spec.background])
    data._draw_shape(ImageDraw.Draw(big), scaled, data.PALETTE[spec.colour])
    return big.resize((side, side), Image.Resampling.BOX)


def degrade(image: Image.Image, rng: random.Random) -> Image.Image:
    """2x smaller (box or bicubic), then at random slight blur, a little noise, JPEG."""
    half = (image.width // SCALE, image.height // SCALE)
    small = image.resize(half, rng.choice([Image.Resampling.BOX, Image.Resampling.BICUBIC]))
    if rng.random() < 0.4:
        small = small.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.8)))
    if rng.random() < 0.4:
        arr = np.asarray(small, dtype=np.float32)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(1, 6), arr.shape)
        small = Image.fromarray(np.clip(arr + noise, 0, 255).round().astype(np.uint8))
    if rng.random() < 0.3:
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=rng.randint(70, 95))
        small = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return small


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] float in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def training_pair(rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """One (low-res crop, high-res crop) pair; crops of 256 px drawings lean towards the shape's edges."""
    spec = data.spec_for("train", rng.randrange(10**9), SEED)
    factor = 2 if rng.random() < 0.65 else 4
    hr = draw(spec, factor)
    lr = degrade(hr, rng)
    side = hr.width
    if factor == 4 and rng.random() < 0.8:     # near the shape: a flat crop teaches little
        lo, hi = spec.left * factor - HR_CROP + 16, (spec.left + spec.size) * factor - 16
        x = rng.randint(max(0, lo), min(side - HR_CROP, max(lo, hi)))
        lo, hi = spec.top * factor - HR_CROP + 16, (spec.top + spec.size) * factor - 16
        y = rng.randint(max(0, lo), min(side - HR_CROP, max(lo, hi)))
    else:
        x, y = rng.randrange(0, side - HR_CROP + 1), rng.randrange(0, side - HR_CROP + 1)
    x, y = x - x % SCALE, y - y % SCALE
    c = HR_CROP // SCALE
    lr_t = to_tensor(lr)[:, y // SCALE:y // SCALE + c, x // SCALE:x // SCALE + c]
    hr_t = to_tensor(hr)[:, y:y + HR_CROP, x:x + HR_CROP]
    return lr_t, hr_t


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(f"upscaler:{SEED}:{step}")
    pairs = [training_pair(rng) for _ in range(BATCH)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# --- model and training ----------------------------------------------------------------------------

def make_model() -> torch.nn.Module:
    from spandrel.architectures.Compact import Compact

    return Compact(num_feat=NUM_FEAT, num_conv=NUM_CONV, upscale=SCALE)


def train(minutes: float, total_steps: int, batch_of=None, stage_dir: Path = STAGE_DIR,
          start_from: dict | None = None) -> None:
    """Resumable training in stage_dir on batch_of(step) (the shapes domain's `batch` unless given),
    from random weights or the state dict `start_from` (fine-tuning another domain's model)."""
    torch.manual_seed(SEED)
    batch_of = batch_of or batch
    model = make_model().train()
    if start_from is not None:
        model.load_state_dict(start_from)
    optimiser = torch.optim.Adam(model.parameters(), lr=LR)
    schedule = resumable.warmup_cosine(optimiser, WARMUP, total_steps, floor=0.02)
    ema = resumable.Ema(model, EMA_DECAY)

    def step_fn(step: int) -> float:
        lr, hr = batch_of(step)
        out = model(lr)
        loss = F.mse_loss(out, hr)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        ema.update(model)
        return loss.item()

    resumable.run(stage_dir, {"model": model, "optimiser": optimiser, "schedule": schedule, "ema": ema},
                  step_fn, total_steps, minutes, log_every=50)


def trained_model(stage_dir: Path = STAGE_DIR) -> tuple[torch.nn.Module, dict]:
    saved = resumable.load_checkpoint(stage_dir)
    if saved is None:
        sys.exit(f"no checkpoint in {stage_dir}: train first")
    model = make_model()
    model.load_state_dict(saved["ema"]["averaged"])
    return model.eval(), {"step": saved["step"], "seconds": round(saved["seconds"])}


# --- evaluation ------------------------------------------------------------------------------------

def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return psnr_of(F.mse_loss(a.clamp(0, 1), b).item())


def psnr_of(mse: float) -> float:
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def _upscale(method: str, model, lr: torch.Tensor) -> torch.Tensor:
    """[3, h, w] -> [3, 2h, 2w]: the model, or the resampling the graphs' resize_image node does."""
    from nodes.upscale import resample

    if method == "model":
        with torch.no_grad():
            return model(lr[None])[0].clamp(0, 1)
    pixels = lr.permute(1, 2, 0)[None]
    return resample(pixels, lr.shape[2] * SCALE, lr.shape[1] * SCALE, method)[0].permute(2, 0, 1)


def evaluate(model, images: int = EVAL_IMAGES) -> dict:
    """PSNR (dB) of the mean squared error over each set of held-out specs (the "eval" split, never drawn in training), three sets:
    clean: data.render's 64 px drawing -> 128 px drawing; degraded: the same with training-style
    damage; from_128: 128 px drawing -> 256 px drawing (the second pass of a progressive upscale)."""
    sets = {"clean_64_to_128": [], "degraded_64_to_128": [], "clean_128_to_256": []}
    sets.update({f"clean_64_to_128_{shape}s": [] for shape in data.SHAPES})
    for i in range(images):
        spec = data.spec_for("eval", i, 0)
        sets[f"clean_64_to_128_{spec.shape}s"].append((to_tensor(data.render(spec)), to_tensor(draw(spec, 2))))
        hr128, hr256 = draw(spec, 2), draw(spec, 4)
        sets["clean_64_to_128"].append((to_tensor(data.render(spec)), to_tensor(hr128)))
        sets["degraded_64_to_128"].append((to_tensor(degrade(hr128, random.Random(f"eval:{i}"))), to_tensor(hr128)))
        sets["clean_128_to_256"].append((to_tensor(hr128), to_tensor(hr256)))
    result = {}
    for name, pairs in sets.items():
        # one PSNR of the pooled error: a mean of per-image PSNRs is ruled by the near-perfect squares
        scores = {m: psnr_of(float(np.mean([F.mse_loss(_upscale(m, model, lr), hr).item() for lr, hr in pairs])))
                  for m in ("model", "bicubic", "lanczos")}
        scores = {k: round(v, 2) for k, v in scores.items()}
        scores["gain_over_lanczos"] = round(scores["model"] - scores["lanczos"], 2)
        scores["images"] = len(pairs)
        result[name] = scores
    result["images_per_set"] = images
    return result


# --- shipping --------------------------------------------------------------------------------------

CARD = """# {name} — a 2x upscaler for the shapes-tiny drawing domain

A compact RealESRGAN (spandrel's `SRVGGNetCompact`: {num_feat} features, {num_conv} convolutions, PReLU,
x{scale}), {params:,} parameters, fp32 safetensors ({kib} KiB). spandrel detects the architecture and scale
from the weights, so `load_upscale_model` loads it like any other upscaler:

    loom run graphs/upscale.json          # uses it by default (two passes: 64 -> 128 -> 256)

## Training

Made by `python tools/train_upscaler.py --minutes N` (resumable; checkpoint in `.train/upscaler/`, seed
{seed}), then `python tools/train_upscaler.py --ship`. {steps} steps of {batch} random crops
({crop}x{crop} target, {lr_crop}x{lr_crop} input), {minutes:.1f} minutes on two shared CPU cores (one
thread, niced, next to another training job). EMA weights (decay {ema}).

- Targets: one circle/square/triangle of the shapes-tiny domain (red, green, blue, yellow, white, black on
  a plain background of another of them), drawn by `tools/shapes/data.py`'s drawing function at 128x128
  (65 %) or 256x256 (35 %), 4x supersampled and box-filtered. Specs come from the "train" split.
- Inputs: the drawing reduced 2x (box or bicubic), then at random a slight gaussian blur (sigma 0.2-0.8,
  40 %), a little gaussian noise (sigma 1-6 of 255, 40 %), JPEG q 70-95 (30 %).
- Loss: mean squared error; Adam, learning rate {lr_rate} with warm-up and cosine decay. (L1 was tried
  first: it picks hard edges where the sub-pixel edge position is ambiguous and lost to lanczos by 2-3 dB on
  circles and triangles while reconstructing squares perfectly.)

## Evaluation

`python tools/train_upscaler.py --evaluate` (PSNR in dB of the mean squared error over {images} held-out
drawings per set, the clean set also split by shape; specs from the "eval" split, which training never
draws; bicubic and lanczos are the `resize_image` node's):

| set | model | bicubic | lanczos | gain over lanczos | images |
|---|---|---|---|---|---|
{rows}

- clean 64 -> 128: `data.render`'s 64x64 drawing against the 128x128 drawing of the same spec.
- degraded 64 -> 128: the same with training-style blur / noise / JPEG on the input.
- clean 128 -> 256: the second pass of a progressive upscale to 256.

## Limits

It knows only this drawing domain: flat backgrounds, one flat-coloured shape with straight or circular
edges, six saturated colours. It sharpens edges and flattens noise; on photographs, faces, text or
gradients it will posterise and smear — use a general upscaler (e.g. RealESRGAN) there. On real
`shapes-tiny` outputs it also cleans up the mild blur/noise those carry, but it does not fix wrong shapes
or colours the diffusion model draws. 2x only (run it twice for 4x, as `progressive_upscale` does).
"""


def ship(model, info: dict, scores: dict) -> None:
    from safetensors.torch import save_file
    from spandrel import ModelLoader

    gain = scores["clean_64_to_128"]["gain_over_lanczos"]
    worst = min(s["gain_over_lanczos"] for k, s in scores.items() if k.startswith("clean_64_to_128_"))
    if gain < MIN_GAIN_DB or worst <= 0:
        sys.exit(f"not shipped: {gain:.2f} dB over lanczos ({MIN_GAIN_DB} needed), worst shape {worst:+.2f} dB")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{NAME}.safetensors"
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"architecture": "SRVGGNetCompact", "scale": str(SCALE),
                                          "domain": "shapes-tiny drawings", "steps": str(info["step"])})
    descriptor = ModelLoader().load_from_file(path)       # what the load_upscale_model node does
    assert descriptor.architecture.name == "RealESRGAN Compact" or "Compact" in descriptor.architecture.name
    assert descriptor.scale == SCALE
    rows = "\n".join(
        f"| {k.replace('_', ' ')} | {s['model']:.2f} | {s['bicubic']:.2f} | {s['lanczos']:.2f} | "
        f"{s['gain_over_lanczos']:+.2f} | {s['images']} |" for k, s in scores.items() if isinstance(s, dict))
    card = CARD.format(name=NAME, num_feat=NUM_FEAT, num_conv=NUM_CONV, scale=SCALE,
                       params=sum(p.numel() for p in model.parameters()), kib=round(path.stat().st_size / 1024),
                       seed=SEED, steps=info["step"], batch=BATCH, crop=HR_CROP, lr_crop=HR_CROP // SCALE,
                       minutes=info["seconds"] / 60, ema=EMA_DECAY, lr_rate=LR,
                       images=scores["images_per_set"], rows=rows)
    (OUT_DIR / f"{NAME}.md").write_text(card)
    print(f"shipped {path.relative_to(ROOT)} ({path.stat().st_size} bytes) and its model card")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget for this run")
    parser.add_argument("--steps", type=int, default=1800, help="total steps (the learning-rate schedule)")
    parser.add_argument("--evaluate", action="store_true", help="print PSNR figures as JSON, no training")
    parser.add_argument("--ship", action="store_true", help="evaluate and ship if it beats lanczos")
    parser.add_argument("--images", type=int, default=EVAL_IMAGES, help="held-out images per evaluation set")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    if args.evaluate or args.ship:
        model, info = trained_model()
        started = time.monotonic()
        scores = evaluate(model, args.images)
        print(json.dumps({"checkpoint": info, **scores, "eval_seconds": round(time.monotonic() - started, 1)},
                         indent=2))
        if args.ship:
            ship(model, info, scores)
        return
    train(args.minutes, args.steps)


if __name__ == "__main__":
    main()
