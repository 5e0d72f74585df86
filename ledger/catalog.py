"""The L1 x error-pattern catalog: which learner languages, error patterns and sentence pairs exist.

A catalog is one JSON file (the bundled one is ledger/data/catalog.json). Loading validates all of
it and reports the first problem as one CatalogError line that says where it is; nothing is dropped
or repaired silently, because the planner turns every pair into jobs that cost money. The only
normalisation is stripping whitespace around text values, so a stray space cannot fork a job's
identity. Ids (L1, pattern, level) must be lowercase snake_case in the file; lookups from user input
ignore case.
"""

from __future__ import annotations

import json
import operator
import os
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ledger.bulk import gc_paused
from ledger.errors import CatalogError

DEFAULT_CATALOG_PATH: pathlib.Path = (
    pathlib.Path(__file__).resolve().parent / "data" / "catalog.json"
)


@dataclass(frozen=True, slots=True)
class SentencePair:
    erroneous: str
    correct: str


@dataclass(frozen=True)
class Pattern:
    id: str
    name: str
    explanation: str
    pairs: tuple[SentencePair, ...]
    levels: tuple[str, ...]


@dataclass(frozen=True)
class L1:
    id: str
    name: str
    patterns: tuple[Pattern, ...]
    _by_id: dict[str, Pattern] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {p.id: p for p in self.patterns})


