"""Atomic file writing: a reader sees the old file or the whole new one, never a torn one.

Data goes to a temp file beside the target (same directory, so the rename cannot cross file
systems), is fsynced, renamed over the target, and the directory is fsynced so the rename itself
survives a power cut. A writer killed mid-way leaves only its temp file, which the next write to
the same target removes. Files are created with mode 0o600: exports hold whole dialogues.
"""

from __future__ import annotations

import hashlib
import os
import queue
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LedgerError, UsageError

FILE_MODE = 0o600
_BUFFER_BYTES = 1 << 20


class AtomicWriter:
    """The open temp file; counts bytes and hashes them as they are written."""

    def __init__(self, fh, temp_path: Path, target: Path) -> None:  # type: ignore[no-untyped-def]
        self._fh = fh
        self.temp_path = temp_path
        self.target = target
        self._sha = hashlib.sha256()
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        try:
            self._fh.write(data)
        except OSError as exc:
            raise _write_error(self.target, exc) from None
        self._sha.update(data)
        self.bytes_written += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


class BackgroundWriter:
    """Hands batches to a second thread that hashes and writes them: hashlib and file writes
    release the GIL, so they overlap the reading and formatting of the next batch."""

    def __init__(self, sink: AtomicWriter) -> None:
        self._sink = sink
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="file-writer", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(data)

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self._sink.write(data)
                except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
                    self.error = exc

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


@contextmanager
def written_behind(sink: AtomicWriter) -> Iterator[BackgroundWriter]:
    """A BackgroundWriter over `sink` for the block; raises what writing raised."""
    pipe = BackgroundWriter(sink)
    try:
        yield pipe
    finally:
        pipe.close()
    if pipe.error is not None:
        raise pipe.error


def _write_error(target: Path, exc: OSError) -> LedgerError:
    return LedgerError(f"cannot write {target}: {exc.strerror or exc}; free some space or "
                       "choose another path (the previous file, if any, is unchanged)")


def temp_prefix(target: Path) -> str:
    """Temp files of a target start with this; the pid after it says who is writing."""
    return f".{target.name}."


def _temp_path(target: Path) -> Path:
    return target.with_name(f"{temp_prefix(target)}{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def stale_temps(target: Path) -> list[Path]:
    """Temp files of `target` left by writers whose process is gone."""
    prefix = temp_prefix(target)
    found = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid_text = name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            found.append(entry)
    return found


def remove_stale_temps(target: Path) -> int:
    removed = 0
    for path in stale_temps(target):
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass  # another writer cleaned it first, or it is not ours to remove
    return removed


def check_target(target: Path, overwrite: bool) -> None:
    """Fail early, before any work, when the target cannot or may not be written."""
    try:
        if target.is_dir():
            raise UsageError(f"{target} is a directory; pass a file path")
        if not target.parent.is_dir():
            raise UsageError(f"directory {target.parent} does not exist (or is a file); create "
                             "it first")
        exists = target.exists()
        # A pipe, a device or a link to one (/dev/stdout, /dev/null) cannot be written by
        # renaming a file over it: the rename would replace the node itself (as root, /dev's).
        special = exists and not target.is_file()
    except OSError as exc:  # a name too long, a loop of links, a path not searchable
        raise UsageError(f"cannot use {target}: {exc.strerror or exc}; choose another "
                         "path") from None
    if special:
        raise UsageError(f"{target} is not a regular file (a device, pipe or socket); the output "
                         "is written to a file and renamed into place: pass a file path")
    if exists and not overwrite:
        raise UsageError(f"{target} exists; pass --force to replace it")


def fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # platforms without directory handles (Windows) order renames themselves
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(temp: Path, target: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temp, target)
        return
    # A hard link refuses an existing name atomically, so a target created while we were
    # writing is never clobbered.
    try:
        os.link(temp, target)
    except FileExistsError:
        raise UsageError(f"{target} exists; pass --force to replace it") from None
    except OSError:
        if target.exists():
            raise UsageError(f"{target} exists; pass --force to replace it") from None
        os.replace(temp, target)
        return
    temp.unlink()


@contextmanager
def atomic_write(target: str | os.PathLike[str], *, overwrite: bool = False,
                 mode: int = FILE_MODE) -> Iterator[AtomicWriter]:
    """Write `target` through a temp file; it appears (or is replaced) only if the block ends
    without an exception. Raises UsageError if it exists and `overwrite` is False."""
    path = Path(target)
    check_target(path, overwrite)
    remove_stale_temps(path)
    temp = _temp_path(path)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise UsageError(f"cannot create a file in {path.parent}: {exc.strerror or exc}; "
                         "choose a writable directory") from None
    published = False
    try:
        try:
            with open(fd, "wb", buffering=_BUFFER_BYTES, closefd=True) as fh:
                os.fchmod(fh.fileno(), mode)  # exact, whatever the umask
                writer = AtomicWriter(fh, temp, path)
                yield writer
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            # Also the close: after a failed write it flushes the buffer again, fails again
            # (a full disk), and its error would replace the one that said what to do.
            raise _write_error(path, exc) from None
        _publish(temp, path, overwrite)
        published = True
        fsync_directory(path.parent)
    finally:
        if not published:
            try:
                temp.unlink()
            except FileNotFoundError:
                pass


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes, *,
                       overwrite: bool = True) -> None:
    with atomic_write(target, overwrite=overwrite) as out:
        out.write(data)
