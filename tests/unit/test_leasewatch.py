"""A daemon worker's lease watch (taskschedd.leasewatch): which confirmations extend a
claim, when a job may start, when the worker claims nothing, and the thread that kills
the running job at lease - margin when its master stops confirming (the kill is a
callback here; tests/faults/test_faults_frozen_master.py runs the real one)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import pytest

from taskschedd.leasewatch import LeaseWatch, gate, lease_margin
from taskschedd.messages import Command, Drop, LeaseConfirmed
from taskschedd.model import JobRecord, JobStatus
from taskschedd.options import resolve
from tests.helpers import wait_for

LEASE = 1.0


def claimed(token: str, lease_left: float = LEASE) -> JobRecord:
    opts, _ = resolve({})
    now = time.time()
    return JobRecord(
        id=f"id-{token}", cls="x.Y", data=None, status=JobStatus.PROCESSING, queue="default",
        priority=0, at=now, created=now, options=opts, attempt=1, claim_token=token,
        lease_until=now + lease_left,
    )  # fmt: skip


def test_a_claim_ends_when_its_stored_lease_ends() -> None:
    watch = LeaseWatch(LEASE)
    before = time.monotonic()
    watch.claimed([claimed("a", 0.8)])
    deadline = watch.deadline("a")
    assert deadline is not None and before + 0.75 < deadline < time.monotonic() + 0.85


def test_a_confirmation_extends_the_claims_it_names_if_it_came_before_their_kill_time() -> None:
    watch = LeaseWatch(LEASE)
    watch.claimed([claimed("a"), claimed("b"), claimed("c", 0.05)])
    a, b, c = (watch.deadline(t) for t in "abc")
    assert a is not None and b is not None and c is not None
    now = time.monotonic()
    watch.confirm(now, now + LEASE, ["a", "c", "unknown"])
    assert watch.deadline("a") == now + LEASE  # renewed in time
    assert watch.deadline("b") == b  # not in the renewal (the master did not know it yet)
    assert watch.deadline("c") == c  # renewal returned after c's kill time: maybe reaped
    assert watch.deadline("unknown") is None
    watch.confirm(now - 0.5, now - 0.5 + LEASE, ["a"])  # an older one never shortens
    assert watch.deadline("a") == now + LEASE


def test_a_job_starts_only_with_more_than_the_margin_left() -> None:
    watch = LeaseWatch(LEASE)
    margin = lease_margin(LEASE)
    fresh, late = claimed("fresh"), claimed("late", margin / 2)
    watch.claimed([fresh, late])
    assert not watch.may_start(late)
    assert not watch.may_start(claimed("never-claimed"))
    assert watch.may_start(fresh)
    watch.forget("fresh")
    assert not watch.may_start(fresh)


def test_the_worker_claims_nothing_after_two_thirds_of_a_lease_without_a_word() -> None:
    start = time.monotonic()
    watch = LeaseWatch(LEASE, now=start)
    assert gate(LEASE) == pytest.approx(2 * LEASE / 3)
    assert watch.responsive(start + gate(LEASE) - 0.01)
    assert not watch.responsive(start + gate(LEASE) + 0.01)
    assert watch.confirm(start + LEASE, start + 2 * LEASE, []) is True  # ends a silence
    assert watch.responsive(start + LEASE + 0.1)
    assert watch.confirm(start + LEASE + 0.3, start + 2.3 * LEASE, []) is False


def confirmation(done: float, deadline: float, tokens: list[str]) -> str:
    """The control line of a renewal the master confirms (its round trip and size:
    tests/unit/test_messages.py)."""
    return LeaseConfirmed(done, deadline, tuple(tokens)).encode()


class Pipe:
    """The master's end of a worker's control pipe."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)

    def send(self, line: str) -> None:
        os.write(self.w, (line + "\n").encode())

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    try:
        yield p
    finally:
        p.close()


