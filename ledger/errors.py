"""Named errors. Each message tells the user what to do next; the CLI prints it as one line."""

from __future__ import annotations

import errno


class LedgerError(Exception):
    """Base for every error the CLI turns into one line and a nonzero exit."""

    exit_code = 1


class UsageError(LedgerError):
    """The user's input is wrong (bad option, unknown L1, bad file)."""

    exit_code = 2


class CatalogError(UsageError):
    """The error-pattern catalog is missing or invalid."""


class DatabaseError(UsageError):
    """The ledger database cannot be opened, created or trusted."""


class SchemaTooNewError(DatabaseError):
    """The ledger was written by a newer scaffold-ledger."""


class AppendOnlyViolation(LedgerError):
    """Something tried to change or remove an event row."""


class CreditExhausted(LedgerError):
    """OpenRouter said the credit or key limit is used up (HTTP 402), or the pre-flight check failed."""

    exit_code = 3


class BudgetReached(LedgerError):
    """The ledger's total spend reached --budget-usd."""

    exit_code = 4


class KeyRejected(LedgerError):
    """OpenRouter rejected the API key (HTTP 401)."""

    exit_code = 5


class Interrupted(LedgerError):
    """The user pressed Ctrl-C; the run stopped cleanly."""

    exit_code = 130


def os_error_line(exc: OSError) -> str:
    """An operating-system error as one line: which file, what went wrong, what to try."""
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        hint = "free some space and run the command again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "check the permissions, or choose another path"
    else:
        hint = "check the path and run the command again"
    return f"{where}{what}; {hint}"
