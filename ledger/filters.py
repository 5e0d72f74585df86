"""Quality rules: is a generated dialogue good scaffolding?

judge() is pure and deterministic: the same content, finish reason, sentence pair and config
always give the same Verdict. Every verdict carries FILTER_VERSION, so changing a rule means a
new version whose verdicts sit beside the old ones instead of rewriting them.

Rule ids (stable strings: reports group and count by them):

  truncated             finish_reason was "length": the model ran out of tokens.
  content_filter        finish_reason was "content_filter": the provider withheld output.
  empty                 content is missing or blank. No content rule runs after it.
  unparseable           no dialogue can be read from the content. No content rule runs after it.
  bad_structure         the dialogue does not open with the learner, or has an empty turn.
  too_few_turns         fewer than FilterConfig.min_turns turns.
  no_question           the tutor asks fewer than min_tutor_questions questions
                        ('?'-terminated sentences, counted over all tutor turns).
  explicit_correction   a tutor turn contains a correction phrase ("wrong", "mistake", ...):
                        whole words or phrases, case-insensitive, a single word also in its
                        plural ("errors"), never inside another word ("terror").
  missing_target_error  the learner's first turn does not contain the job's erroneous sentence.
  answer_given          a tutor turn contains the corrected sentence before any learner turn has.
  too_long              a turn runs past FilterConfig.max_turn_chars (a runaway answer).

The finish-reason rules are reported beside whatever else fails; "empty" and "unparseable"
replace the content rules, since there is no dialogue to judge.

Sentence matching ("contains the erroneous sentence") works on words: lower-cased, curly
apostrophes made straight, punctuation dropped, common contractions spelled out ("don't" ->
"do not"). A turn contains a sentence when some stretch of its words is similar enough to it
(difflib ratio over words), holds the words that set it apart from the other sentence of the
pair, and is more similar to it than to that other sentence. So "Yesterday I no like coffee at
all" contains "I no like coffee", while "I don't like coffee" and "I like coffee" do not, nor
does "It is raining" contain "Is raining".
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from ledger.dialogue import ASSISTANT, USER, Turn, Unparseable, parse_dialogue

FILTER_VERSION: str = "f2"  # f2: too_long

# Only "stop" is a complete answer; these two are rejected even when the text parses.
_FINISH_REASON_RULES = {"length": "truncated", "content_filter": "content_filter"}

RULES: tuple[str, ...] = (
    "truncated",
    "content_filter",
    "empty",
    "unparseable",
    "bad_structure",
    "too_few_turns",
    "no_question",
    "explicit_correction",
    "missing_target_error",
    "answer_given",
    "too_long",
)

# Phrases that tell the learner they erred or hand them the fix. Deliberately absent:
# "correct" alone (praise after the self-correction: "That's correct!") and "instead of"
# ("What could you use instead of 'no'?" is a guiding question).
DEFAULT_CORRECTION_PHRASES: tuple[str, ...] = (
    "wrong",
    "incorrect",
    "incorrectly",
    "should be",
    "the correct form",
    "mistake",
    "error",
    "not correct",
    "isn't correct",
    "correct way",
    "you should say",
    "should have said",
    "it's not",
    "not right",
    "isn't right",
    "ungrammatical",
    "not grammatical",
)


@dataclass(frozen=True)
class FilterConfig:
    """The rules' knobs; changing a default changes behaviour, so it needs a new FILTER_VERSION."""

    correction_phrases: tuple[str, ...] = DEFAULT_CORRECTION_PHRASES
    min_turns: int = 3
    min_tutor_questions: int = 1
    # Word-level similarity needed to say a turn contains a sentence. The learner's opening
    # line is judged leniently (it is only the error's carrier); the corrected sentence,
    # whose presence decides answer_given and self-correction, strictly.
    error_match_threshold: float = 0.75
    answer_match_threshold: float = 0.9
    # A runaway answer (a turn of thousands of words) is useless for training even when it
    # parses; a scaffolding turn is a sentence or two.
    max_turn_chars: int = 600


@dataclass(frozen=True)
class Verdict:
    """The outcome for one answer: the failed rule ids (in RULES order) and what was measured."""

    passed: bool
    reasons: tuple[str, ...]
    # JSON-serialisable (a plain dict) so it can be stored as is.
    metrics: Mapping[str, Any]
    filter_version: str
    turns: tuple[Turn, ...] = ()


