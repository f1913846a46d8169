"""A node's entry in the store's node registry: one live node per name.

A node takes its entry at start (:func:`register`, atomic in the store), and refuses to
start while another live node holds the name, unless that node ran on this host, in this
pid namespace and boot, and its process is gone (a master killed with SIGKILL and
restarted at once). Every entry says how long it is live (``live_until``: its heartbeat
plus :func:`live_window` of that node's own configuration), and every observer (other
nodes, ``taskschedctl nodes``) judges it by that, so nodes with different heartbeat
intervals share a store; an entry of taskschedd 0.4, without it, is judged by the
observer's own window. Every master start has a random ``instance``: heartbeats and the
removal at exit touch only the entry of that instance, so one node's exit never removes
another node's entry.
"""

from __future__ import annotations

import os
import secrets
import socket
import time

from taskschedd.config import Config, ConfigError
from taskschedd.model import NodeRecord
from taskschedd.osproc import pid_alive
from taskschedd.store import Store

#: A node's entry is live for this many heartbeat intervals after its last heartbeat.
LIVE_HEARTBEATS = 3


def new_instance() -> str:
    return secrets.token_hex(8)


def live_window(config: Config) -> float:
    return LIVE_HEARTBEATS * config.heartbeat_interval


def pid_namespace() -> str:
    """This process's pid namespace (``pid:[INODE]``; readable under the unit's
    ProcSubset=pid, which keeps /proc/self); "" when unknown."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def boot_time() -> float:
    """When this host booted (wall clock), from CLOCK_BOOTTIME: /proc/sys/kernel/random/
    boot_id is hidden under ProcSubset=pid. Moves with steps of the wall clock."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


#: Two boot times this close are one boot (the wall clock's adjustments between the
#: holder's heartbeat and now; a step beyond it only makes the check fall back to the
#: window). Another boot is at least its predecessor's uptime away.
SAME_BOOT = 2.0


def live_nodes(store: Store, now: float, window: float) -> list[NodeRecord]:
    """The entries live at ``now``: each by its own ``live_until``; ``window`` after the
    heartbeat for an entry without one (taskschedd 0.4)."""
    return [n for n in store.nodes() if n.live(now, window)]


def _started_at(pid: int) -> float | None:
    """When process ``pid`` started (wall clock), from /proc/PID/stat; None when unknown.

    The boot time comes from CLOCK_BOOTTIME, not /proc/stat: the unit's ProcSubset=pid
    hides /proc/stat, and a reused pid would then go unnoticed."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def is_dead(holder: NodeRecord) -> bool:
    """A holder known to be gone though its heartbeat is recent: its master on this host
    no longer exists, or its pid now names a process started after that master. Its pid
    is checked only when it ran on this host, in this pid namespace and this boot: a pid
    of another host, container (another namespace with the same hostname) or boot, or of
    an entry that does not say (taskschedd 0.4), names another process here."""
    if holder.host != socket.gethostname():
        return False
    if not holder.pid_ns or holder.pid_ns != pid_namespace():
        return False
    if not holder.boot or abs(holder.boot - boot_time()) > SAME_BOOT:
        return False
    if holder.pid == os.getpid() or not pid_alive(holder.pid):
        return True
    started = _started_at(holder.pid)
    return started is not None and started > holder.started + 2.0  # clock ticks, clock skew


class NodeNameInUse(ConfigError):
    """Another live node has this node's name (exit 78: two configurations name the same
    node; taskschedd.service does not restart after it)."""

    def __init__(self, holder: NodeRecord, config: Config, now: float) -> None:
        window = (holder.live_until or holder.heartbeat + live_window(config)) - holder.heartbeat
        super().__init__(
            f"node name {holder.name!r} is in use by a live node (host {holder.host}, "
            f"pid {holder.pid}, last heartbeat {max(0.0, now - holder.heartbeat):.1f}s ago); "
            "give this node another name (the 'node' key), or wait for that node to stop "
            f"(its entry counts as live for {window:g}s after its last heartbeat)",
            key="node",
        )
        self.holder = holder


def check(store: Store, config: Config) -> None:
    """Refuse (NodeNameInUse) if a live node holds the name; writes nothing. Run before
    ``--daemon`` detaches, so that its caller sees the refusal; the master's
    :func:`register` decides atomically."""
    now = time.time()
    for holder in live_nodes(store, now, live_window(config)):
        if holder.name == config.node and not is_dead(holder):
            raise NodeNameInUse(holder, config, now)


def register(store: Store, record: NodeRecord, config: Config) -> None:
    """Take the name's entry for ``record.instance``, or raise NodeNameInUse."""
    replace: str | None = None
    while True:
        now = time.time()
        holder = store.register_node(record, now=now, window=live_window(config), replace=replace)
        if holder is None:
            return
        if not is_dead(holder) or holder.instance == replace:
            raise NodeNameInUse(holder, config, now)
        replace = holder.instance  # its process is gone: take its entry, if still its


__all__ = [
    "LIVE_HEARTBEATS", "NodeNameInUse", "boot_time", "check", "live_nodes", "live_window",
    "new_instance", "pid_namespace", "register",
]  # fmt: skip
