"""The command line checked against the command it names, before anything runs.

fire calls a command with the options it recognises and only then complains about the rest, so
`run --budget 0.5` (the option is --budget-usd) would spend without a budget and `plan --targt
100` would plan the default 1,000 jobs into an append-only ledger. Here every --option must be
one the command (or the global --db/--catalog) takes, and no more bare words than it has
parameters; otherwise one line says what it takes, and nothing has run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from .errors import UsageError

GLOBAL_OPTIONS = ("db", "catalog")
HELP_FLAGS = ("--help", "-h")


def check_command_line(argv: Sequence[str], commands: type) -> None:
    """Raise UsageError for an option the command does not take or a word too many."""
    command: str | None = None
    params: list[inspect.Parameter] = []
    bare = 0
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--" or token in HELP_FLAGS:
            return  # fire's own flags follow, or help is asked for: fire answers, runs nothing
        if _is_option(token):
            if command is not None and not _takes_any_option(params):
                _check_option(token, command, params)
            if "=" not in token and i < len(argv) and not argv[i].startswith("--"):
                i += 1  # its value, as fire reads it (a boolean option too: --quiet false)
            continue
        if command is None:
            command = token
            method = getattr(commands, token, None)
            if token.startswith("_") or not callable(method):
                return  # not a command: fire says so and runs nothing
            params = _parameters(method)
            continue
        bare += 1
        if bare > len([p for p in params if p.kind is not p.VAR_KEYWORD]):
            raise UsageError(f"{command} takes no argument {token!r} here; it takes "
                             f"{_listing(params)} (see `python cli.py {command} --help`)")


def with_help_for_open_options(argv: Sequence[str], commands: type) -> list[str]:
    """Help where fire would not give it. `cli.py --help` alone shows only the global options
    (fire's help of the class), while `cli.py` lists the commands: the flag is dropped.
    `simulate --help`: a command taking any --option (**options) would get help=True as one
    of them; fire shows its help for `simulate -- --help`, so the flag is moved there."""
    args = list(argv)
    if "--" in args:
        return args
    i, command = 0, None
    while i < len(args) and command is None:
        token = args[i]
        i += 1
        if _is_option(token):
            if "=" not in token and i < len(args) and not args[i].startswith("--"):
                i += 1  # its value
        else:
            command = token
    method = getattr(commands, command, None) if command else None
    asked = [a for a in args if a in HELP_FLAGS]
    if asked and command is None:
        return [a for a in args if a not in HELP_FLAGS]
    if asked and callable(method) and _takes_any_option(_parameters(method)):
        return [a for a in args if a not in HELP_FLAGS] + ["--", "--help"]
    return args


def _is_option(token: str) -> bool:
    """--name, --name=value, and fire's one-letter -n (a negative number is a value)."""
    if token.startswith("--"):
        return True
    return len(token) == 2 and token[0] == "-" and token[1].isalpha()


def _check_option(token: str, command: str, params: list[inspect.Parameter]) -> None:
    names = {p.name for p in params if p.kind is not p.VAR_KEYWORD}
    if token.startswith("--"):
        name = _option_name(token)
        if name in GLOBAL_OPTIONS or name in names or (
                name.startswith("no") and name[2:] in names):  # --noquiet negates --quiet
            return
    else:  # fire takes -t for the one option starting with t
        letter = token[1]
        if len([n for n in (*names, *GLOBAL_OPTIONS) if n.startswith(letter)]) == 1:
            return
    raise UsageError(f"{command} has no option {token.split('=', 1)[0]}; it takes "
                     f"{_listing(params)} (see `python cli.py {command} --help`)")


def _option_name(token: str) -> str:
    """'--dry-run' -> 'dry_run'; '--target=5' -> 'target'."""
    return token[2:].partition("=")[0].replace("-", "_")


def _parameters(method: Callable[..., Any]) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(method).parameters.values() if p.name != "self"]


def _takes_any_option(params: list[inspect.Parameter]) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in params)


def _listing(params: list[inspect.Parameter]) -> str:
    names = [f"--{p.name.replace('_', '-')}" for p in params if p.kind is not p.VAR_KEYWORD]
    return ", ".join(names) if names else "no options"
