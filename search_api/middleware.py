"""What every request passes first: the Host allow-list, body caps before reading, and security headers."""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MULTIPART_SLACK = 64 * 1024  # multipart framing and the small form fields beside an upload

PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
# Swagger UI and ReDoc load their scripts from jsdelivr and start with an inline script.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
            "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
            "font-src 'self' https://fonts.gstatic.com; worker-src blob:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


def split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether a Host header value (with or without port) is one the settings allow."""
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:8000
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if not name:
        return False
    for pattern in allowed:
        pattern = pattern.lower().strip("[]")
        if pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


async def _send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), *SECURITY_HEADERS, *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Refuses foreign Host headers (DNS rebinding) and bodies over their cap, and adds the security headers.

    Bodies are capped from Content-Length before any byte is read, and again while they stream in (a body
    without a length, or one that lies about it): JSON and other bodies at `max_json`, multipart uploads at
    `max_upload` plus a little framing.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: list[str], max_json: int, max_upload: int) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.max_json = max_json
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not host_allowed(headers.get("host", ""), self.allowed_hosts):
            await _send_json(send, 400, "Host: this server does not answer for that host name; add it to "
                             "PROMPTDEX_API__ALLOWED_HOSTS if it is yours")
            return
        multipart = headers.get("content-type", "").lower().startswith("multipart/")
        limit = self.max_upload + MULTIPART_SLACK if multipart else self.max_json
        what = f"upload is larger than the limit of {self.max_upload} bytes" if multipart else \
            f"JSON body is larger than the limit of {self.max_json} bytes"
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, "Content-Length: not a number of bytes")
                return
            if int(declared) > limit:
                await _send_json(send, 413, f"body: the {what}")
                return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"body: the {what}")
            return message

        path = scope.get("path", "")
        csp = (DOCS_CSP if path in ("/docs", "/redoc") else PAGE_CSP).encode()

        async def secured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra: list[tuple[bytes, bytes]] = [(b"content-security-policy", csp), *SECURITY_HEADERS]
                if scope.get("scheme") == "https":
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, capped_receive, secured_send)

