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


def _planned(tmp_path: Path, n: int = 10) -> Path:
    db = tmp_path / "l.db"
    assert run_cli("plan", "--target", str(n), "--db", str(db)).returncode == 0
    return db


def _planned_count(db: Path) -> int:
    return json.loads(run_cli("status", "--format", "json", "--db", str(db)).stdout)["planned"]


@pytest.mark.parametrize("args, needle", [
    (["plan", "--targt", "100"], "plan has no option --targt"),
    (["plan", "--target", "30", "--pattern", "negation_error"], "--patterns"),
    (["plan", "--target=30", "-x", "1"], "plan has no option -x"),
    (["plan", "-targt", "100"], "plan has no option -targt"),  # fire reads -name as --name
    (["plan", "--dry-run", "-z", "5"], "plan has no option -z"),
    (["plan", "30", "spanish", "negation_error", "beginner", "no", "extra"], "'extra'"),
])
def test_an_option_the_command_does_not_take_stops_it_before_it_runs(tmp_path, args, needle):
    """fire would run `plan` with the options it knows (the default 1,000 jobs here, into an
    append-only ledger) and complain after; the command line is checked first."""
    db = _planned(tmp_path)
    _one_line_error(run_cli(*args, "--db", str(db)), needle, f"python cli.py {args[0]} --help")
    assert _planned_count(db) == 10


def test_a_word_too_many_stops_a_command_before_it_runs(tmp_path):
    db = tmp_path / "never.db"
    _one_line_error(run_cli("rebuild", "now", "--db", str(db)), "rebuild takes no argument")
    assert not db.exists()


@pytest.mark.parametrize("args", [
    ["--target", "12", "--dry-run"], ["--target=12", "--nodry-run"], ["-t", "12"],
    ["-target", "12"],
    ["12", "--l1=spanish,korean"], ["--target", "12", "--dry-run", "False"],
])
def test_every_spelling_fire_reads_still_works(tmp_path, args):
    db = tmp_path / "l.db"
    result = run_cli("--db", str(db), "plan", *args)
    assert result.returncode == 0, result.stderr
    dry = "--dry-run" in args and "False" not in args
    assert _planned_count(db) == (0 if dry else 12)


@pytest.mark.parametrize("args", [["--help", "plan"], ["-h", "plan"],
                                  ["plan", "--target", "7", "--help"],
                                  ["--db", "x.db", "-h", "run"]])
def test_help_anywhere_shows_help_and_runs_nothing(tmp_path, args):
    db = tmp_path / "l.db"
    result = run_cli(*args, env={"PAGER": "cat", "LEDGER_DB": str(db)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "NAME" in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []  # no ledger planned, created or run


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_alone_lists_the_commands(flag):
    result = run_cli(flag, env={"PAGER": "cat"})
    assert result.returncode == 0, result.stderr
    shown = result.stdout + result.stderr
    assert "COMMAND is one of the following" in shown
    for command in ("plan", "run", "export", "report", "status", "verify"):
        assert f"\n     {command}\n" in shown


def test_help_of_a_command_taking_any_option():
    result = run_cli("simulate", "--help", env={"PAGER": "cat"})
    assert result.returncode == 0, result.stderr
    assert "Serve the local OpenRouter-compatible simulator" in result.stdout + result.stderr


@pytest.mark.parametrize("command", [["status"], ["plan", "--target", "5"], ["report", "costs"],
                                     ["export", "--out", "x.jsonl"]])
def test_a_sqlite_file_of_something_else_is_refused_and_left_as_it_was(tmp_path, command):
    import sqlite3

    other = tmp_path / "shop.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('Ana')")
    # Another program that keeps its schema with alembic too: its version table is no ledger.
    conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    conn.execute("INSERT INTO alembic_version VALUES ('ae1027a6acf')")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    _one_line_error(run_cli(*command, "--db", str(other), cwd=tmp_path), "is not a ledger",
                    "alembic_version, customers")
    assert other.read_bytes() == before  # no ledger tables, still in rollback-journal mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.db"]


@pytest.mark.parametrize("command", [["status"], ["verify"], ["run"], ["estimate"],
                                     ["rebuild"], ["refilter"]])
def test_a_mistyped_ledger_path_is_not_answered_with_a_new_empty_ledger(tmp_path, command):
    missing = tmp_path / "ledgr.db"
    _one_line_error(run_cli(*command, "--db", str(missing),
                            env={"OPENROUTER_API_KEY": "sk-or-unused"}), "no ledger at",
                    str(missing))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, needle", [
    (["run", "--base-url", "http://[::1"], "is not a valid URL"),
    (["run", "--base-url", "http:///v1"], "names no host"),
    (["export", "--out", "x" * 300 + ".jsonl"], "choose another path"),
    (["simulate", "--port", "99999"], "ports are 0-65535"),
    (["simulate", "--port", "0", "--billing-log", "/nonexistent-dir/bill.log"],
     "--billing-log a file in a writable directory"),
])
def test_bad_values_that_used_to_end_in_a_traceback(tmp_path, args, needle):
    db = _planned(tmp_path, 3)
    _one_line_error(run_cli(*args, "--db", str(db), cwd=tmp_path,
                            env={"OPENROUTER_API_KEY": "sk-or-unused"}, timeout=30), needle)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("l.db")) == []


