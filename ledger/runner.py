"""The resumable generation loop: claim open jobs, walk the model chain, record every attempt,
filter, accept; stop the whole run cleanly on credit, key, budget or Ctrl-C.

Safe to kill at any moment: an attempt's intent is committed before its request leaves and its
outcome, verdict and acceptance are committed together after, so a restart re-requests nothing
that was accepted and shows what was in flight as "outcome unknown".
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import queries
from .call_outcome import CallOutcome
from .client import OpenRouterClient
from .db import Ledger
from .filters import FILTER_VERSION, judge
from .pricing import PriceBook, estimate_prompt_tokens
from .prompts import PROMPT_VERSION, PromptInput, render_messages
from .outcomes import halt_reason, outcome_record, verdict_record
from .records import AttemptStart, ClaimedJob, OutcomeRecord, VerdictRecord
from .retry import Cooldown, RateLimiter, backoff_delay
from .runconfig import RunConfig
from .store import Store

# Exit codes of `run`: a contract other tools rely on.
EXIT_DONE, EXIT_USAGE, EXIT_CREDIT, EXIT_BUDGET, EXIT_KEY, EXIT_INTERRUPTED = \
    0, 2, 3, 4, 5, 130
_HALT_EXIT = {"done": EXIT_DONE, "credit": EXIT_CREDIT, "budget": EXIT_BUDGET, "key": EXIT_KEY,
              "interrupted": EXIT_INTERRUPTED, "endpoint": EXIT_USAGE}
# Why a worker can wait without a request out: a 429 or in-flight 402 pausing every worker
# for its Retry-After; the --rpm spacing; only jobs waiting out a backoff left to send; the
# budget held by requests in flight; no job left to start while other workers finish theirs
# (a run's tail: the last answers and retries decide when it ends); the commit of the attempt's
# intent, which must be on disk before its request leaves (the ledger's own latency: a slow
# disk shows here).
WAIT_CAUSES = ("429/402 pause", "rpm spacing", "backoff, nothing else to send",
               "budget held by requests in flight", "no job left to start", "intent commit")
# When two stops race, the one that matters more to the user wins.
_HALT_RANK = {"endpoint": 5, "key": 4, "credit": 3, "budget": 2, "interrupted": 1}


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, `timeout`, `docker stop`, systemd) while a run is going: the same clean
    stop as Ctrl-C, so the requests in flight are recorded instead of abandoned."""


@dataclass
class RunStats:
    accepted: int = 0
    rejected: int = 0
    failed_jobs: int = 0
    failed_attempts: int = 0
    attempts: int = 0
    spend_usd: float = 0.0
    models: Counter = field(default_factory=Counter)        # accepted by model served
    rejections: Counter = field(default_factory=Counter)    # by rule
    errors: Counter = field(default_factory=Counter)        # by error class
    # Models whose answers cost more than the price table allows, by how many times the
    # table's maximum at most: their later reservations are raised by that factor.
    underpriced: dict[str, float] = field(default_factory=dict)
    # Worker-seconds spent waiting other than on the API, by cause (WAIT_CAUSES).
    waited_s: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    reason: str
    exit_code: int
    message: str
    limit_source: str | None
    stats: RunStats


