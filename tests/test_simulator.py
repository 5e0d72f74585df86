"""The local OpenRouter simulator: protocol shapes, faults, billing and concurrency, over real HTTP."""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from ledger.errors import UsageError
from ledger.prompts import PromptInput, render_messages
from ledger.simulator import FAULT_TOKENS, SCRIPT_TOKENS, SimConfig, Simulator
from ledger.simulator_dialogues import (
    FORBIDDEN_TUTOR_WORDS,
    TEMPLATES,
    SentencePair,
    dialogue_turns,
    focus_phrase,
    sentence_pair,
)

KEY = "sk-or-test"
MODEL = "google/gemini-2.0-flash-001"
WRONG = "I no like coffee."
RIGHT = "I don't like coffee."
REPO = Path(__file__).resolve().parent.parent


def chat_body(model: str = MODEL, max_tokens: int | None = 800, wrong: str = WRONG, right: str = RIGHT) -> dict:
    prompt = PromptInput("Spanish", "A2", "a nurse", "food", "negation with no", wrong, right)
    body: dict = {"model": model, "messages": render_messages(prompt)}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post(sim: Simulator, body: dict | None = None, key: str = KEY, timeout: float = 10) -> requests.Response:
    return requests.post(f"{sim.base_url}/chat/completions", json=body or chat_body(), headers=auth(key),
                         timeout=timeout)


def turns_of(response: requests.Response) -> list[dict[str, str]]:
    return json.loads(response.json()["choices"][0]["message"]["content"])


def assert_scaffolds(turns: list[dict[str, str]], wrong: str, right: str) -> None:
    assert 4 <= len(turns) <= 6
    assert turns[0]["role"] == "student" and wrong in turns[0]["text"]
    assert [t["role"] for t in turns[::2]] == ["student"] * len(turns[::2])
    assert [t["role"] for t in turns[1::2]] == ["tutor"] * len(turns[1::2])
    fixed_at = max(i for i, t in enumerate(turns) if t["role"] == "student")
    assert right in turns[fixed_at]["text"]
    guiding = [t["text"] for t in turns[:fixed_at] if t["role"] == "tutor"]
    assert guiding and all("?" in text for text in guiding)
    assert 1 <= sum(text.count("?") for text in guiding) <= 2
    for text in (t["text"] for t in turns if t["role"] == "tutor"):
        assert right.rstrip(".").casefold() not in text.casefold()
        assert not any(word in text.casefold() for word in FORBIDDEN_TUTOR_WORDS)


def billing_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def error_of(response: requests.Response) -> dict:
    error = response.json()["error"]
    assert error["code"] == response.status_code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["metadata"], dict)
    return error


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "billing.jsonl"


@pytest.fixture
def sim(log_path: Path):
    config = SimConfig(api_key=KEY, billing_log=str(log_path), retry_after_s=2, hang_s=0.5)
    with Simulator(config) as simulator:
        yield simulator


def test_happy_path_speaks_openrouter(sim: Simulator) -> None:
    response = post(sim)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("gen-sim-")
    assert response.headers["X-Generation-Id"] == body["id"]
    assert body["model"] == MODEL and body["provider"] == "Google"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["native_finish_reason"] == "STOP"
    usage = body["usage"]
    prompt_chars = sum(len(m["content"]) for m in chat_body()["messages"])
    assert abs(usage["prompt_tokens"] - prompt_chars / 4) <= 2
    assert abs(usage["completion_tokens"] - len(choice["message"]["content"]) / 4) <= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["cost"] > 0
    assert usage["cost"] == pytest.approx(
        usage["prompt_tokens"] * 0.10e-6 + usage["completion_tokens"] * 0.40e-6)
    assert_scaffolds(turns_of(response), WRONG, RIGHT)


def test_root_base_url_works_too(sim: Simulator) -> None:
    root = f"http://127.0.0.1:{sim.port}"
    assert requests.post(f"{root}/chat/completions", json=chat_body(), headers=auth(), timeout=5).status_code == 200
    assert requests.get(f"{root}/models", timeout=5).status_code == 200


def test_every_template_scaffolds_for_varied_errors() -> None:
    pairs = [
        SentencePair(WRONG, RIGHT),
        SentencePair("I can swimming very well.", "I can swim very well."),
        SentencePair("She is nurse.", "She is a nurse."),  # omission: nothing to quote
        SentencePair("I like coffee very much much.", "I like coffee very much."),  # target inside error
        SentencePair('He said "the error is mine" yesterday', 'He said "the fault is mine" yesterday'),
    ]
    for pair in pairs:
        for variant in range(len(TEMPLATES)):
            assert_scaffolds(dialogue_turns(pair, variant), pair.erroneous, pair.correct)
    assert focus_phrase(SentencePair(WRONG, RIGHT)) == '"no"'
    assert focus_phrase(SentencePair("She is nurse.", "She is a nurse.")) == '"is nurse"'


def test_prompt_sentences_are_read_from_the_user_message() -> None:
    prompt = chat_body(wrong='I have 20 years "old"', right="I am 20 years old")["messages"][1]["content"]
    assert sentence_pair(prompt) == SentencePair('I have 20 years "old"', "I am 20 years old")


def test_dialogue_varies_between_requests(sim: Simulator) -> None:
    contents = {post(sim).json()["choices"][0]["message"]["content"] for _ in range(len(TEMPLATES))}
    assert len(contents) >= 3


def test_wrong_or_missing_key_is_401_and_not_billed(sim: Simulator) -> None:
    wrong = post(sim, key="sk-or-other")
    missing = requests.post(f"{sim.base_url}/chat/completions", json=chat_body(), timeout=5)
    for response in (wrong, missing):
        assert response.status_code == 401
        error_of(response)
        assert "X-Generation-Id" not in response.headers
    assert requests.get(f"{sim.base_url}/key", timeout=5).status_code == 401
    stats = sim.stats()
    assert stats["by_status"] == {"401": 2} and stats["delivered"] == 0 and stats["billed_usd"] == 0


def test_no_configured_key_accepts_any_non_empty_key() -> None:
    with Simulator() as sim:
        assert post(sim, key="anything").status_code == 200
        assert requests.post(f"{sim.base_url}/chat/completions", json=chat_body(),
                             headers={"Authorization": "Bearer "}, timeout=5).status_code == 401


REJECTIONS = {
    "400": (400, {}), "401": (401, {}), "500": (500, {"error_type": "server"}),
    "502": (502, {"error_type": "provider_unavailable"}), "503": (503, {"error_type": "provider_overloaded"}),
    "408": (408, {"error_type": "timeout"}), "429": (429, {"error_type": "rate_limit_exceeded"}),
    "403": (403, {"reasons": ["harassment"]}),
    "402_credits": (402, {"limit_source": "openrouter_credits"}),
    "402_key": (402, {"limit_source": "openrouter_key_limit"}),
    "402_inflight": (402, {"limit_source": "openrouter_in_flight_budget"}),
}


@pytest.mark.parametrize("token", sorted(REJECTIONS))
def test_scripted_rejections_have_their_documented_shape(sim: Simulator, token: str) -> None:
    sim.script([token])
    response = post(sim)
    status, metadata = REJECTIONS[token]
    assert response.status_code == status
    error = error_of(response)
    assert metadata.items() <= error["metadata"].items()
    assert "X-Generation-Id" not in response.headers
    if token == "403":
        assert WRONG.startswith(error["metadata"]["flagged_input"][:10])
    has_retry_after = token in ("429", "402_inflight")
    assert ("Retry-After" in response.headers) == has_retry_after
    if has_retry_after:
        assert response.headers["Retry-After"] == "2"
    stats = sim.stats()
    assert stats["delivered"] == 0 and stats["billed_usd"] == 0
    assert post(sim).status_code == 200  # the script is spent: back to normal


def test_retry_after_forms(sim: Simulator) -> None:
    sim.script(["429", "429_date", "429_nohdr", "429_garbage"])
    seconds, date, missing, garbage = (post(sim) for _ in range(4))
    assert {r.status_code for r in (seconds, date, missing, garbage)} == {429}
    assert seconds.headers["Retry-After"] == "2"
    when = email.utils.parsedate_to_datetime(date.headers["Retry-After"])
    assert 0 <= (when - datetime.now(timezone.utc)).total_seconds() <= 3
    assert "Retry-After" not in missing.headers
    assert garbage.headers["Retry-After"] == "soon-ish"
    assert seconds.headers["X-RateLimit-Remaining"] == "0"


def test_configured_retry_after_form_applies_to_random_429s() -> None:
    with Simulator(SimConfig(p_429=1.0, retry_after_form="date", retry_after_s=5)) as sim:
        response = post(sim)
        assert response.status_code == 429
        assert email.utils.parsedate_to_datetime(response.headers["Retry-After"]) > datetime.now(timezone.utc)


