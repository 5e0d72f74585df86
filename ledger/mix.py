"""The Stage-1 training mix: every accepted scaffolding dialogue plus sampled anchor data.

Anchor files (general chat data in messages / ShareGPT / ChatML shape) are sampled without
replacement so scaffolding makes up the requested share of the mix (20-30% is the recommended
range); the lines are converted to one output format, shuffled, and written atomically with a
manifest. The same ledger, anchor files and --seed always give the same file. Anchor files are
indexed by line offset and only the sampled lines are parsed, so a 200 MB anchor set costs one
read, not 200 MB of parsed JSON in memory.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import __version__
from .atomic import atomic_write, check_target
from .db import Ledger, refuse_ledger_target
from .errors import UsageError
from .export import accepted_rows, check_format, ledger_display, manifest_path_for, write_manifest
from .export_lines import encode_line, row_messages, shaped
from .importer import NoDialogue, read_messages
from .records import utc_now

RECOMMENDED_SHARE = (0.2, 0.3)


@dataclass(frozen=True)
class AnchorIndex:
    """Where each non-blank line of one anchor file starts."""

    path: Path
    sha256: str
    offsets: array
    line_numbers: array

    @property
    def lines(self) -> int:
        return len(self.offsets)


def index_anchor(path: Path) -> AnchorIndex:
    offsets, numbers = array("q"), array("q")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            position = 0
            for number, line in enumerate(fh, 1):
                digest.update(line)
                if line.strip():
                    offsets.append(position)
                    numbers.append(number)
                position += len(line)
    except FileNotFoundError:
        raise UsageError(f"anchor file {path} not found") from None
    except IsADirectoryError:
        raise UsageError(f"anchor file {path} is a directory; pass a JSONL file") from None
    return AnchorIndex(path, digest.hexdigest(), offsets, numbers)


def check_share(share: Any) -> tuple[float, str | None]:
    """The share as a float and a warning when it is outside the recommended range."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise UsageError(f"--scaffold-share must be a number between 0 and 1 (exclusive), "
                         f"e.g. 0.25; got {share!r}")
    lo, hi = RECOMMENDED_SHARE
    warning = None
    if not lo <= share <= hi:
        warning = (f"--scaffold-share {share:g} is outside the recommended {lo:g}-{hi:g} "
                   "(70-80% anchor data)")
    return float(share), warning


def anchors_needed(n_scaffold: int, share: float) -> int:
    """Anchor lines that make n_scaffold the given share of the whole."""
    return round(n_scaffold * (1 - share) / share)


@dataclass(frozen=True)
class MixResult:
    path: Path
    manifest_path: Path
    format: str
    scaffold: int
    anchor_counts: tuple[tuple[str, int], ...]  # (anchor file, lines taken)
    requested_share: float
    bytes: int
    sha256: str
    bad_anchor_lines: int
    warnings: tuple[str, ...]

    @property
    def anchors(self) -> int:
        return sum(n for _f, n in self.anchor_counts)

    @property
    def total(self) -> int:
        return self.scaffold + self.anchors

    @property
    def actual_share(self) -> float:
        return self.scaffold / self.total if self.total else 0.0


def _scaffold_lines(ledger: Ledger, fmt: str) -> tuple[list[str], dict[str, Any]]:
    lines: list[str] = []
    filter_versions: set[str] = set()
    with accepted_rows(ledger) as (position, batches):
        for rows in batches:
            for r in rows:
                meta = {"origin": "scaffolding", "ref": f"job {r[0]} attempt {r[1]}"}
                lines.append(encode_line(shaped(fmt, row_messages(r), meta)))
                filter_versions.add(r[7])
    source = {"database": ledger_display(ledger), "head_seq": position.head_seq,
              "head_hash": position.head_hash, "filter_versions": sorted(filter_versions)}
    return lines, source


def _read_line(handle: BinaryIO, offset: int) -> bytes:
    handle.seek(offset)
    return handle.readline()


