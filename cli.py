"""scaffold-ledger command line: `python cli.py COMMAND --help` for each command.

Every command is a thin call into `ledger`; errors print one line and exit nonzero.
"""

from __future__ import annotations

import os
import sys

try:
    import fire

    from sqlalchemy.exc import DBAPIError

    from ledger import commands
    from ledger.cli_args import check_command_line, with_help_for_open_options
    from ledger.cli_data import merge_repeated_option
    from ledger.db import database_error_from
    from ledger.errors import LedgerError, os_error_line
except KeyboardInterrupt:  # Ctrl-C while the imports load (the first ~0.3 s): nothing ran yet
    print("interrupted", file=sys.stderr)
    sys.exit(130)


def main(argv: list[str] | None = None) -> int:
    # fire keeps only the last of a repeated flag; `mix --anchor A --anchor B` means both.
    argv = merge_repeated_option(sys.argv[1:] if argv is None else argv, "--anchor")
    try:
        argv = with_help_for_open_options(argv, commands.Commands)
        check_command_line(argv, commands.Commands)
        fire.Fire(commands.Commands, command=argv, name="cli.py")
    except LedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except DBAPIError as exc:
        # The database failed under us (disk full, file removed, server gone): one line, and
        # the transaction in progress was rolled back, so nothing is half written.
        err = database_error_from(exc)
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except commands.Exit as done:
        return done.code
    except BrokenPipeError:
        # `cli.py report ... | head` closed the pipe early: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # A file the command reads or writes failed in a way its own checks did not name.
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
