"""The simulator's settings: fault probabilities, script tokens, latency and credit limits,
validated into a frozen SimConfig (from Python, the CLI, or POST /_sim/faults)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

from ledger.errors import UsageError
from ledger.simulator_wire import DEFAULT_PRICES

# Fault probability field -> the outcome it triggers. One uniform draw per request walks this
# list, so at most one fault hits a request.
FAULT_TOKENS: Mapping[str, str] = MappingProxyType(
    {
        "p_429": "429", "p_500": "500", "p_502": "502", "p_503": "503", "p_408": "408",
        "p_in_flight_402": "402_inflight", "p_403": "403", "p_400": "400",
        "p_error_in_200": "error_in_200", "p_finish_error": "finish_error", "p_length": "length",
        "p_content_filter": "content_filter", "p_malformed": "malformed", "p_empty": "empty",
        "p_no_usage": "no_usage", "p_hang": "hang", "p_reset": "reset",
        "p_correction": "correction", "p_huge": "huge", "p_binary": "binary",
    }
)
SCRIPT_TOKENS = frozenset(
    {"ok", "401", "402_credits", "402_key", "404_model", "429_date", "429_nohdr", "429_garbage"}
    | set(FAULT_TOKENS.values())
)
_RETRY_AFTER_FORMS = ("seconds", "date", "missing", "garbage")
# Settings that may change while the server runs; the rest shape the server itself.
RUNTIME_FIELDS = frozenset(FAULT_TOKENS) | {
    "retry_after_form", "retry_after_s", "hang_s", "latency_ms", "latency_dist", "latency_sigma",
    "credit_limit_usd", "limit_kind", "model_map",
}


@dataclass(frozen=True)
class SimConfig:
    """How the simulated OpenRouter behaves. Probabilities are per chat request, 0..1."""

    latency_ms: float = 0.0
    latency_dist: str = "fixed"  # "fixed" | "lognormal" (latency_ms is then the median)
    latency_sigma: float = 0.5
    seed: int = 0
    api_key: str | None = None  # None accepts any non-empty key
    credit_limit_usd: float | None = None
    limit_kind: str = "credits"  # "credits" | "key": which 402 limit_source an exhausted limit sends
    retry_after_form: str = "seconds"  # "seconds" | "date" | "missing" | "garbage"
    retry_after_s: float = 1.0
    hang_s: float = 30.0
    billing_log: str | None = None
    model_map: Mapping[str, str] = field(default_factory=dict)  # requested -> served model
    prices: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    p_429: float = 0.0
    p_500: float = 0.0
    p_502: float = 0.0
    p_503: float = 0.0
    p_408: float = 0.0
    p_in_flight_402: float = 0.0
    p_403: float = 0.0
    p_400: float = 0.0
    p_error_in_200: float = 0.0
    p_finish_error: float = 0.0
    p_length: float = 0.0
    p_content_filter: float = 0.0
    p_malformed: float = 0.0
    p_empty: float = 0.0
    p_no_usage: float = 0.0
    p_hang: float = 0.0
    p_reset: float = 0.0
    p_correction: float = 0.0
    p_huge: float = 0.0
    p_binary: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_map", MappingProxyType(dict(self.model_map)))
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))
        _check_choice("latency_dist", self.latency_dist, ("fixed", "lognormal"))
        _check_choice("limit_kind", self.limit_kind, ("credits", "key"))
        _check_choice("retry_after_form", self.retry_after_form, _RETRY_AFTER_FORMS)
        for name in ("latency_ms", "latency_sigma", "retry_after_s", "hang_s"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.credit_limit_usd is not None and self.credit_limit_usd < 0:
            raise UsageError(f"credit_limit_usd must be >= 0 or None, got {self.credit_limit_usd}.")
        for name in FAULT_TOKENS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} is a probability: give a number from 0 to 1, got {getattr(self, name)}.")
        total = sum(getattr(self, name) for name in FAULT_TOKENS)
        if total > 1.0 + 1e-9:
            raise UsageError(f"The fault probabilities add up to {total:g}; lower them to a sum of at most 1.")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SimConfig:
        """A config from CLI-style options: dashes allowed, numbers may arrive as strings."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for raw_name, value in kwargs.items():
            name = raw_name.replace("-", "_")
            if name not in known:
                raise UsageError(f"Unknown simulator option {raw_name!r}; known: {', '.join(sorted(known))}.")
            values[name] = _coerce(name, str(known[name].type), value)
        return cls(**values)

    def fault_table(self) -> tuple[tuple[float, str], ...]:
        """(cumulative probability, token) for every fault that can happen."""
        table, cumulative = [], 0.0
        for name, token in FAULT_TOKENS.items():
            if getattr(self, name) > 0:
                cumulative += getattr(self, name)
                table.append((cumulative, token))
        return tuple(table)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


def _coerce(name: str, type_name: str, value: Any) -> Any:
    if value is None or not isinstance(value, str) or type_name == "str":
        if name == "model_map" and isinstance(value, str):
            return _parse_model_map(value)
        return value
    if "None" in type_name and value.lower() in ("", "none", "null"):
        return None
    try:
        if type_name.startswith("float"):
            return float(value)
        if type_name.startswith("int"):
            return int(value)
    except ValueError:
        raise UsageError(f"{name} needs a number, got {value!r}.") from None
    if name == "model_map":
        return _parse_model_map(value)
    return value


def _parse_model_map(text: str) -> dict[str, str]:
    """'asked=served,asked2=served2' -> {asked: served, ...}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise UsageError(f"model_map takes 'asked=served' pairs separated by commas, got {text!r}.")
    return {asked.strip(): served.strip() for asked, served in pairs}
