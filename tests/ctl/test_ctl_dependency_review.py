"""Review of issue 14 (CLI and API side): stats shows BLOCKED, retry says when a dependent
is canceled again and which dependents stay canceled, messages about unknown or later
dependencies, chain and group with steps that already name what they wait on."""

from __future__ import annotations

import json
import re
import time

import pytest

from taskschedd.errors import OptionError
from taskschedd.model import JobStatus
from taskschedd.scheduler import JobSpec
from tests.ctl.harness import ECHO, FAIL, CtlHarness


def added_id(out: str) -> str:
    return str(json.loads(out)["id"])


def after(ctl: CtlHarness, *deps: str) -> str:
    args = [a for d in deps for a in ("--after", d)]
    res = ctl.run("add", ECHO, *args, "--json")
    assert res.code == 0, res
    return added_id(res.out)


# -- stats --------------------------------------------------------------------------------


def test_stats_has_a_blocked_column_and_json_is_unchanged(ctl: CtlHarness) -> None:
    first = ctl.add(ECHO, at=time.time() + 3600)
    after(ctl, first)
    res = ctl.proc("stats")
    assert res.code == 0, res
    summary = res.out.splitlines()[1]
    assert summary.split() == [
        "WAITING", "0", "POSTPONED", "1", "PROCESSING", "0", "DONE", "0", "FAILED", "0",
        "CANCELED", "0", "TIMEOUT", "0", "BLOCKED", "1", "(total", "2)",
    ]  # fmt: skip
    lines = res.out.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["QUEUE"])
    assert header.split()[-3:] == ["BLOCKED", "OLDEST", "WAITING"]
    default = next(line for line in lines if line.split()[:1] == ["default"])
    assert default.split()[1:] == ["0", "1", "0", "0", "0", "0", "0", "1", "-"]
    klass = next(line for line in lines if line.split()[:1] == [ECHO])
    assert klass.split()[-1] == "1"  # the class table's BLOCKED column
    doc = json.loads(ctl.run("stats", "--json").out)
    assert doc["by_status"] == {"POSTPONED": 1, "BLOCKED": 1}
    assert doc["by_queue"] == {"default": {"POSTPONED": 1, "BLOCKED": 1}}


def test_stats_text_shows_a_status_no_column_names() -> None:
    from taskschedctl.output import stats_text

    text = stats_text({"by_status": {"WAITING": 1, "UNKNOWN": 2}})
    assert "TIMEOUT 0  BLOCKED 0  UNKNOWN 2  (total 3)" in text


# -- retry --------------------------------------------------------------------------------


def failed_job(ctl: CtlHarness) -> str:
    job = ctl.add(FAIL)
    ctl.run_jobs()
    assert ctl.job(job).status is JobStatus.FAILED
    return job


def test_retry_of_a_dependent_whose_dependency_still_failed_says_so_and_exits_1(
    ctl: CtlHarness,
) -> None:
    a = failed_job(ctl)
    b = after(ctl, a)
    assert ctl.job(b).status is JobStatus.CANCELED
    res = ctl.proc("retry", b)
    assert res.code == 1, res
    assert res.out == ""
    assert res.err.strip() == (
        f"taskschedctl: error: {b} CANCELED again: dependency {a} ended FAILED; "
        f"retry {a} first (then {b})"
    )
    assert ctl.job(b).status is JobStatus.CANCELED
    res = ctl.run("retry", b, "--json")  # the job as it is now, and still exit 1
    assert res.code == 1 and [j["status"] for j in json.loads(res.out)] == ["CANCELED"], res


def test_retry_of_a_dependent_whose_dependency_was_purged_says_it_cannot_run(
    ctl: CtlHarness,
) -> None:
    a = failed_job(ctl)
    b = after(ctl, a)  # canceled at once: nothing waits on a any more
    assert ctl.run("purge", "--status", "failed", "--older-than", "0", "--yes").code == 0
    assert [j.id for j in ctl.jobs()] == [b]
    res = ctl.run("retry", b)
    assert res.code == 1, res
    assert f"{b} CANCELED again: dependency {a} no longer exists" in res.err


def test_retrying_a_dependency_says_how_many_dependents_stay_canceled(ctl: CtlHarness) -> None:
    a = failed_job(ctl)
    b = after(ctl, a)
    c = after(ctl, b)
    d = after(ctl, a)
    assert {ctl.job(i).status for i in (b, c, d)} == {JobStatus.CANCELED}
    res = ctl.proc("retry", a)
    assert res.code == 0, res
    assert res.out.strip() == (
        f"{a} WAITING (re-queued); 3 dependent(s) it canceled stay CANCELED: "
        "retry them too (after it)"
    )
    assert {ctl.job(i).status for i in (b, c, d)} == {JobStatus.CANCELED}


