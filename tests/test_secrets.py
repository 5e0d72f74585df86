"""The API key never lands anywhere: not in the ledger file or its -wal/-shm, not in any command's
output, not in exports or exception messages, even when the server echoes the Authorization
header back in its answers. Ledger and export files are owner-only (0600)."""

from __future__ import annotations

import json
import secrets
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from ledger.commands import Commands
from ledger.db import open_ledger
from ledger.export import export_dialogues
from ledger.launch import run
from ledger.runconfig import RunConfig
from ledger.simulator import SimConfig, Simulator


@pytest.fixture
def canary() -> str:
    return "sk-or-v1-CANARY-" + secrets.token_hex(16)


def leaks(canary: str, text: str | bytes) -> bool:
    """The random part alone is enough to count as a leak (a prefix-stripped or partly masked
    key still gives it away)."""
    tail = canary.rsplit("-", 1)[1]
    data = text.encode() if isinstance(text, str) else text
    return tail.encode() in data


def files_leaking(canary: str, directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.is_file() and leaks(canary, p.read_bytes())]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class EchoServer(ThreadingHTTPServer):
    """Answers every chat request with a different failure that echoes the caller's
    Authorization header (body, header, message, content), then a 401 that echoes it too."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.chat_requests = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/v1"


def _echo_replies(auth: str) -> list[tuple[int, dict[str, str], bytes]]:
    def js(doc: Any) -> bytes:
        return json.dumps(doc).encode()

    ok_body = {"id": "gen-echo-1", "model": "google/gemini-2.0-flash-001",
               "choices": [{"finish_reason": "stop", "message": {
                   "role": "assistant", "content": f"Student: I no like coffee.\nTutor: {auth}?"}}],
               "usage": {"prompt_tokens": 10, "completion_tokens": 10, "cost": 0.0001}}
    return [
        (500, {"X-Echo": auth}, js({"error": {"code": 500, "message": f"upstream saw {auth}"}})),
        (503, {"Content-Type": "text/html"}, f"<html>Authorization: {auth}</html>".encode()),
        (200, {}, js({"error": {"code": 502, "message": f"provider refused {auth}",
                                "metadata": {"raw": auth}}})),
        (429, {"Retry-After": "0"}, js({"error": {"code": 429, "message": f"slow down {auth}"}})),
        (200, {"X-Generation-Id": "gen-echo-1"}, js(ok_body)),
        (401, {"WWW-Authenticate": auth}, js({"error": {"code": 401,
                                                         "message": f"No such key: {auth}"}})),
    ]


class _EchoHandler(BaseHTTPRequestHandler):
    server: EchoServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        self._send(200, {}, json.dumps({"data": {"label": auth, "limit": None,
                                                 "limit_remaining": None}}).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization", "")
        with self.server.lock:
            n = self.server.chat_requests
            self.server.chat_requests += 1
        replies = _echo_replies(auth)
        self._send(*replies[min(n, len(replies) - 1)])


@pytest.fixture
def echo():  # type: ignore[no-untyped-def]
    server = EchoServer()
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_server_echoing_the_key_leaks_it_nowhere(tmp_path: Path, canary: str, echo) -> None:
    db = tmp_path / "ledger.db"
    env = {"OPENROUTER_API_KEY": canary, "OPENROUTER_BASE_URL": echo.url, "LEDGER_DB": str(db)}
    outputs = [run_cli("plan", "--target", "2", env=env)]
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"tries_per_model": 5}))
    done = run_cli("run", "--quiet", "--concurrency", "1", "--config", str(config), env=env)
    outputs.append(done)
    assert done.returncode == 5, done.stderr  # the final 401: key rejected
    assert echo.chat_requests == 6            # every echoing reply was received and handled
    for args in (("status",), ("status", "--format", "json"), ("verify",)):
        outputs.append(run_cli(*args, env=env))
    for cmd in ("report", "export"):  # commands that may be present in this version
        if hasattr(Commands, cmd):
            outputs.append(run_cli(cmd, *(("--out", str(tmp_path / "cli-export.jsonl"))
                                          if cmd == "export" else ()), env=env))
    for out in outputs:
        assert not leaks(canary, out.stdout + out.stderr), (out.args, out.stdout, out.stderr)
    rows = open_ledger(str(db), readonly=True)
    try:
        with rows.engine.connect() as conn:
            stored = conn.exec_driver_sql(
                "SELECT COUNT(*) FROM attempt_outcomes").scalar_one()
    finally:
        rows.dispose()
    assert stored == 6                        # the echoed bodies were recorded (scrubbed)
    assert files_leaking(canary, tmp_path) == []
    assert mode(db) == 0o600


def test_library_exceptions_and_results_hold_no_key(tmp_path: Path, canary: str, echo) -> None:
    ledger = open_ledger(str(tmp_path / "ledger.db"))
    try:
        from conftest import make_jobs
        from ledger.store import Store

        store = Store(ledger)
        store.plan_jobs(make_jobs(1))
        store.close()
        try:
            launch = run(ledger, RunConfig(concurrency=1, tries_per_model=5,
                                           backoff_base_s=0.01, backoff_cap_s=0.02),
                         base_url=echo.url, quiet=True, api_key=canary)
            text = f"{launch.summary} {launch.result!r}"
        except Exception as exc:  # noqa: BLE001 - the message is what is under test
            text = f"{exc!r} {exc}"
    finally:
        ledger.dispose()
    assert text and not leaks(canary, text)
    assert files_leaking(canary, tmp_path) == []


def test_a_full_run_and_export_hold_no_key_and_are_owner_only(tmp_path: Path,
                                                              canary: str) -> None:
    sim = Simulator(SimConfig.from_kwargs(api_key=canary, latency_ms=1, seed=5, p_500=0.1,
                                          p_error_in_200=0.05, p_correction=0.1))
    sim.start()
    try:
        db = tmp_path / "ledger.db"
        env = {"OPENROUTER_API_KEY": canary, "OPENROUTER_BASE_URL": sim.base_url,
               "LEDGER_DB": str(db)}
        outs = [run_cli("plan", "--target", "12", env=env),
                run_cli("run", "--concurrency", "2", env=env),
                run_cli("status", env=env), run_cli("verify", env=env)]
        assert outs[1].returncode == 0, outs[1].stderr
        assert sim.stats()["delivered"] >= 12   # the simulator only answers the canary key
    finally:
        sim.stop()
    ledger = open_ledger(str(db), readonly=True)
    try:
        result = export_dialogues(ledger, tmp_path / "dialogues.jsonl")
    finally:
        ledger.dispose()
    assert result.count == 12
    for out in outs:
        assert not leaks(canary, out.stdout + out.stderr)
    assert files_leaking(canary, tmp_path) == []
    for path in (db, result.path, result.manifest_path):
        assert mode(path) == 0o600, path
    for side in (tmp_path / "ledger.db-wal", tmp_path / "ledger.db-shm"):
        if side.exists():  # SQLite gives its side files the database file's mode
            assert mode(side) & 0o077 == 0, side


def test_a_short_placeholder_key_does_not_corrupt_the_answers(tmp_path: Path) -> None:
    """With OPENROUTER_API_KEY=x (a local server's placeholder key) the key was replaced
    wherever it occurred in an answer: every '"text"' key became '"te[redacted]t"', every
    answer was rejected as unparseable and every job failed after paying for all its tries.
    A short key is still redacted where it stands alone."""
    from ledger.client import OpenRouterClient

    sim = Simulator(SimConfig.from_kwargs(api_key="x", latency_ms=1, seed=5))
    sim.start()
    try:
        db = tmp_path / "ledger.db"
        env = {"OPENROUTER_API_KEY": "x", "OPENROUTER_BASE_URL": sim.base_url,
               "LEDGER_DB": str(db)}
        assert run_cli("plan", "--target", "8", env=env).returncode == 0
        done = run_cli("run", "--concurrency", "2", env=env)
        assert done.returncode == 0, done.stderr
    finally:
        sim.stop()
    ledger = open_ledger(str(db), readonly=True)
    try:
        with ledger.engine.connect() as conn:
            rejected = conn.exec_driver_sql(
                "SELECT COUNT(*) FROM verdicts WHERE reasons_json LIKE '%unparseable%'").scalar()
            accepted = conn.exec_driver_sql("SELECT COUNT(*) FROM acceptances").scalar()
            mangled = conn.exec_driver_sql(
                "SELECT COUNT(*) FROM attempt_outcomes WHERE content LIKE '%[redacted]%'"
            ).scalar()
    finally:
        ledger.dispose()
    assert (accepted, rejected, mangled) == (8, 0, 0)
    client = OpenRouterClient("http://127.0.0.1:9/api/v1", "x")
    assert client._clean("Bearer x; the text is 2 x 3") == "Bearer [redacted]; the text is 2 " \
                                                            "[redacted] 3"
    # The model's own words are the dialogue: a placeholder key leaves them as they are.
    assert client._clean_text("Let's do 2 x 3 first, then a test.") == \
        "Let's do 2 x 3 first, then a test."
    long_key = "sk-or-v1-" + "ab" * 32
    real = OpenRouterClient("http://127.0.0.1:9/api/v1", long_key)
    assert real._clean(f"k={long_key}z") == "k=[redacted]z"
    assert real._clean_text(f"the key is {long_key}.") == "the key is [redacted]."