class _Halt:
    """The first reason to stop the whole run, shared by every worker."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self.reason: str | None = None
        self.message: str = ""
        self.limit_source: str | None = None

    def stop(self, reason: str, message: str, limit_source: str | None = None) -> None:
        with self._lock:
            if self.reason is None or _HALT_RANK.get(reason, 0) > _HALT_RANK.get(self.reason, 0):
                self.reason, self.message, self.limit_source = reason, message, limit_source
        self.event.set()


def is_process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Walk:
    """One job on its way along the model chain, and where it stands: a job that must wait out
    a backoff steps aside with it, and its worker takes another job meanwhile."""

    job: ClaimedJob
    messages: list[dict[str, str]]
    prompt_tokens: int  # the estimate reservations are made for
    cheapest: float     # the chain's cheapest reservation for this job
    history: dict[str, tuple[int, int, int]]  # earlier runs' use of each model
    position: int = 0   # the model being tried
    on_model: bool = False  # its counts below are set (from history when it was entered)
    transient: int = 0
    rejections: int = 0
    reasons: list[str] = field(default_factory=list)  # why each earlier model gave up


class Runner:
    """One `run`: N worker threads over one store, one client and one price book."""

    def __init__(self, ledger: Ledger, client: OpenRouterClient, prices: PriceBook,
                 config: RunConfig, *, on_progress: Callable[[RunStats], None] | None = None
                 ) -> None:
        self.ledger = ledger
        self.client = client
        self.prices = prices
        self.config = config
        self.store = Store(ledger)
        self.run_id = uuid.uuid4().hex
        self.halt = _Halt()
        self.cooldown = Cooldown()
        self.limiter = RateLimiter(config.rpm)
        self.stats = RunStats()
        self._stats_lock = threading.Lock()
        self._on_progress = on_progress
        self._queue: list[ClaimedJob] = []
        self._queue_lock = threading.Lock()
        self._exhausted = False
        # Jobs waiting out a backoff: (due on time.monotonic(), order, walk), soonest first.
        self._backing_off: list[tuple[float, int, _Walk]] = []
        self._backoff_order = itertools.count()
        self._held: set[str] = set()       # jobs leased by this run and not finished
        self._flight = threading.Condition()
        self._claimed_total = 0
        self._budget_skipped = 0  # attempts on dearer fallbacks the budget could not cover
        # time.monotonic() when each worker found no job left, and when the last worker ended
        self._out_of_work: list[float] = []
        self._last_exit = 0.0
        self.crash: BaseException | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, dead_runs: Sequence[str]) -> None:
        self.store.start_run(self.run_id, socket.gethostname(), os.getpid(), PROMPT_VERSION,
                             FILTER_VERSION, self.config.public(self.client.base_url), dead_runs)
        if self.config.retry_failed:
            self.store.reopen_failed(self.run_id)

    def run(self) -> RunResult:
        """Run workers until no open job is left or a halt; then record the stop."""
        threads = [threading.Thread(target=self._worker, name=f"worker-{i}", daemon=True)
                   for i in range(max(1, self.config.concurrency))]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt as exc:
            self.halt.stop("interrupted", "interrupted by SIGTERM" if isinstance(exc, Terminated)
                           else "interrupted by Ctrl-C")
            for t in threads:  # in-flight requests finish and are recorded
                t.join()
        for since in self._out_of_work:
            self._waited(WAIT_CAUSES[4], self._last_exit - since)
        return self._finish()

    def _crashed(self, exc: BaseException) -> None:
        if self.crash is None:
            self.crash = exc
        self.halt.stop("error", f"{type(exc).__name__}: {exc}")

    def _finish(self) -> RunResult:
        # Outcomes still queued for the writer are committed before the run's stop is.
        self.store.flush()
        reason = self.halt.reason or "done"
        message = self.halt.message or "no open job left"
        if (not self.halt.message and self.config.limit is not None
                and self._claimed_total >= self.config.limit
                and queries.open_job_count(self.ledger)):
            message = (f"--limit {self.config.limit} reached: {self._claimed_total} job(s) "
                       "taken; run again for more")
        if reason == "done" and self._budget_skipped:
            reason = "budget"
            message = (f"budget of ${self.config.budget_usd:.6f} reached for the fallback models: "
                       f"{self._budget_skipped} attempt(s) wait for a larger --budget-usd")
        with self._queue_lock:
            held = sorted(self._held)
        self.store.release(self.run_id, held)
        exit_code = _HALT_EXIT.get(reason, 1)
        self.store.stop_run(self.run_id, reason, exit_code, self.halt.limit_source, message)
        self.store.close()
        return RunResult(self.run_id, reason, exit_code, message, self.halt.limit_source,
                         self.stats)

    # --- job source -----------------------------------------------------------------------

    def _next_job(self) -> ClaimedJob | None:
        """A fresh job (claiming more when the queue is empty); the caller holds _queue_lock."""
        if not self._queue and not self._exhausted:
            # A few spare leases: at low concurrency one claim then serves several jobs.
            want = min(max(8, self.config.concurrency), 64)
            if self.config.limit is not None:
                want = min(want, self.config.limit - self._claimed_total)
            claimed = (self.store.claim(self.run_id, want, time.time(), self.config.lease_s)
                       if want > 0 else [])
            if not claimed and want > 0 and self._bury_dead_runs():
                # A run on this host that died while this one worked held the last open
                # jobs: without this, the run would end "done" with those jobs still open.
                claimed = self.store.claim(self.run_id, want, time.time(), self.config.lease_s)
            if not claimed:
                self._exhausted = True
            self._claimed_total += len(claimed)
            self._queue.extend(claimed)
            self._held.update(j.job_id for j in claimed)
        return self._queue.pop(0) if self._queue else None

    def _bury_dead_runs(self) -> bool:
        """Record runs of this host whose process is gone as died and free their leases;
        True when there were any."""
        host = socket.gethostname()
        dead = [run_id for run_id, run_host, pid in queries.unfinished_runs(self.ledger)
                if run_host == host and run_id != self.run_id and pid != os.getpid()
                and not is_process_alive(pid)]
        self.store.bury_dead_runs(self.run_id, dead)
        return bool(dead)

    def _next_walk(self) -> _Walk | None:
        """The job to work on next: one whose backoff has run out first, else a fresh one;
        when only backing-off jobs are left, wait for the first of them. None: nothing left."""
        while True:
            with self._queue_lock:
                if self._backing_off and self._backing_off[0][0] <= time.monotonic():
                    return heapq.heappop(self._backing_off)[2]
                job = self._next_job()
                if job is None:
                    if not self._backing_off:
                        return None
                    wait = self._backing_off[0][0] - time.monotonic()
            if job is not None:
                return self._start_walk(job)
            started = time.monotonic()
            stopped = self.halt.event.wait(max(wait, 0.0))
            self._waited(WAIT_CAUSES[2], time.monotonic() - started)
            if stopped:
                return None

    def _back_off(self, walk: _Walk, delay_s: float) -> None:
        with self._queue_lock:
            heapq.heappush(self._backing_off,
                           (time.monotonic() + delay_s, next(self._backoff_order), walk))

    def _worker(self) -> None:
        out_of_work = None
        try:
            out_of_work = self._work()
        finally:
            # A worker that found no job left ends at that moment: the last one to do so
            # waited for nobody.
            ended = time.monotonic() if out_of_work is None else out_of_work
            with self._stats_lock:
                if out_of_work is not None:
                    self._out_of_work.append(out_of_work)
                self._last_exit = max(self._last_exit, ended)

    def _work(self) -> float | None:
        """Work jobs until none is left or a halt; returns when it found none left (monotonic
        time), None when it stopped for a halt."""
        while not self.halt.event.is_set():
            try:
                walk = self._next_walk()
                if walk is None:
                    return None if self.halt.event.is_set() else time.monotonic()
                step = self._walk(walk)
            except BaseException as exc:  # a worker must not die silently
                self._crashed(exc)
                return None
            if step is True:
                with self._queue_lock:
                    self._held.discard(walk.job.job_id)
            elif step is not False:
                # The job waits out its backoff aside; this worker takes another meanwhile.
                self._back_off(walk, step)
            # An unfinished job stays held; _finish releases it for the next run.
        return None

    # --- one job ----------------------------------------------------------------------------

    def _start_walk(self, job: ClaimedJob) -> _Walk:
        messages = render_messages(PromptInput(
            l1_name=job.l1.capitalize(), level=job.level, persona=job.persona, topic=job.topic,
            pattern_name=job.pattern.replace("_", " "), erroneous=job.erroneous,
            correct=job.correct))
        # Rounded up to a 64-token step: reservations err high, and jobs of about the same size
        # reserve the same, so a budget that stopped one run stops the next one too.
        prompt_tokens = -(-estimate_prompt_tokens(messages) // 64) * 64
        cheapest = min(self.prices.max_cost(m, prompt_tokens, self.config.max_tokens)
                       for m in self.config.models)
        # A resumed job picks its chain up where an earlier run left it: a model it already
        # used up is not paid for again.
        history = (queries.model_history(self.ledger, job.job_id, FILTER_VERSION)
                   if job.last_attempt_no else {})
        return _Walk(job, messages, prompt_tokens, cheapest, history)

    def _walk(self, walk: _Walk) -> bool | float:
        """Walk the chain for one job from where it stands. True when the job ended (accepted
        or failed), False when it stays open (halt, or out of budget), or the seconds to wait
        before its next try on the same model."""
        models = self.config.models
        while walk.position < len(models):
            model = models[walk.position]
            if not walk.on_model:
                used = walk.history.get(model, (0, 0, 0))
                if (used[2] or used[0] >= self.config.tries_per_model
                        or used[1] >= self.config.rejections_per_model):
                    walk.reasons.append(f"{model}: used up in an earlier run")
                    walk.position += 1
                    continue
                walk.on_model, walk.transient, walk.rejections = True, used[0], used[1]
            result = self._try_model(walk, model)
            if isinstance(result, float):
                return result
            if result in ("accepted", "gone"):
                return True
            if result == "halt":
                return False
            walk.reasons.append(f"{model}: {result}")
            walk.position += 1
            walk.on_model = False
        if any(r.endswith(": budget") for r in walk.reasons):
            return False  # a model was out of budget, not out of luck: left open for later
        if len(walk.reasons) == len(models) and all(r.endswith(": not_found")
                                                     for r in walk.reasons):
            # One model without endpoints is the next model's turn; every model of the chain
            # answering 404 is a base URL with no chat API behind it (or --models all wrong):
            # nothing to do with this job, which stays open.
            self.halt.stop("endpoint", f"every model of the chain answered HTTP 404 at "
                           f"{self.client.base_url}/chat/completions: no chat API at that URL, "
                           "or none of the models is served there; check --base-url (or "
                           "OPENROUTER_BASE_URL: the API's root, e.g. "
                           "https://openrouter.ai/api/v1) and --models; the jobs stay open")
            return False
        self.store.fail_job(walk.job.job_id, self.run_id, walk.reasons)
        self._count(failed_jobs=1)
        return True

    def _try_model(self, walk: _Walk, model: str) -> str | float:
        """Tries on one model, counting on from earlier runs' tries (walk.transient and
        walk.rejections). Returns 'accepted', 'gone' (someone else finished the job), 'halt',
        why this model gave up (for the record), or the backoff in seconds before the next try
        on it."""
        job, position = walk.job, walk.position
        table_max = self.prices.max_cost(model, walk.prompt_tokens, self.config.max_tokens)
        dearer = table_max > walk.cheapest + 1e-15  # not the chain's cheapest model
        while True:
            if self.halt.event.is_set():
                return "halt"
            self._waited(WAIT_CAUSES[0], self.cooldown.wait(self.halt.event))
            self._waited(WAIT_CAUSES[1], self.limiter.acquire(self.halt.event))
            if self.halt.event.is_set():
                return "halt"
            # An answer that cost more than the table's maximum raises the model's reservations
            # for the rest of the run, so the budget keeps holding.
            reserve = table_max * self.stats.underpriced.get(model, 1.0)
            start = self._begin(job, model, position, reserve, dearer)
            if start is None:
                return "halt"
            if start.refused == "budget":
                return "budget"
            if start.refused:
                return "gone"
            outcome = self._call(model, walk.messages, start.attempt_id, job)
            if outcome is None:
                return "halt"
            # Stop and pause before recording: recording takes the write lock, and no other
            # worker may send a request after a 402/401 or a 429 came back.
            halt = halt_reason(outcome)
            if halt:
                self._halt_for(halt, outcome)
            delay = backoff_delay(walk.transient + 1, outcome.retry_after_s,
                                  base_s=self.config.backoff_base_s,
                                  cap_s=self.config.backoff_cap_s)
            if outcome.error_class in ("rate_limited", "credit_in_flight"):
                self.cooldown.pause_for(delay)
            verdict_state, last = self._record(job, model, start.attempt_id, outcome,
                                               walk.prompt_tokens, table_max)
            if verdict_state == "accepted":
                return "accepted"
            if verdict_state == "rejected":
                walk.rejections += 1
                if walk.rejections >= self.config.rejections_per_model:
                    return f"rejected {walk.rejections}x ({last})"
                continue
            if halt:
                return "halt"
            if outcome.next_model:
                return outcome.error_class
            walk.transient += 1
            if walk.transient >= self.config.tries_per_model:
                return f"{outcome.error_class} x{walk.transient}"
            return float(delay)

    def _begin(self, job: ClaimedJob, model: str, position: int, reserve: float,  # type: ignore[no-untyped-def]
               dearer: bool):
        """Commit the attempt's intent; wait while the budget is held by our own requests in
        flight. The budget is reached when even the cheapest model of the chain no longer fits:
        then the run stops, so a rerun with the same budget sends nothing. None means halt."""
        while True:
            asked = time.monotonic()
            start = self.store.begin_attempt(
                job.job_id, self.run_id, model, position, PROMPT_VERSION, self.config.max_tokens,
                reserve, self.config.budget_usd, time.time(), self.config.lease_s)
            if start.refused is None:
                self._waited(WAIT_CAUSES[5], time.monotonic() - asked, at_least=0.0)
            elif start.refused == "budget":  # a refusal is no intent: the budget held it up
                self._waited(WAIT_CAUSES[3], time.monotonic() - asked)
            if start.refused != "budget":
                return start
            with self._flight:
                # Counted in the same transaction as the refusal: a worker whose intent shares
                # our group commit is already in flight there, before it counts itself here.
                if start.open_mine == 0:
                    if dearer:
                        # Only this dearer fallback does not fit: the job waits for a larger
                        # budget while the cheaper models go on with other jobs.
                        self._budget_skipped += 1
                        return AttemptStart(refused="budget")
                    self.halt.stop("budget", f"budget of ${self.config.budget_usd:.6f} reached "
                                   "(spend plus requests that may still be billed)")
                    return None
                started = time.monotonic()
                self._flight.wait(0.05)  # our requests in flight may free their reservation
                self._waited(WAIT_CAUSES[3], time.monotonic() - started)
            if self.halt.event.is_set():
                return None

    def _call(self, model: str, messages: list[dict[str, str]], attempt_id: int,
              job: ClaimedJob) -> CallOutcome | None:
        if self.halt.event.is_set():
            # The intent is committed but nothing was sent: say so, at no cost.
            self._record_unsent(job, attempt_id)
            return None
        return self.client.chat(model, messages, self.config.max_tokens)

    def _record_unsent(self, job: ClaimedJob, attempt_id: int) -> None:
        self.store.finish_attempt(attempt_id, job.job_id, self.run_id, OutcomeRecord(
            error_class="not_sent", cost_usd=0.0, cost_source="none",
            message="run stopped before the request was sent"))
        self._landed()

    def _landed(self) -> None:
        with self._flight:
            self._flight.notify_all()  # wakes a worker waiting for budget room

    def _record(self, job: ClaimedJob, model: str, attempt_id: int, outcome: CallOutcome,
                prompt_tokens: int, table_max: float) -> tuple[str, str]:
        """Queue the outcome (+ verdict, acceptance) as one transaction; the worker goes on
        without waiting for its commit (the store's queue keeps its later writes after it).

        Returns ('accepted' | 'rejected' | 'error', last reason). 'accepted' means the job is
        done: accepted by this attempt, or by another worker first (the commit decides)."""
        cost, source = self._cost(model, outcome, prompt_tokens)
        self._check_price(model, cost, table_max)
        verdict_rec = None
        passed = False
        last = outcome.error_class
        if outcome.error_class in ("ok", "length", "content_filter"):
            v = judge(outcome.content, outcome.finish_reason, job.erroneous, job.correct,
                      self.config.filter_config)
            passed = v.passed
            last = ",".join(v.reasons) or "passed"
            verdict_rec = verdict_record(v)
        record = outcome_record(outcome, cost, source)

        def committed(accepted: bool, error: BaseException | None) -> None:
            if error is not None:
                self._crashed(error)
            else:
                self._count_outcome(model, outcome, cost, verdict_rec, accepted)
            self._landed()

        self.store.finish_attempt_later(attempt_id, job.job_id, self.run_id, record,
                                        verdict_rec, passed, committed)
        if verdict_rec is None:
            return "error", last
        return ("accepted" if passed else "rejected"), last

    def _count_outcome(self, model: str, outcome: CallOutcome, cost: float,
                       verdict_rec: VerdictRecord | None, accepted: bool) -> None:
        with self._stats_lock:
            s = self.stats
            s.attempts += 1
            s.spend_usd += cost
            if verdict_rec is None:
                s.failed_attempts += 1
                s.errors[outcome.error_class] += 1
            elif accepted:
                s.accepted += 1
                s.models[outcome.model_served or model] += 1
            elif not verdict_rec.passed:
                s.rejected += 1
                for r in verdict_rec.reasons:
                    s.rejections[r] += 1
        if self._on_progress is not None:
            self._on_progress(self.stats)

    def _check_price(self, model: str, cost: float, table_max: float) -> None:
        """Reservations assume the price table: an answer billed above the table's maximum (a
        provider dearer than the table, another model served, a prompt longer than estimated)
        would let every request in flight overshoot the budget by as much."""
        if table_max <= 0.0 or cost <= table_max * (1 + 1e-9):
            return
        with self._stats_lock:
            known = self.stats.underpriced
            known[model] = max(known.get(model, 1.0), cost / table_max)

    def _cost(self, model: str, outcome: CallOutcome, prompt_tokens: int) -> tuple[float, str]:
        if outcome.cost_usd is not None:
            return float(outcome.cost_usd), "response"
        price = self.prices.get(outcome.model_served or model)
        if outcome.prompt_tokens is not None or outcome.completion_tokens is not None:
            return price.cost(outcome.prompt_tokens or 0, outcome.completion_tokens or 0), \
                "estimate"
        if outcome.http_status == 200:
            # A generation ran and is billed even when the body says nothing about usage;
            # counting it as free would let spend creep past the budget unseen.
            completion = (estimate_prompt_tokens([{"content": outcome.content}])
                          if outcome.content else self.config.max_tokens)
            return price.cost(prompt_tokens, completion), "estimate"
        if outcome.error_class == "timeout" and outcome.http_status is None:
            # No answer came back in time: the provider may go on generating and bill it
            # (shared/reference/openrouter.md, Idempotency). Counted at its maximum, as its
            # reservation was, so that neither the budget nor the spend takes a possibly billed
            # generation for free (a 408 is an answer: the server declined the request).
            return price.cost(prompt_tokens, self.config.max_tokens), "estimate"
        return 0.0, "none"

    def _halt_for(self, reason: str, outcome: CallOutcome) -> None:
        if reason == "key":
            self.halt.stop("key", "the API key was rejected (HTTP 401); set a valid "
                           "OPENROUTER_API_KEY and run again")
        else:
            detail = outcome.message or "credit exhausted"
            self.halt.stop("credit", f"out of credit (HTTP 402, {outcome.limit_source or 'no limit_source'}): "
                           f"{detail}; top up, then run `python cli.py run` again to resume",
                           outcome.limit_source)

    def _waited(self, cause: str, seconds: float, at_least: float = 0.0005) -> None:
        # By default a wait that did not happen (a clock read apart) is not counted; a commit
        # always happens, so its every millisecond counts.
        if seconds > at_least:
            with self._stats_lock:
                self.stats.waited_s[cause] += seconds

    def _count(self, **kw: int) -> None:
        with self._stats_lock:
            for k, v in kw.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)
