"""The web dashboard in a real browser (headless Chromium via selenium) on both stores:
a real ``taskschedctl dashboard`` subprocess, a real daemon running the jobs, the
outcome of every action checked in the store (issue 16)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
import pytest

from taskschedd import JobStatus, Scheduler
from taskschedd.dashboard.settings import ENV_TOKEN
from taskschedd.model import JobQuery, NewJob
from taskschedd.options import JobOptions
from tests.e2e.conftest import BOTH_STORES, JOBS, Daemon, E2EStore
from tests.e2e.dashboard_fixtures import (  # noqa: F401  (fixtures: pytest finds them here)
    TOKEN,
    StartDashboard,
    browser_fixture,
    dashboard_factory_fixture,
    is_png,
    screenshot_dir,
)

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

pytestmark = BOTH_STORES

T = TypeVar("T")
ECHO = "taskschedd.examples.jobs.Echo"
#: A queue no test daemon serves: its jobs stay WAITING.
PARKED = "parked"
XSS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')
PAYLOAD = "".join(XSS)


# -- helpers -----------------------------------------------------------------------------


def until(driver: WebDriver, cond: Callable[[WebDriver], T | None], timeout: float = 20.0,
          message: str | Callable[[], str] = "condition") -> T:  # fmt: skip
    """WebDriverWait on ``cond`` (elements not there yet or replaced are retried)."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))  # fmt: skip
    try:
        found = wait.until(cond)
        assert found is not None  # until() returns only a truthy value
        return found
    except TimeoutException:
        text = message() if callable(message) else message
        raise AssertionError(f"timed out after {timeout:g}s waiting for {text}") from None


def texts(driver: WebDriver, selector: str) -> list[str]:
    """The rendered text of every match, read at one instant: a live refresh may replace
    the elements at any time, which element-by-element reads would trip over."""
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(function (e) { return e.innerText; });",
        selector,
    )
    return [str(t) for t in found]


def text(driver: WebDriver, selector: str) -> str:
    """The text of the first match, once there is one."""
    return until(driver, lambda d: texts(d, selector)[:1], message=selector)[0]


def css(driver: WebDriver, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def click(driver: WebDriver, selector: str) -> None:
    """Click, again if a live refresh replaced the element between find and click."""
    until(driver, lambda d: css(d, selector)[0].click() or True, message=f"to click {selector}")


def page_counts(driver: WebDriver) -> dict[str, int]:
    """The overview's status cards, read at one instant (not element by element)."""
    pairs = driver.execute_script(
        "return Array.from(document.querySelectorAll('[data-count]'))"
        ".map(function (e) { return [e.getAttribute('data-count'), e.textContent]; });"
    )
    return {name: int(text) for name, text in pairs}


def store_counts(sched: Scheduler) -> dict[str, int]:
    """What the store holds, counted here job by job (not by the store's counts())."""
    by_status = Counter(r.status.name for r in sched.store.find(JobQuery()))
    out = {s.name: by_status.get(s.name, 0) for s in JobStatus}
    out["TOTAL"] = sum(by_status.values())
    return out


def loaded(driver: WebDriver) -> bool:
    return bool(driver.execute_script("return document.readyState;") == "complete")


def listed_ids(driver: WebDriver) -> list[str]:
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll('table#jobs tbody tr[data-job-id]'))"
        ".map(function (e) { return e.getAttribute('data-job-id'); });"
    )
    return [str(i) for i in found]


def live(driver: WebDriver) -> bool:
    return texts(driver, "#live-state") == ["live"]


def console(driver: WebDriver) -> list[dict[str, Any]]:
    """The browser console since the last call (empty where the driver keeps none)."""
    try:
        return list(driver.get_log("browser"))  # type: ignore[no-untyped-call]
    except Exception:  # a driver without the log endpoint: nothing to check
        return []


def assert_no_csp_violation(driver: WebDriver) -> None:
    bad = [
        e for e in console(driver)
        if "Content Security Policy" in e.get("message", "") or "Uncaught" in e.get("message", "")
    ]  # fmt: skip
    assert not bad, bad


