"""Honest answers from taskschedctl (issue 13, items 5, 7, 8, 10, 11), without a daemon:
warnings for what cannot be checked or will not run, outcomes printed by wait, the source
of the store named by check, DATA's default, text shown as text but never obeyed by the
terminal, and dict keys that JSON cannot keep. The CLI runs as a real process."""

from __future__ import annotations

import json
import time

import pytest

from taskschedd import Scheduler
from taskschedd.errors import JobDataError
from taskschedd.model import JobQuery, NodeRecord
from tests.ctl.harness import ALLOWED, ECHO, FAIL, CtlHarness

NOT_CHECKED = "was not checked against allowed_modules: no configuration was given"


def _heartbeat(ctl: CtlHarness, name: str, age: float, queues: tuple[str, ...]) -> None:
    now = time.time()
    ctl.store().heartbeat(
        NodeRecord(name=name, host="h", pid=1, started=now - 60, heartbeat=now - age, queues=queues)
    )


# -- item 5: add without a configuration cannot check allowed_modules ------------------------


def test_add_without_a_config_warns_that_the_class_was_not_checked(ctl: CtlHarness) -> None:
    ctl.store().nodes()  # the store exists: TASKSCHED_STORE alone, as the README's first steps
    res = ctl.proc("add", "os.system", '"id"', store=False, env={"TASKSCHED_STORE": ctl.url})
    assert res.code == 0, res  # the node is the authority: the job is still added
    assert f"taskschedctl: warning: os.system {NOT_CHECKED}" in res.err, res
    assert "-c FILE or TASKSCHED_CONFIG" in res.err
    (job,) = ctl.jobs()
    assert job.cls == "os.system" and res.out.strip() == job.id
    res = ctl.proc("add", ECHO)  # --store alone: the same
    assert res.code == 0 and NOT_CHECKED in res.err, res


def test_add_with_a_config_checks_and_does_not_warn(ctl: CtlHarness) -> None:
    ctl.store().nodes()
    config = ctl.config(f"store: {ctl.url}\nallowed_modules: [{ALLOWED[0]}]\n")
    res = ctl.proc("add", ECHO, store=False, env={"TASKSCHED_CONFIG": str(config)})
    assert res.code == 0 and "allowed_modules" not in res.err, res
    res = ctl.proc("add", "os.system", '"id"', store=False, env={"TASKSCHED_CONFIG": str(config)})
    assert res.code == 2 and "not in allowed_modules" in res.err, res
    assert len(ctl.jobs()) == 1


# -- item 7: wait prints the outcome ---------------------------------------------------------


def test_wait_prints_the_result_or_the_error_of_each_job(ctl: CtlHarness) -> None:
    ok = ctl.add(ECHO, {"sum": 3, "text": "a b"})
    bad = ctl.add(FAIL, {"message": "no route\nto host"})
    ctl.run_jobs()
    res = ctl.proc("wait", ok, bad)
    assert res.code == 1, res
    assert res.out.splitlines() == [
        f'{ok} DONE result={{"sum":3,"text":"a b"}}',
        f"{bad} FAILED reason=exception error=RuntimeError: no route\\nto host",
    ]
    res = ctl.proc("wait", ok, bad, "--json")
    assert res.code == 1, res
    done, failed = json.loads(res.out)
    assert (done["status"], done["result"], done["error"]) == (
        "DONE",
        {"sum": 3, "text": "a b"},
        None,
    )
    assert failed["status"] == "FAILED" and failed["reason"] == "exception"
    assert failed["error"]["type"] == "RuntimeError"
    assert failed["error"]["message"] == "no route\nto host"


def test_wait_timeout_prints_where_each_job_stands(ctl: CtlHarness) -> None:
    done = ctl.add(ECHO, [1])
    ctl.run_jobs()
    waiting = ctl.add(ECHO)
    res = ctl.proc("wait", done, waiting, "--timeout", "0.3s")
    assert res.code == 124, res
    assert res.out.splitlines() == [f"{done} DONE result=[1]", f"{waiting} WAITING progress=0%"]
    res = ctl.proc("wait", waiting, "--timeout", "0.3s", "--json")
    assert res.code == 124, res
    (doc,) = json.loads(res.out)
    assert (doc["id"], doc["status"], doc["error"]) == (waiting, "WAITING", None)


# -- item 8: no live node -------------------------------------------------------------------


