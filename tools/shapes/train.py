"""Train the shapes model stage by stage; each stage is one resumable command.

    python -m tools.shapes.train vae --minutes 15
    python -m tools.shapes.train latents
    python -m tools.shapes.train unet --minutes 30        (repeat to continue)
    python -m tools.shapes.train controlnet --minutes 12

--steps sets a stage's total steps (the length of its learning-rate schedule).
Checkpoints live in .train/<stage>/; rerunning a stage continues where it stopped.

The stages know a model's data only through a Recipe (how to draw and caption the
index-th image, its tokenizer, where its checkpoints live), so other drawn domains
(tools/avatars) train with the same code.
"""

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTokenizer

from tools.shapes import data, models, paths, resumable
from tools.shapes.tokenizer import build_tokenizer

SEED = 1234
NUM_TRAINING_IMAGES = 20_000
# Empty captions teach the unconditional branch that classifier-free guidance needs.
CAPTION_DROPOUT = 0.15
MIN_SNR_GAMMA = 5.0


@dataclass(frozen=True)
class Recipe:
    """What the stages need to know about one drawn domain."""

    workdir: Path
    spec_for: Callable[[str, int, int], Any]  # (split, index, seed) -> spec with .caption
    render: Callable[[Any], Image.Image]
    build_tokenizer: Callable[[Path], CLIPTokenizer]
    num_training_images: int = NUM_TRAINING_IMAGES
    # A trained pipeline folder whose VAE and UNet weights start training instead of
    # random ones (same architectures; the text encoder's vocabulary differs).
    init_from: Path | None = None
    vae_batch: int = 32
    unet_batch: int = 32


SHAPES = Recipe(paths.WORKDIR, data.spec_for, data.render, build_tokenizer)


def draw_batch(recipe: Recipe, generator: torch.Generator, batch_size: int) -> list:
    indices = torch.randint(0, 10**9, (batch_size,), generator=generator).tolist()
    return [recipe.spec_for("train", index, SEED) for index in indices]


def training_specs(recipe: Recipe) -> list:
    return [
        recipe.spec_for("train", index, SEED)
        for index in range(recipe.num_training_images)
    ]


def load_initial_weights(recipe: Recipe, module, component: str, model_class) -> None:
    """Start from recipe.init_from's weights when a stage begins from scratch (a
    resumed stage then overwrites them with its checkpoint)."""
    if recipe.init_from is not None:
        trained = model_class.from_pretrained(
            recipe.init_from, subfolder=component, local_files_only=True
        )
        module.load_state_dict(trained.float().state_dict())


def pixels(images) -> torch.Tensor:
    return torch.from_numpy(np.stack([data.to_tensor_array(image) for image in images]))


# --- VAE ---------------------------------------------------------------------

VAE_CROP = 32
VAE_CROP_FRACTION = 0.8  # small crops first converge much faster; full images last


def train_vae(recipe: Recipe, args) -> None:
    vae = models.make_vae()
    load_initial_weights(recipe, vae, "vae", AutoencoderKL)
    optimizer = torch.optim.AdamW(
        vae.parameters(), lr=args.lr or 1e-3, weight_decay=0.0
    )
    schedule = resumable.warmup_cosine(optimizer, 100, args.steps)

    def step_fn(step: int) -> float:
        generator = resumable.batch_generator(SEED, step)
        batch = pixels(
            recipe.render(spec) for spec in draw_batch(recipe, generator, recipe.vae_batch)
        )
        if step < VAE_CROP_FRACTION * args.steps:
            top, left = torch.randint(
                0, data.IMAGE_SIZE - VAE_CROP + 1, (2,), generator=generator
            ).tolist()
            batch = batch[:, :, top : top + VAE_CROP, left : left + VAE_CROP]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(reconstruction, batch) + 0.1 * F.l1_loss(
            reconstruction, batch
        )
        loss = loss + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return loss.item()

    components = {"vae": vae, "optimizer": optimizer, "schedule": schedule}
    resumable.run(recipe.workdir / "vae", components, step_fn, args.steps, args.minutes)


def load_vae(recipe: Recipe = SHAPES):
    vae = models.make_vae()
    vae.load_state_dict(resumable.load_checkpoint(recipe.workdir / "vae")["vae"])
    return vae.eval().requires_grad_(False)


