"""Distil an LCM-LoRA for shapes-tiny (Latent Consistency Distillation, Luo et al. 2023,
"LCM-LoRA", arXiv 2311.05556; the same recipe as diffusers' train_lcm_distill_lora_sd).

    python tools/distill_lcm_lora.py --minutes 15 [--steps 2000]   # train (rerun to continue)
    python tools/distill_lcm_lora.py --export models/loras/lcm-lora-shapes-tiny.safetensors
    python tools/distill_lcm_lora.py --evaluate [--lora FILE] [--sheet sheet.png]

Teacher: the shipped shapes-tiny UNet, frozen, with classifier-free guidance (scale --guidance,
or drawn from --guidance-range). Solver: one DDIM step over a grid of --ddim-steps timesteps
skipped from the 1000-step training schedule (t -> t - 1000/ddim_steps). Student: the same UNet
with a peft LoRA; its output goes through the consistency boundary scalings (c_skip, c_out with
timestep scaling 10 and sigma_data 0.5, exactly what diffusers' LCMScheduler applies at
inference). Target network: an EMA of the student's LoRA (--ema 0 uses the student itself with
stop-gradient, as LCM-LoRA does). Pseudo-Huber loss in latent space. The model predicts v, so
every output is turned into x0 / eps with the schedule's alphas before use.

Data: --images training images drawn by tools/shapes/data.py (training split, never the
held-out one), encoded once with the shipped VAE (posterior mean * scaling factor) and cached;
the text encoder stays frozen, so each distinct caption is encoded once.

State lives in .train/lcm/<teacher digest>/ (git-ignored): a checkpoint every 2 minutes and on
SIGTERM; a rerun continues with exactly the batches an unbroken run would see (each batch is
drawn from a generator seeded by (seed, step)). A different teacher gets a fresh directory.

--evaluate prints JSON: on held-out prompt/seed pairs, 4-step LCMScheduler images with the LoRA
(cfg 1) against 4-step LCMScheduler images without it and the base model's recommended
20-step DPM-Solver cfg 4 images: foreground/background colour and shape accuracy (the judge of
tools/shapes/evaluate.py) and the mean absolute pixel distance (0-255) to the 20-step images.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.shapes import data, resumable

CHECKPOINT = Path("models/checkpoints/shapes-tiny")
WORKDIR = Path(".train/lcm")
DATA_SEED = 1234  # the training split shapes-tiny itself was trained on
TIMESTEP_SCALING = 10.0  # LCMScheduler's default
SIGMA_DATA = 0.5
HUBER_C = 0.001
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_dir(tag: str = "") -> Path:
    """One directory per teacher (and optional tag), so a new teacher never resumes an old run."""
    name = digest(CHECKPOINT / "unet" / "diffusion_pytorch_model.safetensors")[:12]
    return WORKDIR / (f"{name}-{tag}" if tag else name)


def load_pipeline(folder: Path = CHECKPOINT):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- data --------------------------------------------------------------------------------

@torch.no_grad()
def training_data(pipe, count: int) -> dict:
    """Latents (scaled) of `count` training images and the frozen text embeddings of their captions."""
    vae_digest = digest(CHECKPOINT / "vae" / "diffusion_pytorch_model.safetensors")[:12]
    te_digest = digest(CHECKPOINT / "text_encoder" / "model.safetensors")[:12]
    cache = WORKDIR / f"data-{vae_digest}-{te_digest}-{count}.pt"
    if cache.exists():
        return torch.load(cache)
    specs = [data.spec_for("train", index, DATA_SEED) for index in range(count)]
    latents = []
    for start in range(0, count, 250):
        batch = torch.from_numpy(np.stack([data.to_tensor_array(data.render(s)) for s in specs[start:start + 250]]))
        latents.append(pipe.vae.encode(batch).latent_dist.mean * pipe.vae.config.scaling_factor)
    captions = sorted({s.caption for s in specs})
    index = {c: i for i, c in enumerate(captions)}
    stored = {
        "latents": torch.cat(latents),
        "caption_index": torch.tensor([index[s.caption] for s in specs]),
        "embeddings": encode(pipe, captions),
        "empty": encode(pipe, [""])[0],
    }
    WORKDIR.mkdir(parents=True, exist_ok=True)
    torch.save(stored, cache.with_suffix(".tmp"))
    cache.with_suffix(".tmp").replace(cache)
    return stored


@torch.no_grad()
def encode(pipe, captions: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0]


# --- consistency distillation ---------------------------------------------------------------

def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scaled = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def x0_eps(v: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
    """v-prediction -> (x0, eps); alpha = sqrt(alphas_cumprod[t]), sigma = sqrt(1 - ...)."""
    return alpha * z - sigma * v, alpha * v + sigma * z


def add_lora(unet, rank: int):
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=LORA_TARGETS))
    return [p for p in unet.parameters() if p.requires_grad]


def lora_state(unet, dtype=torch.float32) -> dict:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().to(dtype).contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def save_lora(unet, path: Path, dtype=torch.float32) -> Path:
    """diffusers' LoRA layout (unet.<module>.lora_A/lora_B.weight; alpha = rank, so no alphas)."""
    from diffusers import StableDiffusionPipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(path.parent, unet_lora_layers=lora_state(unet, dtype),
                                              weight_name=path.name)
    return path


