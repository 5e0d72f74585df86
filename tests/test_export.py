"""`export`: accepted dialogues as training JSONL: deterministic, traceable, atomic, with a
manifest.

Ledgers are built through the real Store (bench/build_ledger.py); the crash test kills a real
export subprocess with SIGKILL while it writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bench.build_ledger import COST_USD, MODEL, build_accepted_ledger
from conftest import ROOT, run_cli
from ledger.commands import Commands
from ledger.db import open_ledger
from ledger.errors import LedgerError, UsageError
from ledger.export import ExportFilters, export_dialogues
from ledger.filters import FILTER_VERSION
from ledger.prompts import PROMPT_VERSION, TUTOR_SYSTEM_MESSAGE

def query(path: Path, sql: str) -> list[Any]:
    led = open_ledger(str(path), readonly=True)
    try:
        with led.engine.connect() as conn:
            return conn.execute(text(sql)).all()
    finally:
        led.dispose()


@pytest.fixture(scope="module")
def small_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 jobs over the catalog's cells, the first 40 accepted."""
    path = tmp_path_factory.mktemp("small") / "ledger.db"
    build_accepted_ledger(path, 60, 40)
    return path


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "ledger.db"
    build_accepted_ledger(path, 6000, 6000)
    return path


def export(db: Path, out: Path, **options: Any) -> str:
    return Commands(db=str(db)).export(out=str(out), **options)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_builder_keeps_projections_consistent(small_db: Path) -> None:
    states = dict(query(small_db, "SELECT state, COUNT(*) FROM job_state GROUP BY state"))
    assert states == {"accepted": 40, "open": 20}
    spend = query(small_db, "SELECT spend_usd FROM ledger_totals")[0][0]
    assert spend == pytest.approx(40 * COST_USD)
    assert query(small_db, "SELECT COUNT(*) FROM open_attempts")[0][0] == 0


