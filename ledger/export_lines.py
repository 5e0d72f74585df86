"""How one accepted row becomes one JSONL line, in each export format.

Lines are spelled out in sorted key order: the same bytes json.dumps(..., sort_keys=True,
separators=(",", ":"), ensure_ascii=False) would give, at a fraction of the per-row cost. The
messages format copies the stored messages JSON verbatim: it is the ledger's own record of the
dialogue, so re-encoding it could only make the export drift from it. Rows are those of
export.accepted_rows: job_id, attempt_id, l1, pattern, level, model, prompt_version,
filter_version, source, messages_json.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from .errors import LedgerError

SHAREGPT_ROLES: Mapping[str, str] = {"system": "system", "user": "human", "assistant": "gpt"}

# One encoder built once: json.dumps with options builds a new encoder on every call.
encode_line = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                               check_circular=False).encode
_decoder = json.JSONDecoder()
_decode = _decoder.decode
_scan = _decoder.scan_once
json_string = encode_basestring  # a str as its JSON string literal, non-ASCII kept
_enc = json_string  # the short name the line templates below use


def row_messages(row: Sequence[Any]) -> list[dict[str, str]]:
    return _decode(_stored_messages(row))


def row_meta(row: Sequence[Any]) -> dict[str, Any]:
    return {"job_id": row[0], "attempt_id": row[1], "l1": row[2], "error_type": row[3],
            "level": row[4], "model": row[5], "prompt_version": row[6],
            "filter_version": row[7], "source": row[8]}


def chatml_text(messages: Sequence[Mapping[str, str]]) -> str:
    return "\n".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>" for m in messages)


def sharegpt_turns(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    return [{"from": SHAREGPT_ROLES.get(m["role"], m["role"]), "value": m["content"]}
            for m in messages]


def shaped(fmt: str, messages: list[dict[str, str]], meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` with the dialogue added under the format's field (meta is extended in place)."""
    if fmt == "messages":
        meta["messages"] = messages
    elif fmt == "sharegpt":
        meta["conversations"] = sharegpt_turns(messages)
    else:
        meta["text"] = chatml_text(messages)
    return meta


# Per role, the start of its sharegpt turn up to the content's encoding.
_SHAREGPT_TURN = {role: '{"from":%s,"value":' % _enc(name) for role, name in
                  SHAREGPT_ROLES.items()}


class Encoded(dict[str, str]):
    """JSON string literals of the few distinct ids and versions, each encoded once."""

    def __missing__(self, key: str) -> str:
        value = self[key] = _enc(key)
        return value


def checked_messages(raw: str | None, job_id: str, attempt_id: int) -> str:
    if not raw or raw[0] != "[":
        raise LedgerError(f"accepted attempt {attempt_id} of job {job_id} has no stored "
                          "messages: the ledger is inconsistent; restore it from a backup")
    return raw


def _stored_messages(row: Sequence[Any]) -> str:
    return checked_messages(row[9], row[0], row[1])


def messages_of(raw: str) -> list[dict[str, str]]:
    # The C scanner alone: JSONDecoder.decode adds a Python call and two regex matches a row.
    messages, end = _scan(raw, 0)
    if end != len(raw):
        return _decode(raw)  # trailing text: let the decoder raise (or skip whitespace)
    return messages  # type: ignore[no-any-return]


def sharegpt_json(messages: Sequence[Mapping[str, str]]) -> str:
    turn = _SHAREGPT_TURN
    return "[" + ",".join([
        (turn.get(m["role"]) or '{"from":%s,"value":' % _enc(m["role"])) + _enc(m["content"]) + "}"
        for m in messages]) + "]"


def chatml_json(messages: Sequence[Mapping[str, str]]) -> str:
    return _enc("\n".join([f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>"
                           for m in messages]))


def format_lines(fmt: str, rows: Iterable[Sequence[Any]], enc: Encoded) -> list[str]:
    """The JSONL lines (without newlines) of a batch of accepted rows. f-strings, not %
    templates: they build a line in about half the time."""
    if fmt == "messages":
        return [f'{{"attempt_id":{a:d},"error_type":{enc[p]},"filter_version":{enc[fv]},'
                f'"job_id":{_enc(j)},"l1":{enc[l1]},"level":{enc[lv]},'
                f'"messages":{checked_messages(m, j, a)},"model":{enc[mo]},'
                f'"prompt_version":{enc[pv]},"source":{enc[src]}}}'
                for j, a, l1, p, lv, mo, pv, fv, src, m in rows]
    if fmt == "sharegpt":
        return [f'{{"attempt_id":{a:d},'
                f'"conversations":{sharegpt_json(messages_of(checked_messages(m, j, a)))},'
                f'"error_type":{enc[p]},"filter_version":{enc[fv]},"job_id":{_enc(j)},'
                f'"l1":{enc[l1]},"level":{enc[lv]},"model":{enc[mo]},'
                f'"prompt_version":{enc[pv]},"source":{enc[src]}}}'
                for j, a, l1, p, lv, mo, pv, fv, src, m in rows]
    return [f'{{"attempt_id":{a:d},"error_type":{enc[p]},"filter_version":{enc[fv]},'
            f'"job_id":{_enc(j)},"l1":{enc[l1]},"level":{enc[lv]},"model":{enc[mo]},'
            f'"prompt_version":{enc[pv]},"source":{enc[src]},'
            f'"text":{chatml_json(messages_of(checked_messages(m, j, a)))}}}'
            for j, a, l1, p, lv, mo, pv, fv, src, m in rows]


def export_line(fmt: str, row: Sequence[Any]) -> str:
    """One accepted row as one JSONL line (without the newline)."""
    return format_lines(fmt, [row[:10]], Encoded())[0]