class Trainer:
    def __init__(self, args):
        self.args = args
        self.run_dir = run_dir(args.tag)
        pipe = load_pipeline()
        self.data = training_data(pipe, args.images)
        self.teacher = pipe.unet.eval().requires_grad_(False)
        torch.manual_seed(args.seed)  # LoRA initialisation
        self.student = copy.deepcopy(self.teacher)
        self.params = add_lora(self.student, args.rank)
        self.student.train()
        self.target = copy.deepcopy(self.student).requires_grad_(False).eval() if args.ema > 0 else None
        alphas_cumprod = pipe.scheduler.alphas_cumprod.float()  # same betas as the training schedule
        self.alpha = alphas_cumprod.sqrt()
        self.sigma = (1 - alphas_cumprod).sqrt()
        total = pipe.scheduler.config.num_train_timesteps
        self.skip = total // args.ddim_steps
        self.grid = torch.arange(1, args.ddim_steps + 1) * self.skip - 1  # 19, 39, ..., 999
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=0.0)
        self.schedule = resumable.warmup_cosine(self.optimizer, 50, args.steps, floor=0.1)

    def components(self) -> dict:
        parts = {"student": self.student, "optimizer": self.optimizer, "schedule": self.schedule}
        if self.target is not None:
            parts["target"] = self.target
        return parts

    def _coef(self, t):
        return self.alpha[t].view(-1, 1, 1, 1), self.sigma[t].view(-1, 1, 1, 1)

    def step(self, step: int) -> float:
        a, d = self.args, self.data
        g = resumable.batch_generator(a.seed, step)
        idx = torch.randint(0, len(d["latents"]), (a.batch,), generator=g)
        x0 = d["latents"][idx]
        cond = d["embeddings"][d["caption_index"][idx]]
        uncond = d["empty"].expand_as(cond)
        noise = torch.randn(x0.shape, generator=g)
        t = self.grid[torch.randint(0, len(self.grid), (a.batch,), generator=g)]
        t_prev = (t - self.skip).clamp(min=0)
        if a.guidance_range:
            w = a.guidance_range[0] + (a.guidance_range[1] - a.guidance_range[0]) * torch.rand(a.batch, generator=g)
        else:
            w = torch.full((a.batch,), a.guidance)
        w = w.view(-1, 1, 1, 1)

        alpha_t, sigma_t = self._coef(t)
        alpha_p, sigma_p = self._coef(t_prev)
        z_t = alpha_t * x0 + sigma_t * noise
        c_skip, c_out = boundary_scalings(t)
        c_skip_p, c_out_p = boundary_scalings(t_prev)

        v = self.student(z_t, t, cond).sample
        student_x0, _ = x0_eps(v, z_t, alpha_t, sigma_t)
        prediction = c_skip * z_t + c_out * student_x0

        with torch.no_grad():
            v_both = self.teacher(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([cond, uncond])).sample
            v_c, v_u = v_both.chunk(2)
            x0_c, eps_c = x0_eps(v_c, z_t, alpha_t, sigma_t)
            x0_u, eps_u = x0_eps(v_u, z_t, alpha_t, sigma_t)
            x0_g = x0_u + w * (x0_c - x0_u)
            eps_g = eps_u + w * (eps_c - eps_u)
            z_prev = alpha_p * x0_g + sigma_p * eps_g  # one DDIM step of the guided teacher
            target_net = self.target if self.target is not None else self.student
            v_target = target_net(z_prev, t_prev, cond).sample
            target_x0, _ = x0_eps(v_target, z_prev, alpha_p, sigma_p)
            target = c_skip_p * z_prev + c_out_p * target_x0

        diff = (prediction.float() - target.float()) ** 2
        loss = (torch.sqrt(diff + HUBER_C**2) - HUBER_C).mean() if a.loss == "huber" else diff.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.schedule.step()
        if self.target is not None:
            with torch.no_grad():
                for tp, sp in zip(self.target.parameters(), self.student.parameters()):
                    if sp.requires_grad:
                        tp.lerp_(sp, 1 - a.ema)
        return loss.item()

    def train(self) -> None:
        started = time.monotonic()
        step = resumable.run(self.run_dir, self.components(), self.step, self.args.steps, self.args.minutes,
                             log_every=self.args.log_every)
        saved = resumable.load_checkpoint(self.run_dir)
        path = save_lora(self.student, self.run_dir / "lora.safetensors")
        print(json.dumps({"step": step, "training_seconds": round(saved["seconds"], 1),
                          "this_run_seconds": round(time.monotonic() - started, 1), "lora": str(path)}))


