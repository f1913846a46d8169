"""The master <-> worker protocol (taskschedd.messages): every message survives its
encoding, and a line that is not one never ends the reader: it raises MalformedMessage
(the master logs it and goes on) or, for a kind this version does not know, is None."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import cast

import pytest

from taskschedd.children import RunningJob, WorkerHandle
from taskschedd.messages import (
    TOKENS_PER_LINE,
    Claim,
    ClaimedJob,
    Command,
    Drop,
    Exit,
    LeaseConfirmed,
    MalformedMessage,
    Progress,
    Ready,
    Reopen,
    Report,
    Stop,
    Stored,
    StoredOutcome,
    Unstored,
    decode_command,
    decode_report,
)
from taskschedd.store.base import Store

TOKEN = "0123456789abcdef0123456789abcdef"

REPORTS: list[Report] = [
    Ready(),
    Stored(),
    Stored(
        outcomes=(
            StoredOutcome(TOKEN, "DONE", settled=True, started=True, runtime=0.123456),
            StoredOutcome("t2", "WAITING", settled=False, started=False, runtime=0.0),
            StoredOutcome("t3", "FAILED", runtime=None),
        ),
        claimed=(
            ClaimedJob("id-1", TOKEN, "pkg.jobs.Add", 1, "default", 0.0),
            ClaimedJob("id-2", "t2", "pkg.jobs.Sleep", 3, "q é", 2.5),
            ClaimedJob("id-3", "t3", "pkg.jobs.Grow", 1, "default", 0.0, 2048),
        ),
    ),
    Unstored(("a", "b"), why="disk full", error="database or disk is full"),
    Unstored((), why="unavailable", error=""),
    Claim(TOKEN, 1764638400.25, 26_230_784),
    Claim(TOKEN, None),
    Progress("id-1", TOKEN, 42.5),
    Exit("recycled after 100 jobs"),
    Exit("its job's lease was not renewed in time (killed)"),
]


@pytest.mark.parametrize("report", REPORTS, ids=lambda r: type(r).__name__)
def test_every_report_decodes_to_what_was_encoded(report: Report) -> None:
    line = report.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1, "one line each"
    assert len(line) < 4096, "under PIPE_BUF: written whole"
    assert decode_report(line) == report
    assert decode_report(line.decode()) == report


def test_the_wire_format_is_the_one_both_sides_always_spoke() -> None:
    """Mixed versions never meet (the master forks its workers), but the format is what
    the module docstring documents."""
    stored = Stored((StoredOutcome("t", "DONE", runtime=1.23456789),),
                    (ClaimedJob("i", "t", "m.C", 2, "q", 5.0, 512),))  # fmt: skip
    assert json.loads(stored.encode()) == {
        "ev": "stored",
        "settled": [["t", "DONE", True, True, 1.234568]],
        "claimed": [["i", "t", "m.C", 2, "q", 5.0, 512]],
    }
    assert Ready().encode() == b'{"ev":"ready"}\n'
    assert json.loads(Claim("t", 5.0, 1 << 25).encode()) == {
        "ev": "claim", "token": "t", "started": 5.0, "rss": 1 << 25,
    }  # fmt: skip
    # A claim without the worker's memory (or a bad one): no baseline, the whole group.
    assert decode_report(b'{"ev":"claim","token":"t","started":5}') == Claim("t", 5.0, 0)
    assert decode_report(b'{"ev":"claim","token":"t","rss":-1}') == Claim("t", None, 0)


COMMANDS: list[Command] = [
    Stop(),
    Reopen(),
    Drop((TOKEN,)),
    Drop(("a", "b")),
    LeaseConfirmed(12.5, 42.25),
    LeaseConfirmed(1234.000000123, 1264.000000123, (TOKEN, "b")),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_every_command_decodes_to_what_was_encoded(command: Command) -> None:
    line = command.encode()
    assert "\n" not in line
    assert decode_command(line) == command
    assert decode_command(line + "\n") == command


def test_a_renewal_is_split_into_confirmations_that_each_fit_in_one_pipe_write() -> None:
    tokens = [f"{i:032x}" for i in range(150)]
    parts = LeaseConfirmed.split(12.5, 42.25, tokens)
    assert len(parts) == 3 and all(len(p.tokens) <= TOKENS_PER_LINE for p in parts)
    assert all(len(p.encode().encode()) + 1 <= 4096 for p in parts)  # PIPE_BUF: written whole
    decoded = [decode_command(p.encode()) for p in parts]
    assert decoded == parts
    assert [t for p in parts for t in p.tokens] == tokens
    assert {(p.done, p.deadline) for p in parts} == {(12.5, 42.25)}
    assert LeaseConfirmed.split(1.0, 2.0, []) == [LeaseConfirmed(1.0, 2.0)]
    assert LeaseConfirmed(1.0, 2.0).encode() == "lease 1.0 2.0"


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"\xff\xfe",
        b"{",
        b"[1, 2]",
        b"42",
        b"null",
        b'"ready"',
        b"{}",
        b'{"ev": 3}',
        b'{"ev": ["stored"]}',
        b'{"ev": {"a": 1}}',
        b'{"ev": "stored", "settled": 7}',
        b'{"ev": "stored", "settled": {"a": 1}}',
        b'{"ev": "stored", "claimed": "abc"}',
        b'{"ev": "claim"}',
        b'{"ev": "claim", "token": 5}',
        b'{"ev": "progress", "id": "i", "token": "t", "percent": "half"}',
        b'{"ev": "progress", "id": "i", "token": "t", "percent": true}',
        b'{"ev": "progress", "token": "t", "percent": 5}',
        b'{"ev": "unstored", "tokens": "abc"}',
        b'{"ev": "unstored", "tokens": [1, 2]}',
        b'{"ev": "unstored", "tokens": [], "why": 3}',
        b'{"ev": "exit", "reason": 5}',
    ],
)
def test_a_malformed_report_raises_the_one_error_the_master_handles(line: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_report(line)


def test_a_report_of_an_unknown_kind_is_ignored() -> None:
    assert decode_report(b'{"ev": "hello", "x": [1]}') is None


def test_bad_items_of_a_stored_line_are_counted_and_the_good_ones_kept() -> None:
    """One line carries a whole store write: an item that does not decode must not hide
    the outcomes and claims beside it (the master logs one warning per bad item)."""
    good = StoredOutcome("t1", "DONE", runtime=0.5)
    claim = ClaimedJob("i", "t9", "m.C", 1, "q", 0.0)
    line = json.dumps({
        "ev": "stored",
        "settled": [good.to_wire(), ["t2", "DONE"], "abcde", [1, "DONE", True, True, 0], None],
        "claimed": [claim.to_wire(), ["i", "t", "m.C", "one", "q", 0], [1, 2, 3, 4, 5, 6]],
    })  # fmt: skip
    stored = decode_report(line)
    assert isinstance(stored, Stored)
    assert stored.outcomes == (good,) and stored.bad_outcomes == 4
    assert stored.claimed == (claim,) and stored.bad_claims == 2


def test_lenient_fields_keep_what_the_master_did_with_them() -> None:
    """Fields the master can do without: a runtime or start time that is not a number
    (it uses its own clock), a claim without a timeout, an unstored line without why."""
    stored = decode_report(b'{"ev":"stored","settled":[["t","DONE",null,0,"x"]],'
                           b'"claimed":[["i","t","m.C",1,"q",null]]}')  # fmt: skip
    assert stored == Stored((StoredOutcome("t", "DONE", settled=True, started=True,
                                           runtime=None),),
                            (ClaimedJob("i", "t", "m.C", 1, "q", 0.0),))  # fmt: skip
    assert decode_report(b'{"ev":"claim","token":"t","started":"soon"}') == Claim("t", None)
    assert decode_report(b'{"ev":"unstored","tokens":["t"]}') == Unstored(("t",), "unavailable")
    assert decode_report(b'{"ev":"exit"}') == Exit("")
    assert decode_report(b'{"ev":"stored","settled":[["t","DONE",false,true,1]]}') == Stored(
        (StoredOutcome("t", "DONE", settled=False, started=True, runtime=1.0),)
    )


@pytest.mark.parametrize(
    "line", ["lease", "lease 1.0", "lease x 2.0", "lease 1.0 y t", "stop now", "reopen x", "drop"]
)
def test_a_malformed_command_raises(line: str) -> None:
    with pytest.raises(MalformedMessage):
        decode_command(line)


@pytest.mark.parametrize("line", ["", "   ", "hello", "renew 1 2"])
def test_an_empty_or_unknown_command_is_ignored(line: str) -> None:
    assert decode_command(line) is None


@pytest.fixture
def handle() -> Iterator[tuple[WorkerHandle, int]]:
    """A master's handle on a worker's report pipe, and the worker's end."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    now = time.monotonic()
    h = WorkerHandle(pid=0, name="n/0", report_fd=r, control_fd=-1, extra=False,
                     spawned=now, idle_since=now)  # fmt: skip
    try:
        yield h, w
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):  # the test closed w already
                os.close(fd)


def test_the_master_reads_reports_past_garbage_and_across_partial_writes(
    handle: tuple[WorkerHandle, int],
) -> None:
    h, w = handle
    claim = Claim(TOKEN, 5.0)
    line = claim.encode()
    os.write(w, Ready().encode() + b"garbage\n[1]\n" + b'{"ev":"new-kind"}\n' + line[:7])
    assert list(h.reports()) == [Ready(), None, None]
    os.write(w, line[7:] + b"\n\n" + Exit("stop").encode())
    assert list(h.reports()) == [claim, Exit("stop")]
    os.close(w)
    assert list(h.reports()) == [] and h.eof


def test_garbage_on_a_report_pipe_never_ends_the_master(
    handle: tuple[WorkerHandle, int], capsys: pytest.CaptureFixture[str]
) -> None:
    """Lines that decode as JSON but are no report (a number, a list, a progress whose
    percent is not a number) ended the master's loop with an AttributeError or a
    ValueError; each is now logged and skipped, and the reports after them count."""
    from taskschedd.config import Config
    from taskschedd.master import Master
    from taskschedd.supervise import Supervisor

    h, w = handle
    master = Master(Config())
    master.jobs = Supervisor(master.config, master.workers, master.log, cast(Store, None))
    master.workers[h.pid] = h
    h.ready = True
    h.job = RunningJob(id="i", token="t", cls="m.C", attempt=1, queue="q", timeout=0.0,
                       started=time.time())  # fmt: skip
    garbage = [b"42", b"[1, 2]", b'"x"', b"{}", b'{"ev":"stored","settled":7}',
               b'{"ev":"progress","id":"i","token":"t","percent":"half"}',
               b'{"ev":"claim","token":null}', b"\xff"]  # fmt: skip
    os.write(w, b"\n".join(garbage) + b"\n" + Progress("i", "t", 50.0).encode())
    master._read_worker(h)
    assert h.job.progress == 50.0, "the report after the garbage is read"
    err = capsys.readouterr()
    assert (err.out + err.err).count("unreadable message from a worker") == len(garbage)
