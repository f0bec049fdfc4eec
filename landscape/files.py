"""How every output file is written: under an advisory lock, all at once, leaving nothing behind.

- One writer at a time: :func:`locked` holds an ``flock`` on ``.NAME.lock`` beside the file (removed again on
  release), so writers in any number of processes take turns; one that has to wait says so once on stderr.
- All at once: :func:`replacing` hands out a fresh temporary ``.NAME.<8 characters>.tmp`` beside the file, then
  fsyncs it and renames it over the file. A temporary that a killed writer left is removed by the next writer.
- The file keeps its mode (a new one gets what the umask gives); a symlink is written through to its target.
- A failed write (a full disk above all) raises the caller's error naming the file and saying that the previous
  version is unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional, Union

from landscape.errors import LandscapeError

#: A file path as every function of the package accepts it: a string or any ``os.PathLike``.
PathLike = Union[str, os.PathLike]

#: Seconds a writer waits for the lock before it says that it waits.
WAIT_NOTE_AFTER = 1.0


def target_of(path: PathLike) -> Path:
    """The file a write to ``path`` changes: the final target of a symlink (so the link stays a link), else ``path``."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def lock_file(target: Path) -> Path:
    """The lock file of ``target``: ``.NAME.lock`` beside it."""
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def locked(path: PathLike) -> Iterator[Path]:
    """Hold the write lock of ``path`` (an ``flock`` on its lock file) for the block; yields the target file.

    Not reentrant: a process must not take the lock of a file it already holds. If the lock is busy for more than
    :data:`WAIT_NOTE_AFTER` seconds, one line on stderr says which file it waits for.
    """
    target = target_of(path)
    lock = lock_file(target)
    fd = _acquire(lock, path)
    try:
        yield target
    finally:
        # Removed while still held: a writer that opened this lock file meanwhile finds it gone once it gets the
        # lock, and starts again on a fresh one.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _acquire(lock: Path, shown: PathLike) -> int:
    """A descriptor holding the exclusive ``flock`` of the file now at ``lock``."""
    note: Optional[threading.Timer] = None
    try:
        while True:
            fd = os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if note is None:
                        note = threading.Timer(WAIT_NOTE_AFTER, _say_waiting, (shown, lock))
                        note.daemon = True
                        note.start()
                    fcntl.flock(fd, fcntl.LOCK_EX)
                if _is_current(fd, lock):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
    finally:
        if note is not None:
            note.cancel()


def _is_current(fd: int, lock: Path) -> bool:
    """Whether ``fd`` is still the file at ``lock`` (its holder removes it when done)."""
    try:
        now = os.stat(lock)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _say_waiting(shown: PathLike, lock: Path) -> None:
    print(f"landscape: waiting for another process to finish writing {shown} (lock file {lock})", file=sys.stderr,
          flush=True)


def _temporary_pattern(target: Path) -> re.Pattern:
    # 8 characters: this module's hex names, and the mkstemp names (a-z, 0-9, _) of earlier versions
    return re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")


def stale_temporaries(target: Path) -> list[Path]:
    """The temporaries of writes to ``target`` beside it; under the lock, all are what dead writers left."""
    pattern = _temporary_pattern(target)
    folder = target.parent
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [folder / name for name in names if pattern.fullmatch(name)]


def _new_temporary(target: Path) -> Path:
    """An empty temporary beside ``target`` with ``target``'s mode, or the mode the umask gives a new file."""
    while True:
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        try:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))
        except BaseException:
            os.close(fd)
            temp.unlink()
            raise
        os.close(fd)
        return temp


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (some file systems cannot fsync a folder: nothing to do there)."""
    with contextlib.suppress(OSError):
        _fsync(folder)


@contextlib.contextmanager
def replacing(path: PathLike, *, error: type[LandscapeError], what: str) -> Iterator[Path]:
    """Write ``path`` all at once: yields a fresh temporary beside it to fill, then renames it over ``path``.

    The whole write holds the lock of ``path``, so the caller may read ``path`` in the block (to copy it) and no
    other writer's change is lost; stale temporaries are removed first. When the block or the rename fails with an
    ``OSError``, or with any error a full disk caused, ``error`` is raised naming ``what`` (e.g. "results file X")
    and saying that the previous file is unchanged; either way no temporary survives.
    """
    path = Path(path)
    existed = path.exists()
    try:
        with locked(path) as target:
            for stale in stale_temporaries(target):
                stale.unlink(missing_ok=True)
            existed = target.exists()
            temp = _new_temporary(target)
            try:
                yield temp
                _fsync(temp)
                os.replace(temp, target)
                _fsync_folder(target.parent)
            finally:
                temp.unlink(missing_ok=True)
    except LandscapeError:
        raise
    except Exception as err:
        reason = failure_reason(err)
        if reason is None:
            raise
        kept = f"the previous {path} is unchanged" if existed else f"{path} was not created"
        raise error(f"cannot write {what}: {reason}; {kept}") from err


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an error it came from) says that the disk or the user's quota is full.

    HDF5 reports it in its message (``errno = 28``), torch as the context of a ``RuntimeError``.
    """
    full = (errno.ENOSPC, errno.EDQUOT)
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in full:
            return True
        text = str(link)
        if "No space left on device" in text or "Disk quota exceeded" in text or "errno = 28," in text:
            return True
    return False


def failure_reason(err: BaseException) -> Optional[str]:
    """Why a write failed, in words, when ``err`` is a file-system error or came from a full disk (else None)."""
    if disk_full(err):
        return "the disk is full (no space left on device)"
    if isinstance(err, OSError):
        return (err.strerror or (str(err).splitlines() or [type(err).__name__])[0]).rstrip(".").lower()
    return None
