"""The OpenRouter client against a scripted loopback server, and the retry primitives."""

from __future__ import annotations

import random
import socket
import threading
import time
import traceback
from email.utils import formatdate

import pytest
from scripted_server import Reply, ScriptedServer, refused_url

from ledger.client import (
    ERROR_CLASSES,
    MESSAGE_MAX_CHARS,
    CallOutcome,
    OpenRouterClient,
    classify,
    parse_retry_after,
)
from ledger.errors import KeyRejected, LedgerError, UsageError
from ledger.retry import NEXT_MODEL, RETRYABLE, STOP_RUN, Cooldown, RateLimiter, backoff_delay

KEY = "sk-or-v1-0123456789abcdef0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Write a dialogue."}]
USAGE = {"prompt_tokens": 120, "completion_tokens": 340, "total_tokens": 460, "cost": 0.00123}


def completion(content: object = "Tutor: What do you notice?", finish_reason: object = "stop",
               **extra: object) -> dict:
    message = {"role": "assistant", "content": content}
    body = {
        "id": "gen-body-1",
        "model": "google/gemini-2.0-flash-001",
        "provider": "Google",
        "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}],
        "usage": dict(USAGE),
    }
    body.update(extra)
    return body


def api_error(code: int, message: str = "failed", **metadata: object) -> dict:
    error: dict = {"code": code, "message": message}
    if metadata:
        error["metadata"] = metadata
    return {"error": error}


@pytest.fixture
def server():
    with ScriptedServer() as scripted:
        yield scripted


@pytest.fixture
def client(server: ScriptedServer):
    with OpenRouterClient(server.url + "/api/v1/", KEY, timeout_s=2.0, connect_timeout_s=1.0) as c:
        yield c


def chat_once(server: ScriptedServer, client: OpenRouterClient, reply: Reply) -> CallOutcome:
    server.queue(reply)
    outcome = client.chat("google/gemini-2.0-flash-001", MESSAGES, 400)
    assert server.pending() == 0, "the client did not consume exactly one reply"
    return outcome


# --- a usable completion --------------------------------------------------------------------------


def test_ok_outcome_carries_every_field(server, client):
    reply = Reply(200, completion(), {"X-Generation-Id": "gen-header-9"})
    outcome = chat_once(server, client, reply)
    assert outcome.error_class == "ok" and outcome.ok
    assert outcome.http_status == 200
    assert outcome.content == "Tutor: What do you notice?"
    assert outcome.finish_reason == "stop"
    assert outcome.model_served == "google/gemini-2.0-flash-001"
    assert outcome.provider == "Google"
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (120, 340)
    assert outcome.cost_usd == 0.00123
    assert outcome.message is None and outcome.error_code is None
    assert outcome.retry_after_s is None
    assert outcome.latency_ms > 0
    # The header is sent before the body, so it is the one a crash-safe caller may already hold.
    assert outcome.generation_id == "gen-header-9"


def test_generation_id_falls_back_to_body_id(server, client):
    assert chat_once(server, client, Reply(200, completion())).generation_id == "gen-body-1"


def test_missing_usage_leaves_cost_for_the_caller_to_estimate(server, client):
    body = completion()
    del body["usage"]
    outcome = chat_once(server, client, Reply(200, body))
    assert outcome.error_class == "ok"
    assert outcome.cost_usd is None
    assert outcome.prompt_tokens is None and outcome.completion_tokens is None


def test_usage_without_cost_keeps_tokens_but_no_cost(server, client):
    body = completion(usage={"prompt_tokens": 5, "completion_tokens": 7})
    outcome = chat_once(server, client, Reply(200, body))
    assert (outcome.prompt_tokens, outcome.completion_tokens, outcome.cost_usd) == (5, 7, None)


def test_zero_cost_cache_hit_is_an_exact_zero(server, client):
    body = completion(usage={"prompt_tokens": 0, "completion_tokens": 0, "cost": 0})
    outcome = chat_once(server, client, Reply(200, body))
    assert outcome.cost_usd == 0.0


