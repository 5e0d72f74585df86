"""Importing dialogues made elsewhere (a JSONL file) as jobs of the ledger, judged like our own.

A line holds one dialogue as `messages` ([{role, content}]), `conversations` ([{from, value}],
ShareGPT) or `text` (ChatML, or a "Student: ... / Tutor: ..." transcript), with optional `l1`,
`error_type` and `level` fields. Each dialogue becomes a job with source 'import' whose id is a
hash of its turns, so importing a file twice (or the same dialogue in another format) adds
nothing; nor does a line of this ledger's own export (its job_id and attempt_id name an attempt
the ledger accepted, with the same dialogue). The job gets one attempt (model 'import', no run, no cost) whose content is the original
line, an outcome, a verdict under the current filter and, when that passes, the acceptance; the
file gets one `imports` event. All of it is one transaction: a file is imported whole or not at
all. Lines that are not JSON or hold no dialogue are skipped and reported by line number.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import schema
from .catalog import Catalog
from .db import Ledger
from .dialogue import (ASSISTANT, USER, Turn, Unparseable, canonical_role, parse_dialogue,
                       to_messages)
from .errors import UsageError
from .filters import FilterConfig, Verdict, judge
from .prompts import TUTOR_SYSTEM_MESSAGE
from .records import PlannedJob, utc_now
from .store import Store, append_new_jobs
from .tx import Tx

IMPORT_MODEL = "import"
UNKNOWN = "unknown"
_ROLE_KEYS = ("role", "from", "speaker", "author")
_TEXT_KEYS = ("content", "value", "text")
_FIELD_KEYS = {"l1": ("l1", "native_language"), "error_type": ("error_type", "pattern"),
               "level": ("level", "proficiency")}
_CHATML = re.compile(r"<\|im_start\|>[ \t]*([^\s<|]+)[ \t]*\n?"
                     r"(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)", re.DOTALL)
_SLUG = re.compile(r"[^a-z0-9]+")


class NoDialogue(ValueError):
    """A line holds no dialogue we can read; the message says why."""


# --- reading one line -----------------------------------------------------------------------

def _part_text(value: Any) -> str | None:
    """A message's text: a string, or OpenAI-style content parts [{type: text, text}]."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        texts = [p.get("text") for p in value if isinstance(p.get("text"), str)]
        return "".join(texts) if texts else None  # type: ignore[arg-type]
    return None


