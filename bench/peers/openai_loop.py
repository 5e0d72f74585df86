"""Peer 1: the official openai SDK, a thread pool of `concurrency` workers, the model chain as
fallbacks on error, each result appended to a JSONL file."""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, load_spec, report  # noqa: E402

import openai  # noqa: E402


def main() -> None:
    spec = load_spec()
    client = openai.OpenAI(base_url=spec["base_url"], api_key=spec["api_key"], max_retries=2)
    # The SDK imports its resource modules on first use; touched here, so that import stays
    # outside the timed phase, as every import on our side does.
    _ = client.chat.completions
    lock = threading.Lock()
    counts = {"done": 0, "errors": 0}
    with open(spec["out"], "a", encoding="utf-8") as sink:

        def one(job: dict) -> None:
            for model in spec["models"]:
                try:
                    r = client.chat.completions.create(model=model, messages=job["messages"],
                                                       max_tokens=spec["max_tokens"])
                except openai.OpenAIError:
                    with lock:
                        counts["errors"] += 1
                    continue
                line = json.dumps({"job_id": job["job_id"], "model": r.model,
                                   "content": r.choices[0].message.content,
                                   "usage": r.usage.model_dump() if r.usage else None})
                with lock:
                    sink.write(line + "\n")
                    sink.flush()
                    counts["done"] += 1
                return

        with Clock() as clock, ThreadPoolExecutor(spec["concurrency"]) as pool:
            list(pool.map(one, spec["jobs"]))
    report(clock, counts["done"], counts["errors"])


if __name__ == "__main__":
    main()
