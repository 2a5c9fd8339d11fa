"""The guard in front of every request and websocket upgrade.

One ASGI middleware, so plain requests and websocket upgrades pass the same checks,
in this order:

1. Host: only the loopback names, the bind address and configured extra hosts. A
   DNS-rebinding page (evil.example resolving to 127.0.0.1) sends its own name as Host
   and is refused.
2. Origin: a request that carries an Origin (every browser cross-site request and
   every browser websocket does) must come from this server's own origin or a
   configured one; `Origin: null` (sandboxed frames, file:// pages) is refused, and so
   is `Sec-Fetch-Site: cross-site` without an Origin. No CORS headers are ever sent.
3. Token: with a token configured, every path but /healthz needs
   `Authorization: Bearer <token>` (compared in constant time). Websocket clients that
   cannot set headers (browsers) may offer the subprotocol `loom.bearer.<token>`; the
   editor's pages and websocket carry the `loom_token` cookie that `/login` sets.
4. Body size: Content-Length and the bytes actually received are capped (413).

Every response also gets headers that stop a browser from sniffing, framing or
running what it receives (`X-Content-Type-Options: nosniff`, a deny-all CSP).
"""
from __future__ import annotations

import contextlib
import fnmatch
import hmac
import json
from http.cookies import CookieError, SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from .config import LOOPBACK_NAMES, ServerConfig, is_wildcard, is_wildcard_host

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

PUBLIC_PATHS = frozenset({"/healthz", "/login"})   # /login checks the token it is given
UPLOAD_PATHS = frozenset({"/v1/uploads", "/upload/image", "/upload/mask", "/api/upload/image",
                          "/api/upload/mask"})
MULTIPART_SLACK = 64 * 1024
WS_BEARER_PREFIX = "loom.bearer."
TOKEN_COOKIE = "loom_token"

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; sandbox"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class BodyTooLarge(Exception):
    pass


def host_name(host_header: str) -> str:
    """'example.com:8188' -> 'example.com'; '[::1]:8188' -> '::1'."""
    host_header = host_header.strip().lower()
    if host_header.startswith("["):
        end = host_header.find("]")
        return host_header[1:end] if end > 0 else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def tokens_equal(given: str | None, expected: str) -> bool:
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


class Guard:
    def __init__(self, app: Callable, config: ServerConfig):
        self.app = app
        self.config = config
        self.any_host = is_wildcard(config.host) or "*" in config.allowed_hosts
        allowed = [h.lower().strip("[]") for h in config.allowed_hosts]
        self.host_patterns = [h for h in allowed if is_wildcard_host(h)]
        self.hosts = set(LOOPBACK_NAMES) | {h for h in allowed if not is_wildcard_host(h)}
        if not is_wildcard(config.host):
            self.hosts.add(config.host.lower().strip("[]"))
        self.origins = {o.rstrip("/").lower() for o in config.allowed_origins}

    # -- the checks -----------------------------------------------------------------------

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        """(status, code, message) when the request must be refused, else None."""
        host = headers.get("host")
        if host is None:
            return 400, "missing_host", "a Host header is required"
        if not self.host_allowed(host_name(host)):
            return 403, "forbidden_host", (f"Host {host!r} is not served here (allowed: "
                                           f"{', '.join(sorted(self.hosts))}); add it with --allow-host")
        origin = headers.get("origin")
        if origin is not None:
            if not self.origin_allowed(origin, host):
                return 403, "forbidden_origin", (f"cross-origin requests are refused (Origin {origin!r}); "
                                                 f"add a trusted origin with --allow-origin")
        elif headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return 403, "forbidden_origin", "cross-site requests are refused"
        if self.config.token is not None and scope["path"] not in PUBLIC_PATHS:
            if not tokens_equal(self.presented_token(scope, headers), self.config.token):
                return 401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required"
        return None

    def host_allowed(self, name: str) -> bool:
        """A served name: any (wildcard bind or '*'), listed, or matching an --allow-host pattern."""
        return (self.any_host or name in self.hosts
                or any(fnmatch.fnmatchcase(name, p) for p in self.host_patterns))

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        """Configured origins, or the same origin: the page was served by this Host."""
        origin = origin.strip().rstrip("/").lower()
        if origin in self.origins:
            return True
        if origin == "null":
            return False
        try:
            parts = urlsplit(origin)
            origin_port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
            host = urlsplit(f"//{host_header.strip().lower()}")
            host_port = host.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or parts.hostname is None:
            return False
        return (parts.hostname, origin_port) == (host.hostname, host_port)

    @staticmethod
    def presented_token(scope: Scope, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value:
            return value.strip()
        cookie = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookie.load(headers.get("cookie", ""))
        if TOKEN_COOKIE in cookie:   # set by /login for the editor (HttpOnly, SameSite=Strict)
            return cookie[TOKEN_COOKIE].value
        if scope["type"] == "websocket":
            for proto in headers.get("sec-websocket-protocol", "").split(","):
                proto = proto.strip()
                if proto.startswith(WS_BEARER_PREFIX):
                    return proto[len(WS_BEARER_PREFIX):]
        return None

    def body_limit(self, path: str) -> int:
        if path in UPLOAD_PATHS:
            return self.config.max_upload_bytes + MULTIPART_SLACK
        return self.config.max_request_bytes

    # -- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refused = self.refusal(scope, headers)
        if refused is not None:
            status, code, message = refused
            if scope["type"] == "websocket":
                await receive()  # websocket.connect
                # Closing before accept makes the server answer the upgrade with HTTP 403.
                await send({"type": "websocket.close", "code": 1008, "reason": code})
            else:
                await send_json(send, status, {"error": code, "message": message},
                                extra=[(b"www-authenticate", b"Bearer")] if status == 401 else [])
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        await self.guarded_http(scope, receive, send, headers)

    async def guarded_http(self, scope: Scope, receive: Receive, send: Send, headers: dict) -> None:
        limit = self.body_limit(scope["path"])
        too_large = {"error": "too_large", "message": f"request body over the {limit} byte limit"}
        try:
            declared = int(headers.get("content-length", "0"))
        except ValueError:
            await send_json(send, 400, {"error": "bad_request", "message": "bad Content-Length"})
            return
        if declared > limit:
            await send_json(send, 413, too_large)
            return
        received = 0
        started = overflow = False

        async def counted_receive() -> dict:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = True
                    raise BodyTooLarge()
            return message

        async def secured_send(message: dict) -> None:
            nonlocal started
            if overflow:
                return  # whatever the app makes of the aborted body (400, 500) is replaced by 413
            if message["type"] == "http.response.start":
                started = True
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                if b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        try:
            await self.app(scope, counted_receive, secured_send)
        except Exception:
            if not overflow:
                raise
        if overflow and not started:
            await send_json(send, 413, too_large)


async def send_json(send: Send, status: int, body: dict, extra: list | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            *SECURITY_HEADERS, (b"cache-control", b"no-store"), *(extra or [])]})
    await send({"type": "http.response.body", "body": payload})
