"""What the simulator sends on the wire: OpenRouter's bodies, headers and statuses.

Pure functions, no I/O, no state. The content inside a completion comes from
ledger.simulator_dialogues; this module wraps it in the OpenRouter envelope (usage, cost,
provider, finish reasons), parses the chat requests, and shapes every error the simulator can
inject (an error inside an HTTP 200, the documented error statuses with their Retry-After).
"""

from __future__ import annotations

import email.utils
import json
import math
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Mapping

from ledger.simulator_dialogues import (
    TEMPLATES, SentencePair, binary_content, correction_content, dialogue_content, huge_content,
    sentence_pair, truncated,
)

# USD per 1M tokens, (input, output).
DEFAULT_PRICES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "google/gemini-2.0-flash-001": (0.10, 0.40),
        "anthropic/claude-3.5-haiku": (0.80, 4.00),
        "moonshotai/kimi-k2.5": (0.50, 2.00),
    }
)
UNKNOWN_MODEL_PRICE = (0.50, 1.50)
_PROVIDERS = {"google": "Google", "anthropic": "Anthropic", "moonshotai": "Moonshot AI"}
# What each provider calls stop / length / content_filter / error, for native_finish_reason.
_NATIVE_FINISH = {
    "Google": {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY", "error": "OTHER"},
    "Anthropic": {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal", "error": "error"},
}
_FINISH_BY_KIND = {"length": "length", "content_filter": "content_filter", "finish_error": "error"}
# The share of a dialogue a provider cut off mid-answer still returns.
_PARTIAL_SHARE = {"length": 0.5, "content_filter": 0.25, "finish_error": 0.33}
# Generation outcomes (HTTP 200, billed); every other outcome is a rejection.
GENERATION_KINDS = frozenset(
    {"ok", "length", "content_filter", "finish_error", "error_in_200", "malformed", "empty",
     "no_usage", "correction", "huge", "binary"}
)


def provider_name(model: str) -> str:
    return _PROVIDERS.get(model.partition("/")[0], "Simulated")


def cost_usd(prices: Mapping[str, tuple[float, float]], model: str, prompt_tokens: int,
             completion_tokens: int) -> float:
    """What a generation costs: tokens times the model's per-token prices."""
    price_in, price_out = prices.get(model, UNKNOWN_MODEL_PRICE)
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000


def approx_tokens(chars: int) -> int:
    """About four characters a token, as the reference tokenizers average on English."""
    return max(1, math.ceil(chars / 4)) if chars else 0


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def error_body(code: int, message: str, metadata: Mapping[str, Any] | None = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "metadata": dict(metadata or {})}}).encode()


