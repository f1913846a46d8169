"""Loading job classes: the allow-list is checked before anything is imported."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskschedd.errors import JobClassError
from taskschedd.job import Job
from taskschedd.loader import is_allowed, load_class, normalize, path_of, split_path
from tests import api_jobs


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A module that leaves a marker file when imported (so we can tell if it was)."""
    name = f"canary_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        "from pathlib import Path\n"
        "from taskschedd.job import Job\n"
        f"Path({str(marker)!r}).write_text('yes')\n"
        "class Work(Job):\n"
        "    def start(self):\n"
        "        return 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def test_disallowed_module_is_refused_before_import(canary: tuple[str, Path]) -> None:
    name, marker = canary
    with pytest.raises(JobClassError) as info:
        load_class(f"{name}.Work", ["tests", name[:6]])
    message = str(info.value)
    assert "not allowed" in message and f"module {name!r}" in message
    assert "allowed_modules (tests, canary)" in message
    assert not marker.exists()
    assert name not in sys.modules
    # Allowed, the very same module imports (the canary works).
    assert load_class(f"{name}.Work", [name]).__name__ == "Work"
    assert marker.read_text() == "yes"


@pytest.mark.parametrize("path", ["os.system", "subprocess.Popen", "builtins.eval"])
def test_stdlib_callables_are_refused(path: str) -> None:
    with pytest.raises(JobClassError, match=r"is not allowed"):
        load_class(path, ["taskschedd.examples", "tests.api_jobs"])


def test_allowed_but_not_a_job_is_refused() -> None:
    with pytest.raises(JobClassError, match=r"not a subclass of taskschedd\.Job"):
        load_class("os.system", ["os"])
    with pytest.raises(JobClassError, match=r"not a subclass of taskschedd\.Job"):
        load_class("tests.api_jobs.NotAJob", ["tests"])
    with pytest.raises(JobClassError, match=r"not a subclass of taskschedd\.Job"):
        load_class("tests.api_jobs.NOT_A_CLASS", ["tests"])


def test_allowed_job_classes_load() -> None:
    assert load_class("tests.api_jobs.Echo", ["tests.api_jobs"]) is api_jobs.Echo
    assert load_class("tests.api_jobs:Fail", ["tests"]) is api_jobs.Fail
    assert load_class("tests.api_jobs.Echo", ["*"]) is api_jobs.Echo
    assert issubclass(load_class("taskschedd.examples.jobs.Add", ["taskschedd.examples"]), Job)


def test_missing_module_and_missing_class() -> None:
    with pytest.raises(JobClassError, match=r"cannot import module 'tests.no_such_module'"):
        load_class("tests.no_such_module.Job", ["tests"])
    with pytest.raises(JobClassError, match=r"module 'tests.api_jobs' has no 'Nope'"):
        load_class("tests.api_jobs.Nope", ["tests"])


def test_module_that_fails_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('no config here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(JobClassError) as info:
        load_class(f"{name}.Job", [name])
    assert f"importing {name!r} failed: RuntimeError: no config here" in str(info.value)
    sys.modules.pop(name, None)


def test_allow_list_matches_whole_module_names() -> None:
    assert is_allowed("myapp", ["myapp"])
    assert is_allowed("myapp.jobs.mail", ["myapp"])
    assert is_allowed("myapp.jobs", ["other", "myapp.jobs"])
    assert not is_allowed("myapp_evil", ["myapp"])
    assert not is_allowed("myapp", ["myapp.jobs"])
    assert not is_allowed("anything", [])
    assert is_allowed("anything", ["*"])


@pytest.mark.parametrize(
    ("path", "module", "name"),
    [
        ("a.B", "a", "B"),
        ("a.b.C", "a.b", "C"),
        ("a.b:C", "a.b", "C"),
        ("_a1.b_2.C_3", "_a1.b_2", "C_3"),
    ],
)
def test_class_path_shapes(path: str, module: str, name: str) -> None:
    assert split_path(path) == (module, name)
    assert normalize(path) == f"{module}.{name}"


@pytest.mark.parametrize(
    "bad", ["", "Foo", "a..B", "a.", ".a", "a:b:C", "a-b.C", "a b.C", "1a.B", "a.b:", "a:B.c"]
)
def test_bad_class_paths_say_what_is_expected(bad: str) -> None:
    with pytest.raises(JobClassError) as info:
        split_path(bad)
    assert f"job class {bad!r} is not valid" in str(info.value)
    assert "myapp.jobs.SendMail" in str(info.value)
    with pytest.raises(JobClassError):
        load_class(bad, ["*"])


def test_path_of_needs_an_importable_top_level_class() -> None:
    assert path_of(api_jobs.Echo) == "tests.api_jobs.Echo"

    class Local(Job):
        pass

    with pytest.raises(JobClassError, match=r"define it at the top level"):
        path_of(Local)

    main_class = type("InMain", (Job,), {"__module__": "__main__"})
    with pytest.raises(JobClassError, match=r"cannot be imported by a worker"):
        path_of(main_class)