def test_request_carries_key_attribution_and_payload(server, client):
    chat_once(server, client, Reply(200, completion()))
    server.queue(Reply(200, completion()))
    client.chat("m/x", MESSAGES, 99, extra={"temperature": 0.7, "seed": 3})
    first, second = server.received
    assert first.method == "POST" and first.path == "/api/v1/chat/completions"
    assert first.headers["Authorization"] == f"Bearer {KEY}"
    assert first.headers["X-Title"] == "scaffold-ledger"
    assert first.headers["HTTP-Referer"] == "http://localhost/scaffold-ledger"
    assert first.headers["Content-Type"] == "application/json"
    assert first.json() == {
        "model": "google/gemini-2.0-flash-001", "messages": MESSAGES, "max_tokens": 400,
    }
    assert second.json() == {
        "model": "m/x", "messages": MESSAGES, "max_tokens": 99, "temperature": 0.7, "seed": 3,
    }


@pytest.mark.parametrize("suffix", ["", "/"])
def test_base_url_with_or_without_trailing_slash(server, suffix):
    with OpenRouterClient(server.url + "/v1" + suffix, KEY) as c:
        server.queue(Reply(200, completion()))
        assert c.chat("m", MESSAGES, 10).ok
    assert server.received[0].path == "/v1/chat/completions"


def test_base_url_without_scheme_is_a_usage_error():
    with pytest.raises(UsageError, match="http"):
        OpenRouterClient("openrouter.ai/api/v1", KEY)


# --- billed but unusable 200s ---------------------------------------------------------------------


@pytest.mark.parametrize("finish_reason", ["length", "content_filter"])
def test_truncated_or_filtered_keep_content_and_cost(server, client, finish_reason):
    outcome = chat_once(server, client, Reply(200, completion("Tutor: What do", finish_reason)))
    assert outcome.error_class == finish_reason
    assert outcome.content == "Tutor: What do"
    assert outcome.cost_usd == 0.00123 and outcome.completion_tokens == 340
    assert outcome.generation_id == "gen-body-1"
    assert not outcome.transient


def test_error_inside_200_as_top_level_error(server, client):
    body = api_error(502, "Provider returned error", error_type="provider_unavailable")
    usage = {"prompt_tokens": 120, "completion_tokens": 0, "cost": 0.0001}
    body.update(id="gen-err-1", model="google/gemini-2.0-flash-001", usage=usage)
    outcome = chat_once(server, client, Reply(200, body))
    assert outcome.error_class == "error_in_200" and outcome.transient
    assert (outcome.error_code, outcome.error_type) == (502, "provider_unavailable")
    assert outcome.message == "Provider returned error"
    assert outcome.cost_usd == 0.0001 and outcome.prompt_tokens == 120
    assert outcome.generation_id == "gen-err-1"


def test_error_inside_200_as_finish_reason_error(server, client):
    body = completion("Tutor: Wh", "error")
    body["choices"][0]["error"] = api_error(500, "stream broke", error_type="server")["error"]
    outcome = chat_once(server, client, Reply(200, body))
    assert outcome.error_class == "error_in_200"
    assert outcome.error_code == 500 and outcome.error_type == "server"
    assert outcome.message == "stream broke"
    assert outcome.content == "Tutor: Wh" and outcome.cost_usd == 0.00123


@pytest.mark.parametrize(
    "body",
    [
        {"id": "gen-1", "usage": USAGE},
        {"id": "gen-1", "choices": [], "usage": USAGE},
        completion(""),
        completion("   \n"),
        completion(None),
        completion("some text", "tool_calls"),
    ],
    ids=["no-choices-key", "empty-choices", "empty-content", "blank-content", "null-content",
         "tool-calls"],
)
def test_no_usable_choice(server, client, body):
    outcome = chat_once(server, client, Reply(200, body))
    assert outcome.error_class == "no_choices" and outcome.transient
    assert outcome.cost_usd == 0.00123  # billed all the same
    assert outcome.message


