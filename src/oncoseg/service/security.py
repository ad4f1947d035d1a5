"""Service safety: loopback by default, bearer tokens, request size limits, logs without patient identifiers."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import secrets
import time

from oncoseg.errors import OncoSegError

access_log = logging.getLogger("oncoseg.service.access")

# Paths anyone may call: the health check, the web page's own files (no data in them) and the MONAI Label
# login endpoints (which hand out the token only for the right password).
PUBLIC_PATHS = ("/health", "/", "/index.html", "/favicon.ico", "/auth/", "/auth", "/auth/token")
PUBLIC_PREFIXES = ("/static/",)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token (anyone on the network could use it otherwise)."""
    if not is_loopback(host) and not token:
        raise OncoSegError(
            f"refusing to listen on {host} without a token: set ONCOSEG_TOKEN or --token-file, "
            "or keep the default --host 127.0.0.1"
        )
    if token is not None and len(token) < 16:
        raise OncoSegError("the token is too short: use at least 16 characters (e.g. `python -m secrets`)")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer(headers: dict[bytes, bytes] | list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip()
    return None


def hide_uids(text: str) -> str:
    """Replace DICOM-UID-like strings (5+ dotted numbers) with a short hash."""
    from oncoseg.pacs import uid_hash

    return re.sub(r"\d+(\.\d+){4,}", lambda m: f"<uid:{uid_hash(m.group(0))}>", text)


class UidFilter(logging.Filter):
    """Scrub UIDs from every record that passes (attach to handlers of the service's loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = hide_uids(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


async def _send_json(send, status: int, detail: str, code: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail, "code": code}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class GuardMiddleware:
    """ASGI middleware: bearer-token check, request body limit (HTTP 413) and an access log that names the
    route template (``/api/images/{image_id}/segment``), never the raw path or query (which may hold UIDs)."""

    def __init__(self, app, token: str | None, max_body_bytes: int):
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        state = {"status": 500, "too_large": False}

        async def send_logged(message):
            if state["too_large"]:
                return  # the app's own answer to the cut-off body is replaced by our 413
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        try:
            path = scope["path"]
            public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
            if self.token and not public and not token_matches(bearer(scope["headers"]), self.token):
                return await _send_json(
                    send_logged,
                    401,
                    "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                    "unauthorized",
                    [(b"www-authenticate", b"Bearer")],
                )
            length = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), None)
            if length is not None and int(length) > self.max_body_bytes:
                return await _send_json(send_logged, 413, self._too_large(), "too_large")
            received = 0

            async def limited_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        state["too_large"] = True
                        raise _TooLarge
                return message

            try:
                await self.app(scope, limited_receive, send_logged)
            except _TooLarge:
                pass
            if state["too_large"]:
                state["too_large"] = False
                await _send_json(send_logged, 413, self._too_large(), "too_large")
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                "<static>" if scope["path"].startswith("/static/") else "?"
            )
            access_log.info(
                "%s %s %d %.1f ms",
                scope["method"],
                template,
                state["status"],
                1000 * (time.perf_counter() - start),
            )

    def _too_large(self) -> str:
        return (
            f"request body larger than the limit of {self.max_body_bytes / 2**20:.0f} MiB (--max-upload-mb)"
        )
