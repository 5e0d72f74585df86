"""One write transaction and the hash chain its events join.

Every event row gets the next global `seq` and `row_hash = sha256(prev_hash + canonical row)`,
where the canonical row is compact JSON of [table, seq, *business columns] with REAL columns as
floats, so the hash survives a round-trip through either backend. `Tx` runs the store's named
statements on the driver's own cursor: the hot path skips SQLAlchemy's per-statement work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from . import schema
from .sql import Statements

CHAIN_COLUMNS = ("seq", "row_hash")


def event_columns(table: Table) -> list[str]:
    """The business columns of an event table, in the order they are hashed."""
    return [c.name for c in table.columns if c.name not in CHAIN_COLUMNS]


_FLOAT_COLUMNS = {
    t.name: frozenset(i for i, c in enumerate(event_columns(t))
                      if isinstance(t.c[c].type, type(schema.Money)))
    for t in schema.EVENT_TABLES
}


def canonical_values(table: str, values: Sequence[Any]) -> Sequence[Any]:
    """Values as stored: REAL columns are floats, so the hash is the same after a round-trip.
    A table without REAL columns (jobs: a big plan's rows) gets its values back as given."""
    floats = _FLOAT_COLUMNS[table]
    if not floats:
        return values
    return [float(v) if i in floats and v is not None else v for i, v in enumerate(values)]


def _canonical_encoder() -> Callable[[list[Any]], str]:
    """Compact JSON, non-ASCII kept: json.dumps(separators=(",", ":"), ensure_ascii=False).
    JSONEncoder.encode builds its C encoder anew on every call; the chain hashes a million rows
    in a big plan, so the C encoder is built once here (same function, same bytes)."""
    spec = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        return spec.encode
    # markers=None skips the cycle check: a row is a flat list of scalars.
    c_encode = make(None, spec.default, json.encoder.encode_basestring, None,
                    spec.key_separator, spec.item_separator, False, False, True)
    return lambda row: "".join(c_encode(row, 0))


_canonical = _canonical_encoder()


def chain_hash(prev_hash: str, table: str, seq: int, values: Sequence[Any]) -> str:
    payload = _canonical([table, seq, *values])
    return hashlib.sha256((prev_hash + payload).encode("utf-8")).hexdigest()


class _Rows:
    """The few result accessors the store uses, over a DBAPI cursor."""

    __slots__ = ("_cur",)

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def one(self) -> Any:
        row = self._cur.fetchone()
        if row is None:
            raise LookupError("expected one row, got none")
        return row

    def scalar(self) -> Any:
        row = self._cur.fetchone() if self._cur is not None else None
        return None if row is None else row[0]

    def all(self) -> list[Any]:
        return list(self._cur.fetchall()) if self._cur is not None else []

    @property
    def rowcount(self) -> int:
        """Rows an UPDATE or DELETE changed."""
        return int(self._cur.rowcount) if self._cur is not None else 0

    def __iter__(self) -> Iterator[Any]:
        return iter(self.all())


class Tx:
    """One write transaction: appends chained events and runs named statements."""

    def __init__(self, conn: Connection, sql: Statements, head_seq: int, head_hash: str,
                 next_id: int, spend_usd: float, *, chained: bool = True) -> None:
        self.conn = conn
        self.sql = sql
        self.head_seq = head_seq
        self.head_hash = head_hash
        self.next_id = next_id
        self.spend_usd = spend_usd
        self.chained = chained  # False: the totals row was not read or locked; no events here
        self.dirty = False
        # The driver's own cursor on the same connection and transaction: the hot path skips
        # SQLAlchemy's per-statement machinery (measured at ~0.15 ms a statement).
        self.cur = conn.connection.cursor()
        self._dbapi_error = conn.dialect.loaded_dbapi.Error

    def execute(self, sql: str, params: Any = (), many: bool = False) -> None:
        """The raw cursor, with driver errors raised as SQLAlchemy's (IntegrityError, ...) as
        every other layer expects."""
        try:
            if many:
                self.cur.executemany(sql, params)
            else:
                self.cur.execute(sql, params)
        except self._dbapi_error as exc:
            raise DBAPIError.instance(sql, None, exc, self._dbapi_error) from exc

    def snapshot(self) -> tuple[int, str, int, float, bool]:
        return self.head_seq, self.head_hash, self.next_id, self.spend_usd, self.dirty

    def restore(self, snap: tuple[int, str, int, float, bool]) -> None:
        self.head_seq, self.head_hash, self.next_id, self.spend_usd, self.dirty = snap

    def _require_chain(self) -> None:
        if not self.chained:
            raise RuntimeError("this transaction does not hold the ledger_totals lock; open it "
                               "with transaction(events=True) to append events")

    def run(self, name: str, params: Sequence[Any] | Sequence[Sequence[Any]] = ()) -> _Rows:
        """Run a named statement: a tuple of parameters once, a list of tuples as executemany."""
        if isinstance(params, list):
            if params:
                self.execute(self.sql[name], params, many=True)
            return _Rows(None)
        self.execute(self.sql[name], params)
        return _Rows(self.cur)

    def append(self, table: Table, values: Sequence[Any]) -> int:
        return self.append_many(table, [values])[0]

    def append_many(self, table: Table, rows: Sequence[Sequence[Any]]) -> list[int]:
        """Append rows as events, chained in the order given."""
        if not rows:
            return []
        self._require_chain()
        name = table.name
        seq, prev = self.head_seq, self.head_hash
        out, seqs = [], []
        for values in rows:
            vals = canonical_values(name, values)
            seq += 1
            prev = chain_hash(prev, name, seq, vals)
            out.append((*vals, seq, prev))
            seqs.append(seq)
        if len(out) == 1:
            self.execute(self.sql.insert(table), out[0])
        else:
            self.execute(self.sql.insert(table), out, many=True)
        self.head_seq, self.head_hash = seq, prev
        self.dirty = True
        return seqs

    def allocate_id(self) -> int:
        self._require_chain()
        value = self.next_id
        self.next_id += 1
        self.dirty = True
        return value
