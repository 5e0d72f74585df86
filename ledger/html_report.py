"""`report --html`: one self-contained HTML page of the ledger's picture, charts as inline SVG.

The page holds an L1 x pattern coverage heatmap, cost by model, acceptance rate by model and
rejections by rule. Charts are written by hand (no plotting dependency) and every text in them
is XML-escaped, so each <svg> element parses on its own. The file is written atomically: a
temporary file beside the target, renamed over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from html import escape as html_escape
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from sqlalchemy.engine import make_url

from .atomic import check_target, write_bytes_atomic
from .db import Ledger, refuse_ledger_target
from .records import utc_now
from .reports import Filters, Rows, report_spec, run_report

BAR_HEIGHT = 22
LABEL_WIDTH = 260
CHART_WIDTH = 720
CELL_W, CELL_H = 96, 22


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    caption: str


def write_html_report(ledger: Ledger, path: str, filters: Filters = Filters(), *,
                      overwrite: bool = False) -> int:
    """Render the page and write it atomically; returns its size in bytes. An existing file
    is replaced only with `overwrite` (--force), as with exports."""
    target = Path(path)
    check_target(target, overwrite)  # before the page is rendered
    refuse_ledger_target(ledger, target)
    page = html_page(ledger, filters).encode("utf-8")
    write_bytes_atomic(target, page, overwrite=overwrite)
    return len(page)


def html_page(ledger: Ledger, filters: Filters = Filters()) -> str:
    coverage = _report(ledger, "coverage", filters)
    costs = _report(ledger, "costs", filters)
    waste = _report(ledger, "waste", filters)
    model_rows = costs.records()
    rules = [r for r in waste.records() if r["kind"] == "rejected"]
    sections = [
        ("Coverage: accepted / planned, pattern x L1", heatmap(coverage)),
        ("Cost by model (USD)", bar_chart([
            Bar(r["model"], float(r["cost_usd"] or 0.0),
                f"${float(r['cost_usd'] or 0.0):.6f}") for r in model_rows])),
        ("Acceptance rate by model (accepted / attempts)", bar_chart([
            Bar(r["model"], float(r["acceptance_rate"] or 0.0),
                f"{float(r['acceptance_rate'] or 0.0):.1%} ({r['accepted']}/{r['attempts']})")
            for r in model_rows], max_value=1.0)),
        ("Rejections by rule (an answer counts under every rule it failed)", bar_chart([
            Bar(r["reason"], float(r["attempts"]),
                f"{r['attempts']} (${float(r['cost_usd'] or 0.0):.6f})") for r in rules])),
    ]
    narrowed = ", ".join(f"--{f} {_filter_text(filters, f)}" for f in filters.given())
    body = "\n".join(f"<section><h2>{html_escape(title)}</h2>\n{svg}</section>"
                     for title, svg in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>scaffold-ledger report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
h2{{font-size:1.1em;margin-top:2em}} svg{{display:block}} .meta{{color:#666}}</style></head>
<body><h1>scaffold-ledger report</h1>
<p class="meta">{html_escape(_where(ledger))} &#183; {html_escape(utc_now())}
{' &#183; ' + html_escape(narrowed) if narrowed else ''}</p>
{body}
</body></html>
"""


def _where(ledger: Ledger) -> str:
    return make_url(ledger.url).render_as_string(hide_password=True)


def _report(ledger: Ledger, name: str, filters: Filters) -> Rows:
    """The report narrowed by the filters it can take; the page ignores the rest."""
    usable = report_spec(name).filters
    kept = replace(filters, **{f: (None if f == "since" else ()) for f in filters.given()
                               if f not in usable})
    return run_report(ledger, name, kept)


def _filter_text(filters: Filters, name: str) -> str:
    value = getattr(filters, name)
    return value if isinstance(value, str) else ",".join(value)


