"""A small disk to fill: a tmpfs mounted for a test (or the soak), a filler file that
takes its last byte, and the unmount. Mounting needs root in a mount namespace that
allows it; :func:`mount_tmpfs` says why not, for a skip message."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` (mount(8) syntax: "4m") at ``path`` (created if needed),
    mode 0700; None when mounted, else why not."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        return "no mount(8) here"
    if done.returncode != 0:
        return done.stderr.strip() or f"mount exited {done.returncode}"
    return None


def umount(path: Path) -> None:
    """Unmount; lazily if something still holds it (a process not reaped yet)."""
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, name: str = "filler") -> Path:
    """Write a filler file on ``disk`` until no byte is left (ENOSPC); its path."""
    path = disk / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return path


def free_bytes(disk: Path) -> int:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize
