"""Frozen rows that cross the store boundary: nothing outside store/queries sees a live row."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple


_second: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """ISO-8601 UTC with microseconds: sorts as text and round-trips through every backend.
    The run loop stamps several events per job, so the date and time of the current second
    are formatted once per second (datetime.now().strftime costs 2 us a call, this 0.4)."""
    global _second
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{ns // 1000:06d}Z"


class PlannedJob(NamedTuple):
    """A job as the jobs table holds it, fields in its column order. A tuple, not a frozen
    dataclass: a big plan builds a million of them (0.2 against 0.8 us each)."""

    job_id: str
    l1: str
    pattern: str
    erroneous: str
    correct: str
    level: str
    variant: int
    topic: str
    persona: str
    source: str = "plan"


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    l1: str
    pattern: str
    erroneous: str
    correct: str
    level: str
    variant: int
    topic: str
    persona: str
    last_attempt_no: int


@dataclass(frozen=True)
class AttemptStart:
    attempt_id: int | None = None
    attempt_no: int | None = None
    refused: str | None = None  # 'budget' | 'lease_lost' | 'done'
    open_mine: int = 0  # with 'budget': this run's attempts still open (they may free room)


@dataclass(frozen=True)
class OutcomeRecord:
    error_class: str
    cost_usd: float
    cost_source: str
    http_status: int | None = None
    error_code: int | None = None
    error_type: str | None = None
    limit_source: str | None = None
    retry_after_s: float | None = None
    message: str | None = None
    model_served: str | None = None
    provider: str | None = None
    generation_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None
    content: str | None = None


@dataclass(frozen=True)
class VerdictRecord:
    filter_version: str
    passed: bool
    reasons: tuple[str, ...]
    turns: int
    tutor_questions: int
    self_corrected: bool
    metrics: Mapping[str, Any] = field(default_factory=dict)
    messages_json: str | None = None


@dataclass(frozen=True)
class PriceRecord:
    model: str
    prompt_usd_per_token: float
    completion_usd_per_token: float
    source: str
