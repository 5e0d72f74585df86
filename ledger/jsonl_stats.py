"""Counting a JSONL file of dialogues from outside any ledger, one line at a time.

A line is a JSON object with `messages` ([{"role", "content"}]) or `conversations`
([{"from", "value"}], ShareGPT), and optionally the learner's L1 (`l1`), the error pattern
(`error_type` or `pattern`) and the `level`. Turns are the non-system messages; questions are
counted in the tutor's (assistant's) turns with the same rule the quality filter uses.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .dialogue import ASSISTANT, canonical_role
from .errors import UsageError
from .filters import count_questions

_L1_KEYS = ("l1", "L1", "native_language")
_PATTERN_KEYS = ("error_type", "pattern", "error")
_LEVEL_KEYS = ("level", "proficiency")


@dataclass(frozen=True)
class JsonlStats:
    dialogues: int
    skipped: int
    l1s: Counter[str]
    levels: Counter[str]
    turns: int
    questions: int
    patterns_covered: int
    patterns_total: int
    cells_covered: int
    cells_total: int


def read_jsonl_stats(path: str, catalog: Any = None) -> JsonlStats:
    l1s: Counter[str] = Counter()
    levels: Counter[str] = Counter()
    cells: set[tuple[str, str]] = set()
    dialogues = skipped = turns = questions = 0
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        for line_no, raw in enumerate(fh, 1):
            try:  # decoded line by line: a line that is not UTF-8 is skipped like bad JSON
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError:
                skipped += 1
                continue
            if not line.strip():
                continue
            parsed = _dialogue(line)
            if parsed is None:
                skipped += 1
                continue
            record, messages = parsed
            dialogues += 1
            l1 = _l1_id(_field(record, _L1_KEYS), catalog)
            pattern = _field(record, _PATTERN_KEYS)
            l1s[l1] += 1
            levels[_field(record, _LEVEL_KEYS)] += 1
            cells.add((l1, pattern))
            for role, content in messages:
                turns += 1
                if role == ASSISTANT:
                    questions += count_questions(content)
    covered, total, p_covered, p_total = _coverage(cells, catalog)
    return JsonlStats(dialogues=dialogues, skipped=skipped, l1s=l1s, levels=levels, turns=turns,
                      questions=questions, patterns_covered=p_covered, patterns_total=p_total,
                      cells_covered=covered, cells_total=total)


def _dialogue(line: str) -> tuple[dict[str, Any], list[tuple[str, str]]] | None:
    """The record and its (role, content) turns, or None when the line holds no dialogue."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    raw = record.get("messages")
    keys = ("role", "content")
    if not isinstance(raw, list):
        raw, keys = record.get("conversations"), ("from", "value")
    if not isinstance(raw, list):
        return None
    turns = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        role = canonical_role(str(item.get(keys[0], "")))
        content = item.get(keys[1])
        if role is not None and isinstance(content, str):
            turns.append((role, content))
    return (record, turns) if turns else None


def _field(record: dict[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return "unknown"


def _l1_id(value: str, catalog: Any) -> str:
    """The catalog's id for an L1 written as its id or its name ("Spanish" -> "spanish")."""
    if catalog is not None:
        wanted = value.lower()
        for l1 in catalog.l1s:
            if wanted in (l1.id.lower(), l1.name.lower()):
                return str(l1.id)
    return value.lower()


def _coverage(cells: set[tuple[str, str]], catalog: Any) -> tuple[int, int, int, int]:
    """(cells covered, cells possible, patterns covered, patterns possible).

    Possible cells are the catalog's patterns of the L1s the file has. With no L1 the catalog
    knows, every L1 seen is paired with every pattern seen, as the seed's analysis did."""
    known = {l1.id: {p.id for p in l1.patterns} for l1 in (catalog.l1s if catalog else ())}
    l1s_seen = {l1 for l1, _ in cells}
    if l1s_seen & known.keys():
        possible = {(l1, p) for l1 in l1s_seen & known.keys() for p in known[l1]}
    else:
        possible = {(l1, p) for l1 in l1s_seen for _, p in cells}
    covered = cells & possible
    return (len(covered), len(possible), len({p for _, p in covered}),
            len({p for _, p in possible}))
