"""parse_dialogue: every shape a model answers in -> learner/tutor turns, garbage -> Unparseable."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.dialogue import Turn, Unparseable, parse_dialogue, to_messages
from ledger.prompts import TUTOR_SYSTEM_MESSAGE

SPANISH = (
    Turn("user", "I no like coffee."),
    Turn("assistant", "What word do we use with 'like' to make it negative?"),
    Turn("user", "I don't like coffee."),
)
PROMPT_FORMAT = json.dumps(
    [
        {"role": "student", "text": "I no like coffee."},
        {"role": "tutor", "text": "What word do we use with 'like' to make it negative?"},
        {"role": "student", "text": "I don't like coffee."},
    ]
)
TRANSCRIPT = """Student: I no like coffee.
Tutor: What word do we use with 'like' to make it negative?
Student: I don't like coffee."""


# --- JSON ---------------------------------------------------------------------------------------


def test_the_array_the_prompt_asks_for() -> None:
    assert parse_dialogue(PROMPT_FORMAT) == SPANISH


@pytest.mark.parametrize(
    "key", ["dialogue", "turns", "messages", "conversation", "conversations", "Dialogue"]
)
def test_array_inside_an_object(key: str) -> None:
    assert parse_dialogue(json.dumps({"topic": "food", key: json.loads(PROMPT_FORMAT)})) == SPANISH


def test_array_nested_deeper_in_an_object() -> None:
    text = json.dumps({"result": {"data": {"dialogue": json.loads(PROMPT_FORMAT)}}})
    assert parse_dialogue(text) == SPANISH


@pytest.mark.parametrize("role_key", ["role", "speaker", "from", "Role"])
@pytest.mark.parametrize("text_key", ["text", "content", "value", "message"])
def test_turn_key_spellings(role_key: str, text_key: str) -> None:
    text = json.dumps(
        [{role_key: "student", text_key: "I no like coffee."}, {role_key: "tutor", text_key: "Why?"}]
    )
    assert parse_dialogue(text) == (Turn("user", "I no like coffee."), Turn("assistant", "Why?"))


@pytest.mark.parametrize(
    ("learner", "tutor"),
    [
        ("student", "tutor"),
        ("Learner", "Teacher"),
        ("USER", "ASSISTANT"),
        ("human", "gpt"),
        ("Student (Maria)", "Tutor Ana"),
    ],
)
def test_role_names(learner: str, tutor: str) -> None:
    text = json.dumps([{"role": learner, "text": "a"}, {"role": tutor, "text": "b?"}])
    assert parse_dialogue(text) == (Turn("user", "a"), Turn("assistant", "b?"))


def test_sharegpt_conversations() -> None:
    text = json.dumps(
        {
            "conversations": [
                {"from": "human", "value": "I can swimming."},
                {"from": "gpt", "value": "What comes after 'can'?"},
            ]
        }
    )
    assert parse_dialogue(text) == (
        Turn("user", "I can swimming."),
        Turn("assistant", "What comes after 'can'?"),
    )


def test_json_in_a_fence_with_prose_around_it() -> None:
    text = f"Sure! Here is the dialogue [as requested]:\n```json\n{PROMPT_FORMAT}\n```\nEnjoy {{:)}}"
    assert parse_dialogue(text) == SPANISH


def test_pretty_printed_json_after_prose() -> None:
    text = "Here you go:\n" + json.dumps(json.loads(PROMPT_FORMAT), indent=2)
    assert parse_dialogue(text) == SPANISH


def test_speaker_as_key() -> None:
    text = json.dumps([{"Student": "I no like coffee."}, {"Tutor": "Why?"}])
    assert parse_dialogue(text) == (Turn("user", "I no like coffee."), Turn("assistant", "Why?"))


def test_system_turns_are_skipped() -> None:
    text = json.dumps(
        [{"role": "system", "content": "be kind"}] + json.loads(PROMPT_FORMAT)
    )
    assert parse_dialogue(text) == SPANISH


def test_dialogue_given_as_a_transcript_string_inside_json() -> None:
    assert parse_dialogue(json.dumps({"dialogue": TRANSCRIPT})) == SPANISH


def test_json_without_a_dialogue_falls_back_to_the_transcript() -> None:
    assert parse_dialogue('{"level": "A2", "score": [1, 2]}\n' + TRANSCRIPT) == SPANISH


