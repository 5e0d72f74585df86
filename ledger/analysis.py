"""Analysis of a dialogue set: balance, coverage, scaffolding depth, cost, and what to do next.

The same picture for the ledger's accepted dialogues (summed in SQL over the projections and
views, never row by row in Python) and for a JSONL file of dialogues from anywhere (read one
line at a time). Recommendations are plain sentences that name the command to run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sqlalchemy import text

from .db import Ledger
from .importer import UNKNOWN
from .reports import plain, reading_connection

# Thresholds for the advice; the seed's set ran at 4.2 turns and 1.6 questions per dialogue.
BALANCED_RATIO = 0.8        # smallest L1 share / largest L1 share
COST_RATIO_WORTH_SAYING = 1.5
RULE_SHARE_WORTH_SAYING = 0.05
LOW_ACCEPTANCE_RATE = 0.5
MIN_QUESTIONS = 1.0
MIN_TURNS = 3.0


@dataclass(frozen=True)
class Count:
    name: str
    count: int
    share: float  # of all dialogues counted, 0..1


@dataclass(frozen=True)
class L1Progress:
    l1: str
    planned: int
    accepted: int
    open: int
    failed: int


@dataclass(frozen=True)
class ModelFigures:
    model: str
    attempts: int
    accepted: int
    cost_usd: float
    acceptance_rate: float
    cost_per_accepted_usd: float | None


@dataclass(frozen=True)
class RuleFigures:
    rule: str
    rejections: int
    share_of_responses: float
    cost_usd: float


@dataclass(frozen=True)
class Analysis:
    source: str
    dialogues: int
    by_l1: tuple[Count, ...]
    by_level: tuple[Count, ...]
    patterns_covered: int
    patterns_total: int
    cells_covered: int
    cells_total: int
    avg_turns: float | None
    avg_tutor_questions: float | None
    planned: int | None = None
    progress: tuple[L1Progress, ...] = ()
    models: tuple[ModelFigures, ...] = ()
    rules: tuple[RuleFigures, ...] = ()
    responses_judged: int = 0
    orphans_may_be_billed: int = 0
    lines_skipped: int = 0
    recommendations: tuple[str, ...] = field(default=())

    @property
    def balance(self) -> float | None:
        """Smallest L1 count over the largest: 1.0 is perfectly even."""
        counts = [c.count for c in self.by_l1]
        return min(counts) / max(counts) if counts and max(counts) else None


# --- the ledger ------------------------------------------------------------------------------

# Every query below is one pass over an index or a small table; see migrations 0002 and 0003.
_CELL_STATES = text("SELECT l1, pattern, level, state, COUNT(*) FROM job_state "
                    "GROUP BY l1, pattern, level, state")
# Each acceptance's verdict, found by (attempt, verdict) in the narrow ix_verdicts_quality
# while acceptances are read from ix_acceptances_attempt_verdict (migration 0003): two narrow
# indexes walked in attempt order. The unary + keeps SQLite from fetching the verdict by its
# primary key, which would read a million wide verdict rows (each holds its dialogue).
_ACCEPTED_SHAPE = text("SELECT AVG(v.turns), AVG(v.tutor_questions) FROM acceptances acc "
                       "CROSS JOIN verdicts v WHERE v.attempt_id = acc.attempt_id "
                       "AND +v.verdict_id = acc.verdict_id")
_MODELS = text("SELECT model, attempts, accepted, cost_usd, acceptance_rate, "
               "cost_per_accepted_usd FROM v_cost_by_model ORDER BY model")
_RULES = text("SELECT reason, attempts, cost_usd FROM v_waste_by_reason "
              "WHERE kind = 'rejected' ORDER BY attempts DESC, reason")
_JUDGED = text("SELECT COUNT(DISTINCT attempt_id) FROM verdicts")
_ORPHANS = text("SELECT COUNT(*) FROM v_orphaned_attempts WHERE run_stopped = 1")


def analyze_ledger(ledger: Ledger) -> Analysis:
    """The ledger's accepted dialogues against its plan, with cost and quality by model."""
    with reading_connection(ledger) as conn:
        cells = [(r[0], r[1], r[2], r[3], int(r[4])) for r in conn.execute(_CELL_STATES)]
        avg_turns, avg_questions = (plain(v) for v in conn.execute(_ACCEPTED_SHAPE).one())
        models = tuple(ModelFigures(r[0], int(r[1]), int(r[2]), float(plain(r[3]) or 0.0),
                                    float(plain(r[4]) or 0.0),
                                    None if r[5] is None else float(plain(r[5])))
                       for r in conn.execute(_MODELS))
        judged = int(conn.execute(_JUDGED).scalar() or 0)
        rules = tuple(RuleFigures(r[0], int(r[1]), int(r[1]) / judged if judged else 0.0,
                                  float(plain(r[2]) or 0.0)) for r in conn.execute(_RULES))
        orphans = int(conn.execute(_ORPHANS).scalar() or 0)
    accepted = [(l1, pattern, level, n) for l1, pattern, level, state, n in cells
                if state == "accepted"]
    total = sum(n for *_, n in accepted)
    planned_cells = {(c[0], c[1]) for c in cells}
    result = Analysis(
        source=ledger.url, dialogues=total,
        by_l1=_counts(Counter(_sum_by(accepted, 0)), total,
                      every=sorted({c[0] for c in cells})),
        by_level=_counts(Counter(_sum_by(accepted, 2)), total),
        patterns_covered=len({a[1] for a in accepted}),
        patterns_total=len({c[1] for c in cells}),
        cells_covered=len({(a[0], a[1]) for a in accepted}), cells_total=len(planned_cells),
        avg_turns=None if avg_turns is None else float(avg_turns),
        avg_tutor_questions=None if avg_questions is None else float(avg_questions),
        planned=sum(c[4] for c in cells), progress=_progress(cells), models=models,
        rules=rules, responses_judged=judged, orphans_may_be_billed=orphans)
    return _with_advice(result)


