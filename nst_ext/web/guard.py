"""Who may use a page we serve (the app and the live view alike): one ASGI middleware,
:class:`Guard`, in front of every route.

A browser lets any web site the user visits send requests to 127.0.0.1; the checks here are what
keeps such a site from reading or driving our pages (the holes Jupyter closed in 2017-2018 and
Gradio and TensorBoard met later; docs/web.md, "Security"):

- **Host allow-list** (:class:`Access`): on a loopback address only ``127.0.0.1``, ``localhost``
  and ``[::1]`` with our port. This is the only defence against DNS rebinding, where a foreign
  name resolves to 127.0.0.1 and the page's requests count as same-origin.
- **Origin check** on every request that changes something (any method but GET, HEAD, OPTIONS):
  its ``Origin`` (or, failing that, its ``Referer``) must be the page's own origin; ``null``,
  foreign and missing origins are refused. A cross-site form post or ``fetch`` is a "simple"
  request that a browser sends without asking, so the server must refuse it.
- **A token** where the server listens beyond loopback: printed in the address, exchanged for an
  HttpOnly, SameSite=Strict cookie, required on every route.
- **Headers on every response**: no MIME sniffing, a Content-Security-Policy that loads nothing
  from elsewhere and forbids framing (no clickjacking of Start and Stop), no Referer sent out.
- **A body limit** enforced while the body streams in: a chunked upload is cut at the limit, so
  the server's memory stays flat whatever a client sends.
"""

import dataclasses
import hmac
import ipaddress
import json
import secrets
from http.cookies import SimpleCookie
from typing import Callable, FrozenSet, Optional
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

# What every response carries. The pages' scripts and styles are files of their own (no inline
# code), and the previews are data: URLs.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_PARAMETER = "token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or ``localhost``, IPv6 with or without brackets) is this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclasses.dataclass(frozen=True)
class Access:
    """Who may use a server bound to `host`:`port`: the Host header values it answers (None:
    any, for a wildcard address, where the token is the check) and the token every request must
    carry (None on loopback)."""

    host: str
    port: int
    token: Optional[str] = None

    @classmethod
    def for_address(cls, host: str, port: int) -> "Access":
        """The rules for a server listening on `host`:`port`: a token unless it is loopback."""
        return cls(host, port, None if is_loopback(host) else secrets.token_urlsafe(32))

    @property
    def allowed_hosts(self) -> Optional[FrozenSet[str]]:
        if _is_wildcard(self.host):
            return None
        names = {_bracketed(self.host).lower(), *(LOOPBACK_NAMES if is_loopback(self.host) else ())}
        with_port = {f"{name}:{self.port}" for name in names}
        return frozenset(with_port | (names if self.port == 80 else set()))  # browsers leave out port 80

    @property
    def cookie_name(self) -> str:
        return f"nst_ext_token_{self.port}"  # cookies are not told apart by port; two servers, two names

    def url(self, shown_host: Optional[str] = None) -> str:
        """The address to open: with the token where one is needed."""
        host = _bracketed(shown_host or self.host)
        query = f"?{urlencode({TOKEN_PARAMETER: self.token})}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    def host_allowed(self, host: str) -> bool:
        allowed = self.allowed_hosts
        return allowed is None or host.lower() in allowed

    def same_origin(self, origin: str, host: str) -> bool:
        """Whether `origin` (an Origin header, or a Referer) is the page's own: http and the Host
        the request was sent to."""
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme == "http" and bool(host) and parts.netloc.lower() == host.lower()

    def token_matches(self, given: Optional[str]) -> bool:
        return self.token is None or (given is not None and hmac.compare_digest(given.encode(), self.token.encode()))


class BodyTooLarge(Exception):
    """A request body went past the guard's limit while it streamed in."""

    def __init__(self, limit: int):
        super().__init__(f"the request is larger than {limit} bytes")
        self.limit = limit


# The headers the checks read: a request that repeats one is refused (which copy would count?).
CHECKED_HEADERS = ("host", "origin", "referer", "cookie")


def _headers(scope) -> dict:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}


def _repeated(scope) -> Optional[str]:
    names = [name.decode("latin-1").lower() for name, _ in scope.get("headers", [])]
    return next((name for name in CHECKED_HEADERS if names.count(name) > 1), None)


class Guard:
    """The ASGI app `app` behind the checks of this module, for the server described by `access`;
    request bodies over `max_body` bytes are refused, as declared (Content-Length) or as they
    stream in (:class:`BodyTooLarge` from `receive`, which the app's handler turns into a 413;
    `too_large_message(limit)` is the line the page shows)."""

    def __init__(self, app, access: Access, max_body: int, too_large_message: Callable[[int], str]):
        self.app, self.access, self.max_body, self.too_large_message = app, access, max_body, too_large_message

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # none is served: refused before it is accepted (a 403)
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":  # lifespan (off where we serve)
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        *(item for item in SECURITY_HEADERS if item[0] not in names),
                    ],
                }
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send_with_headers)
        await self.app(scope, self._limited(receive), send_with_headers)

    def _refusal(self, scope):
        """An ASGI app answering a request that may not pass, or None where it may."""
        repeated = _repeated(scope)
        if repeated:
            return _json(400, f"the request repeats its {repeated.title()} header")
        headers = _headers(scope)
        host = headers.get("host", "")
        if not self.access.host_allowed(host):
            return _json(
                403,
                f"this server answers only to {' or '.join(sorted(self.access.allowed_hosts))}; "
                f"the request named {host[:100]!r}",
            )
        if scope["method"] not in SAFE_METHODS:
            origin = headers.get("origin") or headers.get("referer")
            if not origin or not self.access.same_origin(origin, host):
                return _json(
                    403,
                    "a request that changes something must come from this server's own page "
                    f"(it came from {(origin or 'no page it named')[:100]!r})",
                )
        if self.access.token is not None:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if self.access.token_matches(query.get(TOKEN_PARAMETER)) and scope["method"] in SAFE_METHODS:
                return _token_exchange(self.access, scope, query)
            cookie = SimpleCookie()
            try:
                cookie.load(headers.get("cookie", ""))
            except Exception:  # a malformed Cookie header is no token
                cookie = SimpleCookie()
            given = cookie[self.access.cookie_name].value if self.access.cookie_name in cookie else None
            if not self.access.token_matches(given):
                return _json(
                    403, "this server needs its token: open the address `nst-ext serve` printed, with its ?token=..."
                )
        length = headers.get("content-length", "")
        if length.strip().isdigit() and int(length) > self.max_body:
            return _json(413, self.too_large_message(self.max_body))
        return None

    def _limited(self, receive):
        """`receive`, raising :class:`BodyTooLarge` once the body streamed past the limit."""
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        return limited


def _json(status: int, error: str):
    async def answer(scope, receive, send):
        body = json.dumps({"error": error}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return answer


def _token_exchange(access: Access, scope, query: dict):
    """The address with the right token: the token becomes a cookie, and the browser is sent on to
    the same address without it (so it is not kept in the history or shown on screen)."""
    rest = urlencode({name: value for name, value in query.items() if name != TOKEN_PARAMETER})
    # One leading slash, the rest percent-encoded: "//host" would send the browser to another site.
    location = "/" + quote(scope.get("path", "/").lstrip("/")) + (f"?{rest}" if rest else "")
    cookie = f"{access.cookie_name}={access.token}; Path=/; HttpOnly; SameSite=Strict"

    async def answer(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode()),
                    (b"content-length", b"0"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    return answer
