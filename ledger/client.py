"""One OpenRouter (OpenAI-compatible) chat call becomes one typed, recordable CallOutcome.

`chat` never raises for HTTP or network trouble: every failure is an outcome whose
`error_class` the retry policy (ledger.retry) and the SQL reports read. Classification looks
only at the status, `error.code` and `error.metadata`, never at message text, because messages
change without notice. The API key never leaves this module: it is scrubbed from every string
that comes back, server echoes and exception texts included.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import requests
import urllib3
from requests.adapters import HTTPAdapter

from ledger.errors import KeyRejected, LedgerError, UsageError
from ledger.retry import NEXT_MODEL, RETRYABLE, STOP_RUN, parse_retry_after
from ledger.transport import ChatConnection, ContentEncodingError, Response, read_body

__all__ = ["ERROR_CLASSES", "CallOutcome", "OpenRouterClient", "classify", "parse_retry_after"]

# Stable strings: stored in the ledger and grouped on by the SQL reports.
OK_200 = "ok"
# HTTP 200 but unusable; all may be billed. length and content_filter keep their content so
# the caller can record (and reject) what it paid for.
FAILED_200 = ("length", "content_filter", "error_in_200", "no_choices", "malformed")
_STATUS_CLASSES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 408: "timeout",
                   429: "rate_limited"}
HTTP_ERRORS = (*_STATUS_CLASSES.values(), "credit_in_flight", "credit_exhausted", "server_error",
               "http_error")
# "timeout" also covers a client-side connect or read timeout (no response, or a cut-off body).
ERROR_CLASSES = frozenset((OK_200, *FAILED_200, *HTTP_ERRORS, "connection_error"))
IN_FLIGHT_LIMIT_SOURCE = "openrouter_in_flight_budget"
MESSAGE_MAX_CHARS = 500
REDACTED = "[redacted]"
# Whatever key a server echoes (ours is removed exactly; these catch partial or other keys).
_SECRET_PATTERNS = re.compile(r"(?i)\bbearer\s+\S+|\bsk-or-[A-Za-z0-9_-]+")


@dataclass(frozen=True, kw_only=True)
class CallOutcome:
    """What one chat request produced, ready to be recorded as an attempt's outcome."""

    error_class: str  # one of ERROR_CLASSES; "ok" only for a usable completion
    latency_ms: float
    http_status: int | None = None  # None when no HTTP response arrived
    error_code: int | None = None  # error.code from the body
    error_type: str | None = None  # error.metadata.error_type
    limit_source: str | None = None  # error.metadata.limit_source (402)
    retry_after_s: float | None = None  # parsed and capped Retry-After
    message: str | None = None  # one line, <= MESSAGE_MAX_CHARS, key scrubbed
    model_served: str | None = None
    provider: str | None = None
    generation_id: str | None = None  # X-Generation-Id header, else body `id`
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None  # usage.cost when the server sent it; None means "estimate it"
    finish_reason: str | None = None
    content: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_class == "ok"

    @property
    def transient(self) -> bool:
        """The same call may succeed after a pause."""
        return self.error_class in RETRYABLE

    @property
    def next_model(self) -> bool:
        """This model will not do for this prompt; the next one in the chain may."""
        return self.error_class in NEXT_MODEL

    @property
    def halt_reason(self) -> str | None:
        """"key" or "credit" when the whole run must stop, else None."""
        return STOP_RUN.get(self.error_class)


def classify(status: int, body: object | None
             ) -> tuple[str, int | None, str | None, str | None]:
    """(error_class, error_code, error_type, limit_source) from a status and a decoded body.

    `body` is the decoded JSON, or None when the body was not JSON. An error inside a 200 is
    read from the top-level `error`, else from `choices[0].error` when finish_reason is "error".
    """
    doc = body if isinstance(body, dict) else {}
    error = _dict(doc.get("error"))
    choice = _first_choice(doc)
    if error is None and status == 200 and choice and choice.get("finish_reason") == "error":
        error = _dict(choice.get("error"))
    code, error_type, limit_source = _error_details(error)
    if status == 200:
        error_class = _classify_200(body, choice)
    elif status == 402:
        in_flight = limit_source == IN_FLIGHT_LIMIT_SOURCE
        error_class = "credit_in_flight" if in_flight else "credit_exhausted"
    elif 500 <= status <= 599:
        error_class = "server_error"
    else:
        error_class = _STATUS_CLASSES.get(status, "http_error")
    return error_class, code, error_type, limit_source


