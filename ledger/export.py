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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import make_url

from . import __version__
from .atomic import atomic_write, check_target, write_bytes_atomic
from .db import Ledger
from .errors import LedgerError, UsageError
from .records import utc_now

FORMATS: tuple[str, ...] = ("messages", "sharegpt", "chatml")
SHAREGPT_ROLES: Mapping[str, str] = {"system": "system", "user": "human", "assistant": "gpt"}
_BATCH_ROWS = 2000

# One encoder built once: json.dumps with options builds a new encoder on every call.
encode_line = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                               check_circular=False).encode
_decode = json.JSONDecoder().decode
_enc = encode_basestring

# Accepted dialogues from the base tables: the acceptance names the attempt and the verdict
# whose messages are the dialogue.
_ACCEPTED_SQL = """
SELECT j.job_id, acc.attempt_id, j.l1, j.pattern, j.level,
       COALESCE(o.model_served, a.model_requested), a.prompt_version, v.filter_version,
       j.source, v.messages_json
FROM jobs j
JOIN acceptances acc ON acc.job_id = j.job_id
JOIN attempts a ON a.attempt_id = acc.attempt_id
JOIN verdicts v ON v.verdict_id = acc.verdict_id
JOIN attempt_outcomes o ON o.attempt_id = acc.attempt_id
{where}
ORDER BY j.seq"""
_POSITION_SQL = text("SELECT head_seq, head_hash FROM ledger_totals WHERE id = 1")


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


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    return fmt


def _accepted_statement(filters: ExportFilters) -> tuple[Any, dict[str, list[str]]]:
    clauses, params = [], {}
    for name, column, values in (("l1s", "j.l1", filters.l1s),
                                 ("patterns", "j.pattern", filters.patterns),
                                 ("levels", "j.level", filters.levels)):
        if values:
            clauses.append(f"{column} IN :{name}")
            params[name] = list(values)
    if filters.models:
        clauses.append("(o.model_served IN :models OR a.model_requested IN :models)")
        params["models"] = list(filters.models)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    stmt = text(_ACCEPTED_SQL.format(where=where))
    if params:
        stmt = stmt.bindparams(*(bindparam(name, expanding=True) for name in params))
    return stmt, params


@contextmanager
def accepted_rows(ledger: Ledger, filters: ExportFilters = ExportFilters()
                  ) -> Iterator[tuple[LedgerPosition, Iterator[Sequence[Any]]]]:
    """The ledger position and the accepted rows (in batches), read in one snapshot so the
    position names exactly the state the rows came from. Rows: job_id, attempt_id, l1,
    pattern, level, model, prompt_version, filter_version, source, messages_json."""
    stmt, params = _accepted_statement(filters)
    with ledger.engine.connect() as conn:
        if ledger.dialect == "postgresql":
            # One snapshot for the position and every row, without blocking writers.
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            row = conn.execute(_POSITION_SQL).one()
            position = LedgerPosition(int(row[0]), str(row[1]))
            # stream_results: a server-side cursor on PostgreSQL; SQLite steps lazily anyway.
            result = conn.execution_options(stream_results=True).execute(stmt, params)
            yield position, result.partitions(_BATCH_ROWS)


def row_messages(row: Sequence[Any]) -> list[dict[str, str]]:
    return _decode(_stored_messages(row))


def row_meta(row: Sequence[Any]) -> dict[str, Any]:
    return {"job_id": row[0], "attempt_id": row[1], "l1": row[2], "error_type": row[3],
            "level": row[4], "model": row[5], "prompt_version": row[6],
            "filter_version": row[7], "source": row[8]}


def chatml_text(messages: Sequence[Mapping[str, str]]) -> str:
    return "\n".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>" for m in messages)