def test_null_text_is_an_empty_turn_kept_for_the_filter() -> None:
    text = json.dumps(
        [
            {"role": "student", "text": "I no like coffee."},
            {"role": "tutor", "text": None},
            {"role": "student", "text": "Hm."},
        ]
    )
    assert parse_dialogue(text) == (
        Turn("user", "I no like coffee."),
        Turn("assistant", ""),
        Turn("user", "Hm."),
    )


def test_unknown_speaker_roles_are_named() -> None:
    text = json.dumps([{"role": "Maria", "text": "I no like coffee."}, {"role": "Tutor", "text": "Why?"}])
    with pytest.raises(Unparseable, match="maria"):
        parse_dialogue(text)


def test_non_string_text_is_not_a_turn() -> None:
    with pytest.raises(Unparseable):
        parse_dialogue(json.dumps([{"role": "student", "text": 42}]))


# --- transcripts --------------------------------------------------------------------------------


def test_plain_transcript() -> None:
    assert parse_dialogue(TRANSCRIPT) == SPANISH


@pytest.mark.parametrize(
    "text",
    [
        "STUDENT: I no like coffee.\ntutor: What word do we use with 'like' to make it negative?\n"
        "student: I don't like coffee.",
        "**Student:** I no like coffee.\n**Tutor:** What word do we use with 'like' to make it"
        " negative?\n**Student:** I don't like coffee.",
        "**Student**: I no like coffee.\n**Tutor**: What word do we use with 'like' to make it"
        " negative?\n**Student**: I don't like coffee.",
        "*Student:* I no like coffee.\n*Tutor:* What word do we use with 'like' to make it"
        " negative?\n*Student:* I don't like coffee.",
        "1. Student: I no like coffee.\n2. Tutor: What word do we use with 'like' to make it"
        " negative?\n3. Student: I don't like coffee.",
        "1) **Student:** I no like coffee.\n2) **Tutor:** What word do we use with 'like' to make"
        " it negative?\n3) **Student:** I don't like coffee.",
        "- Student: I no like coffee.\n- Tutor: What word do we use with 'like' to make it"
        " negative?\n- Student: I don't like coffee.",
        "* **Learner:** I no like coffee.\n* **Teacher:** What word do we use with 'like' to make"
        " it negative?\n* **Learner:** I don't like coffee.",
        "Student (Maria): I no like coffee.\nTutor (Ana): What word do we use with 'like' to make"
        " it negative?\nStudent (Maria): I don't like coffee.",
        f"Here is a short dialogue.\n\n```\n{TRANSCRIPT}\n```\n",
        f"```text\n{TRANSCRIPT}\n```",
        "Student: I no like coffee.\n\n---\n\nTutor: What word do we use with 'like' to make it"
        " negative?\n\nStudent: I don't like coffee.\n",
    ],
    ids=[
        "case",
        "bold-inside",
        "bold-outside",
        "italic",
        "numbered",
        "numbered-bold",
        "bulleted",
        "bulleted-bold-learner-teacher",
        "named",
        "prose-and-fence",
        "fence-with-language",
        "blank-lines-and-rule",
    ],
)
def test_transcript_forms(text: str) -> None:
    assert parse_dialogue(text) == SPANISH


def test_continuation_lines_belong_to_the_previous_turn() -> None:
    text = (
        "Student: I no like coffee.\n"
        "Tutor: Good sentence to look at.\n"
        "What word do we use with 'like'\n"
        "   to make it negative?\n"
        "Student: I don't like coffee."
    )
    assert parse_dialogue(text)[1] == Turn(
        "assistant", "Good sentence to look at. What word do we use with 'like' to make it negative?"
    )


def test_prose_before_the_first_label_is_ignored() -> None:
    assert parse_dialogue("Of course!\nThe learner is Spanish.\n" + TRANSCRIPT) == SPANISH


def test_words_that_merely_start_like_labels_are_not_labels() -> None:
    text = "Students: many\nTutoring: later\n" + TRANSCRIPT
    assert parse_dialogue(text) == SPANISH


# --- cleaning and merging -----------------------------------------------------------------------


def test_consecutive_turns_by_one_role_are_merged_with_a_space() -> None:
    text = json.dumps(
        [
            {"role": "student", "text": "Hello!"},
            {"role": "learner", "text": "I no like coffee."},
            {"role": "tutor", "text": "Hmm."},
            {"role": "teacher", "text": "What word makes 'like' negative?"},
        ]
    )
    assert parse_dialogue(text) == (
        Turn("user", "Hello! I no like coffee."),
        Turn("assistant", "Hmm. What word makes 'like' negative?"),
    )


