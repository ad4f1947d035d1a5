"""Service safety: loopback by default, bearer tokens, request size limits, logs without patient identifiers."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import secrets
import time

from oncoseg.errors import OncoSegError

access_log = logging.getLogger("oncoseg.service.access")

# Paths anyone may call: the health check, the web page's own files (no data in them) and the MONAI Label
# login endpoints (which hand out the token only for the right password).
PUBLIC_PATHS = ("/health", "/", "/index.html", "/favicon.ico", "/auth/", "/auth", "/auth/token")
PUBLIC_PREFIXES = ("/static/",)


LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "127.0.0.1", "::1"})

# The web page loads only its own files; the overlay PNG arrives as a data: URL. No framing (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")  # FastAPI's pages load their scripts from a CDN


def allowed_hosts(bind_host: str, token: str | None, extra: tuple[str, ...] = ()) -> frozenset[str] | None:
    """Host header names the service answers to; None = any. Without a token only loopback names (and
    ``extra``) are answered, so a web page whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing."""
    if token and not extra:
        return None
    names = {name.lower().strip("[]") for name in extra}
    if is_loopback(bind_host):
        names |= {bind_host.lower().strip("[]")}
    return frozenset(LOOPBACK_NAMES | names)


def host_name(value: str) -> str:
    """The name part of a Host header value (``[::1]:8765`` → ``::1``, ``Example.org:80`` → ``example.org``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token (anyone on the network could use it otherwise), and
    refuse tokens that are short or hold spaces (a token of blanks is no secret)."""
    if token is not None and (len(token) < 16 or any(c.isspace() or not c.isprintable() for c in token)):
        raise OncoSegError(
            "the token is too short or holds spaces: use at least 16 printable characters without spaces "
            "(e.g. `python -m secrets`)"
        )
    if not is_loopback(host) and not token:
        raise OncoSegError(
            f"refusing to listen on {host} without a token: set ONCOSEG_TOKEN or --token-file, "
            "or keep the default --host 127.0.0.1"
        )


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

    def __init__(self, app, token: str | None, max_body_bytes: int, hosts: frozenset[str] | None = None):
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.hosts = hosts

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
                message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
            await send(message)

        path = scope["path"]
        extra_headers = list(SECURITY_HEADERS)
        if path not in DOCS_PATHS:
            extra_headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
        try:
            if self.hosts is not None:
                host = next((v for k, v in scope["headers"] if k.lower() == b"host"), b"").decode("latin-1")
                if host_name(host) not in self.hosts:
                    return await _send_json(
                        send_logged,
                        421,
                        "this service answers only to its own host names (see --allowed-host)",
                        "wrong_host",
                    )
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
            if length is not None and length.strip().isdigit() and int(length) > self.max_body_bytes:
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