def judge(
    content: str | None,
    finish_reason: str | None,
    erroneous: str,
    correct: str,
    config: FilterConfig = FilterConfig(),
) -> Verdict:
    """The verdict on one model answer for the job's (erroneous, correct) sentence pair."""
    reasons = _finish_reasons(finish_reason)
    if content is None or not content.strip():
        return _without_dialogue(reasons + ["empty"], parse_error=None)
    try:
        turns = parse_dialogue(content)
    except Unparseable as exc:
        return _without_dialogue(reasons + ["unparseable"], parse_error=str(exc))

    error_words = sentence_words(erroneous)
    correct_words = sentence_words(correct)
    tutor_texts = [turn.content for turn in turns if turn.role == ASSISTANT]
    learner_texts = [turn.content for turn in turns if turn.role == USER]
    questions = sum(count_questions(text) for text in tutor_texts)
    phrases = correction_phrases_in(tutor_texts, config.correction_phrases)
    error_match = (
        containment(sentence_words(learner_texts[0]), error_words, correct_words)
        if learner_texts
        else 0.0
    )
    # Whether each turn says the corrected sentence: computed once, read by both rules.
    said = [says(turn.content, correct_words, error_words, config.answer_match_threshold)
            for turn in turns]
    answer_turn = _first_answer(turns, said)
    learner_said = [flag for turn, flag in zip(turns, said) if turn.role == USER]
    self_corrected = any(learner_said[1:])

    failed = {
        "bad_structure": turns[0].role != USER or any(not turn.content for turn in turns),
        "too_few_turns": len(turns) < config.min_turns,
        "no_question": questions < config.min_tutor_questions,
        "explicit_correction": bool(phrases),
        "missing_target_error": error_match < config.error_match_threshold,
        "answer_given": answer_turn is not None,
        "too_long": any(len(turn.content) > config.max_turn_chars for turn in turns),
    }
    reasons += [rule for rule in RULES if failed.get(rule)]
    metrics = _metrics(
        turns=len(turns),
        learner_turns=len(learner_texts),
        tutor_turns=len(tutor_texts),
        tutor_questions=questions,
        learner_self_corrected=self_corrected,
        error_match=round(error_match, 4),
        correction_phrases=phrases,
        answer_given_turn=answer_turn,
    )
    return Verdict(not reasons, tuple(reasons), metrics, FILTER_VERSION, turns)


def _finish_reasons(finish_reason: str | None) -> list[str]:
    rule = _FINISH_REASON_RULES.get(finish_reason or "")
    return [rule] if rule else []


def _without_dialogue(reasons: list[str], parse_error: str | None) -> Verdict:
    return Verdict(False, tuple(reasons), _metrics(parse_error=parse_error), FILTER_VERSION, ())


def _metrics(**values: Any) -> dict[str, Any]:
    """Every verdict has the same metric keys, so reports never meet a missing one."""
    base: dict[str, Any] = {
        "turns": 0,
        "learner_turns": 0,
        "tutor_turns": 0,
        "tutor_questions": 0,
        "learner_self_corrected": False,
        "error_match": 0.0,
        "correction_phrases": [],
        "answer_given_turn": None,
        "parse_error": None,
    }
    return base | values


# --- rules' building blocks -------------------------------------------------------------------

_QUESTION = re.compile(r"[^.!?\uff1f]*[?\uff1f]+")
_CURLY = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u00b4": "'", "`": "'"})


def count_questions(text: str) -> int:
    """How many sentences in text end with a question mark."""
    return sum(1 for piece in _QUESTION.findall(text) if re.search(r"\w", piece))


def correction_phrases_in(texts: Sequence[str], phrases: Sequence[str]) -> list[str]:
    """The phrases (as configured) that occur as whole words in any of texts."""
    haystack = "\n".join(texts).translate(_CURLY)
    if not _any_phrase_pattern(tuple(phrases)).search(haystack):
        return []  # the usual case, settled by one search instead of one per phrase
    return [phrase for phrase in phrases if _phrase_pattern(phrase).search(haystack)]


_NOT_AFTER_WORD = r"(?<![\w'])"


@lru_cache(maxsize=64)
def _any_phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    """Matches wherever one of the phrase patterns would (their alternation)."""
    if not phrases:
        return re.compile(r"(?!)")
    # The shared look-behind is checked once per position, not once per phrase: a sixth of the
    # time of the plain alternation of the phrase patterns, with the same matches.
    return re.compile(_NOT_AFTER_WORD + "(?:" + "|".join(_phrase_body(p) for p in phrases) + ")",
                      re.IGNORECASE)