def sharegpt_turns(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    return [{"from": SHAREGPT_ROLES.get(m["role"], m["role"]), "value": m["content"]}
            for m in messages]


def shaped(fmt: str, messages: list[dict[str, str]], meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` with the dialogue added under the format's field (meta is extended in place)."""
    if fmt == "messages":
        meta["messages"] = messages
    elif fmt == "sharegpt":
        meta["conversations"] = sharegpt_turns(messages)
    else:
        meta["text"] = chatml_text(messages)
    return meta


# Lines are assembled from templates in sorted key order: the same bytes json.dumps(...,
# sort_keys=True, separators=(",", ":"), ensure_ascii=False) would give, at a fraction of the
# per-row cost. The messages format copies the stored messages JSON verbatim: it is the ledger's
# own record of the dialogue, so re-encoding it could only make the export drift from it.
_META_KEYS = ('"error_type":%s,"filter_version":%s,"job_id":%s,"l1":%s,"level":%s')
_TAIL_KEYS = '"model":%s,"prompt_version":%s,"source":%s'
_LINE_TEMPLATES = {
    "messages": '{"attempt_id":%d,' + _META_KEYS + ',"messages":%s,' + _TAIL_KEYS + "}",
    "sharegpt": '{"attempt_id":%d,"conversations":%s,' + _META_KEYS + "," + _TAIL_KEYS + "}",
    "chatml": '{"attempt_id":%d,' + _META_KEYS + "," + _TAIL_KEYS + ',"text":%s}',
}


def _stored_messages(row: Sequence[Any]) -> str:
    raw = row[9]
    if not raw or raw[0] != "[":
        raise LedgerError(f"accepted attempt {row[1]} of job {row[0]} has no stored messages: "
                          "the ledger is inconsistent; restore it from a backup")
    return raw


def _sharegpt_json(messages: Sequence[Mapping[str, str]]) -> str:
    return "[" + ",".join(['{"from":%s,"value":%s}' % (
        _enc(SHAREGPT_ROLES.get(m["role"], m["role"])), _enc(m["content"])) for m in messages]
    ) + "]"


def export_line(fmt: str, row: Sequence[Any]) -> str:
    """One accepted row as one JSONL line (without the newline)."""
    job_id, attempt_id, l1, pattern, level, model, prompt_version, filter_version, source = row[:9]
    meta = (_enc(pattern), _enc(filter_version), _enc(job_id), _enc(l1), _enc(level))
    tail = (_enc(model), _enc(prompt_version), _enc(source))
    if fmt == "messages":
        return _LINE_TEMPLATES[fmt] % (attempt_id, *meta, _stored_messages(row), *tail)
    messages = _decode(_stored_messages(row))
    if fmt == "sharegpt":
        return _LINE_TEMPLATES[fmt] % (attempt_id, _sharegpt_json(messages), *meta, *tail)
    return _LINE_TEMPLATES[fmt] % (attempt_id, *meta, *tail, _enc(chatml_text(messages)))


def export_lines(fmt: str, rows: Sequence[Sequence[Any]]) -> str:
    """One batch of rows as JSONL text (each line ending in a newline)."""
    lines = [export_line(fmt, r) for r in rows]
    lines.append("")
    return "\n".join(lines)


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
                     filters: ExportFilters = ExportFilters(),
                     force: bool = False) -> ExportResult:
    """Write the accepted dialogues to `out` (atomically) and its manifest beside it."""
    check_format(fmt)
    path = Path(out)
    check_target(path, force)
    started = time.perf_counter()
    count = 0
    filter_versions: set[str] = set()
    prompt_versions: set[str] = set()
    with atomic_write(path, overwrite=force) as sink:
        with accepted_rows(ledger, filters) as (position, batches):
            for rows in batches:
                sink.write(export_lines(fmt, rows).encode("utf-8"))
                count += len(rows)
                filter_versions.update(r[7] for r in rows)
                prompt_versions.update(r[6] for r in rows)
    seconds = time.perf_counter() - started
    manifest = {
        "file": path.name, "format": fmt, "count": count, "bytes": sink.bytes_written,
        "sha256": sink.sha256, "filters": filters.as_dict(),
        "ledger": {"database": ledger_display(ledger), "head_seq": position.head_seq,
                   "head_hash": position.head_hash},
        "filter_versions": sorted(filter_versions), "prompt_versions": sorted(prompt_versions),
        "created_at_utc": utc_now(), "tool": "scaffold-ledger", "tool_version": __version__,
    }
    manifest_path = write_manifest(path, manifest)
    return ExportResult(path=path, manifest_path=manifest_path, format=fmt, count=count,
                        bytes=sink.bytes_written, sha256=sink.sha256, seconds=seconds,
                        position=position)


def export_text(result: ExportResult) -> str:
    rate = result.count / result.seconds if result.seconds > 0 else 0.0
    lines = [f"exported {result.count:,} dialogues ({result.format}) to {result.path} "
             f"({result.bytes:,} bytes, sha256 {result.sha256[:16]}) in {result.seconds:.2f} s "
             f"({rate:,.0f}/s)",
             f"manifest: {result.manifest_path} (ledger at seq {result.position.head_seq})"]
    if result.count == 0:
        lines.append("no accepted dialogue matches: run `python cli.py run` first, or widen "
                     "--l1/--pattern/--level/--model")
    return "\n".join(lines)
