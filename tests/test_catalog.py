"""The L1 x error-pattern catalog: the bundled data, the loader's validation, lookups."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.catalog import (
    DEFAULT_CATALOG_PATH,
    Catalog,
    Pattern,
    SentencePair,
    catalog_from_dict,
    load_catalog,
)
from ledger.errors import CatalogError, UsageError

# ---------------------------------------------------------------- the bundled catalog

SUBJECT_PRONOUNS = {"i", "you", "he", "she", "it", "we", "they"}
MODALS = {"can", "can't", "could", "will", "would", "must", "should", "may", "might"}


@pytest.fixture(scope="module")
def bundled() -> Catalog:
    return load_catalog()


def words(sentence: str) -> list[str]:
    return sentence.lower().split()


def one_word_removed(longer: list[str], shorter: list[str], allowed: set[str]) -> bool:
    """True if deleting one word from `allowed` out of `longer` gives `shorter`."""
    return any(
        longer[i].strip(",") in allowed and longer[:i] + longer[i + 1 :] == shorter
        for i in range(len(longer))
    )


def one_word_differs(a: list[str], b: list[str]) -> tuple[str, str] | None:
    if len(a) != len(b):
        return None
    diffs = [(x, y) for x, y in zip(a, b) if x != y]
    return diffs[0] if len(diffs) == 1 else None


def is_negation_error(pair: SentencePair) -> bool:
    return (
        re.search(r"\bno\b", pair.erroneous, re.I) is not None
        and re.search(r"\bno\b", pair.correct, re.I) is None
        and re.search(r"n't\b|\bnot\b", pair.correct) is not None
    )


def is_subject_omission(pair: SentencePair) -> bool:
    return one_word_removed(words(pair.correct), words(pair.erroneous), SUBJECT_PRONOUNS)


def is_participle_confusion(pair: SentencePair) -> bool:
    diff = one_word_differs(words(pair.erroneous), words(pair.correct))
    return diff is not None and diff[0].endswith("ing") and diff[1].endswith("ed")


def is_conjunction_overuse(pair: SentencePair) -> bool:
    wrong, right = pair.erroneous.lower(), pair.correct.lower()
    subordinator = re.match(r"(although|though|because)\b", wrong)
    return (
        subordinator is not None
        and re.search(r", (but|so)\b", wrong) is not None
        and right.startswith(subordinator.group(1))
        and re.search(r", (but|so)\b", right) is None
    )


def is_pronoun_copy(pair: SentencePair) -> bool:
    return one_word_removed(words(pair.erroneous), words(pair.correct), {"he", "she", "it", "they"})


def is_gerund_error(pair: SentencePair) -> bool:
    wrong, right = words(pair.erroneous), words(pair.correct)
    diff = one_word_differs(wrong, right)
    if diff is None or not diff[0].rstrip("?.").endswith("ing") or diff[1].endswith("ing"):
        return False
    position = wrong.index(diff[0])
    return any(w in MODALS for w in wrong[max(0, position - 2) : position])


NAMED_PATTERNS: list[tuple[str, str, Callable[[SentencePair], bool]]] = [
    ("spanish", "negation_error", is_negation_error),
    ("spanish", "subject_omission", is_subject_omission),
    ("chinese", "participle_confusion", is_participle_confusion),
    ("chinese", "conjunction_overuse", is_conjunction_overuse),
    ("arabic", "pronoun_copy", is_pronoun_copy),
    ("korean", "gerund_error", is_gerund_error),
]


def test_bundled_catalog_loads_from_the_default_path(bundled: Catalog) -> None:
    assert DEFAULT_CATALOG_PATH.is_file()
    assert bundled.source == str(DEFAULT_CATALOG_PATH)
    assert isinstance(bundled.version, int) and bundled.version >= 1
    assert bundled.levels == ("beginner", "intermediate", "advanced")
    assert len(bundled.topics) >= 10 and {"food", "travel", "work"} <= set(bundled.topics)
    assert len(bundled.personas) >= 5


def test_bundled_catalog_has_four_l1s_with_twelve_patterns_each(bundled: Catalog) -> None:
    ids = [l1.id for l1 in bundled.l1s]
    assert len(ids) >= 4
    assert {"spanish", "arabic", "chinese", "korean"} <= set(ids)
    for l1 in bundled.l1s:
        assert len(l1.patterns) == 12, l1.id
    assert len(bundled.cells()) == 12 * len(ids)


@pytest.mark.parametrize(("l1_id", "pattern_id", "shows_pattern"), NAMED_PATTERNS)
def test_named_patterns_live_under_their_l1_and_show_their_error(
    bundled: Catalog, l1_id: str, pattern_id: str, shows_pattern: Callable[[SentencePair], bool]
) -> None:
    pattern = bundled.pattern(l1_id, pattern_id)
    assert pattern.id == pattern_id
    not_matching = [pair for pair in pattern.pairs if not shows_pattern(pair)]
    assert not_matching == []


def test_the_classic_examples_are_in_the_catalog(bundled: Catalog) -> None:
    def erroneous(l1_id: str, pattern_id: str) -> set[str]:
        return {pair.erroneous for pair in bundled.pattern(l1_id, pattern_id).pairs}

    assert "I no like coffee." in erroneous("spanish", "negation_error")
    assert "Is very hot today." in erroneous("spanish", "subject_omission")
    assert "I am boring in this class." in erroneous("chinese", "participle_confusion")
    assert "Although it rained, but we went out." in erroneous("chinese", "conjunction_overuse")
    assert "My friend he is tall." in erroneous("arabic", "pronoun_copy")
    assert "I can swimming." in erroneous("korean", "gerund_error")


def test_every_bundled_pattern_is_well_formed(bundled: Catalog) -> None:
    problems: list[str] = []
    for l1, pattern in bundled.cells():
        where = f"{l1.id}/{pattern.id}"
        if not re.fullmatch(r"[a-z][a-z0-9_]*", pattern.id):
            problems.append(f"{where}: id not snake_case")
        if len(set(pattern.pairs)) < 8 or len(set(pattern.pairs)) != len(pattern.pairs):
            problems.append(f"{where}: fewer than 8 distinct pairs")
        if not pattern.explanation.strip() or "\n" in pattern.explanation:
            problems.append(f"{where}: explanation empty or not one line")
        # The explanation says which feature of the learner's language causes the error.
        l1_words = set(re.findall(r"\w+", l1.name))
        if not l1_words & set(re.findall(r"\w+", pattern.explanation)):
            problems.append(f"{where}: explanation does not name {l1.name}")
        if not set(pattern.levels) <= set(bundled.levels) or not pattern.levels:
            problems.append(f"{where}: bad levels {pattern.levels}")
        for pair in pattern.pairs:
            if pair.erroneous.strip().lower() == pair.correct.strip().lower():
                problems.append(f"{where}: equal sentences {pair}")
            for sentence in (pair.erroneous, pair.correct):
                if not 3 <= len(sentence.split()) <= 12:
                    problems.append(f"{where}: not 3-12 words: {sentence!r}")
    assert problems == []


def test_bundled_pattern_ids_and_names_are_unique_within_each_l1(bundled: Catalog) -> None:
    for l1 in bundled.l1s:
        assert len({p.id for p in l1.patterns}) == len(l1.patterns), l1.id
        assert len({p.name for p in l1.patterns}) == len(l1.patterns), l1.id


def test_some_pattern_ids_are_shared_across_l1s(bundled: Catalog) -> None:
    chinese = {p.id for p in bundled.l1("chinese").patterns}
    korean = {p.id for p in bundled.l1("korean").patterns}
    assert {"article_omission", "plural_omission"} <= chinese & korean
    chinese_article = bundled.pattern("chinese", "article_omission")
    korean_article = bundled.pattern("korean", "article_omission")
    assert set(chinese_article.pairs).isdisjoint(korean_article.pairs)


def test_patterns_without_levels_are_planned_at_every_level(bundled: Catalog) -> None:
    assert bundled.pattern("spanish", "negation_error").levels == bundled.levels
    assert bundled.pattern("chinese", "pseudo_passive").levels == ("intermediate", "advanced")


# ---------------------------------------------------------------- lookups


def test_l1_lookup_ignores_case_and_spaces(bundled: Catalog) -> None:
    spanish = bundled.l1("spanish")
    assert spanish.name == "Spanish"
    assert bundled.l1("Spanish") is spanish
    assert bundled.l1(" SPANISH ") is spanish


def test_pattern_lookup_ignores_case(bundled: Catalog) -> None:
    pattern = bundled.pattern("Korean", "Gerund_Error")
    assert pattern is bundled.pattern("korean", "gerund_error")


def test_unknown_l1_names_the_known_ids(bundled: Catalog) -> None:
    with pytest.raises(CatalogError) as caught:
        bundled.l1("klingon")
    message = str(caught.value)
    assert "unknown L1 'klingon'" in message
    for l1_id in ("arabic", "chinese", "korean", "spanish"):
        assert l1_id in message
    assert isinstance(caught.value, UsageError)


def test_unknown_pattern_names_the_l1_and_its_patterns(bundled: Catalog) -> None:
    with pytest.raises(CatalogError) as caught:
        bundled.pattern("Spanish", "gerund_error")
    message = str(caught.value)
    assert "unknown pattern 'gerund_error' for L1 'spanish'" in message
    assert "negation_error" in message and "subject_omission" in message


def test_pattern_lookup_under_an_unknown_l1_reports_the_l1(bundled: Catalog) -> None:
    with pytest.raises(CatalogError, match="unknown L1 'french'"):
        bundled.pattern("french", "negation_error")


def test_cells_are_every_l1_and_pattern_in_file_order(bundled: Catalog) -> None:
    cells = bundled.cells()
    expected = [(l1.id, p.id) for l1 in bundled.l1s for p in l1.patterns]
    assert [(l1.id, p.id) for l1, p in cells] == expected
    assert cells[0][0].id == "spanish" and cells[0][1].id == "negation_error"


# ---------------------------------------------------------------- custom catalogs


def small_catalog() -> dict[str, Any]:
    """A valid catalog: one L1 with three patterns of two pairs."""

    def pattern(pattern_id: str, n: int) -> dict[str, Any]:
        return {
            "id": pattern_id,
            "name": f"Pattern {n}",
            "explanation": "Spanish does it this way, so learners do it too.",
            "pairs": [
                {"erroneous": f"I no like coffee {n}.", "correct": f"I don't like coffee {n}."},
                {"erroneous": f"She no eats meat {n}.", "correct": f"She doesn't eat meat {n}."},
            ],
        }

    return {
        "version": 1,
        "levels": ["beginner", "intermediate", "advanced"],
        "topics": ["food", "travel"],
        "personas": ["a nurse", "a student"],
        "l1s": [
            {
                "id": "spanish",
                "name": "Spanish",
                "patterns": [
                    pattern("adjective_order", 1),
                    pattern("subject_omission", 2),
                    pattern("negation_error", 3),
                ],
            }
        ],
    }


def write(tmp_path: Path, data: Any, name: str = "catalog.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def load_error(tmp_path: Path, data: Any) -> str:
    path = write(tmp_path, data)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def test_custom_catalog_with_a_new_l1_loads_from_a_path(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"].append(
        {
            "id": "portuguese",
            "name": "Portuguese",
            "patterns": [
                {
                    "id": "have_for_be",
                    "name": "'Have' for age",
                    "explanation": "Portuguese uses ter 'have' for age (Tenho 20 anos).",
                    "levels": ["beginner"],
                    "pairs": [
                        {"erroneous": "I have 20 years.", "correct": "I am 20 years old."},
                        {"erroneous": "She has ten years.", "correct": "She is ten years old."},
                    ],
                }
            ],
        }
    )
    path = write(tmp_path, data, "custom.json")
    for given_path in (path, str(path)):
        catalog = load_catalog(given_path)
        assert catalog.source == str(path)
        portuguese = catalog.l1("Portuguese")
        assert portuguese.name == "Portuguese"
        pattern = catalog.pattern("portuguese", "have_for_be")
        assert pattern.levels == ("beginner",)
        assert pattern.pairs[0] == SentencePair("I have 20 years.", "I am 20 years old.")
        assert [(l1.id, p.id) for l1, p in catalog.cells()][-1] == ("portuguese", "have_for_be")
        assert catalog.pattern("spanish", "negation_error").levels == catalog.levels


def test_catalog_from_dict_builds_frozen_values() -> None:
    catalog = catalog_from_dict(small_catalog())
    assert catalog.source == "<dict>"
    assert catalog.topics == ("food", "travel")
    pattern = catalog.pattern("spanish", "negation_error")
    assert isinstance(pattern, Pattern)
    assert isinstance(pattern.pairs, tuple)
    with pytest.raises(AttributeError):
        pattern.pairs[0].correct = "changed"  # type: ignore[misc]


def test_the_same_pattern_id_may_appear_under_two_l1s() -> None:
    data = small_catalog()
    korean = copy.deepcopy(data["l1s"][0])
    korean["id"], korean["name"] = "korean", "Korean"
    data["l1s"].append(korean)
    catalog = catalog_from_dict(data)
    korean_pattern = catalog.pattern("korean", "negation_error")
    assert korean_pattern == catalog.pattern("spanish", "negation_error")


def test_surrounding_whitespace_is_stripped_and_inner_text_kept() -> None:
    data = small_catalog()
    pairs = data["l1s"][0]["patterns"][0]["pairs"]
    pairs[0] = {"erroneous": "  I no  like tea. ", "correct": "\tI don't like tea."}
    data["l1s"][0]["name"] = " Spanish "
    catalog = catalog_from_dict(data)
    assert catalog.pattern("spanish", "adjective_order").pairs[0] == SentencePair(
        "I no  like tea.", "I don't like tea."
    )
    assert catalog.l1("spanish").name == "Spanish"


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(small_catalog()).encode())
    assert load_catalog(path).l1("spanish").id == "spanish"


# ---------------------------------------------------------------- file-level errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value) == (
        f"catalog not found: {path}; pass --catalog PATH to a JSON catalog"
    )


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="is a directory"):
        load_catalog(tmp_path)


def test_not_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "version": 1,\n  "levels": [\n}\n', encoding="utf-8")
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid JSON: ")
    assert "line 4 column 1" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"name": "año"}'.encode("latin-1"))
    with pytest.raises(CatalogError, match="not UTF-8"):
        load_catalog(path)


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    assert "top level must be a JSON object, got array" in load_error(tmp_path, [1, 2])


# ---------------------------------------------------------------- content errors, one per case


def test_missing_field_names_l1_pattern_number_and_id(tmp_path: Path) -> None:
    data = small_catalog()
    del data["l1s"][0]["patterns"][2]["explanation"]
    path = write(tmp_path, data)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value) == (
        f"{path}: l1 'spanish' pattern #3 ('negation_error'): missing field 'explanation'"
    )


def test_missing_top_level_field(tmp_path: Path) -> None:
    data = small_catalog()
    del data["personas"]
    assert load_error(tmp_path, data).endswith(": missing field 'personas'")


def test_missing_pair_field(tmp_path: Path) -> None:
    data = small_catalog()
    del data["l1s"][0]["patterns"][1]["pairs"][1]["correct"]
    assert load_error(tmp_path, data).endswith(
        "l1 'spanish' pattern #2 ('subject_omission') pair #2: missing field 'correct'"
    )


def test_unknown_field_is_an_error_not_ignored(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][0]["level"] = ["beginner"]
    message = load_error(tmp_path, data)
    assert "pattern #1 ('adjective_order'): unknown field 'level'" in message
    assert "levels" in message


def test_extra_field_in_a_pair(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][0]["pairs"][0]["note"] = "x"
    assert "pair #1: unknown field 'note'" in load_error(tmp_path, data)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(version="1"), "field 'version' must be a positive integer, got \"1\""),
        (lambda d: d.update(version=True), "field 'version' must be a positive integer, got true"),
        (lambda d: d.update(version=0), "field 'version' must be a positive integer, got 0"),
        (lambda d: d.update(topics="food"), "field 'topics' must be an array, got string"),
        (lambda d: d.update(l1s={}), "field 'l1s' must be an array, got object"),
        (lambda d: d["personas"].append(7), "personas #3 must be a string, got integer"),
        (lambda d: d["l1s"].append("korean"), "l1 #2: must be an object, got string"),
        (
            lambda d: d["l1s"][0].update(name=None),
            "l1 'spanish': field 'name' must be a string, got null",
        ),
        (
            lambda d: d["l1s"][0]["patterns"][0].update(pairs="I no like"),
            "pattern #1 ('adjective_order'): field 'pairs' must be an array, got string",
        ),
        (
            lambda d: d["l1s"][0]["patterns"][0]["pairs"].append(["a", "b"]),
            "pattern #1 ('adjective_order') pair #3: must be an object with 'erroneous' and "
            "'correct', got array",
        ),
        (
            lambda d: d["l1s"][0]["patterns"][0]["pairs"][0].update(correct=3.5),
            "pair #1: field 'correct' must be a string, got number",
        ),
    ],
)
def test_wrong_types(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    data = small_catalog()
    mutate(data)
    assert expected in load_error(tmp_path, data)


def test_duplicate_l1_id(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"].append(copy.deepcopy(data["l1s"][0]))
    assert "l1 #2: duplicate L1 id 'spanish' (first at l1 #1)" in load_error(tmp_path, data)


def test_duplicate_pattern_id_within_an_l1(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][2]["id"] = "adjective_order"
    assert (
        "l1 'spanish' pattern #3: duplicate pattern id 'adjective_order' (first at pattern #1)"
        in load_error(tmp_path, data)
    )


@pytest.mark.parametrize(
    "duplicate",
    [
        {"erroneous": "I no like coffee 2.", "correct": "I don't like coffee 2."},
        {"erroneous": "i no like COFFEE 2.", "correct": "I don't like coffee 2."},
        {"erroneous": "I no like coffee 2.", "correct": "I  don't like coffee 2. "},
    ],
    ids=["exact", "case", "whitespace"],
)
def test_duplicate_pair_within_a_pattern(tmp_path: Path, duplicate: dict[str, str]) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][1]["pairs"].append(duplicate)
    assert (
        "pattern #2 ('subject_omission') pair #3: duplicate of pair #1"
        in load_error(tmp_path, data)
    )


@pytest.mark.parametrize(
    "pair",
    [
        {"erroneous": "I like tea.", "correct": "I like tea."},
        {"erroneous": "I like tea.", "correct": "i LIKE tea."},
        {"erroneous": "I like  tea.", "correct": " I like tea."},
    ],
    ids=["exact", "case", "whitespace"],
)
def test_pair_with_equal_sentences(tmp_path: Path, pair: dict[str, str]) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][0]["pairs"][1] = pair
    assert (
        "pattern #1 ('adjective_order') pair #2: erroneous and correct are the same sentence"
        in load_error(tmp_path, data)
    )


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["l1s"][0].update(name=""), "l1 'spanish': field 'name' is an empty string"),
        (lambda d: d["l1s"][0].update(id="  "), "l1 #1: field 'id' is an empty string"),
        (
            lambda d: d["l1s"][0]["patterns"][1].update(explanation=" "),
            "pattern #2 ('subject_omission'): field 'explanation' is an empty string",
        ),
        (
            lambda d: d["l1s"][0]["patterns"][0]["pairs"][1].update(erroneous=""),
            "pattern #1 ('adjective_order') pair #2: field 'erroneous' is an empty string",
        ),
        (lambda d: d["topics"].insert(0, ""), "topics #1 is an empty string"),
    ],
)
def test_empty_strings(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    data = small_catalog()
    mutate(data)
    assert expected in load_error(tmp_path, data)


def test_explanation_must_be_one_line(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][0]["explanation"] = "First line.\nSecond line."
    assert "field 'explanation' must be one line" in load_error(tmp_path, data)


def test_sentence_must_be_one_line(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][0]["pairs"][0]["correct"] = "I don't\nlike it."
    assert "pair #1: field 'correct' must be one line" in load_error(tmp_path, data)


def test_ids_must_be_snake_case(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][0]["id"] = "Adjective Order"
    message = load_error(tmp_path, data)
    assert "field 'id' is 'Adjective Order'" in message
    assert "'adjective_order'" in message


def test_messages_stay_on_one_line_whatever_the_file_holds(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][0]["id"] = "bad\nid"
    message = load_error(tmp_path, data)
    assert 'pattern #1 ("bad\\nid"): field \'id\' must be one line' in message
    data = small_catalog()
    data["l1s"][0]["patterns"][0]["pairs"][0]["a\nb"] = 1
    assert 'unknown field "a\\nb"' in load_error(tmp_path, data)


def test_unknown_level_in_a_pattern(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][1]["levels"] = ["beginner", "expert"]
    message = load_error(tmp_path, data)
    assert "pattern #2 ('subject_omission'): unknown level 'expert'" in message
    assert "beginner, intermediate, advanced" in message


def test_empty_levels_in_a_pattern(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][1]["levels"] = []
    assert "field 'levels' is empty; omit it" in load_error(tmp_path, data)


def test_no_l1s(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"] = []
    assert load_error(tmp_path, data).endswith(": field 'l1s' is empty; add at least one L1")


def test_l1_without_patterns(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"] = []
    assert "l1 'spanish': field 'patterns' is empty" in load_error(tmp_path, data)


def test_pattern_without_pairs(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][2]["pairs"] = []
    assert (
        "pattern #3 ('negation_error'): field 'pairs' is empty; add at least one sentence pair"
        in load_error(tmp_path, data)
    )


@pytest.mark.parametrize("key", ["topics", "personas", "levels"])
def test_empty_topics_personas_levels(tmp_path: Path, key: str) -> None:
    data = small_catalog()
    data[key] = []
    assert f"field '{key}' is empty" in load_error(tmp_path, data)


def test_duplicate_topic(tmp_path: Path) -> None:
    data = small_catalog()
    data["topics"].append("Food")
    assert "topics #3 'Food' is a duplicate of topics #1" in load_error(tmp_path, data)


def test_the_first_problem_in_file_order_is_reported(tmp_path: Path) -> None:
    data = small_catalog()
    data["l1s"][0]["patterns"][2]["pairs"] = []
    del data["l1s"][0]["patterns"][0]["pairs"][1]["erroneous"]
    message = load_error(tmp_path, data)
    assert "pattern #1 ('adjective_order') pair #2: missing field 'erroneous'" in message
    assert load_error(tmp_path, data) == message


# ---------------------------------------------------------------- one result whatever the path

sentence = st.text(alphabet="aAb .\t", max_size=5)
raw_pair = st.one_of(
    st.fixed_dictionaries({"erroneous": sentence, "correct": sentence}),
    st.fixed_dictionaries({"erroneous": sentence, "correct": st.integers(0, 1)}),
    st.fixed_dictionaries({"erroneous": sentence}),
    st.fixed_dictionaries({"erroneous": sentence, "correct": sentence, "x": st.just(1)}),
    st.just("not a pair"),
)


def outcome(pairs: list[Any]) -> tuple[SentencePair, ...] | str:
    data = small_catalog()
    data["l1s"][0]["patterns"][0]["pairs"] = pairs
    try:
        return catalog_from_dict(data).l1s[0].patterns[0].pairs
    except CatalogError as exc:
        return str(exc)


@settings(max_examples=200, deadline=None)
@given(st.lists(raw_pair, min_size=1, max_size=6))
def test_whitespace_around_a_sentence_never_changes_the_outcome(pairs: list[Any]) -> None:
    """Padding a sentence sends its pattern through the slow validator; the result must not move."""
    padded = copy.deepcopy(pairs)
    first = padded[0]
    if isinstance(first, dict) and isinstance(first.get("erroneous"), str):
        first["erroneous"] = f" {first['erroneous']} "
    assert outcome(padded) == outcome(pairs)


# ---------------------------------------------------------------- scale


def benchmark_catalog_text(l1_count: int, pattern_count: int, pair_count: int) -> str:
    """A catalog as JSON text; built from string pieces because json.dumps of 400,000 dicts
    would take longer than the load being measured."""
    pairs = json.dumps(
        [
            {"erroneous": f"I no like tea {k}.", "correct": f"I don't like {k}."}
            for k in range(pair_count)
        ]
    )
    patterns = ", ".join(
        f'{{"id": "pattern_{j}", "name": "Pattern {j}", "explanation": "Why {j}.", '
        f'"pairs": {pairs}}}'
        for j in range(pattern_count)
    )
    l1s = ", ".join(
        f'{{"id": "l1_{i}", "name": "Language {i}", "patterns": [{patterns}]}}'
        for i in range(l1_count)
    )
    head = {"version": 1, "levels": ["beginner"], "topics": ["food"], "personas": ["a nurse"]}
    return json.dumps(head)[:-1] + f', "l1s": [{l1s}]}}'


def test_the_benchmark_catalog_builder_makes_a_valid_catalog() -> None:
    catalog = catalog_from_dict(json.loads(benchmark_catalog_text(2, 3, 4)))
    assert [(l1.id, p.id) for l1, p in catalog.cells()][-1] == ("l1_1", "pattern_2")
    assert catalog.pattern("l1_0", "pattern_1").pairs[3] == SentencePair(
        "I no like tea 3.", "I don't like 3."
    )