def _phrase_body(phrase: str) -> str:
    """The phrase as a pattern, from its first letter to the word boundary after it."""
    words = phrase.translate(_CURLY).split()
    body = r"\s+".join(re.escape(word) for word in words)
    plural = "s?" if len(words) == 1 else ""
    return rf"{body}{plural}(?![\w'])"


@lru_cache(maxsize=1024)
def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    # Cached: building the pattern (escape, join, re's own cache lookup) cost more than the
    # search on every judged answer.
    return re.compile(_NOT_AFTER_WORD + _phrase_body(phrase), re.IGNORECASE)


# --- sentence matching ------------------------------------------------------------------------

# A turn longer than this many words is not a plausible utterance; the cap keeps judge fast on
# pathological output without affecting real dialogues.
_MAX_WORDS = 2000
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_NOT_STEMS = {"ca": "can", "wo": "will", "sha": "shall"}
_SUFFIXES = {"'m": "am", "'re": "are", "'ve": "have", "'ll": "will"}
# "'s" is spelled out only after these: elsewhere it is usually a possessive.
_IS_HOSTS = frozenset(
    {"it", "that", "what", "there", "here", "he", "she", "who", "where", "how", "this"}
)


def sentence_words(text: str) -> list[str]:
    """Normalised words: lower case, straight apostrophes, no punctuation, contractions expanded."""
    return list(_sentence_words(text))


@lru_cache(maxsize=4096)
def _sentence_words(text: str) -> tuple[str, ...]:
    # Cached: one answer asks for the same turn's words from several rules.
    words: list[str] = []
    for token in _WORD.findall(text.translate(_CURLY).lower()):
        if "'" in token or token == "cannot":
            words.extend(_expand_contraction(token))
        else:
            words.append(token)  # most words: nothing to spell out
        if len(words) >= _MAX_WORDS:
            break
    return tuple(words[:_MAX_WORDS])


def _expand_contraction(token: str) -> list[str]:
    if token == "cannot":
        return ["can", "not"]
    if token.endswith("n't") and len(token) > 3:
        stem = token[:-3]
        return [_NOT_STEMS.get(stem, stem), "not"]
    for suffix, word in _SUFFIXES.items():
        if token.endswith(suffix) and len(token) > len(suffix):
            return [token[: -len(suffix)], word]
    if token.endswith("'s") and token[:-2] in _IS_HOSTS:
        return [token[:-2], "is"]
    if token == "let's":
        return ["let", "us"]
    return [token]


def containment(
    words: Sequence[str], target: Sequence[str], foil: Sequence[str], floor: float = 0.0
) -> float:
    """How well some stretch of words matches target (0..1), among stretches closer to target
    than to foil. 0.0 when every similar stretch is really the foil. Scores below floor are
    not worth computing exactly: any result under floor just means "no"."""
    if not target or not words:
        return 0.0
    if set(target).isdisjoint(words):
        return 0.0
    if floor > 0.0 and _ratio_bound(words, target) < floor:
        return 0.0
    discriminate = bool(foil) and list(foil) != list(target)
    widen = _widen(target, foil)
    # The common case first: the sentence word for word. A ratio of 1.0 is the best any stretch
    # can score, so the first verbatim stretch the foil does not claim is the answer the full
    # search would give.
    n, first, target_t = len(target), target[0], tuple(target)
    for start, word in enumerate(words):
        if word == first and tuple(words[start:start + n]) == target_t and not (
                discriminate and _foil_verbatim(words, start, start + n, widen, foil)):
            return 1.0
    return _search(words, target, foil, floor)


def _widen(target: Sequence[str], foil: Sequence[str]) -> int:
    # The foil may be longer (an inserted word such as "It is raining" vs "Is raining"):
    # compare against the foil over a stretch widened by that many words on each side.
    return max(1, len(foil) - len(target))


