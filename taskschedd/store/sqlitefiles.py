"""The files of a SQLite store: who may own them, how they are created, which one is open.

Permissions follow ssh's StrictModes: the database, its -wal and -shm, and the directory
they live in must not be writable by group or others, and (for the daemon) must be
owned by its user or root. A store another user can write is a store another user can
fill with jobs for the daemon to run, or corrupt to stop it; SQLite, run by root, even
hands that user the -wal and -shm it creates. There is no exception for sticky
directories such as /tmp: SQLite creates -wal and -shm itself, following symbolic
links, so a name planted there before the daemon's first write would still be used.

A process remembers the device and inode of the database it opened
(:class:`FileId`); a cheap ``stat`` of the path tells when the file was deleted or
replaced under it, after which its writes would go to a file nobody else reads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
from collections.abc import Collection, Iterator
from typing import NamedTuple

from taskschedd.errors import StoreError, StoreMissing, UnsafeStore

#: Files beside the database that SQLite creates and opens itself.
SIDE_FILES = ("-wal", "-shm")
_CREATE_HINT = (
    "check the path (--store, the configuration's 'store', $TASKSCHED_STORE); to create a "
    "new store there, use 'taskschedctl add --create' or Scheduler(url, create=True) "
    "(taskschedd creates its store when it starts)"
)


class FileId(NamedTuple):
    """Which file: device and inode (a tuple: compared at C speed on every store call)."""

    dev: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        return cls(st.st_dev, st.st_ino)


def daemon_owners(user: str | None = None) -> frozenset[int]:
    """Who may own the daemon's store: root, this process's user and the configured
    ``user`` the daemon switches to (checked before the switch too)."""
    owners = {0, os.geteuid()}
    if user is not None:
        with contextlib.suppress(KeyError):
            owners.add(pwd.getpwnam(user).pw_uid)
    return frozenset(owners)


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _owners_text(owners: Collection[int]) -> str:
    return " or ".join(_who(uid) for uid in sorted(owners))


def _check(what: str, path: str, st: os.stat_result, owners: Collection[int] | None) -> None:
    if owners is not None and st.st_uid not in owners:
        raise UnsafeStore(
            f"{what} {path} is owned by {_who(st.st_uid)}; it must be owned by "
            f"{_owners_text(owners)} (another user could change the jobs this node runs); "
            "chown it, or point 'store' elsewhere"
        )
    if st.st_mode & 0o022:
        raise UnsafeStore(
            f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"another user could change the jobs this node runs; run 'chmod go-w {path}'"
        )


def check_directory(directory: str, owners: Collection[int] | None) -> None:
    """UnsafeStore unless the store's directory is safe (sticky or not: see the module)."""
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise StoreError(f"cannot read the store directory {directory}: {exc.strerror}") from None
    _check("the store directory", directory, st, owners)


def check_side_files(path: str, owners: Collection[int] | None) -> None:
    """UnsafeStore unless the existing -wal/-shm files are regular, ours and not writable
    by others (SQLite opens them without a check of its own)."""
    for suffix in SIDE_FILES:
        side = path + suffix
        try:
            st = os.lstat(side)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"cannot read the store file {side}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeStore(
                f"the store file {side} is not a regular file (a symbolic link?); remove it"
            )
        _check("the store file", side, st, owners)


def make_directories(directory: str) -> None:
    """Create the store's directory and missing parents, each 0700 (os.makedirs would
    give the parents the umask's mode: 0777 under umask 000)."""
    missing: list[str] = []
    current = directory
    while current and not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for part in reversed(missing):
        try:
            os.mkdir(part, 0o700)
        except FileExistsError:
            if not os.path.isdir(part):
                raise StoreError(
                    f"cannot create the store directory {part}: a file is in the way"
                ) from None
        except OSError as exc:
            raise StoreError(
                f"cannot create the store directory {part}: {exc.strerror}; "
                "create it or point 'store' at a writable path"
            ) from None