def export(args) -> Path:
    """Write the student LoRA of the latest checkpoint (not the EMA: the student is what was fitted
    against the target; --use-ema picks the EMA) to args.export."""
    trainer = Trainer(args)
    saved = resumable.load_checkpoint(trainer.run_dir)
    if saved is None:
        raise SystemExit(f"no checkpoint in {trainer.run_dir}")
    module = trainer.target if (args.use_ema and trainer.target is not None) else trainer.student
    module.load_state_dict(saved["target" if module is trainer.target else "student"])
    path = save_lora(module, Path(args.export), getattr(torch, args.export_dtype))
    print(json.dumps({"step": saved["step"], "training_seconds": round(saved["seconds"], 1), "lora": str(path)}))
    return path


# --- evaluation --------------------------------------------------------------------------

def generate(pipe, specs, seeds, steps: int, guidance: float) -> list[np.ndarray]:
    result = pipe([s.caption for s in specs], height=data.IMAGE_SIZE, width=data.IMAGE_SIZE,
                  num_inference_steps=steps, guidance_scale=guidance,
                  generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np").images
    return [(image * 255).round().astype(np.uint8) for image in result]


def palette_distance(image: np.ndarray) -> float:
    """Mean Euclidean RGB distance of each pixel to its nearest palette colour (0 = pure colours)."""
    palette = np.array(list(data.PALETTE.values()), dtype=np.float32)
    d = np.sqrt(((image[..., None, :].astype(np.float32) - palette) ** 2).sum(-1)).min(-1)
    return float(d.mean())


def evaluate(args) -> dict:
    from diffusers import LCMScheduler

    from tools.shapes.evaluate import analyse

    lora = Path(args.lora) if args.lora else run_dir(args.tag) / "lora.safetensors"
    specs = [data.spec_for("eval", index) for index in range(args.count)]
    seeds = [1000 + index for index in range(args.count)]
    pipe = load_pipeline()
    reference = generate(pipe, specs, seeds, 20, 4.0)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    without = generate(pipe, specs, seeds, 4, 1.0)
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="lcm")
    with_lora = generate(pipe, specs, seeds, 4, 1.0)

    def figures(images):
        analyses = [analyse(image) for image in images]
        n = len(specs)
        return {
            "foreground_colour_accuracy": sum(a["colour"] == s.colour for a, s in zip(analyses, specs)) / n,
            "background_colour_accuracy": sum(a["background"] == s.background for a, s in zip(analyses, specs)) / n,
            "shape_accuracy": sum(a["shape"] == s.shape for a, s in zip(analyses, specs)) / n,
            "mean_distance_to_nearest_palette_colour": float(np.mean([palette_distance(i) for i in images])),
            "mean_abs_pixel_distance_to_20_step": float(np.mean(
                [np.abs(i.astype(np.float32) - r.astype(np.float32)).mean() for i, r in zip(images, reference)])),
        }

    result = {
        "lora": str(lora),
        "held_out_pairs": len(specs),
        "reference": "20 steps DPMSolverMultistep, cfg 4 (no LoRA)",
        "reference_figures": figures(reference),
        "lcm_4_steps_cfg1_without_lora": figures(without),
        "lcm_4_steps_cfg1_with_lora": figures(with_lora),
    }
    if args.sheet:
        # columns of (reference, without, with); 10 pairs per row band
        tiles = [np.concatenate([r, w, l], axis=0) for r, w, l in zip(reference, without, with_lora)]
        per_row = 10
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % per_row)
        gap = lambda t: np.pad(t, ((0, 4), (0, 4), (0, 0)), constant_values=128)
        rows = [np.concatenate([gap(t) for t in tiles[i:i + per_row]], axis=1) for i in range(0, len(tiles), per_row)]
        from PIL import Image

        sheet = Image.fromarray(np.concatenate(rows, axis=0))
        sheet.resize((sheet.width * 3, sheet.height * 3), Image.Resampling.NEAREST).save(args.sheet)
        result["sheet"] = args.sheet + " (per pair, top to bottom: 20-step reference, 4-step without, 4-step with)"
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="time budget of this invocation")
    p.add_argument("--steps", type=int, default=2000, help="total steps (sets the learning-rate schedule)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--guidance", type=float, default=4.0, help="teacher CFG scale (1 = no guidance)")
    p.add_argument("--guidance-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="draw the teacher's CFG scale uniformly per sample instead")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--ema", type=float, default=0.95, help="target-network EMA decay; 0: the student, stop-grad")
    p.add_argument("--loss", choices=["huber", "l2"], default="huber")
    p.add_argument("--images", type=int, default=4000, help="training images to pre-encode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="run name suffix (separate runs for one teacher)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--export", metavar="FILE", help="write the checkpoint's LoRA to FILE and stop")
    p.add_argument("--export-dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--use-ema", action="store_true", help="with --export: the EMA target instead of the student")
    p.add_argument("--evaluate", action="store_true", help="compare 4-step images with/without the LoRA (JSON)")
    p.add_argument("--lora", help="with --evaluate: the LoRA file (default: the current run's)")
    p.add_argument("--count", type=int, default=30, help="with --evaluate: held-out prompt/seed pairs")
    p.add_argument("--sheet", help="with --evaluate: write a contact sheet PNG here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.evaluate:
        evaluate(args)
    elif args.export:
        export(args)
    else:
        Trainer(args).train()


if __name__ == "__main__":
    main()