def _message_role(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise NoDialogue(f"a turn in {where} has no role")
    if name.strip().lower() == "system":
        return "system"
    role = canonical_role(name)
    if role is None:
        raise NoDialogue(f"unknown role {name.strip()[:30]!r} in {where}")
    return role


def _from_turn_list(items: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(items, list) or not items:
        raise NoDialogue(f"{where} is not a list of turns")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise NoDialogue(f"{where} holds a turn that is not an object")
        role = _message_role(next((item[k] for k in _ROLE_KEYS if k in item), None), where)
        text = next((t for k in _TEXT_KEYS if k in item
                     and (t := _part_text(item[k])) is not None), None)
        if text is None:
            raise NoDialogue(f"a {role} turn in {where} has no text")
        out.append({"role": role, "content": text.strip()})
    return out


def messages_from_chatml(text: str) -> list[dict[str, str]]:
    out = [{"role": _message_role(role, "text"), "content": body.strip()}
           for role, body in _CHATML.findall(text)]
    if not out:
        raise NoDialogue("text has <|im_start|> markers but no turns")
    return out


def read_messages(obj: Any, raw_line: str = "") -> list[dict[str, str]]:
    """The chat messages of one JSONL object, in any of the shapes the module docstring
    names; a system message, if any, stays first. Raises NoDialogue."""
    if not isinstance(obj, dict):
        raise NoDialogue("not a JSON object")
    for key in ("messages", "conversations"):
        if key in obj:
            return _from_turn_list(obj[key], key)
    text = obj.get("text")
    try:
        if isinstance(text, str):
            if "<|im_start|>" in text:
                return messages_from_chatml(text)
            turns = parse_dialogue(text)
        else:
            # Other containers the dialogue parser knows: {"dialogue": [...]}, {"turns": [...]}.
            turns = parse_dialogue(raw_line or json.dumps(obj, ensure_ascii=False))
    except Unparseable:
        raise NoDialogue("no dialogue: expected messages, conversations or text") from None
    return [{"role": t.role, "content": t.content} for t in turns]


# --- catalog ids ------------------------------------------------------------------------------

def slug(value: str) -> str:
    return _SLUG.sub("_", value.strip().lower()).strip("_")


def _l1_aliases(catalog: Catalog) -> dict[str, str]:
    """Spellings of each L1 that files use: its id, its name, and the parts of a name such as
    "Chinese (Mandarin)"."""
    aliases: dict[str, str] = {}
    for l1 in catalog.l1s:
        outer = l1.name.split("(")[0]
        inner = l1.name[len(outer):].strip("() ")
        for spelling in (l1.name, outer, inner, l1.id):
            if spelling and slug(spelling):
                aliases.setdefault(slug(spelling), l1.id)
    return aliases


@dataclass(frozen=True)
class CatalogIds:
    """Maps the labels files carry to catalog ids; labels the catalog lacks keep their slug."""

    catalog: Catalog
    l1_aliases: Mapping[str, str]

    @classmethod
    def of(cls, catalog: Catalog) -> CatalogIds:
        return cls(catalog, _l1_aliases(catalog))

    def l1(self, value: Any) -> str:
        key = slug(value) if isinstance(value, str) else ""
        return self.l1_aliases.get(key, key) or UNKNOWN

    def pattern(self, l1_id: str, value: Any) -> str:
        key = slug(value) if isinstance(value, str) else ""
        if not key:
            return UNKNOWN
        for l1 in self.catalog.l1s:
            if l1.id == l1_id:
                for p in l1.patterns:
                    if key in (p.id, slug(p.name)):
                        return p.id
        return key

    def level(self, value: Any) -> str:
        return (slug(value) if isinstance(value, str) else "") or UNKNOWN


# --- one line -> one job ----------------------------------------------------------------------

@dataclass(frozen=True)
class ImportItem:
    line_no: int
    job: PlannedJob
    content: str  # the original line, kept as the attempt's content
    model: str | None
    verdict: Verdict
    messages_json: str
    # The (job_id, attempt_id) an export of a ledger gives each line: when this ledger
    # accepted that attempt with the same dialogue, the line is its own export coming back.
    origin: tuple[str, int] | None = None


@dataclass(frozen=True)
class BadLine:
    line_no: int
    reason: str


def _field(obj: Mapping[str, Any], name: str) -> Any:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    for key in _FIELD_KEYS[name]:
        for source in (obj, meta):
            if isinstance(source.get(key), str) and source[key].strip():
                return source[key]
    return None


def import_job_id(turns: Sequence[tuple[str, str]]) -> str:
    """Identity is the dialogue itself, whatever format or labels it came with."""
    canonical = json.dumps([list(t) for t in turns], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(("import\x1f" + canonical).encode("utf-8")).hexdigest()[:32]


def item_from_line(line_no: int, line: str, ids: CatalogIds,
                   config: FilterConfig = FilterConfig()) -> ImportItem:
    """Raises NoDialogue (with the reason) for a line that cannot become a job."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise NoDialogue(f"not JSON ({exc.msg} at column {exc.colno})") from None
    messages = read_messages(obj, line)
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    content, turns = _dialogue_of(messages)
    learner = [t.content for t in turns if t.role == USER]
    if not learner or not any(t.role == ASSISTANT for t in turns):
        raise NoDialogue("a dialogue needs a learner (user) turn and a tutor (assistant) turn")
    erroneous = learner[0]
    correct = learner[-1] if len(learner) > 1 else ""
    verdict = judge(content, "stop", erroneous, correct, config)
    l1 = ids.l1(_field(obj, "l1"))
    extra = {k: (obj[k] if isinstance(obj.get(k), str) else "") for k in ("topic", "persona")}
    job = PlannedJob(
        job_id=import_job_id([(t.role, t.content) for t in turns]), l1=l1,
        pattern=ids.pattern(l1, _field(obj, "error_type")), erroneous=erroneous,
        correct=correct, level=ids.level(_field(obj, "level")), variant=0,
        topic=extra["topic"], persona=extra["persona"], source="import")
    messages_json = json.dumps(to_messages(verdict.turns or turns,
                                           system or TUTOR_SYSTEM_MESSAGE), ensure_ascii=False)
    model = obj.get("model") if isinstance(obj.get("model"), str) else None
    try:
        # JSON escapes can spell unpaired surrogates, which no database column can hold.
        "".join((messages_json, job.l1, job.pattern, job.level, job.topic, job.persona,
                 model or "")).encode("utf-8")
    except UnicodeEncodeError:
        raise NoDialogue("holds text that is not valid Unicode (an unpaired surrogate "
                         "escape)") from None
    origin = (obj["job_id"], obj["attempt_id"]) if isinstance(obj.get("job_id"), str) \
        and type(obj.get("attempt_id")) is int else None
    return ImportItem(line_no, job, line, model, verdict, messages_json, origin)


def _dialogue_of(messages: Sequence[Mapping[str, str]]) -> tuple[str, tuple[Turn, ...]]:
    """The dialogue's turns without the system message, and their JSON as parsed."""
    chat = [{"role": m["role"], "content": m["content"]} for m in messages
            if m["role"] != "system"]
    content = json.dumps(chat, ensure_ascii=False)
    try:
        return content, tuple(parse_dialogue(content))
    except Unparseable as exc:
        raise NoDialogue(f"no dialogue ({exc})") from None


def _exported_here(tx: Tx, items: Sequence[ImportItem]) -> set[str]:
    """Import ids of the items that are this ledger's own accepted dialogues: the line names
    an attempt this ledger accepted for that job, and the ledger's stored dialogue is the
    line's (another ledger planned from the same catalog has the same job ids, not the same
    dialogues)."""
    by_attempt = {i.origin[1]: i for i in items if i.origin is not None}
    ids = list(by_attempt)
    found: set[str] = set()
    chunk = 500  # stay under every driver's bound-parameter limit
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        tx.execute(tx.sql.accepted_messages_in(len(part)), tuple(part))
        for job_id, attempt_id, messages_json in tx.cur.fetchall():
            item = by_attempt[attempt_id]
            if item.origin != (job_id, attempt_id) or not messages_json:
                continue
            try:
                turns = _dialogue_of(json.loads(messages_json))[1]
            except (ValueError, TypeError, KeyError, NoDialogue):
                continue  # not a dialogue the ledger could have exported
            if import_job_id([(t.role, t.content) for t in turns]) == item.job.job_id:
                found.add(item.job.job_id)
    return found


@dataclass(frozen=True)
class ParsedFile:
    path: Path
    sha256: str
    lines_total: int
    items: tuple[ImportItem, ...]
    bad: tuple[BadLine, ...]
    repeats: int  # lines whose dialogue appeared earlier in the same file


def parse_file(path: str | Path, catalog: Catalog,
               config: FilterConfig = FilterConfig()) -> ParsedFile:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{p} not found; pass the path of a JSONL file") from None
    except IsADirectoryError:
        raise UsageError(f"{p} is a directory; pass the path of a JSONL file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {p}: {exc.strerror or exc}") from None
    ids = CatalogIds.of(catalog)
    items: list[ImportItem] = []
    bad: list[BadLine] = []
    seen: set[str] = set()
    repeats = total = 0
    for line_no, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        total += 1
        try:
            text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            item = item_from_line(line_no, text.strip(), ids, config)
        except UnicodeDecodeError as exc:
            bad.append(BadLine(line_no, f"not UTF-8 (bad byte at offset {exc.start})"))
            continue
        except NoDialogue as exc:
            bad.append(BadLine(line_no, str(exc)))
            continue
        if item.job.job_id in seen:
            repeats += 1
            continue
        seen.add(item.job.job_id)
        items.append(item)
    return ParsedFile(p, hashlib.sha256(data).hexdigest(), total, tuple(items), tuple(bad),
                      repeats)


# --- writing ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImportResult:
    parsed: ParsedFile
    imported: tuple[ImportItem, ...]
    already: int  # dialogues the ledger held before this import

    @property
    def accepted(self) -> int:
        return sum(1 for i in self.imported if i.verdict.passed)


def append_import(store: Store, parsed: ParsedFile) -> tuple[ImportItem, ...]:
    """Append the file's new dialogues and its `imports` event in one transaction; returns
    the items that were new. Nothing is written when nothing is new."""
    with store.transaction() as tx:
        now = utc_now()
        own = _exported_here(tx, parsed.items)
        new_ids = {j.job_id for j in append_new_jobs(
            tx, [i.job for i in parsed.items if i.job.job_id not in own], now)}
        fresh = tuple(i for i in parsed.items if i.job.job_id in new_ids)
        if not fresh:
            return ()
        ids = [(tx.allocate_id(), tx.allocate_id()) for _ in fresh]
        tx.append_many(schema.attempts, [
            (a, i.job.job_id, 1, None, IMPORT_MODEL, 0, IMPORT_MODEL, 0, 0.0, now)
            for i, (a, _v) in zip(fresh, ids)])
        tx.append_many(schema.attempt_outcomes, [
            (a, now, None, "ok", None, None, None, None, None, i.model, None, None, None, None,
             0.0, "none", None, "stop", i.content) for i, (a, _v) in zip(fresh, ids)])
        tx.append_many(schema.verdicts, [_verdict_row(v, a, i, now)
                                         for i, (a, v) in zip(fresh, ids)])
        passed = [(i, a, v) for i, (a, v) in zip(fresh, ids) if i.verdict.passed]
        tx.append_many(schema.acceptances, [(i.job.job_id, a, v, now) for i, a, v in passed])
        # No lease: the attempt is finished the moment it is recorded.
        tx.run("job_attempt_started", [(1, None, i.job.job_id) for i in fresh])
        tx.run("job_set_state", [("accepted", i.job.job_id) for i, _a, _v in passed])
        p = parsed
        tx.append(schema.imports, (tx.allocate_id(), str(p.path.resolve()), p.sha256,
                                   p.lines_total, len(fresh), p.lines_total - len(fresh), now))
    return fresh


def _verdict_row(verdict_id: int, attempt_id: int, item: ImportItem, now: str) -> tuple:
    v = item.verdict
    m = dict(v.metrics)
    return (verdict_id, attempt_id, v.filter_version, int(v.passed), json.dumps(list(v.reasons)),
            int(m.get("turns", 0)), int(m.get("tutor_questions", 0)),
            int(bool(m.get("learner_self_corrected", False))),
            json.dumps(m, sort_keys=True, default=str), item.messages_json, now)


def import_file(ledger: Ledger, path: str | Path, catalog: Catalog,
                config: FilterConfig = FilterConfig()) -> ImportResult:
    parsed = parse_file(path, catalog, config)
    if not parsed.items:
        first = (f"; line {parsed.bad[0].line_no}: {parsed.bad[0].reason}" if parsed.bad
                 else "")
        raise UsageError(f"{parsed.path} holds no dialogue{first}; expected JSONL lines with "
                         "messages, conversations or text")
    store = Store(ledger)
    try:
        fresh = append_import(store, parsed)
    finally:
        store.close()
    return ImportResult(parsed, fresh, len(parsed.items) - len(fresh))


def import_text(result: ImportResult, max_bad: int = 20) -> str:
    p = result.parsed
    lines = [f"imported {len(result.imported):,} of {p.lines_total:,} dialogues from {p.path}: "
             f"{result.accepted:,} accepted, {len(result.imported) - result.accepted:,} rejected "
             "by the filter"]
    skipped = [(result.already, "already in the ledger"), (p.repeats, "repeated in the file"),
               (len(p.bad), "unreadable")]
    if any(n for n, _ in skipped):
        lines.append("skipped: " + ", ".join(f"{n:,} {why}" for n, why in skipped if n))
    reasons = Counter(r for i in result.imported for r in i.verdict.reasons)
    if reasons:
        lines.append("rejected by rule: " + ", ".join(f"{r} {n}" for r, n in reasons.most_common())
                     + " (rejected imports stay open: `run` generates a new dialogue for them)")
    outside = sum(1 for i in result.imported if UNKNOWN in (i.job.l1, i.job.pattern, i.job.level))
    if outside:
        lines.append(f"without an l1, error_type or level (stored as '{UNKNOWN}'): {outside:,}")
    for bad in p.bad[:max_bad]:
        lines.append(f"  line {bad.line_no}: {bad.reason}")
    if len(p.bad) > max_bad:
        lines.append(f"  ... and {len(p.bad) - max_bad:,} more unreadable lines")
    return "\n".join(lines)