# --- latents -----------------------------------------------------------------


@torch.no_grad()
def encode_latents(recipe: Recipe, args) -> None:
    """Encode the training images once: UNet and ControlNet training then never
    run the VAE, which makes their steps several times cheaper."""
    vae = load_vae(recipe)
    specs = training_specs(recipe)
    means = []
    for start in range(0, len(specs), 256):
        batch = pixels(recipe.render(spec) for spec in specs[start : start + 256])
        means.append(vae.encode(batch).latent_dist.mean)
    latents = torch.cat(means)
    scaling_factor = (1.0 / latents.std()).item()
    psnr = reconstruction_psnr(
        vae, [recipe.render(recipe.spec_for("eval", i, SEED)) for i in range(256)]
    )
    torch.save(
        {
            "latents": latents,
            "scaling_factor": scaling_factor,
            "captions": [spec.caption for spec in specs],
            "psnr": psnr,
        },
        recipe.workdir / "latents.pt",
    )
    print(
        f"{len(specs)} latents, scaling factor {scaling_factor:.4f}, reconstruction PSNR {psnr:.2f} dB"
    )


def reconstruction_psnr(vae, images: list[Image.Image]) -> float:
    batch = pixels(images)
    reconstruction = vae.decode(vae.encode(batch).latent_dist.mean).sample.clamp(-1, 1)
    mse = F.mse_loss((reconstruction + 1) / 2, (batch + 1) / 2).item()
    return float(10 * np.log10(1 / mse))


def load_latents(recipe: Recipe = SHAPES) -> dict:
    return torch.load(recipe.workdir / "latents.pt")


# --- UNet + text encoder --------------------------------------------------------

def noise_schedule() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=models.NUM_TRAIN_TIMESTEPS,
        beta_schedule=models.BETA_SCHEDULE,
        prediction_type=models.PREDICTION_TYPE,
    )


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    padded = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return padded.input_ids


def diffusion_loss(model_output, latents, noise, timesteps, scheduler) -> torch.Tensor:
    """v-prediction MSE with min-SNR weighting (Hang et al. 2023): nearly clean
    timesteps are down-weighted so the gradient goes to the noisy ones, where
    layout, shape and colour are decided."""
    target = scheduler.get_velocity(latents, noise, timesteps)
    alphas_cumprod = scheduler.alphas_cumprod[timesteps]
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / (snr + 1)
    per_sample = F.mse_loss(model_output, target, reduction="none").mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def noisy_batch(generator, latents, caption_ids, empty_ids, scheduler, batch_size):
    """Sample a batch: latent indices, captions (some dropped), timesteps, noise."""
    indices = torch.randint(0, len(latents), (batch_size,), generator=generator)
    clean = latents[indices]
    ids = caption_ids[indices].clone()
    dropped = torch.rand(batch_size, generator=generator) < CAPTION_DROPOUT
    ids[dropped] = empty_ids
    noise = torch.randn(clean.shape, generator=generator)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator
    )
    return (
        indices,
        clean,
        ids,
        noise,
        timesteps,
        scheduler.add_noise(clean, noise, timesteps),
    )


def train_unet(recipe: Recipe, args) -> None:
    tokenizer = recipe.build_tokenizer(recipe.workdir / "tokenizer")
    text_encoder = models.make_text_encoder(tokenizer)
    unet = models.make_unet()
    load_initial_weights(recipe, unet, "unet", UNet2DConditionModel)
    scheduler = noise_schedule()
    stored = load_latents(recipe)
    latents = stored["latents"] * stored["scaling_factor"]
    caption_ids = tokenize(tokenizer, stored["captions"])
    empty_ids = tokenize(tokenizer, [""])[0]

    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.lr or 8e-4, weight_decay=0.01)
    schedule = resumable.warmup_cosine(optimizer, 200, args.steps)
    unet_ema = resumable.Ema(unet, decay=0.999)
    text_ema = resumable.Ema(text_encoder, decay=0.999)

    def step_fn(step: int) -> float:
        generator = resumable.batch_generator(SEED, step)
        _, clean, ids, noise, timesteps, noisy = noisy_batch(
            generator, latents, caption_ids, empty_ids, scheduler, recipe.unet_batch
        )
        prediction = unet(noisy, timesteps, text_encoder(ids).last_hidden_state).sample
        loss = diffusion_loss(prediction, clean, noise, timesteps, scheduler)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        unet_ema.update(unet)
        text_ema.update(text_encoder)
        return loss.item()

    components = {
        "unet": unet,
        "text_encoder": text_encoder,
        "optimizer": optimizer,
        "schedule": schedule,
        "unet_ema": unet_ema,
        "text_encoder_ema": text_ema,
    }
    resumable.run(recipe.workdir / "unet", components, step_fn, args.steps, args.minutes)