def _search(words: Sequence[str], target: Sequence[str], foil: Sequence[str],
            floor: float = 0.0) -> float:
    """containment's full search over every stretch that starts and ends on a target word."""
    target_set = set(target)
    discriminate = bool(foil) and list(foil) != list(target)
    required = _distinctive_words(target, foil) if discriminate else frozenset()
    if not required.issubset(words):
        # No stretch can hold the words that tell target from foil, so none would count: the
        # usual case of a turn that quotes the other sentence of the pair.
        return 0.0
    slack = max(2, len(target) // 2)
    widen = _widen(target, foil)
    to_target = SequenceMatcher(None, autojunk=False)
    to_target.set_seq2(list(target))
    to_foil = SequenceMatcher(None, autojunk=False)
    to_foil.set_seq2(list(foil))
    foil_memo: dict[tuple[int, int], float] = {}  # windows overlap across start positions
    best = 0.0
    n_target = len(target)
    for start, word in enumerate(words):
        # An unmatched word at either end only lowers the ratio, so stretches that matter
        # start and end on target words.
        if word not in target_set:
            continue
        for length in range(1, n_target + slack + 1):
            end = start + length
            if end > len(words):
                break
            if words[end - 1] not in target_set:
                continue
            bar = max(best, floor - 1e-9)
            # real_quick_ratio's bound, from the length alone, before the stretch is built: a
            # stretch matches at most min(length, n_target) words. With a floor it leaves
            # only lengths near the target's.
            if 2.0 * min(length, n_target) / (length + n_target) <= bar:
                continue
            to_target.set_seq1(list(words[start:end]))
            if to_target.quick_ratio() <= bar:
                continue
            score = to_target.ratio()
            if score <= bar or not required.issubset(words[start:end]):
                continue
            if discriminate and _foil_score(to_foil, words, start, end, widen,
                                            foil_memo) >= score:
                continue
            best = score
            if best == 1.0:
                return best
    return best


def _ratio_bound(words: Sequence[str], target: Sequence[str]) -> float:
    """An upper bound on any stretch's ratio to target: a stretch matches at most the words it
    shares with target (as a multiset, m of them) and is at least m words long, so its ratio
    2 * matches / (len(stretch) + len(target)) is at most 2m / (m + len(target))."""
    have = Counter(words)
    shared = sum(min(count, have[word]) for word, count in Counter(target).items())
    return 2.0 * shared / (shared + len(target))


def _distinctive_words(target: Sequence[str], foil: Sequence[str]) -> frozenset[str]:
    """The target's words that the foil replaces or drops: "no" in "I no like coffee" against
    "I do not like coffee". A stretch lacking them is not the target, however similar."""
    return _distinctive_cached(tuple(target), tuple(foil))


@lru_cache(maxsize=1024)
def _distinctive_cached(target: tuple[str, ...], foil: tuple[str, ...]) -> frozenset[str]:
    opcodes = SequenceMatcher(None, list(target), list(foil), autojunk=False).get_opcodes()
    return frozenset(
        word
        for tag, start, end, _, _ in opcodes
        if tag in ("replace", "delete")
        for word in target[start:end]
    )


def _foil_verbatim(words: Sequence[str], start: int, end: int, widen: int,
                   foil: Sequence[str]) -> bool:
    """Whether _foil_score would be 1.0: some widened stretch is the foil word for word."""
    foil_t = tuple(foil)
    return any(tuple(words[max(0, start - before):min(len(words), end + after)]) == foil_t
               for before in range(widen + 1) for after in range(widen + 1))


def _foil_score(
    to_foil: SequenceMatcher[str], words: Sequence[str], start: int, end: int, widen: int,
    memo: dict[tuple[int, int], float],
) -> float:
    best = 0.0
    for before in range(widen + 1):
        for after in range(widen + 1):
            key = (max(0, start - before), min(len(words), end + after))
            score = memo.get(key)
            if score is None:
                to_foil.set_seq1(list(words[key[0]:key[1]]))
                score = memo[key] = to_foil.ratio()
            best = max(best, score)
    return best


def says(text: str, sentence: Sequence[str], other: Sequence[str], threshold: float) -> bool:
    """Whether text contains sentence (normalised words) rather than the other of the pair."""
    return containment(sentence_words(text), sentence, other, floor=threshold) >= threshold


def first_answer_turn(
    turns: Sequence[Turn], correct: Sequence[str], erroneous: Sequence[str], threshold: float
) -> int | None:
    """Index of the first tutor turn that says the corrected sentence while no learner turn
    has said it yet; None when the tutor never gives the answer away."""
    return _first_answer(turns, [says(t.content, correct, erroneous, threshold) for t in turns])


def _first_answer(turns: Sequence[Turn], said: Sequence[bool]) -> int | None:
    for index, (turn, flag) in enumerate(zip(turns, said)):
        if flag and turn.role == USER:
            return None
        if flag and turn.role == ASSISTANT:
            return index
    return None
