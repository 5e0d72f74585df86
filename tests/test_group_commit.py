"""The group-commit writer's pause for other processes: taken only when more writes are queued.

The commit function here stands in for the store's transaction (GroupCommit takes any callable),
so what is timed is the queue and its writer thread alone.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ledger.group_commit import GroupCommit, Pending

GAP_S = 0.3


class Recorder:
    """A commit that records each group's size and can hold the first group until released."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.first_running = threading.Event()
        self.release_first = threading.Event()

    def __call__(self, batch: list[Pending]) -> None:
        self.sizes.append(len(batch))
        if len(self.sizes) == 1:
            self.first_running.set()
            self.release_first.wait(10)
        for item in batch:
            item.value = item.op(None)


def write_in_thread(group: GroupCommit) -> threading.Thread:
    thread = threading.Thread(target=group.call, args=(lambda _tx: None,))
    thread.start()
    return thread


def wait_for_pending(group: GroupCommit, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(group.pending) < n:
        assert time.monotonic() < deadline, "writes never reached the queue"
        time.sleep(0.001)


def test_the_writer_pauses_after_a_commit_only_while_writes_are_queued() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder, threading.Lock(), gap_s=GAP_S)
    try:
        first = write_in_thread(group)
        assert recorder.first_running.wait(10)
        # Two writes queue while the first group commits: the writer has more to write, so
        # it pauses before taking the lock again.
        queued = [write_in_thread(group), write_in_thread(group)]
        wait_for_pending(group, 2)
        released = time.monotonic()
        recorder.release_first.set()
        for thread in [first, *queued]:
            thread.join(10)
        paused = time.monotonic() - released
        assert recorder.sizes == [1, 2]
        assert paused >= GAP_S * 0.9
        # Nothing was queued after that group of two: the next write commits at once.
        asked = time.monotonic()
        value: Any = group.call(lambda _tx: "done")
        assert value == "done"
        assert time.monotonic() - asked < GAP_S / 2
        assert recorder.sizes == [1, 2, 1]
    finally:
        recorder.release_first.set()
        group.stop()