def test_the_running_job_is_killed_at_lease_minus_margin_once_its_master_stops_confirming(
    pipe: Pipe,
) -> None:
    watch = LeaseWatch(LEASE)
    expired: list[tuple[str, float, float]] = []
    delivered: list[tuple[list[Command], bool]] = []
    watch.watch(
        pipe.r,
        lambda lines, eof: delivered.append((lines, eof)),
        lambda token, deadline: expired.append((token, deadline, time.monotonic())),
    )
    try:
        job = claimed("run")
        watch.claimed([job])
        assert watch.may_start(job)
        last = 0.0
        for _ in range(4):  # the master renews every lease/3, for over a lease
            started = time.monotonic()
            last = started + LEASE
            pipe.send(confirmation(time.monotonic(), last, ["run"]))
            pipe.send("drop other")
            then = started + LEASE / 3
            wait_for(lambda then=then: time.monotonic() >= then, LEASE)
            assert not expired
        # The master falls silent: the kill comes at the last deadline - margin.
        ((token, deadline, at),) = wait_for(lambda: expired, 2 * LEASE, interval=0.001)
        assert token == "run" and deadline == last
        assert last - lease_margin(LEASE) <= at < last - lease_margin(LEASE) + 0.05
        assert [Drop(("other",))] in [commands for commands, _ in delivered]
        os.close(pipe.w)
        wait_for(lambda: any(eof for _, eof in delivered), 2, message="EOF passed on")
    finally:
        watch.close()


def test_a_job_that_ended_is_not_killed_and_a_late_claim_never_starts(pipe: Pipe) -> None:
    watch = LeaseWatch(LEASE)
    expired: list[str] = []
    watch.watch(pipe.r, lambda lines, eof: None, lambda token, deadline: expired.append(token))
    try:
        short = claimed("short", 0.3)
        watch.claimed([short])
        assert watch.may_start(short)
        watch.ended(short)
        kill_at = (watch.deadline("short") or 0.0) - lease_margin(LEASE)
        wait_for(lambda: time.monotonic() > kill_at + 0.1, 2)  # nothing runs: no kill
        assert not expired
        assert not watch.may_start(short)
    finally:
        watch.close()


def test_a_claim_that_starts_later_but_ends_sooner_is_killed_in_time(pipe: Pipe) -> None:
    """Starting a job does not wake the thread: it must already wait for the first kill
    time of every claim held, not just the running one's."""
    watch = LeaseWatch(LEASE)
    expired: list[tuple[str, float]] = []
    watch.watch(
        pipe.r, lambda lines, eof: None, lambda token, _: expired.append((token, time.monotonic()))
    )
    try:
        first, second = claimed("first"), claimed("second", 0.5)
        watch.claimed([first, second])
        assert watch.may_start(first)
        now = time.monotonic()
        pipe.send(confirmation(now, now + 5 * LEASE, ["first"]))  # not "second"
        wait_for(lambda: watch.deadline("first") == now + 5 * LEASE, 2)
        watch.ended(first)
        assert watch.may_start(second)
        ((token, at),) = wait_for(lambda: expired, 2, interval=0.001)
        kill_at = (watch.deadline("second") or 0.0) - lease_margin(LEASE)
        assert token == "second" and kill_at <= at < kill_at + 0.05
    finally:
        watch.close()


def test_confirmations_that_came_while_the_thread_could_not_run_are_read_before_a_kill(
    pipe: Pipe,
) -> None:
    """A job that holds the GIL (one long C call) keeps the watch thread from running
    past the kill time, while the healthy master keeps confirming: when the thread runs
    again it must read those confirmations, not kill (here the thread is held off by its
    lock, as the GIL would)."""
    watch = LeaseWatch(LEASE)
    expired: list[str] = []
    watch.watch(pipe.r, lambda lines, eof: None, lambda token, deadline: expired.append(token))
    try:
        job = claimed("hog")
        watch.claimed([job])
        assert watch.may_start(job)
        kill_at = (watch.deadline("hog") or 0.0) - lease_margin(LEASE)
        with watch._lock:  # the thread cannot look at the deadlines meanwhile
            for _ in range(3):
                now = time.monotonic()
                pipe.send(confirmation(now, now + LEASE, ["hog"]))
                wait_for(lambda now=now: time.monotonic() >= now + LEASE / 3, LEASE)
            assert time.monotonic() > kill_at
        wait_for(lambda: (watch.deadline("hog") or 0.0) > kill_at + LEASE / 2, 2,
                 message="the confirmations read")  # fmt: skip
        assert not expired, "a job whose lease the master renewed must not be killed"
    finally:
        watch.close()