@pytest.mark.parametrize(
    "body", [b"<html>Bad gateway</html>", b"", b"[1, 2]", b'"text"', b"\xff\xfe{"]
)
def test_200_whose_body_is_not_a_json_object_is_malformed(server, client, body):
    outcome = chat_once(server, client, Reply(200, body, {"Content-Type": "text/html"}))
    assert outcome.error_class == "malformed" and outcome.http_status == 200
    assert outcome.message.startswith("response body is not a JSON object")
    assert outcome.content is None and outcome.cost_usd is None


# --- HTTP error statuses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "metadata"),
    [
        (400, "bad_request", {}),
        (401, "unauthorized", {}),
        (403, "forbidden", {"reasons": ["violence"], "flagged_input": "x", "provider_name": "P"}),
        (408, "timeout", {}),
        (429, "rate_limited", {"error_type": "rate_limit_exceeded"}),
        (500, "server_error", {"error_type": "server"}),
        (502, "server_error", {"error_type": "provider_unavailable"}),
        (503, "server_error", {"error_type": "provider_overloaded"}),
        (404, "not_found", {}),
        (405, "not_found", {}),
        (418, "http_error", {}),
    ],
)
def test_status_classes(server, client, status, error_class, metadata):
    reply = Reply(status, api_error(status, f"status {status}", **metadata))
    outcome = chat_once(server, client, reply)
    assert outcome.http_status == status
    assert outcome.error_class == error_class
    assert outcome.error_code == status
    assert outcome.error_type == metadata.get("error_type")
    assert outcome.message == f"status {status}"


def test_error_status_with_a_non_json_body_is_classified_by_status(server, client):
    page = b"<html>\n<h1>502 Bad Gateway</h1>\n</html>"
    outcome = chat_once(server, client, Reply(502, page, {"Content-Type": "text/html"}))
    assert outcome.error_class == "server_error" and outcome.error_code is None
    assert outcome.message == "<html> <h1>502 Bad Gateway</h1> </html>"


def test_rate_limit_reports_retry_after(server, client):
    reply = Reply(429, api_error(429, "slow down"), {"Retry-After": "7"})
    outcome = chat_once(server, client, reply)
    assert outcome.error_class == "rate_limited" and outcome.transient
    assert outcome.retry_after_s == 7.0


@pytest.mark.parametrize(
    ("metadata", "error_class"),
    [
        ({"limit_source": "openrouter_in_flight_budget"}, "credit_in_flight"),
        ({"limit_source": "openrouter_key_limit"}, "credit_exhausted"),
        (
            {"limit_source": "openrouter_credits", "reason": "weight_exceeds_budget"},
            "credit_exhausted",
        ),
        ({}, "credit_exhausted"),
    ],
    ids=["in-flight", "key-limit", "credits", "no-metadata"],
)
def test_402_by_limit_source(server, client, metadata, error_class):
    headers = {"Retry-After": "3"} if error_class == "credit_in_flight" else {}
    reply = Reply(402, api_error(402, "Insufficient credits", **metadata), headers)
    outcome = chat_once(server, client, reply)
    assert outcome.error_class == error_class
    assert outcome.limit_source == metadata.get("limit_source")
    if error_class == "credit_in_flight":
        assert outcome.transient and outcome.retry_after_s == 3.0 and outcome.halt_reason is None
    else:
        assert not outcome.transient and outcome.halt_reason == "credit"


def test_402_with_a_non_json_body_stops_for_credit(server, client):
    reply = Reply(402, b"Payment Required", {"Content-Type": "text/plain"})
    outcome = chat_once(server, client, reply)
    assert outcome.error_class == "credit_exhausted" and outcome.halt_reason == "credit"


def test_classification_ignores_message_text():
    in_flight_words = api_error(402, "openrouter_in_flight_budget: too much in flight, retry")
    assert classify(402, in_flight_words)[0] == "credit_exhausted"
    assert classify(429, api_error(429, "Insufficient credits, 402"))[0] == "rate_limited"
    text_about_errors = {"finish_reason": "stop", "message": {"content": "error: rate limited"}}
    assert classify(200, {"choices": [text_about_errors]})[0] == "ok"


