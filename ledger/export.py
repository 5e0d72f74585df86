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

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import make_url

from . import __version__
from .atomic import (AtomicWriter, BackgroundWriter, atomic_write, check_target,
                     write_bytes_atomic, written_behind)
from .db import Ledger
from .errors import UsageError
from .export_lines import (Encoded, chatml_json, checked_messages, format_lines, json_string,
                           messages_of, sharegpt_json)
from .records import utc_now

FORMATS: tuple[str, ...] = ("messages", "sharegpt", "chatml")
_BATCH_ROWS = 5000
# Below this many dialogues a second process is not worth its start (~0.3 s).
SPLIT_MIN_ROWS = 100_000

# Accepted dialogues from the base tables: the acceptance names the attempt and the verdict
# whose messages are the dialogue.
_ACCEPTED_COLUMNS = """j.job_id, acc.attempt_id, j.l1, j.pattern, j.level,
       COALESCE(o.model_served, a.model_requested), a.prompt_version, v.filter_version,
       j.source, v.messages_json"""
_ACCEPTED_SQL = """
SELECT {select}
FROM jobs j
JOIN acceptances acc ON acc.job_id = j.job_id
JOIN attempts a ON a.attempt_id = acc.attempt_id
JOIN verdicts v ON v.verdict_id = acc.verdict_id
JOIN attempt_outcomes o ON o.attempt_id = acc.attempt_id
{where}
ORDER BY j.seq"""
_POSITION_SQL = text("SELECT head_seq, head_hash FROM ledger_totals WHERE id = 1")
# Where to cut a big export in two: the median plan position of a sample of the accepted jobs
# (every n-th acceptance by seq, read from its seq index). Filters are left out: the cut only
# balances the two halves, any cut gives the same file.
_ACCEPTED_COUNT_SQL = "SELECT COUNT(*) FROM acceptances WHERE seq <= ?"
_CUT_SAMPLE_SQL = """SELECT j.seq FROM acceptances acc CROSS JOIN jobs j ON j.job_id = acc.job_id
WHERE acc.seq <= ? AND acc.seq % ? = 0"""
_CUT_SAMPLES = 2048

# On SQLite the metadata part of each line is spelled out by the query itself (json_quote),
# so a row reaches Python as a few strings instead of ten values: building Python objects for
# the columns, not the join, was most of an export's time. Keys in sorted order, as above.
_LINE_FIELDS = (("attempt_id", "acc.attempt_id"), ("error_type", "json_quote(j.pattern)"),
                ("filter_version", "json_quote(v.filter_version)"),
                ("job_id", "json_quote(j.job_id)"), ("l1", "json_quote(j.l1)"),
                ("level", "json_quote(j.level)"),
                ("model", "json_quote(COALESCE(o.model_served, a.model_requested))"),
                ("prompt_version", "json_quote(a.prompt_version)"),
                ("source", "json_quote(j.source)"))
_BODY_KEYS = {"messages": "messages", "sharegpt": "conversations", "chatml": "text"}
# Strings whose JSON escaping must come out of json_quote exactly as out of Python's encoder
# (checked on the connection before the query is trusted with a line).
_QUOTE_PROBE = 'a"\\/\x00\x01\x08\t\n\x0b\x0c\r\x1f\x7f\x80\u00e9\u2028\u2029\ufeff\U0001f600z'


def _line_parts_sql(fmt: str) -> tuple[str, str]:
    """SQL expressions for the line up to the dialogue's value, and after it."""
    body = _BODY_KEYS[fmt]
    keys = sorted([name for name, _ in _LINE_FIELDS] + [body])
    fields = dict(_LINE_FIELDS)
    cut = keys.index(body)
    # Each field's text starts with its separator: "{" for the line's first key, "," after.
    pieces = [f"'{'{' if i == 0 else ','}\"{key}\":'" + (f" || {fields[key]}" if key != body
                                                          else "")
              for i, key in enumerate(keys)]
    return " || ".join(pieces[:cut + 1]), " || ".join(pieces[cut + 1:] + ["'}'"])


@dataclass(frozen=True)
class ExportFilters:
    """Which accepted dialogues to export; None means all."""

    l1s: tuple[str, ...] | None = None
    patterns: tuple[str, ...] | None = None
    levels: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None

    @classmethod
    def from_names(cls, l1s: Sequence[str] | None = None, patterns: Sequence[str] | None = None,
                   levels: Sequence[str] | None = None,
                   models: Sequence[str] | None = None) -> ExportFilters:
        """Ids are stored lowercase; model names are case-sensitive slugs and kept as given."""
        def ids(values: Sequence[str] | None) -> tuple[str, ...] | None:
            return tuple(sorted({v.strip().lower() for v in values})) if values else None

        return cls(ids(l1s), ids(patterns), ids(levels),
                   tuple(sorted({m.strip() for m in models})) if models else None)

    def as_dict(self) -> dict[str, list[str] | None]:
        return {"l1": _listed(self.l1s), "pattern": _listed(self.patterns),
                "level": _listed(self.levels), "model": _listed(self.models)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[str] | None]) -> ExportFilters:
        """The filters as_dict gave, back (as the manifest and the export helper carry them)."""
        def kept(key: str) -> tuple[str, ...] | None:
            values = d.get(key)
            return tuple(values) if values else None

        return cls(kept("l1"), kept("pattern"), kept("level"), kept("model"))


def _listed(values: tuple[str, ...] | None) -> list[str] | None:
    return list(values) if values else None


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


def _filter_clauses(filters: ExportFilters) -> list[tuple[str, str, tuple[str, ...]]]:
    """(column or columns, bind name, values) of each filter given."""
    chosen = [(column, name, values) for name, column, values in (
        ("l1s", "j.l1", filters.l1s), ("patterns", "j.pattern", filters.patterns),
        ("levels", "j.level", filters.levels)) if values]
    if filters.models:
        chosen.append(("o.model_served|a.model_requested", "models", filters.models))
    return chosen


def _accepted_statement(filters: ExportFilters) -> tuple[Any, dict[str, list[str]]]:
    clauses, params = [], {}
    for column, name, values in _filter_clauses(filters):
        clauses.append(" OR ".join(f"{c} IN :{name}" for c in column.split("|")))
        params[name] = list(values)
    stmt = text(_ACCEPTED_SQL.format(select=_ACCEPTED_COLUMNS, where=_where(clauses)))
    if params:
        stmt = stmt.bindparams(*(bindparam(name, expanding=True) for name in params))
    return stmt, params


def _sqlite_statement(filters: ExportFilters, select: str = _ACCEPTED_COLUMNS,
                      rows: RowRange | None = None) -> tuple[str, list[Any]]:
    """The same query for the DBAPI cursor: qmark placeholders, one per value; `select` is
    the column list; `rows` narrows it to a slice of one snapshot (see RowRange)."""
    clauses, params = [], []
    for column, _name, values in _filter_clauses(filters):
        marks = ",".join("?" * len(values))
        columns = column.split("|")
        clauses.append(" OR ".join(f"{c} IN ({marks})" for c in columns))
        params.extend(list(values) * len(columns))
    if rows is not None:
        # Unary + keeps SQLite off the acceptances' seq index for this bound: with it, the
        # planner reads acceptances in seq order and sorts every built line by job order in a
        # temporary B-tree (a 900,000-row export: 1.7 s of its 8.8 s on one core); without it,
        # the jobs' seq index gives the file's order as it reads.
        clauses.append("+acc.seq <= ?")
        params.append(rows.head_seq)
        if rows.after_job_seq is not None:
            clauses.append("j.seq > ?")
            params.append(rows.after_job_seq)
        if rows.upto_job_seq is not None:
            clauses.append("j.seq <= ?")
            params.append(rows.upto_job_seq)
    return _ACCEPTED_SQL.format(select=select, where=_where(clauses)), params


def _sqlite_line_select(fmt: str) -> str:
    """Columns: the line's start, the stored messages, the line's end, filter version, prompt
    version, attempt id. For the messages format the stored messages JSON goes in verbatim, so
    the whole line is built by the query (NULL when the stored messages are not a JSON array)."""
    head, tail = _line_parts_sql(fmt)
    if fmt == "messages":
        line = f"{head} || CASE WHEN v.messages_json LIKE '[%' THEN v.messages_json END || {tail}"
        return f"{line}, NULL, NULL, v.filter_version, a.prompt_version, acc.attempt_id"
    # Reshaping the dialogue itself is faster in Python than with SQLite's json_each.
    return (f"{head}, v.messages_json, {tail}, v.filter_version, a.prompt_version, "
            "acc.attempt_id")


def _where(clauses: list[str]) -> str:
    return ("WHERE " + " AND ".join(f"({c})" for c in clauses)) if clauses else ""


def _cursor_batches(cursor: Any) -> Iterator[list[tuple[Any, ...]]]:
    while rows := cursor.fetchmany(_BATCH_ROWS):
        yield rows


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
                sql, values = _sqlite_statement(filters)
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                try:
                    cursor.execute(sql, values)
                    yield position, _cursor_batches(cursor)
                finally:
                    cursor.close()
                return
            stmt, params = _accepted_statement(filters)
            # stream_results: a server-side cursor on PostgreSQL.
            result = conn.execution_options(stream_results=True).execute(stmt, params)
            yield position, result.partitions(_BATCH_ROWS)


@dataclass(frozen=True)
class Written:
    """What a writer put in the file: lines, the versions they carry, processes that wrote."""

    count: int
    filter_versions: frozenset[str]
    prompt_versions: frozenset[str]
    processes: int = 1

    def __add__(self, other: Written) -> Written:
        return Written(self.count + other.count, self.filter_versions | other.filter_versions,
                       self.prompt_versions | other.prompt_versions,
                       self.processes + other.processes)


def _quote_matches(dbapi_conn: Any) -> bool:
    """Whether this SQLite's json_quote escapes exactly as Python's JSON encoder does."""
    try:
        row = dbapi_conn.execute("SELECT json_quote(?)", (_QUOTE_PROBE,)).fetchone()
    except Exception:  # noqa: BLE001 - no JSON functions in this build: use the Python path
        return False
    return bool(row) and row[0] == json_string(_QUOTE_PROBE)


@dataclass(frozen=True)
class RowRange:
    """A slice of the export as of one ledger position, readable from any connection: events
    are append-only and seq grows with every commit, so the acceptances a snapshot at
    `head_seq` sees are exactly those with seq <= head_seq, and everything they join to is
    older still. Jobs are cut by plan order: (after_job_seq, upto_job_seq]."""

    head_seq: int
    after_job_seq: int | None = None
    upto_job_seq: int | None = None


def write_sqlite_part(dbapi_conn: Any, fmt: str, filters: ExportFilters, rows: RowRange,
                      sink: Any) -> Written:
    """The export lines of `rows`, built by the query, written to `sink` (anything with
    write(bytes))."""
    sql, values = _sqlite_statement(filters, _sqlite_line_select(fmt), rows)
    cursor = dbapi_conn.cursor()
    body = {"sharegpt": sharegpt_json, "chatml": chatml_json}.get(fmt)

    def lines_of(batch: Sequence[Sequence[Any]]) -> list[str]:
        if body is None:
            lines = [r[0] for r in batch]
            if None in lines:
                _inconsistent(dbapi_conn, batch[lines.index(None)][5])
            return lines
        return [h + body(messages_of(m)) + t if m and m[0] == "[" else
                _inconsistent(dbapi_conn, a) for h, m, t, _f, _p, a in batch]

    try:
        cursor.execute(sql, values)
        return _write_all(_cursor_batches(cursor), lines_of, sink, 3, 4)
    finally:
        cursor.close()


def _write_sqliteformat_lines(ledger: Ledger, fmt: str, filters: ExportFilters,
                        sink: AtomicWriter | BackgroundWriter, split_min_rows: int,
                        scratch: Path) -> tuple[LedgerPosition, Written] | None:
    """The export with lines built by the query; None (nothing written) when this SQLite's
    json_quote cannot be trusted to give the Python encoder's bytes. A big export is cut in
    two by plan order and the later half is written by a second process (export_split), its
    bytes held in an unnamed file in `scratch`; when no helper can be started, this process
    writes it all."""
    from .export_split import Helper, helper_database

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
                                  scratch)
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


def split_point(dbapi_conn: Any, head_seq: int, min_rows: int) -> int | None:
    """The job seq that cuts the export as of `head_seq` into two halves of about equal size;
    None when it holds fewer than `min_rows` dialogues."""
    total = dbapi_conn.execute(_ACCEPTED_COUNT_SQL, (head_seq,)).fetchone()[0]
    if total < max(min_rows, 2):
        return None
    step = max(1, total // _CUT_SAMPLES)
    seqs = sorted(r[0] for r in dbapi_conn.execute(_CUT_SAMPLE_SQL, (head_seq, step)))
    return seqs[len(seqs) // 2] if seqs else None


def _inconsistent(dbapi_conn: Any, attempt_id: int) -> str:
    row = dbapi_conn.execute("SELECT job_id FROM acceptances WHERE attempt_id = ?",
                             (attempt_id,)).fetchone()
    return checked_messages(None, row[0] if row else None, attempt_id)


def _write_batches(fmt: str, batches: Iterable[Sequence[Sequence[Any]]],
                   sink: AtomicWriter | BackgroundWriter) -> Written:
    """Rows as returned by accepted_rows, formatted in Python."""
    enc = Encoded()
    return _write_all(batches, lambda rows: format_lines(fmt, rows, enc), sink, 7, 6)


def _write_all(batches: Iterable[Sequence[Sequence[Any]]],
               lines_of: Callable[[Sequence[Sequence[Any]]], list[str]],
               sink: AtomicWriter | BackgroundWriter, filter_col: int,
               prompt_col: int) -> Written:
    """One encode and one write (and hash update) per batch, not per line; the versions seen
    are read from the rows' `filter_col` and `prompt_col`."""
    count = 0
    filter_versions: set[str] = set()
    prompt_versions: set[str] = set()
    for rows in batches:
        lines = lines_of(rows)
        lines.append("")
        sink.write("\n".join(lines).encode("utf-8"))
        count += len(rows)
        filter_versions.update([r[filter_col] for r in rows])
        prompt_versions.update([r[prompt_col] for r in rows])
    return Written(count, frozenset(filter_versions), frozenset(prompt_versions))


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
    started = time.perf_counter()
    with atomic_write(path, overwrite=force) as sink, written_behind(sink) as pipe:
        done = (_write_sqliteformat_lines(ledger, fmt, filters, pipe, split_min_rows, path.parent)
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
    lines = [f"exported {result.count:,} dialogues ({result.format}) to {result.path} "
             f"({result.bytes:,} bytes, sha256 {result.sha256[:16]}) in {result.seconds:.2f} s "
             f"({rate:,.0f}/s{', 2 processes' if result.processes == 2 else ''})",
             f"manifest: {result.manifest_path} (ledger at seq {result.position.head_seq})"]
    if result.count == 0:
        lines.append("no accepted dialogue matches: run `python cli.py run` first, or widen "
                     "--l1/--pattern/--level/--model")
    return "\n".join(lines)