def assert_no_alert(driver: WebDriver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text


# -- 1. overview, live; 5. screenshots ---------------------------------------------------


def test_overview_counts_equal_the_store_and_follow_it_live(
    daemon_factory: Callable[..., Daemon],
    scheduler: Scheduler,
    dashboard_factory: StartDashboard,
    browser: WebDriver,
    e2e_store: E2EStore,
    tmp_path: Path,
) -> None:
    daemon_factory().start()
    first = [scheduler.add_job(ECHO, {"i": i}).id for i in range(6)]
    first += [scheduler.add_job(f"{JOBS}.Fail", {"message": f"failure {i}"}).id for i in range(2)]
    scheduler.add_job(ECHO, {"parked": True}, queue=PARKED)  # WAITING throughout
    scheduler.wait(first, timeout=20)
    dash = dashboard_factory()

    browser.get(dash.url + "/")
    until(browser, live, message="the live badge to say live")
    expected = store_counts(scheduler)
    assert expected["DONE"] == 6 and expected["FAILED"] == 2 and expected["WAITING"] == 1
    assert page_counts(browser) == expected
    assert css(browser, 'tr[data-node="n1"]'), "the running node is listed"

    # More jobs: the page follows without navigating (the marker survives).
    browser.execute_script("window.__dashboardTestMarker = 'kept';")
    more = [scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 0.2}).id for _ in range(8)]
    seen: list[int] = []

    def done_reached(d: WebDriver) -> bool:
        seen.append(page_counts(d)["DONE"])
        return seen[-1] == 14

    until(browser, done_reached, 30, message=lambda: f"DONE 14 on the page, saw {seen}")
    assert browser.execute_script("return window.__dashboardTestMarker;") == "kept"
    scheduler.wait(more, timeout=10)
    final = store_counts(scheduler)
    until(browser, lambda d: page_counts(d) == final, message=lambda: f"{final}")
    assert final["TOTAL"] == 17 and final["DONE"] == 14
    until(browser, lambda d: text(d, "#chart-summary").startswith("14 done, 2 failed"),
          message=lambda: f"the chart summary: {texts(browser, '#chart-summary')}")  # fmt: skip
    assert live(browser)
    assert browser.execute_script("return window.__dashboardTestMarker;") == "kept"
    assert_no_csp_violation(browser)

    # Screenshots (the README's comes from here with $TASKSCHED_TEST_SCREENSHOTS).
    shots = screenshot_dir(tmp_path)
    overview = shots / f"dashboard-overview-{e2e_store.kind}.png"
    assert browser.save_screenshot(str(overview))
    failed = scheduler.get_jobs("failed", limit=1)[0].id
    browser.get(f"{dash.url}/jobs/{failed}")
    until(browser, live, message="the job page's live badge")
    job = shots / f"dashboard-job-{e2e_store.kind}.png"
    assert browser.save_screenshot(str(job))
    assert is_png(overview) and is_png(job)


# -- 2. the jobs list: filters, pagination -----------------------------------------------


