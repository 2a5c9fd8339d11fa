"""`python -m server`: start the graph server, with the same flags as `loom serve`.

The server-only flags (hosts, origins, limits, node modules, the event stream) are declared
once, in `add_arguments`, which `loom serve` adds to its parser too; the folder, device and
retention flags here mirror `loom serve`'s (whose defaults also come from loom.toml).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from engine import Settings
from engine.errors import LoomError
from engine.ray_backend import add_backend_arguments, backend_arguments

from .config import GraphLimits, ServerConfig
from .main import serve


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server", description="Loom graph server")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; any "
                   "other needs --token)")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--data-dir", default="loom-data", help="queue, history, inputs and outputs")
    p.add_argument("--models-dir", action="append", help="models folder (repeatable; default ./models)")
    p.add_argument("--token", default=os.environ.get("LOOM_TOKEN"),
                   help="bearer token every request must carry (default $LOOM_TOKEN)")
    p.add_argument("--out", help="output folder (default DATA_DIR/outputs)")
    p.add_argument("--input-dir", help="folder uploads go to and load-image reads (default DATA_DIR/inputs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--extra-model-paths", metavar="FILE",
                   help="a YAML or JSON file mapping model kinds to more folders")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a memory or speed setting of the model nodes, e.g. vae_tiling=true")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also load pickle model files (.ckpt, .pt, .bin), read with weights_only")
    p.add_argument("--models-memory-gb", type=float, metavar="GB",
                   help="memory for loaded models on each device, in GiB")
    p.add_argument("--keep-runs", type=int, default=None, metavar="N",
                   help="keep only the newest N finished runs and their output files (default: all)")
    p.add_argument("--keep-days", type=float, default=None, metavar="D",
                   help="delete finished runs and their output files after D days (default: never)")
    add_backend_arguments(p)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags only a server has; `loom serve` adds these same declarations to its parser."""
    d = ServerConfig()
    limits = GraphLimits()
    p.add_argument("--nodes", action="append", default=[], metavar="MODULE",
                   help="also load node types from this importable module (repeatable)")
    p.add_argument("--no-installed-nodes", action="store_true",
                   help="do not load node packs from the loom.nodes entry points")
    p.add_argument("--allow-host", action="append", default=[],
                   help="also answer to this Host name (repeatable; '*' for any)")
    p.add_argument("--allow-origin", action="append", default=[],
                   help="accept browser requests from this origin, e.g. https://ui.example")
    p.add_argument("--max-nodes", type=int, default=limits.max_nodes,
                   help="most nodes in one submitted graph (default %(default)s)")
    p.add_argument("--max-width", type=int, default=limits.max_width,
                   help="widest image a run may make, in pixels (default %(default)s)")
    p.add_argument("--max-height", type=int, default=limits.max_height,
                   help="tallest image a run may make, in pixels (default %(default)s)")
    p.add_argument("--max-steps", type=int, default=limits.max_steps,
                   help="most sampler steps of one sampler node (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=limits.max_batch,
                   help="largest batch of images one node may make (default %(default)s)")
    p.add_argument("--max-repeats", type=int, default=limits.max_repeats,
                   help="most tries of a retry / values of a batch_over")
    p.add_argument("--max-scale", type=float, default=limits.max_scale, help="largest upscale factor")
    p.add_argument("--max-tiles", type=int, default=limits.max_tiles, help="tiles of one tiled upscale")
    p.add_argument("--max-run-steps", type=int, default=limits.max_run_steps,
                   help="sampler steps of a whole run, retries included (default %(default)s)")
    p.add_argument("--max-run-repeats", type=int, default=limits.max_run_repeats,
                   help="retry tries and batch items of a whole run (default %(default)s)")
    p.add_argument("--max-run-seconds", type=float, default=limits.max_run_seconds,
                   help="wall-clock budget of one run (default %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20,
                   help="largest upload or request body, in MiB (default %(default)s)")
    p.add_argument("--max-attempts", type=int, default=d.max_attempts,
                   help="tries per run across crashes (default %(default)s)")
    p.add_argument("--event-queue-size", type=int, default=d.event_queue_size,
                   help="events buffered per websocket client before the oldest are dropped")
    p.add_argument("--event-send-timeout", type=float, default=d.event_send_timeout,
                   help="seconds a websocket client may take to accept one message before "
                        "it is disconnected")
    p.add_argument("--log-level", default="info",
                   help="server log detail: debug, info (default), warning or error")


def server_options(args: argparse.Namespace) -> dict:
    """`serve()` keyword arguments from the flags `add_arguments` declared; logging is set up
    at --log-level."""
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    limits = GraphLimits(max_nodes=args.max_nodes, max_width=args.max_width,
                         max_height=args.max_height, max_pixels=args.max_width * args.max_height,
                         max_steps=args.max_steps, max_batch=args.max_batch,
                         max_repeats=args.max_repeats, max_scale=args.max_scale,
                         max_tiles=args.max_tiles, max_run_steps=args.max_run_steps,
                         max_run_repeats=args.max_run_repeats, max_run_seconds=args.max_run_seconds)
    return dict(node_modules=args.nodes, installed_nodes=not args.no_installed_nodes,
                log_level=args.log_level, allowed_hosts=tuple(args.allow_host),
                allowed_origins=tuple(args.allow_origin), limits=limits,
                max_upload_bytes=int(args.max_upload_mb * 2**20), max_attempts=args.max_attempts,
                event_queue_size=args.event_queue_size, event_send_timeout=args.event_send_timeout)


def main(argv: list[str] | None = None) -> int:
    from engine.cli import _parse_assignments as parse_assignments   # the CLI's --option reading

    args = build_parser().parse_args(argv)
    data_dir = Path(args.data_dir)
    try:
        settings = Settings(
            device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle,
            output_dir=Path(args.out) if args.out else data_dir / "outputs",
            input_dir=Path(args.input_dir) if args.input_dir else data_dir / "inputs",
            extra_model_paths=Path(args.extra_model_paths) if args.extra_model_paths else None,
            models_memory_gb=args.models_memory_gb, options=parse_assignments(args.option, "--option"))
        serve(args.host, args.port, data_dir, [Path(m) for m in args.models_dir or ["models"]],
              args.token, settings, keep_runs=args.keep_runs, keep_days=args.keep_days,
              **server_options(args), **backend_arguments(args))
    except LoomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
