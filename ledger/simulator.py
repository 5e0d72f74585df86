"""A local OpenRouter-compatible server: the ledger's counterpart in the demo, tests and benchmarks.

It speaks the protocol of shared/reference/openrouter.md (error bodies, the three 402s,
Retry-After in every form, errors inside HTTP 200, usage.cost, X-Generation-Id, /key, /models,
/generation) and injects each documented failure on demand: at random with seeded
probabilities, or in an exact order through a script (POST /_sim/script). Every generation is
billed when it is written, whether or not the client lives to read it, and appended to a billing
log another process can audit: the ledger's own cost records must match it. Rejections decided
before generation (4xx/5xx statuses, a connection reset) are never billed; a hung generation is
billed when it finally completes, as a provider would. Standard library only.

Routes answer under /api/v1 and at the root, so both base URLs work.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import fields, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs

from ledger.errors import UsageError
from ledger.simulator_config import (  # noqa: F401 - SimConfig is this module's public API too
    FAULT_TOKENS, RUNTIME_FIELDS, SCRIPT_TOKENS, SimConfig,
)
from ledger.simulator_wire import (
    GENERATION_KINDS, NOT_FOUND, RESET, UNAUTHORIZED, Generation, Reply,
    bad_request, generation, key_body, models_body, parse_chat_request, rejection,
)

API_PREFIX = "/api/v1"
_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _json_reply(payload: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload).encode())


class _Engine:
    """The simulator's state: outcome choice, latency, billing, stats. Thread-safe, no sockets."""

    def __init__(self, config: SimConfig) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._config = config
        self._faults = config.fault_table()
        self._fault_rng = random.Random(config.seed)
        self._latency_rng = random.Random(config.seed + 1)
        self._script: deque[str] = deque()
        self._counter = itertools.count(1)
        self._generations: dict[str, Generation] = {}
        self._billed_usd = 0.0
        self._requests = self._delivered = self._in_flight = self._max_in_flight = 0
        # Request-seconds held open: the integral of requests in flight over time, so a client
        # can be checked against the server's own view of how busy it kept it.
        self._in_flight_s = 0.0
        self._in_flight_since = time.monotonic()
        self._by_status: Counter[str] = Counter()
        self._by_model: dict[str, dict[str, float]] = {}
        self._models_reply = Reply(200, models_body(config.prices))
        # Line-buffered append: each billed line reaches the OS before the response is sent.
        self._log = _open_billing_log(config.billing_log) if config.billing_log else None

    @property
    def config(self) -> SimConfig:
        return self._config

    @property
    def closed(self) -> bool:
        return self._stopping.is_set()

    def close(self) -> None:
        """Wake every sleeping request and stop billing; safe to call twice."""
        self._stopping.set()
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def set_faults(self, **settings: Any) -> SimConfig:
        """Replace the fault mix: probabilities not given become 0; other settings not given stay."""
        unknown = set(settings) - RUNTIME_FIELDS
        if unknown:
            raise UsageError(f"Cannot change {', '.join(sorted(unknown))} at run time; "
                             f"changeable: {', '.join(sorted(RUNTIME_FIELDS))}.")
        cleared = {name: 0.0 for name in FAULT_TOKENS}
        with self._lock:
            self._config = replace(self._config, **{**cleared, **settings})
            self._faults = self._config.fault_table()
            return self._config

    def script(self, tokens: list[str]) -> int:
        """Queue forced outcomes for the next chat requests (FIFO); returns how many are queued."""
        unknown = [t for t in tokens if t not in SCRIPT_TOKENS]
        if unknown:
            raise UsageError(f"Unknown script tokens {unknown}; known: {', '.join(sorted(SCRIPT_TOKENS))}.")
        with self._lock:
            self._script.extend(tokens)
            return len(self._script)

    def authorized(self, header: str | None) -> bool:
        scheme, _, key = (header or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return False
        return self._config.api_key is None or key == self._config.api_key

    def chat(self, authorization: str | None, body: bytes) -> Reply:
        started = time.time()
        with self._lock:
            self._requests += 1
            self._count_in_flight(+1)
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        reply = RESET
        try:
            reply = self._answer(authorization, body, started)
            return reply
        finally:
            with self._lock:
                self._count_in_flight(-1)
                self._by_status["reset" if reply.reset else str(reply.status)] += 1

    def _count_in_flight(self, change: int) -> None:
        """Under the lock: close the interval at the old count, then apply the change."""
        now = time.monotonic()
        self._in_flight_s += self._in_flight * (now - self._in_flight_since)
        self._in_flight_since = now
        self._in_flight += change

    def _answer(self, authorization: str | None, body: bytes, started: float) -> Reply:
        if not self.authorized(authorization):
            return UNAUTHORIZED
        counter = next(self._counter)
        config = self._config
        request = parse_chat_request(body, config.model_map, counter)
        if isinstance(request, str):
            return bad_request(request)
        self._count_model(request.served_model, "requests", 1)
        kind = self._next_outcome(config)
        if kind == "reset":
            return RESET
        if kind not in GENERATION_KINDS and kind != "hang":
            if kind in ("408", "502"):  # these come back from upstream, after the usual wait
                self._sleep(self._latency_s(config))
            return rejection(kind, request, config.retry_after_form, config.retry_after_s, time.time())
        self._sleep(self._latency_s(config) + (config.hang_s if kind == "hang" else 0.0))
        if self._stopping.is_set():
            return RESET
        reply, record = generation("ok" if kind == "hang" else kind, request, f"gen-sim-{counter}",
                                   config.prices, started, time.time())
        self._bill(record)
        return reply

    def _next_outcome(self, config: SimConfig) -> str:
        with self._lock:
            if config.credit_limit_usd is not None and self._billed_usd >= config.credit_limit_usd:
                return "402_key" if config.limit_kind == "key" else "402_credits"
            if self._script:
                return self._script.popleft()
            if self._faults:
                draw = self._fault_rng.random()
                for cumulative, token in self._faults:
                    if draw < cumulative:
                        return token
            return "ok"

    def _latency_s(self, config: SimConfig) -> float:
        if config.latency_ms <= 0:
            return 0.0
        if config.latency_dist == "fixed":
            return config.latency_ms / 1000
        with self._lock:  # latency_ms is the median of the lognormal
            return self._latency_rng.lognormvariate(math.log(config.latency_ms), config.latency_sigma) / 1000

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _count_model(self, model: str, key: str, amount: float) -> None:
        with self._lock:
            counts = self._by_model.setdefault(model, {"requests": 0, "delivered": 0, "billed_usd": 0.0})
            counts[key] += amount

    def _bill(self, record: Generation) -> None:
        with self._lock:
            self._billed_usd += record.cost_usd
            self._delivered += 1
            self._generations[record.generation_id] = record
            counts = self._by_model[record.model]
            counts["delivered"] += 1
            counts["billed_usd"] += record.cost_usd
            if self._log is not None:
                self._log.write(record.log_line())

    def key(self, authorization: str | None) -> Reply:
        if not self.authorized(authorization):
            return UNAUTHORIZED
        with self._lock:
            return Reply(200, key_body(self._config.credit_limit_usd, self._billed_usd))

    def models(self) -> Reply:
        return self._models_reply

    def generation(self, authorization: str | None, query: str) -> Reply:
        if not self.authorized(authorization):
            return UNAUTHORIZED
        generation_id = (parse_qs(query).get("id") or [""])[0]
        if not generation_id:
            return bad_request("Pass the generation id as ?id=gen-...")
        with self._lock:
            record = self._generations.get(generation_id)
        return NOT_FOUND if record is None else Reply(200, record.api_body())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._count_in_flight(0)
            return {
                "requests": self._requests, "delivered": self._delivered,
                "billed_usd": self._billed_usd, "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight, "in_flight_s": self._in_flight_s,
                "by_status": dict(self._by_status),
                "by_model": {model: dict(counts) for model, counts in self._by_model.items()},
                "script_pending": len(self._script),
            }

    def control(self, body: bytes, action: Callable[[dict[str, Any]], Any]) -> Reply:
        """Run a /_sim control action on a JSON object body; a bad body is a 400."""
        try:
            payload = json.loads(body or b"{}")
            if not isinstance(payload, dict):
                raise UsageError("The body must be a JSON object.")
            return _json_reply(action(payload))
        except (ValueError, TypeError, UsageError) as exc:
            return bad_request(str(exc))


def _route(engine: _Engine, method: str, path: str, query: str, auth: str | None, body: bytes) -> Reply:
    if path.startswith(API_PREFIX):
        path = path[len(API_PREFIX):]
    if method == "POST":
        if path == "/chat/completions":
            return engine.chat(auth, body)
        if path == "/_sim/faults":
            return engine.control(body, lambda p: {"config": _runtime_view(engine.set_faults(**p))})
        if path == "/_sim/script":
            return engine.control(body, lambda p: {"pending": engine.script(list(p.get("script", [])))})
    elif path == "/models":
        return engine.models()
    elif path == "/key":
        return engine.key(auth)
    elif path == "/generation":
        return engine.generation(auth, query)
    elif path == "/_sim/stats":
        return _json_reply(engine.stats())
    return NOT_FOUND


def _runtime_view(config: SimConfig) -> dict[str, Any]:
    return {name: getattr(config, name) if name != "model_map" else dict(config.model_map)
            for name in sorted(RUNTIME_FIELDS)}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections as they do with OpenRouter
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: at hundreds of requests a second an access log would cost more than the answers."""

    def do_GET(self) -> None:
        self._respond("GET", b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        # Always drain the body, even for a 401, or the next request on this connection breaks.
        self._respond("POST", self.rfile.read(length) if length > 0 else b"")

    def _respond(self, method: str, body: bytes) -> None:
        path, _, query = self.path.partition("?")
        reply = _route(self.server.engine, method, path, query, self.headers.get("Authorization"), body)
        if reply.reset:
            # A zero linger turns close() into a TCP reset: the client sees no response at all.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, '')}",
                 "Content-Type: application/json", f"Content-Length: {len(reply.body)}"]
        lines.extend(f"{name}: {value}" for name, value in reply.headers)
        # One write per response: status, headers and body leave in as few packets as possible.
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # hundreds of clients connecting at once must not overflow the backlog

    def __init__(self, port: int, engine: _Engine) -> None:
        self.engine = engine
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a client that hung up or timed out is routine here, not a server fault
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """End idle keep-alive connections so their threads exit with the server."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Simulator:
    """The simulator in a background thread: `with Simulator(SimConfig(...)) as sim: sim.base_url`."""

    def __init__(self, config: SimConfig = SimConfig(), port: int = 0) -> None:
        self._engine = _Engine(config)
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.base_url = ""

    @property
    def config(self) -> SimConfig:
        return self._engine.config

    def start(self) -> str:
        """Listen on 127.0.0.1 and return the base URL (…/api/v1); the root works as well."""
        if self._server is not None:
            return self.base_url
        if self._engine.closed:
            raise UsageError("This simulator was stopped; create a new Simulator to serve again.")
        if not 0 <= self._requested_port <= 65535:
            raise UsageError(f"Cannot listen on port {self._requested_port}: ports are 0-65535 "
                             "(0 for a free one).")
        try:
            self._server = _Server(self._requested_port, self._engine)
        except OSError as exc:
            raise UsageError(f"Cannot listen on 127.0.0.1:{self._requested_port} ({exc.strerror}); "
                             "pass another port, or 0 for a free one.") from None
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}{API_PREFIX}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"simulator-{self.port}", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop listening, wake sleeping requests, close connections and the billing log."""
        self._engine.close()
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join()
        self._server = None

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        return self._engine.stats()

    def set_faults(self, **settings: Any) -> None:
        """Replace the fault mix at run time (probabilities not given become 0)."""
        self._engine.set_faults(**settings)

    def script(self, tokens: list[str]) -> None:
        """Force the outcomes of the next len(tokens) chat requests, in order."""
        self._engine.script(tokens)


def _open_billing_log(path: str):  # type: ignore[no-untyped-def]
    try:
        return open(path, "a", encoding="utf-8", buffering=1)
    except OSError as exc:
        raise UsageError(f"Cannot open the billing log {path} ({exc.strerror or exc}); pass "
                         "--billing-log a file in a writable directory.") from None


def serve_forever(config: SimConfig, port: int = 8099, ready_file: str | None = None) -> None:
    """Serve in the foreground until SIGINT or SIGTERM; write the base URL to ready_file once listening."""
    simulator = Simulator(config, port)
    url = simulator.start()
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        if ready_file:
            # Written whole then renamed, so a waiting process never reads half a URL.
            partial = f"{ready_file}.tmp{os.getpid()}"
            with open(partial, "w", encoding="utf-8") as handle:
                handle.write(url + "\n")
            os.replace(partial, ready_file)
        print(f"OpenRouter simulator listening at {url} (Ctrl-C stops it)", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        simulator.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ledger.simulator",
                                     description="A local OpenRouter-compatible server with injectable faults.")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port (default 8099)")
    parser.add_argument("--ready-file", help="write the base URL here once listening")
    defaults = SimConfig()
    for spec in fields(SimConfig):
        if spec.name == "prices":
            continue
        hint = "asked=served,..." if spec.name == "model_map" else f"default {getattr(defaults, spec.name)!r}"
        parser.add_argument("--" + spec.name.replace("_", "-"), dest=spec.name, default=None, help=hint)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    port, ready_file = args.pop("port"), args.pop("ready_file")
    try:
        config = SimConfig.from_kwargs(**{name: value for name, value in args.items() if value is not None})
        serve_forever(config, port=port, ready_file=ready_file)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
