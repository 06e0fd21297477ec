"""The emulator's HTTP server keeps connections alive (kaos/local/moto_server.py): a connection serves request
after request, whatever the previous one left unread, and moto's own server in the same process is unchanged."""
from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import pytest

from kaos.local.moto_server import KeepAliveMotoServer


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    running = KeepAliveMotoServer()
    running.start()
    try:
        yield running.get_host_and_port()
    finally:
        running.stop()


def _answer(connection: http.client.HTTPConnection, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, str | None]:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read(), response.getheader("Connection")


def test_one_connection_serves_requests_whatever_the_last_left_unread(server: tuple[str, int]) -> None:
    connection = http.client.HTTPConnection(*server, timeout=10)
    status, _, closing = _answer(connection, "PUT", "/keep-alive-bucket")
    assert status == 200 and closing != "close"
    first_socket = connection.sock
    # A request whose body moto never reads (a listing), then a chunked upload: the next request on the connection
    # still starts at its own request line.
    status, listing, _ = _answer(connection, "GET", "/keep-alive-bucket?list-type=2", body=b"z" * 100_000)
    assert status == 200 and b"ListBucketResult" in listing
    chunks = iter([b"hello ", b"world"])
    status, _, _ = _answer(connection, "PUT", "/keep-alive-bucket/chunked", body=chunks)  # chunked: no length
    assert status == 200
    status, listing, _ = _answer(connection, "GET", "/keep-alive-bucket?list-type=2")
    assert status == 200 and b"<Key>chunked</Key>" in listing and b"<Size>11</Size>" in listing
    assert connection.sock is first_socket  # never reconnected


def test_a_body_the_application_never_read_is_not_read_as_the_next_request() -> None:
    def ignores_bodies(environ: dict[str, Any], start_response: Any) -> list[bytes]:  # answers its path
        path = str(environ["PATH_INFO"]).encode()
        start_response("200 OK", [("Content-Length", str(len(path)))])
        return [path]

    running = KeepAliveMotoServer(application=ignores_bodies)
    running.start()
    try:
        connection = http.client.HTTPConnection(*running.get_host_and_port(), timeout=10)
        body = b"GET /smuggled HTTP/1.1\r\n\r\n" * 4000  # what a naive server would read as requests
        assert _answer(connection, "PUT", "/first", body=body)[:2] == (200, b"/first")
        assert _answer(connection, "PUT", "/chunked", body=iter([body, body]))[:2] == (200, b"/chunked")
        first_socket = connection.sock
        assert _answer(connection, "GET", "/second")[:2] == (200, b"/second")
        assert connection.sock is first_socket
    finally:
        running.stop()


def test_a_client_that_asks_to_close_is_closed(server: tuple[str, int]) -> None:
    connection = http.client.HTTPConnection(*server, timeout=10)
    status, _, closing = _answer(connection, "GET", "/", headers={"Connection": "close"})
    assert status == 200 and closing == "close"


def test_moto_s_own_server_beside_it_still_closes_every_connection(server: tuple[str, int]) -> None:
    from moto.server import ThreadedMotoServer

    stock = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    stock.start()
    try:
        connection = http.client.HTTPConnection(*stock.get_host_and_port(), timeout=10)
        assert _answer(connection, "GET", "/")[2] == "close"
    finally:
        stock.stop()


def test_a_100_continue_is_sent_before_the_body_arrives(server: tuple[str, int]) -> None:
    """Responses are buffered so a status line, headers and body leave together; the interim 100 Continue must not
    wait in that buffer, since the client holds its body back until it comes (botocore waits 1 s, then sends)."""
    import socket

    with socket.create_connection(server, timeout=10) as client:
        client.sendall(b"PUT /continue-bucket HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200")
        client.sendall(b"PUT /continue-bucket/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                       b"Expect: 100-continue\r\n\r\n")
        assert client.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"  # before the body (a 10 s timeout otherwise)
        client.sendall(b"hello")
        answer = b""
        while b"ETag" not in answer:
            answer += client.recv(65536)
        # werkzeug writes an interim answer of its own too (as it did unbuffered); a client skips every 1xx.
        final = answer.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
        assert final.startswith(b"HTTP/1.1 200") and b"\r\nETag: " in final
