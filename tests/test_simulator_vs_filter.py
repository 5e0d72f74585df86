"""The simulator's dialogues and the filter agree: every template passes for every catalog pair,
and its explicit-correction dialogues are rejected (otherwise the demo and the benchmarks would
measure the filter, not the loop)."""

from __future__ import annotations

from ledger import simulator_dialogues as sd
from ledger.catalog import load_catalog
from ledger.filters import judge


def test_every_template_passes_for_every_catalog_pair():
    catalog = load_catalog()
    failures = []
    for _l1, pattern in catalog.cells():
        for pair in pattern.pairs:
            for variant in range(len(sd.TEMPLATES)):
                content = sd.dialogue_content(pair.erroneous, pair.correct, variant)
                v = judge(content, "stop", pair.erroneous, pair.correct)
                if not v.passed:
                    failures.append((pattern.id, pair.erroneous, variant, v.reasons))
    assert failures == []


def test_correction_dialogues_are_rejected_as_explicit_corrections():
    catalog = load_catalog()
    for _l1, pattern in catalog.cells()[:12]:
        pair = pattern.pairs[0]
        content = sd.correction_content(sd.SentencePair(pair.erroneous, pair.correct))
        v = judge(content, "stop", pair.erroneous, pair.correct)
        assert not v.passed and "explicit_correction" in v.reasons
