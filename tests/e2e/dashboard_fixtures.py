"""The dashboard under test: a real ``taskschedctl dashboard`` subprocess on a free
loopback port, and a headless Chromium driven by selenium (both killed at teardown).

The dashboard test files import the fixtures (``dashboard_factory``, ``browser``: the
functions have other names, so that a test's parameter does not shadow the import).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.e2e.conftest import REPO, E2EStore
from tests.helpers import wait_for

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "t0ken-for-the-dashboard-tests-0123456789"
#: The line taskschedctl dashboard writes once it listens.
_READY = re.compile(r"taskschedctl dashboard: (http://\S+/) ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def ctl_env(**extra: str) -> dict[str, str]:
    """The environment of a taskschedctl subprocess: none of the caller's TASKSCHED_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


def ctl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "taskschedctl.cli", *args]


class DashboardProc:
    """One ``taskschedctl dashboard`` process (its own session, killed with it)."""

    def __init__(self, argv: list[str], env: dict[str, str], stderr: Path) -> None:
        self.argv = argv
        self.stderr_path = stderr
        with open(stderr, "ab") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        self.url = ""

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def wait_ready(self, timeout: float = 20.0) -> str | None:
        """The URL it serves, or None when it exited first."""

        def state() -> tuple[str | None] | None:
            match = _READY.search(self.stderr)
            if match and listening(int(match[1].rsplit(":", 1)[1].rstrip("/"))):
                return (match[1],)
            if self.proc.poll() is not None:
                return (None,)
            return None

        found = wait_for(state, timeout, interval=0.05, message=lambda: f"dashboard: {self.stderr}")
        assert found is not None  # wait_for returns a truthy value
        url = found[0]
        if url is not None:
            self.url = url.rstrip("/")
        return url

    def terminate(self, timeout: float) -> float:
        """SIGTERM, as systemd stops it; the seconds it took to exit."""
        start = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout)
        return time.monotonic() - start

    def kill(self) -> None:
        """At teardown: SIGKILL to its session (a graceful stop is tested on its own)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def dashboard_config(e2e_store: E2EStore, path: Path, **dashboard: Any) -> Path:
    """A configuration file naming the test's store (and a dashboard section)."""
    config: dict[str, Any] = {"store": e2e_store.url, **e2e_store.daemon_config}
    if dashboard:
        config["dashboard"] = dashboard
    path.write_text(yaml.safe_dump(config))
    return path


StartDashboard = Callable[..., DashboardProc]


@pytest.fixture(name="dashboard_factory")
def dashboard_factory_fixture(
    tmp_path: Path, e2e_store: E2EStore, request: pytest.FixtureRequest
) -> Iterator[StartDashboard]:
    """start(*extra_args, env={...}, listen_host="127.0.0.1") -> a serving dashboard on
    this test's store (through a configuration file naming it)."""
    made: list[DashboardProc] = []
    config = dashboard_config(e2e_store, tmp_path / "dashboard.yaml")
    with e2e_store.open() as store:  # it serves a store that exists, as a node's
        store.last_event_seq()

    def start(
        *args: str, env: dict[str, str] | None = None, listen_host: str = "127.0.0.1"
    ) -> DashboardProc:
        # A free port can be taken between the probe and the bind: try again then.
        for _ in range(3):
            port = free_port()
            argv = ctl_command(
                "dashboard", "-c", str(config), "--listen", f"{listen_host}:{port}", *args
            )
            dash = DashboardProc(argv, ctl_env(**(env or {})), tmp_path / f"dash{len(made)}.err")
            made.append(dash)
            if dash.wait_ready() is not None:
                return dash
            if "in use" not in dash.stderr:
                break
        raise AssertionError(f"the dashboard did not start: {dash.stderr}")

    yield start
    failed = getattr(request.node, "rep_call", None)
    for dash in made:
        if failed is not None and failed.failed:
            print(f"--- dashboard stderr ---\n{dash.stderr[-4000:]}")
        dash.kill()


def _need_browser() -> None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.skip(
                f"{path} is not installed (Debian: apt-get install chromium chromium-driver)"
            )
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")


@pytest.fixture(name="browser")
def browser_fixture(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium, 1280x900, with the browser console log kept."""
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--window-size=1280,900",
        "--no-sandbox",  # containers without user namespaces
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_dir(tmp_path: Path) -> Path:
    """$TASKSCHED_TEST_SCREENSHOTS (the docs' screenshot is made with it), else tmp_path."""
    given = os.environ.get("TASKSCHED_TEST_SCREENSHOTS")
    path = Path(given) if given else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_png(path: Path) -> bool:
    data = path.read_bytes() if path.exists() else b""
    return len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" in data[-16:]
