"""Bad input gets one clear line, exit 2, no traceback, and leaves the ledger as it was."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli


def _one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_catalog(tmp_path):
    _one_line_error(run_cli("plan", "--catalog", str(tmp_path / "nope.json"),
                            "--db", str(tmp_path / "l.db")), "catalog not found", "--catalog")


def test_invalid_catalog_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\"l1s\": [", encoding="utf-8")
    _one_line_error(run_cli("plan", "--catalog", str(bad), "--db", str(tmp_path / "l.db")),
                    "bad.json")


def test_catalog_with_a_missing_field(tmp_path):
    from ledger.catalog import DEFAULT_CATALOG_PATH

    data = json.loads(DEFAULT_CATALOG_PATH.read_text(encoding="utf-8"))
    del data["l1s"][0]["patterns"][2]["explanation"]
    bad = tmp_path / "cat.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    _one_line_error(run_cli("plan", "--catalog", str(bad), "--db", str(tmp_path / "l.db")),
                    "explanation")


@pytest.mark.parametrize("url", ["ht!tp://:::", "mysql+nodriver://u@h/db",
                                 "postgresql+psycopg://nobody@127.0.0.1:1/none"])
def test_bad_database_url(tmp_path, url):
    result = run_cli("status", "--db", url)
    _one_line_error(result)
    assert "password" not in result.stderr.lower()


def test_a_file_that_is_not_a_sqlite_database_is_refused_and_kept(tmp_path):
    f = tmp_path / "notes.db"
    f.write_text("my precious notes\n", encoding="utf-8")
    _one_line_error(run_cli("plan", "--target", "10", "--db", str(f)), "not a SQLite database")
    assert f.read_text(encoding="utf-8") == "my precious notes\n"


def test_a_directory_that_does_not_exist(tmp_path):
    _one_line_error(run_cli("status", "--db", str(tmp_path / "no" / "such" / "l.db")),
                    "does not exist")


@pytest.fixture
def unwritable_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A directory this process cannot write: chmod for users, a read-only mount for root."""
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
                   check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


def test_an_unwritable_directory(unwritable_dir):
    _one_line_error(run_cli("plan", "--target", "5", "--db", str(unwritable_dir / "l.db")),
                    "not writable")


def test_unknown_l1_and_pattern_leave_the_ledger_as_it_was(tmp_path):
    db = tmp_path / "l.db"
    assert run_cli("plan", "--target", "48", "--db", str(db)).returncode == 0
    before = db.read_bytes()
    _one_line_error(run_cli("plan", "--target", "100", "--l1", "klingon", "--db", str(db)),
                    "klingon", "spanish")
    _one_line_error(run_cli("plan", "--target", "100", "--patterns", "nope", "--db", str(db)),
                    "nope")
    _one_line_error(run_cli("plan", "--target", "-3", "--db", str(db)), "--target")
    status = json.loads(run_cli("status", "--format", "json", "--db", str(db)).stdout)
    assert status["planned"] == 48
    assert db.read_bytes()[:100] == before[:100]


def test_every_command_has_help_text():
    from ledger.commands import Commands

    public = [n for n in dir(Commands) if not n.startswith("_")]
    assert {"plan", "status", "run", "rebuild", "estimate", "prices", "simulate",
            "demo"} <= set(public)
    for name in public:
        doc = getattr(Commands, name).__doc__
        assert doc and len(doc.strip()) > 20, f"{name} has no help text"
