"""The chat calls' HTTP/1.1 connection: one keep-alive http.client connection per worker thread.

A chat call through urllib3's pool pays for layers around the request (pool checkout, retry and
timeout objects, header dicts, a response wrapper, content decoders) that cost more CPU than the
exchange itself: measured on loopback with one thread, 96 us a call through the pool against
43 us through http.client. Calls without a proxy come here; with a proxy the client keeps
urllib3's route, which tunnels the way requests does (client.py).

TLS is the standard library's: the CA bundle requests would use (REQUESTS_CA_BUNDLE or
CURL_CA_BUNDLE, else certifi's), hostname checking on.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import zlib
from typing import Any, Literal
from urllib.parse import urlsplit

from requests.certs import where as default_ca_bundle


class ContentEncodingError(ValueError):
    """A body in an encoding we cannot decode (or a corrupt one)."""


def tls_context(verify: Literal[True] | str) -> ssl.SSLContext:
    """What requests' `verify` means: True = its bundle (certifi's), a path = that file or
    directory of CA certificates. Verification is never off."""
    path = default_ca_bundle() if verify is True else verify
    if os.path.isdir(path):
        return ssl.create_default_context(capath=path)
    return ssl.create_default_context(cafile=path)


class _ReadTimeout:
    """After connecting (with the connect timeout), waits on the socket use the read timeout."""

    read_timeout: float
    sock: socket.socket | None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        assert self.sock is not None
        self.sock.settimeout(self.read_timeout)


class _HTTP(_ReadTimeout, http.client.HTTPConnection):
    pass


class _HTTPS(_ReadTimeout, http.client.HTTPSConnection):
    pass


class ChatConnection:
    """One thread's connection to the chat endpoint, opened on first use and reopened when the
    server has closed it."""

    def __init__(self, url: str, verify: Literal[True] | str, connect_timeout_s: float,
                 read_timeout_s: float) -> None:
        parts = urlsplit(url)
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._context = tls_context(verify) if self._https else None
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Send the POST; returns the response with its status line and headers read. Raises
        OSError (TimeoutError for timeouts) or http.client.HTTPException; the connection is
        closed then, and the next call opens a new one."""
        conn = self._conn
        if conn is not None and _dropped(conn):
            conn.close()
            conn = None
        try:
            if conn is None:
                conn = self._conn = self._open()
                conn.connect()
            conn.request("POST", self.path, body, headers)
            return conn.getresponse()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _open(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            conn = _HTTPS(self._host, self._port, timeout=self._connect_timeout,
                          context=self._context)
        else:
            conn = _HTTP(self._host, self._port, timeout=self._connect_timeout)
        conn.read_timeout = self._read_timeout  # type: ignore[attr-defined]
        return conn


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection was closed by the server: its socket is readable
    (end of file, or bytes nobody asked for) or gone."""
    sock: Any = conn.sock
    if sock is None:
        return True
    try:
        readable, _w, _x = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def read_body(response: http.client.HTTPResponse) -> bytes:
    """The whole body, decoded from gzip or deflate if the server compressed it anyway (we ask
    for identity)."""
    raw = response.read()
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding in ("identity", ""):
        return raw
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(raw, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            try:
                return zlib.decompress(raw)
            except zlib.error:
                return zlib.decompress(raw, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise ContentEncodingError(f"corrupt {encoding} body: {exc}") from None
    raise ContentEncodingError(f"unsupported Content-Encoding {encoding!r}")
