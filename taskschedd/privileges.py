"""Dropping root: the master switches to the configured user/group before any worker
is forked, and makes sure root cannot be regained."""

from __future__ import annotations

import grp
import os
import pwd

from taskschedd.config import ConfigError
from taskschedd.errors import TaskSchedError


def drop_privileges(user: str | None, group: str | None) -> None:
    """Switch to the configured user/group (setgid, initgroups, setuid), then make sure
    root cannot be regained. Done before any worker is forked."""
    if user is None and group is None:
        return
    pw = pwd.getpwnam(user) if user is not None else None
    gid = grp.getgrnam(group).gr_gid if group is not None else (pw.pw_gid if pw else os.getgid())
    uid = pw.pw_uid if pw is not None else os.getuid()
    if os.getuid() != 0:
        if uid == os.getuid() and gid in (os.getgid(), *os.getgroups()):
            return  # already the configured identity
        raise ConfigError(
            f"cannot switch to user {user or '-'} / group {group or '-'}: "
            "taskschedd must be started as root to change identity",
            key="user" if user else "group",
        )
    if pw is not None:
        os.initgroups(pw.pw_name, gid)
    else:
        os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise TaskSchedError("dropping privileges failed: setuid(0) still works")


__all__ = ["drop_privileges"]