def test_jobs_list_filters_and_walks_every_page_once(
    scheduler: Scheduler, dashboard_factory: StartDashboard, browser: WebDriver
) -> None:
    echo = [f"pg-{i:03d}" for i in range(110)]
    sleep = [f"sl-{i}" for i in range(6)]
    canceled = [f"cn-{i}" for i in range(4)]
    scheduler.add_jobs([{"cls": ECHO, "data": {"i": i}, "id": i, "queue": PARKED} for i in echo])
    scheduler.add_jobs([{"cls": f"{JOBS}.Sleep", "id": i, "queue": PARKED} for i in sleep])
    for job_id in canceled:
        scheduler.add_job(ECHO, id=job_id, queue=PARKED)
        scheduler.cancel_job(job_id)
    everything = set(echo + sleep + canceled)
    dash = dashboard_factory()
    from selenium.webdriver.support.ui import Select

    def filtered(field: str, value: str) -> list[str]:
        browser.get(dash.url + "/jobs")
        until(browser, lambda d: css(d, "#filters"))
        if field == "status":
            Select(css(browser, "#filters select[name=status]")[0]).select_by_value(value)
        else:
            css(browser, f"#filters input[name={field}]")[0].send_keys(value)
        click(browser, "#filters button[type=submit]")
        until(browser, lambda d: f"{field}={value}" in d.current_url and loaded(d),
              message=lambda: f"the {field} filter at {browser.current_url}")  # fmt: skip
        return until(browser, lambda d: listed_ids(d) or None, message=f"rows for {field}")

    assert sorted(filtered("status", "canceled")) == sorted(canceled)
    assert text(browser, "#summary").startswith("4 job(s)")
    assert sorted(filtered("class", f"{JOBS}.Sleep")) == sorted(sleep)
    assert text(browser, "#summary").startswith("6 job(s)")
    assert sorted(filtered("id", "pg-10")) == [f"pg-10{i}" for i in range(10)]
    assert set(texts(browser, "table#jobs tbody td.mono")) == {ECHO}

    # Pages of 50, newest first, by the "older »" link until there is none.
    browser.get(dash.url + "/jobs")
    pages = [until(browser, lambda d: listed_ids(d) or None)]
    while css(browser, "#older"):
        before = browser.current_url
        click(browser, "#older")

        def moved(d: WebDriver, was: str = before) -> bool:
            return d.current_url != was and loaded(d)

        until(browser, moved)
        pages.append(until(browser, lambda d: listed_ids(d) or None,
                           message=lambda: f"rows at {browser.current_url}: "
                           f"{texts(browser, '#problem')}"))  # fmt: skip
        assert css(browser, "#newest"), "an older page links back to the newest"
    seen = [i for page in pages for i in page]
    assert [len(p) for p in pages] == [50, 50, 20]
    assert len(seen) == len(set(seen)) and set(seen) == everything
    assert seen[0] == canceled[-1]  # newest first


# -- 3, 4. a failed job's traceback; retry and cancel from the page ------------------------


def test_failed_job_traceback_retry_and_cancel_from_the_page(
    daemon_factory: Callable[..., Daemon],
    scheduler: Scheduler,
    dashboard_factory: StartDashboard,
    browser: WebDriver,
    tmp_path: Path,
) -> None:
    daemon_factory().start()
    message = "disk on fire in rack 7f3a"
    data = {"message": message, "flag": str(tmp_path / "failed-once")}
    failed = scheduler.add_job(f"{JOBS}.FailOnce", data).wait(20)
    assert failed.status == JobStatus.FAILED
    waiting = scheduler.add_job(ECHO, {"x": 1}, queue=PARKED)
    dash = dashboard_factory()

    # Found in the list of failed jobs, opened from it.
    browser.get(dash.url + "/jobs?status=failed")
    until(browser, lambda d: listed_ids(d) == [failed.id], message="the failed job listed")
    click(browser, f'tr[data-job-id="{failed.id}"] a')
    until(browser, lambda d: texts(d, "#job-id") == [failed.id])
    traceback = texts(browser, "details.error pre.traceback")[-1]
    assert f"ValueError: {message}" in traceback and "raise ValueError" in traceback
    assert texts(browser, ".error-message")[-1] == message

    # Retry… -> the confirmation page -> Yes: re-queued, and the node runs it again.
    browser.execute_script("window.__dashboardTestMarker = 'kept';")
    click(browser, "#retry")
    until(browser, lambda d: d.current_url.endswith(f"/jobs/{failed.id}/retry"))
    assert text(browser, "#confirm") == "Yes, retry it"
    click(browser, "#confirm")
    until(browser, lambda d: text(d, "#message").startswith("Re-queued"),
          message=lambda: browser.page_source[-2000:])  # fmt: skip
    retried = scheduler.wait([failed.id], timeout=20)[0]
    assert retried.status == JobStatus.DONE and retried.result == "ok"
    assert retried.attempt == 1  # a fresh retry budget: counted from the start again
    assert [e.message for e in retried.errors] == [message]  # the failure stays on record
    events = scheduler.events(job_ids=[failed.id])
    statuses = [e.status.name for e in events]
    assert statuses.index("FAILED") < statuses.index("DONE")
    assert any(e.status is JobStatus.WAITING and e.reason == "retried" for e in events)
    # The page shows the outcome by itself (pushed, no reload).
    browser.execute_script("window.__dashboardTestMarker = 'after-retry';")
    until(browser, lambda d: texts(d, "#job-status") == ["DONE"], 20,
          message=lambda: f"DONE on the job page: {texts(browser, '#job-status')}")  # fmt: skip
    assert browser.execute_script("return window.__dashboardTestMarker;") == "after-retry"

    # Cancel… a waiting job -> confirmation -> Yes: CANCELED in the store.
    browser.get(f"{dash.url}/jobs/{waiting.id}")
    assert not css(browser, "#retry")
    click(browser, "#cancel")
    until(browser, lambda d: d.current_url.endswith(f"/jobs/{waiting.id}/cancel"))
    click(browser, "#confirm")
    until(browser, lambda d: texts(d, "#message") == ["Now CANCELED."])
    assert scheduler.get_job(waiting.id).status == JobStatus.CANCELED
    assert not css(browser, "#cancel") and css(browser, "#retry")
    assert_no_csp_violation(browser)