def test_classify_returns_code_type_and_limit_source():
    body = api_error(402, "x", limit_source="openrouter_in_flight_budget", error_type="budget")
    assert classify(402, body) == ("credit_in_flight", 402, "budget", "openrouter_in_flight_budget")
    assert classify(503, None) == ("server_error", None, None, None)
    assert classify(200, None) == ("malformed", None, None, None)
    string_code = {"error": {"code": "429", "metadata": {"error_type": "rate_limit_exceeded"}}}
    assert classify(200, string_code) == ("error_in_200", 429, "rate_limit_exceeded", None)


# --- no HTTP response -----------------------------------------------------------------------------


def test_connection_reset_is_a_connection_error(server, client):
    server.reset_connection()
    outcome = client.chat("m", MESSAGES, 10)
    assert outcome.error_class == "connection_error" and outcome.http_status is None
    assert outcome.transient and outcome.message


def test_connection_closed_without_answer_is_a_connection_error(server, client):
    server.close_connection()
    outcome = client.chat("m", MESSAGES, 10)
    assert outcome.error_class == "connection_error" and outcome.http_status is None


def test_refused_port_is_a_connection_error():
    with OpenRouterClient(refused_url(), KEY, connect_timeout_s=1.0) as c:
        outcome = c.chat("m", MESSAGES, 10)
    assert outcome.error_class == "connection_error" and outcome.http_status is None
    assert KEY not in outcome.message


def test_hanging_server_is_a_timeout(server):
    server.hang()
    with OpenRouterClient(server.url, KEY, timeout_s=0.5) as c:
        outcome = c.chat("m", MESSAGES, 10)
    assert outcome.error_class == "timeout" and outcome.http_status is None
    assert 400 <= outcome.latency_ms < 5000


def test_body_cut_off_keeps_status_and_generation_id(server):
    server.queue(Reply(200, completion(), {"X-Generation-Id": "gen-early"}, action="partial"))
    with OpenRouterClient(server.url, KEY, timeout_s=0.5) as c:
        outcome = c.chat("m", MESSAGES, 10)
    assert outcome.error_class == "timeout"
    assert outcome.http_status == 200
    # Saved from the header although the body never completed: the cost can be looked up later.
    assert outcome.generation_id == "gen-early"


def test_client_recovers_after_a_dropped_connection(server, client):
    server.reset_connection()
    server.queue(Reply(200, completion()))
    assert client.chat("m", MESSAGES, 10).error_class == "connection_error"
    assert client.chat("m", MESSAGES, 10).ok


# --- the key never leaks --------------------------------------------------------------------------


def test_key_echoed_by_the_server_is_scrubbed(server, client):
    echoed = f"invalid header\nAuthorization: Bearer {KEY}\nraw={KEY}"
    outcome = chat_once(server, client, Reply(400, api_error(400, echoed)))
    assert server.received[0].headers["Authorization"] == f"Bearer {KEY}"  # it was sent
    assert KEY not in outcome.message and "0123456789abcdef" not in outcome.message
    assert "\n" not in outcome.message and outcome.message.startswith("invalid header")
    assert KEY not in repr(outcome)


def test_key_echoed_in_a_non_json_error_page_is_scrubbed(server, client):
    outcome = chat_once(server, client, Reply(500, f"<pre>headers: Bearer {KEY}</pre>".encode()))
    assert KEY not in outcome.message


def test_key_echoed_in_content_is_scrubbed(server, client):
    outcome = chat_once(server, client, Reply(200, completion(f"my key is {KEY}")))
    assert KEY not in outcome.content and KEY not in repr(outcome)


