"""Training exports: the accepted dialogues as JSONL in the shape a trainer takes, plus a manifest.

Each line is one accepted job: the chat messages of the verdict that accepted it, with the job and
attempt ids that trace it back to the ledger. The same ledger always gives a byte-identical file
(rows in job order, keys sorted, fixed separators), written atomically; the manifest beside it
records the count, the file's SHA-256, the filters and the ledger position it was read at.

Formats:
  messages  {"messages": [{"role", "content"}, ...], ...}     (TRL / Hugging Face chat datasets)
  sharegpt  {"conversations": [{"from": "system"|"human"|"gpt", "value"}, ...], ...}
  chatml    {"text": "<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n...", ...}
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import make_url

from . import __version__
from .atomic import (AtomicWriter, BackgroundWriter, atomic_write, check_target,
                     write_bytes_atomic, written_behind)
from .db import BUSY_TIMEOUT_MS, Ledger, refuse_ledger_target
from .errors import UsageError
from .export_lines import Encoded, format_lines, json_string
from .export_rows import (ACCEPTED_COLUMNS, ACCEPTED_SQL, BATCH_ROWS, ExportFilters, RowRange,
                          Written, cursor_batches, filter_clauses, sqlite_statement, where_sql,
                          write_all, write_sqlite_part)
from .export_split import Helper
from .records import utc_now

FORMATS: tuple[str, ...] = ("messages", "sharegpt", "chatml")
# Below this many dialogues (about a second of one core's work) a second process leaves little
# to gain: it takes 0.06 s to start, and its half is copied into the file after this one's.
SPLIT_MIN_ROWS = 100_000

_POSITION_SQL = text("SELECT head_seq, head_hash FROM ledger_totals WHERE id = 1")
# Where to cut a big export in two: the median plan position of a sample of the accepted jobs
# (every n-th acceptance by seq, read from its seq index). Filters are left out: the cut only
# balances the two halves, any cut gives the same file.
_ACCEPTED_COUNT_SQL = "SELECT COUNT(*) FROM acceptances WHERE seq <= ?"
_CUT_SAMPLE_SQL = """SELECT j.seq FROM acceptances acc CROSS JOIN jobs j ON j.job_id = acc.job_id
WHERE acc.seq <= ? AND acc.seq % ? = 0"""
_CUT_SAMPLES = 2048

# Strings whose JSON escaping must come out of json_quote exactly as out of Python's encoder
# (checked on the connection before the query is trusted with a line).
_QUOTE_PROBE = 'a"\\/\x00\x01\x08\t\n\x0b\x0c\r\x1f\x7f\x80\u00e9\u2028\u2029\ufeff\U0001f600z'


@dataclass(frozen=True)
class LedgerPosition:
    head_seq: int
    head_hash: str


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest_path: Path
    format: str
    count: int
    bytes: int
    sha256: str
    seconds: float
    position: LedgerPosition
    processes: int = 1  # 2 when a helper process wrote the later half


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    return fmt


def _accepted_statement(filters: ExportFilters, head_seq: int | None = None
                        ) -> tuple[Any, dict[str, Any]]:
    clauses, params = [], {}
    for column, name, values in filter_clauses(filters):
        clauses.append(" OR ".join(f"{c} IN :{name}" for c in column.split("|")))
        params[name] = list(values)
    if head_seq is not None:  # the acceptances a snapshot at head_seq saw (see RowRange)
        clauses.append("acc.seq <= :head_seq")
        params["head_seq"] = int(head_seq)
    stmt = text(ACCEPTED_SQL.format(select=ACCEPTED_COLUMNS, where=where_sql(clauses)))
    lists = [name for name, value in params.items() if isinstance(value, list)]
    if lists:
        stmt = stmt.bindparams(*(bindparam(name, expanding=True) for name in lists))
    return stmt, params


@contextmanager
def accepted_rows(ledger: Ledger, filters: ExportFilters = ExportFilters()
                  ) -> Iterator[tuple[LedgerPosition, Iterator[Sequence[Any]]]]:
    """The ledger position and the accepted rows (in batches), read in one snapshot so the
    position names exactly the state the rows came from. Rows: job_id, attempt_id, l1,
    pattern, level, model, prompt_version, filter_version, source, messages_json."""
    with ledger.engine.connect() as conn:
        if ledger.dialect == "postgresql":
            # One snapshot for the position and every row, without blocking writers.
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            row = conn.execute(_POSITION_SQL).one()
            position = LedgerPosition(int(row[0]), str(row[1]))
            if ledger.dialect == "sqlite":
                # Plain tuples from the driver's cursor, inside the transaction begun above:
                # result rows cost more to build than the export spends on a line.
                sql, values = sqlite_statement(filters)
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                try:
                    cursor.execute(sql, values)
                    yield position, cursor_batches(cursor)
                finally:
                    cursor.close()
                return
            stmt, params = _accepted_statement(filters)
            # stream_results: a server-side cursor on PostgreSQL.
            result = conn.execution_options(stream_results=True).execute(stmt, params)
            yield position, result.partitions(BATCH_ROWS)


def _quote_matches(dbapi_conn: Any) -> bool:
    """Whether this SQLite's json_quote escapes exactly as Python's JSON encoder does."""
    try:
        row = dbapi_conn.execute("SELECT json_quote(?)", (_QUOTE_PROBE,)).fetchone()
    except Exception:  # noqa: BLE001 - no JSON functions in this build: use the Python path
        return False
    return bool(row) and row[0] == json_string(_QUOTE_PROBE)


def _write_sqlite_lines(ledger: Ledger, fmt: str, filters: ExportFilters,
                        sink: AtomicWriter | BackgroundWriter, split_min_rows: int,
                        scratch: Path) -> tuple[LedgerPosition, Written] | None:
    """The export with lines built by the query; None (nothing written) when this SQLite's
    json_quote cannot be trusted to give the Python encoder's bytes. A big export is cut in
    two by plan order and the later half is written by a second process (export_split), its
    bytes held in an unnamed file in `scratch`; when no helper can be started, this process
    writes it all."""
    with ledger.engine.connect() as conn, conn.begin():
        dbapi_conn = conn.connection.dbapi_connection
        if not _quote_matches(dbapi_conn):
            return None
        row = conn.execute(_POSITION_SQL).one()
        position = LedgerPosition(int(row[0]), str(row[1]))
        database = helper_database(ledger)
        split = (split_point(dbapi_conn, position.head_seq, split_min_rows)
                 if database is not None else None)
        helper = None
        if database is not None and split is not None:
            helper = Helper.start(database, fmt, filters, RowRange(position.head_seq, split),
                                  scratch, BUSY_TIMEOUT_MS)
            if helper is None:
                split = None
        try:
            written = write_sqlite_part(dbapi_conn, fmt, filters,
                                        RowRange(position.head_seq, upto_job_seq=split), sink)
            if helper is not None:
                written += helper.finish(sink)
        finally:
            if helper is not None:
                helper.stop()
    return position, written


def helper_database(ledger: Ledger) -> Path | None:
    """The ledger's file when a helper process can share the work: a SQLite file, and a
    second core this process may use."""
    if ledger.dialect != "sqlite" or len(os.sched_getaffinity(0)) < 2:
        return None
    name = make_url(ledger.url).database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name).resolve()


def split_point(dbapi_conn: Any, head_seq: int, min_rows: int) -> int | None:
    """The job seq that cuts the export as of `head_seq` into two halves of about equal size;
    None when it holds fewer than `min_rows` dialogues."""
    total = dbapi_conn.execute(_ACCEPTED_COUNT_SQL, (head_seq,)).fetchone()[0]
    if total < max(min_rows, 2):
        return None
    step = max(1, total // _CUT_SAMPLES)
    seqs = sorted(r[0] for r in dbapi_conn.execute(_CUT_SAMPLE_SQL, (head_seq, step)))
    return seqs[len(seqs) // 2] if seqs else None


def _write_batches(fmt: str, batches: Iterable[Sequence[Sequence[Any]]],
                   sink: AtomicWriter | BackgroundWriter) -> Written:
    """Rows as returned by accepted_rows, formatted in Python."""
    enc = Encoded()
    return write_all(batches, lambda rows: format_lines(fmt, rows, enc), sink, 7, 6)


class _Digest:
    """A sink that only hashes and counts what is written."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        self._sha.update(data)
        self.bytes_written += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