# -- 6. hostile store contents render as text ----------------------------------------------


def test_xss_payloads_render_as_text_and_run_nothing(
    daemon_factory: Callable[..., Daemon],
    scheduler: Scheduler,
    dashboard_factory: StartDashboard,
    browser: WebDriver,
) -> None:
    daemon_factory().start()
    echoed = scheduler.add_job(ECHO, {"text": PAYLOAD})  # data and result
    failed = scheduler.add_job(f"{JOBS}.Fail", {"message": PAYLOAD})  # error and traceback
    # A class path no Scheduler accepts, as a foreign writer could store it; the node
    # refuses it, with the path in its error message.
    now = time.time()
    foreign = NewJob(id="foreign-class", cls=PAYLOAD, data_json=json.dumps([PAYLOAD]),
                     options=JobOptions(), at=now, created=now)  # fmt: skip
    scheduler.store.insert([foreign])
    scheduler.wait([echoed.id, failed.id, foreign.id], timeout=20)
    assert scheduler.get_job(echoed.id).result == {"text": PAYLOAD}
    assert scheduler.get_job(failed.id).errors[-1].message == PAYLOAD
    dash = dashboard_factory()

    def inert(d: WebDriver) -> None:
        assert_no_alert(d)
        assert not css(d, "img"), "no element comes from the store's text"
        scripts = d.execute_script(
            "return Array.from(document.scripts).map(function (s) { return s.src; });"
        )
        assert len(scripts) == 1 and scripts[0].endswith("/static/dashboard.js"), scripts
        assert_no_csp_violation(d)

    # The list (and again after a live refresh of it) shows the class path as text.
    browser.get(dash.url + "/jobs")
    until(browser, live)
    assert PAYLOAD in texts(browser, "table#jobs tbody td.mono")
    inert(browser)
    browser.get(dash.url + "/")  # the classes table, redrawn by the page's script
    until(browser, live)
    until(browser, lambda d: PAYLOAD in texts(d, "#classes a"))
    inert(browser)

    browser.get(f"{dash.url}/jobs/{echoed.id}")
    for element_id in ("job-data", "job-result"):
        shown = text(browser, f"#{element_id}")
        assert XSS[0] in shown and XSS[1].replace('"', '\\"') in shown, (element_id, shown)
    inert(browser)

    browser.get(f"{dash.url}/jobs/{failed.id}")
    assert texts(browser, ".error-message")[-1] == PAYLOAD
    assert f"ValueError: {PAYLOAD}" in texts(browser, "pre.traceback")[-1]
    inert(browser)

    # Reflected text: the filters come back in the form and in the problem they make,
    # the outcome of an action in the page it redirects to.
    browser.get(f"{dash.url}/jobs?class={quote(PAYLOAD)}&status={quote(PAYLOAD)}")
    assert PAYLOAD in text(browser, "#problem")
    value = browser.execute_script("return document.querySelector('input[name=class]').value;")
    assert value == PAYLOAD
    inert(browser)
    # A message only the dashboard's own actions sealed is shown: a crafted one is not.
    browser.get(f"{dash.url}/jobs/{echoed.id}?message={quote(PAYLOAD)}")
    assert not css(browser, "#message")
    assert PAYLOAD not in browser.page_source
    inert(browser)

    browser.get(f"{dash.url}/jobs/{foreign.id}")
    assert text(browser, "#job-class") == PAYLOAD
    assert XSS[0] in text(browser, "#job-data")
    assert PAYLOAD in texts(browser, ".error-message")[-1]
    inert(browser)


