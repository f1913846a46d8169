"""A Scheduler opened with a configuration adds only classes its nodes may import."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from taskschedd import Scheduler
from taskschedd.config import from_mapping
from taskschedd.errors import JobClassError
from taskschedd.model import JobQuery
from taskschedd.scheduler import JobSpec
from taskschedd.store.sqlite import SQLiteStore
from tests.api_jobs import Echo

ALLOWED = "taskschedd.examples.jobs.Echo"
REFUSED = "tests.api_jobs.Echo"  # importable, a Job, but not in allowed_modules


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "taskschedd.yaml"
    path.write_text(
        f"store: sqlite://{tmp_path}/store/s.db\nallowed_modules: [taskschedd.examples]\n"
    )
    return path


def stored_ids(url: str) -> list[str]:
    store = SQLiteStore(url)
    try:
        return [r.id for r in store.find(JobQuery())]
    finally:
        store.close()


def test_every_way_of_adding_refuses_a_class_outside_allowed_modules(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    url = f"sqlite://{tmp_path}/store/s.db"
    with Scheduler(config=config, create=True) as sched:
        kept = sched.add_job(ALLOWED).id
        attempts: list[Callable[[], object]] = [
            lambda: sched.add_job(REFUSED),
            lambda: sched.add_job(Echo),  # a class object: its path is checked
            lambda: sched.add_job_once(REFUSED, {"x": 1}),
            lambda: sched.add_jobs([JobSpec(ALLOWED), JobSpec(REFUSED)]),
            lambda: sched.add_jobs([(ALLOWED,), {"cls": Echo}]),
        ]
        for attempt in attempts:
            with pytest.raises(JobClassError) as info:
                attempt()
            # the message of taskschedctl add -c
            assert str(info.value).endswith(
                "is not allowed: module 'tests.api_jobs' is not in allowed_modules "
                f"(taskschedd.examples) of {config}; add it there or check the spelling"
            )
    assert stored_ids(url) == [kept]  # nothing else written, the batches neither


def test_a_config_given_as_an_object_or_by_the_environment_is_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    url = f"sqlite://{tmp_path}/store/s.db"
    cfg = from_mapping({"store": url, "allowed_modules": ["taskschedd.examples"]})
    with Scheduler(config=cfg, create=True) as sched, pytest.raises(JobClassError) as info:
        sched.add_job(REFUSED)
    assert str(info.value).endswith("(taskschedd.examples); add it to the configuration")
    monkeypatch.delenv("TASKSCHED_STORE", raising=False)
    monkeypatch.delenv("TASKSCHED_STORE_FILE", raising=False)
    monkeypatch.setenv("TASKSCHED_CONFIG", str(config))
    with Scheduler(create=True) as sched, pytest.raises(JobClassError, match=str(config)):
        sched.add_job(REFUSED)
    assert not (tmp_path / "store").exists()  # refused before the store was even opened


def test_without_a_config_any_class_is_accepted(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/store/s.db"
    with Scheduler(url, create=True) as sched:
        ids = [sched.add_job(REFUSED).id, sched.add_job(Echo).id]
        ids += [p.id for p in sched.add_jobs([JobSpec(REFUSED)])]
    assert sorted(stored_ids(url)) == sorted(ids)
