"""Run settings from a config file and command-line options, validated into a RunConfig.

A config file is JSON with any of: models (list), max_tokens, concurrency, budget_usd, rpm,
tries_per_model, rejections_per_model, base_url, correction_phrases (list), min_turns.
Command-line options win over the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import UsageError
from .filters import FilterConfig

DEFAULT_MODELS = ("google/gemini-2.0-flash-001", "anthropic/claude-3.5-haiku",
                  "moonshotai/kimi-k2.5")


@dataclass(frozen=True)
class RunConfig:
    """One run's settings: the model chain, limits, retry policy and filter rules."""

    models: tuple[str, ...] = DEFAULT_MODELS
    max_tokens: int = 200
    concurrency: int = 8
    budget_usd: float | None = None
    rpm: float | None = None
    tries_per_model: int = 3        # transient failures on one model before the next
    rejections_per_model: int = 2   # quality rejections on one model before the next
    lease_s: float = 900.0          # a lease outlives every retry of one job on one model
    retry_failed: bool = False
    limit: int | None = None        # stop after this many jobs were finished (accepted/failed)
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    filter_config: FilterConfig = field(default_factory=FilterConfig)

    def public(self, base_url: str) -> dict[str, Any]:
        """What a run row records about its configuration (never the key)."""
        return {"models": list(self.models), "max_tokens": self.max_tokens,
                "concurrency": self.concurrency, "budget_usd": self.budget_usd,
                "rpm": self.rpm, "tries_per_model": self.tries_per_model,
                "rejections_per_model": self.rejections_per_model, "base_url": base_url}


_FILE_KEYS = {"models", "max_tokens", "concurrency", "budget_usd", "rpm", "tries_per_model",
              "rejections_per_model", "base_url", "correction_phrases", "min_turns"}


def _read_file(path: str) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a JSON object")
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise UsageError(f"config file {path}: unknown setting {unknown[0]!r}; known: "
                         f"{', '.join(sorted(_FILE_KEYS))}")
    return data


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _non_negative(name: str, value: Any) -> float:
    # Not NaN or infinity: JSON files may spell both, and a NaN budget compares false with
    # every spend, so it would be no budget at all.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
            or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def build_run_config(*, config_path: str | None = None, models: list[str] | None = None,
                     concurrency: Any = None, budget_usd: Any = None, rpm: Any = None,
                     max_tokens: Any = None, retry_failed: bool = False,
                     limit: Any = None) -> tuple[RunConfig, str | None]:
    """The RunConfig and the base URL the file names (None if it names none)."""
    f = _read_file(config_path) if config_path else {}
    cfg = RunConfig()

    def pick(option: Any, key: str) -> Any:
        return option if option is not None else f.get(key)

    chain = models or f.get("models")
    if chain is not None:
        if (not isinstance(chain, list) or not chain
                or not all(isinstance(m, str) and m.strip() for m in chain)):
            raise UsageError("--models takes a comma-separated chain, e.g. "
                             "--models google/gemini-2.0-flash-001,anthropic/claude-3.5-haiku")
        cfg = replace(cfg, models=tuple(m.strip() for m in chain))
    if (v := pick(concurrency, "concurrency")) is not None:
        cfg = replace(cfg, concurrency=_positive_int("--concurrency", v))
    if (v := pick(max_tokens, "max_tokens")) is not None:
        cfg = replace(cfg, max_tokens=_positive_int("--max-tokens", v))
    if (v := pick(budget_usd, "budget_usd")) is not None:
        cfg = replace(cfg, budget_usd=_non_negative("--budget-usd", v))
    if (v := pick(rpm, "rpm")) is not None:
        cfg = replace(cfg, rpm=_non_negative("--rpm", v) or None)
    for key in ("tries_per_model", "rejections_per_model"):
        if key in f:
            cfg = replace(cfg, **{key: _positive_int(key, f[key])})
    if limit is not None:
        cfg = replace(cfg, limit=_positive_int("--limit", limit))
    if retry_failed:
        cfg = replace(cfg, retry_failed=True)
    fc = FilterConfig()
    if "correction_phrases" in f:
        phrases = f["correction_phrases"]
        if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
            raise UsageError("correction_phrases must be a list of strings")
        fc = replace(fc, correction_phrases=tuple(phrases))
    if "min_turns" in f:
        fc = replace(fc, min_turns=_positive_int("min_turns", f["min_turns"]))
    cfg = replace(cfg, filter_config=fc)
    base_url = f.get("base_url")
    if base_url is not None and not isinstance(base_url, str):
        raise UsageError("base_url must be a string")
    return cfg, base_url
