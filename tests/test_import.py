"""`import FILE.jsonl`: existing dialogues become judged, accepted jobs, once, in one
transaction."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ledger.catalog import load_catalog
from ledger.commands import Commands
from ledger.db import open_ledger
from ledger.errors import UsageError
from ledger.filters import FILTER_VERSION
from ledger.importer import append_import, import_file, parse_file
from ledger.planner import plan_ledger
from ledger.store import Store

SYSTEM = "You are a kind ESL tutor who asks questions."


def dialogue(first: str, fix: str, question: str = "Which word shows the negative?") -> list:
    return [("user", f"Hello! {first}"), ("assistant", f"Nice to meet you. {question}"),
            ("user", f"Hmm... {fix}"), ("assistant", "Great job!")]


def as_messages(turns: list, **fields: Any) -> str:
    msgs = [{"role": "system", "content": SYSTEM}] + [{"role": r, "content": c} for r, c in turns]
    return json.dumps({"messages": msgs, **fields})


def as_sharegpt(turns: list, **fields: Any) -> str:
    names = {"user": "human", "assistant": "gpt"}
    return json.dumps({"conversations": [{"from": "system", "value": SYSTEM}]
                       + [{"from": names[r], "value": c} for r, c in turns], **fields})


def as_chatml(turns: list, **fields: Any) -> str:
    body = "\n".join(f"<|im_start|>{r}\n{c}<|im_end|>" for r, c in [("system", SYSTEM), *turns])
    return json.dumps({"text": body, **fields})


SPANISH = dialogue("I no like coffee.", "I don't like coffee.")
KOREAN = dialogue("I can swimming.", "I can swim.", "What comes after 'can'?")
CHINESE = dialogue("I am boring in class.", "I am bored in class.", "Who feels that way?")
ARABIC = dialogue("My friend he is tall.", "My friend is tall.", "Who is tall here?")
TELLS_OFF = [("user", "He go to school."), ("assistant", "That is wrong. Say 'he goes'. Ok?"),
             ("user", "He goes to school.")]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rows(db: Path, sql: str) -> list[Any]:
    led = open_ledger(str(db), readonly=True)
    try:
        with led.engine.connect() as conn:
            return conn.execute(text(sql)).all()
    finally:
        led.dispose()


def head_seq(db: Path) -> int:
    return rows(db, "SELECT head_seq FROM ledger_totals")[0][0]


@pytest.fixture
def mixed_file(tmp_path: Path) -> Path:
    return write(tmp_path / "scaffolding_combined.jsonl", [
        as_messages(SPANISH, l1="Spanish", error_type="negation_error", level="beginner"),
        as_sharegpt(KOREAN, l1="Korean", error_type="Gerund Error", level="Intermediate"),
        as_chatml(CHINESE, l1="Chinese (Mandarin)", error_type="participle_confusion",
                  level="advanced", model="moonshotai/kimi-k2.5"),
        as_messages(ARABIC),
    ])


def test_each_line_becomes_an_accepted_import_job(ledger_path: Path, mixed_file: Path) -> None:
    message = getattr(Commands(db=str(ledger_path)), "import")(str(mixed_file))
    assert "imported 4 of 4 dialogues" in message and "4 accepted" in message
    jobs = rows(ledger_path, "SELECT l1, pattern, level, erroneous, correct, source FROM jobs "
                             "ORDER BY seq")
    assert jobs == [
        ("spanish", "negation_error", "beginner", "Hello! I no like coffee.",
         "Hmm... I don't like coffee.", "import"),
        ("korean", "gerund_error", "intermediate", "Hello! I can swimming.",
         "Hmm... I can swim.", "import"),
        ("chinese", "participle_confusion", "advanced", "Hello! I am boring in class.",
         "Hmm... I am bored in class.", "import"),
        ("unknown", "unknown", "unknown", "Hello! My friend he is tall.",
         "Hmm... My friend is tall.", "import"),
    ]
    attempts = rows(ledger_path, """
        SELECT a.model_requested, a.run_id, o.cost_usd, o.cost_source, o.model_served, o.content
        FROM attempts a JOIN attempt_outcomes o ON o.attempt_id = a.attempt_id
        ORDER BY a.seq""")
    originals = mixed_file.read_text().splitlines()
    assert [a[:4] for a in attempts] == [("import", None, 0.0, "none")] * 4
    assert [a[4] for a in attempts] == [None, None, "moonshotai/kimi-k2.5", None]
    assert [a[5] for a in attempts] == originals
    assert rows(ledger_path, "SELECT state, attempts, spend_usd FROM job_state") == \
        [("accepted", 1, 0.0)] * 4
    verdicts = rows(ledger_path, "SELECT passed, filter_version, messages_json FROM verdicts")
    assert all(v[0] == 1 and v[1] == FILTER_VERSION for v in verdicts)
    assert json.loads(verdicts[0][2])[0] == {"role": "system", "content": SYSTEM}
    assert rows(ledger_path, "SELECT source_path, source_sha256, lines_total, lines_imported, "
                             "lines_skipped FROM imports") == [
        (str(mixed_file.resolve()), hashlib.sha256(mixed_file.read_bytes()).hexdigest(), 4, 4, 0)]


def test_importing_twice_adds_nothing(ledger_path: Path, mixed_file: Path,
                                      tmp_path: Path) -> None:
    cli = Commands(db=str(ledger_path))
    getattr(cli, "import")(str(mixed_file))
    before = head_seq(ledger_path)
    again = getattr(cli, "import")(str(mixed_file))
    assert "imported 0 of 4" in again and "4 already in the ledger" in again
    assert head_seq(ledger_path) == before
    # The same dialogue in another format is the same job.
    other = write(tmp_path / "other.jsonl", [as_chatml(SPANISH, l1="spanish")])
    assert "1 already in the ledger" in getattr(cli, "import")(str(other))
    assert head_seq(ledger_path) == before


def test_bad_lines_are_reported_by_number_and_skipped(ledger_path: Path,
                                                      tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", [
        as_messages(SPANISH, l1="spanish"),
        "{not json",
        "",
        json.dumps({"id": 7, "note": "no dialogue here"}),
        json.dumps(["a", "list"]),
        json.dumps({"messages": [{"role": "tool", "content": "x"}]}),
        json.dumps({"messages": [{"role": "assistant", "content": "Only the tutor?"}]}),
        as_messages(SPANISH, l1="spanish"),
    ])
    message = getattr(Commands(db=str(ledger_path)), "import")(str(path))
    assert "imported 1 of 7 dialogues" in message
    assert "1 repeated in the file" in message and "5 unreadable" in message
    for line_no, why in [(2, "not JSON"), (4, "no dialogue"), (5, "not a JSON object"),
                         (6, "unknown role 'tool'"), (7, "learner")]:
        assert f"line {line_no}: " in message
        assert why in message.split(f"line {line_no}: ")[1].splitlines()[0]
    assert rows(ledger_path, "SELECT lines_total, lines_imported, lines_skipped FROM imports") \
        == [(7, 1, 6)]


def test_a_dialogue_that_fails_the_filter_is_judged_but_not_accepted(ledger_path: Path,
                                                                     tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", [as_messages(TELLS_OFF, l1="korean")])
    message = getattr(Commands(db=str(ledger_path)), "import")(str(path))
    assert "0 accepted, 1 rejected" in message and "explicit_correction" in message
    passed, reasons = rows(ledger_path, "SELECT passed, reasons_json FROM verdicts")[0]
    assert passed == 0 and "explicit_correction" in json.loads(reasons)
    assert rows(ledger_path, "SELECT COUNT(*) FROM acceptances")[0][0] == 0
    assert rows(ledger_path, "SELECT state FROM job_state")[0][0] == "open"


def test_a_file_is_imported_whole_or_not_at_all(ledger_path: Path, mixed_file: Path) -> None:
    led = open_ledger(str(ledger_path))
    store = Store(led)
    try:
        parsed = parse_file(mixed_file, load_catalog())
        # The imports event is the transaction's last statement; make it fail.
        broken = dataclasses.replace(parsed, lines_total=None)
        with pytest.raises(Exception):
            append_import(store, broken)
    finally:
        store.close()
        led.dispose()
    assert head_seq(ledger_path) == 0
    assert rows(ledger_path, "SELECT COUNT(*) FROM jobs")[0][0] == 0
    assert rows(ledger_path, "SELECT COUNT(*) FROM job_state")[0][0] == 0


def test_projections_after_an_import_equal_a_rebuild(ledger_path: Path,
                                                     mixed_file: Path) -> None:
    led = open_ledger(str(ledger_path))
    try:
        import_file(led, mixed_file, load_catalog())
        snapshot = "SELECT * FROM job_state ORDER BY job_id"
        before = rows(ledger_path, snapshot), rows(ledger_path, "SELECT * FROM ledger_totals")
        store = Store(led)
        store.rebuild_projections()
        store.close()
        after = rows(ledger_path, snapshot), rows(ledger_path, "SELECT * FROM ledger_totals")
    finally:
        led.dispose()
    assert after == before


def test_planning_counts_imported_jobs(ledger_path: Path, tmp_path: Path) -> None:
    cells = [("Spanish", "negation_error", SPANISH), ("Korean", "gerund_error", KOREAN),
             ("Chinese", "participle_confusion", CHINESE), ("arabic", "pronoun_copy", ARABIC),
             ("Spanish", "subject_omission", dialogue("Is very hot today.", "It is very hot."))]
    path = write(tmp_path / "five.jsonl", [as_messages(t, l1=l1, error_type=p, level="beginner")
                                          for l1, p, t in cells])
    led = open_ledger(str(ledger_path))
    try:
        import_file(led, path, load_catalog())
        plan = plan_ledger(led, load_catalog(), 48)
    finally:
        led.dispose()
    assert plan.to_add == 43
    per_cell = rows(ledger_path, "SELECT l1, pattern, COUNT(*) FROM jobs GROUP BY l1, pattern")
    assert len(per_cell) == 48 and {n for _l1, _p, n in per_cell} == {1}


def test_imported_dialogues_export_with_their_own_system_prompt(ledger_path: Path,
                                                                mixed_file: Path,
                                                                tmp_path: Path) -> None:
    cli = Commands(db=str(ledger_path))
    getattr(cli, "import")(str(mixed_file))
    cli.export(out=str(tmp_path / "out.jsonl"))
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["source"] for r in records} == {"import"}
    assert records[0]["messages"][0]["content"] == SYSTEM
    assert records[2]["model"] == "moonshotai/kimi-k2.5" and records[0]["model"] == "import"


def test_unusable_files_are_usage_errors(ledger_path: Path, tmp_path: Path) -> None:
    cli = Commands(db=str(ledger_path))
    with pytest.raises(UsageError, match="not found"):
        getattr(cli, "import")(str(tmp_path / "missing.jsonl"))
    junk = write(tmp_path / "junk.jsonl", ["{oops", "42"])
    with pytest.raises(UsageError, match="holds no dialogue; line 1: not JSON"):
        getattr(cli, "import")(str(junk))
    surrogate = write(tmp_path / "s.jsonl", [
        as_messages(SPANISH, topic="caf\\ud800").replace("\\\\ud800", "\\ud800")])
    with pytest.raises(UsageError, match="not valid Unicode"):
        getattr(cli, "import")(str(surrogate))
    assert head_seq(ledger_path) == 0



def test_importing_this_ledgers_own_export_adds_nothing(ledger_path: Path,
                                                        tmp_path: Path) -> None:
    """Every line of an export names its job and accepted attempt: imported back into the
    ledger that made it, each dialogue counted again as a new job, and the next export held
    it twice. A line whose dialogue differs from the ledger's (edited, or another ledger's
    with the same job ids) is still a new dialogue."""
    from ledger.launch import run
    from ledger.runconfig import RunConfig
    from ledger.simulator import Simulator
    from ledger.simulator_config import SimConfig

    led = open_ledger(str(ledger_path))
    sim = Simulator(SimConfig.from_kwargs(api_key="sk-test-import-key-0123456789",
                                          latency_ms=1, seed=3))
    sim.start()
    try:
        plan_ledger(led, load_catalog(), 12)
        launch = run(led, RunConfig(concurrency=2), base_url=sim.base_url, quiet=True,
                     api_key="sk-test-import-key-0123456789")
        assert launch.result.stats.accepted == 12
    finally:
        sim.stop()
        led.dispose()
    cli = Commands(db=str(ledger_path))
    for fmt in ("messages", "sharegpt", "chatml"):
        out = tmp_path / f"own.{fmt}.jsonl"
        cli.export(out=str(out), format=fmt)
        led = open_ledger(str(ledger_path))
        try:
            result = import_file(led, out, load_catalog())
        finally:
            led.dispose()
        assert (len(result.imported), result.already) == (0, 12), fmt
    assert rows(ledger_path, "SELECT COUNT(*), COUNT(DISTINCT source) FROM jobs") == [(12, 1)]

    lines = [json.loads(x) for x in (tmp_path / "own.messages.jsonl").read_text().splitlines()]
    lines[0]["messages"][-1]["content"] += " Shall we try another one?"  # an edited dialogue
    lines[1]["job_id"] = lines[2]["job_id"]  # an attempt that is not that job's
    changed = write(tmp_path / "changed.jsonl", [json.dumps(x) for x in lines[:3]])
    led = open_ledger(str(ledger_path))
    try:
        result = import_file(led, changed, load_catalog())
    finally:
        led.dispose()
    assert (len(result.imported), result.already) == (2, 1)
    assert rows(ledger_path, "SELECT COUNT(*) FROM jobs WHERE source = 'import'") == [(2,)]
