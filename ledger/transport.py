"""The chat calls' HTTP/1.1 connection: one keep-alive socket per worker thread, spoken to
directly.

A chat call is one POST to one URL with the same headers every time, and its answer is read
whole. The layers a general client puts around that exchange cost more CPU than the exchange
(urllib3's pool, then http.client: header lines built one by one, head and body sent apart, the
answer's headers parsed by the email package). Here the request head is built once per
connection (only Content-Length changes), the request goes out in one send, and the answer's
head is split by hand: a whole chat call (request, answer, outcome) went from 240 to 145 us of
CPU on loopback, one thread, on a 2-core VM. With a
proxy the client keeps urllib3's route instead, which tunnels the way requests does
(client.py).

What is read follows RFC 9112 for a response to a POST: 1xx interim answers are skipped; the
body is framed by chunked transfer coding, else by Content-Length, else by the end of the
connection; a connection is kept only when the server did not ask to close it and nothing
unread is left on it. Protocol faults raise the standard library's http.client exceptions.

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
from typing import Literal
from urllib.parse import urlsplit

from requests.certs import where as default_ca_bundle

MAX_HEAD_BYTES = 64 * 1024   # status line and headers; a longer head is not an API answer
_RECV_BYTES = 64 * 1024


class ContentEncodingError(ValueError):
    """A body in an encoding we cannot decode (or a corrupt one)."""


def tls_context(verify: Literal[True] | str) -> ssl.SSLContext:
    """What requests' `verify` means: True = its bundle (certifi's), a path = that file or
    directory of CA certificates. Verification is never off."""
    path = default_ca_bundle() if verify is True else verify
    if os.path.isdir(path):
        return ssl.create_default_context(capath=path)
    return ssl.create_default_context(cafile=path)


class Headers(dict[str, str]):
    """A response's headers by lower-cased name; a repeated header keeps its first value."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class Response:
    """A response whose status line and headers are read; `read_body` reads the rest."""

    __slots__ = ("status", "reason", "headers", "will_close", "_conn", "_length", "_chunked")

    def __init__(self, conn: ChatConnection, status: int, reason: str, headers: Headers,
                 will_close: bool, length: int | None, chunked: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.will_close = will_close
        self._conn = conn
        self._length = length      # None: framed by chunks, or by the end of the connection
        self._chunked = chunked

    def read(self) -> bytes:
        """The whole body as sent (still content-coded, if it was)."""
        conn = self._conn
        if self._chunked:
            body = conn.read_chunked()
        elif self._length is not None:
            body = conn.read_exactly(self._length)
        else:
            body = conn.read_to_end()
        if conn.pending():
            self.will_close = True  # bytes nobody asked for: the connection is not reused
        return body


class ChatConnection:
    """One thread's connection to the chat endpoint, opened on first use and reopened when the
    server has closed it."""

    def __init__(self, url: str, headers: dict[str, str], verify: Literal[True] | str,
                 connect_timeout_s: float, read_timeout_s: float) -> None:
        parts = urlsplit(url)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._context = tls_context(verify) if self._https else None
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._sock: socket.socket | None = None
        self._buf = bytearray()  # received and not yet consumed
        self._head = self._request_head(headers)

    def post(self, body: bytes) -> Response:
        """Send the POST; returns the response with its status line and headers read. Raises
        OSError (TimeoutError for timeouts) or http.client.HTTPException; the connection is
        closed then, and the next call opens a new one."""
        if self._sock is not None and self._dropped():
            self.close()
        try:
            if self._sock is None:
                try:
                    self._connect()
                except TimeoutError as exc:
                    # Nothing was sent: not a request that may have been billed (a read
                    # timeout), so not TimeoutError either.
                    raise ConnectionError(f"connecting timed out ({exc})") from exc
            assert self._sock is not None
            self._sock.sendall(b"%s%d\r\n\r\n%s" % (self._head, len(body), body))
            return self._read_head()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buf.clear()
        if sock is not None:
            sock.close()

    # --- connecting and sending -------------------------------------------------------------

    def _connect(self) -> None:
        sock = socket.create_connection((self._host, self._port), self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self._host)
            sock.settimeout(self._read_timeout)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._buf.clear()

    def _request_head(self, headers: dict[str, str]) -> bytes:
        """The request line and every header, ending with Content-Length's name: only its value
        changes from call to call."""
        default_port = 443 if self._https else 80
        host = self._host if ":" not in self._host else f"[{self._host}]"
        if self._port != default_port:
            host = f"{host}:{self._port}"
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {host}"]
        for name, value in headers.items():
            if name.lower() in ("host", "content-length"):
                continue
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"invalid header {name!r}")
            lines.append(f"{name}: {value}")
        lines.append("Content-Length: ")
        return "\r\n".join(lines).encode("latin-1")

    def _dropped(self) -> bool:
        """Whether an idle kept-alive connection was closed by the server: its socket is
        readable (end of file, or bytes nobody asked for) or gone."""
        sock = self._sock
        if sock is None or self._buf:
            return True
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes nobody asked for
        try:
            readable, _w, _x = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    # --- reading ----------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Receive more bytes into the buffer; False at the end of the connection."""
        assert self._sock is not None
        chunk = self._sock.recv(_RECV_BYTES)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def _read_head(self) -> Response:
        while True:
            head = self._take_head()
            status, reason, version, headers = _parse_head(head)
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer; the final one follows
            break
        connection = (headers.get("connection") or "").lower()
        will_close = "close" in connection or (version == "HTTP/1.0"
                                               and "keep-alive" not in connection)
        transfer = (headers.get("transfer-encoding") or "").lower()
        if status in (204, 304):
            return Response(self, status, reason, headers, will_close, 0, False)
        if transfer:
            if transfer.rsplit(",", 1)[-1].strip() != "chunked":
                # Not framed by chunks: the body ends with the connection.
                return Response(self, status, reason, headers, True, None, False)
            return Response(self, status, reason, headers, will_close, None, True)
        length_text = headers.get("content-length")
        if length_text is None:
            return Response(self, status, reason, headers, True, None, False)
        lengths = {part.strip() for part in length_text.split(",")}
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise http.client.HTTPException(f"invalid Content-Length {length_text!r}")
        return Response(self, status, reason, headers, will_close, int(lengths.pop()), False)

    def _take_head(self) -> bytes:
        buf = self._buf
        searched = 0
        while True:
            end = buf.find(b"\r\n\r\n", max(0, searched - 3))
            if end >= 0:
                head = bytes(buf[:end])
                del buf[:end + 4]
                return head
            searched = len(buf)
            if searched > MAX_HEAD_BYTES:
                raise http.client.LineTooLong("response head")
            if not self._fill():
                if buf:
                    raise http.client.IncompleteRead(bytes(buf))
                raise http.client.RemoteDisconnected(
                    "Remote end closed connection without response")

    def read_exactly(self, n: int) -> bytes:
        buf = self._buf
        while len(buf) < n:
            if not self._fill():
                raise http.client.IncompleteRead(bytes(buf), n - len(buf))
        body = bytes(buf[:n])
        del buf[:n]
        return body

    def read_to_end(self) -> bytes:
        while self._fill():
            pass
        body = bytes(self._buf)
        self._buf.clear()
        return body

    def read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self._read_line()
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise http.client.HTTPException(f"invalid chunk size {size_text[:20]!r}") \
                    from None
            if size == 0:
                while self._read_line():
                    pass  # trailer fields, up to the empty line
                return b"".join(parts)
            parts.append(self.read_exactly(size))
            if self.read_exactly(2) != b"\r\n":
                raise http.client.HTTPException("chunk not followed by CRLF")

    def _read_line(self) -> bytes:
        buf = self._buf
        while True:
            end = buf.find(b"\r\n")
            if end >= 0:
                line = bytes(buf[:end])
                del buf[:end + 2]
                return line
            if len(buf) > MAX_HEAD_BYTES:
                raise http.client.LineTooLong("chunk line")
            if not self._fill():
                raise http.client.IncompleteRead(bytes(buf))

    def pending(self) -> bool:
        return bool(self._buf)


def _parse_head(head: bytes) -> tuple[int, str, str, Headers]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
        raise http.client.BadStatusLine(lines[0][:80])
    headers = Headers()
    last = ""  # the header a folded line continues, if it was the first of its name
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if last:  # an obsolete folded continuation
                dict.__setitem__(headers, last,
                                 dict.__getitem__(headers, last) + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        last = ""
        if not sep:
            continue  # not a header line; ignored, as http.client does
        if not dict.__contains__(headers, name):
            dict.__setitem__(headers, name, value.strip())
            last = name
    return int(code), reason.strip(), version, headers


def read_body(response: Response) -> bytes:
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
