"""Peer 2: Bespoke Curator's LLM with the openai backend pointed at the simulator, cache off,
max_concurrent_requests = concurrency. Curator keeps its own request/response files on disk."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ["CURATOR_DISABLE_CACHE"] = "true"
os.environ.setdefault("TELEMETRY_ENABLED", "false")
os.environ.setdefault("CURATOR_DISABLE_RICH_DISPLAY", "1")


def _bundled_tiktoken_dir() -> str | None:
    """Curator's openai backend counts tokens with tiktoken, which downloads cl100k_base on
    first use; offline, point tiktoken at the copy the litellm wheel (a Curator dependency)
    ships, found without importing litellm."""
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "litellm_core_utils" / "tokenizers"
    return str(folder) if folder.is_dir() else None


if "TIKTOKEN_CACHE_DIR" not in os.environ and (_cache := _bundled_tiktoken_dir()):
    os.environ["TIKTOKEN_CACHE_DIR"] = _cache
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, load_spec, report  # noqa: E402

from bespokelabs import curator  # noqa: E402


class Dialogues(curator.LLM):
    def prompt(self, row: dict) -> list[dict]:
        return row["messages"]

    def parse(self, row: dict, response: str) -> dict:
        return {"job_id": row["job_id"], "content": response}


def main() -> None:
    spec = load_spec()
    llm = Dialogues(
        model_name=spec["models"][0], backend="openai",
        generation_params={"max_tokens": spec["max_tokens"]},
        backend_params={"base_url": spec["base_url"], "api_key": spec["api_key"],
                        "max_concurrent_requests": spec["concurrency"],
                        "max_requests_per_minute": 10_000_000,
                        "max_tokens_per_minute": 10_000_000_000, "max_retries": 2,
                        "require_all_responses": False})
    rows = [{"job_id": j["job_id"], "messages": j["messages"]} for j in spec["jobs"]]
    with tempfile.TemporaryDirectory(prefix="curator-") as work, Clock() as clock:
        result = llm(rows, working_dir=work)
        done = len(result.dataset) if hasattr(result, "dataset") else len(result)
    report(clock, done, len(rows) - done)


if __name__ == "__main__":
    main()
