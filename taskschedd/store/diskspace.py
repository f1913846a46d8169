"""The file system under a SQLite store: is there room to write, may it be written?

What the master's log and ``taskschedctl check`` add when the store refuses writes. A
full disk shows in SQLite only when a write needs a new page on disk (the WAL file's
room is reused first), so a look at the file system says it sooner and plainer.
"""

from __future__ import annotations

import os

#: Less free space than this counts as a full disk: a few hundred WAL pages.
LOW_SPACE = 1 << 20


def _directory(path: str) -> str:
    return path if os.path.isdir(path) else os.path.dirname(path) or "."


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding ``path``
    (a file or a directory); None if that cannot be asked."""
    try:
        st = os.statvfs(_directory(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def size_text(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover - the loop returns


def trouble(path: str) -> str | None:
    """Why the file system holding ``path`` cannot take writes ("disk full: ...",
    "read-only file system: ..."), or None when it can (or cannot be asked)."""
    directory = _directory(path)
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return f"read-only file system: {directory} is mounted read-only"
    free = st.f_bavail * st.f_frsize
    if free < LOW_SPACE:
        return f"disk full: {size_text(free)} free on the file system of {directory}"
    return None


__all__ = ["LOW_SPACE", "free_bytes", "size_text", "trouble"]
