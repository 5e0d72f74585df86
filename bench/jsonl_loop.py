"""The baseline the ledger is priced against: the same work with no books, only a JSONL file.

Same client class, same prompt rendering, same filter, same model chain and worker threads as
the run loop; each accepted dialogue is one appended line (flushed, not fsynced), which is what
a plain generation script does. What it lacks is exactly what the ledger adds: intent before the
request, chained events, leases, budget reservations and atomic outcome + verdict + acceptance.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from ledger.client import OpenRouterClient
from ledger.db import Ledger
from ledger.filters import FilterConfig, judge
from ledger.pricing import estimate_prompt_tokens
from ledger.prompts import PromptInput, render_messages
from ledger.runconfig import DEFAULT_MODELS

from bench.simproc import BENCH_KEY

JOB_COLUMNS = "job_id, l1, pattern, erroneous, correct, level, variant, topic, persona"


@dataclass(frozen=True)
class LoopFigures:
    wall_s: float
    cpu_s: float
    accepted: int
    attempts: int
    lines: int


def load_jobs(ledger: Ledger, limit: int) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY seq LIMIT :n"),
                            {"n": limit}).mappings().all()
    return [dict(r) for r in rows]


def _messages(job: dict[str, Any]) -> list[dict[str, str]]:
    return render_messages(PromptInput(
        l1_name=job["l1"].capitalize(), level=job["level"], persona=job["persona"],
        topic=job["topic"], pattern_name=job["pattern"].replace("_", " "),
        erroneous=job["erroneous"], correct=job["correct"]))


def run_jsonl(jobs: list[dict[str, Any]], base_url: str, out: Path, concurrency: int,
              models: tuple[str, ...] = DEFAULT_MODELS, max_tokens: int = 200,
              tries: int = 3) -> LoopFigures:
    todo: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    for job in jobs:
        todo.put(job)
    lock = threading.Lock()
    counts = {"accepted": 0, "attempts": 0, "lines": 0}
    config = FilterConfig()

    with OpenRouterClient(base_url, BENCH_KEY) as client, \
            out.open("a", encoding="utf-8") as sink:

        def one(job: dict[str, Any]) -> None:
            messages = _messages(job)
            estimate_prompt_tokens(messages)  # the run loop prices every job before its call
            for model in models:
                for _ in range(tries):
                    outcome = client.chat(model, messages, max_tokens)
                    with lock:
                        counts["attempts"] += 1
                    if outcome.error_class not in ("ok", "length", "content_filter"):
                        if outcome.transient:
                            continue
                        break
                    verdict = judge(outcome.content, outcome.finish_reason, job["erroneous"],
                                    job["correct"], config)
                    if verdict.passed:
                        line = json.dumps({
                            "job_id": job["job_id"], "model": outcome.model_served or model,
                            "generation_id": outcome.generation_id,
                            "prompt_tokens": outcome.prompt_tokens,
                            "completion_tokens": outcome.completion_tokens,
                            "cost_usd": outcome.cost_usd, "content": outcome.content,
                            "metrics": verdict.metrics}, ensure_ascii=False, default=str)
                        with lock:
                            sink.write(line + "\n")
                            sink.flush()
                            counts["accepted"] += 1
                            counts["lines"] += 1
                        return

        def worker() -> None:
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                one(job)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        cpu0, t0 = time.process_time(), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return LoopFigures(wall, cpu, counts["accepted"], counts["attempts"], counts["lines"])
