"""`report --html`: one self-contained page; every chart is well-formed SVG carrying the numbers."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import make_jobs, run_cli
from ledger.html_report import html_page, write_html_report
from ledger.errors import UsageError
from ledger.reports import Filters
from test_views import CHEAP, DEAR, attempt, build_scenario, ok, verdict

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def filled(store, ledger):  # type: ignore[no-untyped-def]
    build_scenario(store)
    store.close()
    return ledger


def charts(page: str) -> list[ET.Element]:
    """Every <svg> element of the page, each parsed on its own as XML."""
    found = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    return [ET.fromstring(svg) for svg in found]


def texts(svg: ET.Element) -> list[str]:
    return [t.text or "" for t in svg.iter(f"{SVG}text")]


def test_the_page_has_four_well_formed_charts_with_the_numbers(filled):
    page = html_page(filled)
    heat, cost, acceptance, rejections = charts(page)
    assert {"korean", "spanish", "gerund_error", "negation_error", "2/2", "0/2"} <= set(
        texts(heat))
    shades = [r.get("fill") for r in heat.iter(f"{SVG}rect")]
    assert "#006d2c" in shades and "#f7fcf5" in shades  # fully accepted, nothing accepted
    assert "not planned" in page  # korean x negation_error and spanish x gerund_error
    assert {CHEAP, DEAR, "$0.002200", "$0.004000"} <= set(texts(cost))
    assert {"20.0% (1/5)", "100.0% (1/1)"} <= set(texts(acceptance))
    assert {"no_question", "explicit_correction", "2 ($0.001700)", "1 ($0.001000)"} <= set(
        texts(rejections))
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in \
        page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_bars_are_proportional_to_the_values(filled):
    _heat, cost, acceptance, _rules = charts(html_page(filled))
    widths = {r.find(f"{SVG}title").text.split(":")[0]: float(r.get("width"))
              for r in cost.iter(f"{SVG}rect")}
    assert widths[CHEAP] / widths[DEAR] == pytest.approx(0.0022 / 0.004, rel=1e-2)
    rates = [float(r.get("width")) for r in acceptance.iter(f"{SVG}rect")]
    assert max(rates) / min(rates) == pytest.approx(5.0, rel=1e-2)  # 100% against 20%


def test_names_that_look_like_markup_are_escaped(store, ledger):
    job = make_jobs(1, "spanish", "a<b&c>")[0]
    store.plan_jobs([job])
    store.start_run("r", "h", 1, "p1", "f1", {})
    store.claim("r", 1, time.time(), 600)
    model = 'evil/"model"<&>'
    a = attempt(store, job.job_id, model, 0, run="r")
    store.finish_attempt(a, job.job_id, "r", ok(0.001, model, 10, 10),
                         verdict(False, "no_<question>"))
    store.close()
    svgs = charts(html_page(ledger))
    assert len(svgs) == 4
    assert "a<b&c>" in texts(svgs[0]) and model in texts(svgs[1])
    assert "no_<question>" in texts(svgs[3])


def test_an_empty_ledger_still_makes_a_valid_page(ledger):
    svgs = charts(html_page(ledger))
    assert [texts(s) for s in svgs] == [["no planned jobs"], ["no data"], ["no data"],
                                       ["no data"]]


def test_filters_narrow_the_charts_they_apply_to(filled):
    heat, cost, _acc, _rules = charts(html_page(filled, Filters(l1=("korean",))))
    assert "spanish" not in texts(heat) and "korean" in texts(heat)
    assert DEAR not in texts(cost)  # the dear model served spanish only


def test_the_file_is_written_atomically_and_replaces_the_old_one(filled, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "report.html"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(UsageError, match="exists; pass --force"):
        write_html_report(filled, str(target))
    assert target.read_text(encoding="utf-8") == "old"
    size = write_html_report(filled, str(target), overwrite=True)
    assert target.stat().st_size == size
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.iterdir()] == ["report.html"]  # no temp file left


def test_report_html_through_the_cli(filled, ledger_path, tmp_path):
    target = tmp_path / "out" / "page.html"
    missing = run_cli("report", "--html", str(target), "--db", str(ledger_path), timeout=60)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    target.parent.mkdir()
    done = run_cli("report", "--html", str(target), "--db", str(ledger_path), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {target}")
    assert len(charts(Path(target).read_text(encoding="utf-8"))) == 4
    both = run_cli("report", "costs", "--html", str(target), "--db", str(ledger_path),
                   timeout=60)
    assert both.returncode == 2 and "drop the report name" in both.stderr
    before = target.read_bytes()
    kept = run_cli("report", "--html", str(target), "--db", str(ledger_path), timeout=60)
    assert kept.returncode == 2 and "pass --force" in kept.stderr
    assert target.read_bytes() == before
    replaced = run_cli("report", "--html", str(target), "--force", "--db", str(ledger_path),
                       timeout=60)
    assert replaced.returncode == 0, replaced.stderr
    not_a_dir = run_cli("report", "--html", str(target / "x.html"), "--db", str(ledger_path),
                        timeout=60)
    assert not_a_dir.returncode == 2 and "Traceback" not in not_a_dir.stderr
    assert "does not exist (or is a file)" in not_a_dir.stderr
