"""Where avatar training scratch and the exported models live (relative to the repository root)."""

from pathlib import Path

WORKDIR = Path(".train/avatars")  # git-ignored checkpoints, latents, samples
CHECKPOINT_DIR = Path("models/checkpoints/avatars-tiny")
CHECKER_FILE = Path("models/classifiers/avatar-attributes.safetensors")
