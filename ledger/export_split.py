"""A big SQLite export written by two processes.

This process writes the first half of the file in plan order; a helper process, started here,
writes the second half on its own read-only connection. Both read the same ledger position (a
RowRange: append-only events make "as of seq N" readable from any connection), so the file is
byte for byte what one process would write. The helper writes into an unnamed temp file (it
vanishes with its last descriptor, so a killed export leaves nothing behind) that is appended
after this process's half, through the same hashing writer, as it grows: the copy overlaps the
helper's last rows. The helper imports no SQLAlchemy (see export_rows), so it starts in about
0.06 s instead of 0.33 s.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .errors import LedgerError
from .export_rows import ExportFilters, RowRange, Written, write_sqlite_part

_COPY_BYTES = 4 << 20
_POLL_SECONDS = 0.005


class Helper:
    """The helper process and the unnamed file it writes."""

    def __init__(self, proc: subprocess.Popen[bytes], part: BinaryIO) -> None:
        self._proc = proc
        self._part = part

    @classmethod
    def start(cls, database: Path, fmt: str, filters: ExportFilters, rows: RowRange,
              scratch: Path, busy_timeout_ms: int) -> Helper | None:
        """The helper writing `rows`, its bytes held in an unnamed file in `scratch` (the
        export's own directory, which is writable); None when it cannot be started (no room
        for a file, no process to spare): the caller then writes every row itself."""
        try:
            part = tempfile.TemporaryFile(dir=scratch)
        except OSError:
            return None
        spec = {"database": str(database), "format": fmt, "filters": filters.as_dict(),
                "rows": [rows.head_seq, rows.after_job_seq, rows.upto_job_seq],
                "fd": part.fileno(), "busy_timeout_ms": busy_timeout_ms}
        try:
            # Its own session: Ctrl-C reaches only this process, which stops the helper.
            proc = subprocess.Popen(
                [sys.executable, "-m", "ledger.export_split", json.dumps(spec)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(part.fileno(),), start_new_session=True,
                cwd=Path(__file__).resolve().parent.parent)
        except OSError:
            part.close()
            return None
        return cls(proc, part)

    def finish(self, sink: Any) -> Written:
        """Append what the helper writes to `sink` while it writes, and the rest once it has
        exited; returns what its half holds. The file only grows, and a read returns only
        bytes already written (the kernel moves the file's size after the copy), so reading on
        from where the last read ended gives the bytes in order, and the copy overlaps the
        helper's last rows instead of following them."""
        fd, offset = self._part.fileno(), 0
        while True:
            try:
                # Waiting through communicate also reads the helper's stdout and stderr: a
                # helper blocked on a full pipe would never exit.
                out, err = self._proc.communicate(timeout=_POLL_SECONDS)
                exited = True
            except subprocess.TimeoutExpired:
                exited = False
            # After the exit is seen, this read takes the last bytes it wrote.
            while chunk := os.pread(fd, _COPY_BYTES, offset):
                sink.write(chunk)
                offset += len(chunk)
            if exited:
                break
        if self._proc.returncode != 0:
            lines = [x for x in err.decode("utf-8", "replace").splitlines() if x.strip()]
            raise LedgerError(lines[-1] if lines else
                              f"the export helper stopped with exit code {self._proc.returncode}")
        done = json.loads(out)
        return Written(int(done["count"]), frozenset(done["filter_versions"]),
                       frozenset(done["prompt_versions"]))

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._part.close()


def main(argv: Sequence[str]) -> int:
    """The helper: write the rows of the spec in argv[1] to the inherited descriptor."""
    spec = json.loads(argv[1])
    uri = Path(spec["database"]).as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(spec['busy_timeout_ms'])}")
        conn.execute("BEGIN")
        with open(spec["fd"], "wb", buffering=_COPY_BYTES, closefd=True) as fh:
            written = write_sqlite_part(conn, spec["format"],
                                        ExportFilters.from_dict(spec["filters"]),
                                        RowRange(*spec["rows"]), fh)
    except LedgerError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(json.dumps({"count": written.count, "filter_versions": sorted(written.filter_versions),
                      "prompt_versions": sorted(written.prompt_versions)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
