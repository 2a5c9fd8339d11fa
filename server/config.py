"""The server's own settings: where it listens, who may talk to it, and how much it accepts.

Engine settings (device, folders the nodes read and write) stay in `engine.Settings`;
this holds what only a network service needs: bind address, token, request limits,
queue and event-stream policy.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import LoomError
from engine.limits import Limits

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class GraphLimits:
    """What one run may ask for. Nodes declare which inputs count against which limit; the
    engine checks them while the run runs (`engine.limits`), whatever the wiring, and
    literals visibly over a limit are refused (422) before anything is queued."""

    max_nodes: int = 200
    max_width: int = 2048
    max_height: int = 2048
    max_pixels: int = 2048 * 2048    # one image's width x height, wherever it is made or grown
    max_steps: int = 150             # one sampler call
    max_batch: int = 8
    max_repeats: int = 16            # a retry's max_tries, a batch_over's list of values
    max_scale: float = 4.0           # upscale factors
    max_tiles: int = 1024            # tiles of one tiled upscale
    max_run_steps: int = 2000        # sampler steps of a whole run, every retry included
    max_run_repeats: int = 64        # tries and batch items of a whole run (nested loops)
    max_run_seconds: float = 3600.0  # wall-clock time of one run

    def engine_limits(self) -> Limits:
        return Limits(per_node={"width": self.max_width, "height": self.max_height,
                                "pixels": self.max_pixels, "steps": self.max_steps,
                                "batch": self.max_batch, "repeats": self.max_repeats,
                                "scale": self.max_scale, "tiles": self.max_tiles},
                      per_run={"steps": self.max_run_steps, "repeats": self.max_run_repeats},
                      seconds=self.max_run_seconds)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8188
    data_dir: Path = Path("loom-data")
    token: str | None = None
    # Extra Host header values and Origins to accept besides the loopback names and the bind host.
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    limits: GraphLimits = field(default_factory=GraphLimits)
    max_request_bytes: int = 2 * 1024 * 1024        # JSON bodies (graphs)
    max_upload_bytes: int = 20 * 1024 * 1024        # one uploaded image file
    max_upload_pixels: int = 4096 * 4096            # decompression-bomb guard
    max_attempts: int = 2                           # tries per run across crashes/restarts
    event_queue_size: int = 256                     # per websocket client, oldest dropped first
    event_send_timeout: float = 10.0                # seconds to take one message, else closed
    wait_timeout: float = 600.0                     # upper bound for POST /v1/runs?wait=true
    keep_runs: int | None = None                    # finished runs kept (None: all)
    keep_days: float | None = None                  # days a finished run is kept (None: forever)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "loom.sqlite3"

    def check_bind(self) -> None:
        """Refuse to listen beyond this machine unless a token guards every endpoint."""
        if not is_loopback(self.host) and not self.token:
            raise LoomError(
                f"refusing to listen on {self.host!r} without a token: anyone who can reach "
                f"this address could run graphs and read outputs. Pass --token (or set "
                f"LOOM_TOKEN), or bind to 127.0.0.1")
        wildcards = [h for h in self.allowed_hosts if is_wildcard_host(h)]
        if wildcards and not self.token:
            # Any Host name is exactly what a DNS-rebinding page sends: only a token stops it.
            raise LoomError(
                f"refusing --allow-host {wildcards[0]!r} without a token: a web page on any "
                f"domain could then reach this server through DNS rebinding. Pass --token "
                f"(or set LOOM_TOKEN), or list the host names to serve")
        if self.token is not None and len(self.token) < 16:
            raise LoomError("the token must be at least 16 characters long")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def is_wildcard_host(name: str) -> bool:
    """True for an --allow-host value that stands for many names ('*', '*.example.com')."""
    return "*" in name or "?" in name or is_wildcard(name.strip())
