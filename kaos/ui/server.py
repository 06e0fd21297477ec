"""`kaos ui`: a web view of the kaos API, served on loopback, signing every API request with the user's own
credentials (kaos.client: SigV4, so the API keeps AWS_IAM and there is no new login surface).

What it serves: the single-page view (kaos/ui/static/, plain JS modules: no build step, no CDN) and `/api/<path>`,
a GET-only proxy of the kaos API. The proxy spends the user's credentials, so other local pages must not reach it:
* a random token per start, handed over in the URL this command prints (`?token=`), which the page keeps in
  sessionStorage and sends as the X-Kaos-Token header: a page of another origin can neither read it nor, without
  it, make a request count (a custom header also forces a CORS preflight, which this server never answers);
* the Host header must name this server (127.0.0.1:<port> or localhost:<port>): a DNS-rebinding page, whose
  requests carry its own host name, is refused;
* only GET, and only paths under /workspaces: nothing the view does changes anything.
"""
from __future__ import annotations

import hmac
import json
import secrets
import queue
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from kaos.client import ApiError, Client

TOKEN_HEADER = "X-Kaos-Token"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# The view loads nothing from elsewhere; inline scripts and styles are refused too.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
}
API_PREFIX = "/api/"


def static_files() -> dict[str, bytes]:
    """The view's assets, read once from the package (pyproject's package-data ships them)."""
    root = resources.files("kaos.ui") / "static"
    return {entry.name: entry.read_bytes() for entry in root.iterdir()
            if entry.is_file() and "." + entry.name.rsplit(".", 1)[-1] in STATIC_TYPES}


class UiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, client: Callable[[], Client], token: str | None = None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.token = token or secrets.token_urlsafe(32)
        self.port = int(self.server_address[1])
        self.hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self.assets = static_files()
        self._make_client = client
        # requests.Session is not documented thread-safe, and every connection gets its own handler thread: each
        # request borrows an idle client (its session keeps the API connection open) or makes one.
        self._idle: queue.SimpleQueue[Client] = queue.SimpleQueue()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    def request(self, path: str, query: dict[str, str]) -> bytes:
        """The API's JSON answer as it came: passed through, not parsed and encoded again (a page of runs is
        hundreds of KB)."""
        try:
            client = self._idle.get_nowait()
        except queue.Empty:
            client = self._make_client()
        try:
            return client.send("GET", path, b"", {}, query).content
        finally:
            self._idle.put(client)


class _Handler(BaseHTTPRequestHandler):
    server: UiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the terminal shows the URL, not every request."""

    def do_GET(self) -> None:
        if self.headers.get("Host") not in self.server.hosts:
            self._json(421, _error("WrongHost", "this server answers only to 127.0.0.1 and localhost"))
            return
        parts = urlsplit(self.path)
        if parts.path.startswith(API_PREFIX):
            # The view escapes path segments (node ids hold ':'); the client signs and sends them as the CLI does.
            self._proxy(unquote(parts.path[len(API_PREFIX) - 1:]), dict(parse_qsl(parts.query)))
            return
        name = "index.html" if parts.path in ("/", "/index.html") else parts.path.removeprefix("/static/")
        body = self.server.assets.get(name) if parts.path == "/" or parts.path.startswith("/static/") else None
        if body is None:
            self._json(404, _error("NotFound", f"no such page: {parts.path}"))
            return
        self._send(200, body, STATIC_TYPES["." + name.rsplit(".", 1)[-1]])

    def _proxy(self, path: str, query: dict[str, str]) -> None:
        offered = self.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(offered.encode(), self.server.token.encode()):
            self._json(403, _error("BadToken", f"missing or wrong {TOKEN_HEADER}: open the URL `kaos ui` printed"))
            return
        if not (path == "/workspaces" or path.startswith("/workspaces/")) or any(c in path for c in "?#\\") \
                or ".." in path.split("/"):
            self._json(404, _error("NotFound", "the view reads only /workspaces routes"))
            return
        try:
            answer = self.server.request(path, query)
        except ApiError as exc:
            self._json(exc.status or 502, _error(exc.code, exc.message))
            return
        self._send(200, answer, "application/json")

    def _refuse(self) -> None:
        self._json(405, _error("MethodNotAllowed", "the view only reads: GET"))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
