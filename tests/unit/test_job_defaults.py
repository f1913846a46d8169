"""Job defaults: the configuration's ``job_defaults`` and ``Scheduler(**defaults)`` take
the same options, from one definition (taskschedd.options.DEFAULT_KEYS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from taskschedd import Scheduler
from taskschedd.config import JOB_DEFAULT_KEYS, ConfigError, from_mapping
from taskschedd.errors import OptionError
from taskschedd.options import ALIASES, DEFAULT_KEYS, OPTION_NAMES

#: A valid value of every job option (and alias): a new option must be added here.
SAMPLES: dict[str, Any] = {
    "at": "2030-01-01T00:00:00Z",
    "interval": 60,
    "interval_reference": "start",
    "cron": "@hourly",
    "timezone": "Europe/Zurich",
    "limit": "reports",
    "exclusive_key": "customer:42",
    "retry": 2,
    "retry_interval": "10s",
    "retry_backoff": "exponential",
    "retry_backoff_max": "2h",
    "timeout": "1m",
    "max_memory": "512MB",
    "ignore_max_children": True,
    "ignore_data": True,
    "id": "job-1",
    "priority": 3,
    "queue": "bulk",
    "expires": "2031-01-01T00:00:00Z",
    "depends_on": ["a"],
    "on_dependency_failure": "run",  # refused as a default: only with depends_on
    "force_spawn": True,
}


def config_takes(name: str) -> bool:
    try:
        from_mapping({"job_defaults": {name: SAMPLES[name]}})
    except ConfigError:
        return False
    return True


def scheduler_takes(tmp_path: Path, key: str, value: Any) -> bool:
    try:
        Scheduler(f"sqlite:///{tmp_path}/s.db", create=True, **{key: value}).close()
    except OptionError:
        return False
    return True


def test_config_and_scheduler_take_exactly_the_same_defaults(tmp_path: Path) -> None:
    names = OPTION_NAMES + tuple(ALIASES)
    assert set(SAMPLES) == set(names)
    config = {n for n in names if config_takes(n)}
    plain = {n for n in names if scheduler_takes(tmp_path, n, SAMPLES[n])}
    prefixed = {n for n in names if scheduler_takes(tmp_path, f"default_{n}", SAMPLES[n])}
    assert config == plain == prefixed == set(DEFAULT_KEYS) | {"force_spawn"}
    assert set(JOB_DEFAULT_KEYS) == set(DEFAULT_KEYS)
    # the keys that the configuration lacked once
    assert {"cron", "retry_backoff_max", "ignore_max_children"} <= config
    # an option that names one job, or one add_job_once call, takes no default
    assert not {"id", "ignore_data"} & config


def test_a_default_given_twice_under_its_alias_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'ignore_max_children' given twice"):
        from_mapping({"job_defaults": {"force_spawn": True, "ignore_max_children": False}})
    with pytest.raises(OptionError, match="given twice"):
        Scheduler(f"sqlite:///{tmp_path}/s.db", force_spawn=True, ignore_max_children=False)


def test_job_defaults_of_a_config_reach_the_jobs_a_scheduler_adds(tmp_path: Path) -> None:
    config = tmp_path / "taskschedd.yaml"
    config.write_text(
        f"store: sqlite://{tmp_path}/store/s.db\n"
        "job_defaults:\n"
        "  cron: '@hourly'\n"
        "  retry_backoff_max: 2h\n"
        "  ignore_max_children: true\n"
    )
    with Scheduler(config=config, create=True) as sched:
        job = sched.get_job(sched.add_job("taskschedd.examples.jobs.Echo").id)
        assert (job.options.cron, job.options.retry_backoff_max) == ("@hourly", 7200.0)
        assert job.options.ignore_max_children is True
        assert job.record.at is not None and job.record.at % 3600 == 0  # the next full hour
        # an interval given with the job replaces the default cron
        other = sched.get_job(sched.add_job("taskschedd.examples.jobs.Echo", interval=60).id)
        assert (other.options.cron, other.options.interval) == (None, 60.0)
