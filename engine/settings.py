"""Run-wide settings: device and memory policy, folders, and safety switches.

These are settings, not graph edits: the same graph runs on a laptop CPU or a GPU.
Node families read their own knobs from `options` (e.g. `vae_tiling`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


# Options that change where and in what order work happens, never the numbers it produces.
RESULT_NEUTRAL_OPTIONS = frozenset({"cpu_offload", "attention_slicing"})


def default_models_dirs() -> list[Path]:
    """Where models are found when nothing else is configured: the project's own `models/`
    folder (beside the package, wherever the command runs), or, for an install without one,
    `models/` in the user's data folder."""
    project = Path(__file__).resolve().parents[1] / "models"
    if project.is_dir():
        return [project]
    from .config import user_data_dir

    return [user_data_dir() / "models"]


@dataclass
class Settings:
    device: str = "cpu"
    dtype: str = "float32"
    output_dir: Path = Path("output")
    input_dir: Path = Path("input")
    models_dirs: list[Path] = field(default_factory=default_models_dirs)
    extra_model_paths: Path | None = None
    allow_pickle: bool = False
    digest_memo_dir: Path | None = None   # where file digests are remembered across processes
    models_memory_gb: float | None = None  # loaded models per device; None: from the device's size
    options: dict[str, Any] = field(default_factory=dict)

    def result_salt(self) -> str:
        """The settings that can change what a node computes (fp16 and fp32 latents differ,
        so do tiled and untiled decodes). The keys of nodes that can read settings include
        them; folders do not enter, so `--out` or `--models-dir` alone never invalidates the
        cache, and neither do options that only move work around (offloading, attention
        slicing) nor naming the default device's index (`cuda` is `cuda:0`)."""
        options = {k: v for k, v in self.options.items() if k not in RESULT_NEUTRAL_OPTIONS}
        device = self.device.removesuffix(":0")
        return json.dumps({"device": device, "dtype": self.dtype, "options": options},
                          sort_keys=True, default=str)