def export_sha256(ledger: Ledger, fmt: str, filters: ExportFilters, head_seq: int
                  ) -> tuple[str, int]:
    """The SHA-256 and line count of the export the ledger gave at `head_seq`: events are
    append-only, so the acceptances with seq <= head_seq (and everything they join to) are
    the rows that export read, on any connection and at any later time."""
    check_format(fmt)
    sink = _Digest()
    with ledger.engine.connect() as conn, conn.begin():
        if ledger.dialect == "sqlite":
            # The lines as the export's own query builds them (the same bytes, and fast).
            written = write_sqlite_part(conn.connection.dbapi_connection, fmt, filters,
                                        RowRange(int(head_seq)), sink)
        else:
            stmt, params = _accepted_statement(filters, head_seq)
            written = _write_batches(fmt, conn.execute(stmt, params).partitions(BATCH_ROWS),
                                     sink)
    return sink.sha256, written.count


def manifest_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


def write_manifest(data_path: Path, manifest: Mapping[str, Any]) -> Path:
    target = manifest_path_for(data_path)
    body = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes_atomic(target, body.encode("utf-8"))
    return target


def ledger_display(ledger: Ledger) -> str:
    return make_url(ledger.url).render_as_string(hide_password=True)


def export_dialogues(ledger: Ledger, out: str | Path, fmt: str = "messages",
                     filters: ExportFilters = ExportFilters(), force: bool = False,
                     split_min_rows: int = SPLIT_MIN_ROWS) -> ExportResult:
    """Write the accepted dialogues to `out` (atomically) and its manifest beside it. An
    export of at least `split_min_rows` dialogues from a SQLite file is written by two
    processes where two cores are free; the bytes are the same either way."""
    check_format(fmt)
    path = Path(out)
    check_target(path, force)
    refuse_ledger_target(ledger, path)
    started = time.perf_counter()
    with atomic_write(path, overwrite=force) as sink, written_behind(sink) as pipe:
        done = (_write_sqlite_lines(ledger, fmt, filters, pipe, split_min_rows, path.parent)
                if ledger.dialect == "sqlite" else None)
        if done is not None:
            position, written = done
        else:
            with accepted_rows(ledger, filters) as (position, batches):
                written = _write_batches(fmt, batches, pipe)
    seconds = time.perf_counter() - started
    manifest = {
        "file": path.name, "format": fmt, "count": written.count, "bytes": sink.bytes_written,
        "sha256": sink.sha256, "filters": filters.as_dict(),
        "ledger": {"database": ledger_display(ledger), "head_seq": position.head_seq,
                   "head_hash": position.head_hash},
        "filter_versions": sorted(written.filter_versions),
        "prompt_versions": sorted(written.prompt_versions),
        "created_at_utc": utc_now(), "tool": "scaffold-ledger", "tool_version": __version__,
    }
    manifest_path = write_manifest(path, manifest)
    return ExportResult(path=path, manifest_path=manifest_path, format=fmt, count=written.count,
                        bytes=sink.bytes_written, sha256=sink.sha256, seconds=seconds,
                        position=position, processes=written.processes)


def export_text(result: ExportResult) -> str:
    rate = result.count / result.seconds if result.seconds > 0 else 0.0
    lines = [f"exported {result.count:,} dialogue{'' if result.count == 1 else 's'} "
             f"({result.format}) to {result.path} "
             f"({result.bytes:,} bytes, sha256 {result.sha256[:16]}) in {result.seconds:.2f} s "
             f"({rate:,.0f}/s{', 2 processes' if result.processes == 2 else ''})",
             f"manifest: {result.manifest_path} (ledger at seq {result.position.head_seq})"]
    if result.count == 0:
        lines.append("no accepted dialogue matches: run `python cli.py run` first, or widen "
                     "--l1/--pattern/--level/--model")
    return "\n".join(lines)
