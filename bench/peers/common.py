"""What every peer script shares: reading the job file and printing the figures line."""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def load_spec() -> dict[str, Any]:
    with open(sys.argv[1], encoding="utf-8") as f:
        return json.load(f)


class Clock:
    """Wall and process CPU of the generation phase."""

    def __enter__(self) -> "Clock":
        self.cpu0, self.t0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self.t0
        self.cpu_s = time.process_time() - self.cpu0


def report(clock: Clock, done: int, errors: int, **extra: Any) -> None:
    print(json.dumps({"wall_s": clock.wall_s, "cpu_s": clock.cpu_s, "done": done,
                      "errors": errors, **extra}), flush=True)
