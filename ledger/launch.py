"""Starting a run the safe way: the key from the environment, a pre-flight credit check, dead runs
found and their jobs freed, a progress bar, and a summary that says why the run stopped."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import queries
from .client import OpenRouterClient
from .db import Ledger
from .errors import CreditExhausted, UsageError
from .pricing import PriceBook, estimate_prompt_tokens, price_book, prices_from_models
from .prompts import PromptInput, render_messages
from .render import table, usd
from .runconfig import RunConfig
from .runner import Runner, RunResult, Terminated, is_process_alive

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
KEY_ENV = "OPENROUTER_API_KEY"
BASE_URL_ENV = "OPENROUTER_BASE_URL"


def api_key_from_env() -> str:
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise UsageError(f"set {KEY_ENV} in the environment (the key is never taken from the "
                         "command line or stored)")
    return key


def base_url_from(option: str | None) -> str:
    return (option or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def prices_for(ledger: Ledger) -> PriceBook:
    return price_book(queries.latest_prices(ledger))


def typical_prompt_tokens() -> int:
    """Prompt size of a typical job, for estimates before any job is rendered."""
    return estimate_prompt_tokens(render_messages(PromptInput(
        l1_name="Spanish", level="intermediate", persona="a university student",
        topic="weekend plans", pattern_name="negation error", erroneous="I no like coffee.",
        correct="I don't like coffee.")))


def preflight(client: OpenRouterClient, prices: PriceBook, config: RunConfig) -> str | None:
    """Refuse to start when the key cannot cover a single attempt (exit 3); 401 -> exit 5."""
    info = client.key_info()
    if info is None:
        return None  # servers without /key (vLLM, Ollama) bill nothing
    remaining = info.get("limit_remaining")
    if not isinstance(remaining, (int, float)) or isinstance(remaining, bool):
        return None  # no limit on this key
    need = prices.max_cost(config.models[0], typical_prompt_tokens(), config.max_tokens)
    if remaining < need:
        raise CreditExhausted(
            f"the key has ${remaining:.6f} left, less than one attempt may cost "
            f"(${need:.6f}); top up or raise the key's limit, then run again")
    return f"key limit remaining: ${remaining:.6f}"


def dead_runs_here(ledger: Ledger) -> list[str]:
    """Unfinished runs started on this host whose process is gone."""
    host = socket.gethostname()
    return [run_id for run_id, run_host, pid in queries.unfinished_runs(ledger)
            if run_host == host and pid != os.getpid() and not is_process_alive(pid)]


class _Progress:
    """A tqdm bar over the open jobs, with accepted/rejected/failed, spend and model mix."""

    def __init__(self, total: int, quiet: bool) -> None:
        self._bar = None
        self._lock = threading.Lock()
        self._done = 0
        if not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="job", file=sys.stderr, dynamic_ncols=True,
                             mininterval=0.5)

    def __call__(self, stats) -> None:  # type: ignore[no-untyped-def]
        if self._bar is None:
            return
        with self._lock:
            done = stats.accepted + stats.failed_jobs
            if done > self._done:
                self._bar.update(done - self._done)
                self._done = done
            mix = ",".join(f"{m.split('/')[-1]}:{n}" for m, n in stats.models.most_common(3))
            self._bar.set_postfix_str(
                f"ok={stats.accepted} rej={stats.rejected} fail={stats.failed_attempts} "
                f"${stats.spend_usd:.4f} {mix}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass(frozen=True)
class Launch:
    result: RunResult
    summary: str


def run(ledger: Ledger, config: RunConfig, *, base_url: str | None = None,
        quiet: bool = False, api_key: str | None = None) -> Launch:
    """Run to completion or to a halt. `api_key` is for the built-in demo only; everyone
    else's key comes from OPENROUTER_API_KEY."""
    key = api_key or api_key_from_env()
    url = base_url_from(base_url)
    prices = prices_for(ledger)
    with OpenRouterClient(url, key) as client:
        note = preflight(client, prices, config)
        open_jobs = queries.open_job_count(ledger)
        runner = Runner(ledger, client, prices, config)
        progress = _Progress(open_jobs if config.limit is None else min(open_jobs, config.limit),
                             quiet)
        runner._on_progress = progress
        with _sigterm_stops_like_ctrl_c():
            runner.start(dead_runs_here(ledger))
            try:
                result = runner.run()
            finally:
                progress.close()
    if runner.crash is not None:
        raise runner.crash
    return Launch(result, summary_text(result, note))


@contextmanager
def _sigterm_stops_like_ctrl_c() -> Iterator[None]:
    """While a run goes, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread:
    the run stops cleanly, its requests in flight recorded, exit 130. Left at the default,
    it killed the process like kill -9 and every answer in flight went unrecorded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(_signum: int, _frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def summary_text(result: RunResult, note: str | None = None) -> str:
    s = result.stats
    rows = [["accepted", s.accepted], ["rejected by filter", s.rejected],
            ["failed attempts", s.failed_attempts], ["failed jobs", s.failed_jobs],
            ["attempts", s.attempts], ["spend this run", usd(s.spend_usd)]]
    for model, n in s.models.most_common():
        rows.append([f"accepted via {model}", n])
    for rule, n in s.rejections.most_common():
        rows.append([f"rejected: {rule}", n])
    for err, n in s.errors.most_common():
        rows.append([f"error: {err}", n])
    for cause, seconds in s.waited_s.most_common():
        rows.append([f"workers waited: {cause}", f"{seconds:.1f} s"])
    lines = [table(rows, ["run " + result.run_id[:12], ""])]
    if note:
        lines.append(note)
    for model, factor in sorted(s.underpriced.items()):
        lines.append(f"warning: answers of {model} cost up to {factor:.1f}x the price table's "
                     "maximum (its reservations were raised to match): run `python cli.py "
                     "prices --refresh`")
    lines.append(f"stopped: {result.reason} (exit {result.exit_code}): {result.message}")
    return "\n".join(lines)


def refresh_prices(ledger: Ledger, base_url: str | None) -> int:
    from .store import Store

    key = os.environ.get(KEY_ENV, "").strip() or "no-key"  # /models needs no key on OpenRouter
    with OpenRouterClient(base_url_from(base_url), key) as client:
        records = prices_from_models(client.models())
    store = Store(ledger)
    try:
        store.record_prices(records)
    finally:
        store.close()
    return len(records)