def test_generation_faults_inside_http_200(sim: Simulator, log_path: Path) -> None:
    tokens = ["error_in_200", "finish_error", "length", "content_filter", "malformed", "empty",
              "no_usage", "correction", "huge", "binary", "hang", "ok"]
    sim.script(tokens)
    responses = dict(zip(tokens, (post(sim) for _ in tokens)))
    assert all(r.status_code == 200 and r.headers["X-Generation-Id"].startswith("gen-sim-")
               for r in responses.values())

    in_200 = responses["error_in_200"].json()
    assert "choices" not in in_200 and in_200["error"]["code"] == 502
    assert in_200["usage"]["completion_tokens"] == 0 and in_200["usage"]["cost"] > 0

    finish_error = responses["finish_error"].json()["choices"][0]
    assert finish_error["finish_reason"] == "error" and finish_error["error"]["code"] == 502
    assert WRONG in finish_error["message"]["content"] or finish_error["message"]["content"].startswith("[")

    for token, reason in (("length", "length"), ("content_filter", "content_filter")):
        choice = responses[token].json()["choices"][0]
        assert choice["finish_reason"] == reason
        with pytest.raises(ValueError):
            json.loads(choice["message"]["content"])

    with pytest.raises(ValueError):
        responses["malformed"].json()
    assert responses["empty"].json()["choices"][0]["message"]["content"] == ""
    assert responses["empty"].json()["usage"]["completion_tokens"] == 0
    assert "usage" not in responses["no_usage"].json()

    correction = turns_of(responses["correction"])
    assert any("wrong" in t["text"] and RIGHT in t["text"] for t in correction if t["role"] == "tutor")
    assert len(responses["huge"].json()["choices"][0]["message"]["content"]) >= 2_000_000
    binary = responses["binary"].json()["choices"][0]["message"]["content"]
    assert any(0x80 <= ord(ch) <= 0xFF for ch in binary) and "\x00" in binary
    assert_scaffolds(turns_of(responses["hang"]), WRONG, RIGHT)
    assert_scaffolds(turns_of(responses["ok"]), WRONG, RIGHT)

    # Every one of them was generated, so every one is billed and logged.
    lines = billing_lines(log_path)
    assert [line["generation_id"] for line in lines] == [r.headers["X-Generation-Id"] for r in responses.values()]
    assert sim.stats()["delivered"] == len(tokens)
    assert {line["finish_reason"] for line in lines} >= {"error", "length", "content_filter", "stop"}


def test_reset_closes_the_connection_without_an_answer(sim: Simulator) -> None:
    sim.script(["reset"])
    with pytest.raises(requests.ConnectionError):
        post(sim)
    assert post(sim).status_code == 200
    stats = sim.stats()
    assert stats["by_status"] == {"reset": 1, "200": 1} and stats["delivered"] == 1


def test_a_hung_generation_is_billed_even_when_the_client_gave_up(sim: Simulator, log_path: Path) -> None:
    sim.script(["hang"])
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        post(sim, timeout=0.2)
    while sim.stats()["delivered"] == 0 and time.monotonic() - started < 5:
        time.sleep(0.02)
    assert time.monotonic() - started >= 0.5
    assert sim.stats()["delivered"] == 1
    assert len(billing_lines(log_path)) == 1


def test_credit_limit_flips_to_402_and_key_reflects_it() -> None:
    for kind, source in (("credits", "openrouter_credits"), ("key", "openrouter_key_limit")):
        with Simulator(SimConfig(credit_limit_usd=0.0001, limit_kind=kind)) as sim:
            key = requests.get(f"{sim.base_url}/key", headers=auth(), timeout=5).json()["data"]
            assert key["limit"] == 0.0001 and key["limit_remaining"] == 0.0001 and key["usage"] == 0
            statuses = [post(sim).status_code for _ in range(5)]
            assert statuses[0] == 200 and statuses[-1] == 402
            refused = post(sim)
            assert refused.status_code == 402 and "Retry-After" not in refused.headers
            assert error_of(refused)["metadata"]["limit_source"] == source
            billed = sim.stats()["billed_usd"]
            assert billed >= 0.0001
            key = requests.get(f"{sim.base_url}/key", headers=auth(), timeout=5).json()["data"]
            assert key["limit_remaining"] == 0 and key["usage"] == pytest.approx(billed)
            assert key["is_free_tier"] is False and "limit_reset" in key and key["label"]


