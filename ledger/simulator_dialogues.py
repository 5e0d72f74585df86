"""What the simulator's model writes: scaffolding dialogues and the faulty answers around them.

Pure functions, no I/O, no state: the server in ledger.simulator decides *which* outcome a
request gets and bills it; ledger.simulator_wire wraps the content in OpenRouter's bodies. The
user message of every request names an erroneous sentence and its target form (see
ledger.prompts.USER_TEMPLATE); a dialogue fills one of several templates with them, so it looks
like a real model's output and passes or fails the quality filter for reasons a test can name.
The content of every fault the simulator can inject (an explicit correction, a 2 MB answer,
binary garbage, a truncated answer) is written here.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache

_ERRONEOUS_LINE = re.compile(r"""^Student's first line contains: "(.*)"\s*$""", re.MULTILINE)
_TARGET_LINE = re.compile(r"""^Target form \(the Tutor must never say it\): "(.*)"\s*$""", re.MULTILINE)
_EDGE_PUNCTUATION = ".,!?;:\"'"

# Words a scaffolding tutor never uses; a dialogue that would put one in the tutor's mouth
# falls back to a template that quotes nothing from the student.
FORBIDDEN_TUTOR_WORDS = ("wrong", "incorrect", "mistake", "error", "should be")

HUGE_CONTENT_CHARS = 2_000_000


@dataclass(frozen=True)
class SentencePair:
    """The learner's erroneous sentence and the form the learner should reach alone."""

    erroneous: str
    correct: str


# Used when a prompt does not follow USER_TEMPLATE, so any client still gets a dialogue.
FALLBACK_PAIR = SentencePair("I no like coffee.", "I don't like coffee.")

# Each template opens with the student (a dialogue that opens with the tutor fails the filter's
# structure rule), alternates speakers, and has the student reach the target alone; a tutor turn
# after that only praises. {wrong} and {right} are the sentences verbatim; {focus} names the
# part of the erroneous sentence that differs, never the target words.
TEMPLATES: tuple[tuple[tuple[str, str], ...], ...] = (
    (
        ("student", "Hello! {wrong}"),
        ("tutor", "Thanks for telling me! Look at {focus} in your sentence. How do we say that part in English?"),
        ("student", "Oh, I think I know. {right}"),
        ("tutor", "Yes, that sounds natural. Well done!"),
    ),
    (
        ("student", "{wrong}"),
        ("tutor", "Interesting! Can you read your sentence again slowly and listen to {focus}?"),
        ("student", "Hmm, it sounds a little strange to me now."),
        ("tutor", "Good ear! How do English speakers usually build this part of a sentence?"),
        ("student", "Let me try again: {right}"),
    ),
    (
        ("student", "{wrong}"),
        ("tutor", "I understand you! Which word in that sentence follows the grammar of your first language?"),
        ("student", "Maybe the word {focus}?"),
        ("tutor", "Nice thinking. How can you change that part so it sounds natural in English?"),
        ("student", "{right}"),
        ("tutor", "Great, you found it yourself!"),
    ),
    (
        ("student", "Hello teacher! {wrong}"),
        ("tutor", "Thank you! If you compare your sentence with one from our book, what looks different around {focus}?"),
        ("student", "I am not sure. Is it the order of the words?"),
        ("tutor", "That is a good question to ask. What pattern did we see in last week's lesson?"),
        ("student", "Now I remember. {right}"),
    ),
    (
        ("student", "Guess what? {wrong}"),
        ("tutor", "Great news! Can you say it once more, thinking carefully about {focus}?"),
        ("student", "Oh! {right}"),
        ("tutor", "Perfect. Now it sounds just like English!"),
    ),
    (
        ("student", "{wrong}"),
        ("tutor", "I see! What would a native speaker say instead of {focus}?"),
        ("student", "Hmm, I'm not sure."),
        ("tutor", "Think of a similar sentence from our book. How is that part built there?"),
        ("student", "Ah, I see now. {right}"),
        ("tutor", "Excellent, you worked it out on your own."),
    ),
)

_CORRECTION_TEMPLATE: tuple[tuple[str, str], ...] = (
    ("student", "{wrong}"),
    ("tutor", "That's wrong, you should say \"{right}\". Can you repeat it?"),
    ("student", "OK. {right}"),
    ("tutor", "Good. Do you understand the mistake now?"),
    ("student", "Yes. {right}"),
)