def _classify_200(body: object | None, choice: dict | None) -> str:
    if not isinstance(body, dict):
        return "malformed"
    if body.get("error") is not None:
        return "error_in_200"
    if choice is None:
        return "no_choices"
    finish_reason = choice.get("finish_reason")
    if finish_reason == "error":
        return "error_in_200"
    if finish_reason in ("length", "content_filter"):
        return finish_reason
    content = _content(choice)
    if content is None or not content.strip():
        return "no_choices"
    if finish_reason not in ("stop", None):
        # tool_calls or an unnormalised value: not a complete answer to our prompt.
        return "no_choices"
    return "ok"


def _error_details(error: dict | None) -> tuple[int | None, str | None, str | None]:
    if error is None:
        return None, None, None
    metadata = _dict(error.get("metadata")) or {}
    limit_source = _str(metadata.get("limit_source"))
    return _int(error.get("code")), _str(metadata.get("error_type")), limit_source


def _first_choice(body: dict) -> dict | None:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    return _dict(choices[0])


def _content(choice: dict) -> str | None:
    message = _dict(choice.get("message"))
    return _str(message.get("content")) if message is not None else None


def _dict(value: object) -> dict | None:
    return value if isinstance(value, dict) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return int(value) if isinstance(value, str) and value.strip().isdigit() else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _decode(raw: bytes) -> object | None:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # ValueError covers JSONDecodeError and bad UTF-8
        return None


