"""judge: one passing dialogue, then one dialogue failing exactly each rule, then several."""

from __future__ import annotations

import json
from difflib import SequenceMatcher
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger.filters as filters
from ledger.dialogue import Turn
from ledger.filters import (
    DEFAULT_CORRECTION_PHRASES,
    FILTER_VERSION,
    RULES,
    FilterConfig,
    Verdict,
    containment,
    count_questions,
    judge,
    sentence_words,
)

ERRONEOUS = "I no like coffee"
CORRECT = "I don't like coffee"
QUESTION = "What word do we use with 'like' to make it negative?"


def dialogue(*turns: tuple[str, str]) -> str:
    """The JSON the prompt asks for; roles given as "s" (student) or "t" (tutor)."""
    names = {"s": "student", "t": "tutor"}
    return json.dumps([{"role": names[role], "text": text} for role, text in turns])


GOOD = dialogue(("s", "I no like coffee."), ("t", QUESTION), ("s", "I don't like coffee."))


def spanish(content: str | None, finish_reason: str | None = "stop", **config: object) -> Verdict:
    return judge(content, finish_reason, ERRONEOUS, CORRECT, FilterConfig(**config))  # type: ignore[arg-type]


# --- passing ------------------------------------------------------------------------------------


def test_the_spanish_example_passes() -> None:
    verdict = spanish(GOOD)
    assert verdict.passed
    assert verdict.reasons == ()
    assert verdict.filter_version == FILTER_VERSION
    assert verdict.turns[0] == Turn("user", "I no like coffee.")
    assert verdict.metrics["turns"] == 3
    assert verdict.metrics["tutor_turns"] == 1
    assert verdict.metrics["tutor_questions"] == 1
    assert verdict.metrics["learner_self_corrected"] is True
    assert verdict.metrics["error_match"] == 1.0


def test_the_korean_example_passes_as_a_transcript() -> None:
    content = (
        "**Student:** Yes! I can swimming very well.\n"
        "**Tutor:** Nice! After 'can', what form does the next verb take?\n"
        "**Student:** Hmm, the base form?\n"
        "**Tutor:** Right. So how would you say your sentence again?\n"
        "**Student:** I can swim very well!"
    )
    verdict = judge(content, "stop", "I can swimming", "I can swim")
    assert verdict.passed, verdict.reasons
    assert verdict.metrics["tutor_questions"] == 2
    assert verdict.metrics["learner_self_corrected"] is True


def test_tutor_may_repeat_the_answer_after_the_learner_said_it() -> None:
    content = dialogue(
        ("s", "I no like coffee."),
        ("t", QUESTION),
        ("s", "I don't like coffee."),
        ("t", "Yes! \u201cI don\u2019t like coffee.\u201d What else don't you like?"),
    )
    assert spanish(content).passed


def test_tutor_may_quote_the_learners_error() -> None:
    content = dialogue(
        ("s", "I no like coffee."),
        ("t", f"You said 'I no like coffee'. {QUESTION}"),
        ("s", "I don't like coffee."),
    )
    assert spanish(content).passed


def test_praise_with_correct_is_not_an_explicit_correction() -> None:
    content = dialogue(
        ("s", "I no like coffee."),
        ("t", QUESTION),
        ("s", "I don't like coffee."),
        ("t", "That's correct! Can you try with 'tea'?"),
    )
    assert spanish(content).passed


# --- each rule alone ----------------------------------------------------------------------------


def test_truncated() -> None:
    assert spanish(GOOD, finish_reason="length").reasons == ("truncated",)


def test_content_filter() -> None:
    verdict = spanish(GOOD, finish_reason="content_filter")
    assert verdict.reasons == ("content_filter",)
    assert not verdict.passed
    assert len(verdict.turns) == 3


@pytest.mark.parametrize("content", [None, "", "   \n\t"])
def test_empty(content: str | None) -> None:
    verdict = spanish(content)
    assert verdict.reasons == ("empty",)
    assert verdict.turns == ()
    assert verdict.metrics["turns"] == 0


def test_unparseable_keeps_the_parsers_reason() -> None:
    verdict = spanish("I'm sorry, I can't write that dialogue.")
    assert verdict.reasons == ("unparseable",)
    assert verdict.turns == ()
    assert "no turns found" in verdict.metrics["parse_error"]


def test_bad_structure_when_the_tutor_opens() -> None:
    content = dialogue(
        ("t", "Hi! Do you drink coffee?"),
        ("s", "I no like coffee."),
        ("t", QUESTION),
        ("s", "I don't like coffee."),
    )
    assert spanish(content).reasons == ("bad_structure",)


def test_bad_structure_when_a_turn_is_empty() -> None:
    content = dialogue(
        ("s", "I no like coffee."),
        ("t", QUESTION),
        ("s", "  "),
        ("t", "Which small word goes before 'like'?"),
        ("s", "I don't like coffee."),
    )
    assert spanish(content).reasons == ("bad_structure",)


def test_too_few_turns() -> None:
    content = dialogue(("s", "I no like coffee."), ("t", QUESTION))
    assert spanish(content).reasons == ("too_few_turns",)


def test_min_turns_is_configurable() -> None:
    assert spanish(GOOD, min_turns=4).reasons == ("too_few_turns",)


def test_no_question() -> None:
    content = dialogue(
        ("s", "I no like coffee."),
        ("t", "Think about the little word that makes 'like' negative."),
        ("s", "I don't like coffee."),
    )
    verdict = spanish(content)
    assert verdict.reasons == ("no_question",)
    assert verdict.metrics["tutor_questions"] == 0


def test_min_tutor_questions_is_configurable() -> None:
    assert spanish(GOOD, min_tutor_questions=2).reasons == ("no_question",)


def test_explicit_correction() -> None:
    content = dialogue(
        ("s", "I no like coffee."),
        ("t", f"That's wrong. {QUESTION}"),
        ("s", "I don't like coffee."),
    )
    verdict = spanish(content)
    assert verdict.reasons == ("explicit_correction",)
    assert verdict.metrics["correction_phrases"] == ["wrong"]


def test_missing_target_error() -> None:
    content = dialogue(
        ("s", "I don't like coffee very much."),
        ("t", "Why not? What do you drink in the morning?"),
        ("s", "I drink tea."),
    )
    verdict = spanish(content)
    assert verdict.reasons == ("missing_target_error",)
    assert verdict.metrics["error_match"] < 0.75


def test_missing_target_error_looks_only_at_the_learners_first_turn() -> None:
    content = dialogue(
        ("s", "Hello teacher."),
        ("t", "Hello! Do you like coffee?"),
        ("s", "I no like coffee."),
        ("t", QUESTION),
        ("s", "I don't like coffee."),
    )
    assert spanish(content).reasons == ("missing_target_error",)


def test_answer_given() -> None:
    content = dialogue(
        ("s", "I no like coffee."),
        ("t", "Do you mean 'I don't like coffee'?"),
        ("s", "I don't like coffee."),
    )
    verdict = spanish(content)
    assert verdict.reasons == ("answer_given",)
    assert verdict.metrics["answer_given_turn"] == 1


def test_answer_given_even_when_spelled_out() -> None:
    content = dialogue(
        ("s", "I no like coffee."),
        ("t", "Could we say: I do not like coffee?"),
        ("s", "Yes."),
    )
    assert spanish(content).reasons == ("answer_given",)


# --- several at once ----------------------------------------------------------------------------


def test_several_reasons_are_all_listed_in_rule_order() -> None:
    content = dialogue(("t", "Wrong. You should say: I don't like coffee."), ("s", "OK."))
    verdict = spanish(content, finish_reason="length")
    assert verdict.reasons == (
        "truncated",
        "bad_structure",
        "too_few_turns",
        "no_question",
        "explicit_correction",
        "missing_target_error",
        "answer_given",
    )
    assert verdict.metrics["correction_phrases"] == ["wrong", "you should say"]


