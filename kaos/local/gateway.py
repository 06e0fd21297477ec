"""An HTTP front that does what API Gateway with AWS_IAM authorization does, for the embedded stack.

It verifies each request's SigV4 signature with botocore (recomputing it with the local user's secret), builds
the REST API proxy event with `requestContext.identity` filled as API Gateway does, and calls the Chalice app
object, which is the same object the deployed Lambda runs: identity and authorization share one code path.

What API Gateway's AWS_IAM check does, and so this front:
- the credential scope names the API's region and the service `execute-api`; anything else is refused;
- the payload hash is computed from the body received: a signed `X-Amz-Content-SHA256` (or `UNSIGNED-PAYLOAD`)
  that is not the body's hash is refused, and the signature is checked against the body's real hash;
- a body over the API's limit is refused (413) from its Content-Length before it is read, and a request whose
  route, Authorization header shape, access key, scope or date already fail is refused before its body is read.

Test hooks: `/_local/faults` (fault injection) exists only when the stack was started for tests
(`KAOS_LOCAL_TEST_HOOKS=1`) and only for the local `admin` user; otherwise it is an unknown path like any other.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import errno
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, UTC
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from chalice.app import Chalice
from chalice.local import LambdaContext, LocalChalice, RouteMatcher

from chalicelib import limits

CONTROL_PATH = "/_local/faults"
# The local user allowed to call CONTROL_PATH (created only when the stack runs with test hooks).
ADMIN_USER = "admin"
SERVICE = "execute-api"
# API Gateway rejects signatures more than 5 minutes away from its clock.
CLOCK_SKEW = timedelta(minutes=5)
ACCOUNT_ID = "123456789012"
# The largest body the API takes (API Gateway: 10 MB; the Lambda payload limit makes ours smaller).
MAX_BODY_BYTES = limits.MAX_REQUEST_BYTES
# Methods that carry a body: without a Content-Length it cannot be bounded before reading, so it is refused.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# A refused request's body is discarded up to this size so its connection stays usable; a larger one (or one
# whose size is unknown) gets its connection closed instead.
DRAIN_BYTES = 64 * 1024
DRAIN_SECONDS = 2.0
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<headers>[a-z0-9;-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_LENGTH = re.compile(r"^[0-9]{1,19}$")

Reply = tuple[int, dict[str, str], bytes]


@dataclass(frozen=True)
class LocalUser:
    name: str
    access_key: str
    secret_key: str

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT_ID}:user/{self.name}"


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Authorization:
    """The parts of a SigV4 Authorization header that can be checked without the body."""

    user: LocalUser
    amz_date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def authorize(users: dict[str, LocalUser], headers: dict[str, str], region: str) -> Authorization:
    """Header-only checks, in API Gateway's order: shape, access key, credential scope, date.

    Runs before the body is read, so an unauthenticated request never gets its body read."""
    lower = {k.lower(): v for k, v in headers.items()}
    match = _AUTH.match(lower.get("authorization", ""))
    if match is None:
        raise AuthError(403, "Missing Authentication Token")
    user = users.get(match["key"])
    if user is None:
        raise AuthError(403, "The security token included in the request is invalid.")
    if match["service"] != SERVICE:
        raise AuthError(403, f"Credential should be scoped to correct service: '{SERVICE}'.")
    if match["region"] != region:
        raise AuthError(403, f"Credential should be scoped to a valid region, not '{match['region']}'.")
    amz_date = lower.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise AuthError(403, "Authorization header requires existence of a 'X-Amz-Date' header.") from None
    if abs(datetime.now(UTC) - signed_at) > CLOCK_SKEW or not amz_date.startswith(match["date"]):
        raise AuthError(403, "Signature expired or not yet valid.")
    return Authorization(user, amz_date, match["region"], match["service"], tuple(match["headers"].split(";")),
                         match["signature"])


class _BodyHashSigV4(SigV4Auth):
    """SigV4 whose canonical request always ends with the hash of the body received, never a header's claim."""

    def __init__(self, credentials: Credentials, service: str, region: str, body_hash: str) -> None:
        super().__init__(credentials, service, region)
        self.body_hash = body_hash

    def canonical_request(self, request: AWSRequest) -> str:
        head = super().canonical_request(request).rsplit("\n", 1)[0]
        return f"{head}\n{self.body_hash}"