class OpenRouterClient:
    """A thread-safe client for /chat/completions, /key, /models and /generation.

    Each worker thread gets its own requests.Session (see _session), created once and
    reused, so a call pays for no setup beyond the request itself. A thread makes one request
    at a time, so its pool holds one connection; the number of worker threads is what sets the
    number of connections.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 60.0,
                 connect_timeout_s: float = 10.0,
                 app_title: str = "scaffold-ledger",
                 app_url: str = "http://localhost/scaffold-ledger") -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(f"the API base URL must start with http:// or https://: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = (connect_timeout_s, timeout_s)
        self._urllib3_timeout = urllib3.Timeout(connect=connect_timeout_s, read=timeout_s)
        self._chat_url = self.base_url + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "HTTP-Referer": app_url,
            "X-Title": app_title,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        # Proxy and CA settings come from the environment once, not on every request:
        # requests' per-call environment merge (and its ~/.netrc read) costs more CPU than
        # the rest of the call.
        self._proxies = requests.utils.get_environ_proxies(self.base_url)
        self._verify: Literal[True] | str = _environ_ca_bundle() or True
        self._local = threading.local()
        # Every thread's Session and chat connection, for close().
        self._per_thread: list[requests.Session | ChatConnection] = []
        self._per_thread_lock = threading.Lock()
        # Without a proxy, chat calls take the short route (ledger/transport.py); through a
        # proxy they go by urllib3's pool as requests resolves it (see _chat_route).
        self._direct = not self._proxies
        self._direct_headers = {**self._headers, "User-Agent": requests.utils.default_user_agent(),
                                "Accept-Encoding": "identity"}

    def __repr__(self) -> str:
        return f"OpenRouterClient(base_url={self.base_url!r}, timeout={self._timeout!r})"

    def __enter__(self) -> OpenRouterClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- chat -----------------------------------------------------------------------------

    def chat(self, model: str, messages: list[dict], max_tokens: int, *,
             extra: dict | None = None) -> CallOutcome:
        """POST /chat/completions once. Never raises for HTTP or network problems."""
        payload: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
        if extra:
            payload.update(extra)
        data = json.dumps(payload).encode("utf-8")
        started = time.perf_counter()
        if self._direct:
            return self._chat_direct(data, started)
        response: urllib3.BaseHTTPResponse | None = None
        try:
            pool, url, template = self._chat_route()
            headers = dict(template)
            headers["Content-Length"] = str(len(data))
            # preload_content=False so the status and X-Generation-Id survive a body that never
            # finishes; retries=False because every try is a separate recorded attempt.
            response = pool.urlopen("POST", url, body=data, headers=headers, redirect=False,
                                    assert_same_host=False, preload_content=False,
                                    decode_content=False, retries=False,
                                    timeout=self._urllib3_timeout, chunked=False)
            raw = response.read(decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self._local.route = None  # look the pool up again next time
            return self._failure(exc, response, started)
        finally:
            if response is not None:
                response.release_conn()
        latency_ms = (time.perf_counter() - started) * 1000.0
        return self._outcome(response.status, response.headers, raw, latency_ms)

    def _chat_direct(self, data: bytes, started: float) -> CallOutcome:
        """The call on this thread's own connection (no proxy; see transport)."""
        conn = getattr(self._local, "chat", None)
        if conn is None:
            conn = self._local.chat = ChatConnection(self._chat_url, self._direct_headers,
                                                     self._verify, *self._timeout)
            with self._per_thread_lock:
                self._per_thread.append(conn)
        response: Response | None = None
        try:
            response = conn.post(data)
            raw = read_body(response)
        except (OSError, http.client.HTTPException, ContentEncodingError) as exc:
            conn.close()
            return self._failure(exc, response, started)
        if response.will_close:
            conn.close()
        latency_ms = (time.perf_counter() - started) * 1000.0
        return self._outcome(response.status, response.headers, raw, latency_ms)

    def _outcome(self, status: int, headers: Mapping[str, str], raw: bytes,
                 latency_ms: float) -> CallOutcome:
        body = _decode(raw)
        error_class, code, error_type, limit_source = classify(status, body)
        doc = body if isinstance(body, dict) else {}
        usage = _dict(doc.get("usage")) or {}
        choice = _first_choice(doc) or {}
        clean = self._clean
        return CallOutcome(
            http_status=status,
            error_class=error_class,
            error_code=code,
            error_type=clean(error_type),
            limit_source=clean(limit_source),
            retry_after_s=parse_retry_after(headers.get("Retry-After")),
            message=None if error_class == "ok" else self._message(error_class, doc, choice, raw),
            model_served=clean(_str(doc.get("model"))),
            provider=clean(_str(doc.get("provider"))),
            generation_id=clean(headers.get("X-Generation-Id") or _str(doc.get("id"))),
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
            cost_usd=_number(usage.get("cost")),
            finish_reason=clean(_str(choice.get("finish_reason"))),
            content=clean(_content(choice)),
            latency_ms=latency_ms,
        )

    def _message(self, error_class: str, doc: dict, choice: dict, raw: bytes) -> str | None:
        error = _dict(doc.get("error")) or _dict(choice.get("error"))
        if error is not None and isinstance(error.get("message"), str):
            return self._one_line(error["message"])
        if error_class == "malformed":
            return self._one_line("response body is not a JSON object: " + _snippet(raw))
        if error_class == "no_choices":
            return "no usable choice: no choices, empty content or an unexpected finish_reason"
        if error_class in ("length", "content_filter"):
            return None
        return self._one_line(_snippet(raw)) if raw else None

    def _failure(self, exc: Exception,
                 response: urllib3.BaseHTTPResponse | Response | None,
                 started: float) -> CallOutcome:
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            error_class = "connection_error"  # refused or unresolvable, not slow
        elif isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
            error_class = "timeout"
        elif isinstance(exc, (urllib3.exceptions.DecodeError, ContentEncodingError)):
            error_class = "malformed"
        else:
            error_class = "connection_error"
        headers: Mapping[str, str] = response.headers if response is not None else {}
        return CallOutcome(
            error_class=error_class,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            http_status=response.status if response is not None else None,
            retry_after_s=parse_retry_after(headers.get("Retry-After")),
            message=self._one_line(f"{type(exc).__name__}: {exc}"),
            generation_id=self._clean(headers.get("X-Generation-Id")),
        )

    # --- account and catalogue --------------------------------------------------------------

    def key_info(self) -> dict | None:
        """GET /key -> `data` (limit, limit_remaining, usage...); None if the server has no /key."""
        return self._get_data("/key", dict)

    def models(self) -> list[dict]:
        """GET /models -> the `data` list; [] if the server has no /models."""
        models = self._get_data("/models", list) or []
        return [model for model in models if isinstance(model, dict)]

    def generation(self, generation_id: str) -> dict | None:
        """GET /generation?id= -> `data` (total_cost, tokens...); None until it is known (404)."""
        return self._get_data("/generation", dict, {"id": generation_id})

    def _get_data(self, path: str, kind: type, params: dict[str, str] | None = None) -> Any:
        """The `data` member of a GET's JSON body; None on 404; any other failure raises."""
        url = self.base_url + path
        try:
            session = self._session()
            response = session.get(url, params=params, timeout=self._timeout)
        except requests.RequestException as exc:
            # from None: the chained requests exception would print the URL and its internals.
            raise LedgerError(self._one_line(
                f"cannot reach {url} ({type(exc).__name__}: {exc}); check the base URL and network"
            )) from None
        if response.status_code == 404:
            return None
        if response.status_code == 401:
            raise KeyRejected("OpenRouter rejected the API key (HTTP 401): check that it is valid")
        body = _decode(response.content)
        doc = body if isinstance(body, dict) else {}
        if response.status_code != 200:
            error = _dict(doc.get("error")) or {}
            detail = _str(error.get("message")) or _snippet(response.content)
            raise LedgerError(self._one_line(
                f"GET {path} failed with HTTP {response.status_code}: {detail}"
            ))
        data = doc.get("data")
        if not isinstance(data, kind):
            raise LedgerError(self._one_line(
                f"GET {path} returned no `data` {kind.__name__}: {_snippet(response.content, 100)}"
                " (is the base URL an OpenRouter-compatible API?)"
            ))
        return data

    # --- plumbing ---------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        """This thread's Session.

        One Session per thread rather than one shared, measured on loopback: CPU per call is the
        same within noise, but a shared pool keeps only its maxsize idle connections, so whenever
        more workers idle at once (all of them, during a shared cooldown) the rest are closed and
        come back as new TCP + TLS handshakes; and requests does not promise that a Session is
        thread-safe. Per thread, each worker keeps its one warm connection.
        """
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._new_session()
        return session

    def _chat_route(self) -> tuple[urllib3.HTTPConnectionPool, str, dict[str, str]]:
        """(pool, request URL, headers) for chat calls: what requests' adapter would resolve for
        this thread's Session (proxy, TLS verification, merged headers), resolved once.

        Chat requests go straight to that urllib3 pool: on loopback, requests' per-call work
        around it (hooks, cookie jar, Response object, content iterator) took half the client's
        CPU per call (measured: 385 us a call through Session.send, 185 us through the pool).
        GET endpoints keep going through the Session.
        """
        route = getattr(self._local, "route", None)
        if route is None:
            session = self._session()
            prepared = session.prepare_request(requests.Request("POST", self._chat_url))
            adapter = session.get_adapter(self._chat_url)
            assert isinstance(adapter, HTTPAdapter)
            pool = adapter.get_connection_with_tls_context(prepared, self._verify,
                                                           proxies=self._proxies)
            adapter.cert_verify(pool, self._chat_url, self._verify, None)
            url = adapter.request_url(prepared, self._proxies)
            route = self._local.route = (pool, url, dict(prepared.headers))
        return route

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # resolved once in __init__
        session.proxies = dict(self._proxies)
        session.verify = self._verify
        session.headers.update(self._headers)
        # max_retries=0: every try is a separate recorded attempt, so urllib3 must not retry
        # behind our back (a hidden retry could bill twice and record once).
        # One connection per thread's pool: a urllib3 pool fills a queue with all its slots
        # when it is made, so a pool sized to the run's concurrency cost every worker
        # 0.2 ms of start-up at 256 workers (and grew with the square of the concurrency).
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        with self._per_thread_lock:
            self._per_thread.append(session)
        return session

    def close(self) -> None:
        """Close every thread's connections. The client stays usable; later calls reconnect."""
        with self._per_thread_lock:
            opened, self._per_thread = self._per_thread, []
        for resource in opened:
            resource.close()
        self._local = threading.local()

    def _clean(self, text: str | None) -> str | None:
        if text and self._api_key and self._api_key in text:
            return text.replace(self._api_key, REDACTED)
        return text

    def _one_line(self, text: str) -> str:
        scrubbed = _SECRET_PATTERNS.sub(REDACTED, self._clean(text) or "")
        return " ".join(scrubbed.split())[:MESSAGE_MAX_CHARS]


def _snippet(raw: bytes, limit: int = 300) -> str:
    return raw[: limit * 4].decode("utf-8", errors="replace")[:limit]


def _environ_ca_bundle() -> str | None:
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
