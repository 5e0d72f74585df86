"""A loopback HTTP server that answers each request with exactly the reply a test queued.

Replies are served first in, first out, whatever the path, so a test states the whole exchange
up front and then asserts on what the client made of it. Besides answering, a reply can drop the
connection (cleanly or with a TCP reset) or hang until the server shuts down, which is how tests
produce connection errors and read timeouts through a real socket.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Action = Literal["reply", "close", "reset", "hang", "partial"]


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `body` may be bytes, str, or anything JSON-serialisable.

    `delay_s` holds the answer back, as a model that is still generating would. The "partial"
    action sends the status, the headers and half the body, then hangs: a response cut off
    mid-body.
    """

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    action: Action = "reply"
    delay_s: float = 0.0

    def encoded_body(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int  # tells connections apart, to see keep-alive reuse

    def json(self) -> Any:
        return json.loads(self.body)


NOTHING_QUEUED = Reply(500, {"error": {"code": 500, "message": "scripted server: nothing queued"}})


class ScriptedServer:
    """Use as a context manager; `url` is `http://127.0.0.1:<port>`, or with `tls` (a
    (certificate, key) file pair) `https://<tls_host>:<port>`."""

    def __init__(self, default: Reply | None = None, tls: tuple[str, str] | None = None,
                 tls_host: str = "localhost") -> None:
        self.default = default or NOTHING_QUEUED
        self.received: list[Received] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        # Hanging handlers wait on this so shutdown never blocks on them.
        self._released = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        self._tls_host = tls_host if tls else None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        # A short poll interval keeps shutdown (and so every test's teardown) quick.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        if self._tls_host:
            return f"https://{self._tls_host}:{port}"
        return f"http://{host}:{port}"

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def reply(self, status: int = 200, body: Any = b"",
              headers: dict[str, str] | None = None) -> None:
        self.queue(Reply(status, body, dict(headers or {})))

    def close_connection(self) -> None:
        self.queue(Reply(action="close"))

    def reset_connection(self) -> None:
        self.queue(Reply(action="reset"))

    def hang(self) -> None:
        self.queue(Reply(action="hang"))

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def next_reply(self) -> Reply:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def record(self, request: Received) -> None:
        with self._lock:
            self.received.append(request)

    def wait_released(self, timeout_s: float) -> None:
        self._released.wait(timeout_s)

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops SYNs when many client threads connect at once, and each
    # drop costs the client a one-second retransmit.
    request_queue_size = 128


def refused_url() -> str:
    """A loopback URL on a port that was just free, so connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _handler_for(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, the second waits ~40 ms for
        # the client's delayed ACK on every response.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep pytest output clean

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            port = self.client_address[1]
            server.record(Received(self.command, self.path, dict(self.headers.items()), body, port))
            reply = server.next_reply()
            if reply.delay_s:
                server.wait_released(timeout_s=reply.delay_s)
            if reply.action == "hang":
                server.wait_released(timeout_s=30)
                self.close_connection = True
                return
            if reply.action == "reset":
                # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                # Closing here, before socketserver's own shutdown(SHUT_WR), avoids a FIN first.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True
                return
            if reply.action == "close":
                self.close_connection = True
                return
            payload = reply.encoded_body()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if "content-type" not in {name.lower() for name in reply.headers}:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if reply.action == "partial":
                self.wfile.write(payload[: len(payload) // 2])
                server.wait_released(timeout_s=30)
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler
