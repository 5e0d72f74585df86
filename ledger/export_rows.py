"""The export's rows on SQLite: which accepted dialogues (ExportFilters, RowRange), the query
that builds their JSONL lines, and the writing of one range of them to a file.

Kept free of SQLAlchemy: the helper process of a two-process export imports only this module
(and export_lines), so it starts reading rows about 0.25 s sooner than with the engine's imports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .export_lines import chatml_json, checked_messages, messages_of, sharegpt_json

BATCH_ROWS = 5000

# Accepted dialogues from the base tables: the acceptance names the attempt and the verdict
# whose messages are the dialogue.
ACCEPTED_COLUMNS = """j.job_id, acc.attempt_id, j.l1, j.pattern, j.level,
       COALESCE(o.model_served, a.model_requested), a.prompt_version, v.filter_version,
       j.source, v.messages_json"""
ACCEPTED_SQL = """
SELECT {select}
FROM jobs j
JOIN acceptances acc ON acc.job_id = j.job_id
JOIN attempts a ON a.attempt_id = acc.attempt_id
JOIN verdicts v ON v.verdict_id = acc.verdict_id
JOIN attempt_outcomes o ON o.attempt_id = acc.attempt_id
{where}
ORDER BY j.seq"""

# On SQLite the metadata part of each line is spelled out by the query itself (json_quote),
# so a row reaches Python as a few strings instead of ten values: building Python objects for
# the columns, not the join, was most of an export's time. Keys in sorted order, as
# json.dumps(sort_keys=True) writes them (export_lines gives the Python path's same bytes).
_LINE_FIELDS = (("attempt_id", "acc.attempt_id"), ("error_type", "json_quote(j.pattern)"),
                ("filter_version", "json_quote(v.filter_version)"),
                ("job_id", "json_quote(j.job_id)"), ("l1", "json_quote(j.l1)"),
                ("level", "json_quote(j.level)"),
                ("model", "json_quote(COALESCE(o.model_served, a.model_requested))"),
                ("prompt_version", "json_quote(a.prompt_version)"),
                ("source", "json_quote(j.source)"))
_BODY_KEYS = {"messages": "messages", "sharegpt": "conversations", "chatml": "text"}


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


def filter_clauses(filters: ExportFilters) -> list[tuple[str, str, tuple[str, ...]]]:
    """(column or columns, bind name, values) of each filter given."""
    chosen = [(column, name, values) for name, column, values in (
        ("l1s", "j.l1", filters.l1s), ("patterns", "j.pattern", filters.patterns),
        ("levels", "j.level", filters.levels)) if values]
    if filters.models:
        chosen.append(("o.model_served|a.model_requested", "models", filters.models))
    return chosen


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
    sql, values = sqlite_statement(filters, sqlite_line_select(fmt), rows)
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
        return write_all(cursor_batches(cursor), lines_of, sink, 3, 4)
    finally:
        cursor.close()


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


def sqlite_statement(filters: ExportFilters, select: str = ACCEPTED_COLUMNS,
                      rows: RowRange | None = None) -> tuple[str, list[Any]]:
    """ACCEPTED_SQL for the DBAPI cursor: qmark placeholders, one per value; `select` is
    the column list; `rows` narrows it to a slice of one snapshot (see RowRange)."""
    clauses, params = [], []
    for column, _name, values in filter_clauses(filters):
        marks = ",".join("?" * len(values))
        columns = column.split("|")
        clauses.append(" OR ".join(f"{c} IN ({marks})" for c in columns))
        params.extend(list(values) * len(columns))
    if rows is not None:
        # Unary + keeps SQLite off the acceptances' seq index for this bound: with it, the
        # planner reads acceptances in seq order and sorts every built line by job order in a
        # temporary B-tree (a 900,000-row export: 1.7 s of its 8.8 s on one core); without it,
        # the jobs' seq index gives the file's order as it reads.
        # int(): with the + the column's type no longer converts a text bound.
        clauses.append("+acc.seq <= ?")
        params.append(int(rows.head_seq))
        if rows.after_job_seq is not None:
            clauses.append("j.seq > ?")
            params.append(int(rows.after_job_seq))
        if rows.upto_job_seq is not None:
            clauses.append("j.seq <= ?")
            params.append(int(rows.upto_job_seq))
    return ACCEPTED_SQL.format(select=select, where=where_sql(clauses)), params


def sqlite_line_select(fmt: str) -> str:
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


def where_sql(clauses: list[str]) -> str:
    return ("WHERE " + " AND ".join(f"({c})" for c in clauses)) if clauses else ""


def cursor_batches(cursor: Any) -> Iterator[list[tuple[Any, ...]]]:
    while rows := cursor.fetchmany(BATCH_ROWS):
        yield rows


def _inconsistent(dbapi_conn: Any, attempt_id: int) -> str:
    row = dbapi_conn.execute("SELECT job_id FROM acceptances WHERE attempt_id = ?",
                             (attempt_id,)).fetchone()
    return checked_messages(None, row[0] if row else None, attempt_id)


def write_all(batches: Iterable[Sequence[Sequence[Any]]],
              lines_of: Callable[[Sequence[Sequence[Any]]], list[str]], sink: Any,
              filter_col: int, prompt_col: int) -> Written:
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
