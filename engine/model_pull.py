"""`loom models pull`: install a model from the Hugging Face hub or a URL, checked before it counts.

Hub repositories go through `huggingface_hub` (resumable, parallel, its token handling;
`HF_ENDPOINT` points it at a mirror) into a hidden staging folder, and are renamed into
the models folder only when every selected file arrived and every weight file passed its
format check. Single files go through `downloads.download` the same way. Nothing here
runs unless a pull is asked for, and nothing runs when offline mode is on.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .downloads import Downloaded, DownloadError, download, filename_from
from .errors import LoomError
from .hub_files import NothingToPull, guess_kind, select_files
from .model_files import BadModelFile, check_model_file
from .model_inventory import read_records, record_install, weight_files
from .paths import UnsafePath, contained

Progress = Callable[[int, "int | None"], None]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SINGLE_FILE_KINDS = {"checkpoints", "loras", "controlnet", "vae", "upscale_models",
                      "embeddings", "clip_vision", "diffusion_models", "unet", "text_encoders",
                      "clip", "ipadapter"}


class PullError(LoomError):
    pass


@dataclass(frozen=True)
class Pulled:
    path: Path
    kind: str
    source: str
    already_installed: bool = False
    resumed_bytes: int = 0


# The node library sets HF_HUB_OFFLINE so that no loader can reach a hub, and says so in
# LOOM_HUB_GUARD; only a user's own HF_HUB_OFFLINE (or --offline) stops an explicit pull.
HUB_GUARD_ENV = "LOOM_HUB_GUARD"


def offline() -> bool:
    if os.environ.get(HUB_GUARD_ENV) == "1":
        return False
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@contextmanager
def _hub_online():
    """Let huggingface_hub make requests for this pull even where the loaders' guard turned
    its offline mode on (it reads the variable once, at import)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield os.environ.get("HF_ENDPOINT") or None
    finally:
        constants.HF_HUB_OFFLINE = before


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """`owner/name[@revision]` -> (repo id, revision or None)."""
    repo, _, revision = spec.partition("@")
    if not _REPO_ID.match(repo):
        raise PullError(f"{spec!r} is neither a URL nor a hub repository id (owner/name[@revision])")
    return repo, revision or None


def pull(spec: str, models_dir: Path, *, kind: str | None = None, variant: str | None = None,
         sha256: str | None = None, allow_pickle: bool = False,
         progress: Progress | None = None) -> Pulled:
    if offline():
        raise PullError("offline mode is on (HF_HUB_OFFLINE / --offline): nothing is downloaded")
    if kind is not None:
        _check_kind(kind)
    if is_url(spec):
        return pull_url(spec, models_dir, kind=kind or "checkpoints", sha256=sha256,
                        allow_pickle=allow_pickle, progress=progress)
    repo, revision = parse_repo_spec(spec)
    return pull_repo(repo, models_dir, revision=revision, kind=kind, variant=variant,
                     allow_pickle=allow_pickle)


def _check_kind(kind: str) -> None:
    if not re.fullmatch(r"[a-z0-9_]+", kind):
        raise PullError(f"--kind {kind!r}: a models folder name such as "
                        f"{', '.join(sorted(_SINGLE_FILE_KINDS))}")


def pull_repo(repo: str, models_dir: Path, *, revision: str | None = None,
              kind: str | None = None, variant: str | None = None,
              allow_pickle: bool = False) -> Pulled:
    with _hub_online() as endpoint:
        return _pull_repo(repo, models_dir, endpoint, revision=revision, kind=kind,
                          variant=variant, allow_pickle=allow_pickle)


def _pull_repo(repo: str, models_dir: Path, endpoint: str | None, *, revision: str | None,
               kind: str | None, variant: str | None, allow_pickle: bool) -> Pulled:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(repo, revision=revision)
        files = [s.rfilename for s in info.siblings or []]
        top_config = _top_config(endpoint, repo, info.sha, files) if kind is None else None
    except HfHubHTTPError as exc:
        raise PullError(f"{repo}: {_first_line(exc)}") from None
    kind = kind or guess_kind(files, top_config)
    if kind is None:
        raise PullError(f"{repo}: cannot tell which models folder it belongs in; pass --kind")
    try:
        selected = select_files(files, variant=variant, allow_pickle=allow_pickle)
    except NothingToPull as exc:
        raise PullError(f"{repo}: {exc}") from None
    source = f"hf://{repo}@{info.sha}"
    target = _target(models_dir, kind, _readable_name(repo, models_dir / kind, source))
    if target.exists() and read_records(target.parent).get(target.name, {}).get("source") == source:
        return Pulled(target, kind, source, already_installed=True)
    staging = target.with_name(f".pull-{target.name}")
    try:
        snapshot_download(repo, revision=info.sha, local_dir=staging, allow_patterns=selected,
                          endpoint=endpoint)
    except Exception as exc:  # the hub's HTTP stack has its own exception tree; all mean the same here
        raise PullError(f"{repo}: download interrupted ({type(exc).__name__}: {_first_line(exc)}); "
                        "run the same command again to resume") from None
    missing = [f for f in selected if not (staging / f).is_file()]
    if missing:
        raise PullError(f"{repo}: incomplete download (missing {', '.join(missing)}); "
                        "run the same command again to resume")
    for file in weight_files(staging):
        try:
            check_model_file(file, allow_pickle=allow_pickle)
        except BadModelFile as exc:
            raise PullError(f"{repo}: {exc}") from None
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # the hub's resume bookkeeping
    _replace(staging, target)
    record_install(target, source)
    return Pulled(target, kind, source)


