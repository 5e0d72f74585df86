"""The chat connection's HTTP/1.1 framing, against a loopback server that answers with exactly
the bytes a test gives it (what a real server or proxy may send: chunks, no length, interim 1xx,
folded or repeated headers, compressed bodies, a closed connection)."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import zlib
from collections import deque

import pytest

from ledger.transport import ChatConnection, ContentEncodingError, read_body

HEADERS = {"Authorization": "Bearer k", "Content-Type": "application/json"}


class RawServer:
    """Reads each request whole (head + Content-Length body) and answers with the next queued
    bytes; `None` as an answer closes the connection instead."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answers: deque[tuple[bytes | None, bool]] = deque()
        self.requests: list[bytes] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer(self, raw: bytes | None, *, close_after: bool = False) -> None:
        self.answers.append((raw, close_after))

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buf = rest[length:]
                raw, close_after = self.answers.popleft()
                if raw is None:
                    return
                conn.sendall(raw)
                if close_after:
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def raw_server():
    server = RawServer()
    yield server
    server.close()


def connection(server: RawServer, timeout_s: float = 5.0) -> ChatConnection:
    return ChatConnection(f"http://127.0.0.1:{server.port}/api/v1/chat/completions", HEADERS,
                          True, timeout_s, timeout_s)


def exchange(conn: ChatConnection, body: bytes = b'{"a":1}') -> tuple[int, dict, bytes, bool]:
    response = conn.post(body)
    raw = read_body(response)
    if response.will_close:
        conn.close()
    return response.status, response.headers, raw, response.will_close


def test_request_is_one_well_formed_post(raw_server):
    raw_server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    conn = connection(raw_server)
    assert exchange(conn, b'{"x":"y"}')[2] == b"{}"
    request = raw_server.requests[0]
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/v1/chat/completions HTTP/1.1"
    assert f"Host: 127.0.0.1:{raw_server.port}".encode() in lines
    assert b"Authorization: Bearer k" in lines and b"Content-Length: 9" in lines
    assert body == b'{"x":"y"}'


def test_keep_alive_reuses_one_connection(raw_server):
    for i in range(3):
        raw_server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % i)
    conn = connection(raw_server)
    assert [exchange(conn)[2] for _ in range(3)] == [b"0", b"1", b"2"]
    assert raw_server.connections == 1


def test_chunked_body_with_extensions_and_trailers(raw_server):
    raw_server.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"4;name=x\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n")
    raw_server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    conn = connection(raw_server)
    status, _, raw, will_close = exchange(conn)
    assert (status, raw, will_close) == (200, b'{"a":1}', False)
    assert exchange(conn)[2] == b"ok"  # the trailer was consumed: the next answer parses
    assert raw_server.connections == 1


def test_body_without_length_ends_with_the_connection(raw_server):
    raw_server.answer(b"HTTP/1.1 200 OK\r\n\r\n{\"long\": true}", close_after=True)
    raw_server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    conn = connection(raw_server)
    assert exchange(conn)[2:] == (b'{"long": true}', True)
    assert exchange(conn)[2] == b"ok"
    assert raw_server.connections == 2


def test_interim_answers_are_skipped(raw_server):
    raw_server.answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
                      b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n"
                      b"Content-Length: 2\r\n\r\n{}")
    status, headers, raw, _ = exchange(connection(raw_server))
    assert (status, headers.get("retry-after"), raw) == (429, "3", b"{}")


def test_header_names_are_case_insensitive_first_value_wins_and_folds_join(raw_server):
    raw_server.answer(b"HTTP/1.1 200 OK\r\nx-generation-id: gen-1\r\nX-Generation-Id: gen-2\r\n"
                      b"X-Note: part one\r\n  part two\r\nContent-Length: 0\r\n\r\n")
    _, headers, raw, _ = exchange(connection(raw_server))
    assert headers.get("X-Generation-Id") == "gen-1"
    assert headers["x-note"] == "part one part two"
    assert "X-NOTE" in headers and headers.get("Missing") is None and raw == b""


def test_connection_close_and_http_1_0_are_not_reused(raw_server):
    raw_server.answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",
                      close_after=True)
    raw_server.answer(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb", close_after=True)
    raw_server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc")
    conn = connection(raw_server)
    assert [exchange(conn)[2:] for _ in range(3)] == [(b"a", True), (b"b", True), (b"c", False)]
    assert raw_server.connections == 3


def test_bytes_beyond_the_body_retire_the_connection(raw_server):
    raw_server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naGARBAGE")
    raw_server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
    conn = connection(raw_server)
    assert exchange(conn)[2:] == (b"a", True)
    assert exchange(conn)[2] == b"b"
    assert raw_server.connections == 2


@pytest.mark.parametrize("encoding,compress", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send it
])
def test_compressed_bodies_are_decoded(raw_server, encoding, compress):
    body = compress(b'{"choices": []}')
    raw_server.answer(b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
                      % (encoding.encode(), len(body), body))
    assert exchange(connection(raw_server))[2] == b'{"choices": []}'


@pytest.mark.parametrize("answer,error", [
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",
     ContentEncodingError),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nnot",
     ContentEncodingError),
    (b"SSH-2.0-OpenSSH\r\n\r\n", http.client.BadStatusLine),
    (b"HTTP/1.1 2x0 OK\r\n\r\n", http.client.BadStatusLine),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", http.client.HTTPException),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx", http.client.HTTPException),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", http.client.HTTPException),
])
def test_protocol_faults_raise(raw_server, answer, error):
    raw_server.answer(answer, close_after=True)
    with pytest.raises(error):
        exchange(connection(raw_server))


@pytest.mark.parametrize("answer,error", [
    (None, http.client.RemoteDisconnected),
    (b"HTTP/1.1 200 OK\r\nContent-Le", http.client.IncompleteRead),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", http.client.IncompleteRead),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", http.client.IncompleteRead),
])
def test_a_connection_closed_mid_answer_raises(raw_server, answer, error):
    raw_server.answer(answer, close_after=True)
    conn = connection(raw_server)
    with pytest.raises(error):
        exchange(conn)
    raw_server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert exchange(conn)[2] == b"ok"  # the next call opens a new connection


def test_an_endless_head_is_refused(raw_server):
    raw_server.answer(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 200_000 + b"\r\n\r\n",
                      close_after=True)
    with pytest.raises(http.client.LineTooLong):
        exchange(connection(raw_server))


def test_silence_is_a_timeout(raw_server):
    conn = connection(raw_server, timeout_s=0.3)
    raw_server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")  # never finishes
    with pytest.raises(TimeoutError):
        exchange(conn)


def test_header_values_with_line_breaks_are_refused():
    with pytest.raises(ValueError):
        ChatConnection("http://127.0.0.1:9/x", {"X-Evil": "a\r\nInjected: 1"}, True, 1, 1)
