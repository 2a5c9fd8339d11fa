"""Where training scratch and the exported models live (relative to the repository root)."""

from pathlib import Path

WORKDIR = Path(".train")  # git-ignored checkpoints, latents, samples
CHECKPOINT_DIR = Path("models/checkpoints/shapes-tiny")
CONTROLNET_DIR = Path("models/controlnet/shapes-tiny-canny")