def load_trained_unet(recipe: Recipe = SHAPES):
    """The EMA weights of the UNet and text encoder, plus their tokenizer."""
    tokenizer = recipe.build_tokenizer(recipe.workdir / "tokenizer")
    saved = resumable.load_checkpoint(recipe.workdir / "unet")
    unet, text_encoder = models.make_unet(), models.make_text_encoder(tokenizer)
    unet.load_state_dict(saved["unet_ema"]["averaged"])
    text_encoder.load_state_dict(saved["text_encoder_ema"]["averaged"])
    return tokenizer, text_encoder.eval(), unet.eval()


# --- ControlNet ----------------------------------------------------------------

CONTROLNET_BATCH = 32


def edge_maps(recipe: Recipe, specs: list) -> torch.Tensor:
    """Edge maps in [0, 1], the range ControlNet pipelines feed conditioning in."""
    edges = [
        np.asarray(data.canny_edges(recipe.render(spec)), dtype=np.float32) / 255
        for spec in specs
    ]
    return torch.from_numpy(np.stack(edges).transpose(0, 3, 1, 2))


def train_controlnet(recipe: Recipe, args) -> None:
    tokenizer, text_encoder, unet = load_trained_unet(recipe)
    text_encoder.requires_grad_(False)
    unet.requires_grad_(False)
    controlnet = models.make_controlnet(unet)
    scheduler = noise_schedule()
    stored = load_latents(recipe)
    latents = stored["latents"] * stored["scaling_factor"]
    caption_ids = tokenize(tokenizer, stored["captions"])
    empty_ids = tokenize(tokenizer, [""])[0]
    specs = training_specs(recipe)

    optimizer = torch.optim.AdamW(
        controlnet.parameters(), lr=args.lr or 8e-4, weight_decay=0.01
    )
    schedule = resumable.warmup_cosine(optimizer, 50, args.steps)
    ema = resumable.Ema(controlnet, decay=0.995)

    def step_fn(step: int) -> float:
        generator = resumable.batch_generator(SEED + 1, step)
        indices, clean, ids, noise, timesteps, noisy = noisy_batch(
            generator, latents, caption_ids, empty_ids, scheduler, CONTROLNET_BATCH
        )
        with torch.no_grad():
            text = text_encoder(ids).last_hidden_state
        down, mid = controlnet(
            noisy,
            timesteps,
            text,
            controlnet_cond=edge_maps(recipe, [specs[i] for i in indices.tolist()]),
            return_dict=False,
        )
        prediction = unet(
            noisy,
            timesteps,
            text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        loss = diffusion_loss(prediction, clean, noise, timesteps, scheduler)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.update(controlnet)
        return loss.item()

    components = {
        "controlnet": controlnet,
        "optimizer": optimizer,
        "schedule": schedule,
        "controlnet_ema": ema,
    }
    resumable.run(
        recipe.workdir / "controlnet", components, step_fn, args.steps, args.minutes
    )


STAGES = {
    "vae": (train_vae, 3000),
    "latents": (encode_latents, 0),
    "unet": (train_unet, 8000),
    "controlnet": (train_controlnet, 1000),
}


def main(recipe: Recipe = SHAPES, description: str = __doc__) -> None:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="time budget of this invocation"
    )
    parser.add_argument(
        "--steps", type=int, help="total steps of the stage (sets the LR schedule)"
    )
    parser.add_argument(
        "--lr", type=float, help="peak learning rate (stage default otherwise)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    train, default_steps = STAGES[args.stage]
    args.steps = args.steps or default_steps
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)  # model initialisation; batches have their own generators
    recipe.workdir.mkdir(parents=True, exist_ok=True)
    train(recipe, args)


if __name__ == "__main__":
    main()
