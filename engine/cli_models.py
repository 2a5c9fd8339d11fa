"""`loom models list | verify | pull | rm`: the models folders from the shell."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .display import human_size
from .model_inventory import Inventory, ModelEntry
from .model_pull import PullError, pull
from .models import ModelPaths
from .registry import Registry

EXIT_OK, EXIT_PROBLEM = 0, 1


def add_parser(sub, add_folder_options, settings_of, out, err) -> None:
    """`settings_of(args)` gives the run settings (folders, pickle policy) the other commands
    use, so `models` sees exactly the folders `run` searches."""
    models = sub.add_parser("models", help="list, verify, pull or remove models",
                            description="Models live in the models folders (ComfyUI layout: "
                            "checkpoints/, loras/, controlnet/, vae/, upscale_models/, ...).")
    actions = models.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="every model in every configured folder")
    listing.add_argument("--kind", help="only this folder kind, e.g. checkpoints or loras")
    listing.add_argument("--json", action="store_true", help="one JSON array on stdout")

    verify = actions.add_parser("verify", help="re-hash models against the record Loom keeps")
    verify.add_argument("name", nargs="?", help="a model name, or kind/name (default: all)")

    fetch = actions.add_parser(
        "pull", help="download a model from the Hugging Face hub or a URL",
        description="REPO_ID[@revision] fetches the files of a diffusers repository a loader "
        "needs (one copy of each weight, safetensors first); a URL fetches one file, "
        "resumably, checked against --sha256 or the hash the server publishes. Set "
        "HF_ENDPOINT for a mirror, HF_TOKEN for gated repositories.")
    fetch.add_argument("source", metavar="REPO_ID[@REV]|URL")
    fetch.add_argument("--kind", help="models folder to install into (default: from the "
                       "repository's layout; checkpoints for URLs)")
    fetch.add_argument("--variant", help="weights variant, e.g. fp16 (hub repositories)")
    fetch.add_argument("--sha256", help="expected SHA-256 of a URL's file")
    fetch.add_argument("--offline", action="store_true",
                       help="refuse to download (as HF_HUB_OFFLINE=1 does)")

    remove = actions.add_parser("rm", help="delete a model (asks first)")
    remove.add_argument("name", help="a model name, or kind/name")
    remove.add_argument("-y", "--yes", action="store_true", help="do not ask")

    for p in (listing, verify, fetch, remove):
        add_folder_options(p)
        p.set_defaults(func=lambda args: cmd_models(args, settings_of(args), out, err))


def _inventory(settings) -> Inventory:
    registry = Registry.default()
    return Inventory(ModelPaths(settings.models_dirs, settings.extra_model_paths),
                     detect_family=registry.detect_model_family)


def cmd_models(args, settings, out, err) -> int:
    if args.action == "pull":
        return _pull(args, settings, out, err)
    inventory = _inventory(settings)
    if args.action == "list":
        entries = inventory.entries(args.kind)
        if args.json:
            print(json.dumps([e.to_dict() for e in entries], indent=1))
        else:
            _print_table(entries, out)
        return EXIT_OK
    if args.action == "verify":
        entries = inventory.find(args.name) if args.name else inventory.entries()
        bad = 0
        for entry in entries:
            verdict = inventory.verify(entry)
            bad += verdict.status not in ("ok", "unrecorded")
            note = "; ".join(verdict.problems)
            out.print(f"{verdict.status:10} {entry.kind}/{entry.name}" + (f"  {note}" if note else ""),
                      markup=False, highlight=False)
        return EXIT_PROBLEM if bad else EXIT_OK
    entries = inventory.find(args.name)
    if len(entries) > 1:
        names = ", ".join(f"{e.kind}/{e.name}" for e in entries)
        err.print(f"{args.name!r} names several models ({names}): say which with kind/name",
                  markup=False)
        return 2
    entry = entries[0]
    if not args.yes:
        answer = input(f"delete {entry.path} ({entry.size / 2**20:.1f} MiB)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out.print("kept")
            return EXIT_OK
    inventory.remove(entry)
    out.print(f"removed {entry.kind}/{entry.name}", markup=False)
    return EXIT_OK


def _pull(args, settings, out, err) -> int:
    from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                               TransferSpeedColumn)

    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    models_dir = Path(settings.models_dirs[0])
    with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(args.source.rsplit("/", 1)[-1][:40], total=None)
        try:
            pulled = pull(args.source, models_dir, kind=args.kind, variant=args.variant,
                          sha256=args.sha256, allow_pickle=settings.allow_pickle,
                          progress=lambda done, total: bar.update(task, completed=done, total=total))
        except PullError as exc:
            err.print(f"error: {exc}", style="red", markup=False, highlight=False)
            return EXIT_PROBLEM
    verb = "already installed" if pulled.already_installed else "installed"
    out.print(f"{verb}: {pulled.kind}/{pulled.path.name} ({pulled.path})", markup=False,
              highlight=False)
    return EXIT_OK


def _print_table(entries: list[ModelEntry], out) -> None:
    from rich.table import Table

    table = Table("kind", "name", "family", "format", "size", "sha256 (on record)")
    for e in entries:
        table.add_row(e.kind, e.name, e.family or "?", e.format, human_size(e.size),
                      (e.sha256 or "")[:16])
    out.print(table)