def pull_url(url: str, models_dir: Path, *, kind: str, sha256: str | None = None,
             allow_pickle: bool = False, progress: Progress | None = None) -> Pulled:
    import httpx

    folder = models_dir / kind
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0)) as client:
        try:
            name = _remote_name(client, url)
        except httpx.HTTPError as exc:
            raise PullError(f"{url}: {exc}") from None
        target = _target(models_dir, kind, name)
        if sha256 and target.exists() and read_records(folder).get(target.name, {}).get(
                "files", {}).get("", {}).get("sha256") == sha256.lower():
            return Pulled(target, kind, url, already_installed=True)
        try:
            got: Downloaded = download(url, target, sha256=sha256, progress=progress,
                                       client=client)
        except DownloadError as exc:
            raise PullError(str(exc)) from None
    try:
        check_model_file(got.part, allow_pickle=allow_pickle)
    except BadModelFile as exc:
        got.part.unlink()
        raise PullError(f"{url}: {str(exc).replace(got.part.name, target.name)}; "
                        "the file was not installed") from None
    os.replace(got.part, target)
    record_install(target, url)
    return Pulled(target, kind, url, resumed_bytes=got.resumed_from)


def _remote_name(client, url: str) -> str:
    """The file name the server gives, learned from a HEAD request (redirects followed)."""
    response = client.head(url)
    if response.status_code >= 400:
        raise PullError(f"{url}: the server answered HTTP {response.status_code}")
    name = filename_from(response, str(response.url))
    if not name or name.startswith("."):
        raise PullError(f"{url}: the server names no usable file name")
    return name


def _target(models_dir: Path, kind: str, name: str) -> Path:
    folder = models_dir / kind
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return contained(folder, name)
    except UnsafePath as exc:
        raise PullError(f"refusing to install as {name!r}: {exc}") from None


def _readable_name(repo: str, folder: Path, source: str) -> str:
    """`owner/name` installs as `name`, or `owner--name` when another repository has `name`."""
    short = repo.split("/", 1)[1]
    existing = read_records(folder).get(short, {}).get("source", "")
    if (folder / short).exists() and existing and not existing.startswith(f"hf://{repo}@"):
        return repo.replace("/", "--")
    return short


def _top_config(endpoint: str | None, repo: str, sha: str, files: list[str]) -> dict | None:
    if "config.json" not in files:
        return None
    import tempfile

    from huggingface_hub import hf_hub_download

    with tempfile.TemporaryDirectory() as scratch:
        try:
            return json.loads(Path(hf_hub_download(repo, "config.json", revision=sha,
                                                   endpoint=endpoint, local_dir=scratch)).read_text())
        except (OSError, ValueError):
            return None


def _replace(staging: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".old-{target.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def pull_command(meta: dict | None, name: str, kind: str) -> str | None:
    """The `loom models pull ...` that would fetch model `name` (a `kind` model) when a node's
    meta says where it comes from: ComfyUI's `models` list (`[{name, url, directory}]`, as the
    editor stores it in a node's properties) or a hub repository (`{"repo": "owner/name"}`)."""
    meta = meta or {}
    for model in meta.get("models") or []:
        if not isinstance(model, dict) or Path(str(model.get("name", ""))).stem != Path(name).stem:
            continue
        url = model.get("url")
        if isinstance(url, str) and is_url(url):
            folder = model.get("directory") or kind
            return f"loom models pull {url} --kind {folder}"
    repo = meta.get("repo")
    if isinstance(repo, str) and _REPO_ID.match(repo.partition("@")[0]):
        return f"loom models pull {repo} --kind {kind}"
    return None
