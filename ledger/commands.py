"""The commands behind `python cli.py`: parse options, call the library, return text.

Options shared by every command: --db (a path or SQLAlchemy URL; default $LEDGER_DB or
./ledger.db) and --catalog (a JSON catalog; default the bundled one).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from .errors import UsageError


class Exit(Exception):
    """Leave with this exit code after the command printed its own output."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


_EXAMPLES = {"--models": "google/gemini-2.0-flash-001,anthropic/claude-3.5-haiku",
             "--pattern": "negation_error,gerund_error", "--patterns": "negation_error",
             "--level": "beginner,intermediate", "--levels": "beginner",
             "--model": "google/gemini-2.0-flash-001", "--anchor": "anchors.jsonl"}


def names(value: Any, option: str) -> list[str] | None:
    """Comma-separated names, as a string or as the tuple fire makes of `a,b`."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    elif isinstance(value, str):
        items = value.split(",")
    else:
        raise UsageError(f"{option} takes comma-separated names, e.g. {option} "
                         f"{_EXAMPLES.get(option, 'spanish,korean')}")
    out = [i.strip() for i in items if i.strip()]
    return out or None


def integer(value: Any, option: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{option} takes a whole number >= {minimum}, got {value!r}")
    return value


def number(value: Any, option: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise UsageError(f"{option} takes a number >= {minimum}, got {value!r}")
    return float(value)


def require_known_filters(ledger: Any, **given: Sequence[str] | None) -> None:
    """A filter value that no job has (no attempt, for --model) would give an empty export or
    report and exit 0, as if nothing matched, when it is most likely a typo: say so, with the
    values the ledger has."""
    from .queries import missing_filter_values

    for kind, values in given.items():
        if not values:
            continue
        missing, known = missing_filter_values(ledger, kind, list(values))
        if missing:
            holder = "attempt" if kind == "model" else "job"
            raise UsageError(f"no {holder} in the ledger has --{kind} {missing[0]!r}; it has: "
                             f"{', '.join(known) or 'none yet'}")


from .cli_data import DataCommands  # noqa: E402 - the mixins use the helpers above
from .cli_reports import ReportCommands  # noqa: E402


class Commands(ReportCommands, DataCommands):
    """scaffold-ledger: an append-only job ledger for generating ESL scaffolding dialogues.

    Global options: --db PATH_OR_URL (default $LEDGER_DB or ./ledger.db), --catalog FILE.json.
    """

    def __init__(self, db: str | None = None, catalog: str | None = None) -> None:
        self._db = db
        self._catalog_path = catalog

    def _open(self, **kw: Any):  # type: ignore[no-untyped-def]
        from .db import open_ledger

        if self._db is not None and not isinstance(self._db, str):
            raise UsageError("--db takes a file path or a database URL")
        return open_ledger(self._db, **kw)

    def _catalog(self):  # type: ignore[no-untyped-def]
        from .catalog import load_catalog

        return load_catalog(self._catalog_path)

    def plan(self, target: int = 1000, l1: Any = None, patterns: Any = None,
             levels: Any = None, dry_run: bool = False) -> str:
        """Plan jobs so the ledger holds --target of them (balanced over L1 x pattern cells).

        Idempotent: planning the same target twice adds nothing; a larger target adds only the
        difference. --l1 spanish,korean / --patterns negation_error / --levels beginner narrow
        the scope; --dry-run prints the allocation and writes nothing.
        """
        from .planner import plan_ledger
        from .render import plan_text

        target = integer(target, "--target")
        catalog = self._catalog()
        ledger = self._open()
        try:
            plan = plan_ledger(ledger, catalog, target, l1s=names(l1, "--l1"),
                               patterns=names(patterns, "--patterns"),
                               levels=names(levels, "--levels"), dry_run=bool(dry_run))
        finally:
            ledger.dispose()
        return plan_text(plan, bool(dry_run))

    def status(self, format: str = "table") -> str:  # noqa: A002 - the option users type
        """Jobs planned, in flight, accepted, failed and remaining, and spend, overall and by L1.

        --format json prints one JSON object for scripts.
        """
        from .queries import status
        from .render import status_text

        if format not in ("table", "json"):
            raise UsageError("--format must be table or json")
        ledger = self._open(existing=True)
        try:
            return status_text(status(ledger), format)
        finally:
            ledger.dispose()

    def rebuild(self) -> str:
        """Rebuild the projections (job state, open attempts, totals) from the events alone."""
        from .store import Store

        ledger = self._open(existing=True)
        try:
            store = Store(ledger)
            store.rebuild_projections()
            store.close()
        finally:
            ledger.dispose()
        return "projections rebuilt from the events"

    def catalog(self, l1: Any = None) -> str:
        """List the catalog's L1s and error patterns (with --l1, that L1's patterns and pairs)."""
        from .render import table

        cat = self._catalog()
        chosen = names(l1, "--l1")
        if not chosen:
            rows = [[x.id, x.name, len(x.patterns), sum(len(p.pairs) for p in x.patterns)]
                    for x in cat.l1s]
            return (f"catalog {cat.source} (levels: {', '.join(cat.levels)}; "
                    f"{len(cat.topics)} topics, {len(cat.personas)} personas)\n"
                    + table(rows, ["L1", "name", "patterns", "sentence pairs"]))
        rows = []
        for name in chosen:
            x = cat.l1(name)
            for p in x.patterns:
                rows.append([x.id, p.id, p.name, len(p.pairs), p.pairs[0].erroneous])
        return table(rows, ["L1", "pattern", "name", "pairs", "example"])


    def run(self, models: Any = None, concurrency: int | None = None,
            budget_usd: float | None = None, rpm: float | None = None,
            max_tokens: int | None = None, base_url: str | None = None,
            retry_failed: bool = False, limit: int | None = None, quiet: bool = False,
            config: str | None = None) -> None:
        """Generate dialogues for every open job; safe to kill and run again.

        The key comes from OPENROUTER_API_KEY only; --base-url or OPENROUTER_BASE_URL picks any
        OpenAI-compatible server. --models a,b,c is the fallback chain; --concurrency N workers;
        --budget-usd X caps the ledger's total spend (in-flight requests counted at their
        maximum); --rpm caps requests per minute (0: no cap); --retry-failed tries failed jobs
        again; --limit N stops after N jobs; --config FILE.json sets any of these as defaults.
        Exit codes: 0 done, 2 bad input, 3 out of credit, 4 budget reached, 5 key rejected,
        130 interrupted (Ctrl-C or SIGTERM).
        """
        from .launch import run
        from .runconfig import build_run_config

        cfg, file_base_url = build_run_config(
            config_path=config, models=names(models, "--models"), concurrency=concurrency,
            budget_usd=budget_usd, rpm=rpm, max_tokens=max_tokens, retry_failed=retry_failed,
            limit=limit)
        ledger = self._open(existing=True)
        try:
            launch = run(ledger, cfg, base_url=base_url or file_base_url, quiet=bool(quiet))
        finally:
            ledger.dispose()
        print(launch.summary)
        if launch.result.exit_code:
            print(f"error: {launch.result.message}", file=sys.stderr)
            raise Exit(launch.result.exit_code)

    def estimate(self, models: Any = None, max_tokens: int | None = None,
                 config: str | None = None) -> str:
        """Expected cost of the open jobs on each model of the chain, before anything is spent."""
        from .estimate import estimate_text
        from .runconfig import build_run_config

        cfg, _ = build_run_config(config_path=config, models=names(models, "--models"),
                                  max_tokens=max_tokens)
        ledger = self._open(existing=True)
        try:
            return estimate_text(ledger, cfg.models, cfg.max_tokens)
        finally:
            ledger.dispose()

    def prices(self, refresh: bool = False, base_url: str | None = None) -> str:
        """Show the price table in use; --refresh records current prices from GET /models."""
        from .launch import prices_for, refresh_prices
        from .render import table

        ledger = self._open()
        try:
            note = ""
            if refresh:
                note = f"recorded {refresh_prices(ledger, base_url)} model prices\n"
            book = prices_for(ledger)
            rows = [[m, f"{book.get(m).prompt_usd_per_token * 1e6:.4f}",
                     f"{book.get(m).completion_usd_per_token * 1e6:.4f}", book.get(m).source]
                    for m in book.models()]
        finally:
            ledger.dispose()
        return note + table(rows, ["model", "input $/1M", "output $/1M", "source"])

    def simulate(self, port: int = 8099, latency_ms: float = 200.0, seed: int = 0,
                 credit_limit_usd: float | None = None, ready_file: str | None = None,
                 **faults: Any) -> None:
        """Serve the local OpenRouter-compatible simulator on 127.0.0.1 until Ctrl-C.

        Fault options are probabilities 0..1, e.g. --p-429 0.05 --p-500 0.02 --p-correction 0.1;
        --credit-limit-usd X answers 402 once X has been billed. Point `run` at it with
        OPENROUTER_BASE_URL=http://127.0.0.1:PORT/api/v1.
        """
        from .simulator import SimConfig, serve_forever

        kwargs = {k.replace("-", "_"): v for k, v in faults.items()}
        try:
            cfg = SimConfig.from_kwargs(latency_ms=latency_ms, seed=seed,
                                        credit_limit_usd=credit_limit_usd, **kwargs)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"bad simulator option: {exc}") from None
        serve_forever(cfg, port=integer(port, "--port"), ready_file=ready_file)

    def demo(self, jobs: int = 48, dir: str = "demo", concurrency: int = 8,  # noqa: A002
             latency_ms: float = 50.0, quiet: bool = False) -> None:
        """Plan a small set in DIR/ledger.db, start the simulator on a free loopback port with
        some faults on, run the real client against it, and show the status. No key needed."""
        from .demo import run_demo

        code = run_demo(integer(jobs, "--jobs", 1), dir, integer(concurrency, "--concurrency", 1),
                        number(latency_ms, "--latency-ms"), bool(quiet), self._catalog_path)
        if code:
            raise Exit(code)

    def refilter(self) -> str:
        """Re-run the current quality filter over every stored response (no API call, no
        spend); append the new verdicts and accept jobs whose response now passes."""
        from .filters import FILTER_VERSION
        from .refilter import refilter

        ledger = self._open(existing=True)
        try:
            r = refilter(ledger)
        finally:
            ledger.dispose()
        return (f"filter {FILTER_VERSION}: judged {r.judged} stored response(s), {r.passed} "
                f"passed, {r.newly_accepted} job(s) newly accepted, $0 spent")

    def verify(self, manifest: Any = None) -> None:
        """Check the ledger: append-only triggers present, hash chain intact (names the first
        altered or removed event), projections equal a replay, one acceptance per job, costs
        reconcile; --manifest FILE.manifest.json also checks an export against the ledger.
        Exit 1 when a check fails."""
        from .verify import verify

        ledger = self._open(existing=True)
        try:
            checks = verify(ledger, names(manifest, "--manifest"))
        finally:
            ledger.dispose()
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
        if not all(c.ok for c in checks):
            raise Exit(1)
        return None