def _sample_anchors(indexes: Sequence[AnchorIndex], needed: int, fmt: str,
                    rng: random.Random) -> tuple[list[str], list[int], int]:
    """`needed` usable anchor lines in a seeded random order, skipping lines that hold no
    dialogue; returns the lines, how many came from each file, and how many were skipped."""
    starts = [0]
    for ix in indexes:
        starts.append(starts[-1] + ix.lines)
    order = list(range(starts[-1]))
    rng.shuffle(order)
    taken, per_file, bad = [], [0] * len(indexes), 0
    handles = [ix.path.open("rb") for ix in indexes]
    try:
        for global_index in order:
            if len(taken) >= needed:
                break
            f = bisect.bisect_right(starts, global_index) - 1
            local = global_index - starts[f]
            raw = _read_line(handles[f], indexes[f].offsets[local])
            try:
                text = raw.decode("utf-8-sig").strip()
                messages = read_messages(json.loads(text), text)
            except (UnicodeDecodeError, json.JSONDecodeError, NoDialogue):
                bad += 1
                continue
            ref = f"{indexes[f].path.name}:{indexes[f].line_numbers[local]}"
            taken.append(encode_line(shaped(fmt, messages, {"origin": "anchor", "ref": ref})))
            per_file[f] += 1
    finally:
        for h in handles:
            h.close()
    return taken, per_file, bad


def mix_dataset(ledger: Ledger, anchors: Sequence[str | Path], share: float, out: str | Path,
                seed: int = 0, fmt: str = "messages", force: bool = False) -> MixResult:
    check_format(fmt)
    share, warning = check_share(share)
    if not anchors:
        raise UsageError("pass at least one --anchor FILE.jsonl of general chat data")
    path = Path(out)
    check_target(path, force)
    refuse_ledger_target(ledger, path)
    warnings = [warning] if warning else []
    scaffold, source = _scaffold_lines(ledger, fmt)
    if not scaffold:
        raise UsageError("the ledger has no accepted dialogue to mix; run `python cli.py run` "
                         "(or `import`) first")
    indexes = [index_anchor(Path(a)) for a in anchors]
    needed = anchors_needed(len(scaffold), share)
    rng = random.Random(seed)
    anchor_lines, per_file, bad = _sample_anchors(indexes, needed, fmt, rng)
    if len(anchor_lines) < needed:
        actual = len(scaffold) / (len(scaffold) + len(anchor_lines))
        warnings.append(f"the anchor files hold only {len(anchor_lines):,} usable lines of the "
                        f"{needed:,} needed: the scaffold share is {actual:.3f}, not {share:g}")
    lines = scaffold + anchor_lines
    rng.shuffle(lines)
    with atomic_write(path, overwrite=force) as sink:
        for start in range(0, len(lines), 2000):
            sink.write(("\n".join(lines[start:start + 2000]) + "\n").encode("utf-8"))
    result = MixResult(
        path=path, manifest_path=manifest_path_for(path), format=fmt, scaffold=len(scaffold),
        anchor_counts=tuple((ix.path.name, n) for ix, n in zip(indexes, per_file)),
        requested_share=share, bytes=sink.bytes_written, sha256=sink.sha256,
        bad_anchor_lines=bad, warnings=tuple(warnings))
    manifest = {
        "file": path.name, "format": fmt, "count": result.total, "bytes": result.bytes,
        "sha256": result.sha256, "seed": seed, "scaffold_share_requested": share,
        "scaffold_share": round(result.actual_share, 6), "scaffolding": result.scaffold,
        "anchors": [{"path": str(ix.path), "sha256": ix.sha256, "lines": ix.lines, "taken": n}
                    for ix, n in zip(indexes, per_file)],
        "anchor_lines_skipped": bad, "ledger": source, "created_at_utc": utc_now(),
        "tool": "scaffold-ledger", "tool_version": __version__,
    }
    write_manifest(path, manifest)
    return result


def mix_text(result: MixResult) -> str:
    per_file = ", ".join(f"{name} {n:,}" for name, n in result.anchor_counts)
    lines = [f"mixed {result.total:,} lines ({result.format}) into {result.path}: "
             f"{result.scaffold:,} scaffolding + {result.anchors:,} anchor ({per_file})",
             f"scaffold share {result.actual_share:.3f} (asked {result.requested_share:g}); "
             f"{result.bytes:,} bytes, sha256 {result.sha256[:16]}",
             f"manifest: {result.manifest_path}"]
    if result.bad_anchor_lines:
        lines.append(f"skipped {result.bad_anchor_lines:,} anchor lines that hold no dialogue")
    return "\n".join(lines)
