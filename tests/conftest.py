"""Shared fixtures: real ledger files in tmp dirs, the real simulator on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ledger.db import open_ledger  # noqa: E402
from ledger.records import PlannedJob  # noqa: E402
from ledger.store import Store  # noqa: E402


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(ledger_path: Path):  # type: ignore[no-untyped-def]
    led = open_ledger(str(ledger_path))
    yield led
    led.dispose()


@pytest.fixture
def store(ledger):  # type: ignore[no-untyped-def]
    st = Store(ledger)
    yield st
    st.close()


def make_jobs(n: int, l1: str = "spanish", pattern: str = "negation_error") -> list[PlannedJob]:
    return [PlannedJob(job_id=f"{l1}-{pattern}-{i:05d}", l1=l1, pattern=pattern,
                       erroneous=f"I no like coffee {i}.", correct=f"I don't like coffee {i}.",
                       level="beginner", variant=0, topic="food", persona="a student")
            for i in range(n)]


def planned_ledger(path: Path, n: int) -> Path:
    """A ledger file at path with n jobs planned (make_jobs), closed again."""
    ledger = open_ledger(str(path))
    store = Store(ledger)
    store.plan_jobs(make_jobs(n))
    store.close()
    ledger.dispose()
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python cli.py ARGS` in a real subprocess, as a user would run it."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("LEDGER_DB",
                                                                 "OPENROUTER_API_KEY",
                                                                 "OPENROUTER_BASE_URL")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd or ROOT, timeout=timeout)