def verify(users: dict[str, LocalUser], method: str, url: str, headers: dict[str, str], body: bytes,
           region: str) -> LocalUser:
    """Returns the signing user, or raises AuthError (403 like API Gateway for bad or missing signatures)."""
    auth = authorize(users, headers, region)
    lower = {k.lower(): v for k, v in headers.items()}
    body_hash = hashlib.sha256(body).hexdigest()
    claimed = lower.get("x-amz-content-sha256")
    if claimed is not None and claimed != body_hash:  # includes UNSIGNED-PAYLOAD: API Gateway hashes the body
        raise AuthError(403, "The provided 'x-amz-content-sha256' header does not match what was computed.")
    request = AWSRequest(method=method, url=url, data=body,
                         headers={h: lower.get(h, "") for h in auth.signed_headers})
    request.context["timestamp"] = auth.amz_date
    signer = _BodyHashSigV4(Credentials(auth.user.access_key, auth.user.secret_key), auth.service, auth.region,
                            body_hash)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, auth.signature):
        raise AuthError(
            403, "The request signature we calculated does not match the signature you provided."
        )
    return auth.user


class ApiGateway:
    """Turns verified HTTP requests into API Gateway REST proxy events for the Chalice app.

    `control` (test hooks) is served at CONTROL_PATH to the ADMIN_USER only; None means the path does not exist."""

    def __init__(
        self, app: Chalice, users: dict[str, LocalUser], *, region: str,
        control: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        invoke: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None,
    ) -> None:
        # `invoke` runs the API function in its own Lambda environment (kaos/local/lambda_runtime.py); the app
        # object here only matches routes. Without it the app is called in this process.
        self.invoke = invoke or app
        # Chalice keeps current_request on the app object; the thread-local subclass makes concurrent
        # requests safe, as `chalice local` does.
        app.__class__ = LocalChalice
        self.app = app
        self.users = users
        self.region = region
        self.routes = RouteMatcher(list(app.routes))
        self.control = control

    def _is_control(self, path: str) -> bool:
        return self.control is not None and path == CONTROL_PATH

    def _route(self, method: str, path: str) -> tuple[Any, Any] | None:
        try:
            route = self.routes.match_route(path)
        except ValueError:
            return None
        entry = self.app.routes[route.route].get(method)
        return None if entry is None else (route, entry)

    def precheck(self, method: str, url: str, headers: dict[str, str]) -> Reply | None:
        """What can be refused before the body is read: unknown routes and failing Authorization headers."""
        path = urlsplit(url).path
        if self._is_control(path):
            try:
                self._admin(authorize(self.users, headers, self.region).user, method, path)
            except AuthError as exc:
                return _error(exc.status, exc.message)
            return None
        found = self._route(method, path)
        if found is None:
            return _error(403, "Missing Authentication Token")
        if found[1].authorizer is not None:
            try:
                authorize(self.users, headers, self.region)
            except AuthError as exc:
                return _error(exc.status, exc.message)
        return None

    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> Reply:
        path = urlsplit(url).path
        if self._is_control(path):
            return self._control(method, url, headers, body)
        found = self._route(method, path)
        if found is None:
            return _error(403, "Missing Authentication Token")
        route, entry = found
        identity: dict[str, str] = {"sourceIp": "127.0.0.1"}
        if entry.authorizer is not None:  # AWS_IAM on the route: API Gateway verifies before invoking
            try:
                user = verify(self.users, method, url, headers, body, self.region)
            except AuthError as exc:
                return _error(exc.status, exc.message)
            identity.update(userArn=user.arn, caller=user.access_key, accessKey=user.access_key,
                            accountId=ACCOUNT_ID, user=user.access_key)
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
        media = next((v for k, v in headers.items() if k.lower() == "content-type"), "").split(";")[0].strip()
        binary = bool(body) and media.lower() in self.app.api.binary_types
        event = {
            "resource": route.route,
            "path": path,
            "httpMethod": method,
            "headers": {k.lower(): v for k, v in headers.items()},
            "multiValueQueryStringParameters": query or None,
            "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
            "pathParameters": route.captured or None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": route.route, "httpMethod": method, "path": path, "stage": "api",
                "accountId": ACCOUNT_ID, "requestId": str(uuid.uuid4()),
                "identity": identity,
            },
            # API Gateway passes a body whose Content-Type is one of the API's binary media types base64-encoded.
            "body": (base64.b64encode(body).decode() if binary else body.decode("utf-8", errors="replace"))
            if body else None,
            "isBase64Encoded": binary,
        }
        context = LambdaContext(function_name="kaos-api", memory_size=512, max_runtime_ms=30_000)
        try:
            response = self.invoke(event, context)
        except Exception:  # the function failed (error, timeout): API Gateway answers 502 to the caller
            return _error(502, "Internal server error")
        payload = response.get("body") or ""
        if response.get("isBase64Encoded") and isinstance(payload, str):
            payload = base64.b64decode(payload)
        out_headers = dict(response.get("headers") or {})
        for name, values in (response.get("multiValueHeaders") or {}).items():
            out_headers[name] = ", ".join(str(v) for v in values)
        # API Gateway's Lambda proxy integration answers application/json when the function sets no type.
        if not any(name.lower() == "content-type" for name in out_headers):
            out_headers["Content-Type"] = "application/json"
        return int(response["statusCode"]), out_headers, payload.encode() if isinstance(payload, str) else payload

    def _admin(self, user: LocalUser, method: str, path: str) -> None:
        if user.name != ADMIN_USER:
            resource = f"arn:aws:execute-api:{self.region}:{ACCOUNT_ID}:local/api/{method}{path}"
            raise AuthError(403, f"User: {user.arn} is not authorized to perform: execute-api:Invoke on "
                                 f"resource: {resource}")

    def _control(self, method: str, url: str, headers: dict[str, str], body: bytes) -> Reply:
        """Test-only fault injection into the running stack (not an API route; absent on AWS)."""
        try:
            user = verify(self.users, method, url, headers, body, self.region)
            self._admin(user, method, urlsplit(url).path)
            assert self.control is not None
            result = self.control(json.loads(body or b"{}"))
        except AuthError as exc:
            return _error(exc.status, exc.message)
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"bad control request: {exc}")
        return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()


