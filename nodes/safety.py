"""Responsible use: a prompt content filter, an append-only generation log, and saving
with provenance fields.

The filter reads rules from a blocklist file (nodes/data/blocklist.txt by default, or a
file in the input folder): `word <phrase>` or `regex <pattern>`, each with an optional
` # reason`. A prompt that matches fails the run with the rule and the reason, before
anything is generated. The log appends one JSON line per image: time, run id, graph,
params, prompt, seed and the SHA-256 of the pixels, so an image can be traced to the run
that made it. `save_image_provenance` writes PNGs like save_image plus fields that say the
image is machine-made (IPTC's trainedAlgorithmicMedia), by what, and with which watermark.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path


from engine.context import Context
from engine.errors import NodeInputError
from engine.models import file_digest
from engine.node import node
from engine.paths import UnsafePath, contained
from engine.settings import Settings
from engine.types import OutputFiles, file_input

from ._common import input_file
from .types import Image

DEFAULT_BLOCKLIST = Path(__file__).parent / "data" / "blocklist.txt"


@dataclass
class Rule:
    kind: str
    pattern: re.Pattern
    source: str
    reason: str
    line: int


def _blocklist_path(settings: Settings, name: str) -> Path:
    if name == "default":
        return DEFAULT_BLOCKLIST
    return input_file(settings, name, "blocklist", "blocklist")


def parse_rules(text: str, origin: str = "blocklist") -> list[Rule]:
    rules = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        body, _, reason = line.partition(" # ")
        kind, _, value = body.strip().partition(" ")
        value = value.strip()
        if kind not in ("word", "regex") or not value:
            raise NodeInputError("blocklist", f"{origin}:{number}: expected 'word <text>' or 'regex <pattern>', "
                                              f"got {line!r}")
        try:
            pattern = re.compile(value if kind == "regex" else r"\b" + re.escape(value) + r"\b", re.IGNORECASE)
        except re.error as exc:
            raise NodeInputError("blocklist", f"{origin}:{number}: bad regular expression {value!r}: {exc}") from None
        rules.append(Rule(kind, pattern, value, reason.strip() or "blocked content", number))
    return rules


def check_prompt(text: str, rules: list[Rule]) -> list[str]:
    """Why the prompt is refused (empty when it passes)."""
    normalised = " ".join(text.split())
    return [f"matches {r.kind} rule {r.source!r} (line {r.line}): {r.reason}" for r in rules
            if r.pattern.search(normalised)]


def _blocklist_fingerprint(settings: Settings, blocklist: str = "default", **_) -> str:
    try:
        return file_digest(_blocklist_path(settings, blocklist))
    except NodeInputError:
        return f"missing:{blocklist}"


@node("prompt_filter", category="safety", version=1, fingerprint=_blocklist_fingerprint, output="text")
def prompt_filter(ctx: Context, text: str, blocklist: file_input("input") = "default") -> str:
    """Pass the prompt through unchanged, or stop the run with the rule it broke and why."""
    path = _blocklist_path(ctx.settings, blocklist)
    reasons = check_prompt(text, parse_rules(path.read_text(), path.name))
    if reasons:
        raise NodeInputError("text", "prompt rejected by the content filter: " + "; ".join(reasons))
    return text


def pixel_hash(image: Image, index: int) -> str:
    """SHA-256 of the 8-bit RGB pixels, what a saved PNG decodes to."""
    import numpy as np
    arr = (image.pixels[index].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return hashlib.sha256(arr.tobytes()).hexdigest()


@node("generation_log", category="safety", version=1, output_node=True, cache=False, output="entries")
def generation_log(ctx: Context, images: Image, prompt: str = "", seed: int = -1,
                   log: file_input("output", max_length=200) = "generation_log.jsonl",
                   note: str = "") -> list[str]:
    """Append one JSON line per image to a log in the output folder: time, run id, graph,
    params, prompt, seed, pixel hash. Never cached: every run is logged."""
    try:
        path = contained(ctx.output_dir, log)
    except UnsafePath as exc:
        raise NodeInputError("log", str(exc)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ctx.graph.to_dict() if ctx.graph is not None else None
    lines = []
    for i in range(images.batch):
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_id": ctx.run_id, "node": ctx.node_id,
                 "prompt": prompt, "seed": seed, "index": i, "size": [images.width, images.height],
                 "sha256": pixel_hash(images, i), "params": ctx.params, "graph": graph, "note": note}
        lines.append(json.dumps(entry, default=str, sort_keys=True))
    # one write with O_APPEND: concurrent runs never interleave inside a line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, ("\n".join(lines) + "\n").encode())
    finally:
        os.close(fd)
    return [json.loads(line)["sha256"] for line in lines]


@node("save_image_provenance", category="safety", version=1, output_node=True, output="files",
      cache=False)
def save_image_provenance(ctx: Context, images: Image,
                          prefix: file_input("output", max_length=200) = "loom",
                          watermark: str = "", model: str = "", prompt: str = "",
                          embed_graph: bool = True) -> OutputFiles:
    """Save PNGs like save_image (graph embedded) plus provenance text fields: `ai_generated`,
    `DigitalSourceType` (IPTC trainedAlgorithmicMedia), `Software`, and `loom_provenance`
    (JSON: generator, model, prompt, watermark payload, pixel SHA-256, time)."""
    from PIL.PngImagePlugin import PngInfo

    from .image import _a1111_parameters, image_to_pil, write_png_unique

    try:
        probe = contained(ctx.output_dir, prefix + "_00000.png")
    except UnsafePath as exc:
        raise NodeInputError("prefix", str(exc)) from None
    files = []
    for i in range(images.batch):
        ctx.check_cancelled()
        info = PngInfo()
        if embed_graph and ctx.graph is not None:
            info.add_text("loom", json.dumps(ctx.graph.to_dict()))
            info.add_text("loom_params", json.dumps(ctx.params, default=str))
            info.add_text("parameters", _a1111_parameters(ctx, images))
        info.add_text("ai_generated", "true")
        info.add_text("DigitalSourceType", "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia")
        info.add_text("Software", "Loom")
        info.add_text("loom_provenance", json.dumps({
            "generator": "loom", "model": model, "prompt": prompt, "watermark": watermark,
            "sha256": pixel_hash(images, i), "run_id": ctx.run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, sort_keys=True))
        files.append(str(write_png_unique(probe.parent, Path(prefix).name, image_to_pil(images, i), info)))
    return files