def test_retrying_a_dependency_with_its_dependents_in_one_call(ctl: CtlHarness) -> None:
    a = failed_job(ctl)
    b = after(ctl, a)
    ctl.sched().cancel_job(ctl.add(ECHO))  # canceled by hand: not a dependent, not counted
    res = ctl.run("retry", a, b)
    assert res.code == 0, res
    assert res.out.splitlines() == [f"{a} WAITING (re-queued)", f"{b} BLOCKED (re-queued)"]


def test_retrying_a_dependency_does_not_count_dependents_canceled_by_hand(
    ctl: CtlHarness,
) -> None:
    a = failed_job(ctl)
    ctl.sched().retry_job(a)  # WAITING again
    b = after(ctl, a)
    ctl.sched().cancel_job(b)  # canceled by hand, not by a's failure
    ctl.run_jobs()
    assert ctl.job(a).status is JobStatus.FAILED
    res = ctl.run("retry", a)
    assert res.code == 0 and res.out.strip() == f"{a} WAITING (re-queued)", res


# -- messages -----------------------------------------------------------------------------


def test_an_unknown_dependency_is_named_and_no_generated_id(ctl: CtlHarness) -> None:
    ctl.add(ECHO)
    res = ctl.proc("add", ECHO, "--after", "nope")
    assert res.code == 2, res
    assert "option 'depends_on': no job with id 'nope'" in res.err
    assert not re.search("[0-9a-f]{32}", res.err), res  # the id of a job never written
    assert len(ctl.jobs()) == 1


def test_many_unknown_dependencies_make_a_short_message(ctl: CtlHarness) -> None:
    sched = ctl.sched()
    missing = [f"gone-{i}" for i in range(10_000)]
    with pytest.raises(OptionError) as err:
        sched.add_job(ECHO, depends_on=missing)
    text = str(err.value)
    assert len(text) < 400, text
    assert "no job with ids 'gone-0', 'gone-1', " in text
    assert "'gone-9' and 9990 more" in text and "gone-10'" not in text


def test_an_unknown_dependency_in_a_batch_names_the_job_by_its_place(ctl: CtlHarness) -> None:
    sched = ctl.sched()
    with pytest.raises(OptionError) as err:
        sched.add_jobs([JobSpec(ECHO), JobSpec(ECHO, {}, {"depends_on": ["nope"]})])
    assert str(err.value).startswith("job #1: option 'depends_on': no job with id 'nope'")
    assert "earlier in the same call" in str(err.value)
    assert ctl.jobs() == []


def test_a_batch_job_depending_on_a_later_one_is_refused(ctl: CtlHarness) -> None:
    sched = ctl.sched()
    sched.add_job(ECHO, id="old")
    with pytest.raises(OptionError) as err:
        sched.add_jobs([
            JobSpec(ECHO, {}, {"id": "x", "depends_on": ["old"]}),
            JobSpec(ECHO, {}, {"id": "y", "depends_on": ["old", "z"]}),
            JobSpec(ECHO, {}, {"id": "z"}),
        ])  # fmt: skip
    assert str(err.value) == (
        "job #1 of the batch depends on job #2 (id 'z'), which comes later in it: a job "
        "may depend only on jobs added before it or earlier in the same call; reorder them"
    )
    assert [j.id for j in ctl.jobs()] == ["old"]


def test_chain_and_group_accept_steps_that_already_name_what_they_wait_on(
    ctl: CtlHarness,
) -> None:
    sched = ctl.sched()
    other = sched.add_job(ECHO, at=time.time() + 3600).id
    steps = sched.chain([
        JobSpec(ECHO, {}, {"id": "s1"}),
        JobSpec(ECHO, {}, {"id": "s2", "depends_on": [other, "s1"]}),
        JobSpec(ECHO, {}, {"depends_on": "s2"}),
    ])  # fmt: skip
    assert [p.options.depends_on for p in steps] == [(), (other, "s1"), ("s2",)]
    *_, fan_in = sched.group(
        [JobSpec(ECHO, {}, {"id": "m1"}), JobSpec(ECHO, {}, {"id": "m2"})],
        then=JobSpec(ECHO, {}, {"depends_on": ["m2", other]}),
    )
    assert fan_in.options.depends_on == ("m1", "m2", other)
    assert fan_in.status is JobStatus.BLOCKED