def test_add_and_wait_warn_when_no_live_node_serves_the_queue(ctl: CtlHarness) -> None:
    ctl.store().nodes()
    res = ctl.proc("add", ECHO, "--queue", "batch", "--wait=0.3s")
    assert res.code == 124, res
    assert "taskschedctl: warning: no live node serves queue batch" in res.err, res
    job_id = res.out.splitlines()[0]
    assert res.out.splitlines()[1] == f"{job_id} WAITING progress=0%"
    res = ctl.proc("wait", job_id, "--timeout", "0.2s")
    assert res.code == 124 and "no live node serves queue batch" in res.err, res
    # a live node serving other queues: named; a stale one that serves batch: not counted
    _heartbeat(ctl, "n1", 1, ("critical", "default"))
    _heartbeat(ctl, "n2", 600, ("batch",))
    res = ctl.proc("add", ECHO, "--queue", "batch")
    assert res.code == 0 and "no live node serves queue batch" in res.err, res
    assert "the live nodes serve critical, default" in res.err
    res = ctl.proc("add", ECHO, "--queue", "critical")
    assert res.code == 0 and "no live node" not in res.err, res
    _heartbeat(ctl, "n3", 1, ())  # a node that does not say which queues: it may serve any
    res = ctl.proc("add", ECHO, "--queue", "batch")
    assert res.code == 0 and "no live node" not in res.err, res
    assert len(ctl.jobs()) == 4  # the job is added all the same


def test_nodes_says_so_when_no_node_is_live(ctl: CtlHarness) -> None:
    ctl.store().nodes()
    res = ctl.proc("nodes")
    assert res.code == 0, res
    assert res.out == (
        "no live node (a node is live for 3 x its own heartbeat_interval after its heartbeat)\n"
    )
    assert ctl.proc("nodes", "--json").out == "[]\n"
    _heartbeat(ctl, "old", 600, ("default",))
    res = ctl.proc("nodes", "--stale-after", "1m")
    assert res.out == (
        "no live node (none has sent a heartbeat in the last 60s; 1 stale: --all shows them)\n"
    )
    assert json.loads(ctl.proc("nodes", "--json").out) == []
    ctl.store().remove_node("old")
    res = ctl.proc("nodes", "--all")
    assert res.out == "no node registered (a node removes its entry when it stops)\n", res


def test_check_min_nodes_fails_below_the_count(ctl: CtlHarness) -> None:
    ctl.store().nodes()
    res = ctl.proc("check")
    assert res.code == 0, res  # the default stays 0: a warning only
    assert "taskschedctl: warning: no live node" in res.err and "--min-nodes 1" in res.err
    res = ctl.proc("check", "--min-nodes", "1")
    assert res.code == 69, res
    assert "taskschedctl: error: 0 live nodes, fewer than --min-nodes 1" in res.err
    _heartbeat(ctl, "n1", 1, ("default",))
    res = ctl.proc("check", "--min-nodes", "1")
    assert res.code == 0 and res.err == "", res
    assert "1 live nodes" in res.out
    res = ctl.proc("check", "--min-nodes", "2")
    assert res.code == 69 and "1 live node, fewer than --min-nodes 2" in res.err, res
    res = ctl.proc("check", "--min-nodes", "-1")
    assert res.code == 2 and "--min-nodes" in res.err, res


# -- item 10: where the store came from; DATA's default -------------------------------------


def test_check_names_where_the_store_and_the_config_came_from(ctl: CtlHarness) -> None:
    ctl.store().nodes()
    env = {"TASKSCHED_STORE": ctl.url}
    res = ctl.proc("check", store=False, env=env)
    assert res.code == 0, res
    assert res.out.splitlines()[0] == "config: none (the store is given by TASKSCHED_STORE)"
    res = ctl.proc("check")
    assert res.out.splitlines()[0] == "config: none (the store is given by --store)"
    url_file = ctl.tmp / "store-url"
    url_file.write_text(ctl.url + "\n")
    url_file.chmod(0o600)
    res = ctl.proc("check", store=False, env={"TASKSCHED_STORE_FILE": str(url_file)})
    assert res.out.splitlines()[0] == (
        f"config: none (the store is given by TASKSCHED_STORE_FILE ({url_file}))"
    ), res
    config = ctl.config(f"store: {ctl.url}\n")
    res = ctl.proc("-c", str(config), "check", store=False, env=env)
    assert res.out.splitlines()[0] == f"config {config} (from -c): ok", res
    res = ctl.proc("check", store=False, env={"TASKSCHED_CONFIG": str(config)})
    assert res.out.splitlines()[0] == f"config {config} (from TASKSCHED_CONFIG): ok", res
    res = ctl.proc("check", "-c", str(config), "--store", ctl.url, store=False)
    assert res.out.splitlines()[0] == (
        f"config {config} (from -c): ok; its store is overridden by --store"
    ), res


