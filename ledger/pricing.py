"""Prices and cost arithmetic.

Exact cost comes from the response (`usage.cost`); a price table is only for estimates (a
response without usage.cost, `estimate`, and the budget's worst case for a request in flight).
Prices recorded in the ledger (from `prices --refresh`) win over the bundled table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .records import PriceRecord

BUNDLED_PRICES_PATH = Path(__file__).resolve().parent / "data" / "prices.json"
# A model missing from every table is priced high on purpose: the budget must over-reserve,
# never under-reserve. Per token, in and out.
UNKNOWN_MODEL_PRICE = (0.00001, 0.00003)
CHARS_PER_TOKEN = 3.0  # conservative (English runs ~4): reservations should err high


@dataclass(frozen=True)
class Price:
    prompt_usd_per_token: float
    completion_usd_per_token: float
    source: str

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_usd_per_token
                + completion_tokens * self.completion_usd_per_token)


class PriceBook:
    """Prices by model: ledger rows over the bundled table over a deliberately high default."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)

    def get(self, model: str) -> Price:
        found = self._prices.get(model)
        if found is not None:
            return found
        return Price(*UNKNOWN_MODEL_PRICE, source="unknown")

    def known(self, model: str) -> bool:
        return model in self._prices

    def models(self) -> list[str]:
        return sorted(self._prices)

    def max_cost(self, model: str, prompt_tokens: int, max_tokens: int) -> float:
        """The most one request can cost: its prompt plus max_tokens of output."""
        return self.get(model).cost(prompt_tokens, max_tokens)


def load_bundled(path: Path = BUNDLED_PRICES_PATH) -> dict[str, Price]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {m: Price(float(p["prompt"]), float(p["completion"]), "bundled")
            for m, p in data["models"].items()}


def price_book(ledger_prices: Mapping[str, tuple[float, float, str]]) -> PriceBook:
    prices = load_bundled()
    for model, (p_in, p_out, source) in ledger_prices.items():
        prices[model] = Price(p_in, p_out, source)
    return PriceBook(prices)


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    chars = sum(len(m.get("content", "")) for m in messages)
    return int(chars / CHARS_PER_TOKEN) + 8 * len(messages)


def prices_from_models(models: list[dict]) -> list[PriceRecord]:
    """PriceRecords from a GET /models listing; models without numeric prices are skipped."""
    out = []
    for m in models:
        pricing = m.get("pricing") if isinstance(m, dict) else None
        if not isinstance(pricing, dict) or not isinstance(m.get("id"), str):
            continue
        try:
            p_in, p_out = float(pricing["prompt"]), float(pricing["completion"])
        except (KeyError, TypeError, ValueError):
            continue
        if p_in < 0 or p_out < 0:  # OpenRouter marks variable-priced routers with -1
            continue
        out.append(PriceRecord(m["id"], p_in, p_out, "models_api"))
    if not out:
        raise UsageError("GET /models returned no usable prices; check --base-url")
    return out
