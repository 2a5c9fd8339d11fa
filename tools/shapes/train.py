"""Train the shapes model stage by stage; each stage is one resumable command.

    python -m tools.shapes.train vae --minutes 15
    python -m tools.shapes.train latents
    python -m tools.shapes.train unet --minutes 30        (repeat to continue)
    python -m tools.shapes.train controlnet --minutes 12

--steps sets a stage's total steps (the length of its learning-rate schedule).
Checkpoints live in .train/<stage>/; rerunning a stage continues where it stopped.
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from tools.shapes import data, models, paths, resumable
from tools.shapes.tokenizer import MAX_LENGTH, build_tokenizer

SEED = 1234
NUM_TRAINING_IMAGES = 20_000
# Empty captions teach the unconditional branch that classifier-free guidance needs.
CAPTION_DROPOUT = 0.15
MIN_SNR_GAMMA = 5.0


def draw_batch(generator: torch.Generator, batch_size: int) -> list[data.ShapeSpec]:
    indices = torch.randint(0, 10**9, (batch_size,), generator=generator).tolist()
    return [data.spec_for("train", index, SEED) for index in indices]


def pixels(images) -> torch.Tensor:
    return torch.from_numpy(np.stack([data.to_tensor_array(image) for image in images]))


# --- VAE ---------------------------------------------------------------------

VAE_BATCH = 32
VAE_CROP = 32
VAE_CROP_FRACTION = 0.8  # small crops first converge much faster; full images last


def train_vae(args) -> None:
    vae = models.make_vae()
    optimizer = torch.optim.AdamW(
        vae.parameters(), lr=args.lr or 1e-3, weight_decay=0.0
    )
    schedule = resumable.warmup_cosine(optimizer, 100, args.steps)

    def step_fn(step: int) -> float:
        generator = resumable.batch_generator(SEED, step)
        batch = pixels(data.render(spec) for spec in draw_batch(generator, VAE_BATCH))
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
    resumable.run(paths.WORKDIR / "vae", components, step_fn, args.steps, args.minutes)


def load_vae():
    vae = models.make_vae()
    vae.load_state_dict(resumable.load_checkpoint(paths.WORKDIR / "vae")["vae"])
    return vae.eval().requires_grad_(False)


# --- latents -----------------------------------------------------------------


@torch.no_grad()
def encode_latents(args) -> None:
    """Encode the training images once: UNet and ControlNet training then never
    run the VAE, which makes their steps several times cheaper."""
    vae = load_vae()
    specs = [
        data.spec_for("train", index, SEED) for index in range(NUM_TRAINING_IMAGES)
    ]
    means = []
    for start in range(0, len(specs), 256):
        batch = pixels(data.render(spec) for spec in specs[start : start + 256])
        means.append(vae.encode(batch).latent_dist.mean)
    latents = torch.cat(means)
    scaling_factor = (1.0 / latents.std()).item()
    psnr = reconstruction_psnr(vae, specs[:256])
    torch.save(
        {
            "latents": latents,
            "scaling_factor": scaling_factor,
            "captions": [spec.caption for spec in specs],
            "psnr": psnr,
        },
        paths.WORKDIR / "latents.pt",
    )
    print(
        f"{len(specs)} latents, scaling factor {scaling_factor:.4f}, reconstruction PSNR {psnr:.2f} dB"
    )


def reconstruction_psnr(vae, specs) -> float:
    batch = pixels(data.render(spec) for spec in specs)
    reconstruction = vae.decode(vae.encode(batch).latent_dist.mean).sample.clamp(-1, 1)
    mse = F.mse_loss((reconstruction + 1) / 2, (batch + 1) / 2).item()
    return float(10 * np.log10(1 / mse))


def load_latents() -> dict:
    return torch.load(paths.WORKDIR / "latents.pt")


# --- UNet + text encoder --------------------------------------------------------

UNET_BATCH = 32


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
        max_length=MAX_LENGTH,
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


def train_unet(args) -> None:
    tokenizer = build_tokenizer(paths.WORKDIR / "tokenizer")
    text_encoder = models.make_text_encoder(tokenizer)
    unet = models.make_unet()
    scheduler = noise_schedule()
    stored = load_latents()
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
            generator, latents, caption_ids, empty_ids, scheduler, UNET_BATCH
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
    resumable.run(paths.WORKDIR / "unet", components, step_fn, args.steps, args.minutes)


def load_trained_unet():
    """The EMA weights of the UNet and text encoder, plus their tokenizer."""
    tokenizer = build_tokenizer(paths.WORKDIR / "tokenizer")
    saved = resumable.load_checkpoint(paths.WORKDIR / "unet")
    unet, text_encoder = models.make_unet(), models.make_text_encoder(tokenizer)
    unet.load_state_dict(saved["unet_ema"]["averaged"])
    text_encoder.load_state_dict(saved["text_encoder_ema"]["averaged"])
    return tokenizer, text_encoder.eval(), unet.eval()


# --- ControlNet ----------------------------------------------------------------

CONTROLNET_BATCH = 32


def edge_maps(specs: list[data.ShapeSpec]) -> torch.Tensor:
    """Edge maps in [0, 1], the range ControlNet pipelines feed conditioning in."""
    edges = [
        np.asarray(data.canny_edges(data.render(spec)), dtype=np.float32) / 255
        for spec in specs
    ]
    return torch.from_numpy(np.stack(edges).transpose(0, 3, 1, 2))


def train_controlnet(args) -> None:
    tokenizer, text_encoder, unet = load_trained_unet()
    text_encoder.requires_grad_(False)
    unet.requires_grad_(False)
    controlnet = models.make_controlnet(unet)
    scheduler = noise_schedule()
    stored = load_latents()
    latents = stored["latents"] * stored["scaling_factor"]
    caption_ids = tokenize(tokenizer, stored["captions"])
    empty_ids = tokenize(tokenizer, [""])[0]
    specs = [
        data.spec_for("train", index, SEED) for index in range(NUM_TRAINING_IMAGES)
    ]

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
            controlnet_cond=edge_maps([specs[i] for i in indices.tolist()]),
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
        paths.WORKDIR / "controlnet", components, step_fn, args.steps, args.minutes
    )


STAGES = {
    "vae": (train_vae, 3000),
    "latents": (encode_latents, 0),
    "unet": (train_unet, 8000),
    "controlnet": (train_controlnet, 1000),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    paths.WORKDIR.mkdir(exist_ok=True)
    train(args)


if __name__ == "__main__":
    main()
