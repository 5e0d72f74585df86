"""Versioned prompt templates.

A prompt version belongs to an attempt, never to a job: editing the template and bumping
PROMPT_VERSION changes what new attempts send without re-planning or re-doing accepted work.
"""

from __future__ import annotations

from dataclasses import dataclass

PROMPT_VERSION = "p1"

SYSTEM_PROMPT = (
    "You write short ESL tutoring dialogues. The tutor never says the learner is wrong and never "
    "gives the answer; it asks guiding questions until the learner fixes the error."
)

# Kept compact on purpose (~120 tokens): the prompt is paid for on every attempt.
# The two quoted lines are also what the bundled simulator reads to build its dialogue.
USER_TEMPLATE = """Write a scaffolding dialogue (4-6 turns) between a Student and a Tutor.
Student: {level} learner, native {l1_name}, persona: {persona}. Topic: {topic}.
Error pattern: {pattern_name}.
Student's first line contains: "{erroneous}"
Target form (the Tutor must never say it): "{correct}"
The Tutor only asks guiding questions; no words like wrong, incorrect, mistake. The Student self-corrects at the end.
Reply with JSON only: [{{"role": "student", "text": "..."}}, {{"role": "tutor", "text": "..."}}, ...]"""

TUTOR_SYSTEM_MESSAGE = (
    "You are a patient ESL tutor. When a learner makes a grammar error, do not correct it "
    "directly; ask guiding questions so the learner notices and fixes it."
)


@dataclass(frozen=True)
class PromptInput:
    l1_name: str
    level: str
    persona: str
    topic: str
    pattern_name: str
    erroneous: str
    correct: str


def render_messages(p: PromptInput) -> list[dict[str, str]]:
    """The chat messages sent for one attempt."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": USER_TEMPLATE.format(
                l1_name=p.l1_name,
                level=p.level,
                persona=p.persona,
                topic=p.topic,
                pattern_name=p.pattern_name,
                erroneous=p.erroneous,
                correct=p.correct,
            ),
        },
    ]