@dataclass(frozen=True)
class Reply:
    """One HTTP answer; reset=True means close the connection without answering at all."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    reset: bool = False


RESET = Reply(0, reset=True)
UNAUTHORIZED = Reply(401, error_body(401, "No auth credentials found or the key is invalid."))
NOT_FOUND = Reply(404, error_body(404, "Not Found"))
# Rejections that do not depend on the request: built once.
_STATIC_REJECTIONS = {
    "401": UNAUTHORIZED,
    "400": Reply(400, error_body(400, "This endpoint's maximum context length is exceeded.",
                                 {"error_type": "invalid_request"})),
    "500": Reply(500, error_body(500, "Internal Server Error", {"error_type": "server"})),
    "503": Reply(503, error_body(503, "No endpoints found that can handle the requested parameters.",
                                 {"error_type": "provider_overloaded"})),
    "402_credits": Reply(402, error_body(
        402, "This request requires more credits, or fewer max_tokens. "
        "Add credits at https://openrouter.ai/settings/credits", {"limit_source": "openrouter_credits"})),
    # OpenRouter's answer for a model no provider serves (retired, or a :free variant gone).
    "404_model": Reply(404, error_body(404, "No endpoints found for this model.")),
    "402_key": Reply(402, error_body(
        402, "Key limit exceeded. Raise this key's limit at https://openrouter.ai/settings/keys",
        {"limit_source": "openrouter_key_limit"})),
}
_RETRY_AFTER_FORM_BY_KIND = {"429_date": "date", "429_nohdr": "missing", "429_garbage": "garbage"}


@dataclass(frozen=True)
class ChatRequest:
    """What the simulator needs from one chat completion request."""

    model: str
    served_model: str
    provider: str
    prompt_tokens: int
    max_tokens: int | None
    pair: SentencePair
    variant: int


@dataclass(frozen=True)
class Generation:
    """A delivered (billed) generation, as /generation and the billing log report it."""

    generation_id: str
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    status: int
    finish_reason: str
    started_at: float
    finished_at: float

    def log_line(self) -> str:
        return json.dumps({
            "generation_id": self.generation_id, "model": self.model,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd, "status": self.status, "finish_reason": self.finish_reason,
            "started_at": utc_iso(self.started_at), "finished_at": utc_iso(self.finished_at),
        }) + "\n"

    def api_body(self) -> bytes:
        return json.dumps({"data": {
            "id": self.generation_id, "total_cost": self.cost_usd, "tokens_prompt": self.prompt_tokens,
            "tokens_completion": self.completion_tokens, "model": self.model,
            "provider_name": self.provider, "finish_reason": self.finish_reason, "cancelled": False,
            "created_at": utc_iso(self.started_at),
            "latency": round((self.finished_at - self.started_at) * 1000),
        }}).encode()


def parse_chat_request(body: bytes, model_map: Mapping[str, str], counter: int) -> ChatRequest | str:
    """The request, or the message of the 400 it deserves."""
    try:
        payload = json.loads(body)
    except ValueError:
        return "The request body is not valid JSON."
    if not isinstance(payload, dict):
        return "The request body must be a JSON object."
    model = payload.get("model") or next(iter(payload.get("models") or []), None)
    messages = payload.get("messages")
    if not isinstance(model, str) or not model:
        return "No model given: set 'model'."
    if not isinstance(messages, list) or not messages:
        return "No messages given: set 'messages'."
    prompt = "\n".join(m["content"] for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str))
    max_tokens = payload.get("max_tokens")
    served = model_map.get(model, model)
    return ChatRequest(
        model=model,
        served_model=served,
        provider=provider_name(served),
        prompt_tokens=approx_tokens(len(prompt)),
        max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None,
        pair=sentence_pair(prompt),
        # Same request, new counter: a retry after a quality rejection gets a different sample.
        variant=zlib.crc32(body) + counter,
    )


def bad_request(message: str) -> Reply:
    return Reply(400, error_body(400, message, {"error_type": "invalid_request"}))


def retry_after(form: str, seconds: float, now: float) -> tuple[tuple[str, str], ...]:
    """The Retry-After header in one of the forms servers actually send."""
    if form == "missing":
        return ()
    if form == "date":
        return (("Retry-After", email.utils.formatdate(now + seconds, usegmt=True)),)
    if form == "garbage":
        return (("Retry-After", "soon-ish"),)
    return (("Retry-After", str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"),)


def rejection(kind: str, req: ChatRequest, retry_form: str, retry_s: float, now: float) -> Reply:
    """An error status decided before any generation: never billed."""
    static = _STATIC_REJECTIONS.get(kind)
    if static is not None:
        return static
    upstream = {"provider_name": req.provider, "model_slug": req.served_model}
    if kind.startswith("429"):
        headers = retry_after(_RETRY_AFTER_FORM_BY_KIND.get(kind, retry_form), retry_s, now) + (
            ("X-RateLimit-Limit", "20"), ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", str(int((now + retry_s) * 1000))),
        )
        return Reply(429, error_body(429, f"{req.served_model} is temporarily rate-limited upstream.",
                                     {**upstream, "error_type": "rate_limit_exceeded"}), headers)
    if kind == "402_inflight":
        return Reply(402, error_body(
            402, "Too much credit is reserved by requests still running; retry shortly.",
            {"limit_source": "openrouter_in_flight_budget"}), retry_after("seconds", retry_s, now))
    if kind == "403":
        return Reply(403, error_body(
            403, f"{req.served_model} requires moderation; your input was flagged for \"harassment\".",
            {**upstream, "reasons": ["harassment"], "flagged_input": req.pair.erroneous[:100]}))
    if kind == "408":
        return Reply(408, error_body(408, "Request timed out.", {**upstream, "error_type": "timeout"}))
    if kind == "502":
        return Reply(502, error_body(502, "Provider returned error",
                                     {**upstream, "error_type": "provider_unavailable"}))
    raise ValueError(f"not a rejection: {kind}")


def _content(kind: str, req: ChatRequest) -> str:
    if kind == "empty":
        return ""
    if kind == "correction":
        return correction_content(req.pair)
    if kind == "huge":
        return huge_content(req.pair, req.variant)
    if kind == "binary":
        return binary_content(req.variant)
    content = dialogue_content(req.pair.erroneous, req.pair.correct, req.variant % len(TEMPLATES))
    return truncated(content, _PARTIAL_SHARE[kind]) if kind in _PARTIAL_SHARE else content


def _usage(prompt_tokens: int, completion_tokens: int, cost: float) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens, "cost": cost, "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
        "cost_details": {"upstream_inference_cost": None},
    }


def generation(kind: str, req: ChatRequest, gen_id: str, prices: Mapping[str, tuple[float, float]],
               started_at: float, finished_at: float) -> tuple[Reply, Generation]:
    """A billed HTTP 200 of the given kind, and the record of what it cost."""
    envelope: dict[str, Any] = {
        "id": gen_id, "provider": req.provider, "model": req.served_model,
        "object": "chat.completion", "created": int(finished_at),
    }
    if kind == "error_in_200":
        # Generation started, then the provider failed: the prompt is paid for, nothing returned.
        content, finish, completion_tokens = "", "error", 0
        envelope["error"] = {"code": 502, "message": "Provider returned error", "metadata": {
            "provider_name": req.provider, "error_type": "provider_unavailable",
            "raw": "upstream connection closed before the first token"}}
    else:
        content, finish = _content(kind, req), _FINISH_BY_KIND.get(kind, "stop")
        completion_tokens = approx_tokens(len(content))
        if req.max_tokens is not None and completion_tokens > req.max_tokens:
            completion_tokens = req.max_tokens
            if finish == "stop" and kind != "huge":  # a runaway answer ignores max_tokens
                content, finish = content[: 4 * req.max_tokens], "length"
        choice: dict[str, Any] = {
            "index": 0, "logprobs": None, "finish_reason": finish,
            "native_finish_reason": _NATIVE_FINISH.get(req.provider, {}).get(finish, finish),
            "message": {"role": "assistant", "content": content, "refusal": None, "reasoning": None},
        }
        if finish == "error":
            choice["error"] = {"code": 502, "message": "Upstream stream ended unexpectedly.",
                               "metadata": {"provider_name": req.provider, "error_type": "provider_unavailable"}}
        envelope["choices"] = [choice]
    cost = cost_usd(prices, req.served_model, req.prompt_tokens, completion_tokens)
    if kind != "no_usage":
        envelope["usage"] = _usage(req.prompt_tokens, completion_tokens, cost)
    body = json.dumps(envelope).encode()
    if kind == "malformed":
        body = body[: len(body) // 2]
    record = Generation(gen_id, req.served_model, req.provider, req.prompt_tokens, completion_tokens,
                        cost, 200, finish, started_at, finished_at)
    return Reply(200, body, (("X-Generation-Id", gen_id),)), record


def models_body(prices: Mapping[str, tuple[float, float]]) -> bytes:
    """GET /models: prices as strings in USD per token, as OpenRouter gives them."""
    def per_token(per_million: float) -> str:
        return f"{per_million / 1_000_000:.12f}".rstrip("0").rstrip(".") or "0"

    return json.dumps({"data": [
        {"id": model, "name": f"{provider_name(model)}: {model.partition('/')[2]}",
         "context_length": 131072,
         "pricing": {"prompt": per_token(price_in), "completion": per_token(price_out),
                     "request": "0", "image": "0"}}
        for model, (price_in, price_out) in sorted(prices.items())
    ]}).encode()


def key_body(limit_usd: float | None, billed_usd: float) -> bytes:
    """GET /key: the calling key's limit and what has been billed against it."""
    remaining = None if limit_usd is None else max(0.0, limit_usd - billed_usd)
    return json.dumps({"data": {
        "label": "sk-or-v1-sim...", "limit": limit_usd, "limit_remaining": remaining,
        "limit_reset": None, "usage": billed_usd, "usage_daily": billed_usd,
        "usage_weekly": billed_usd, "usage_monthly": billed_usd, "is_free_tier": False,
    }}).encode()
