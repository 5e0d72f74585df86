"""Turning what a call returned, and what the filter said of it, into ledger records."""

from __future__ import annotations

import json
from typing import Any

from .call_outcome import CallOutcome
from .dialogue import to_messages
from .records import OutcomeRecord, VerdictRecord


def halt_reason(outcome: CallOutcome) -> str | None:
    """'key' or 'credit' when the whole run must stop, else None.

    An in-flight-budget 402 is worth waiting for only when the server says how long: without a
    usable Retry-After it is not a wait-and-retry case, and retrying could bill past the limit.
    """
    if outcome.error_class == "credit_in_flight" and outcome.retry_after_s is None:
        return "credit"
    return outcome.halt_reason


def outcome_record(o: CallOutcome, cost_usd: float, cost_source: str) -> OutcomeRecord:
    return OutcomeRecord(
        error_class=o.error_class, cost_usd=cost_usd, cost_source=cost_source,
        http_status=o.http_status, error_code=o.error_code, error_type=o.error_type,
        limit_source=o.limit_source, retry_after_s=o.retry_after_s, message=o.message,
        model_served=o.model_served, provider=o.provider, generation_id=o.generation_id,
        prompt_tokens=o.prompt_tokens, completion_tokens=o.completion_tokens,
        latency_ms=round(o.latency_ms, 3), finish_reason=o.finish_reason, content=o.content)


def verdict_record(v: Any) -> VerdictRecord:
    m = dict(v.metrics)
    return VerdictRecord(
        filter_version=v.filter_version, passed=v.passed, reasons=tuple(v.reasons),
        turns=int(m.get("turns", 0)), tutor_questions=int(m.get("tutor_questions", 0)),
        self_corrected=bool(m.get("learner_self_corrected", False)), metrics=m,
        messages_json=json.dumps(to_messages(v.turns), ensure_ascii=False) if v.turns else None)
