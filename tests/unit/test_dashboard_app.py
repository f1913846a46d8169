"""The dashboard application in-process (Starlette's test client over a real SQLite
store): mounted under a prefix in another application, its refusals and messages. The
browser, the live stream and the real process are tested in tests/e2e/test_dashboard_*."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from taskschedd.dashboard import create_app
from taskschedd.model import JobStatus
from taskschedd.scheduler import Scheduler

JOB = "taskschedd.examples.jobs.Echo"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/dash.db"


@pytest.fixture
def sched(url: str) -> Iterator[Scheduler]:
    with Scheduler(url, create=True) as s:
        yield s


def client(url: str, prefix: str = "", **kwargs: object) -> TestClient:
    dash = create_app(url, **kwargs)  # type: ignore[arg-type]
    app = Starlette(routes=[Mount(prefix, dash)]) if prefix else dash
    return TestClient(app, base_url="http://testserver", follow_redirects=False)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def test_mounted_under_a_prefix_every_link_and_cookie_keeps_it(url: str, sched: Scheduler) -> None:
    job = sched.add_job(JOB, {"x": 1})
    with client(url, "/ops") as c:
        page = c.get("/ops/")
        assert page.status_code == 200
        links = re.findall(r'(?:href|src|action)="([^"]+)"', page.text)
        assert links and all(link.startswith("/ops/") for link in links), links
        assert "Path=/ops;" in page.headers["set-cookie"]
        assert c.get("/ops/static/dashboard.js").status_code == 200
        assert 'data-base="/ops"' in page.text
        listed = c.get("/ops/jobs")
        assert f'href="/ops/jobs/{job.id}"' in listed.text
        confirm = c.get(f"/ops/jobs/{job.id}/cancel")
        done = c.post(f"/ops/jobs/{job.id}/cancel", data={"csrf": csrf_of(confirm.text)})
        assert done.status_code == 303
        assert done.headers["location"].startswith(f"/ops/jobs/{job.id}?message=")
    assert sched.get_job(job.id).status is JobStatus.CANCELED


def test_an_unknown_job_is_a_404_page_that_says_so(url: str, sched: Scheduler) -> None:
    sched.add_job(JOB, {})
    with client(url) as c:
        page = c.get("/jobs/nosuchjob")
        assert page.status_code == 404
        assert "no job with id &#39;nosuchjob&#39;" in page.text


def test_a_bad_filter_is_a_400_that_names_what_is_accepted(url: str, sched: Scheduler) -> None:
    sched.add_job(JOB, {})
    with client(url) as c:
        page = c.get("/jobs", params={"status": "<b>lost</b>"})
        assert page.status_code == 400
        assert "unknown status &#39;&lt;b&gt;lost&lt;/b&gt;&#39;; accepted: waiting" in page.text
        assert "<b>lost</b>" not in page.text


def test_read_only_offers_no_action_and_refuses_one(url: str, sched: Scheduler) -> None:
    job = sched.add_job(JOB, {})
    with client(url, read_only=True) as c:
        page = c.get(f"/jobs/{job.id}")
        assert "Cancel…" not in page.text and "/purge" not in page.text
        c.get("/")
        token = c.cookies.get("taskschedd_csrf")
        refused = c.post(f"/jobs/{job.id}/cancel", data={"csrf": token or ""})
        assert refused.status_code == 403 and "read-only" in refused.text
        assert c.post("/purge", data={"csrf": token or ""}).status_code == 403
    assert sched.get_job(job.id).status is JobStatus.WAITING


def test_purge_needs_a_confirmation_and_valid_values(url: str, sched: Scheduler) -> None:
    job = sched.add_job(JOB, {})
    sched.cancel_job(job.id)
    with client(url) as c:
        csrf = csrf_of(c.get("/purge").text)
        base = {"csrf": csrf, "status": "CANCELED", "older_than": "0"}
        unconfirmed = c.post("/purge", data=base)
        assert unconfirmed.status_code == 400 and "tick the box" in unconfirmed.text
        bad = c.post("/purge", data={**base, "older_than": "soon", "confirm": "yes"})
        assert bad.status_code == 400 and "older than: expected" in bad.text
        wrong = c.post("/purge", data={**base, "status": "WAITING", "confirm": "yes"})
        assert wrong.status_code == 400 and "not &#39;WAITING&#39;" in wrong.text
        assert sched.get_jobs("all")  # nothing purged yet
        done = c.post("/purge", data={**base, "confirm": "yes"})
        assert done.status_code == 200 and "Purged 1 job(s)" in done.text
    assert sched.get_jobs("all") == []


def test_a_store_that_cannot_be_opened_is_a_503_page_that_says_why(tmp_path: Path) -> None:
    with client(f"sqlite:///{tmp_path}/missing.db") as c:
        page = c.get("/")
        assert page.status_code == 503
        assert "no store at" in page.text and "Traceback" not in page.text


def test_retry_says_what_became_of_the_job(url: str, sched: Scheduler) -> None:
    job = sched.add_job(JOB, {})
    sched.cancel_job(job.id)
    with client(url) as c:
        csrf = csrf_of(c.get(f"/jobs/{job.id}/retry").text)
        done = c.post(f"/jobs/{job.id}/retry", data={"csrf": csrf})
        assert done.status_code == 303
        page = c.get(done.headers["location"])
        assert "Re-queued: now WAITING." in page.text
    assert sched.get_job(job.id).status is JobStatus.WAITING


def test_without_credentials_only_loopback_host_names_are_served(
    url: str, sched: Scheduler
) -> None:
    """DNS rebinding: a page elsewhere whose name resolves to 127.0.0.1 sends its own
    name in Host; a dashboard without credentials serves loopback names only."""
    from taskschedd.dashboard.app import LOOPBACK_HOSTS

    sched.add_job(JOB, {})
    app = create_app(url, hosts=LOOPBACK_HOSTS)
    for base, status in [
        ("http://127.0.0.1:8080", 200),
        ("http://localhost:8080", 200),
        ("http://[::1]:8080", 200),
        ("http://rebind.example:8080", 421),
        ("http://127.0.0.1.rebind.example", 421),
    ]:
        with TestClient(app, base_url=base) as c:
            assert c.get("/").status_code == status, base


def test_a_job_page_shows_only_messages_its_own_actions_wrote(url: str, sched: Scheduler) -> None:
    """A crafted link cannot put words in the green box ("Your account is suspended...")."""
    job = sched.add_job(JOB, {})
    with client(url) as c:
        forged = c.get(f"/jobs/{job.id}", params={"message": "Call +1 555 0100 now"})
        assert "Call +1 555" not in forged.text
        sealed = c.get(
            f"/jobs/{job.id}", params={"message": "Call +1 555 0100 now", "seal": "0" * 64}
        )
        assert "Call +1 555" not in sealed.text
        csrf = csrf_of(c.get(f"/jobs/{job.id}/cancel").text)
        done = c.post(f"/jobs/{job.id}/cancel", data={"csrf": csrf})
        assert 'id="message">Now CANCELED.' in c.get(done.headers["location"]).text
