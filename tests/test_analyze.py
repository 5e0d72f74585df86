"""`analyze`: balance, coverage, depth, cost and advice, for the ledger and for a JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from ledger.analysis import analysis_json, analysis_text, analyze_jsonl, analyze_ledger
from ledger.catalog import load_catalog
from ledger.errors import UsageError
from test_views import CHEAP, DEAR, build_scenario


@pytest.fixture
def filled(store, ledger):  # type: ignore[no-untyped-def]
    build_scenario(store)
    store.close()
    return ledger


def test_the_ledger_analysis_counts_accepted_dialogues_against_the_plan(filled):
    a = analyze_ledger(filled)
    assert (a.dialogues, a.planned) == (2, 4)
    assert [(c.name, c.count, c.share) for c in a.by_l1] == [("spanish", 2, 1.0),
                                                           ("korean", 0, 0.0)]
    assert a.balance == 0.0
    assert [(c.name, c.count) for c in a.by_level] == [("beginner", 2)]
    assert (a.patterns_covered, a.patterns_total, a.cells_covered, a.cells_total) == (1, 2, 1, 2)
    # the two accepted verdicts: 6 turns / 3 questions and 4 turns / 1 question
    assert (a.avg_turns, a.avg_tutor_questions) == (5.0, 2.0)
    assert [(p.l1, p.planned, p.accepted, p.open, p.failed) for p in a.progress] == [
        ("korean", 2, 0, 1, 1), ("spanish", 2, 2, 0, 0)]


def test_cost_acceptance_and_rejections_by_model_and_rule(filled):
    a = analyze_ledger(filled)
    models = {m.model: m for m in a.models}
    assert models[CHEAP].cost_per_accepted_usd == pytest.approx(0.0022)
    assert models[CHEAP].acceptance_rate == pytest.approx(0.2)
    assert models[DEAR].cost_per_accepted_usd == pytest.approx(0.004)
    assert a.responses_judged == 4
    assert [(r.rule, r.rejections, r.share_of_responses) for r in a.rules] == [
        ("no_question", 2, 0.5), ("explicit_correction", 1, 0.25)]
    assert a.rules[0].cost_usd == pytest.approx(0.0017)
    assert a.orphans_may_be_billed == 1


def test_recommendations_name_the_gap_and_the_command(filled):
    advice = analyze_ledger(filled).recommendations
    assert ("korean has 2 fewer accepted than planned (1 open: run `python cli.py run`; "
            "1 failed: run `python cli.py run --retry-failed`)") in advice
    assert (f"model {DEAR} costs 1.8x as much per accepted dialogue as {CHEAP} "
            "($0.004000 vs $0.002200)") in advice
    assert "rule no_question rejects 50% of responses and cost $0.0017" in advice
    assert "rule explicit_correction rejects 25% of responses and cost $0.0010" in advice
    assert "1 of 2 L1 x pattern cells have no dialogue (50% covered)" in advice
    assert any(line.startswith("L1s are unbalanced: korean has 0%") for line in advice)
    assert any("may have been billed" in line for line in advice)


def test_an_empty_ledger_has_nothing_to_report_but_says_so(ledger):
    a = analyze_ledger(ledger)
    assert (a.dialogues, a.planned, a.avg_turns, a.balance) == (0, 0, None, None)
    text = analysis_text(a)
    # An empty set is not "balanced, covered and complete": the advice says what to do.
    assert "0 dialogues" in text and "nothing to do" not in text
    assert a.recommendations == ("no dialogue to analyze: plan and run first "
                                 "(`python cli.py plan`, then `python cli.py run`)",)


def test_a_file_without_dialogues_says_so(tmp_path):
    empty, junk = tmp_path / "empty.jsonl", tmp_path / "junk.jsonl"
    empty.write_text("")
    junk.write_text('not json\n{"prompt": "hi"}\n')
    assert analyze_jsonl(str(empty)).recommendations == (
        "no dialogue to analyze: the file is empty",)
    assert analyze_jsonl(str(junk)).recommendations == (
        "no dialogue to analyze: 2 line(s) skipped, none with messages or conversations",)


def test_text_and_json_output(filled):
    a = analyze_ledger(filled)
    text = analysis_text(a)
    for expected in ("2 dialogues (4 planned)", "L1 distribution (balance 0.00",
                     "error-type coverage: 1 of 2 patterns (50.0%)",
                     "L1 x error coverage: 1 of 2 cells (50.0%)",
                     "average turn depth: 5.00 turns",
                     "scaffolding questions per dialogue: 2.00", "no_question", "recommendations"):
        assert expected in text
    data = json.loads(analysis_json(a))
    assert data["dialogues"] == 2 and data["balance"] == 0.0
    assert data["by_l1"][0] == {"name": "spanish", "count": 2, "share": 1.0}


def _line(messages: object, key: str = "messages", **meta: str) -> str:
    return json.dumps({key: messages, **meta})


@pytest.fixture
def dialogues_file(tmp_path: Path) -> Path:
    path = tmp_path / "dialogues.jsonl"
    lines = [
        _line([{"role": "system", "content": "You are a tutor."},
               {"role": "user", "content": "I no like coffee."},
               {"role": "assistant", "content": "Do you like it? What word goes before like?"},
               {"role": "user", "content": "I don't like coffee."},
               {"role": "assistant", "content": "Yes! Well done."}],
              l1="Spanish", error_type="negation_error", level="beginner"),
        _line([{"from": "human", "value": "I can swimming."},
               {"from": "gpt", "value": "Can you say it with 'swim'?"},
               {"from": "human", "value": "I can swim."}],
              key="conversations", l1="korean", error_type="gerund_error",
              level="intermediate"),
        "this is not json",
        json.dumps({"text": "no dialogue here"}),
        "",
        _line([{"role": "user", "content": "I no like tea."},
               {"role": "assistant", "content": "Say it again, slowly."},
               {"role": "user", "content": "I don't like tea."}],
              l1="spanish", error_type="negation_error"),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_jsonl_file_outside_any_ledger(dialogues_file):
    catalog = load_catalog()
    a = analyze_jsonl(str(dialogues_file), catalog)
    assert (a.dialogues, a.lines_skipped) == (3, 2)
    assert [(c.name, c.count) for c in a.by_l1] == [("spanish", 2), ("korean", 1)]
    assert a.balance == 0.5
    assert sorted((c.name, c.count) for c in a.by_level) == [
        ("beginner", 1), ("intermediate", 1), ("unknown", 1)]
    # turns: 4 + 3 + 3 non-system turns; questions asked by the tutor: 2 + 1 + 0
    assert a.avg_turns == pytest.approx(10 / 3)
    assert a.avg_tutor_questions == pytest.approx(1.0)
    possible = {(x.id, p.id) for x in catalog.l1s if x.id in ("spanish", "korean")
                for p in x.patterns}
    assert (a.cells_covered, a.cells_total) == (2, len(possible))
    assert a.patterns_total == len({p for _, p in possible})
    assert any("L1s are unbalanced: korean has 33%" in r for r in a.recommendations)
    assert any(f"{len(possible) - 2} of {len(possible)} L1 x pattern cells" in r
               for r in a.recommendations)


def test_a_jsonl_of_unknown_l1s_pairs_every_l1_with_every_pattern_seen(tmp_path):
    path = tmp_path / "other.jsonl"
    turns = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y?"}]
    path.write_text("\n".join(_line(turns, l1=l1, error_type=e) for l1, e in [
        ("klingon", "a"), ("klingon", "b"), ("vulcan", "a")]) + "\n", encoding="utf-8")
    a = analyze_jsonl(str(path), load_catalog())
    assert (a.cells_covered, a.cells_total, a.patterns_covered, a.patterns_total) == (3, 4, 2, 2)


def test_a_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot read"):
        analyze_jsonl(str(tmp_path / "absent.jsonl"))


def test_analyze_through_the_cli(dialogues_file, filled, ledger_path):
    on_file = run_cli("analyze", str(dialogues_file), "--format", "json", timeout=60)
    assert on_file.returncode == 0, on_file.stderr
    assert json.loads(on_file.stdout)["dialogues"] == 3
    on_ledger = run_cli("analyze", "--db", str(ledger_path), timeout=60)
    assert on_ledger.returncode == 0, on_ledger.stderr
    assert "open: run `python cli.py run`" in on_ledger.stdout
    bad = run_cli("analyze", "--format", "yaml", "--db", str(ledger_path), timeout=60)
    assert bad.returncode == 2 and "--format must be text or json" in bad.stderr


def test_unbalance_from_imports_without_an_l1_suggests_no_plan_for_them():
    from ledger.analysis import Analysis, Count, _balance_advice

    a = Analysis(source="ledger", dialogues=10,
                 by_l1=(Count("spanish", 9, 0.9), Count("unknown", 1, 0.1)), by_level=(),
                 patterns_covered=1, patterns_total=1, cells_covered=1, cells_total=1,
                 avg_turns=None, avg_tutor_questions=None)
    (line,) = _balance_advice(a)
    assert "plan --l1" not in line and "imported dialogues that name no L1" in line
