"""`mix`: the Stage-1 training mix of accepted scaffolding dialogues and sampled anchor data."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.build_ledger import build_accepted_ledger
from conftest import run_cli
from ledger.cli_data import merge_repeated_option
from ledger.commands import Commands
from ledger.db import open_ledger
from ledger.errors import UsageError
from ledger.mix import anchors_needed, check_share


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mix") / "ledger.db"
    build_accepted_ledger(path, 50, 40)
    return path


def chat(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]


@pytest.fixture
def anchors(tmp_path: Path) -> tuple[Path, Path]:
    a = tmp_path / "lmsys.jsonl"
    a.write_text("\n".join(json.dumps({"messages": chat(i), "id": i}) for i in range(100)) + "\n")
    b = tmp_path / "magpie.jsonl"
    lines = []
    for i in range(100, 200):
        if i % 2:
            lines.append(json.dumps({"conversations": [
                {"from": "human", "value": chat(i)[0]["content"]},
                {"from": "gpt", "value": chat(i)[1]["content"]}]}))
        else:
            lines.append(json.dumps({"text": f"<|im_start|>system\nBe brief.<|im_end|>\n"
                                             f"<|im_start|>user\n{chat(i)[0]['content']}"
                                             f"<|im_end|>\n<|im_start|>assistant\n"
                                             f"{chat(i)[1]['content']}<|im_end|>"}))
        if i % 25 == 0:
            lines.extend(["{broken", json.dumps({"unrelated": True}), ""])
    b.write_text("\n".join(lines) + "\n")
    return a, b


def mix(db: Path, out: Path, anchors: Any, **options: Any) -> str:
    return Commands(db=str(db)).mix(anchor=anchors, out=str(out), **options)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_the_mix_has_the_requested_share(db: Path, anchors: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    summary = mix(db, out, f"{anchors[0]},{anchors[1]}", scaffold_share=0.25)
    rows = records(out)
    origins = Counter(r["origin"] for r in rows)
    assert origins == {"scaffolding": 40, "anchor": 120}
    assert "40 scaffolding + 120 anchor" in summary and "scaffold share 0.250" in summary
    assert {r["ref"].split(":")[0] for r in rows if r["origin"] == "anchor"} == \
        {"lmsys.jsonl", "magpie.jsonl"}
    assert all(set(r) == {"messages", "origin", "ref"} for r in rows)
    assert all(m["role"] in ("system", "user", "assistant") for r in rows for m in r["messages"])
    # Anchors are sampled without replacement and shuffled in with the scaffolding.
    refs = [r["ref"] for r in rows]
    assert len(set(refs)) == len(refs)
    assert [r["origin"] for r in rows[:40]].count("scaffolding") < 40


def test_anchor_lines_are_converted_to_the_output_format(db: Path, anchors: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    mix(db, out, [str(anchors[1])], scaffold_share=0.3, format="chatml")
    anchor_rows = [r for r in records(out) if r["origin"] == "anchor"]
    assert anchor_rows and all(r["text"].startswith("<|im_start|>") for r in anchor_rows)
    by_ref = {r["ref"]: r["text"] for r in anchor_rows}
    ref = next(k for k in by_ref if int(k.split(":")[1]) == 1)  # first line: a ChatML line
    assert by_ref[ref] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                           "What is 100 + 100?<|im_end|>\n<|im_start|>assistant\n"
                           "100 + 100 = 200.<|im_end|>")
    mix(db, tmp_path / "sg.jsonl", [str(anchors[1])], scaffold_share=0.3, format="sharegpt")
    for r in records(tmp_path / "sg.jsonl"):
        assert {t["from"] for t in r["conversations"]} <= {"system", "human", "gpt"}


def test_the_same_seed_gives_the_same_bytes(db: Path, anchors: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    paths = [tmp_path / f"{n}.jsonl" for n in ("a", "b", "c")]
    for path, seed in zip(paths, (7, 7, 8)):
        mix(db, path, [str(anchors[0]), str(anchors[1])], scaffold_share=0.25, seed=seed)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_unreadable_anchor_lines_are_skipped_and_replaced(db: Path, anchors: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    # magpie.jsonl holds 100 dialogues and 8 unreadable lines; 0.3 needs 93 anchor lines.
    summary = mix(db, out, [str(anchors[1])], scaffold_share=0.3)
    assert Counter(r["origin"] for r in records(out))["anchor"] == anchors_needed(40, 0.3) == 93
    manifest = json.loads((tmp_path / "train.jsonl.manifest.json").read_text())
    skipped = manifest["anchor_lines_skipped"]
    assert 0 < skipped <= 8
    assert f"skipped {skipped} anchor lines" in summary


def test_too_few_anchor_lines_raise_the_share_and_say_so(db: Path, anchors: tuple[Path, Path],
                                                         tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "train.jsonl"
    summary = mix(db, out, [str(anchors[0])], scaffold_share=0.2)  # needs 160, has 100
    assert Counter(r["origin"] for r in records(out)) == {"scaffolding": 40, "anchor": 100}
    assert "scaffold share 0.286" in summary
    assert "only 100 usable lines" in capsys.readouterr().err


def test_manifest_describes_the_mix(db: Path, anchors: tuple[Path, Path],
                                    tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    mix(db, out, [str(anchors[0]), str(anchors[1])], scaffold_share=0.25, seed=3)
    manifest = json.loads((tmp_path / "train.jsonl.manifest.json").read_text())
    assert manifest["count"] == 160 and manifest["seed"] == 3
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["scaffold_share"] == 0.25 and manifest["scaffolding"] == 40
    assert [a["lines"] for a in manifest["anchors"]] == [100, 108]
    assert sum(a["taken"] for a in manifest["anchors"]) == 120
    assert manifest["anchors"][0]["sha256"] == hashlib.sha256(anchors[0].read_bytes()).hexdigest()
    assert manifest["ledger"]["head_seq"] > 0
    assert out.stat().st_mode & 0o777 == 0o600


def test_share_is_validated_and_unusual_shares_warn(db: Path, anchors: tuple[Path, Path],
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    for bad in (0, 1, 1.5, -0.2, "a lot", True):
        with pytest.raises(UsageError, match="--scaffold-share"):
            mix(db, tmp_path / "x.jsonl", [str(anchors[0])], scaffold_share=bad)
    assert check_share(0.25) == (0.25, None)
    mix(db, tmp_path / "x.jsonl", [str(anchors[0])], scaffold_share=0.5)
    assert "outside the recommended 0.2-0.3" in capsys.readouterr().err


def test_bad_inputs_are_usage_errors(db: Path, anchors: tuple[Path, Path],
                                     tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    with pytest.raises(UsageError, match="--anchor"):
        mix(db, out, None)
    with pytest.raises(UsageError, match="not found"):
        mix(db, out, [str(tmp_path / "nope.jsonl")])
    out.write_text("keep me\n")
    with pytest.raises(UsageError, match="--force"):
        mix(db, out, [str(anchors[0])])
    assert out.read_text() == "keep me\n"
    mix(db, out, [str(anchors[0])], force=True)
    assert len(records(out)) == 140
    empty = tmp_path / "empty.db"
    open_ledger(str(empty)).dispose()
    with pytest.raises(UsageError, match="no accepted dialogue"):
        mix(empty, tmp_path / "y.jsonl", [str(anchors[0])])


def test_repeated_anchor_options_merge_into_one() -> None:
    argv = ["mix", "--anchor", "a.jsonl", "--out", "t.jsonl", "--anchor=b.jsonl", "--seed", "1"]
    assert merge_repeated_option(argv, "--anchor") == [
        "mix", "--anchor", "a.jsonl,b.jsonl", "--out", "t.jsonl", "--seed", "1"]
    assert merge_repeated_option(["export", "--out", "x"], "--anchor") == ["export", "--out", "x"]


def test_a_repeated_anchor_flag_never_drops_a_file_silently(db: Path, anchors: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    done = run_cli("--db", str(db), "mix", "--anchor", str(anchors[0]), "--anchor",
                   str(anchors[1]), "--out", str(out), timeout=60)
    if done.returncode == 0:  # the command line merges repeated flags: both files are used
        assert {r["ref"].split(":")[0] for r in records(out) if r["origin"] == "anchor"} == \
            {"lmsys.jsonl", "magpie.jsonl"}
    else:
        assert done.returncode == 2 and "comma-separated" in done.stderr
        assert not out.exists()
