"""show, list and cancel name a job's series (interval or cron) and whether it goes on.

A series' id is the id add_job returned (its first job, occurrence 0); its occurrences
are ``<series>.<n>``. The series is active while an occurrence waits or runs.
"""

from __future__ import annotations

import json
import re
import time

from taskschedd.model import JobStatus
from tests.ctl.harness import ECHO, CtlHarness

SERIES_LINE = re.compile(r"^series: +(\S+) \((active|ended), occurrence (\d+)\)$", re.M)


def series_line(out: str) -> tuple[str, str, int] | None:
    found = SERIES_LINE.search(out)
    return None if found is None else (found[1], found[2], int(found[3]))


def add_series(ctl: CtlHarness) -> tuple[str, str]:
    """An hourly series whose first job ran: (its id, its next occurrence's id)."""
    head = ctl.add(ECHO, {"n": 1}, interval=3600)
    ctl.run_jobs()
    nxt = f"{head}.1"
    assert ctl.job(head).status == JobStatus.DONE
    assert ctl.job(nxt).status == JobStatus.POSTPONED
    return head, nxt


def test_show_names_the_series_and_whether_it_is_still_active(ctl: CtlHarness) -> None:
    one_off = ctl.add(ECHO)
    head, nxt = add_series(ctl)
    res = ctl.proc("show", head)
    assert res.code == 0, res
    assert series_line(res.out) == (head, "active", 0), res.out
    assert series_line(ctl.run("show", nxt).out) == (head, "active", 1)
    assert "series:" not in ctl.run("show", one_off).out

    ctl.sched().cancel_job(nxt)
    assert series_line(ctl.run("show", head).out) == (head, "ended", 0)
    assert series_line(ctl.proc("show", nxt).out) == (head, "ended", 1)

    doc = json.loads(ctl.run("show", head, "--json").out)
    assert (doc["series"], doc["series_seq"], doc["series_active"]) == (head, 0, False)
    doc = json.loads(ctl.run("show", one_off, "--json").out)
    assert (doc["series"], doc["series_active"]) == (None, None)


def test_list_marks_series_jobs_only_when_there_are_some(ctl: CtlHarness) -> None:
    plain = ctl.add(ECHO)
    lines = ctl.run("list").out.splitlines()
    assert "SERIES" not in lines[0]  # no series listed: the table keeps its width

    head, nxt = add_series(ctl)
    later = ctl.add(ECHO, None, cron="0 0 1 1 *")  # its first job is due next January
    res = ctl.proc("list", "--all")
    assert res.code == 0, res
    lines = res.out.splitlines()
    assert lines[0].split() == [
        "ID", "CLASS", "STATUS", "QUEUE", "PRIO", "ATTEMPT", "PROGRESS", "SERIES", "AT/ENDED"
    ]  # fmt: skip
    column = lines[0].index("SERIES")
    marks = {line.split()[0]: line[column:].split("  ")[0] for line in lines[1:]}
    assert marks == {plain: "-", head: "#0 active", nxt: "#1 active", later: "#0 active"}
    assert len({line.index(line.split()[2]) for line in lines}) == 1  # still aligned

    ctl.sched().cancel_job(nxt)
    res = ctl.run("list", "--all")
    column = res.out.splitlines()[0].index("SERIES")
    marks = {line.split()[0]: line[column:].split("  ")[0] for line in res.out.splitlines()[1:]}
    assert (marks[head], marks[nxt], marks[later]) == ("#0 ended", "#1 ended", "#0 active")

    docs = {d["id"]: d for d in json.loads(ctl.run("list", "--all", "--json").out)}
    got = {i: (d["series"], d["series_seq"], d["series_active"]) for i, d in docs.items()}
    assert got == {
        plain: (None, 0, None),
        head: (head, 0, False),
        nxt: (head, 1, False),
        later: (later, 0, True),
    }
    jsonl = [json.loads(line) for line in ctl.run("list", "--jsonl").out.splitlines()]
    assert [(d["id"], d["series"], d["series_active"]) for d in jsonl] == [(later, later, True)]


def test_cancel_says_what_became_of_the_series(ctl: CtlHarness) -> None:
    head, nxt = add_series(ctl)
    res = ctl.proc("cancel", nxt)
    assert res.code == 0, res
    assert res.out.splitlines() == [f"{nxt} CANCELED; series {head} ended"]

    running = ctl.add(ECHO, None, interval=3600)
    claimed = ctl.store().claim(
        ["default"], node="n1", worker="w1", token="t1", lease=30, now=time.time()
    )
    assert claimed is not None and claimed.id == running
    res = ctl.run("cancel", running)
    assert res.code == 0, res
    assert res.out.splitlines() == [
        f"{running} cancel requested: running on n1, its node stops it; "
        f"series {running} ends when its running occurrence is stopped"
    ]
    one_off = ctl.add(ECHO)
    assert ctl.run("cancel", one_off).out.splitlines() == [f"{one_off} CANCELED"]
