"""What the remaining jobs are expected to cost, before anything is spent."""

from __future__ import annotations

from dataclasses import dataclass

from . import queries
from .db import Ledger
from .launch import prices_for, typical_prompt_tokens
from .render import table, usd


@dataclass(frozen=True)
class ModelEstimate:
    model: str
    price_source: str
    expected_usd: float   # remaining jobs x observed attempts per job x observed tokens
    worst_usd: float      # every attempt at max_tokens, at the observed attempts per job


def estimate(ledger: Ledger, models: tuple[str, ...], max_tokens: int) -> tuple[int,
                                                                               list[ModelEstimate]]:
    remaining = queries.open_job_count(ledger)
    prices = prices_for(ledger)
    usage = queries.observed_usage(ledger)
    prompt_default = typical_prompt_tokens()
    out = []
    for model in models:
        seen = usage.get(model)
        prompt = seen.prompt_tokens if seen else prompt_default
        # Before any response, assume three quarters of max_tokens: dialogues run long.
        completion = seen.completion_tokens if seen else 0.75 * max_tokens
        per_job = seen.attempts_per_accept if seen and seen.attempts_per_accept else 1.0
        price = prices.get(model)
        out.append(ModelEstimate(
            model=model, price_source=price.source,
            expected_usd=remaining * per_job * price.cost(prompt, completion),  # type: ignore[arg-type]
            worst_usd=remaining * per_job * price.cost(int(prompt), max_tokens)))
    return remaining, out


def estimate_text(ledger: Ledger, models: tuple[str, ...], max_tokens: int) -> str:
    remaining, rows = estimate(ledger, models, max_tokens)
    body = table([[r.model, r.price_source, usd(r.expected_usd), usd(r.worst_usd)] for r in rows],
                 ["model", "price from", "expected if all on this model", "worst case"])
    first = rows[0] if rows else None
    head = f"{remaining} open job(s)"
    if first:
        head += (f"; on the first model of the chain expect about {usd(first.expected_usd)} "
                 f"(at most {usd(first.worst_usd)} at the observed attempts per job)")
    return head + "\n" + body