def bar_chart(bars: Sequence[Bar], max_value: float | None = None) -> str:
    """Horizontal bars, one per row, the caption at the bar's end."""
    if not bars:
        return _empty_svg("no data")
    top = max_value if max_value else max((b.value for b in bars), default=0.0)
    span = CHART_WIDTH - LABEL_WIDTH - 200
    height = BAR_HEIGHT * len(bars) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" '
             f'height="{height}" role="img">']
    for i, bar in enumerate(bars):
        y = 5 + i * BAR_HEIGHT
        width = 0.0 if top <= 0 else max(0.0, bar.value) / top * span
        parts.append(f'<text x="{LABEL_WIDTH - 6}" y="{y + 15}" text-anchor="end" '
                     f'font-size="12">{escape(bar.label)}</text>')
        parts.append(f'<rect x="{LABEL_WIDTH}" y="{y + 3}" width="{width:.1f}" '
                     f'height="{BAR_HEIGHT - 6}" fill="#4a7fb5"><title>{escape(bar.label)}: '
                     f'{escape(bar.caption)}</title></rect>')
        parts.append(f'<text x="{LABEL_WIDTH + width + 6:.1f}" y="{y + 15}" '
                     f'font-size="12">{escape(bar.caption)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def heatmap(coverage: Rows) -> str:
    """Patterns down, L1s across; a cell's shade is its accepted share, unplanned cells blank."""
    rows = coverage.records()
    if not rows:
        return _empty_svg("no planned jobs")
    l1s = sorted({r["l1"] for r in rows})
    patterns = sorted({r["pattern"] for r in rows})
    cells = {(r["l1"], r["pattern"]): r for r in rows}
    left, top = LABEL_WIDTH, 24
    width = left + CELL_W * len(l1s) + 10
    height = top + CELL_H * len(patterns) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'role="img">']
    for j, l1 in enumerate(l1s):
        parts.append(f'<text x="{left + j * CELL_W + CELL_W / 2:.1f}" y="16" '
                     f'text-anchor="middle" font-size="12">{escape(l1)}</text>')
    for i, pattern in enumerate(patterns):
        y = top + i * CELL_H
        parts.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" '
                     f'font-size="12">{escape(pattern)}</text>')
        for j, l1 in enumerate(l1s):
            parts.append(_heat_cell(cells.get((l1, pattern)), left + j * CELL_W, y, l1,
                                    pattern))
    parts.append("</svg>")
    return "\n".join(parts)


def _heat_cell(row: dict | None, x: float, y: float, l1: str, pattern: str) -> str:
    if row is None:
        return (f'<rect x="{x}" y="{y}" width="{CELL_W - 2}" height="{CELL_H - 2}" '
                f'fill="#f3f3f3"><title>{escape(f"{l1} x {pattern}: not planned")}</title></rect>')
    share = float(row["accepted"]) / row["planned"] if row["planned"] else 0.0
    label = f"{row['accepted']}/{row['planned']}"
    tip = f"{l1} x {pattern}: {label} accepted ({share:.0%})"
    ink = "#fff" if share > 0.55 else "#222"
    return (f'<rect x="{x}" y="{y}" width="{CELL_W - 2}" height="{CELL_H - 2}" '
            f'fill={quoteattr(_shade(share))}><title>{escape(tip)}</title></rect>'
            f'<text x="{x + CELL_W / 2 - 1:.1f}" y="{y + 15}" text-anchor="middle" '
            f'font-size="11" fill="{ink}">{escape(label)}</text>')


def _shade(share: float) -> str:
    """White-ish at 0, deep green at 1."""
    share = min(1.0, max(0.0, share))
    start, end = (0xf7, 0xfc, 0xf5), (0x00, 0x6d, 0x2c)
    rgb = (round(a + (b - a) * share) for a, b in zip(start, end))
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _empty_svg(message: str) -> str:
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="300" height="30" role="img">'
            f'<text x="4" y="20" font-size="12">{escape(message)}</text></svg>')