# -- 7. read-only ----------------------------------------------------------------------------


def test_read_only_offers_no_action_and_refuses_one(
    scheduler: Scheduler, dashboard_factory: StartDashboard, browser: WebDriver
) -> None:
    waiting = scheduler.add_job(ECHO, queue=PARKED).id
    canceled = scheduler.add_job(ECHO, queue=PARKED).id
    scheduler.cancel_job(canceled)
    dash = dashboard_factory("--read-only")

    browser.get(dash.url + "/")
    until(browser, live)
    assert "read-only" in texts(browser, "header .badge")
    assert not css(browser, 'header nav a[href$="/purge"]')
    for job_id in (waiting, canceled):
        browser.get(f"{dash.url}/jobs/{job_id}")
        assert text(browser, "#job-id") == job_id
        assert not css(browser, "#cancel, #retry, a[href*='/cancel'], a[href*='/retry']")
    browser.get(f"{dash.url}/jobs/{waiting}/cancel")
    assert "read-only" in text(browser, "#problem")

    # A POST with everything a browser would send (CSRF cookie and field) is refused too.
    with httpx.Client(base_url=dash.url) as http:
        http.get("/jobs")
        csrf = http.cookies["taskschedd_csrf"]
        for path in (f"/jobs/{waiting}/cancel", f"/jobs/{canceled}/retry", "/purge"):
            form = {"csrf": csrf, "status": "CANCELED", "older_than": "0", "confirm": "yes"}
            res = http.post(path, data=form)
            assert res.status_code == 403 and "read-only" in res.text, (path, res.text)
    assert scheduler.get_job(waiting).status == JobStatus.WAITING
    assert scheduler.get_job(canceled).status == JobStatus.CANCELED
    assert_no_csp_violation(browser)


# -- signing in with the token -------------------------------------------------------------


@pytest.mark.store_kinds("sqlite")
def test_sign_in_with_the_token_then_act(
    scheduler: Scheduler, dashboard_factory: StartDashboard, browser: WebDriver
) -> None:
    job = scheduler.add_job(ECHO, queue=PARKED).id
    dash = dashboard_factory(env={ENV_TOKEN: TOKEN})
    browser.get(f"{dash.url}/jobs/{job}")
    until(browser, lambda d: css(d, "#login-form"), message="the sign-in form")
    assert not texts(browser, "#job-id")  # nothing of the job before signing in
    css(browser, "#token")[0].send_keys(TOKEN[:-1] + "!")
    click(browser, "#login")
    until(browser, lambda d: "not right" in text(d, "#problem"))
    css(browser, "#token")[0].send_keys(TOKEN)
    click(browser, "#login")
    until(browser, live, message=lambda: f"the overview: {browser.page_source[-1500:]}")
    assert page_counts(browser)["TOTAL"] == 1
    # The session works for actions too: the browser's own form, its CSRF token.
    browser.get(f"{dash.url}/jobs/{job}/cancel")
    click(browser, "#confirm")
    until(browser, lambda d: texts(d, "#message") == ["Now CANCELED."])
    assert scheduler.get_job(job).status == JobStatus.CANCELED
    assert_no_csp_violation(browser)
