"""Model output -> dialogue turns.

A model answers in whatever shape it likes: the JSON array the prompt asks for, that array inside
an object, in a code fence, wrapped in prose, or a plain "Student: ... / Tutor: ..." transcript.
parse_dialogue reads any of these as learner ("user") and tutor ("assistant") turns, or raises
Unparseable saying why. It never judges quality: that is the filters' job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.prompts import TUTOR_SYSTEM_MESSAGE

USER = "user"
ASSISTANT = "assistant"

ROLE_ALIASES: dict[str, str] = {
    "student": USER,
    "learner": USER,
    "user": USER,
    "human": USER,
    "tutor": ASSISTANT,
    "teacher": ASSISTANT,
    "assistant": ASSISTANT,
    "gpt": ASSISTANT,
}
# A system turn in the model's JSON is scaffolding around the dialogue, not part of it.
_SKIPPED_ROLES = frozenset({"system"})
_ROLE_KEYS = ("role", "speaker", "from", "author")
_TEXT_KEYS = ("text", "content", "value", "message", "utterance")
_CONTAINER_KEYS = ("dialogue", "dialog", "turns", "messages", "conversation", "conversations")

# Bounds that keep parsing linear on hostile input; a real answer needs a handful of each.
_MAX_JSON_CANDIDATES = 64
_MAX_JSON_DEPTH = 8
_LABEL_PREFIX_CHARS = 160

_JSON_START = re.compile(r'[\[{](?=\s*[\[{"])')
_EMPHASIS = r"(?:\*\*|__|\*|_)"
_LABEL = re.compile(
    rf"""
    \s*
    (?:[-*+\u2022>]\s+|\(?\d{{1,3}}[.):]\s*|\#+\s*)*+    # bullet, number, heading, quote
    {_EMPHASIS}?\s*\[?\s*
    (?P<label>{"|".join(ROLE_ALIASES)})
    (?:\s*\([^()\n]{{0,40}}\))?                          # Student (Maria):
    \s*\]?\s*{_EMPHASIS}?\s*
    [:\uff1a]
    \s*{_EMPHASIS}?
    """,
    re.IGNORECASE | re.VERBOSE,
)
_LAYOUT_LINE = re.compile(r"\s*(?:```.*|~~~.*|[-*_=]{3,}\s*)")
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}


@dataclass(frozen=True)
class Turn:
    """One utterance: role is "user" (the learner) or "assistant" (the tutor)."""

    role: str
    content: str


class Unparseable(Exception):
    """No dialogue could be read from the model's text; the message says why."""


def parse_dialogue(text: str) -> tuple[Turn, ...]:
    """The turns in a model's answer, same-role neighbours merged. Raises Unparseable."""
    if not isinstance(text, str):
        raise TypeError(f"parse_dialogue expects str, got {type(text).__name__}")
    if not text.strip():
        raise Unparseable("empty text")
    unknown_roles: set[str] = set()
    turns = _turns_from_json_text(text, unknown_roles) or _turns_from_transcript(text)
    if not turns:
        if unknown_roles:
            names = ", ".join(sorted(unknown_roles)[:5])
            raise Unparseable(f"no turns found: unknown speaker roles ({names})")
        raise Unparseable(
            "no turns found: expected a JSON array of {role, text} or Student:/Tutor: lines"
        )
    merged = _merge_same_role(turns)
    if not any(turn.content for turn in merged):
        raise Unparseable("no turn has any text")
    return merged


def to_messages(
    turns: Sequence[Turn], system: str = TUTOR_SYSTEM_MESSAGE
) -> list[dict[str, str]]:
    """Chat messages for training: the tutor's system prompt, then the turns in order."""
    return [{"role": "system", "content": system}] + [
        {"role": turn.role, "content": turn.content} for turn in turns
    ]


def canonical_role(name: str) -> str | None:
    """"user"/"assistant" for a speaker name such as "Student" or "Tutor (Ana)", else None."""
    word = re.match(r"[^\W\d_]+", name.strip().lower())
    return ROLE_ALIASES.get(word.group()) if word else None


def clean_text(text: str) -> str:
    """Text without surrounding whitespace or a quote pair wrapping the whole utterance."""
    text = _encodable(text).strip()
    while len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        inner = text[1:-1]
        # A quote that opens a word inside ("'like' is ... 'like'") means the outer
        # quotes are not a wrapping pair; apostrophes inside words ("don't") are fine.
        if re.search(rf"(?:^|\s){re.escape(text[0])}\w", inner):
            break
        text = inner.strip()
    return text


def _encodable(text: str) -> str:
    # A JSON escape such as \ud800 yields a lone surrogate; a turn must survive UTF-8.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _merge_same_role(turns: Sequence[Turn]) -> tuple[Turn, ...]:
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            parts = [part for part in (merged[-1].content, turn.content) if part]
            merged[-1] = Turn(turn.role, " ".join(parts))
        else:
            merged.append(turn)
    return tuple(merged)


# --- JSON -------------------------------------------------------------------------------------


def _turns_from_json_text(text: str, unknown_roles: set[str]) -> list[Turn]:
    for value in _json_values(text):
        turns = _turns_from_json(value, unknown_roles, depth=0)
        if turns:
            return turns
    return []


def _json_values(text: str) -> Iterator[Any]:
    """Each JSON array/object embedded in text (fenced, after prose, ...), outermost first."""
    decoder = json.JSONDecoder()
    resume_at = 0
    tried = 0
    for match in _JSON_START.finditer(text):
        if match.start() < resume_at:
            continue  # inside a value already decoded and searched
        if tried >= _MAX_JSON_CANDIDATES:
            return
        tried += 1
        try:
            value, resume_at = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            continue
        yield value


def _turns_from_json(value: Any, unknown_roles: set[str], depth: int) -> list[Turn]:
    if depth > _MAX_JSON_DEPTH:
        return []
    if isinstance(value, list):
        turns = _turns_from_list(value, unknown_roles)
        if turns:
            return turns
        # A list of dialogues: the first one wins. Its items are not read as lone turns,
        # or one good turn among bad ones would pass for a whole dialogue.
        for item in value:
            if isinstance(item, list):
                found = _turns_from_json(item, unknown_roles, depth + 1)
            elif isinstance(item, dict):
                found = _turns_from_object(item, unknown_roles, depth + 1, lone_turn=False)
            else:
                continue
            if found:
                return found
        return []
    if isinstance(value, dict):
        return _turns_from_object(value, unknown_roles, depth, lone_turn=True)
    return []


def _turns_from_object(
    obj: dict[Any, Any], unknown_roles: set[str], depth: int, lone_turn: bool
) -> list[Turn]:
    keyed = {key.lower(): item for key, item in obj.items() if isinstance(key, str)}
    for key in _CONTAINER_KEYS:
        inner = keyed.get(key)
        if isinstance(inner, str):
            found = _turns_from_transcript(inner)
        else:
            found = _turns_from_json(inner, unknown_roles, depth + 1)
        if found:
            return found
    if lone_turn:
        single = _turn_from_object(obj, unknown_roles)
        if isinstance(single, Turn):
            return [single]
    for item in obj.values():
        if isinstance(item, (list, dict)):
            found = _turns_from_json(item, unknown_roles, depth + 1)
            if found:
                return found
    return []


def _turns_from_list(items: list[Any], unknown_roles: set[str]) -> list[Turn]:
    """Turns when every item is a turn object (system turns skipped), else []."""
    turns: list[Turn] = []
    for item in items:
        if not isinstance(item, dict):
            return []
        turn = _turn_from_object(item, unknown_roles)
        if turn is None:
            return []
        if isinstance(turn, Turn):
            turns.append(turn)
    return turns


def _turn_from_object(obj: dict[Any, Any], unknown_roles: set[str]) -> Turn | bool | None:
    """A Turn; False for a turn to skip (system); None when obj is not a turn."""
    keyed = {key.lower(): item for key, item in obj.items() if isinstance(key, str)}
    role_name = next((keyed[k] for k in _ROLE_KEYS if isinstance(keyed.get(k), str)), None)
    text_keys = [k for k in _TEXT_KEYS if k in keyed]
    if role_name is None or not text_keys:
        return _turn_keyed_by_role(keyed)
    text = keyed[text_keys[0]]
    if text is None:
        text = ""
    if not isinstance(text, str):
        return None
    if role_name.strip().lower() in _SKIPPED_ROLES:
        return False
    role = canonical_role(role_name)
    if role is None:
        unknown_roles.add(role_name.strip().lower()[:40])
        return None
    return Turn(role, clean_text(text))


def _turn_keyed_by_role(keyed: dict[str, Any]) -> Turn | None:
    """{"Student": "I no like coffee"}: the speaker is the key."""
    if len(keyed) != 1:
        return None
    ((name, text),) = keyed.items()
    role = ROLE_ALIASES.get(name.strip())
    if role is None or not isinstance(text, str):
        return None
    return Turn(role, clean_text(text))


# --- transcript -------------------------------------------------------------------------------


def _turns_from_transcript(text: str) -> list[Turn]:
    """Turns from "Student: ..." / "Tutor: ..." lines; unlabelled lines continue the last turn."""
    roles: list[str] = []
    parts: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or _LAYOUT_LINE.fullmatch(line):
            continue
        label = _LABEL.match(line[:_LABEL_PREFIX_CHARS])
        if label:
            roles.append(ROLE_ALIASES[label.group("label").lower()])
            parts.append([line[label.end() :]])
        elif parts:
            parts[-1].append(line)
    return [
        Turn(role, clean_text(_strip_trailing_emphasis(" ".join(p.strip() for p in lines))))
        for role, lines in zip(roles, parts)
    ]


def _strip_trailing_emphasis(text: str) -> str:
    # "**Student:** hi" leaves nothing behind, but "*Student: hi*" leaves a closing "*".
    stripped = text.strip()
    for mark in ("**", "__", "*", "_"):
        if stripped.endswith(mark) and mark not in stripped[: -len(mark)]:
            return stripped[: -len(mark)]
    return stripped