def test_transcript_turns_by_one_role_are_merged() -> None:
    text = "Student: Hi.\nStudent: I no like coffee.\nTutor: Why?"
    assert parse_dialogue(text) == (Turn("user", "Hi. I no like coffee."), Turn("assistant", "Why?"))


def test_merging_an_empty_turn_leaves_no_stray_space() -> None:
    text = "Student:\nStudent: I no like coffee.\nTutor: Why?"
    assert parse_dialogue(text)[0] == Turn("user", "I no like coffee.")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('  "I no like coffee."  ', "I no like coffee."),
        ("\u201cI no like coffee.\u201d", "I no like coffee."),
        ("'I don't like coffee.'", "I don't like coffee."),
        ("\t I no like coffee. \n", "I no like coffee."),
        ("'like' is the verb, so where does 'not' go?", "'like' is the verb, so where does 'not' go?"),
        ('"No" or "not"?', '"No" or "not"?'),
        ('""', ""),
    ],
)
def test_whitespace_and_wrapping_quotes_are_stripped(raw: str, clean: str) -> None:
    text = json.dumps([{"role": "student", "text": "x"}, {"role": "tutor", "text": raw}])
    assert parse_dialogue(text)[1].content == clean
    assert parse_dialogue(f"Student: x\nTutor: {raw.strip()}")[1].content == clean


# --- garbage ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t ",
        "I'm sorry, I can't help with that.",
        "Student",
        "Student:",
        "  **Tutor:**  ",
        "Student:\nTutor:\n",
        "[]",
        "{}",
        '[{"role": "student"}]',
        "[1, 2, 3]",
        '{"dialogue": []}',
        "[" * 100_000,
        '{"a": ' * 50_000,
        "[" + "9" * 10_000 + "]",
        "#" * 10_000 + ":",
        "- " * 50_000,
        "\x00\x01\x02Student\x7f",
        "```json\n[{\"role\": \"student\", \"text\": \"I no\"",
    ],
    ids=lambda text: repr(text[:24]),
)
def test_garbage_is_unparseable(text: str) -> None:
    with pytest.raises(Unparseable) as raised:
        parse_dialogue(text)
    assert str(raised.value)


def test_lone_label_says_there_is_no_text() -> None:
    with pytest.raises(Unparseable, match="no turn has any text"):
        parse_dialogue("Student:")


def test_a_megabyte_of_random_bytes() -> None:
    noise = random.Random(20240601).randbytes(1 << 20).decode("latin-1")
    with pytest.raises(Unparseable):
        parse_dialogue(noise)


def test_random_bytes_around_a_real_dialogue_still_yield_it() -> None:
    rng = random.Random(7)
    noise = rng.randbytes(50_000).decode("latin-1").replace("[", "").replace("{", "")
    assert parse_dialogue(noise + "\n" + PROMPT_FORMAT + "\n" + noise) == SPANISH


def test_lone_surrogates_from_json_escapes_become_encodable() -> None:
    turns = parse_dialogue('[{"role": "student", "text": "I no like \\ud800 coffee"}]')
    assert turns[0].content.encode("utf-8") == b"I no like ? coffee"


def test_non_string_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_dialogue(b"Student: hi")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            list("Student Tutor Learner:*-#1.\n\"'{}[],?ab")
            + ["\x00", "\u201c", "\u2019", '"role"', '"text"', "Student:", "Tutor:", "**"]
        )
    ).map("".join)
    | st.text()
)
def test_any_text_gives_clean_alternating_turns_or_unparseable(text: str) -> None:
    try:
        turns = parse_dialogue(text)
    except Unparseable:
        return
    assert turns
    assert all(turn.role in ("user", "assistant") for turn in turns)
    assert all(a.role != b.role for a, b in zip(turns, turns[1:]))
    assert all(turn.content == turn.content.strip() for turn in turns)
    assert any(turn.content for turn in turns)


# --- messages -----------------------------------------------------------------------------------


def test_to_messages_puts_the_tutor_system_message_first() -> None:
    assert to_messages(SPANISH) == [
        {"role": "system", "content": TUTOR_SYSTEM_MESSAGE},
        {"role": "user", "content": "I no like coffee."},
        {"role": "assistant", "content": "What word do we use with 'like' to make it negative?"},
        {"role": "user", "content": "I don't like coffee."},
    ]


def test_to_messages_with_another_system_message() -> None:
    messages = to_messages(SPANISH[:1], system="Be brief.")
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I no like coffee."},
    ]


def test_turns_are_frozen() -> None:
    with pytest.raises(AttributeError):
        SPANISH[0].content = "changed"  # type: ignore[misc]
