"""Bulk steps pause the cyclic collector and hand their objects back to it without a pass."""

from __future__ import annotations

import gc
import weakref

from ledger.bulk import gc_paused


def test_objects_made_while_paused_are_not_left_for_the_young_generation():
    gc.collect()
    with gc_paused():
        assert not gc.isenabled()
        made = [[i] for i in range(200_000)]  # tracked containers, as a big plan makes
    assert gc.isenabled()
    # Left in the youngest generation, the next automatic pass would walk all 200,000 lists;
    # handed to the oldest one, only a full collection looks at them.
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert id(made) in oldest and id(made[-1]) in oldest


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_cycles_made_while_paused_are_still_collected():
    class Node:
        pass

    with gc_paused():
        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
    del a, b  # a cycle: reference counting alone cannot free it
    gc.collect()
    assert ref() is None


def test_objects_the_host_froze_stay_frozen():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with gc_paused():
            [[i] for i in range(1_000)]
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
