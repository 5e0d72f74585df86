"""`complete`: plan the remainder, run it, export, analyse; end to end against the simulator."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from conftest import run_cli
from ledger.cli_data import DataCommands
from ledger.db import open_ledger
from ledger.simulator import SimConfig, Simulator

KEY = "sk-or-v1-complete-test-key"

@pytest.fixture
def sim():  # type: ignore[no-untyped-def]
    servers: list[Simulator] = []

    def start(**options: Any) -> Simulator:
        server = Simulator(SimConfig.from_kwargs(**{"latency_ms": 2, "api_key": KEY, **options}))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def cli(tmp_path: Path, server: Simulator, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"OPENROUTER_BASE_URL": server.base_url,
                               "OPENROUTER_API_KEY": KEY,
                               "LEDGER_DB": str(tmp_path / "ledger.db")}, cwd=tmp_path)


def accepted(db: Path) -> list[tuple[str, int]]:
    led = open_ledger(str(db), readonly=True)
    try:
        with led.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT acc.job_id, acc.attempt_id FROM acceptances acc "
                "JOIN jobs j ON j.job_id = acc.job_id ORDER BY j.seq"))]
    finally:
        led.dispose()


def test_complete_plans_runs_and_exports(tmp_path: Path, sim: Any) -> None:
    server = sim()
    out = tmp_path / "final.jsonl"
    done = cli(tmp_path, server, "complete", "--target", "12", "--out", str(out),
               "--concurrency", "4", "--quiet")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 12
    assert [(r["job_id"], r["attempt_id"]) for r in lines] == accepted(tmp_path / "ledger.db")
    assert "exported 12 dialogues" in done.stdout
    assert "stopped: done (exit 0)" in done.stdout
    assert "analysis of" in done.stdout and "12 dialogues" in done.stdout  # analysis last
    assert done.stdout.index("exported 12") < done.stdout.index("analysis of")
    manifest = json.loads((tmp_path / "final.jsonl.manifest.json").read_text())
    assert manifest["count"] == 12
    first = out.read_bytes()

    # Again: nothing to plan or run; the export is replaced by the same bytes.
    again = cli(tmp_path, server, "complete", "--target", "12", "--out", str(out), "--quiet")
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == first
    assert server.stats()["requests"] == 12

    # A larger target adds only the difference.
    more = cli(tmp_path, server, "complete", "--target", "20", "--out", str(out), "--quiet")
    assert more.returncode == 0, more.stderr
    assert len(out.read_text().splitlines()) == 20
    assert server.stats()["requests"] == 20


def test_a_halted_run_exits_with_its_code_and_exports_nothing(tmp_path: Path,
                                                              sim: Any) -> None:
    server = sim()
    server.script(["ok", "ok", "402_credits"])
    out = tmp_path / "final.jsonl"
    halted = cli(tmp_path, server, "complete", "--target", "6", "--out", str(out),
                 "--concurrency", "1", "--quiet")
    assert halted.returncode == 3
    assert "not exported" in halted.stderr and "complete --target 6" in halted.stderr
    assert "stopped: credit" in halted.stdout
    assert not out.exists()
    assert len(accepted(tmp_path / "ledger.db")) == 2

    resumed = cli(tmp_path, server, "complete", "--target", "6", "--out", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert len(out.read_text().splitlines()) == 6


def test_bad_key_exits_5_before_anything_is_exported(tmp_path: Path, sim: Any) -> None:
    server = sim(api_key="sk-or-v1-some-other-key")
    out = tmp_path / "final.jsonl"
    done = cli(tmp_path, server, "complete", "--target", "3", "--out", str(out), "--quiet")
    assert done.returncode == 5
    assert not out.exists()


def test_without_an_analysis_command_complete_says_so(capsys: pytest.CaptureFixture) -> None:
    DataCommands()._print_analysis()
    assert "analysis: not available" in capsys.readouterr().out