def _error(status: int, message: str) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps({"message": message}).encode()


def declared_length(method: str, headers: Message) -> tuple[int, Reply | None]:
    """The body's size from Content-Length, or the refusal: 411 when a body-bearing method (or a chunked body)
    gives none, 400 when it is malformed, 413 over MAX_BODY_BYTES. Nothing is read here."""
    if headers.get("Transfer-Encoding") is not None:
        return 0, _error(411, "Length Required: send the body with a Content-Length (no Transfer-Encoding)")
    values = {v.strip() for v in headers.get_all("Content-Length") or []}
    if not values:
        if method in BODY_METHODS:
            return 0, _error(411, f"Length Required: {method} needs a Content-Length header")
        return 0, None
    if len(values) > 1 or not _LENGTH.match(next(iter(values))):
        return 0, _error(400, "Content-Length: must be one non-negative integer")
    length = int(next(iter(values)))
    if length > MAX_BODY_BYTES:
        return length, _error(413, f"Request Too Long: the body is {length} bytes; the API takes at most "
                                   f"{MAX_BODY_BYTES} bytes")
    return length, None


class PortInUse(Exception):
    """The API port asked for (`kaos local up --port`) is taken: raised before anything else starts."""

    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} on 127.0.0.1 is in use: choose another with --port, or stop what listens "
                         "there")
        self.port = port