def test_empty_with_a_finish_reason_lists_both_and_nothing_else() -> None:
    assert spanish("", finish_reason="length").reasons == ("truncated", "empty")
    assert spanish("??", finish_reason="content_filter").reasons == ("content_filter", "unparseable")


# --- correction phrases -------------------------------------------------------------------------


@pytest.mark.parametrize("phrase", DEFAULT_CORRECTION_PHRASES)
def test_every_default_phrase_is_caught(phrase: str) -> None:
    content = dialogue(
        ("s", "I no like coffee."),
        ("t", f"Well, {phrase.upper()} here. {QUESTION}"),
        ("s", "I don't like coffee."),
    )
    assert spanish(content).reasons == ("explicit_correction",)


@pytest.mark.parametrize(
    ("tutor", "caught"),
    [
        ("There are two errors here. What are they?", True),
        ("It\u2019s not how we say it. What word do we need?", True),
        ("You made a small Mistake! Can you find it?", True),
        ("What a terror that coffee is! Why don't you like it?", False),
        ("Is something mistaken there?", False),
        ("Shouldn't be too hard: what makes 'like' negative?", False),
        ("That's correct! Why do you like tea?", False),
        ("What could you use instead of 'no'?", False),
    ],
)
def test_phrases_match_whole_words_only(tutor: str, caught: bool) -> None:
    content = dialogue(("s", "I no like coffee."), ("t", tutor), ("s", "I don't like coffee."))
    assert ("explicit_correction" in spanish(content).reasons) is caught


def test_custom_correction_phrases_replace_the_defaults() -> None:
    content = dialogue(("s", "I no like coffee."), ("t", f"Oops! {QUESTION}"), ("s", CORRECT))
    assert spanish(content, correction_phrases=("oops",)).reasons == ("explicit_correction",)
    wrong = dialogue(("s", "I no like coffee."), ("t", f"Wrong! {QUESTION}"), ("s", CORRECT))
    assert spanish(wrong, correction_phrases=("oops",)).passed


# --- questions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [
        (QUESTION, 1),
        ("Good. What comes next? And after that?", 2),
        ("Really?? Are you sure?!", 2),
        ("Think about it.", 0),
        ("'?'", 0),
        ("e.g. what would you say?", 1),
    ],
)
def test_count_questions(text: str, count: int) -> None:
    assert count_questions(text) == count


# --- sentence matching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("turn", "contains"),
    [
        ("Yesterday I no like coffee at all", True),
        ("I no like coffee.", True),
        ("i NO like... coffee!!", True),
        ("Well, I no like the coffee here.", True),
        ("I don't like coffee", False),
        ("I do not like coffee", False),
        ("I like coffee", False),
        ("Coffee is nice.", False),
        ("", False),
    ],
)
def test_learner_turn_contains_the_erroneous_sentence(turn: str, contains: bool) -> None:
    score = containment(sentence_words(turn), sentence_words(ERRONEOUS), sentence_words(CORRECT))
    assert (score >= 0.75) is contains
    assert 0.0 <= score <= 1.0


def test_an_inserted_word_is_told_apart() -> None:
    error, right = sentence_words("Is raining"), sentence_words("It is raining")
    assert containment(sentence_words("Today is raining a lot."), error, right) == 1.0
    assert containment(sentence_words("It is raining a lot."), error, right) < 0.75
    assert containment(sentence_words("It's raining!"), right, error) == 1.0


def test_contractions_and_curly_apostrophes_are_normalised() -> None:
    assert sentence_words("I don\u2019t, can't, won't; it's I'm") == [
        "i", "do", "not", "can", "not", "will", "not", "it", "is", "i", "am",
    ]
    assert sentence_words("Maria's cat") == ["maria's", "cat"]


@pytest.mark.parametrize(
    ("last_turn", "corrected"),
    [
        ("I don't like coffee.", True),
        ("Oh! I do not like coffee.", True),
        ("I don\u2019t like coffee!", True),
        ("I no like coffee.", False),
        ("Coffee is bad.", False),
    ],
)
def test_learner_self_corrected_metric(last_turn: str, corrected: bool) -> None:
    content = dialogue(("s", "I no like coffee."), ("t", QUESTION), ("s", last_turn))
    assert spanish(content).metrics["learner_self_corrected"] is corrected


def test_the_first_learner_turn_does_not_count_as_self_correction() -> None:
    content = dialogue(("s", "I don't like coffee."), ("t", QUESTION), ("s", "Yes."))
    assert spanish(content).metrics["learner_self_corrected"] is False


# --- properties of judge ------------------------------------------------------------------------


def test_every_rule_is_documented_in_the_module_docstring() -> None:
    assert filters.__doc__ is not None
    for rule in RULES:
        assert f"\n  {rule} " in filters.__doc__


def test_metrics_have_the_same_keys_always_and_serialise_to_json() -> None:
    verdicts = [spanish(GOOD), spanish(None), spanish("nonsense"), spanish(GOOD, "length")]
    keys = {frozenset(v.metrics) for v in verdicts}
    assert len(keys) == 1
    assert {"turns", "tutor_turns", "tutor_questions", "learner_self_corrected", "error_match"} <= set(
        verdicts[0].metrics
    )
    for verdict in verdicts:
        json.dumps(verdict.metrics)


def test_judge_is_deterministic() -> None:
    assert spanish(GOOD) == spanish(GOOD)


def test_a_megabyte_of_noise_is_judged_quickly() -> None:
    noise = random.Random(3).randbytes(1 << 20).decode("latin-1")
    assert spanish(noise).reasons == ("unparseable",)


def test_a_huge_dialogue_is_judged() -> None:
    content = "Student: I no like coffee.\n" + "Tutor: Why?\nStudent: Because.\n" * 2_000
    verdict = spanish(content)
    assert verdict.metrics["turns"] == 4_001
    assert verdict.reasons == ()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["s", "t"]),
            st.sampled_from(["I no like coffee.", CORRECT, QUESTION, "Wrong!", "", "Hm."])
            | st.text(max_size=40),
        ),
        max_size=8,
    ),
    st.sampled_from([None, "stop", "length", "content_filter", "error"]),
)
def test_judge_never_crashes_and_reasons_are_known(
    turns: list[tuple[str, str]], finish_reason: str | None
) -> None:
    verdict = spanish(dialogue(*turns), finish_reason)
    assert set(verdict.reasons) <= set(RULES)
    assert list(verdict.reasons) == sorted(verdict.reasons, key=RULES.index)
    assert verdict.passed is (not verdict.reasons)
    assert 0.0 <= verdict.metrics["error_match"] <= 1.0


def test_a_runaway_turn_is_rejected_as_too_long() -> None:
    from ledger import simulator_dialogues as sd

    pair = sd.SentencePair("I no like coffee.", "I don't like coffee.")
    base = json.loads(sd.dialogue_content(pair.erroneous, pair.correct, 0))
    assert judge(json.dumps(base), "stop", pair.erroneous, pair.correct).passed
    base[1]["text"] = "Why? " + "Think about it. " * 200
    verdict = judge(json.dumps(base), "stop", pair.erroneous, pair.correct)
    assert not verdict.passed and "too_long" in verdict.reasons
    huge = sd.huge_content(pair, 0, size=50_000)
    assert "too_long" in judge(huge, "stop", pair.erroneous, pair.correct).reasons


_VOCAB = st.sampled_from(["i", "no", "do", "not", "like", "coffee", "is", "it", "raining"])


@settings(max_examples=400, deadline=None)
@given(words=st.lists(_VOCAB, max_size=14), target=st.lists(_VOCAB, min_size=1, max_size=5),
       foil=st.lists(_VOCAB, max_size=6),
       floor=st.sampled_from([0.0, 0.75, 0.9]))