def test_key_absent_from_repr_and_exceptions(server, client):
    assert KEY not in repr(client) and KEY not in str(client)
    server.queue(Reply(500, api_error(500, f"boom {KEY}")))
    with pytest.raises(LedgerError) as failed:
        client.key_info()
    assert "HTTP 500" in str(failed.value)
    assert KEY not in "".join(traceback.format_exception(failed.value))
    with OpenRouterClient(refused_url(), KEY) as unreachable, pytest.raises(LedgerError) as refused:
        unreachable.models()
    assert "cannot reach" in str(refused.value)
    # The operating system's reason, not the pool and retry objects wrapped around it.
    assert "Connection refused" in str(refused.value) and "Pool" not in str(refused.value)
    assert KEY not in "".join(traceback.format_exception(refused.value))


def test_long_messages_become_one_bounded_line(server, client):
    outcome = chat_once(server, client, Reply(400, api_error(400, "line\n" * 1000)))
    assert len(outcome.message) == MESSAGE_MAX_CHARS and "\n" not in outcome.message


# --- GET endpoints --------------------------------------------------------------------------------


def test_key_info_returns_data(server, client):
    server.reply(200, {"data": {"limit": 10, "limit_remaining": 4.5, "usage": 5.5}})
    assert client.key_info() == {"limit": 10, "limit_remaining": 4.5, "usage": 5.5}
    request = server.received[0]
    assert (request.method, request.path) == ("GET", "/api/v1/key")
    assert request.headers["Authorization"] == f"Bearer {KEY}"


def test_key_info_is_none_without_a_key_endpoint(server, client):
    server.reply(404, {"error": {"code": 404, "message": "Not Found"}})
    assert client.key_info() is None


def test_key_info_with_a_rejected_key_raises_key_rejected(server, client):
    server.reply(401, api_error(401, "User not found"))
    with pytest.raises(KeyRejected):
        client.key_info()


def test_models_returns_the_data_list(server, client):
    models = [
        {"id": "a/b", "pricing": {"prompt": "0.0000001", "completion": "0.0000004"}},
        {"id": "c/d"},
    ]
    server.reply(200, {"data": models})
    assert client.models() == models
    assert server.received[0].path == "/api/v1/models"


def test_models_rejects_a_body_without_data(server, client):
    server.reply(200, {"models": []})
    with pytest.raises(LedgerError, match="data"):
        client.models()


def test_generation_lookup_and_not_yet_available(server, client):
    server.reply(404, api_error(404, "Generation not found"))
    stats = {"id": "gen-1", "total_cost": 0.0021, "provider_name": "Google"}
    server.reply(200, {"data": stats})
    assert client.generation("gen-1") is None
    assert client.generation("gen-1") == stats
    assert server.received[1].path == "/api/v1/generation?id=gen-1"


# --- threads --------------------------------------------------------------------------------------


def test_many_threads_share_one_client_and_reuse_connections():
    with ScriptedServer(default=Reply(200, completion())) as server, \
            OpenRouterClient(server.url, KEY) as client:
        outcomes: list[CallOutcome] = []
        lock = threading.Lock()

        def work() -> None:
            for _ in range(5):
                outcome = client.chat("m", MESSAGES, 10)
                with lock:
                    outcomes.append(outcome)

        threads = [threading.Thread(target=work) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ports = {request.client_port for request in server.received}
    assert len(outcomes) == 60 and all(o.ok for o in outcomes)
    assert len(ports) <= 12  # one kept-alive connection per thread, not one per call


def test_client_is_usable_after_close(server, client):
    server.queue(Reply(200, completion()), Reply(200, completion()))
    assert client.chat("m", MESSAGES, 10).ok
    client.close()
    assert client.chat("m", MESSAGES, 10).ok


# --- policy sets ----------------------------------------------------------------------------------


def test_policy_sets_name_real_classes_and_do_not_overlap():
    assert RETRYABLE | NEXT_MODEL | set(STOP_RUN) <= ERROR_CLASSES
    assert not RETRYABLE & NEXT_MODEL
    assert not RETRYABLE & set(STOP_RUN) and not NEXT_MODEL & set(STOP_RUN)
    assert "ok" not in RETRYABLE


# --- Retry-After ----------------------------------------------------------------------------------


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW - 300, usegmt=True), 0.0),
        ("soon", None),
        ("Mon, 99 Foo 2026", None),
        ("-3", None),
        ("nan", None),
        ("inf", None),
        ("", None),
        (None, None),
        ("99999", 120.0),
        (formatdate(NOW + 86_400, usegmt=True), 120.0),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_cap_is_adjustable():
    assert parse_retry_after("45", cap_s=10.0) == 10.0