def listen(port: int) -> socket.socket:
    """The API's listening socket on 127.0.0.1 (port 0: a free one), taken first thing so a busy port fails the
    start at once rather than after the emulator and the functions started."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does: no TIME_WAIT refusal
    try:
        listening.bind(("127.0.0.1", port))
    except OSError as exc:
        listening.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(port) from None
        raise
    # socketserver's default backlog is 5: a burst of new connections (32 clients submitting at once, each with its
    # own session) overflowed it while the accept loop waited for the GIL, and a client was reset. API Gateway
    # takes them all.
    listening.listen(socket.SOMAXCONN)
    return listening


class GatewayServer:
    """ThreadingHTTPServer serving an ApiGateway on a socket from :func:`listen`; `log` gets one line per
    request (None: nothing)."""

    def __init__(self, gateway: ApiGateway, listening: socket.socket, on_write: Callable[[], object] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        handler = _handler_for(gateway, on_write, log)
        self.server = ThreadingHTTPServer(listening.getsockname(), handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = listening
        self.server.daemon_threads = True
        # A stop waits for the serving loop's next poll: a tenth of a second, not serve_forever's default half.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), name="kaos-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        self.thread.start()
        return self.url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler_for(gateway: ApiGateway, on_write: Callable[[], object] | None = None,
                 log: Callable[[str], None] | None = None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        _status = 0  # the last answer's, for the request log line
        # Headers and body go out in separate writes; with Nagle on, keep-alive clients wait ~40 ms per request
        # for the delayed ACK before the body arrives.
        disable_nagle_algorithm = True

        def _url(self) -> str:
            return f"http://{self.headers.get('Host', '127.0.0.1')}{self.path}"

        def _refusal(self) -> tuple[int, Reply | None]:
            length, refused = declared_length(self.command, self.headers)
            if refused is None:
                refused = gateway.precheck(self.command, self._url(), dict(self.headers.items()))
            return length, refused

        def handle_expect_100(self) -> bool:
            # `Expect: 100-continue`: refuse before the client sends the body at all.
            _, refused = self._refusal()
            if refused is not None:
                self._reply(*refused, close=True)
                return False
            return super().handle_expect_100()

        def _serve(self) -> None:
            started = time.monotonic()
            try:
                self._answer()
            finally:
                if log is not None:
                    path = self.path.split("?", 1)[0]
                    log(f"{self.command} {path} {self._status} {(time.monotonic() - started) * 1000:.0f} ms")

        def _answer(self) -> None:
            self._status = 0
            length, refused = self._refusal()
            if refused is not None:
                self._refuse(refused, length)
                return
            body = self.rfile.read(length) if length else b""
            if len(body) < length:  # the client went away mid-body
                self.close_connection = True
                return
            status, headers, payload = gateway.handle(self.command, self._url(), dict(self.headers.items()), body)
            if on_write is not None and 200 <= status < 300 and self.command not in ("GET", "HEAD", "OPTIONS"):
                try:  # durable before acknowledged: what the write changed is on disk before its 2xx leaves
                    on_write()
                except Exception as exc:
                    status, headers, payload = _error(503, f"the change was made but could not be stored: {exc}")
            self._reply(status, headers, payload)

        def _refuse(self, refused: Reply, length: int) -> None:
            """Answers without reading the body: a small one is discarded to keep the connection, otherwise the
            connection is closed (after a short, bounded drain so the client can read the answer)."""
            chunked = self.headers.get("Transfer-Encoding") is not None
            keep = not chunked and length <= DRAIN_BYTES
            self._reply(*refused, close=not keep)
            if keep:
                if length and self._discard(length) < length:
                    self.close_connection = True
                return
            self.wfile.flush()
            try:
                self.connection.shutdown(socket.SHUT_WR)
            except OSError:
                return
            self._discard(DRAIN_BYTES * 16)

        def _discard(self, limit: int) -> int:
            """Reads and drops at most `limit` bytes, waiting at most DRAIN_SECONDS for each chunk."""
            seen = 0
            self.connection.settimeout(DRAIN_SECONDS)
            try:
                while seen < limit:
                    chunk = self.rfile.read1(min(65536, limit - seen))
                    if not chunk:
                        break
                    seen += len(chunk)
            except OSError:
                self.close_connection = True
            finally:
                self.connection.settimeout(None)
            return seen

        def _reply(self, status: int, headers: dict[str, str], payload: bytes, close: bool = False) -> None:
            self._status = status
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("content-length", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
