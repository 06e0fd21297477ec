"""The emulator's HTTP endpoint: moto's WSGI application on werkzeug's threaded server, with persistent connections.

moto's own ThreadedMotoServer uses werkzeug's development server, which ends every response with
``Connection: close``: each AWS call of every client (Lambda environments, the state machines' tasks, the jobs,
persistence) paid a TCP connect, an accept and a new server thread, and werkzeug then waited for the client's close
to drain what the application left unread. AWS endpoints keep connections alive, and botocore pools them. Here a
connection serves request after request (HTTP/1.1), as AWS's do.

Why werkzeug closes: after a response it drains the socket for up to 10 ms, which on a kept-alive connection would
swallow the client's next request. So this handler drains exactly the request's own body instead (its
Content-Length, or its chunks up to the last one), and werkzeug's socket drain is turned off on its connections'
threads (``_Selectors``); another werkzeug server in the process keeps werkzeug's behaviour.
"""
from __future__ import annotations

import io
import selectors
import threading
from typing import IO, Any, cast

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wsgi import LimitedStream

# An idle kept-alive connection is closed after this long (its server thread ends); botocore and urllib3 open a
# new one on their next call. AWS's own idle timeout is of the same order (tens of seconds).
IDLE_SECONDS = 60.0


class _NoDrain(selectors.DefaultSelector):
    """A selector that never reports the connection readable: werkzeug's post-response drain reads nothing."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return []


_SERVING = threading.local()  # `keep_alive` is set on the threads of KeepAliveHandler's connections


class _Selectors:
    """What werkzeug.serving sees as its `selectors` module, used only by its post-response drain: no drain on a
    kept-alive connection's thread, werkzeug's own elsewhere (another werkzeug server in the process is unchanged)."""

    EVENT_READ = selectors.EVENT_READ

    @staticmethod
    def DefaultSelector() -> selectors.BaseSelector:
        return _NoDrain() if getattr(_SERVING, "keep_alive", False) else selectors.DefaultSelector()


class KeepAliveHandler(MotoRequestHandler):
    """moto's request handler, keeping the connection open between requests."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS
    # werkzeug writes a response's status line, headers and body separately: with Nagle's algorithm on a kept-alive
    # connection each later write waits for the client's delayed ACK (40 ms per request).
    disable_nagle_algorithm = True
    # ...and, unbuffered, each of those writes is its own send (a segment, a wakeup of the client): buffered, werkzeug's
    # flush after each body chunk sends the status line, headers and body of a response together. Streamed bodies
    # still go out chunk by chunk (werkzeug flushes each), and http.server flushes once the response is written.
    wbufsize = io.DEFAULT_BUFFER_SIZE

    def log_error(self, format: str, *args: Any) -> None:
        if not format.startswith("Request timed out"):  # an idle connection's end is not an error
            super().log_error(format, *args)

    def handle_expect_100(self) -> bool:
        answered = super().handle_expect_100()
        self.wfile.flush()  # the interim "100 Continue" goes now: the client holds the body back until it comes
        return answered

    def handle(self) -> None:
        _SERVING.keep_alive = True  # this thread serves this connection only (ThreadingMixIn)
        super().handle()

    def make_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().make_environ()
        if not environ.get("wsgi.input_terminated"):
            # The body is exactly Content-Length bytes (none without one, in HTTP/1.1): bounded here so that what
            # the application leaves unread can be drained without reading into the next request.
            length = str(environ.get("CONTENT_LENGTH") or "0")
            environ["wsgi.input"] = LimitedStream(cast(IO[bytes], self.rfile), int(length) if length.isdigit() else 0)
        return environ

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "connection" and value.lower() == "close" and not self.close_connection:
            return  # werkzeug's unconditional close; the client's own "Connection: close" still ends it
        super().send_header(keyword, value)

    def run_wsgi(self) -> None:
        super().run_wsgi()
        body = getattr(self, "environ", {}).get("wsgi.input")
        try:
            while body is not None and body.read(1 << 20):
                pass  # the rest of the request's body, so the next request starts at its request line
        except Exception:  # a body cut short: the connection cannot be reused
            self.close_connection = True


class KeepAliveMotoServer:
    """ThreadedMotoServer's interface (start, get_host_and_port, stop) over :class:`KeepAliveHandler`."""

    def __init__(self, ip_address: str = "127.0.0.1", port: int = 0, application: Any = None) -> None:
        """`application`: moto's (the default), or another WSGI application (the tests' one that reads nothing)."""
        import werkzeug.serving

        werkzeug.serving.selectors = _Selectors  # type: ignore[assignment,attr-defined]
        app = application if application is not None else DomainDispatcherApplication(create_backend_app)
        self._server: BaseWSGIServer = make_server(ip_address, port, app, threaded=True,
                                                   request_handler=KeepAliveHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-server", daemon=True)

    @property
    def wsgi(self) -> BaseWSGIServer:
        """werkzeug's server, whose `app` is the WSGI application it serves."""
        return self._server

    def start(self) -> None:
        self._thread.start()

    def get_host_and_port(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