@dataclass(frozen=True)
class Catalog:
    version: int
    levels: tuple[str, ...]
    topics: tuple[str, ...]
    personas: tuple[str, ...]
    l1s: tuple[L1, ...]
    source: str  # where it was loaded from, for messages
    _by_id: dict[str, L1] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {l1.id: l1 for l1 in self.l1s})

    def l1(self, l1_id: str) -> L1:
        """The L1 with this id, ignoring case and surrounding spaces."""
        found = self._by_id.get(_lookup_key(l1_id))
        if found is None:
            known = ", ".join(sorted(self._by_id))
            raise CatalogError(f"unknown L1 {_quote(l1_id)} in {self.source}; known: {known}")
        return found

    def pattern(self, l1_id: str, pattern_id: str) -> Pattern:
        """The pattern of that L1 with this id, ignoring case and surrounding spaces."""
        l1 = self.l1(l1_id)
        found = l1._by_id.get(_lookup_key(pattern_id))
        if found is None:
            known = ", ".join(sorted(l1._by_id))
            raise CatalogError(
                f"unknown pattern {_quote(pattern_id)} for L1 '{l1.id}' in {self.source}; "
                f"known: {known}"
            )
        return found

    def cells(self) -> list[tuple[L1, Pattern]]:
        """Every L1 x pattern, in file order."""
        return [(l1, pattern) for l1 in self.l1s for pattern in l1.patterns]


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Read and validate a catalog file; the bundled catalog when no path is given."""
    catalog_path = DEFAULT_CATALOG_PATH if path is None else pathlib.Path(path)
    source = os.fspath(catalog_path)
    hint = "pass --catalog PATH to a JSON catalog"
    try:
        # utf-8-sig: editors on Windows like to prepend a byte-order mark.
        text = catalog_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CatalogError(f"catalog not found: {source}; {hint}") from None
    except IsADirectoryError:
        raise CatalogError(f"catalog is a directory, not a file: {source}; {hint}") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {source}: {exc.strerror or exc}") from None
    with gc_paused():
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CatalogError(
                f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        return catalog_from_dict(data, source=source)


def catalog_from_dict(data: dict[str, Any], source: str = "<dict>") -> Catalog:
    """Validate parsed catalog JSON; raise CatalogError for the first problem, in file order."""
    if not isinstance(data, dict):
        _fail(source, f"the top level must be a JSON object, got {_json_type(data)}")
    _check_fields(data, source, required=_CATALOG_FIELDS)
    version = data["version"]
    if type(version) is not int or version < 1:
        _fail(source, f"field 'version' must be a positive integer, got {json.dumps(version)}")
    levels = _string_list(data, "levels", source, as_ids=True, empty_hint="add at least one level")
    topics = _string_list(data, "topics", source, empty_hint="add at least one topic")
    personas = _string_list(data, "personas", source, empty_hint="add at least one persona")
    raw_l1s = _nonempty_array(data, "l1s", source, "add at least one L1")
    l1s: list[L1] = []
    first_at: dict[str, int] = {}
    for number, raw in enumerate(raw_l1s, 1):
        l1 = _l1(raw, source, number, levels)
        first = first_at.setdefault(l1.id, number)
        if first != number:
            _fail(f"{source}: l1 #{number}", f"duplicate L1 id '{l1.id}' (first at l1 #{first})")
        l1s.append(l1)
    return Catalog(version, levels, topics, personas, tuple(l1s), source)


_CATALOG_FIELDS = ("version", "levels", "topics", "personas", "l1s")
_L1_FIELDS = ("id", "name", "patterns")
_PATTERN_FIELDS = ("id", "name", "explanation", "pairs")
_PATTERN_OPTIONAL = ("levels",)
_PAIR_FIELDS = ("erroneous", "correct")
_ID = re.compile(r"[a-z][a-z0-9_]*")


def _l1(raw: Any, source: str, number: int, levels: tuple[str, ...]) -> L1:
    where = f"{source}: l1 #{number}"
    if not isinstance(raw, dict):
        _fail(where, f"must be an object, got {_json_type(raw)}")
    _check_fields(raw, where, required=_L1_FIELDS)
    l1_id = _id(raw, where)
    where = f"{source}: l1 '{l1_id}'"
    name = _text(raw, "name", where)
    raw_patterns = _nonempty_array(raw, "patterns", where, "add at least one pattern")
    patterns: list[Pattern] = []
    first_at: dict[str, int] = {}
    for number_in_l1, raw_pattern in enumerate(raw_patterns, 1):
        pattern = _pattern(raw_pattern, where, number_in_l1, levels)
        first = first_at.setdefault(pattern.id, number_in_l1)
        if first != number_in_l1:
            _fail(
                f"{where} pattern #{number_in_l1}",
                f"duplicate pattern id '{pattern.id}' (first at pattern #{first})",
            )
        patterns.append(pattern)
    return L1(l1_id, name, tuple(patterns))


def _pattern(raw: Any, l1_where: str, number: int, levels: tuple[str, ...]) -> Pattern:
    where = f"{l1_where} pattern #{number}"
    if not isinstance(raw, dict):
        _fail(where, f"must be an object, got {_json_type(raw)}")
    # Name the pattern as early as possible so every later message says which one it is.
    raw_id = raw.get("id")
    if isinstance(raw_id, str) and raw_id.strip():
        where = f"{where} ({_quote(raw_id.strip())})"
    _check_fields(raw, where, required=_PATTERN_FIELDS, optional=_PATTERN_OPTIONAL)
    pattern_id = _id(raw, where)
    name = _text(raw, "name", where)
    explanation = _text(raw, "explanation", where)
    pairs = _pairs(_nonempty_array(raw, "pairs", where, "add at least one sentence pair"), where)
    pattern_levels = _pattern_levels(raw, where, levels)
    return Pattern(pattern_id, name, explanation, pairs, pattern_levels)


def _pattern_levels(raw: dict[str, Any], where: str, levels: tuple[str, ...]) -> tuple[str, ...]:
    if "levels" not in raw:
        return levels
    chosen = _string_list(
        raw, "levels", where, as_ids=True, empty_hint="omit it to plan every level"
    )
    for level in chosen:
        if level not in levels:
            known = ", ".join(levels)
            _fail(where, f"unknown level '{level}' in 'levels' (catalog levels: {known})")
    return chosen


def _pairs(raw_pairs: list[Any], where: str) -> tuple[SentencePair, ...]:
    fast = _valid_pairs_fast(raw_pairs)
    if fast is not None:
        return fast
    pairs: list[SentencePair] = []
    first_at: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(raw_pairs, 1):
        pair_where = f"{where} pair #{number}"
        if not isinstance(raw, dict):
            got = _json_type(raw)
            _fail(pair_where, f"must be an object with 'erroneous' and 'correct', got {got}")
        _check_fields(raw, pair_where, required=_PAIR_FIELDS)
        erroneous, correct = _text(raw, "erroneous", pair_where), _text(raw, "correct", pair_where)
        key = (_sentence_key(erroneous), _sentence_key(correct))
        if key[0] == key[1]:
            shown = json.dumps(erroneous)
            _fail(pair_where, f"erroneous and correct are the same sentence: {shown}")
        first = first_at.setdefault(key, number)
        if first != number:
            _fail(pair_where, f"duplicate of pair #{first}")
        pairs.append(SentencePair(erroneous, correct))
    return tuple(pairs)


_get_erroneous = operator.itemgetter("erroneous")
_get_correct = operator.itemgetter("correct")


def _valid_pairs_fast(raw_pairs: list[Any]) -> tuple[SentencePair, ...] | None:
    """The pairs if every one is plainly valid, else None so the slow path can name the problem.

    Loading time is dominated by pairs (a benchmark catalog holds 400,000), so the checks run as
    C-level passes over whole lists instead of a Python loop per pair. Whenever this returns a
    result it must equal what the slow path in _pairs would build.
    """
    try:
        erroneous = list(map(_get_erroneous, raw_pairs))
        correct = list(map(_get_correct, raw_pairs))
        # One string holds every sentence: a single scan then covers them all.
        joined = " ".join(erroneous + correct)
    except (KeyError, TypeError):  # not an object, a field missing, or not a string
        return None
    if sum(map(len, raw_pairs)) != 2 * len(raw_pairs):  # an unknown field
        return None
    # isprintable() rules out tabs and newlines, so spaces are the only whitespace left. With no
    # double space and no space at either end, every sentence is non-empty and already stripped,
    # and casefold() alone gives the same key as _sentence_key.
    if "  " in joined or joined[0] == " " or joined[-1] == " " or not joined.isprintable():
        return None
    erroneous_keys = list(map(str.casefold, erroneous))
    correct_keys = list(map(str.casefold, correct))
    if any(map(operator.eq, erroneous_keys, correct_keys)):
        return None
    if len(set(zip(erroneous_keys, correct_keys))) != len(raw_pairs):
        return None
    return tuple(map(SentencePair, erroneous, correct))


def _sentence_key(sentence: str) -> str:
    """What makes two sentences 'the same': case and runs of whitespace do not count."""
    return " ".join(sentence.split()).casefold()


def _check_fields(
    raw: dict[str, Any], where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    # Unknown fields are errors: a misspelt optional field ('level') would otherwise be ignored.
    for key in raw:
        if key not in required and key not in optional:
            expected = ", ".join(required + optional)
            _fail(where, f"unknown field {_quote(key)} (expected: {expected})")
    for key in required:
        if key not in raw:
            _fail(where, f"missing field '{key}'")


def _id(raw: dict[str, Any], where: str) -> str:
    return _clean_id(raw["id"], where, "field 'id'")


def _text(raw: dict[str, Any], key: str, where: str) -> str:
    return _clean_text(raw[key], where, f"field '{key}'")


def _clean_id(value: Any, where: str, what: str) -> str:
    text = _clean_text(value, where, what)
    if not _ID.fullmatch(text):
        suggestion = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"
        _fail(where, f"{what} is '{text}'; ids are lowercase snake_case like '{suggestion}'")
    return text


def _clean_text(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str):
        _fail(where, f"{what} must be a string, got {_json_type(value)}")
    text = value.strip()
    if not text:
        _fail(where, f"{what} is an empty string")
    if not text.isprintable():
        _fail(where, f"{what} must be one line of printable text: {json.dumps(text)}")
    return text


def _nonempty_array(raw: dict[str, Any], key: str, where: str, empty_hint: str) -> list[Any]:
    value = raw[key]
    if not isinstance(value, list):
        _fail(where, f"field '{key}' must be an array, got {_json_type(value)}")
    if not value:
        _fail(where, f"field '{key}' is empty; {empty_hint}")
    return value


def _string_list(
    raw: dict[str, Any],
    key: str,
    where: str,
    empty_hint: str,
    as_ids: bool = False,
) -> tuple[str, ...]:
    """A non-empty array of distinct one-line strings (compared ignoring case)."""
    values: list[str] = []
    first_at: dict[str, int] = {}
    clean = _clean_id if as_ids else _clean_text
    for number, item in enumerate(_nonempty_array(raw, key, where, empty_hint), 1):
        value = clean(item, where, f"{key} #{number}")
        first = first_at.setdefault(_sentence_key(value), number)
        if first != number:
            _fail(where, f"{key} #{number} '{value}' is a duplicate of {key} #{first}")
        values.append(value)
    return tuple(values)


def _quote(value: object) -> str:
    """Quote text for a message, escaped when it would break the message's single line."""
    text = str(value)
    return f"'{text}'" if text.isprintable() else json.dumps(text)


def _lookup_key(user_id: str) -> str:
    return str(user_id).strip().lower()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _fail(where: str, problem: str) -> NoReturn:
    raise CatalogError(f"{where}: {problem}")