# --- backoff --------------------------------------------------------------------------------------


def test_backoff_delay_stays_within_the_exponential_ceiling():
    random.seed(7)
    for try_no in range(1, 12):
        ceiling = min(30.0, 0.5 * 2.0 ** (try_no - 1))
        samples = [backoff_delay(try_no, None) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # full jitter spans the range, not a fixed value


def test_backoff_delay_honours_retry_after_but_caps_it():
    random.seed(7)
    assert all(5.0 <= backoff_delay(1, 5.0) <= 30.0 for _ in range(50))
    assert backoff_delay(1, 500.0) == 30.0
    assert backoff_delay(1, 4.0, cap_s=2.0) == 2.0


def test_backoff_delay_handles_odd_try_numbers_quickly():
    assert 0.0 <= backoff_delay(0, None) <= 0.5
    started = time.perf_counter()
    assert 0.0 <= backoff_delay(10**9, None, cap_s=3.0) <= 3.0
    assert time.perf_counter() - started < 0.1


# --- Cooldown -------------------------------------------------------------------------------------


def test_cooldown_pauses_every_waiting_thread():
    cooldown = Cooldown()
    cooldown.pause_for(0.3)
    waited: list[float] = []

    def worker() -> None:
        waited.append(cooldown.wait())

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(waited) == 2 and all(0.2 <= w < 2.0 for w in waited)
    assert cooldown.remaining() == 0.0


def test_cooldown_is_extended_never_shortened():
    cooldown = Cooldown()
    cooldown.pause_for(1.0)
    cooldown.pause_for(0.05)
    cooldown.pause_for(-5)
    cooldown.pause_for(float("nan"))
    assert cooldown.remaining() > 0.8
    cooldown.pause_for(2.0)
    assert cooldown.remaining() > 1.8


def test_cooldown_extended_while_waiting_keeps_the_waiter_waiting():
    cooldown = Cooldown()
    cooldown.pause_for(0.1)
    waited: list[float] = []
    waiter = threading.Thread(target=lambda: waited.append(cooldown.wait()))
    waiter.start()
    time.sleep(0.05)
    cooldown.pause_for(0.3)
    waiter.join()
    assert waited[0] >= 0.25


def test_cooldown_wait_stops_early_on_stop_event():
    cooldown = Cooldown()
    cooldown.pause_for(30.0)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert cooldown.wait(stop) < 5.0
    assert cooldown.remaining() > 20.0


def test_cooldown_without_pause_does_not_wait():
    assert Cooldown().wait() < 0.05


# --- RateLimiter ----------------------------------------------------------------------------------


def test_rate_limiter_spaces_slots_across_threads():
    limiter = RateLimiter(rpm=600)  # one slot every 0.1 s
    granted: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        limiter.acquire()
        with lock:
            granted.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    granted.sort()
    gaps = [b - a for a, b in zip(granted, granted[1:])]
    assert len(granted) == 5
    assert all(gap > 0.05 for gap in gaps)
    assert granted[-1] - granted[0] >= 0.35


def test_rate_limiter_without_rpm_never_waits():
    limiter = RateLimiter(None)
    started = time.perf_counter()
    for _ in range(1000):
        limiter.acquire()
    assert time.perf_counter() - started < 0.5


def test_rate_limiter_acquire_stops_early_on_stop_event():
    limiter = RateLimiter(rpm=1)  # the second slot is 60 s away
    limiter.acquire()
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.perf_counter()
    limiter.acquire(stop)
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize("rpm", [0, -1, float("nan")])
def test_rate_limiter_rejects_non_positive_rpm(rpm):
    with pytest.raises(UsageError, match="rpm"):
        RateLimiter(rpm)


# --- TLS: chat calls on the client's own connection check certificates as requests would ------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throwaway CA and a server certificate it signed for the name "localhost" only."""
    import subprocess

    d = tmp_path_factory.mktemp("tls")
    from pathlib import Path

    files = {name: str(d / name) for name in ("ca.key", "ca.pem", "srv.key", "srv.csr",
                                              "srv.pem", "san.cnf")}
    Path(files["san.cnf"]).write_text("subjectAltName=DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", files["ca.key"],
            "-out", files["ca.pem"], "-days", "2", "-subj", "/CN=scaffold-ledger test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", files["srv.key"], "-out",
            files["srv.csr"], "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", files["srv.csr"], "-CA", files["ca.pem"], "-CAkey",
            files["ca.key"], "-CAcreateserial", "-out", files["srv.pem"], "-days", "2",
            "-extfile", files["san.cnf"])
    return files


def test_chat_over_tls_verifies_the_server_against_the_ca_bundle(tls_files, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_files["ca.pem"])
    with ScriptedServer(tls=(tls_files["srv.pem"], tls_files["srv.key"])) as server:
        with OpenRouterClient(server.url, KEY) as client:
            server.reply(200, completion())
            server.reply(200, completion())
            first = client.chat("m", [{"role": "user", "content": "hi"}], 10)
            second = client.chat("m", [{"role": "user", "content": "hi"}], 10)
            server.reply(200, {"data": {"limit": 5}})
            assert client.key_info() == {"limit": 5}  # the GET route trusts the same bundle
    assert (first.error_class, second.error_class) == ("ok", "ok")
    assert server.received[0].client_port == server.received[1].client_port  # kept alive
    assert server.received[0].headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("case", ["unknown CA", "wrong host name"])
def test_chat_over_tls_refuses_an_untrusted_server(tls_files, monkeypatch, case):
    if case == "wrong host name":  # the certificate names localhost; we dial 127.0.0.1
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_files["ca.pem"])
        host = "127.0.0.1"
    else:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        host = "localhost"
    with ScriptedServer(tls=(tls_files["srv.pem"], tls_files["srv.key"]),
                        tls_host=host) as server:
        server.reply(200, completion())
        with OpenRouterClient(server.url, KEY) as client:
            outcome = client.chat("m", [{"role": "user", "content": "hi"}], 10)
    assert outcome.error_class == "connection_error"
    assert outcome.http_status is None and "CERTIFICATE_VERIFY_FAILED" in (outcome.message or "")
    assert server.received == []  # nothing was sent to a server we could not trust