def _sum_by(rows: Iterable[tuple[str, str, str, int]], index: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row[index]] = out.get(row[index], 0) + row[3]
    return out


def _counts(counter: Counter[str], total: int, every: Iterable[str] = ()) -> tuple[Count, ...]:
    for name in every:
        counter.setdefault(name, 0)
    return tuple(Count(name, n, n / total if total else 0.0)
                 for name, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _progress(cells: list[tuple[str, str, str, str, int]]) -> tuple[L1Progress, ...]:
    by_l1: dict[str, Counter[str]] = {}
    for l1, _pattern, _level, state, n in cells:
        by_l1.setdefault(l1, Counter())[state] += n
    return tuple(L1Progress(l1, sum(c.values()), c["accepted"], c["open"], c["failed"])
                 for l1, c in sorted(by_l1.items()))


# --- a JSONL file ----------------------------------------------------------------------------

def analyze_jsonl(path: str, catalog: Any = None) -> Analysis:
    """Dialogues from a JSONL file (`messages` or `conversations` per line); coverage is
    measured against the catalog's patterns for the L1s the file has, where it knows them."""
    from .jsonl_stats import read_jsonl_stats

    stats = read_jsonl_stats(path, catalog)
    total = stats.dialogues
    result = Analysis(
        source=path, dialogues=total, by_l1=_counts(stats.l1s, total),
        by_level=_counts(stats.levels, total),
        patterns_covered=stats.patterns_covered, patterns_total=stats.patterns_total,
        cells_covered=stats.cells_covered, cells_total=stats.cells_total,
        avg_turns=stats.turns / total if total else None,
        avg_tutor_questions=stats.questions / total if total else None,
        lines_skipped=stats.skipped)
    return _with_advice(result)


# --- advice ----------------------------------------------------------------------------------

def _with_advice(a: Analysis) -> Analysis:
    advice = [*_progress_advice(a), *_balance_advice(a), *_coverage_advice(a),
              *_depth_advice(a), *_model_advice(a), *_rule_advice(a)]
    if a.orphans_may_be_billed:
        advice.append(f"{a.orphans_may_be_billed} attempt(s) have no outcome and may have been "
                      "billed: see `python cli.py report orphans`")
    if not advice and not a.dialogues:
        # Nothing measured is not "balanced, covered and complete".
        advice.append("no dialogue to analyze: " + (
            "plan and run first (`python cli.py plan`, then `python cli.py run`)"
            if a.planned is not None else
            f"{a.lines_skipped} line(s) skipped, none with messages or conversations"
            if a.lines_skipped else "the file is empty"))
    elif not advice:
        advice.append("nothing to do: the set is balanced, covered and complete")
    return replace(a, recommendations=tuple(advice))


def _progress_advice(a: Analysis) -> list[str]:
    out = []
    for p in a.progress:
        short = p.planned - p.accepted
        if short <= 0:
            continue
        line = f"{p.l1} has {short} fewer accepted than planned"
        steps = []
        if p.open:
            # `run` takes exactly the open jobs; a `complete --target` from the ledger's job
            # count would plan more wherever imports sit outside the plan's cells.
            steps.append(f"{p.open} open: run `python cli.py run`")
        if p.failed:
            steps.append(f"{p.failed} failed: run `python cli.py run --retry-failed`")
        out.append(f"{line} ({'; '.join(steps)})" if steps else line)
    return out


def _balance_advice(a: Analysis) -> list[str]:
    ratio = a.balance
    if ratio is None or ratio >= BALANCED_RATIO or len(a.by_l1) < 2:
        return []
    most, least = a.by_l1[0], a.by_l1[-1]
    line = (f"L1s are unbalanced: {least.name} has {least.share:.0%} of the dialogues, "
            f"{most.name} {most.share:.0%}")
    if least.name == UNKNOWN:  # imported without an L1: nothing a plan could add to
        return [f"{line}; '{UNKNOWN}' holds imported dialogues that name no L1"]
    return [f"{line}; plan and run more {least.name} jobs "
            f"(`python cli.py plan --l1 {least.name} --target N`, then `python cli.py run`)"]


def _coverage_advice(a: Analysis) -> list[str]:
    missing = a.cells_total - a.cells_covered
    if missing <= 0:
        return []
    return [f"{missing} of {a.cells_total} L1 x pattern cells have no dialogue "
            f"({a.cells_covered / a.cells_total:.0%} covered)"]


def _depth_advice(a: Analysis) -> list[str]:
    out = []
    if a.avg_tutor_questions is not None and a.avg_tutor_questions < MIN_QUESTIONS:
        out.append(f"tutors ask {a.avg_tutor_questions:.2f} questions per dialogue: fewer than "
                   "one guiding question is correction, not scaffolding")
    if a.avg_turns is not None and a.avg_turns < MIN_TURNS:
        out.append(f"dialogues average {a.avg_turns:.2f} turns: too short for the learner to "
                   "find the fix")
    return out


def _model_advice(a: Analysis) -> list[str]:
    out = []
    priced = sorted((m for m in a.models if m.cost_per_accepted_usd), key=lambda m: (
        m.cost_per_accepted_usd, m.model))
    if len(priced) >= 2:
        cheap, dear = priced[0], priced[-1]
        ratio = dear.cost_per_accepted_usd / cheap.cost_per_accepted_usd  # type: ignore[operator]
        if ratio >= COST_RATIO_WORTH_SAYING:
            out.append(f"model {dear.model} costs {ratio:.1f}x as much per accepted dialogue "
                       f"as {cheap.model} (${dear.cost_per_accepted_usd:.6f} vs "
                       f"${cheap.cost_per_accepted_usd:.6f})")
    for m in a.models:
        if m.attempts >= 10 and m.acceptance_rate < LOW_ACCEPTANCE_RATE:
            out.append(f"model {m.model}: {m.acceptance_rate:.0%} of its {m.attempts} attempts "
                       "were accepted")
    return out


def _rule_advice(a: Analysis) -> list[str]:
    return [f"rule {r.rule} rejects {r.share_of_responses:.0%} of responses and cost "
            f"${r.cost_usd:.4f}" for r in a.rules
            if r.share_of_responses >= RULE_SHARE_WORTH_SAYING]


# --- output ----------------------------------------------------------------------------------

def analysis_json(a: Analysis) -> str:
    data = asdict(a)
    data["balance"] = a.balance
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def analysis_text(a: Analysis) -> str:
    from .render import table

    planned = f" ({a.planned:,} planned)" if a.planned is not None else ""
    skipped = f"; {a.lines_skipped} line(s) skipped" if a.lines_skipped else ""
    out = [f"analysis of {a.source}: {a.dialogues:,} dialogues{planned}{skipped}", ""]
    balance = "n/a" if a.balance is None else f"{a.balance:.2f}"
    out += [f"L1 distribution (balance {balance}: smallest L1 / largest)",
            table([[c.name, c.count, f"{c.share:.1%}"] for c in a.by_l1],
                  ["L1", "dialogues", "share"]), "",
            "proficiency levels",
            table([[c.name, c.count, f"{c.share:.1%}"] for c in a.by_level],
                  ["level", "dialogues", "share"]), ""]
    out.append(f"error-type coverage: {a.patterns_covered} of {a.patterns_total} patterns "
               f"({_pct(a.patterns_covered, a.patterns_total)})")
    out.append(f"L1 x error coverage: {a.cells_covered} of {a.cells_total} cells "
               f"({_pct(a.cells_covered, a.cells_total)})")
    out.append(f"average turn depth: {_num(a.avg_turns)} turns")
    out.append(f"scaffolding questions per dialogue: {_num(a.avg_tutor_questions)}")
    if a.models:
        out += ["", "cost and acceptance by model", table(
            [[m.model, m.attempts, m.accepted, f"{m.acceptance_rate:.1%}", f"{m.cost_usd:.6f}",
              "" if m.cost_per_accepted_usd is None else f"{m.cost_per_accepted_usd:.6f}"]
             for m in a.models],
            ["model", "attempts", "accepted", "acceptance", "cost USD", "USD per accepted"])]
    if a.rules:
        out += ["", f"rejections by rule (of {a.responses_judged:,} responses judged)", table(
            [[r.rule, r.rejections, f"{r.share_of_responses:.1%}", f"{r.cost_usd:.6f}"]
             for r in a.rules], ["rule", "rejected", "of responses", "cost USD"])]
    out += ["", "recommendations"] + [f"  - {line}" for line in a.recommendations]
    return "\n".join(out)


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
