"""Scheduler() with nothing that names a store says what would have named one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskschedd import Scheduler
from taskschedd.config import DEFAULT_CONFIG_PATH
from taskschedd.errors import StoreMissing
from taskschedd.storeurl import DEFAULT_PATH


def test_no_store_named_anywhere_is_store_missing_naming_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if os.path.exists(DEFAULT_CONFIG_PATH) or os.path.exists(DEFAULT_PATH):
        pytest.skip("this machine has a node's default configuration or store")
    for name in ("TASKSCHED_STORE", "TASKSCHED_STORE_FILE", "TASKSCHED_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StoreMissing) as err:
        Scheduler()
    text = str(err.value)
    assert "$TASKSCHED_CONFIG" in text and "$TASKSCHED_STORE" in text and DEFAULT_PATH in text
    assert not os.path.exists(DEFAULT_PATH)  # nothing created


def test_the_default_configuration_file_names_the_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As taskschedctl does: /etc/taskschedd/taskschedd.yaml when no variable is set."""
    store = f"{tmp_path}/store/t.db"
    config = f"{tmp_path}/taskschedd.yaml"
    with open(config, "w") as f:
        f.write(f"store: sqlite://{store}\nallowed_modules: [taskschedd.examples]\n")
    for name in ("TASKSCHED_STORE", "TASKSCHED_STORE_FILE", "TASKSCHED_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("taskschedd.config.DEFAULT_CONFIG_PATH", config)
    with Scheduler(create=True) as sched:
        assert sched.config_source == config
        sched.add_job("taskschedd.examples.jobs.Echo")
    assert os.path.exists(store)