def test_through_a_proxy_chat_calls_go_to_the_proxy(server, monkeypatch):
    """With a proxy in the environment the call goes by urllib3's route to the proxy, which is
    asked for the API's absolute URL (the API host itself need not resolve from here)."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url)
    api = "http://api.example.invalid:9/api/v1"
    with OpenRouterClient(api, KEY, timeout_s=2.0, connect_timeout_s=1.0) as client:
        outcome = chat_once(server, client, Reply(200, completion()))
    assert outcome.error_class == "ok"
    assert server.received[0].path == api + "/chat/completions"


def test_a_connect_timeout_is_a_connection_error_not_a_timeout():
    """A 'timeout' is a request that left and got no answer: the run counts it at its maximum
    cost, as the provider may bill it. A connect that times out sent nothing, so it must not
    read as one (a blackholed network would otherwise fill the ledger with phantom spend)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    backlog = []
    try:
        for _ in range(4):  # fill the accept queue: the next SYN gets no answer
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            backlog.append(s)
        time.sleep(0.2)
        with OpenRouterClient(f"http://127.0.0.1:{port}", KEY, connect_timeout_s=0.3,
                              timeout_s=5.0) as c:
            outcome = c.chat("m", MESSAGES, 10)
    finally:
        for s in backlog:
            s.close()
        listener.close()
    assert outcome.error_class == "connection_error" and outcome.http_status is None
