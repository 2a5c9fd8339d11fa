"""Writing files so that a reader, or a crash, never sees a half-written one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0o022)   # the only portable way to read it is to set it and put it back;
    os.umask(mask)           # done once at import, before any thread creates files
    return mask


UMASK = _read_umask()


def as_created_by_open(tmp: str | Path) -> None:
    """Give a file made by `tempfile.mkstemp` (always 0600) the permissions `open()` would
    have given it: 0666 less the umask, 0644 under the usual 022."""
    os.chmod(tmp, 0o666 & ~UMASK)


def atomic_write(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place.

    `durable` also flushes it to the disk before the rename (run outputs a client was told
    about); caches and memos skip that cost, since a lost entry is only recomputed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        as_created_by_open(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