@contextlib.contextmanager
def _descriptor(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def prepare(path: str, *, create: bool, owners: Collection[int] | None) -> FileId:
    """Check (and if ``create``, make) the store file; return which file it is.

    Opened with O_NOFOLLOW, so a symbolic link put where the store should be is never
    followed; created with O_EXCL and mode 0600 (SQLite gives -wal and -shm the mode of
    the database)."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        if not create:
            raise StoreMissing(f"no store at {path}: its directory does not exist; {_CREATE_HINT}")
        make_directories(directory)
    check_directory(directory, owners)
    # O_PATH, only to fstat it: closing a descriptor opened for reading would drop every
    # POSIX lock this process holds on the file (fcntl semantics), including those of
    # SQLite connections already open on it in this process; SQLite in other processes
    # would then take itself for the last user and delete the -wal and -shm under them.
    # O_PATH descriptors do not release locks on close (Linux), and never block on a FIFO.
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if not create:
            raise StoreMissing(f"no store at {path}; {_CREATE_HINT}") from None
        try:
            create_flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL
            fd = os.open(path, create_flags, 0o600)
            # A -wal left by a deleted database would be replayed into the new one.
            for suffix in SIDE_FILES:
                with contextlib.suppress(OSError):
                    os.unlink(path + suffix)
        except FileExistsError:  # created by another process meanwhile
            fd = _open_existing(path, flags)
        except OSError as exc:
            raise StoreError(f"cannot create the store file {path}: {exc.strerror}") from None
    except OSError as exc:
        fd = _open_failed(path, flags, exc)
    with _descriptor(fd):
        st = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode):  # O_PATH | O_NOFOLLOW opens the link itself
        _open_failed(path, flags, OSError(errno.ELOOP, os.strerror(errno.ELOOP)))
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeStore(f"the store file {path} is not a regular file")
    _check("the store file", path, st, owners)
    check_side_files(path, owners)
    return FileId.of(st)


def _open_existing(path: str, flags: int) -> int:
    try:
        return os.open(path, flags)
    except OSError as exc:
        return _open_failed(path, flags, exc)


def _open_failed(path: str, flags: int, exc: OSError) -> int:
    if exc.errno == errno.ELOOP:
        raise UnsafeStore(
            f"the store file {path} is a symbolic link; name the file itself in 'store' "
            "(a link another user planted would be followed)"
        ) from None
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        raise StoreError(
            f"cannot open the store file {path}: {exc.strerror}; taskschedd needs to read "
            "and write it (and its directory, for the -wal and -shm files)"
        ) from None
    raise StoreError(f"cannot open the store file {path}: {exc.strerror}") from None


def identity(path: str) -> FileId | None:
    """Which file the path names now; None if none (or it cannot be told)."""
    try:
        return FileId.of(os.stat(path))
    except OSError:
        return None


def replaced_message(path: str, opened: FileId, now: FileId | None) -> str:
    what = "deleted" if now is None else "replaced by another file"
    return (
        f"the store file {path} was {what} while this process had it open (inode "
        f"{opened.ino}{'' if now is None else f', now {now.ino}'}); its writes would go to a "
        "file nobody else reads, so it stops using the store: restart it"
    )


def stale_holders(path: str) -> list[tuple[int, str, str]]:
    """Processes that hold a file open under the store's name that is no longer the one
    the path names (deleted or replaced): (pid, command name, what happened). Linux
    /proc; processes of other users are seen only by root."""
    path = os.path.abspath(path)
    current = identity(path)
    # /proc shows the path with its directories' links resolved.
    real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    names = {path, real, path + " (deleted)", real + " (deleted)"}
    found: list[tuple[int, str, str]] = []
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") not in names:
                    continue
                held = FileId.of(os.stat(f"{fd_dir}/{fd}"))
            except OSError:
                continue
            if held != current:
                what = "deleted" if current is None else "replaced"
                found.append((pid, _command(pid), what))
                break
    return found


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return " ".join(text.split())[:80] or "?"  # one line, even for python -c "..."


__all__ = [
    "SIDE_FILES",
    "FileId",
    "check_directory",
    "check_side_files",
    "daemon_owners",
    "identity",
    "make_directories",
    "prepare",
    "replaced_message",
    "stale_holders",
]
