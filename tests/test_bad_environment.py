"""A hostile environment: a damaged database file, a read-only ledger, a disk that fills up
mid-run, and answers that are huge, binary or not UTF-8. Each gets a clear one-line error (or is
stored safely), nothing is paid for that cannot be recorded, and the ledger verifies after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, planned_ledger, run_cli
from ledger.db import open_ledger
from ledger.simulator import SimConfig, Simulator
from scripted_server import Reply, ScriptedServer

KEY = "sk-or-v1-bad-environment-test-key"
def _require_root() -> None:
    # These tests mount a small tmpfs to make a disk that really fills or a read-only
    # filesystem; CI runs as root. Elsewhere they fail with this line rather than pass unseen.
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and must run as root (as CI does)")


needs_root = pytest.mark.usefixtures("_root")


@pytest.fixture
def _root() -> None:
    _require_root()


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def env_for(db: Path, base_url: str) -> dict[str, str]:
    return {"OPENROUTER_API_KEY": KEY, "OPENROUTER_BASE_URL": base_url, "LEDGER_DB": str(db)}


@pytest.fixture
def sim():  # type: ignore[no-untyped-def]
    server = Simulator(SimConfig.from_kwargs(latency_ms=2, seed=4))
    server.start()
    yield server
    server.stop()


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=False, capture_output=True)


# --- damaged files --------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage_after_header"])
def test_a_damaged_database_file_is_refused_and_left_untouched(tmp_path: Path, sim: Simulator,
                                                               damage: str) -> None:
    good = planned_ledger(tmp_path / "good.db", 40)
    raw = good.read_bytes()
    bad = tmp_path / "bad.db"
    if damage == "truncated":
        bad.write_bytes(raw[: len(raw) // 3])   # a copy cut short: header intact, pages missing
    else:
        bad.write_bytes(raw[:100] + os.urandom(len(raw) - 100))
    before = bad.read_bytes()
    for args in (("status",), ("plan", "--target", "50"), ("run", "--quiet")):
        line = one_line_error(run_cli(*args, env=env_for(bad, sim.base_url)))
        assert str(bad) in line or "database" in line.lower(), line
    assert bad.read_bytes() == before
    assert not (tmp_path / "bad.db-wal").exists() or \
        (tmp_path / "bad.db-wal").stat().st_size == 0
    assert sim.stats()["requests"] == 0


# --- read-only ledger -----------------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_read_only_ledger_is_refused_before_any_paid_request(tmp_path: Path, sim: Simulator,
                                                               what: str) -> None:
    where = tmp_path / "mnt"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where))
    try:
        db = planned_ledger(where / "ledger.db", 10)
        target = db if what == "file" else where
        if what == "file":
            mount("--bind", str(db), str(db))
            mount("-o", "remount,ro,bind", str(db))
        else:
            mount("-o", "remount,ro", str(where))
        try:
            before = db.read_bytes()
            done = run_cli("run", "--quiet", env=env_for(db, sim.base_url))
            line = one_line_error(done)
            assert "read-only" in line or "readonly" in line or str(db) in line, line
            assert sim.stats()["requests"] == 0   # nothing paid for that could not be recorded
            assert db.read_bytes() == before
            if what == "file":  # reading still works (the directory holds the -wal/-shm)
                status = run_cli("status", "--format", "json", env=env_for(db, sim.base_url))
                assert status.returncode == 0, status.stderr
                assert json.loads(status.stdout)["planned"] == 10
        finally:
            umount(target)
    finally:
        umount(where)


# --- disk full --------------------------------------------------------------------------------

def fill(directory: Path) -> Path:
    """Write until the filesystem refuses; returns the filler file."""
    filler = directory / "filler"
    # Unbuffered: a buffered file still holds the chunk that did not fit and raises ENOSPC
    # again when the `with` closes it.
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


@needs_root
def test_disk_full_mid_run_then_resume(tmp_path: Path) -> None:
    where = tmp_path / "small"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where))
    server = Simulator(SimConfig.from_kwargs(latency_ms=20, seed=8))
    server.start()
    try:
        db = planned_ledger(where / "ledger.db", 150)
        env = {k: v for k, v in os.environ.items()
               if k not in ("LEDGER_DB", "OPENROUTER_API_KEY", "OPENROUTER_BASE_URL")}
        env.update(env_for(db, server.base_url))
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", "--quiet",
                                 "--concurrency", "4"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
        deadline = time.monotonic() + 30
        while server.stats()["delivered"] < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        filler = fill(where)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            pytest.fail("the run went on with a full disk")
        assert proc.returncode != 0
        assert "Traceback" not in err
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and ("full" in errors[0].lower() or "space" in errors[0].lower()), err
        filler.unlink()
        check = run_cli("verify", env=env_for(db, server.base_url))
        assert check.returncode == 0, check.stdout + check.stderr
        done = run_cli("run", "--quiet", "--concurrency", "4", env=env_for(db, server.base_url))
        assert done.returncode == 0, done.stderr
        status = json.loads(run_cli("status", "--format", "json",
                                    env=env_for(db, server.base_url)).stdout)
        assert status["accepted"] + status["failed"] == 150 and status["remaining"] == 0
        check = run_cli("verify", env=env_for(db, server.base_url))
        assert check.returncode == 0, check.stdout
    finally:
        server.stop()
        umount(where)


# --- strange answers --------------------------------------------------------------------------

def test_huge_and_binary_answers_are_stored_safely_or_rejected(tmp_path: Path) -> None:
    server = Simulator(SimConfig.from_kwargs(latency_ms=2, seed=9, p_huge=0.25, p_binary=0.25))
    server.start()
    try:
        db = planned_ledger(tmp_path / "ledger.db", 16)
        # Half the answers are garbage: with the default two rejections per model a job could
        # use up its whole chain by bad luck, and which job draws which answer depends on
        # thread timing. Enough rejections per model make every job's acceptance certain.
        cfg = tmp_path / "run.json"
        cfg.write_text(json.dumps({"rejections_per_model": 20}))
        done = run_cli("run", "--quiet", "--concurrency", "2", "--config", str(cfg),
                       env=env_for(db, server.base_url))
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        check = run_cli("verify", env=env_for(db, server.base_url))
        assert check.returncode == 0, check.stdout
    finally:
        server.stop()
    ledger = open_ledger(str(db), readonly=True)
    try:
        with ledger.engine.connect() as conn:
            rows = conn.exec_driver_sql("""
                SELECT LENGTH(o.content), o.content, v.passed, acc.job_id
                FROM attempt_outcomes o JOIN verdicts v ON v.attempt_id = o.attempt_id
                LEFT JOIN acceptances acc ON acc.attempt_id = o.attempt_id""").all()
            accepted = conn.exec_driver_sql("SELECT COUNT(*) FROM acceptances").scalar_one()
    finally:
        ledger.dispose()
    huge = [r for r in rows if r[0] and r[0] > 1_000_000]
    binary = [r for r in rows if r[1] and "\x89PNG" in r[1]]
    assert huge and binary                         # both kinds reached the ledger
    assert not any(r[2] or r[3] for r in binary)   # garbage is never accepted
    # A runaway answer is kept whole (its cost is real), whatever the filter made of it.
    assert all(r[0] > 2_000_000 * 0.9 for r in huge)
    assert accepted == 16


def test_a_non_utf8_body_is_recorded_as_an_error_not_a_crash(tmp_path: Path) -> None:
    db = planned_ledger(tmp_path / "ledger.db", 1)
    raw = b'{"choices": [{"message": {"content": "\xff\xfe\x00bad"}}]}'
    with ScriptedServer(default=Reply(500, b"\xff\xfe not utf-8 \x80")) as server:
        server.queue(Reply(200, {"data": {"limit_remaining": None}}),   # GET /key
                     Reply(200, raw, {"Content-Type": "application/json; charset=utf-8"}),
                     Reply(502, b"\xc3\x28\xa0\xa1", {"Content-Type": "text/plain"}))
        cfg = tmp_path / "run.json"
        cfg.write_text(json.dumps({"models": ["google/gemini-2.0-flash-001"],
                                   "tries_per_model": 2}))
        done = run_cli("run", "--quiet", "--config", str(cfg),
                       env=env_for(db, server.url + "/api/v1"))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr       # the job failed; the run carried on to the end
    ledger = open_ledger(str(db), readonly=True)
    try:
        with ledger.engine.connect() as conn:
            outcomes: list[Any] = conn.exec_driver_sql(
                "SELECT http_status, error_class FROM attempt_outcomes ORDER BY seq").all()
            state = conn.exec_driver_sql("SELECT state FROM job_state").scalar_one()
    finally:
        ledger.dispose()
    assert [o[0] for o in outcomes] == [200, 502]
    assert outcomes[0][1] != "ok" and outcomes[1][1] == "server_error"
    assert state == "failed"


@pytest.mark.parametrize("directory", ["with space", "c# and ?query", "100% done %20"])
def test_a_ledger_path_with_url_characters_names_that_file(tmp_path: Path,
                                                           directory: str) -> None:
    """'#', '?' and '%' mean something in a URL; in --db they are just part of the path. Every
    command reaches the same file, and nothing is created anywhere else."""
    home = tmp_path / directory
    home.mkdir()
    db = str(home / "ledger.db")
    assert run_cli("--db", db, "plan", "--target", "12").returncode == 0
    status = run_cli("--db", db, "status", "--format", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["planned"] == 12
    export = run_cli("--db", db, "export", "--out", str(home / "out.jsonl"))
    assert export.returncode == 0, export.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [directory]
    assert {p.name for p in home.iterdir()} <= {"ledger.db", "ledger.db-wal", "ledger.db-shm",
                                                "out.jsonl", "out.jsonl.manifest.json"}


@needs_root
@pytest.mark.parametrize("command", [["export", "--format", "chatml", "--out"],
                                     ["report", "--html"]])
def test_a_full_disk_under_an_output_file_is_one_line_and_keeps_the_old_file(
        tmp_path: Path, command: list[str]) -> None:
    """The write fails, then closing the file flushes its buffer into the same full disk; the
    line must still say what to do, and the file already there must survive (--force)."""
    made = run_cli("demo", "--dir", str(tmp_path / "demo"), "--quiet", "--jobs", "24")
    assert made.returncode == 0, made.stderr
    db = tmp_path / "demo" / "ledger.db"
    where = tmp_path / "mnt"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where))
    try:
        target = where / "out"
        target.write_bytes(b"the previous file\n")
        fill(where)
        line = one_line_error(run_cli(*command, str(target), "--force", "--db", str(db)),
                              code=1)
        assert str(target) in line and "free some space" in line, line
        assert target.read_bytes() == b"the previous file\n"
        assert sorted(p.name for p in where.iterdir()) == ["filler", "out"]  # no temp left
    finally:
        umount(where)
