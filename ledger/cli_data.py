"""The data commands behind `python cli.py`: export, import, mix and complete.

A mixin for `Commands`: each method checks its options, calls the library, and returns the text
to print (or prints as it goes and leaves with the run's exit code).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import check_target
from .errors import UsageError

# The helpers of .commands are imported inside each method: commands.py imports this module to
# build `Commands`, so a top-level import here would be circular.


def _required_path(value: Any, option: str, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{option} takes a file path, e.g. {option} {example}")
    return value


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def merge_repeated_option(argv: Sequence[str], option: str) -> list[str]:
    """argv with every `OPTION VALUE` (or `OPTION=VALUE`) merged into one comma-separated
    OPTION, since fire keeps only the last of a repeated flag: `--anchor a --anchor b` becomes
    `--anchor a,b`."""
    values: list[str] = []
    out: list[str] = []
    first_at = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == option and i + 1 < len(argv):
            values.append(argv[i + 1])
            i += 2
        elif arg.startswith(option + "="):
            values.append(arg[len(option) + 1:])
            i += 1
        else:
            out.append(arg)
            i += 1
            continue
        if first_at is None:
            first_at = len(out)
    if first_at is None:
        return list(argv)
    return out[:first_at] + [option, ",".join(values)] + out[first_at:]


def _check_not_dropped(values: Sequence[str], option: str) -> None:
    """Refuse when a flag was repeated on the command line but fire kept only the last one:
    silently mixing without some anchor files would be worse than stopping."""
    given = [a for a in sys.argv[1:] if a == option or a.startswith(option + "=")]
    if len(given) > len(values):
        raise UsageError(f"{option} was given {len(given)} times but only the last would count; "
                         f"pass the files comma-separated: {option} a.jsonl,b.jsonl")


class DataCommands:
    """Mixin: training exports, importing existing dialogues, the training mix, completion."""

    def export(self, out: str | None = None, format: str = "messages",  # noqa: A002
               l1: Any = None, pattern: Any = None, level: Any = None, model: Any = None,
               force: bool = False) -> str:
        """Write the accepted dialogues to --out FILE.jsonl for training, with a manifest.

        --format messages (default; TRL / Hugging Face chat), sharegpt or chatml. --l1,
        --pattern, --level, --model (comma-separated) narrow it. The same ledger always gives
        the same bytes; the file is replaced atomically and only with --force. The manifest
        (FILE.manifest.json) records count, SHA-256, filters and the ledger position.
        """
        from .commands import names, require_known_filters
        from .export import ExportFilters, check_format, export_dialogues, export_text
        from .importer import CatalogIds

        path = Path(_required_path(out, "--out", "scaffolding.jsonl"))
        fmt = check_format(format)
        check_target(path, bool(force))  # before opening the ledger: fail fast
        ids = CatalogIds.of(self._catalog())  # type: ignore[attr-defined]
        chosen_l1 = names(l1, "--l1")
        filters = ExportFilters.from_names(
            l1s=[ids.l1(x) for x in chosen_l1] if chosen_l1 else None,
            patterns=names(pattern, "--pattern"), levels=names(level, "--level"),
            models=names(model, "--model"))
        ledger = self._open(readonly=True)  # type: ignore[attr-defined]
        try:
            require_known_filters(ledger, l1=filters.l1s, pattern=filters.patterns,
                                  level=filters.levels, model=filters.models)
            result = export_dialogues(ledger, path, fmt, filters, force=bool(force))
        finally:
            ledger.dispose()
        return export_text(result)

    def _import_jsonl(self, file: str | None = None) -> str:
        """Import existing dialogues from FILE.jsonl as accepted jobs (source 'import').

        Lines hold `messages`, `conversations` (ShareGPT) or ChatML `text`, with optional l1,
        error_type and level. Each dialogue is judged by the current filter and accepted when
        it passes. Importing twice adds nothing; unreadable lines are listed and skipped; the
        file is imported in one transaction, whole or not at all.
        """
        from .importer import import_file, import_text

        if not isinstance(file, str) or not file.strip():
            raise UsageError("name the JSONL file to import, e.g. "
                             "`python cli.py import scaffolding_combined.jsonl`")
        path = file
        catalog = self._catalog()  # type: ignore[attr-defined]
        ledger = self._open()  # type: ignore[attr-defined]
        try:
            result = import_file(ledger, path, catalog)
        finally:
            ledger.dispose()
        return import_text(result)

    def mix(self, anchor: Any = None, scaffold_share: float = 0.25, out: str | None = None,
            seed: int = 0, format: str = "messages", force: bool = False) -> str:  # noqa: A002
        """Build the Stage-1 training mix: all accepted dialogues plus sampled anchor data.

        --anchor A.jsonl,B.jsonl (general chat data: messages, ShareGPT or ChatML lines);
        --scaffold-share 0.25 is the scaffolding fraction (0-1, 0.2-0.3 recommended);
        --out train.jsonl; --seed N makes the sample and shuffle repeatable; --format as for
        export; --force replaces an existing file. Writes a manifest beside it.
        """
        from .commands import integer, names
        from .mix import mix_dataset, mix_text

        anchors = names(anchor, "--anchor")
        if not anchors:
            raise UsageError("--anchor takes one or more JSONL files, e.g. "
                             "--anchor lmsys.jsonl,magpie.jsonl")
        _check_not_dropped(anchors, "--anchor")
        path = _required_path(out, "--out", "train.jsonl")
        ledger = self._open(readonly=True)  # type: ignore[attr-defined]
        try:
            result = mix_dataset(ledger, anchors, scaffold_share, path,
                                 seed=integer(seed, "--seed"), fmt=format, force=bool(force))
        finally:
            ledger.dispose()
        _warn(result.warnings)
        return mix_text(result)

    def complete(self, target: int = 1000, out: str = "scaffolding_1000_final.jsonl",
                 format: str = "messages", models: Any = None,  # noqa: A002
                 concurrency: int | None = None, budget_usd: float | None = None,
                 base_url: str | None = None, quiet: bool = False,
                 config: str | None = None) -> None:
        """Plan to --target jobs, run them, export the accepted dialogues, print the analysis.

        One command for the whole remainder: plan (idempotent), run (resumable; same options
        and exit codes as `run`), then export to --out (replacing it) and analyse. On a halt
        (out of credit, budget, key, Ctrl-C) it prints the run summary, exports nothing and
        exits with the run's code: run the same command again to resume.
        """
        from .commands import Exit, integer, names
        from .db import refuse_ledger_target
        from .export import check_format, export_dialogues, export_text
        from .launch import run
        from .planner import plan_ledger
        from .render import plan_text
        from .runconfig import build_run_config

        target = integer(target, "--target")
        fmt = check_format(format)
        path = Path(_required_path(out, "--out", "scaffolding_1000_final.jsonl"))
        check_target(path, overwrite=True)
        catalog = self._catalog()  # type: ignore[attr-defined]
        cfg, file_base_url = build_run_config(
            config_path=config, models=names(models, "--models"), concurrency=concurrency,
            budget_usd=budget_usd)
        ledger = self._open()  # type: ignore[attr-defined]
        try:
            refuse_ledger_target(ledger, path)  # before any spend, not after the run
            plan = plan_ledger(ledger, catalog, target)
            print(plan_text(plan, dry_run=False), flush=True)
            launch = run(ledger, cfg, base_url=base_url or file_base_url, quiet=bool(quiet))
        finally:
            ledger.dispose()
        print(launch.summary, flush=True)
        if launch.result.exit_code:
            print(f"error: {launch.result.message}", file=sys.stderr)
            print(f"not exported: run `python cli.py complete --target {target}` again to "
                  "resume", file=sys.stderr)
            raise Exit(launch.result.exit_code)
        reader = self._open(readonly=True)  # type: ignore[attr-defined]
        try:
            result = export_dialogues(reader, path, fmt, force=True)
        finally:
            reader.dispose()
        print(export_text(result), flush=True)
        if result.count < target:
            print(f"note: {result.count:,} of {target:,} accepted; failed jobs are retried "
                  "with `python cli.py run --retry-failed`", flush=True)
        self._print_analysis()

    def _print_analysis(self) -> None:
        analyze = getattr(self, "analyze", None)
        if analyze is None:
            print("analysis: not available in this build; see `python cli.py status`")
            return
        text = analyze()
        if text:
            print(text)


# fire maps a command to an attribute of the same name, and `import` is a Python keyword.
setattr(DataCommands, "import", DataCommands._import_jsonl)
