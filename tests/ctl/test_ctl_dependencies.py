"""add --after, show with dependencies and dependents, list --blocked, cascading cancel."""

from __future__ import annotations

import json
import time

from taskschedd.model import JobStatus
from tests.ctl.harness import ECHO, FAIL, CtlHarness


def added_id(out: str) -> str:
    return str(json.loads(out)["id"])


def test_add_after_blocks_until_the_dependency_is_done(ctl: CtlHarness) -> None:
    first = ctl.add(ECHO, {"n": 1}, at=time.time() + 3600)
    res = ctl.run("add", ECHO, '{"n": 2}', "--after", first, "--json")
    assert res.code == 0, res
    second = added_id(res.out)
    assert ctl.job(second).status is JobStatus.BLOCKED
    assert ctl.job(second).options.depends_on == (first,)
    res = ctl.run("list", "--blocked", "--json")
    assert [j["id"] for j in json.loads(res.out)] == [second]
    res = ctl.run("list", "--json")  # blocked jobs are listed by default
    assert [j["id"] for j in json.loads(res.out)] == [first, second]


def test_add_after_an_unknown_job_is_refused_and_nothing_written(ctl: CtlHarness) -> None:
    ctl.add(ECHO)
    res = ctl.run("add", ECHO, "--after", "nope")
    assert res.code != 0 and "option 'depends_on': no job with id 'nope'" in res.err, res
    assert len(ctl.jobs()) == 1


def test_show_lists_dependencies_and_dependents_with_their_statuses(ctl: CtlHarness) -> None:
    a = ctl.add(ECHO, {"n": 1})
    ctl.run_jobs()
    b = ctl.add(FAIL, at=time.time() + 3600)
    res = ctl.run("add", ECHO, "--after", a, "--after", b, "--on-dependency-failure", "run",
                  "--json")  # fmt: skip
    c = added_id(res.out)
    text = ctl.run("show", c).out
    assert f"dependencies:\n    {a} DONE\n    {b} POSTPONED\n" in text
    assert f"dependents:\n    {c} BLOCKED\n" in ctl.run("show", a).out
    shown = json.loads(ctl.run("show", c, "--json").out)
    assert shown["dependencies"] == [{"id": a, "status": "DONE"}, {"id": b, "status": "POSTPONED"}]
    assert shown["options"]["on_dependency_failure"] == "run"


def test_cancel_says_how_many_dependents_it_canceled(ctl: CtlHarness) -> None:
    a = ctl.add(ECHO, at=time.time() + 3600)
    b = added_id(ctl.run("add", ECHO, "--after", a, "--json").out)
    c = added_id(ctl.run("add", ECHO, "--after", b, "--json").out)
    res = ctl.run("cancel", a)
    assert res.code == 0, res
    assert res.out.strip() == f"{a} CANCELED, and 2 dependent(s) canceled"
    assert ctl.job(c).reason == f"dependency {b} ended CANCELED"
    assert f"status:      CANCELED (dependency {b} ended CANCELED)" in ctl.run("show", c).out
