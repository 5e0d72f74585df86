"""Peer 3: a LiteLLM Router over the same three-model chain (fallbacks), asyncio with a
semaphore of `concurrency`, each result appended to a JSONL file."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, load_spec, report  # noqa: E402

import litellm  # noqa: E402
from litellm import Router  # noqa: E402


def main() -> None:
    spec = load_spec()
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    models = spec["models"]
    router = Router(
        model_list=[{"model_name": m, "litellm_params": {
            "model": "openai/" + m, "api_base": spec["base_url"], "api_key": spec["api_key"]}}
            for m in models],
        fallbacks=[{models[0]: list(models[1:])}], num_retries=2)
    counts = {"done": 0, "errors": 0}

    async def run_all() -> None:
        gate = asyncio.Semaphore(spec["concurrency"])
        with open(spec["out"], "a", encoding="utf-8") as sink:

            async def one(job: dict) -> None:
                async with gate:
                    try:
                        r = await router.acompletion(model=models[0], messages=job["messages"],
                                                     max_tokens=spec["max_tokens"])
                    except Exception:  # noqa: BLE001 - count and go on, as a batch script does
                        counts["errors"] += 1
                        return
                sink.write(json.dumps({"job_id": job["job_id"], "model": r.model,
                                       "content": r.choices[0].message.content}) + "\n")
                sink.flush()
                counts["done"] += 1

            await asyncio.gather(*(one(job) for job in spec["jobs"]))

    with Clock() as clock:
        asyncio.run(run_all())
    report(clock, counts["done"], counts["errors"])


if __name__ == "__main__":
    main()