def test_models_list_prices_per_token_as_strings(sim: Simulator) -> None:
    models = {m["id"]: m for m in requests.get(f"{sim.base_url}/models", timeout=5).json()["data"]}
    assert models[MODEL]["pricing"] == {"prompt": "0.0000001", "completion": "0.0000004",
                                        "request": "0", "image": "0"}
    expected = {"anthropic/claude-3.5-haiku": (0.80, 4.00), "moonshotai/kimi-k2.5": (0.50, 2.00)}
    for model, (price_in, price_out) in expected.items():
        assert float(models[model]["pricing"]["prompt"]) * 1e6 == pytest.approx(price_in)
        assert float(models[model]["pricing"]["completion"]) * 1e6 == pytest.approx(price_out)


def test_generation_endpoint_reports_delivered_generations(sim: Simulator) -> None:
    body = post(sim).json()
    found = requests.get(f"{sim.base_url}/generation", params={"id": body["id"]}, headers=auth(), timeout=5)
    data = found.json()["data"]
    assert data["id"] == body["id"] and data["total_cost"] == body["usage"]["cost"]
    assert data["tokens_prompt"] == body["usage"]["prompt_tokens"]
    assert data["tokens_completion"] == body["usage"]["completion_tokens"]
    assert (data["model"], data["provider_name"], data["finish_reason"], data["cancelled"]) == (
        MODEL, "Google", "stop", False)
    missing = requests.get(f"{sim.base_url}/generation", params={"id": "gen-sim-999"}, headers=auth(), timeout=5)
    assert missing.status_code == 404
    error_of(missing)


def test_stats_and_billing_log_match_what_was_delivered(sim: Simulator, log_path: Path) -> None:
    sim.script(["ok", "429", "length", "error_in_200", "500", "no_usage", "reset"])
    responses = []
    for _ in range(8):
        try:
            responses.append(post(sim))
        except requests.ConnectionError:
            pass
    delivered = [r for r in responses if r.status_code == 200]
    costs = []
    for response in delivered:
        generation_id = response.headers["X-Generation-Id"]
        info = requests.get(f"{sim.base_url}/generation", params={"id": generation_id}, headers=auth(), timeout=5)
        costs.append(info.json()["data"]["total_cost"])
        if "usage" in response.json():
            assert response.json()["usage"]["cost"] == info.json()["data"]["total_cost"]
    lines = billing_lines(log_path)
    stats = sim.stats()
    assert len(lines) == stats["delivered"] == len(delivered) == 5
    assert [line["generation_id"] for line in lines] == [r.headers["X-Generation-Id"] for r in delivered]
    assert sum(line["cost_usd"] for line in lines) == pytest.approx(stats["billed_usd"]) == pytest.approx(sum(costs))
    assert set(lines[0]) == {"generation_id", "model", "prompt_tokens", "completion_tokens", "cost_usd",
                             "status", "finish_reason", "started_at", "finished_at"}
    assert all(line["status"] == 200 and line["model"] == MODEL for line in lines)
    assert lines[0]["started_at"] <= lines[0]["finished_at"]
    assert stats["requests"] == 8
    assert stats["by_status"] == {"200": 5, "429": 1, "500": 1, "reset": 1}
    assert stats["by_model"][MODEL]["requests"] == 8
    assert stats["by_model"][MODEL]["delivered"] == 5
    assert stats["in_flight"] == 0 and stats["script_pending"] == 0


def test_64_concurrent_requests_overlap() -> None:
    with Simulator(SimConfig(latency_ms=200)) as sim:
        start = threading.Barrier(64)

        def one(_: int) -> int:
            start.wait()
            return post(sim).status_code

        began = time.monotonic()
        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(one, range(64)))
        elapsed = time.monotonic() - began
        assert statuses == [200] * 64
        assert 0.2 <= elapsed < 1.0
        stats = sim.stats()
        assert stats["max_in_flight"] >= 48 and stats["in_flight"] == 0


def test_in_flight_seconds_integrate_requests_over_time() -> None:
    """stats()["in_flight_s"] is the request-seconds the server held open: 4 requests at once
    plus 2 one after the other, 150 ms each, hold 6 x 0.15 s; idle time between adds nothing."""
    with Simulator(SimConfig(latency_ms=150)) as sim:
        assert sim.stats()["in_flight_s"] == 0.0
        start = threading.Barrier(4)

        def one(_: int) -> int:
            start.wait()
            return post(sim).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(one, range(4))) == [200] * 4
        after_burst = sim.stats()["in_flight_s"]
        time.sleep(0.3)  # nothing in flight: the integral must not grow
        assert sim.stats()["in_flight_s"] == after_burst
        assert post(sim).status_code == 200 and post(sim).status_code == 200
        total = sim.stats()["in_flight_s"]
    # Lower bounds are exact (each request sleeps its latency); the upper ones leave room for
    # a loaded machine waking the sleepers late.
    assert 4 * 0.15 <= after_burst < 4 * 0.15 + 1.0
    assert 6 * 0.15 <= total < 6 * 0.15 + 1.5


