"""`verify`: prove the ledger is what its events say it is.

Checks, each reported as a line: the append-only triggers exist; the hash chain over every event
is intact (naming the first altered or removed row); the projections equal a replay of the
events; at most one acceptance per job; cost totals equal the sum of attempt costs; and, given
an export's manifest, that the file and the ledger position it records match.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Table

from . import queries, schema
from .db import Ledger
from .errors import UsageError
from .tx import canonical_values, chain_hash, event_columns

MONEY_TOLERANCE_USD = 1e-9


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _expected_triggers(dialect: str) -> set[str]:
    kinds = (("no_update", "no_delete", "no_replace") if dialect == "sqlite"
             else ("append_only", "no_truncate"))
    return {f"trg_{t.name}_{k}" for t in schema.EVENT_TABLES for k in kinds}


def check_triggers(ledger: Ledger) -> Check:
    missing = sorted(_expected_triggers(ledger.dialect) - queries.trigger_names(ledger))
    if missing:
        return Check("append-only triggers", False, f"missing: {', '.join(missing[:5])}"
                     + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return Check("append-only triggers", True, f"all {len(schema.EVENT_TABLES)} event tables "
                 "guarded")


def _table_events(ledger: Ledger, table: Table) -> Iterator[tuple[int, str, str, list]]:
    for seq, row_hash, values in queries.iter_events(ledger, table.name, event_columns(table)):
        yield seq, row_hash, table.name, values


def _all_events(ledger: Ledger) -> Iterator[tuple[int, str, str, list]]:
    """Every event of every table, in chain order."""
    return heapq.merge(*(_table_events(ledger, t) for t in schema.EVENT_TABLES),
                       key=lambda e: e[0])


def check_chain(ledger: Ledger) -> Check:
    prev, expected_seq = schema.GENESIS_HASH, 1
    for seq, row_hash, table, values in _all_events(ledger):
        if seq != expected_seq:
            return Check("hash chain", False, f"event seq {expected_seq} is missing (removed); "
                         f"the chain resumes at seq {seq} in {table}")
        prev = chain_hash(prev, table, seq, canonical_values(table, values))
        if prev != row_hash:
            return Check("hash chain", False, f"event seq {seq} in {table} was altered (its "
                         "hash does not match its content and predecessors)")
        expected_seq += 1
    head_seq, head_hash = queries.chain_head(ledger)
    last = expected_seq - 1
    if head_seq != last or (last and head_hash != prev):
        return Check("hash chain", False, f"the recorded head (seq {head_seq}) does not match "
                     f"the last event (seq {last}): events after it were removed or the head "
                     "was changed")
    return Check("hash chain", True, f"{last} events, head {prev[:16]}")


def check_projections(ledger: Ledger) -> Check:
    stored_js, stored_oa = queries.projection_rows(ledger)
    replay_js, replay_oa = queries.replayed_projection_rows(ledger)
    problems = []
    if stored_js != replay_js:
        diff = sorted(stored_js ^ replay_js)[:1]
        problems.append(f"job_state differs from a replay ({len(stored_js ^ replay_js)} rows; "
                        f"first: job {diff[0][0]})")
    if stored_oa != replay_oa:
        problems.append(f"open_attempts differs from a replay ({len(stored_oa ^ replay_oa)} "
                        "rows)")
    if problems:
        return Check("projections", False, "; ".join(problems) + "; run `python cli.py "
                     "rebuild`")
    return Check("projections", True, f"{len(stored_js)} job states and {len(stored_oa)} open "
                 "attempts equal a replay of the events")


def check_money(ledger: Ledger) -> Check:
    totals, outcomes, states, dupes = queries.money_totals(ledger)
    if dupes:
        return Check("acceptances and costs", False, f"{dupes} job(s) accepted more than once")
    if abs(totals - outcomes) > MONEY_TOLERANCE_USD or abs(states - outcomes) > \
            MONEY_TOLERANCE_USD:
        return Check("acceptances and costs", False, f"totals ${totals:.9f} / job states "
                     f"${states:.9f} differ from the sum of attempt costs ${outcomes:.9f}")
    return Check("acceptances and costs", True, f"one acceptance per job; spend "
                 f"${outcomes:.6f} reconciles")


def check_manifest(ledger: Ledger, manifest_path: str) -> Check:
    path = Path(manifest_path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"manifest not found: {manifest_path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{manifest_path} is not a JSON manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise UsageError(f"{manifest_path} is not an export manifest (a JSON object with file, "
                         "sha256, count and ledger); pass the .manifest.json an export wrote")
    data_file = Path(manifest.get("file") or str(path).removesuffix(".manifest.json"))
    if not data_file.is_absolute():
        data_file = path.parent / data_file.name
    if not data_file.exists():
        return Check("export manifest", False, f"{data_file} is missing")
    digest = hashlib.sha256(data_file.read_bytes()).hexdigest()
    if digest != manifest.get("sha256"):
        return Check("export manifest", False, f"{data_file.name} does not match its manifest "
                     "sha256 (changed after export)")
    lines = sum(1 for _ in data_file.open("rb"))
    if lines != manifest.get("count"):
        return Check("export manifest", False, f"{data_file.name} has {lines} lines, the "
                     f"manifest says {manifest.get('count')}")
    position = manifest.get("ledger") or {}
    seq, head = position.get("head_seq"), position.get("head_hash")
    if not isinstance(seq, int) or not _chain_has(ledger, seq, head):
        return Check("export manifest", False, f"the manifest's ledger position (seq {seq}) is "
                     "not in this ledger's chain: exported from another ledger, or the ledger "
                     "was altered")
    if "filters" in manifest and "anchors" not in manifest:  # an export's, not a mix's
        content = _export_content_check(ledger, manifest, seq, digest, data_file.name)
        if content is not None:
            return content
    return Check("export manifest", True, f"{lines} lines match; exported at event seq {seq}")


def _export_content_check(ledger: Ledger, manifest: dict, seq: int, digest: str,
                          name: str) -> Check | None:
    """A failed Check when the file is not the export the ledger gives at `seq` with the
    manifest's format and filters (a file edited and its manifest's sha256 updated to
    match); None when it is."""
    from .export import FORMATS, ExportFilters, export_sha256

    fmt, filters = manifest.get("format"), manifest.get("filters")
    if fmt not in FORMATS or not isinstance(filters, dict):
        return Check("export manifest", False, f"the manifest names no known format and "
                     f"filters (format {fmt!r}): it was not written by export")
    expected, count = export_sha256(ledger, fmt, ExportFilters.from_dict(filters), seq)
    if expected != digest:
        return Check("export manifest", False, f"{name} is not what the ledger exports at seq "
                     f"{seq} ({count} lines, sha256 {expected[:16]}): its lines were changed "
                     "and its manifest with them")
    return None


def _chain_has(ledger: Ledger, seq: int, head: object) -> bool:
    if seq == 0:
        return head == schema.GENESIS_HASH
    return queries.event_hash_at(ledger, seq) == head


def verify(ledger: Ledger, manifests: list[str] | None = None) -> list[Check]:
    checks = [check_triggers(ledger), check_chain(ledger), check_projections(ledger),
              check_money(ledger)]
    for m in manifests or []:
        checks.append(check_manifest(ledger, m))
    return checks
