"""Who may reach a server that has no key: its own Host names, no other site's browser requests.

Without a key, any web page the local user opens could otherwise drive generations: a form or `fetch` with a
`text/plain` body needs no CORS preflight (CSRF), and a domain re-pointed at 127.0.0.1 reaches the port with its
own Host (DNS rebinding). `AccessGuard` refuses requests whose Host is not an accepted name, whose Origin is not
allowed and (for the API) whose POST body is not `application/json`, which browsers only send cross-origin after
a preflight that CORS, off unless configured, refuses. Starlette's TrustedHostMiddleware checks the Host but not
the Origin or the body type, and answers in its own format, hence this small middleware.
"""

from collections.abc import Callable, Iterable

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def accepted_hosts(bound_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Loopback names, the bound address (unless it is a wildcard) and `extra`, lower-cased without brackets."""
    wildcard = bound_host in ("0.0.0.0", "::", "")
    names = [*LOOPBACK_HOSTS, *extra, *([] if wildcard else [bound_host])]
    return frozenset(name.lower().strip("[]") for name in names)


def hostname(value: str) -> str:
    """The name part of a Host header or an origin (`[::1]:8000` -> `::1`, `http://Example:80` -> `example`)."""
    value = value.strip().lower().split("://", 1)[-1].split("/", 1)[0]
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class AccessGuard:
    """ASGI middleware: refuse foreign Hosts, disallowed Origins and (with `json_only`) non-JSON POST bodies."""

    def __init__(
        self,
        app: ASGIApp,
        hosts: frozenset[str],
        origin_allowed: Callable[[str], bool],
        *,
        json_only: bool = False,
        host_fix: str = "add it to access.allowed_hosts in --config",
        origin_fix: str = "add it to access.cors_origins in --config",
    ) -> None:
        self.app, self.hosts, self.origin_allowed, self.json_only = app, hosts, origin_allowed, json_only
        self.host_fix, self.origin_fix = host_fix, origin_fix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = self.refusal(Headers(scope=scope), scope.get("method", "GET"))
            if refusal is not None and scope["type"] == "http":
                await refusal(scope, receive, send)
                return
            if refusal is not None:
                await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)

    def refusal(self, headers: Headers, method: str) -> JSONResponse | None:
        """The error response for a refused request, or None to serve it."""
        host = hostname(headers.get("host", ""))
        if host not in self.hosts:
            return _error(
                403,
                f"Host {host!r} is not one this server answers to (DNS rebinding); {self.host_fix}",
                "host_not_allowed",
            )
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin):
            return _error(
                403,
                f"requests from web pages at {origin} are refused (cross-site request forgery); {self.origin_fix}",
                "origin_not_allowed",
            )
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if self.json_only and method == "POST" and media_type != "application/json":
            return _error(
                415,
                f"send the request body as Content-Type: application/json (got {media_type or 'none'!r})",
                "unsupported_media_type",
            )
        return None


def _error(status: int, message: str, code: str) -> JSONResponse:
    """OpenAI's error shape, as every API error has."""
    kind = "permission_error" if status == 403 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)
