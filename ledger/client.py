"""One OpenRouter (OpenAI-compatible) chat call becomes one typed, recordable CallOutcome.

`chat` never raises for HTTP or network trouble: every failure is an outcome whose
`error_class` (classified in ledger.call_outcome) the retry policy and the SQL reports read.
The API key never leaves this module: it is scrubbed from every string that comes back, server
echoes and exception texts included.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from ledger.call_outcome import (ERROR_CLASSES, CallOutcome, as_dict, as_int, as_number, as_str,
                                 choice_content, classify, decode_body, first_choice)
from ledger.errors import KeyRejected, LedgerError, UsageError
from ledger.retry import parse_retry_after
from ledger.transport import ChatConnection, ContentEncodingError, Response, read_body

__all__ = ["ERROR_CLASSES", "CallOutcome", "OpenRouterClient", "classify", "parse_retry_after"]

MESSAGE_MAX_CHARS = 500
REDACTED = "[redacted]"
# A key at least this long cannot occur in a model's text by chance: it is removed wherever it
# appears, even inside other characters. A real OpenRouter key is about 73 characters.
_SUBSTRING_KEY_MIN_CHARS = 16
# Whatever key a server echoes (ours is removed exactly; these catch partial or other keys).
_SECRET_PATTERNS = re.compile(r"(?i)\bbearer\s+\S+|\bsk-or-[A-Za-z0-9_-]+")


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
        try:
            host = urlsplit(base_url).hostname
        except ValueError as exc:  # 'http://[::1' and the like
            raise UsageError(f"the API base URL {base_url!r} is not a valid URL ({exc})") \
                from None
        if not host:
            raise UsageError(f"the API base URL {base_url!r} names no host, e.g. "
                             "https://openrouter.ai/api/v1")
        bad = next((i for i, ch in enumerate(api_key) if not " " <= ch <= "~"), None)
        if bad is not None:
            # Said without the key: a pasted curly quote or line break would otherwise end in
            # a traceback (http.client cannot encode it) or in "cannot reach" the API.
            raise UsageError(f"OPENROUTER_API_KEY holds a character an HTTP header cannot carry "
                             f"(U+{ord(api_key[bad]):04X} at position {bad + 1}: a curly quote or "
                             "a line break pasted with it?); set the key again, plain ASCII")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        # A short placeholder key for a local server ("x", "test", "EMPTY") is also ordinary
        # text: replaced wherever it occurs, "x" turned every '"text"' of every answer into
        # '"te[redacted]t"', and every answer was rejected as unparseable. Such a key is
        # redacted from messages and ids only where it stands alone, and never from the
        # model's text, where "test" or "none" are words of the dialogue, not a secret.
        self._key_pattern = (re.compile(r"(?<![\w-])" + re.escape(api_key) + r"(?![\w-])")
                             if api_key and len(api_key) < _SUBSTRING_KEY_MIN_CHARS else None)
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
        body = decode_body(raw)
        error_class, code, error_type, limit_source = classify(status, body)
        doc = body if isinstance(body, dict) else {}
        usage = as_dict(doc.get("usage")) or {}
        choice = first_choice(doc) or {}
        clean = self._clean
        return CallOutcome(
            http_status=status,
            error_class=error_class,
            error_code=code,
            error_type=clean(error_type),
            limit_source=clean(limit_source),
            retry_after_s=parse_retry_after(headers.get("Retry-After")),
            message=None if error_class == "ok" else self._message(error_class, doc, choice, raw),
            model_served=clean(as_str(doc.get("model"))),
            provider=clean(as_str(doc.get("provider"))),
            generation_id=clean(headers.get("X-Generation-Id") or as_str(doc.get("id"))),
            prompt_tokens=as_int(usage.get("prompt_tokens")),
            completion_tokens=as_int(usage.get("completion_tokens")),
            cost_usd=as_number(usage.get("cost")),
            finish_reason=clean(as_str(choice.get("finish_reason"))),
            content=self._clean_text(choice_content(choice)),
            latency_ms=latency_ms,
        )

    def _message(self, error_class: str, doc: dict, choice: dict, raw: bytes) -> str | None:
        error = as_dict(doc.get("error")) or as_dict(choice.get("error"))
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
        if isinstance(exc, (urllib3.exceptions.NewConnectionError,
                            urllib3.exceptions.ConnectTimeoutError)):
            # Refused, unresolvable or no answer to connect: the request never left (a
            # "timeout" is a request that left and may be billed; see Runner._cost).
            error_class = "connection_error"
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
                f"cannot reach {url} ({_reason(exc)}); check the base URL and network"
            )) from None
        if response.status_code == 404:
            return None
        if response.status_code == 401:
            raise KeyRejected("OpenRouter rejected the API key (HTTP 401): check that it is valid")
        body = decode_body(response.content)
        doc = body if isinstance(body, dict) else {}
        if response.status_code != 200:
            error = as_dict(doc.get("error")) or {}
            detail = as_str(error.get("message")) or _snippet(response.content)
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
            if self._key_pattern is not None:
                return self._key_pattern.sub(REDACTED, text)
            return text.replace(self._api_key, REDACTED)
        return text

    def _clean_text(self, text: str | None) -> str | None:
        """The model's answer: a real key is removed wherever it appears; a placeholder key
        (see __init__) is left, as the words it spells are the dialogue's."""
        return text if self._key_pattern is not None else self._clean(text)

    def _one_line(self, text: str) -> str:
        scrubbed = _SECRET_PATTERNS.sub(REDACTED, self._clean(text) or "")
        return " ".join(scrubbed.split())[:MESSAGE_MAX_CHARS]


def _reason(exc: Exception) -> str:
    """The operating system's words when there are some ('[Errno 111] Connection refused'),
    not the pool, connection and retry objects requests wraps them in."""
    found = re.search(r"\[Errno -?\d+\][^'\")\]]*", str(exc))
    return found.group(0).strip() if found else f"{type(exc).__name__}: {exc}"


def _snippet(raw: bytes, limit: int = 300) -> str:
    return raw[: limit * 4].decode("utf-8", errors="replace")[:limit]


def _environ_ca_bundle() -> str | None:
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