def test_a_missing_data_is_an_empty_object_everywhere(ctl: CtlHarness) -> None:
    first = ctl.proc("add", "--once", ECHO)
    assert first.code == 0, first
    assert ctl.job(first.out.strip()).data == {}
    # the README's cron line gives '{}', the man page's none: the same job
    again = ctl.proc("add", "--once", ECHO, "{}")
    assert again.out == first.out, again
    sched = Scheduler(ctl.store())
    assert sched.add_job_once(ECHO).id == first.out.strip()
    assert sched.add_job(ECHO).data == {} and ctl.job(sched.add_job(ECHO).id).data == {}
    explicit = sched.add_job(ECHO, None)  # null stays possible, and is other data
    assert ctl.job(explicit.id).data is None
    assert sched.add_job_once(ECHO, None).id != first.out.strip()
    (batch,) = sched.add_jobs([(ECHO,)])
    assert ctl.job(batch.id).data == {}


# -- item 11: text as text, never obeyed; keys that JSON cannot keep -------------------------

EVIL = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202egnp.exe\u2028x"


def test_show_prints_text_as_text_and_no_terminal_controls(ctl: CtlHarness) -> None:
    data = {"name": "Zoë 🎉", "rtl": "שלום עולם", "evil": EVIL}
    job_id = ctl.add(FAIL, {**data, "message": f"bad {EVIL}\nline two"})
    ctl.run_jobs()
    res = ctl.proc("show", job_id)
    assert res.code == 0, res
    assert "Zoë 🎉" in res.out and "שלום עולם" in res.out
    assert "\\u001b]0;owned\\u0007\\u001b[2J\\u009b31m\\u202egnp.exe\\u2028x" in res.out
    assert "bad \\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202egnp.exe\\u2028x" in res.out
    for raw in ("\x1b", "\x07", "\x9b", "\u202e", "\u2028"):
        assert raw not in res.out + res.err, raw
    res = ctl.proc("show", job_id, "--json")  # UTF-8 JSON, the same values
    assert "Zoë 🎉" in res.out and "\x9b" not in res.out and "\u202e" not in res.out
    assert {k: v for k, v in json.loads(res.out)["data"].items() if k != "message"} == data
    res = ctl.proc("wait", job_id)  # the error on wait's line, and on stderr
    assert res.code == 1, res
    for raw in ("\x1b", "\x07", "\x9b", "\u202e", "\u2028"):
        assert raw not in res.out + res.err, raw
    assert "error=RuntimeError: bad \\x1b]0;owned" in res.out and "\\nline two" in res.out
    res = ctl.proc("events", "--job", job_id)
    assert res.code == 0 and "\x1b" not in res.out and "error=RuntimeError: bad \\x1b" in res.out


def test_show_in_an_ascii_locale_escapes_what_it_cannot_print(ctl: CtlHarness) -> None:
    job_id = ctl.add(ECHO, {"name": "Zoë 🎉"})
    res = ctl.proc("show", job_id, env={"PYTHONIOENCODING": "ascii"})
    assert res.code == 0 and "Traceback" not in res.err, res
    assert '"name": "Zo\\u00eb \\ud83c\\udf89"' in res.out  # JSON escapes, as before
    res = ctl.proc("show", job_id, "--json", env={"PYTHONIOENCODING": "ascii"})
    assert res.code == 0 and json.loads(res.out)["data"] == {"name": "Zoë 🎉"}, res


@pytest.mark.parametrize(
    ("data", "where", "key"),
    [
        ({1: "a"}, "data", "1 (int)"),
        ({"x": 1, 2: "y"}, "data", "2 (int)"),  # was: '<' not supported between ...
        ({"a": [{"b": 1}, {2.5: 3}]}, "data['a'][1]", "2.5 (float)"),
        ({"a": {"b": {None: 1}}}, "data['a']['b']", "None (NoneType)"),
        ([{"ok": {True: 1}}], "data[0]['ok']", "True (bool)"),
    ],
)
def test_non_string_keys_are_a_job_data_error_naming_where(
    ctl: CtlHarness, data: object, where: str, key: str
) -> None:
    sched = Scheduler(ctl.store())
    for add in (sched.add_job, sched.add_job_once):
        with pytest.raises(JobDataError) as info:
            add(ECHO, data)
        message = str(info.value)
        assert f"the key {key} in {where} is not a string" in message, message
        assert "keys of JSON objects must be strings" in message
    with pytest.raises(JobDataError, match=r"^job #1: job data: the key"):
        sched.add_jobs([(ECHO, {"fine": 1}), (ECHO, data)])
    assert ctl.store().find(JobQuery()) == []  # nothing written
