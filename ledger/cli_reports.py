"""The reading commands behind `python cli.py`: report, analyze, sql.

They read through a read-only connection, so a report on a big ledger never holds the write lock
a running `run` needs. A ledger whose schema predates the report views is upgraded first.
"""

from __future__ import annotations

import sys
from typing import Any

from .commands import integer, names, require_known_filters
from .errors import UsageError


class ReportCommands:
    """Mixin for Commands: needs `_open(**kw)` and `_catalog()`."""

    def report(self, name: str | None = None, format: str = "simple",  # noqa: A002
               l1: Any = None, pattern: Any = None, model: Any = None, since: Any = None,
               html: str | None = None, force: bool = False) -> str:
        """Cost and quality reports from the ledger's SQL views; no NAME lists them.

        NAME is one of: costs, costs-by-l1, costs-by-pattern, costs-by-run, fallbacks,
        quality, coverage, runs, orphans, waste. --format csv, json (an array of objects) or
        any tabulate format (simple, github, grid, ...). --l1 a,b / --pattern p / --model m /
        --since 2026-11-25[T10:00:00Z] narrow a report where they apply. --html FILE writes
        one self-contained page of charts (coverage heatmap, cost and acceptance by model,
        rejections by rule) instead; an existing FILE is replaced only with --force.
        """
        from .reports import Filters, check_format, checked_spec, list_reports, parse_since, \
            render, run_report
        from .render import table

        from .importer import CatalogIds

        chosen_l1 = names(l1, "--l1") or ()
        # L1 and pattern ids are stored lower case ("Spanish" is spanish), as export reads them;
        # the catalog (its L1 aliases) is read only when an L1 is named.
        ids = CatalogIds.of(self._catalog()) if chosen_l1 else None  # type: ignore[attr-defined]
        filters = Filters(l1=tuple(ids.l1(x) for x in chosen_l1) if ids else (),
                          pattern=tuple(p.lower() for p in names(pattern, "--pattern") or ()),
                          model=tuple(names(model, "--model") or ()),
                          since=parse_since(since))
        if html is not None:
            if name is not None:
                raise UsageError("--html writes every chart to one page; drop the report name")
            return self._write_html(html, filters, bool(force))
        if name is None:
            return ("reports (python cli.py report NAME):\n"
                    + table(list_reports(), ["name", "shows", "filters"]))
        fmt = check_format(format)
        checked_spec(str(name), filters)
        ledger = self._reading_ledger()
        try:
            require_known_filters(ledger, l1=filters.l1, pattern=filters.pattern,
                                  model=filters.model)
            rows = run_report(ledger, str(name), filters)
        finally:
            ledger.dispose()
        return render(rows, fmt)

    def analyze(self, file: str | None = None, format: str = "text") -> str:  # noqa: A002
        """How balanced, covered and good the dialogues are, what they cost, and what to do.

        With no FILE: the ledger's accepted dialogues (L1 and level balance, pattern and
        L1 x pattern coverage, turns and tutor questions, cost and acceptance by model,
        rejections by rule) and recommendations. With FILE.jsonl: the same for dialogues
        outside any ledger (lines with `messages` or `conversations`, optional l1 /
        error_type / level). --format json prints one JSON object.
        """
        from .analysis import analysis_json, analysis_text, analyze_jsonl, analyze_ledger

        if format not in ("text", "json"):
            raise UsageError("--format must be text or json")
        if file is not None:
            result = analyze_jsonl(str(file), self._catalog())
        else:
            ledger = self._reading_ledger()
            try:
                result = analyze_ledger(ledger)
            finally:
                ledger.dispose()
        return analysis_json(result) if format == "json" else analysis_text(result)

    def sql(self, query: Any = None, format: str = "simple",  # noqa: A002
            limit: int = 1000) -> None:
        """Run one read-only SQL statement and print its rows (at most --limit, default 1000).

        The ledger is opened read-only, so INSERT, UPDATE, DELETE and DDL fail. Try the views:
        `python cli.py sql "SELECT * FROM v_cost_by_model"`. --format csv, json or a tabulate
        format.
        """
        from sqlalchemy.exc import DBAPIError, StatementError

        from .reports import check_format, render, run_sql

        if not isinstance(query, str) or not query.strip():
            raise UsageError('sql takes one quoted statement, e.g. sql "SELECT * FROM v_runs"')
        fmt = check_format(format)
        limit = integer(limit, "--limit", 1)
        ledger = self._reading_ledger()
        try:
            rows, truncated = run_sql(ledger, query, limit)
        except (DBAPIError, StatementError) as exc:
            raise UsageError(_sql_error(_first_line(exc))) from None
        finally:
            ledger.dispose()
        print(render(rows, fmt, title=False))
        if truncated:
            print(f"(showing the first {limit} rows; pass --limit N for more)", file=sys.stderr)

    # --- helpers --------------------------------------------------------------------------

    def _reading_ledger(self):  # type: ignore[no-untyped-def]
        """A read-only ledger at the current schema (upgraded first if it is older)."""
        from .db import head_revision

        ledger = self._open(readonly=True)  # type: ignore[attr-defined]
        with ledger.engine.connect() as conn:
            current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        # head_revision reads the migration files' text, so a report at head imports no alembic.
        if current is not None and current == head_revision():
            return ledger
        ledger.dispose()
        self._open().dispose()  # type: ignore[attr-defined]
        return self._open(readonly=True)  # type: ignore[attr-defined]

    def _write_html(self, path: str, filters: Any, overwrite: bool) -> str:
        from .html_report import write_html_report

        if not isinstance(path, str) or not path.strip():
            raise UsageError("--html takes a file path, e.g. --html report.html")
        ledger = self._reading_ledger()
        try:
            require_known_filters(ledger, l1=filters.l1, pattern=filters.pattern,
                                  model=filters.model)
            size = write_html_report(ledger, path, filters, overwrite=overwrite)
        finally:
            ledger.dispose()
        return f"wrote {path} ({size:,} bytes)"


def _sql_error(message: str) -> str:
    if "not authorized" in message or "readonly" in message or "read-only" in message:
        return (f"sql is read-only ({message}): run one SELECT, WITH or PRAGMA query; "
                "the ledger changes only through the other commands")
    return f"sql failed: {message}"


def _first_line(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__