def test_containment_shortcuts_agree_with_the_full_search(words, target, foil, floor):
    """The verbatim shortcut and the ratio bound only skip work: the score (or, under a floor,
    the yes/no answer) is what the search over every stretch gives."""
    fast = filters.containment(words, target, foil, floor)
    full = filters._search(words, target, foil, floor) if words else 0.0
    if floor == 0.0:
        assert fast == full
    else:
        assert (fast >= floor) == (full >= floor)


def _every_stretch(words, target, foil):  # type: ignore[no-untyped-def]
    """containment's definition with no pruning: the best ratio to target over every stretch
    that starts and ends on a target word, holds the words that tell target from foil, and
    is closer to target than any widened stretch is to the foil."""
    discriminate = bool(foil) and list(foil) != list(target)
    required = filters._distinctive_words(target, foil) if discriminate else frozenset()
    widen = max(1, len(foil) - len(target))
    longest = len(target) + max(2, len(target) // 2)
    best = 0.0
    for start in range(len(words)):
        for end in range(start + 1, min(len(words), start + longest) + 1):
            stretch = words[start:end]
            if stretch[0] not in target or stretch[-1] not in target:
                continue
            if not required.issubset(stretch):
                continue
            score = SequenceMatcher(None, stretch, list(target), autojunk=False).ratio()
            if discriminate and max(
                    SequenceMatcher(None, words[max(0, start - b):min(len(words), end + a)],
                                    list(foil), autojunk=False).ratio()
                    for b in range(widen + 1) for a in range(widen + 1)) >= score:
                continue
            best = max(best, score)
    return best


@st.composite
def _near_copies(draw):  # type: ignore[no-untyped-def]
    """(words, target, foil): words hold the target with a few words inserted, dropped or
    replaced, amid other words; the stretches that score near a floor are what pruning risks."""
    target = draw(st.lists(_VOCAB, min_size=1, max_size=6))
    copy = list(target)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(copy)))
        edit = draw(st.sampled_from(["insert", "drop", "replace"]))
        if edit == "insert" or not copy:
            copy.insert(at, draw(_VOCAB))
        elif edit == "drop":
            del copy[min(at, len(copy) - 1)]
        else:
            copy[min(at, len(copy) - 1)] = draw(_VOCAB)
    words = draw(st.lists(_VOCAB, max_size=4)) + copy + draw(st.lists(_VOCAB, max_size=4))
    return words, target, draw(st.lists(_VOCAB, max_size=7))


@settings(max_examples=600, deadline=None)
@given(case=st.one_of(
           st.tuples(st.lists(_VOCAB, max_size=14), st.lists(_VOCAB, min_size=1, max_size=5),
                     st.lists(_VOCAB, max_size=6)),
           _near_copies()),
       floor=st.sampled_from([0.0, 0.75, 0.8, 0.9]))
def test_the_full_search_agrees_with_every_stretch(case, floor):
    """The search's own pruning (length bound, quick ratio, missing distinctive words) only
    skips stretches that could not count."""
    words, target, foil = case
    found = filters._search(words, target, foil, floor)
    expected = _every_stretch(words, target, foil)
    if floor == 0.0:
        assert found == expected
    else:
        assert (found >= floor) == (expected >= floor)


_PHRASE_TEXT = st.lists(st.sampled_from(
    ["wrong", "Wrong", "wrongs", "errors", "terror", "error'", "'error", "it's", "it\u2019s",
     "not", "correct", "way", "should", "be", " ", "  ", "\n", ".", "!", "x", "_", "the",
     "correct form", "isn't", "right"]), max_size=10).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=_PHRASE_TEXT)
def test_one_search_for_any_phrase_agrees_with_each_phrase_on_its_own(text):
    phrases = filters.DEFAULT_CORRECTION_PHRASES
    haystack = text.translate(filters._CURLY)
    one = filters._any_phrase_pattern(tuple(phrases)).search(haystack) is not None
    each = any(filters._phrase_pattern(p).search(haystack) for p in phrases)
    assert one == each
    assert bool(filters.correction_phrases_in([text], phrases)) == each
