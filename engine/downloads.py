"""Resumable, verified downloads of single files over HTTP(S).

A file is written as `.NAME.part` beside its destination and moved into place only by
the caller, after the size and SHA-256 (given, or published by the server) match and
the content passed its format check. An interrupted transfer leaves the `.part` file,
and the next attempt asks for the rest with a Range request.
"""
from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from .errors import LoomError
from .model_files import sha256_of

if TYPE_CHECKING:
    import httpx

Progress = Callable[[int, "int | None"], None]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(LoomError):
    pass


@dataclass(frozen=True)
class Downloaded:
    part: Path          # the verified bytes, not yet in place
    sha256: str
    size: int
    resumed_from: int   # bytes that were already on disk when this attempt began


def part_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part")


def filename_from(response: httpx.Response, url: str) -> str:
    """The name a server gives the file (Content-Disposition), else the URL's last segment."""
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r"filename\*=UTF-8''([^;]+)", disposition) or re.search(
        r'filename="?([^";]+)"?', disposition)
    name = unquote(match.group(1)) if match else unquote(urlparse(url).path.rsplit("/", 1)[-1])
    return Path(name.replace("\\", "/")).name


def published_sha256(headers: httpx.Headers) -> str | None:
    """A SHA-256 the server states for the body: the hub's X-Linked-Etag (LFS files are
    addressed by it) or an RFC 3230 / RFC 9530 digest header."""
    etag = headers.get("x-linked-etag", "").strip('"').lower()
    if _HEX64.match(etag):
        return etag
    for name in ("repr-digest", "digest"):
        match = re.search(r"sha-256=:?([A-Za-z0-9+/=]+):?", headers.get(name, ""), re.IGNORECASE)
        if match:
            try:
                return base64.b64decode(match.group(1)).hex()
            except ValueError:
                return None
    return None


def download(url: str, dest: Path, *, sha256: str | None = None, progress: Progress | None = None,
             headers: dict[str, str] | None = None, retries: int = 3,
             client: httpx.Client | None = None) -> Downloaded:
    """Fetch `url` into `part_path(dest)`, resuming what an earlier attempt left there."""
    import httpx

    part = part_path(dest)
    part.parent.mkdir(parents=True, exist_ok=True)
    own_client = client is None
    client = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0))
    try:
        resumed_from = part.stat().st_size if part.exists() else 0
        for attempt in range(retries + 1):
            try:
                total, server_sha = _fetch_rest(client, url, part, headers or {}, progress)
                break
            except (httpx.TransportError, _ShortBody) as exc:
                have = part.stat().st_size if part.exists() else 0
                if attempt == retries:
                    raise DownloadError(
                        f"download of {url} interrupted at {have} bytes ({exc}); run the same "
                        "command again to resume from there") from None
                time.sleep(min(2 ** attempt * 0.5, 5))
    finally:
        if own_client:
            client.close()
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{url}: got {size} bytes, the server announced {total}")
    actual = sha256_of(part)
    wanted = (sha256 or server_sha or "").lower() or None
    if wanted is not None and actual != wanted:
        part.unlink()
        source = "given" if sha256 else "published by the server"
        raise DownloadError(f"{dest.name}: SHA-256 {actual} does not match the {source} "
                            f"{wanted}; the file was not installed")
    return Downloaded(part=part, sha256=actual, size=size, resumed_from=resumed_from)


class _ShortBody(Exception):
    """The server closed the body before Content-Length bytes arrived."""


def _fetch_rest(client: httpx.Client, url: str, part: Path, headers: dict[str, str],
                progress: Progress | None) -> tuple[int | None, str | None]:
    have = part.stat().st_size if part.exists() else 0
    request_headers = {**headers, "Accept-Encoding": "identity"}
    if have:
        request_headers["Range"] = f"bytes={have}-"
    with client.stream("GET", url, headers=request_headers) as response:
        if response.status_code == 416 and have:
            # Already complete: the server has nothing past what we hold.
            return have, published_sha256(response.headers)
        if response.status_code not in (200, 206):
            raise DownloadError(f"{url}: the server answered HTTP {response.status_code}")
        if response.status_code == 200:
            have = 0  # the server ignored Range: start over
        total = _total_size(response, have)
        mode = "ab" if have else "wb"
        received = 0
        with open(part, mode) as f:
            for chunk in response.iter_bytes():   # as it arrives: a cut loses nothing received
                f.write(chunk)
                received += len(chunk)
                if progress is not None:
                    progress(have + received, total)
        if total is not None and have + received < total:
            raise _ShortBody(f"{have + received} of {total} bytes")
        return total, published_sha256(response.headers)


def _total_size(response: httpx.Response, have: int) -> int | None:
    content_range = response.headers.get("content-range", "")
    match = re.match(r"bytes \d+-\d+/(\d+)", content_range)
    if match:
        return int(match.group(1))
    length = response.headers.get("content-length")
    return have + int(length) if length is not None and length.isdigit() else None
