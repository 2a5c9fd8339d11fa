"""Run-wide settings: device and memory policy, folders, and safety switches.

These are settings, not graph edits: the same graph runs on a laptop CPU or a GPU.
Node families read their own knobs from `options` (e.g. `vae_tiling`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Settings:
    device: str = "cpu"
    dtype: str = "float32"
    output_dir: Path = Path("output")
    input_dir: Path = Path("input")
    models_dirs: list[Path] = field(default_factory=lambda: [Path("models")])
    extra_model_paths: Path | None = None
    allow_pickle: bool = False
    digest_memo_dir: Path | None = None   # where file digests are remembered across processes
    options: dict[str, Any] = field(default_factory=dict)

    def result_salt(self) -> str:
        """The settings that can change what a node computes (fp16 and fp32 latents differ,
        so do tiled and untiled decodes). Every cache key includes them; folders do not
        enter, so `--out` or `--models-dir` alone never invalidates the cache."""
        return json.dumps({"device": self.device, "dtype": self.dtype, "options": self.options},
                          sort_keys=True, default=str)