def test_256_keep_alive_connections_each_waiting() -> None:
    with Simulator(SimConfig(latency_ms=500)) as sim:
        payload = json.dumps(chat_body()).encode()
        start = threading.Barrier(256)

        def two_on_one_connection(_: int) -> list[int]:
            connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
            start.wait()
            statuses = []
            for _ in range(2):
                connection.request("POST", "/api/v1/chat/completions", body=payload,
                                   headers={**auth(), "Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
            connection.close()
            return statuses

        began = time.monotonic()
        with ThreadPoolExecutor(256) as pool:
            results = list(pool.map(two_on_one_connection, range(256)))
        assert results == [[200, 200]] * 256
        assert time.monotonic() - began < 4.0  # serially it would take 256 s
        assert sim.stats()["max_in_flight"] >= 200


@pytest.mark.parametrize("p_name", sorted(FAULT_TOKENS))
def test_each_fault_probability_triggers_its_outcome(p_name: str) -> None:
    token = FAULT_TOKENS[p_name]
    expected = {"reset": "reset", "402_inflight": "402"}.get(token, token if token.isdigit() else "200")
    with Simulator(SimConfig(**{p_name: 1.0}, hang_s=0.05)) as sim:
        try:
            post(sim)
        except requests.ConnectionError:
            pass
        assert sim.stats()["by_status"] == {expected: 1}


def test_random_faults_are_seeded_and_replaceable_at_run_time() -> None:
    def outcomes(sim: Simulator) -> list[int]:
        return [post(sim).status_code for _ in range(24)]

    with Simulator(SimConfig(seed=7, p_429=0.4, p_503=0.2)) as first, \
            Simulator(SimConfig(seed=7, p_429=0.4, p_503=0.2)) as second:
        sequence = outcomes(first)
        assert sequence == outcomes(second)
        assert {200, 429, 503} <= set(sequence)
        first.set_faults()  # no probabilities given: all faults off
        assert set(outcomes(first)) == {200}
        reply = requests.post(f"{first.base_url}/_sim/faults", json={"p_500": 1.0}, timeout=5)
        assert reply.json()["config"]["p_500"] == 1.0 and reply.json()["config"]["p_429"] == 0
        assert post(first).status_code == 500
        bad = requests.post(f"{first.base_url}/_sim/faults", json={"seed": 3}, timeout=5)
        assert bad.status_code == 400 and "seed" in error_of(bad)["message"]
        assert requests.post(f"{first.base_url}/_sim/faults", json={"p_500": 2}, timeout=5).status_code == 400
        assert post(first).status_code == 500  # a rejected change leaves the old one in force


def test_script_over_http_is_fifo_and_validated(sim: Simulator) -> None:
    reply = requests.post(f"{sim.base_url}/_sim/script", json={"script": ["503", "ok", "408"]}, timeout=5)
    assert reply.json() == {"pending": 3}
    assert [post(sim).status_code for _ in range(4)] == [503, 200, 408, 200]
    bad = requests.post(f"{sim.base_url}/_sim/script", json={"script": ["ok", "teapot"]}, timeout=5)
    assert bad.status_code == 400 and "teapot" in error_of(bad)["message"]
    assert sim.stats()["script_pending"] == 0
    with pytest.raises(UsageError):
        sim.script(["nope"])
    assert "ok" in SCRIPT_TOKENS and "429_garbage" in SCRIPT_TOKENS


def test_stats_endpoint_over_http(sim: Simulator) -> None:
    post(sim)
    stats = requests.get(f"{sim.base_url}/_sim/stats", timeout=5).json()
    assert stats["requests"] == 1 and stats["delivered"] == 1 and stats["billed_usd"] > 0
    assert stats["max_in_flight"] == 1 and stats["by_status"] == {"200": 1}


def test_bad_requests_and_unknown_paths(sim: Simulator) -> None:
    not_json = requests.post(f"{sim.base_url}/chat/completions", data=b"{nope", headers=auth(), timeout=5)
    assert not_json.status_code == 400
    error_of(not_json)
    no_model = requests.post(f"{sim.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                             headers=auth(), timeout=5)
    assert no_model.status_code == 400 and "model" in error_of(no_model)["message"]
    unknown = requests.get(f"{sim.base_url}/nothing-here", timeout=5)
    assert unknown.status_code == 404
    error_of(unknown)
    assert sim.stats()["billed_usd"] == 0


def test_model_map_bills_the_served_model() -> None:
    config = SimConfig(model_map={"openrouter/auto": "anthropic/claude-3.5-haiku"})
    with Simulator(config) as sim:
        body = post(sim, chat_body(model="openrouter/auto")).json()
        assert body["model"] == "anthropic/claude-3.5-haiku" and body["provider"] == "Anthropic"
        assert body["choices"][0]["native_finish_reason"] == "end_turn"
        usage = body["usage"]
        assert usage["cost"] == pytest.approx(usage["prompt_tokens"] * 0.80e-6 + usage["completion_tokens"] * 4.00e-6)
        unknown = post(sim, chat_body(model="acme/unknown-1")).json()
        assert unknown["provider"] == "Simulated"
        assert unknown["usage"]["cost"] == pytest.approx(
            unknown["usage"]["prompt_tokens"] * 0.50e-6 + unknown["usage"]["completion_tokens"] * 1.50e-6)


def test_max_tokens_caps_completion_and_truncates(sim: Simulator) -> None:
    body = post(sim, chat_body(max_tokens=20)).json()
    assert body["usage"]["completion_tokens"] == 20
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"]) <= 80


def test_lognormal_latency_varies_around_its_median() -> None:
    with Simulator(SimConfig(latency_ms=30, latency_dist="lognormal", latency_sigma=0.8, seed=1)) as sim:
        durations = []
        for _ in range(12):
            began = time.monotonic()
            post(sim)
            durations.append(time.monotonic() - began)
        assert max(durations) > 1.5 * min(durations)
        assert 0.005 < sorted(durations)[6] < 0.2


def test_config_is_validated_and_cli_friendly() -> None:
    with pytest.raises(UsageError, match="p_429"):
        SimConfig(p_429=1.5)
    with pytest.raises(UsageError, match="add up"):
        SimConfig(p_429=0.6, p_500=0.6)
    with pytest.raises(UsageError, match="retry_after_form"):
        SimConfig(retry_after_form="later")
    config = SimConfig.from_kwargs(**{"latency-ms": "200", "credit_limit_usd": "none", "p_429": "0.25",
                                      "seed": "3", "model_map": "a/x=b/y"})
    assert (config.latency_ms, config.credit_limit_usd, config.p_429, config.seed) == (200.0, None, 0.25, 3)
    assert dict(config.model_map) == {"a/x": "b/y"}
    with pytest.raises(UsageError, match="Unknown simulator option"):
        SimConfig.from_kwargs(speed=3)
    with pytest.raises(UsageError, match="number"):
        SimConfig.from_kwargs(latency_ms="fast")


def test_stop_wakes_hung_requests_and_closes_connections() -> None:
    sim = Simulator(SimConfig(hang_s=30))
    sim.start()
    sim.script(["hang"])
    outcome: list[BaseException | int] = []

    def call() -> None:
        try:
            outcome.append(post(sim).status_code)
        except requests.RequestException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    while sim.stats()["in_flight"] == 0:
        time.sleep(0.01)
    began = time.monotonic()
    sim.stop()
    caller.join(5)
    assert time.monotonic() - began < 2
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)
    assert sim.stats()["delivered"] == 0
    with pytest.raises(UsageError):
        sim.start()


def test_runs_as_its_own_process(tmp_path: Path) -> None:
    ready = tmp_path / "ready.txt"
    log = tmp_path / "billing.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "ledger.simulator", "--port", "0", "--ready-file", str(ready),
         "--latency-ms", "0", "--api-key", KEY, "--billing-log", str(log), "--p-429", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        base_url = ready.read_text(encoding="utf-8").strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1")
        response = requests.post(f"{base_url}/chat/completions", json=chat_body(), headers=auth(), timeout=5)
        assert response.status_code == 200
        assert billing_lines(log)[0]["generation_id"] == response.headers["X-Generation-Id"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    bad = subprocess.run([sys.executable, "-m", "ledger.simulator", "--p-429", "7"], cwd=REPO,
                         capture_output=True, text=True, timeout=10, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert bad.returncode == 2 and "p_429" in bad.stderr
