"""Train avatars-tiny with the shapes tools' stages (tools/shapes/train.py), on drawn
portraits; each stage is one resumable command, checkpoints in .train/avatars/<stage>/.

    python -m tools.avatars.train vae --minutes 15 --steps 1500
    python -m tools.avatars.train latents
    python -m tools.avatars.train unet --minutes 60 --steps 6000   (repeat to continue)

The VAE and UNet start from shapes-tiny's weights (same architectures), which
converges faster than random weights; the text encoder is new (its own vocabulary).
"""

from pathlib import Path

from tools.avatars import data, paths
from tools.avatars.tokenizer import build_tokenizer
from tools.shapes import train

AVATARS = train.Recipe(
    workdir=paths.WORKDIR,
    spec_for=data.spec_for,
    render=data.render,
    build_tokenizer=build_tokenizer,
    init_from=Path("models/checkpoints/shapes-tiny"),
    # Small batches: on a shared two-core machine more, noisier steps beat fewer big ones.
    vae_batch=8,
    unet_batch=16,
    num_training_images=6_000,
)

if __name__ == "__main__":
    train.main(AVATARS, __doc__)