_GENERIC_FOCUS = "that part"


def sentence_pair(prompt: str) -> SentencePair:
    """The erroneous and target sentences quoted in a prompt, or FALLBACK_PAIR."""
    erroneous = _ERRONEOUS_LINE.search(prompt)
    correct = _TARGET_LINE.search(prompt)
    if erroneous is None or correct is None:
        return FALLBACK_PAIR
    return SentencePair(erroneous.group(1), correct.group(1))


def _normalise(token: str) -> str:
    return token.strip(_EDGE_PUNCTUATION).casefold()


def focus_phrase(pair: SentencePair) -> str:
    """The quoted span of the erroneous sentence that differs from the target.

    An omission error ("She is nurse") has no differing span, so the words around the gap are
    quoted instead: naming the missing word would give the answer away.
    """
    wrong, right = pair.erroneous.split(), pair.correct.split()
    shorter = min(len(wrong), len(right))
    prefix = 0
    while prefix < shorter and _normalise(wrong[prefix]) == _normalise(right[prefix]):
        prefix += 1
    suffix = 0
    while suffix < shorter - prefix and _normalise(wrong[-1 - suffix]) == _normalise(right[-1 - suffix]):
        suffix += 1
    span = wrong[prefix : len(wrong) - suffix] or wrong[max(prefix - 1, 0) : prefix + 1]
    text = " ".join(span).strip(_EDGE_PUNCTUATION)
    return f'"{text}"' if text else _GENERIC_FOCUS


def _fill(template: tuple[tuple[str, str], ...], pair: SentencePair, focus: str) -> list[dict[str, str]]:
    return [
        {"role": role, "text": text.format(wrong=pair.erroneous, right=pair.correct, focus=focus)}
        for role, text in template
    ]


def _tutor_gives_it_away(turns: list[dict[str, str]], pair: SentencePair) -> bool:
    target = pair.correct.strip(_EDGE_PUNCTUATION + " ").casefold()
    for turn in turns:
        if turn["role"] != "tutor":
            continue
        text = turn["text"].casefold()
        if (target and target in text) or any(word in text for word in FORBIDDEN_TUTOR_WORDS):
            return True
    return False


def dialogue_turns(pair: SentencePair, variant: int) -> list[dict[str, str]]:
    """A 4-6 turn scaffolding dialogue; variant picks the template (any int, wrapped)."""
    template = TEMPLATES[variant % len(TEMPLATES)]
    turns = _fill(template, pair, focus_phrase(pair))
    # The quoted focus can itself contain the target (when the target is a substring of the
    # erroneous sentence) or a forbidden word; then the tutor quotes nothing.
    if _tutor_gives_it_away(turns, pair):
        turns = _fill(template, pair, _GENERIC_FOCUS)
    return turns


@lru_cache(maxsize=8192)
def dialogue_content(erroneous: str, correct: str, variant: int) -> str:
    """The message content a well-behaved model returns: a JSON array of turns.

    Cached because benchmarks send the same few jobs again and again (retries, fallbacks).
    """
    return json.dumps(dialogue_turns(SentencePair(erroneous, correct), variant), ensure_ascii=False)


def correction_content(pair: SentencePair) -> str:
    """A well-formed dialogue whose tutor corrects explicitly; a quality filter must reject it."""
    return json.dumps(_fill(_CORRECTION_TEMPLATE, pair, _GENERIC_FOCUS), ensure_ascii=False)


def huge_content(pair: SentencePair, variant: int, size: int = HUGE_CONTENT_CHARS) -> str:
    """A valid dialogue padded to about `size` characters by a tutor who will not stop talking."""
    turns = dialogue_turns(pair, variant)
    tutor = next(turn for turn in turns if turn["role"] == "tutor")
    repeats = size // (len(tutor["text"]) + 1) + 1
    tutor["text"] = " ".join([tutor["text"]] * repeats)
    return json.dumps(turns, ensure_ascii=False)


def binary_content(seed: int, size: int = 512) -> str:
    """Bytes that are not UTF-8 text, decoded as latin-1: still a valid JSON string, but garbage."""
    garbage = random.Random(seed).randbytes(size)
    return (b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + garbage).decode("latin-1")


def truncated(content: str, fraction: float) -> str:
    """The first `fraction` of content, as a provider cut off mid-answer returns it."""
    return content[: int(len(content) * fraction)]
