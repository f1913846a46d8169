"""Dropping root: the master switches to the configured user/group before any worker
is forked, and makes sure root cannot be regained.

:func:`check_privileges` resolves and checks the identity without changing anything, so
that ``taskschedd --daemon`` refuses an unknown user or group (or a switch it cannot make)
before it detaches, while its caller still sees the message and the exit code."""

from __future__ import annotations

import grp
import os
import pwd
from typing import NamedTuple

from taskschedd.config import ConfigError
from taskschedd.errors import TaskSchedError


class Identity(NamedTuple):
    """What the process becomes: ``name`` is None when only a group is configured."""

    name: str | None
    uid: int
    gid: int
    switch: bool  # False: already this identity, nothing to do


def check_privileges(user: str | None, group: str | None) -> Identity | None:
    """The identity to switch to (None: none configured). ConfigError (78) for a user or
    group that does not exist, or a switch that needs root and we are not root."""
    if user is None and group is None:
        return None
    try:
        pw = pwd.getpwnam(user) if user is not None else None
    except KeyError:
        raise ConfigError(
            f"no such user {user!r} on this host; create it or set another 'user'", key="user"
        ) from None
    try:
        gid = grp.getgrnam(group).gr_gid if group is not None else None
    except KeyError:
        raise ConfigError(
            f"no such group {group!r} on this host; create it or set another 'group'", key="group"
        ) from None
    if gid is None:
        gid = pw.pw_gid if pw is not None else os.getgid()
    uid = pw.pw_uid if pw is not None else os.getuid()
    if os.getuid() != 0:
        if uid == os.getuid() and gid in (os.getgid(), *os.getgroups()):
            return Identity(user, uid, gid, switch=False)  # already the configured identity
        raise ConfigError(
            f"cannot switch to user {user or '-'} / group {group or '-'}: "
            "taskschedd must be started as root to change identity",
            key="user" if user else "group",
        )
    return Identity(pw.pw_name if pw is not None else None, uid, gid, switch=True)


def drop_privileges(user: str | None, group: str | None) -> None:
    """Switch to the configured user/group (setgid, initgroups, setuid), then make sure
    root cannot be regained. Done before any worker is forked."""
    identity = check_privileges(user, group)
    if identity is None or not identity.switch:
        return
    if identity.name is not None:
        os.initgroups(identity.name, identity.gid)
    else:
        os.setgroups([])
    os.setgid(identity.gid)
    os.setuid(identity.uid)
    if identity.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise TaskSchedError("dropping privileges failed: setuid(0) still works")


__all__ = ["Identity", "check_privileges", "drop_privileges"]
