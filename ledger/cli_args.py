"""The command line checked against the command it names, before anything runs.

fire calls a command with the options it recognises and only then complains about the rest, so
`run --budget 0.5` (the option is --budget-usd) would spend without a budget and `plan --targt
100` would plan the default 1,000 jobs into an append-only ledger. Here every --option must be
one the command (or the global --db/--catalog) takes, and no more bare words than it has
parameters; otherwise one line says what it takes, and nothing has run.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import UsageError

GLOBAL_OPTIONS = ("db", "catalog")
HELP_FLAGS = ("--help", "-h")


def check_command_line(argv: Sequence[str], commands: type) -> None:
    """Raise UsageError for an option the command does not take or a word too many."""
    command: str | None = None
    params: list[inspect.Parameter] = []
    bare = 0
    for token, is_option in _tokens(argv):
        if token == "--" or token in HELP_FLAGS:
            return  # fire's own flags follow, or help is asked for: fire answers, runs nothing
        if is_option:
            if command is not None and not _takes_any_option(params):
                _check_option(token, command, params)
            continue
        if command is None:
            command = token
            if not _is_command(commands, token):
                return  # not a command: fire says so and runs nothing
            params = _parameters(getattr(commands, token))
            continue
        bare += 1
        if bare > len(_named(params)):
            raise UsageError(f"{command} takes no argument {token!r} here; it takes "
                             f"{_listing(params)} (see `python cli.py {command} --help`)")


def with_help_for_open_options(argv: Sequence[str], commands: type) -> list[str]:
    """Help, and only help, wherever a help flag is. fire shows a command's help for
    `COMMAND -- --help` without running it, but with the flag elsewhere it may run the command
    (`plan --target 7 --help` planned 7 jobs; `simulate --help` took help=True as one of its
    open options); `cli.py --help` alone showed only the global options, where `cli.py` lists
    the commands."""
    args = list(argv)
    if "--" in args:
        return args
    tokens = list(_tokens(args))
    if not any(token in HELP_FLAGS for token, _ in tokens):
        return args
    command = next((token for token, is_option in tokens if not is_option), None)
    if command is not None and _is_command(commands, command):
        return [command, "--", "--help"]
    return [token for token in args if token not in HELP_FLAGS]


def _tokens(argv: Sequence[str]) -> Iterator[tuple[str, bool]]:
    """(token, is it an option) for the options and words of a command line, an option's value
    skipped the way fire reads it: the next word, unless the option has `=` or the next word
    is an option itself (then it is a boolean). A help flag takes no value."""
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            yield token, False
            return
        if _is_option(token):
            yield token, True
            if token not in HELP_FLAGS and "=" not in token and i < len(argv) \
                    and not _is_option(argv[i]):
                i += 1
            continue
        yield token, False


def _is_option(token: str) -> bool:
    """fire's flags: --name, --name=value, -name and one-letter -n (a negative number is a
    value, not a flag)."""
    return token.startswith("--") or re.match(r"^-[a-zA-Z]", token) is not None


def _is_command(commands: type, name: str) -> bool:
    return not name.startswith("_") and inspect.isfunction(getattr(commands, name, None))


def _check_option(token: str, command: str, params: list[inspect.Parameter]) -> None:
    names = set(_named(params))
    name = _option_name(token)
    if name in GLOBAL_OPTIONS or name in names or (
            name.startswith("no") and name[2:] in names):  # --noquiet negates --quiet
        return
    if len(name) == 1 and len([n for n in (*names, *GLOBAL_OPTIONS)
                               if n.startswith(name)]) == 1:
        return  # fire takes -t for the one option starting with t
    raise UsageError(f"{command} has no option {token.split('=', 1)[0]}; it takes "
                     f"{_listing(params)} (see `python cli.py {command} --help`)")


def _option_name(token: str) -> str:
    """'--dry-run' -> 'dry_run'; '--target=5' -> 'target'; '-target' -> 'target'."""
    return token.lstrip("-").partition("=")[0].replace("-", "_")


def _parameters(method: Callable[..., Any]) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(method).parameters.values() if p.name != "self"]


def _takes_any_option(params: list[inspect.Parameter]) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in params)


def _named(params: list[inspect.Parameter]) -> list[str]:
    """The command's own parameters, in order: each an --option, or a word in its place."""
    return [p.name for p in params if p.kind is not p.VAR_KEYWORD]


def _listing(params: list[inspect.Parameter]) -> str:
    names = [f"--{name.replace('_', '-')}" for name in _named(params)]
    return ", ".join(names) if names else "no options"
