"""When to try an OpenRouter call again, and how long every worker waits before it does.

Each try is its own recorded attempt, so the retry loop lives in the runner; this module only
holds the policy (which outcome classes are transient, which end a model, which end the run),
the reading of a server's Retry-After, and the waiting primitives shared by the worker threads.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from datetime import timezone
from email.utils import parsedate_to_datetime

import backoff

from ledger.errors import UsageError

# Outcome classes worth the same call again after a pause. error_in_200, malformed and
# no_choices are listed because they come from a generation that broke half-way, not from the
# request itself; a bad request would have been a 400.
RETRYABLE = frozenset({
    "rate_limited", "server_error", "timeout", "connection_error", "credit_in_flight",
    "error_in_200", "malformed", "no_choices",
})

# Permanent for this prompt on this model: another model in the chain may still do.
NEXT_MODEL = frozenset({"bad_request", "forbidden", "not_found"})

# Outcome class -> halt reason. These cannot get better by trying any model.
STOP_RUN = {"unauthorized": "key", "credit_exhausted": "credit"}

# Past this many doublings every sensible cap is reached; bounding the walk keeps a huge
# try number from costing a long loop.
_MAX_DOUBLINGS = 64


def parse_retry_after(
    value: str | None, *, now: float | None = None, cap_s: float = 120.0
) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date.

    A date already past means "now" (0.0). Missing, negative or unreadable values give None,
    so the caller falls back to its own backoff instead of trusting nonsense.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = _seconds_until_http_date(text, time.time() if now is None else now)
        if seconds is None:
            return None
    else:
        if not math.isfinite(seconds) or seconds < 0:
            return None
    return min(seconds, cap_s)


def _seconds_until_http_date(text: str, now: float) -> float | None:
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        # RFC 9110 dates are always GMT; "-0000" parses as naive.
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, moment.timestamp() - now)


def backoff_delay(
    try_no: int,
    retry_after_s: float | None,
    *,
    base_s: float = 0.5,
    factor: float = 2.0,
    cap_s: float = 30.0,
) -> float:
    """Seconds to wait before retry number `try_no` (1 = the first retry).

    Full jitter over an exponential ceiling (base_s, base_s*factor, ... up to cap_s), so that
    many workers failing together do not come back together. A server's Retry-After is a floor:
    the wait is at least that long, but never longer than cap_s.
    """
    steps = min(max(try_no, 1), _MAX_DOUBLINGS)
    ceilings = backoff.expo(base=factor, factor=base_s, max_value=cap_s)
    next(ceilings)  # backoff's generators yield once before the first value
    ceiling = next(itertools.islice(ceilings, steps - 1, None))
    delay = backoff.full_jitter(min(ceiling, cap_s))
    if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, cap_s))
    return delay


def _sleep(seconds: float, stop_event: threading.Event | None) -> bool:
    """Sleep, waking early if stop_event is set; True when stopped."""
    if stop_event is None:
        time.sleep(seconds)
        return False
    return stop_event.wait(seconds)


class Cooldown:
    """A pause shared by every worker using one key.

    A 429 or an in-flight 402 is about the key, not about the job that happened to see it:
    if only that worker backed off, the others would keep hitting the limit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0  # time.monotonic() at which the pause ends

    def pause_for(self, seconds: float) -> None:
        """Pause everyone for `seconds` from now, unless an existing pause already lasts longer."""
        if not (seconds > 0 and math.isfinite(seconds)):
            return
        until = time.monotonic() + seconds
        with self._lock:
            if until > self._until:
                self._until = until

    def remaining(self) -> float:
        with self._lock:
            until = self._until
        return max(0.0, until - time.monotonic())

    def wait(self, stop_event: threading.Event | None = None) -> float:
        """Block until the pause ends or stop_event is set; return the seconds waited."""
        started = time.monotonic()
        # Loop because another worker may extend the pause while this one sleeps.
        while (left := self.remaining()) > 0:
            if _sleep(left, stop_event):
                break
        return time.monotonic() - started

    def __repr__(self) -> str:
        return f"Cooldown(remaining={self.remaining():.3f}s)"


class RateLimiter:
    """Evenly spaced request slots shared by all threads (`--rpm`); None means no limit.

    Slots are handed out in order under a lock, so N threads calling at once get slots
    60/rpm seconds apart instead of a burst followed by silence.
    """

    def __init__(self, rpm: float | None) -> None:
        if rpm is not None and not (rpm > 0):
            raise UsageError(f"--rpm must be a positive number of requests per minute, got {rpm!r}")
        self.rpm = rpm
        self._interval_s = 60.0 / rpm if rpm is not None and math.isfinite(rpm) else 0.0
        self._lock = threading.Lock()
        self._next_slot = 0.0  # time.monotonic() of the next free slot

    def acquire(self, stop_event: threading.Event | None = None) -> float:
        """Wait for this caller's slot (or until stop_event is set); return the seconds
        waited."""
        if not self._interval_s:
            return 0.0
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval_s
        if slot > now:
            _sleep(slot - now, stop_event)
        return time.monotonic() - now

    def __repr__(self) -> str:
        return f"RateLimiter(rpm={self.rpm!r})"