def test_a_manifest_that_is_not_an_object(tmp_path):
    db = _planned(tmp_path, 3)
    manifest = tmp_path / "m.manifest.json"
    manifest.write_text("[1, 2]", encoding="utf-8")
    _one_line_error(run_cli("verify", "--manifest", str(manifest), "--db", str(db)),
                    "is not an export manifest")


def test_a_demo_directory_that_is_a_file(tmp_path):
    taken = tmp_path / "demo"
    taken.write_text("mine\n", encoding="utf-8")
    _one_line_error(run_cli("demo", "--dir", str(taken), "--quiet"), "--dir another path")
    assert taken.read_text(encoding="utf-8") == "mine\n"


def test_rebuild_of_a_ledger_with_no_event_yet(tmp_path):
    db = _planned(tmp_path, 0)
    done = run_cli("rebuild", "--db", str(db))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "ok   hash chain: 0 events" in run_cli("verify", "--db", str(db)).stdout


def test_analyze_skips_a_line_that_is_not_utf8(tmp_path):
    f = tmp_path / "set.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "I no like coffee."},
                                    {"role": "assistant", "content": "Do you like it?"}]})
    f.write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n\xff\xfe not text\n" + good.encode()
                  + b"\n")
    done = run_cli("analyze", str(f), "--format", "json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["dialogues"] == 2 and got["lines_skipped"] == 1


def test_an_operating_system_error_reads_as_one_line_with_what_to_do():
    import errno

    from ledger.errors import os_error_line

    assert os_error_line(OSError(errno.ENOSPC, "No space left on device", "/data/out.jsonl")) \
        == "/data/out.jsonl: No space left on device; free some space and run the command again"
    assert os_error_line(OSError(errno.EACCES, "Permission denied", "/etc/x")).endswith(
        "check the permissions, or choose another path")
    assert os_error_line(OSError(errno.EIO, "Input/output error")) == \
        "Input/output error; check the path and run the command again"


@pytest.mark.parametrize("setting", ['"budget_usd": NaN', '"budget_usd": Infinity',
                                     '"rpm": -Infinity'])
def test_a_config_file_number_that_is_not_finite_is_refused(tmp_path, setting):
    db = _planned(tmp_path, 3)
    config = tmp_path / "run.json"
    config.write_text("{" + setting + "}", encoding="utf-8")
    _one_line_error(run_cli("run", "--config", str(config), "--db", str(db),
                            env={"OPENROUTER_API_KEY": "sk-or-unused",
                                 "OPENROUTER_BASE_URL": "http://127.0.0.1:9/api/v1"}),
                    "must be a finite number")


@pytest.mark.parametrize("command", [("run",), ("prices", "--refresh")])
@pytest.mark.parametrize("secret", ["\u2018sk-or-v1-CANARY0123456789abcdef\u2019",
                                    "sk-or-v1-CANARY01234\n56789abcdef"])
def test_a_key_pasted_with_a_curly_quote_or_line_break(tmp_path, command, secret):
    """A key copied with its typographic quotes ended in a UnicodeEncodeError traceback (exit
    1); one with a line break in it said the API could not be reached. Either way: one line
    that names the problem and not the key, and no request."""
    db = str(tmp_path / "l.db")
    assert run_cli("plan", "--target", "2", "--db", db).returncode == 0
    result = run_cli(*command, "--db", db, env={"OPENROUTER_API_KEY": secret,
                                                "OPENROUTER_BASE_URL": "http://127.0.0.1:1/api/v1"})
    _one_line_error(result, "OPENROUTER_API_KEY", "HTTP header")
    assert "CANARY" not in result.stderr + result.stdout


def test_ctrl_c_while_the_imports_load_is_one_line(tmp_path: Path) -> None:
    """Ctrl-C in the first fraction of a second, while fire and SQLAlchemy load, printed a
    traceback. A module that raises KeyboardInterrupt when imported stands in for the key
    press arriving at that moment."""
    (tmp_path / "fire.py").write_text("raise KeyboardInterrupt\n")
    done = run_cli("status", env={"PYTHONPATH": str(tmp_path)})
    assert (done.returncode, done.stderr, done.stdout) == (130, "interrupted\n", "")