def test_each_line_is_an_accepted_dialogue_traceable_to_the_ledger(small_db: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    message = export(small_db, out)
    assert "exported 40 dialogues (messages)" in message
    records = lines_of(out)
    expected = query(small_db, """
        SELECT j.job_id, acc.attempt_id, j.l1, j.pattern, j.level, v.messages_json
        FROM acceptances acc JOIN jobs j ON j.job_id = acc.job_id
        JOIN verdicts v ON v.verdict_id = acc.verdict_id ORDER BY j.seq""")
    assert [(r["job_id"], r["attempt_id"]) for r in records] == [(e[0], e[1]) for e in expected]
    for record, (_job, _att, l1, pattern, level, messages_json) in zip(records, expected):
        assert record["messages"] == json.loads(messages_json)
        assert (record["l1"], record["error_type"], record["level"]) == (l1, pattern, level)
        assert record["model"] == MODEL
        assert record["prompt_version"] == PROMPT_VERSION
        assert record["filter_version"] == FILTER_VERSION
        assert record["source"] == "plan"
        assert record["messages"][0] == {"role": "system", "content": TUTOR_SYSTEM_MESSAGE}
        assert [m["role"] for m in record["messages"][1:3]] == ["user", "assistant"]


def test_manifest_records_count_hash_filters_and_ledger_position(small_db: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "spanish.jsonl"
    export(small_db, out, l1="Spanish", format="sharegpt")
    manifest = json.loads((tmp_path / "spanish.jsonl.manifest.json").read_text())
    head_seq, head_hash = query(small_db, "SELECT head_seq, head_hash FROM ledger_totals")[0]
    assert manifest["count"] == 12 == len(out.read_text().splitlines())
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["bytes"] == out.stat().st_size
    assert manifest["format"] == "sharegpt"
    assert manifest["filters"] == {"l1": ["spanish"], "pattern": None, "level": None,
                                   "model": None}
    assert manifest["ledger"]["head_seq"] == head_seq
    assert manifest["ledger"]["head_hash"] == head_hash
    assert manifest["filter_versions"] == [FILTER_VERSION]
    assert manifest["tool_version"] and manifest["created_at_utc"].endswith("Z")


def test_same_ledger_gives_byte_identical_files_in_every_format(small_db: Path,
                                                               tmp_path: Path) -> None:
    for fmt in ("messages", "sharegpt", "chatml"):
        first, second = tmp_path / f"a.{fmt}.jsonl", tmp_path / f"b.{fmt}.jsonl"
        export(small_db, first, format=fmt)
        export(small_db, second, format=fmt)
        assert first.read_bytes() == second.read_bytes()
        for line in first.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            assert list(record) == sorted(record)
            if fmt != "messages":  # messages copies the stored messages JSON verbatim
                assert line == json.dumps(record, sort_keys=True, ensure_ascii=False,
                                          separators=(",", ":"))


def test_sharegpt_and_chatml_carry_the_same_dialogue(small_db: Path, tmp_path: Path) -> None:
    paths = {fmt: tmp_path / f"{fmt}.jsonl" for fmt in ("messages", "sharegpt", "chatml")}
    for fmt, path in paths.items():
        export(small_db, path, format=fmt)
    as_messages, as_sharegpt, as_chatml = (lines_of(paths[f]) for f in
                                           ("messages", "sharegpt", "chatml"))
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    for m, s, c in zip(as_messages, as_sharegpt, as_chatml):
        assert s["conversations"] == [{"from": roles[x["role"]], "value": x["content"]}
                                      for x in m["messages"]]
        assert c["text"] == "\n".join(f"<|im_start|>{x['role']}\n{x['content']}<|im_end|>"
                                      for x in m["messages"])
        assert c["text"].startswith("<|im_start|>system\n")
        assert {k: v for k, v in s.items() if k != "conversations"} == \
            {k: v for k, v in m.items() if k != "messages"}


def test_filters_narrow_the_export(small_db: Path, tmp_path: Path) -> None:
    export(small_db, tmp_path / "korean.jsonl", l1="korean")
    assert {r["l1"] for r in lines_of(tmp_path / "korean.jsonl")} == {"korean"}
    assert len(lines_of(tmp_path / "korean.jsonl")) == 4
    export(small_db, tmp_path / "pat.jsonl", pattern="negation_error,pronoun_copy",
           level="beginner")
    records = lines_of(tmp_path / "pat.jsonl")
    assert records and {r["error_type"] for r in records} <= {"negation_error", "pronoun_copy"}
    assert {r["level"] for r in records} == {"beginner"}
    assert len(lines_of(tmp_path / "pat.jsonl")) < 40
    # A model no attempt asked for is most likely a typo: refused, nothing written.
    with pytest.raises(UsageError, match="no attempt in the ledger has --model 'openai/gpt-4o'"):
        export(small_db, tmp_path / "none.jsonl", model="openai/gpt-4o")
    assert not (tmp_path / "none.jsonl").exists()
    # Values the ledger has (planned jobs), with nothing accepted under them: an empty export.
    text_out = export(small_db, tmp_path / "none.jsonl", l1="korean",
                      pattern="be_verb_insertion", level="intermediate")
    assert (tmp_path / "none.jsonl").read_bytes() == b""
    assert "no accepted dialogue matches" in text_out
    export(small_db, tmp_path / "model.jsonl", model=MODEL)
    assert len(lines_of(tmp_path / "model.jsonl")) == 40


def test_an_existing_file_is_kept_without_force(small_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    out.write_text("precious\n")
    with pytest.raises(UsageError, match="--force"):
        export(small_db, out)
    assert out.read_text() == "precious\n"
    done = run_cli("--db", str(small_db), "export", "--out", str(out), timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--force" in done.stderr
    assert out.read_text() == "precious\n"
    export(small_db, out, force=True)
    assert len(lines_of(out)) == 40


def test_an_output_naming_the_ledger_itself_is_refused_and_the_ledger_kept(
        small_db: Path, tmp_path: Path) -> None:
    """`export --out ledger.db --force` (and report --html, mix, complete) replaced the ledger
    file with the export: every event was gone and the next command said "not a SQLite
    database"."""
    import shutil

    db = tmp_path / "ledger.db"
    shutil.copy(small_db, db)
    (tmp_path / "anchors.jsonl").write_text(
        '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n')
    before = db.read_bytes()
    os.link(db, tmp_path / "hard.db")
    for command in (["export", "--out", str(db), "--force"],
                    ["export", "--out", str(tmp_path / "sub" / ".." / "ledger.db"), "--force"],
                    ["export", "--out", str(tmp_path / "hard.db"), "--force"],
                    ["export", "--out", str(db) + "-wal", "--force"],
                    ["report", "--html", str(db), "--force"],
                    ["mix", "--anchor", str(tmp_path / "anchors.jsonl"), "--out", str(db),
                     "--force"],
                    ["complete", "--target", "60", "--out", str(db)]):
        (tmp_path / "sub").mkdir(exist_ok=True)
        done = run_cli("--db", str(db), *command, timeout=60,
                       env={"OPENROUTER_API_KEY": "x",
                            "OPENROUTER_BASE_URL": "http://127.0.0.1:9/api/v1"})
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "the ledger's own file" in done.stderr, command
        assert db.read_bytes() == before, command
    assert query(db, "SELECT COUNT(*) FROM acceptances")[0][0] == 40


def test_a_pipe_or_device_as_out_is_refused_not_replaced_by_a_file(small_db: Path,
                                                                   tmp_path: Path) -> None:
    """`export --out /dev/stdout --force` (or a named pipe) renamed the temp file over the
    node: as root, /dev/stdout became a regular file for every later process, and a reader
    on the pipe never got a byte."""
    fifo = tmp_path / "train.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "null"  # a link to a device, as /dev/stdout is on a terminal
    link.symlink_to(os.devnull)
    for out in (fifo, link):
        for force in (False, True):
            with pytest.raises(UsageError, match="not a regular file"):
                export(small_db, out, force=force)
    assert fifo.is_fifo() and link.is_symlink()
    assert os.readlink(link) == os.devnull
    done = run_cli("--db", str(small_db), "export", "--out", str(fifo), "--force", timeout=60)
    assert done.returncode == 2 and "not a regular file" in done.stderr
    assert fifo.is_fifo()
    assert not (tmp_path / "train.fifo.manifest.json").exists()


def test_verify_compares_an_export_with_the_ledger_not_only_with_its_manifest(
        small_db: Path, tmp_path: Path) -> None:
    """An export whose lines were edited (a dialogue changed, a line duplicated over another)
    and whose manifest's sha256 was updated to match verified as 'ok ... lines match': verify
    --manifest never compared the file with what the ledger exports at that position."""
    import hashlib
    import shutil

    from bench.build_ledger import _accept_all
    from conftest import make_jobs
    from ledger.store import Store

    db = tmp_path / "ledger.db"
    shutil.copy(small_db, db)
    outs = []
    for fmt, options in (("messages", {}), ("sharegpt", {"l1": "korean,Arabic"}),
                         ("chatml", {"level": "beginner"})):
        out = tmp_path / f"{fmt}.jsonl"
        export(db, out, format=fmt, **options)
        outs.append(out)
    # The ledger moves on after the exports: they must still verify at their own position.
    ledger = open_ledger(str(db))
    store = Store(ledger)
    jobs = make_jobs(3, l1="korean")
    store.plan_jobs(jobs)
    _accept_all(store, jobs)
    store.rebuild_projections()  # as build_accepted_ledger does
    store.close()
    ledger.dispose()
    for out in outs:
        done = run_cli("--db", str(db), "verify", "--manifest", f"{out}.manifest.json",
                       timeout=60)
        assert done.returncode == 0 and "FAIL" not in done.stdout, done.stdout
    for out in outs:
        lines = out.read_bytes().split(b"\n")
        lines[1] = lines[0]
        out.write_bytes(b"\n".join(lines))
        manifest_file = Path(f"{out}.manifest.json")
        manifest = json.loads(manifest_file.read_text())
        manifest["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
        manifest_file.write_text(json.dumps(manifest))
        done = run_cli("--db", str(db), "verify", "--manifest", str(manifest_file), timeout=60)
        assert done.returncode == 1, done.stdout
        assert f"FAIL export manifest: {out.name} is not what the ledger exports" in done.stdout


def test_files_are_private_and_no_temp_file_remains(small_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    export(small_db, out)
    assert out.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "train.jsonl.manifest.json").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl",
                                                         "train.jsonl.manifest.json"]


def test_bad_options_are_usage_errors(small_db: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--format"):
        export(small_db, tmp_path / "x.jsonl", format="alpaca")
    with pytest.raises(UsageError, match="--out"):
        Commands(db=str(small_db)).export()
    with pytest.raises(UsageError, match="does not exist"):
        export(small_db, tmp_path / "missing" / "x.jsonl")


def test_an_empty_ledger_exports_an_empty_file(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    open_ledger(str(db)).dispose()
    message = export(db, tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_bytes() == b""
    assert json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["count"] == 0
    assert "exported 0 dialogues" in message


def _temps(directory: Path, name: str) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(f".{name}.")
            and p.name.endswith(".tmp")]


def _kill_mid_write(argv: list[str], directory: Path, name: str) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            temps = [p for p in _temps(directory, name) if f".{proc.pid}." in p.name]
            if temps and temps[0].exists() and temps[0].stat().st_size > 0:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            if proc.poll() is not None:
                pytest.fail("the export finished before it could be killed: "
                            f"{proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.0005)
        pytest.fail("the export never started writing")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_a_killed_export_never_leaves_a_partial_file(big_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    argv = [sys.executable, str(ROOT / "cli.py"), "--db", str(big_db), "export", "--out",
            str(out), "--force"]
    _kill_mid_write(argv, tmp_path, out.name)
    assert not out.exists()
    assert len(_temps(tmp_path, out.name)) == 1  # the dead writer's leftovers

    export(big_db, out, force=True)
    good = out.read_bytes()
    assert good.count(b"\n") == 6000 and good.endswith(b"\n")
    assert _temps(tmp_path, out.name) == []  # cleaned up by the next export

    _kill_mid_write(argv, tmp_path, out.name)
    assert out.read_bytes() == good  # the old file, whole
    manifest = json.loads((tmp_path / "train.jsonl.manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(good).hexdigest()


def test_lines_match_json_dumps_for_awkward_content() -> None:
    from ledger.export_lines import export_line

    messages = [{"role": "system", "content": "Sé paciente \\ \"citas\"\tand\u0001 ☕"},
                {"role": "user", "content": "I no like café.\nLine two \u2028 end\\"},
                {"role": "narrator", "content": ""}]
    row = ("job-é", 7, "spanish", "negation_error", "beginner", "m/ö", "p1", "f1", "import",
           json.dumps(messages, ensure_ascii=False))
    meta = {"job_id": "job-é", "attempt_id": 7, "l1": "spanish", "error_type": "negation_error",
            "level": "beginner", "model": "m/ö", "prompt_version": "p1", "filter_version": "f1",
            "source": "import"}
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    expected = {
        "sharegpt": {**meta, "conversations": [{"from": roles.get(m["role"], m["role"]),
                                                "value": m["content"]} for m in messages]},
        "chatml": {**meta, "text": "\n".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>"
                                             for m in messages)},
    }
    for fmt, record in expected.items():
        assert export_line(fmt, row) == json.dumps(record, sort_keys=True, ensure_ascii=False,
                                                   separators=(",", ":"))
    assert json.loads(export_line("messages", row))["messages"] == messages
    with pytest.raises(LedgerError, match="no stored messages"):
        export_line("sharegpt", (*row[:9], None))


def _accept(store: Any, run_id: str, stored: list[str | None],
            models: list[str | None]) -> None:
    """Claim one open job per stored-messages value and accept it with that value as its
    verdict's messages, served by the model at the same place."""
    from ledger.records import OutcomeRecord, VerdictRecord

    store.start_run(run_id, "h", 1, PROMPT_VERSION, FILTER_VERSION, {})
    now = time.time()
    for job, messages, model in zip(store.claim(run_id, len(stored), now, 60), stored, models):
        start = store.begin_attempt(job.job_id, run_id, "req/model", 0, PROMPT_VERSION, 200,
                                    0.01, None, now, 60)
        store.finish_attempt(start.attempt_id, job.job_id, run_id,
                             OutcomeRecord("ok", COST_USD, "response", model_served=model),
                             VerdictRecord(FILTER_VERSION, True, (), 3, 1, False, {}, messages),
                             accept=True)


def test_lines_built_by_sqlite_equal_the_python_encoders_bytes(tmp_path: Path) -> None:
    """On SQLite the query spells out each line's metadata (json_quote); whatever a server
    sent as its model name, and whatever the dialogue holds, the bytes are the ones the Python
    encoder gives for the same rows."""
    from conftest import make_jobs
    from ledger.export import accepted_rows
    from ledger.export_lines import export_line
    from ledger.store import Store

    path = tmp_path / "odd.db"
    ledger = open_ledger(str(path))
    store = Store(ledger)
    store.plan_jobs(make_jobs(4))
    odd_models = ['m"od\\el\x01\x1f\u2028\u00e9\U0001f600', "plain/model", "tab\tnew\nline\x7f",
                  None]
    messages = [{"role": "system", "content": "s\u2029 \\ /"},
                {"role": "user", "content": 'I no "like" coffee\x00\x08\x0c'},
                {"role": "assistant", "content": "Why?\r\n\u00e9\U0001f600"}]
    _accept(store, "r", [json.dumps(messages, ensure_ascii=False)] * 4, odd_models)
    store.close()
    with accepted_rows(ledger) as (_position, batches):
        rows = [row for batch in batches for row in batch]
    assert len(rows) == 4
    for fmt in ("messages", "sharegpt", "chatml"):
        out = tmp_path / f"{fmt}.jsonl"
        export_dialogues(ledger, out, fmt)
        expected = "".join(export_line(fmt, row) + "\n" for row in rows)
        assert out.read_text(encoding="utf-8") == expected
    ledger.dispose()


def test_a_two_process_export_writes_the_same_bytes_as_one(big_db: Path, tmp_path: Path) -> None:
    """A big export is cut by plan order and its later half written by a helper process; the
    file, its count and its versions are what one process writes, in every format and with a
    filter that leaves the halves uneven."""
    ledger = open_ledger(str(big_db), readonly=True)
    try:
        for fmt in ("messages", "sharegpt", "chatml"):
            for filters in (ExportFilters(), ExportFilters.from_names(l1s=["korean"]),
                            ExportFilters.from_names(l1s=["korean", "spanish"],
                                                     models=[MODEL])):
                one = export_dialogues(ledger, tmp_path / f"one-{fmt}.jsonl", fmt, filters,
                                       force=True, split_min_rows=10**9)
                two = export_dialogues(ledger, tmp_path / f"two-{fmt}.jsonl", fmt, filters,
                                       force=True, split_min_rows=1)
                assert (one.processes, two.processes) == (1, 2)
                assert two.path.read_bytes() == one.path.read_bytes()
                assert (two.count, two.sha256) == (one.count, one.sha256)
                assert one.count == 6000 if filters.l1s is None else 0 < one.count < 6000
                m1, m2 = (json.loads(r.manifest_path.read_text()) for r in (one, two))
                assert {k: v for k, v in m2.items() if k not in ("file", "created_at_utc")} == \
                    {k: v for k, v in m1.items() if k not in ("file", "created_at_utc")}
    finally:
        ledger.dispose()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_helper_that_fails_fails_the_export_and_writes_nothing(tmp_path: Path) -> None:
    """An inconsistent row in the helper's half is reported as it would be by one process."""
    from conftest import make_jobs
    from ledger.store import Store

    path = tmp_path / "broken.db"
    ledger = open_ledger(str(path))
    store = Store(ledger)
    store.plan_jobs(make_jobs(8))
    good = json.dumps([{"role": "user", "content": "hi"}])
    _accept(store, "r", [good] * 7 + [None], ["m"] * 8)  # the last job, in the helper's half
    store.close()
    out = tmp_path / "out" / "train.jsonl"
    out.parent.mkdir()
    for fmt in ("messages", "sharegpt"):
        with pytest.raises(LedgerError, match=r"accepted attempt \d+ of job .* no stored messages"):
            export_dialogues(ledger, out, fmt, split_min_rows=1)
        assert list(out.parent.iterdir()) == []
    ledger.dispose()


def test_a_killed_two_process_export_leaves_only_its_temp_file(big_db: Path,
                                                                tmp_path: Path) -> None:
    """The helper writes into an unnamed file: killing the export leaves the dead writer's temp
    file (removed by the next export) and nothing else."""
    out = tmp_path / "train.jsonl"
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from ledger.db import open_ledger; "
              "from ledger.export import export_dialogues; "
              "export_dialogues(open_ledger(sys.argv[2], readonly=True), sys.argv[3], "
              "'sharegpt', split_min_rows=1)")
    _kill_mid_write([sys.executable, "-c", script, str(ROOT), str(big_db), str(out)], tmp_path,
                    out.name)
    time.sleep(1.0)  # the orphaned helper finishes its half into the unnamed file and exits
    assert [p.name for p in tmp_path.iterdir()] == [p.name for p in _temps(tmp_path, out.name)]
    assert len(_temps(tmp_path, out.name)) == 1


def test_a_row_range_reads_one_ledger_position_from_any_connection(small_db: Path,
                                                                   tmp_path: Path) -> None:
    """What the helper relies on: rows as of seq N, read on a new connection after more jobs
    were accepted, are exactly the export taken at seq N."""
    import io
    import shutil
    import sqlite3

    from ledger.export_rows import RowRange, write_sqlite_part
    from ledger.store import Store

    path = tmp_path / "copy.db"
    shutil.copy(small_db, path)
    ledger = open_ledger(str(path))
    before = export_dialogues(ledger, tmp_path / "before.jsonl", "sharegpt")
    store = Store(ledger)
    _accept(store, "later", [json.dumps([{"role": "user", "content": "x"}])] * 5, [MODEL] * 5)
    store.close()
    ledger.dispose()
    conn = sqlite3.connect(path)
    buf = io.BytesIO()
    written = write_sqlite_part(conn, "sharegpt", ExportFilters(),
                                RowRange(before.position.head_seq), buf)
    conn.close()
    assert written.count == before.count == 40
    assert buf.getvalue() == before.path.read_bytes()
    assert len(query(path, "SELECT job_id FROM acceptances")) == 45  # the later five exist


def test_a_helper_reads_a_ledger_whose_path_needs_quoting(small_db: Path, tmp_path: Path) -> None:
    """The helper opens the ledger by URI: spaces, '#', '?' and '%' in its path must survive."""
    import shutil

    odd = tmp_path / "a dir #1 ?x %20" / "led ger.db"
    odd.parent.mkdir()
    shutil.copy(small_db, odd)
    ledger = open_ledger(str(odd), readonly=True)
    try:
        one = export_dialogues(ledger, tmp_path / "one.jsonl", "chatml", split_min_rows=10**9)
        two = export_dialogues(ledger, tmp_path / "two.jsonl", "chatml", split_min_rows=1)
    finally:
        ledger.dispose()
    assert (one.processes, two.processes, two.count) == (1, 2, 40)
    assert two.path.read_bytes() == one.path.read_bytes()


def test_no_helper_is_started_where_it_cannot_keep_its_file(small_db: Path,
                                                            tmp_path: Path) -> None:
    """A helper needs a file for its half; without one the export runs in one process."""
    from ledger.export_rows import RowRange
    from ledger.export_split import Helper

    assert Helper.start(small_db, "messages", ExportFilters(), RowRange(1, 0),
                        tmp_path / "missing", 1000) is None


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "chatml"])
def test_the_export_query_reads_rows_in_file_order_without_sorting_them(small_db: Path,
                                                                        fmt: str) -> None:
    """Whole or cut in two, filtered or not, the rows come in job order off the jobs' seq
    index: a sort would first hold every built line of the export in a temporary B-tree."""
    import sqlite3

    from ledger.export_rows import RowRange, sqlite_line_select, sqlite_statement

    conn = sqlite3.connect(small_db)
    try:
        for filters in (ExportFilters(), ExportFilters(l1s=("es",)),
                        ExportFilters(models=(MODEL,))):
            for rows in (RowRange(10**9), RowRange(10**9, upto_job_seq=30),
                         RowRange(10**9, after_job_seq=30)):
                sql, values = sqlite_statement(filters, sqlite_line_select(fmt), rows)
                plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, values)]
                assert not any("TEMP B-TREE" in step for step in plan), (filters, rows, plan)
                assert "USING INDEX" in plan[0] and plan[0].split()[1] == "j", plan
    finally:
        conn.close()


def test_the_export_helper_starts_without_the_database_engine() -> None:
    """The helper process imports only what reads and writes rows: SQLAlchemy's import alone
    would delay its first row by about a quarter of a second."""
    probe = ("import sys, ledger.export_split; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('sqlalchemy', 'alembic', 'requests')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


# A stand-in for the helper process: it writes its half in pieces with pauses, the last piece
# right before it exits, and may flood its stderr first (a pipe holds 64 KiB).
_FAKE_HELPER = """
import json, os, sys, time
fd, pieces, flood = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(pieces):
    os.write(fd, (b"%06d;" % i) * 1000)
    time.sleep(0.02)
if flood:
    sys.stderr.write("x" * flood)
    sys.stderr.flush()
print(json.dumps({"count": pieces, "filter_versions": ["f"], "prompt_versions": ["p"]}),
      flush=True)
time.sleep(0.05)
os.write(fd, b"last piece")
os._exit(0)  # at once: the last piece lands in the file only just before the exit is seen
"""


@pytest.mark.parametrize("flood", [0, 200_000])
def test_the_helpers_half_is_copied_in_order_while_it_grows_and_to_its_last_byte(
        tmp_path: Path, flood: int) -> None:
    """finish() copies the part file while the helper is still writing, reads on to the last
    piece written just before the exit, and does not hang on a helper that fills its stderr
    pipe."""
    import tempfile
    import threading

    from ledger.export_split import Helper

    part = tempfile.TemporaryFile(dir=tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", _FAKE_HELPER, str(part.fileno()), "10",
                             str(flood)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            pass_fds=(part.fileno(),))
    helper = Helper(proc, part)
    got: list[bytes] = []
    result: list[Any] = []

    class Sink:
        def write(self, data: bytes) -> None:
            got.append(data)

    worker = threading.Thread(target=lambda: result.append(helper.finish(Sink())), daemon=True)
    worker.start()
    worker.join(30)
    try:
        assert not worker.is_alive(), "finish() did not return"
    finally:
        helper.stop()
    expected = b"".join((b"%06d;" % i) * 1000 for i in range(10)) + b"last piece"
    assert b"".join(got) == expected
    assert len(got) > 1  # read while it grew, not once at the end
    assert result[0].count == 10
