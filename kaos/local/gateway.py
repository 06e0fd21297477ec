"""An HTTP front that does what API Gateway with AWS_IAM authorization does, for the embedded stack.

It verifies each request's SigV4 signature with botocore (recomputing it with the local user's secret), builds
the REST API proxy event with `requestContext.identity` filled as API Gateway does, and calls the Chalice app
object, which is the same object the deployed Lambda runs: identity and authorization share one code path.
"""
from __future__ import annotations

import hmac
import json
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from chalice.app import Chalice
from chalice.local import LambdaContext, LocalChalice, RouteMatcher

CONTROL_PATH = "/_local/faults"
# API Gateway rejects signatures more than 5 minutes away from its clock.
CLOCK_SKEW = timedelta(minutes=5)
ACCOUNT_ID = "123456789012"
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<headers>[a-z0-9;-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


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


def verify(users: dict[str, LocalUser], method: str, url: str, headers: dict[str, str], body: bytes) -> LocalUser:
    """Returns the signing user, or raises AuthError (403 like API Gateway for bad or missing signatures)."""
    lower = {k.lower(): v for k, v in headers.items()}
    match = _AUTH.match(lower.get("authorization", ""))
    if match is None:
        raise AuthError(403, "Missing Authentication Token")
    user = users.get(match["key"])
    if user is None:
        raise AuthError(403, "The security token included in the request is invalid.")
    amz_date = lower.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise AuthError(403, "Authorization header requires existence of a 'X-Amz-Date' header.") from None
    if abs(datetime.now(UTC) - signed_at) > CLOCK_SKEW or not amz_date.startswith(match["date"]):
        raise AuthError(403, "Signature expired or not yet valid.")
    signed = match["headers"].split(";")
    request = AWSRequest(method=method, url=url, data=body, headers={h: lower.get(h, "") for h in signed})
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(user.access_key, user.secret_key), match["service"], match["region"])
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise AuthError(
            403, "The request signature we calculated does not match the signature you provided."
        )
    return user


class ApiGateway:
    """Turns verified HTTP requests into API Gateway REST proxy events for the Chalice app."""

    def __init__(
        self, app: Chalice, users: dict[str, LocalUser],
        control: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        # Chalice keeps current_request on the app object; the thread-local subclass makes concurrent
        # requests safe, as `chalice local` does.
        app.__class__ = LocalChalice
        self.app = app
        self.users = users
        self.routes = RouteMatcher(list(app.routes))
        self.control = control

    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        path = urlsplit(url).path
        if path == CONTROL_PATH and self.control is not None:
            return self._control(method, url, headers, body)
        try:
            route = self.routes.match_route(path)
        except ValueError:
            return _error(403, "Missing Authentication Token")
        entry = self.app.routes[route.route].get(method)
        if entry is None:
            return _error(403, "Missing Authentication Token")
        identity: dict[str, str] = {"sourceIp": "127.0.0.1"}
        if entry.authorizer is not None:  # AWS_IAM on the route: API Gateway verifies before invoking
            try:
                user = verify(self.users, method, url, headers, body)
            except AuthError as exc:
                return _error(exc.status, exc.message)
            identity.update(userArn=user.arn, caller=user.access_key, accessKey=user.access_key,
                            accountId=ACCOUNT_ID, user=user.access_key)
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
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
            "body": body.decode("utf-8", errors="replace") if body else None,
            "isBase64Encoded": False,
        }
        context = LambdaContext(function_name="kaos-api", memory_size=512, max_runtime_ms=30_000)
        response = self.app(event, context)
        payload = response.get("body") or ""
        out_headers = dict(response.get("headers") or {})
        for name, values in (response.get("multiValueHeaders") or {}).items():
            out_headers[name] = ", ".join(str(v) for v in values)
        # API Gateway's Lambda proxy integration answers application/json when the function sets no type.
        if not any(name.lower() == "content-type" for name in out_headers):
            out_headers["Content-Type"] = "application/json"
        return int(response["statusCode"]), out_headers, payload.encode() if isinstance(payload, str) else payload


    def _control(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Test-only fault injection into the running stack (not an API route; absent on AWS)."""
        try:
            verify(self.users, method, url, headers, body)
            assert self.control is not None
            result = self.control(json.loads(body or b"{}"))
        except AuthError as exc:
            return _error(exc.status, exc.message)
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"bad control request: {exc}")
        return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()


def _error(status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps({"message": message}).encode()


class GatewayServer:
    """ThreadingHTTPServer on 127.0.0.1 serving an ApiGateway."""

    def __init__(self, gateway: ApiGateway, port: int = 0) -> None:
        handler = _handler_for(gateway)
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="kaos-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        self.thread.start()
        return self.url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler_for(gateway: ApiGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; with Nagle on, keep-alive clients wait ~40 ms per request
        # for the delayed ACK before the body arrives.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            host = self.headers.get("Host", "127.0.0.1")
            status, headers, payload = gateway.handle(
                self.command, f"http://{host}{self.path}", dict(self.headers.items()), body
            )
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("content-length", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
