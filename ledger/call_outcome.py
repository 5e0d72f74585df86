"""What one chat answer means: the CallOutcome a call becomes, and its error class read from the
status, `error.code` and `error.metadata` (never from message text, which changes without
notice). The client (ledger.client) makes the call and fills the record; the retry policy
(ledger.retry) and the SQL reports read the class.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ledger.retry import NEXT_MODEL, RETRYABLE, STOP_RUN

# Stable strings: stored in the ledger and grouped on by the SQL reports.
OK_200 = "ok"
# HTTP 200 but unusable; all may be billed. length and content_filter keep their content so
# the caller can record (and reject) what it paid for.
FAILED_200 = ("length", "content_filter", "error_in_200", "no_choices", "malformed")
# 404: OpenRouter has no endpoint for this model ("No endpoints found for ..."), or, from a
# wrong base URL, there is no chat API at all; 405 only the latter. The run loop tells them
# apart by whether every model of a job's chain answers so.
_STATUS_CLASSES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                   405: "not_found", 408: "timeout", 429: "rate_limited"}
HTTP_ERRORS = (*_STATUS_CLASSES.values(), "credit_in_flight", "credit_exhausted", "server_error",
               "http_error")
# "timeout" also covers a client-side connect or read timeout (no response, or a cut-off body).
ERROR_CLASSES = frozenset((OK_200, *FAILED_200, *HTTP_ERRORS, "connection_error"))
IN_FLIGHT_LIMIT_SOURCE = "openrouter_in_flight_budget"


@dataclass(frozen=True, kw_only=True)
class CallOutcome:
    """What one chat request produced, ready to be recorded as an attempt's outcome."""

    error_class: str  # one of ERROR_CLASSES; "ok" only for a usable completion
    latency_ms: float
    http_status: int | None = None  # None when no HTTP response arrived
    error_code: int | None = None  # error.code from the body
    error_type: str | None = None  # error.metadata.error_type
    limit_source: str | None = None  # error.metadata.limit_source (402)
    retry_after_s: float | None = None  # parsed and capped Retry-After
    message: str | None = None  # one line, <= client.MESSAGE_MAX_CHARS, key scrubbed
    model_served: str | None = None
    provider: str | None = None
    generation_id: str | None = None  # X-Generation-Id header, else body `id`
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None  # usage.cost when the server sent it; None means "estimate it"
    finish_reason: str | None = None
    content: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_class == "ok"

    @property
    def transient(self) -> bool:
        """The same call may succeed after a pause."""
        return self.error_class in RETRYABLE

    @property
    def next_model(self) -> bool:
        """This model will not do for this prompt; the next one in the chain may."""
        return self.error_class in NEXT_MODEL

    @property
    def halt_reason(self) -> str | None:
        """"key" or "credit" when the whole run must stop, else None."""
        return STOP_RUN.get(self.error_class)


def classify(status: int, body: object | None
             ) -> tuple[str, int | None, str | None, str | None]:
    """(error_class, error_code, error_type, limit_source) from a status and a decoded body.

    `body` is the decoded JSON, or None when the body was not JSON. An error inside a 200 is
    read from the top-level `error`, else from `choices[0].error` when finish_reason is "error".
    """
    doc = body if isinstance(body, dict) else {}
    error = as_dict(doc.get("error"))
    choice = first_choice(doc)
    if error is None and status == 200 and choice and choice.get("finish_reason") == "error":
        error = as_dict(choice.get("error"))
    code, error_type, limit_source = _error_details(error)
    if status == 200:
        error_class = _classify_200(body, choice)
    elif status == 402:
        in_flight = limit_source == IN_FLIGHT_LIMIT_SOURCE
        error_class = "credit_in_flight" if in_flight else "credit_exhausted"
    elif 500 <= status <= 599:
        error_class = "server_error"
    else:
        error_class = _STATUS_CLASSES.get(status, "http_error")
    return error_class, code, error_type, limit_source


def _classify_200(body: object | None, choice: dict | None) -> str:
    if not isinstance(body, dict):
        return "malformed"
    if body.get("error") is not None:
        return "error_in_200"
    if choice is None:
        return "no_choices"
    finish_reason = choice.get("finish_reason")
    if finish_reason == "error":
        return "error_in_200"
    if finish_reason in ("length", "content_filter"):
        return finish_reason
    content = choice_content(choice)
    if content is None or not content.strip():
        return "no_choices"
    if finish_reason not in ("stop", None):
        # tool_calls or an unnormalised value: not a complete answer to our prompt.
        return "no_choices"
    return "ok"


def _error_details(error: dict | None) -> tuple[int | None, str | None, str | None]:
    if error is None:
        return None, None, None
    metadata = as_dict(error.get("metadata")) or {}
    limit_source = as_str(metadata.get("limit_source"))
    return as_int(error.get("code")), as_str(metadata.get("error_type")), limit_source


def first_choice(body: dict) -> dict | None:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    return as_dict(choices[0])


def choice_content(choice: dict) -> str | None:
    message = as_dict(choice.get("message"))
    return as_str(message.get("content")) if message is not None else None


def as_dict(value: object) -> dict | None:
    return value if isinstance(value, dict) else None


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def as_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return int(value) if isinstance(value, str) and value.strip().isdigit() else None


def as_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def decode_body(raw: bytes) -> object | None:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # ValueError covers JSONDecodeError and bad UTF-8
        return None
