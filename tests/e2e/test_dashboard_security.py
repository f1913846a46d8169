"""The web dashboard's defences at the HTTP level, against a real ``taskschedctl
dashboard`` subprocess (httpx; a SQLite store): authentication, CSRF, the security
headers, and the refusals before it listens (issue 16)."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from taskschedd import JobStatus, Scheduler
from taskschedd.dashboard.settings import ENV_PASSWORD, ENV_TOKEN, ENV_USER
from tests.e2e.conftest import E2EStore
from tests.e2e.dashboard_fixtures import (  # noqa: F401  (a fixture: pytest finds it here)
    TOKEN,
    StartDashboard,
    ctl_command,
    ctl_env,
    dashboard_factory_fixture,
    free_port,
    listening,
)

ECHO = "taskschedd.examples.jobs.Echo"
PARKED = "parked"  # no daemon here: its jobs stay WAITING
CSRF_COOKIE = "taskschedd_csrf"
SESSION_COOKIE = "taskschedd_session"
BEARER = {"authorization": f"Bearer {TOKEN}"}
INSTALL = "pip install 'taskschedd[dashboard]'"


def get_live(client: httpx.Client, headers: dict[str, str] | None = None) -> int:
    """The status of /live, reading no further than the stream's first line."""
    with client.stream("GET", "/live", headers=headers or {}) as res:
        if res.status_code == 200:
            first = next(res.iter_lines())
            assert first.startswith("retry:"), first
        return res.status_code


def csrf_of(client: httpx.Client, path: str, headers: dict[str, str] | None = None) -> str:
    """The CSRF token the page at ``path`` hands out: its cookie, also in its forms."""
    res = client.get(path, headers=headers or {})
    token = client.cookies[CSRF_COOKIE]
    fields = re.findall(r'name="csrf" value="([^"]*)"', res.text)
    assert fields and set(fields) == {token}, (fields, token)
    return token


def with_session(url: str, session: str) -> int:
    """The status of /jobs for a client holding only this session cookie."""
    with httpx.Client(base_url=url, cookies={SESSION_COOKIE: session}) as client:
        return client.get("/jobs").status_code


def run_ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ctl_command(*args), env=ctl_env(**(env or {})), capture_output=True, text=True, timeout=60
    )


# -- authentication ------------------------------------------------------------------------


def test_token_refuses_requests_without_it_and_its_login_sets_a_session(
    scheduler: Scheduler, dashboard_factory: StartDashboard
) -> None:
    job = scheduler.add_job(ECHO, {"secret": "payroll-4711"}, queue=PARKED).id
    dash = dashboard_factory(env={ENV_TOKEN: TOKEN})
    pages = ["/", "/jobs", f"/jobs/{job}", f"/jobs/{job}/cancel", "/series", "/nodes", "/purge",
             "/api/overview", f"/api/jobs/{job}"]  # fmt: skip
    with httpx.Client(base_url=dash.url) as anonymous:
        for path in pages:
            res = anonymous.get(path)
            assert res.status_code == 401, path
            assert res.headers["www-authenticate"].startswith("Bearer"), path
            assert "payroll" not in res.text and job not in res.text, path
        assert get_live(anonymous) == 401
        for wrong in (TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "-", TOKEN[:-1] + "X"):
            assert (
                anonymous.get("/jobs", headers={"authorization": f"Bearer {wrong}"}).status_code
                == 401
            )
            assert get_live(anonymous, {"authorization": f"Bearer {wrong}"}) == 401
        assert anonymous.get("/", auth=("admin", TOKEN)).status_code == 401  # not basic
        assert with_session(dash.url, TOKEN) == 401  # the token is no session cookie
        # A POST is refused too, before its form is read.
        res = anonymous.post(f"/jobs/{job}/cancel", data={"csrf": "x" * 43})
        assert res.status_code == 401
        # Static files need nothing, and hold no data.
        for asset in ("/static/dashboard.css", "/static/dashboard.js"):
            res = anonymous.get(asset)
            assert res.status_code == 200 and "payroll" not in res.text and job not in res.text
    assert scheduler.get_job(job).status == JobStatus.WAITING

    with httpx.Client(base_url=dash.url, headers=BEARER) as bearer:
        for path in pages:
            assert bearer.get(path).status_code == 200, path
        assert get_live(bearer) == 200
        assert "payroll-4711" in bearer.get(f"/jobs/{job}").text

    # The login form: a browser without the header signs in once, then uses its cookie.
    with httpx.Client(base_url=dash.url, headers={"accept": "text/html"}) as browser:
        page = browser.get("/jobs")
        assert page.status_code == 401 and 'id="login-form"' in page.text
        csrf = csrf_of(browser, "/")
        res = browser.post("/login", data={"csrf": csrf, "token": TOKEN[:-1] + "!"})
        assert res.status_code == 401 and "not right" in res.text
        assert SESSION_COOKIE not in browser.cookies
        res = browser.post("/login", data={"token": TOKEN})  # no CSRF field
        assert res.status_code == 403 and SESSION_COOKIE not in browser.cookies
        res = browser.post("/login", data={"csrf": csrf, "token": TOKEN})
        assert res.status_code == 303 and res.headers["location"] == "/"
        session = browser.cookies[SESSION_COOKIE]
        assert TOKEN not in session and len(session) >= 32
        cookie = res.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert browser.get("/jobs").status_code == 200
        assert get_live(browser) == 200
    # The cookie alone is a credential; any other value is none.
    assert with_session(dash.url, session) == 200
    assert with_session(dash.url, session[:-1] + ("1" if session.endswith("0") else "0")) == 401


def test_http_basic_auth(scheduler: Scheduler, dashboard_factory: StartDashboard) -> None:
    dash = dashboard_factory(env={ENV_USER: "operator", ENV_PASSWORD: "correct horse battery"})
    with httpx.Client(base_url=dash.url) as client:
        for path in ("/", "/jobs", "/api/overview"):
            res = client.get(path)
            assert res.status_code == 401
            assert res.headers["www-authenticate"].startswith("Basic realm="), res.headers
        assert get_live(client) == 401
        right = ("operator", "correct horse battery")
        assert client.get("/", auth=right).status_code == 200
        assert client.get("/jobs", auth=right).status_code == 200
        with client.stream("GET", "/live", auth=right) as res:
            assert res.status_code == 200
        for user, password in (("operator", "correct horse"), ("Operator", right[1]),
                               ("operator", right[1] + " "), ("", "")):  # fmt: skip
            assert client.get("/", auth=(user, password)).status_code == 401, (user, password)
        assert client.get("/", headers={"authorization": "Basic !!notbase64"}).status_code == 401
        assert client.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 401


# -- CSRF ----------------------------------------------------------------------------------


def test_actions_need_the_csrf_token_and_our_own_origin(
    scheduler: Scheduler, dashboard_factory: StartDashboard
) -> None:
    job = scheduler.add_job(ECHO, queue=PARKED).id
    other = scheduler.add_job(ECHO, queue=PARKED).id
    done = scheduler.add_job(ECHO, queue=PARKED).id
    scheduler.cancel_job(done)  # something /purge could delete
    dash = dashboard_factory(env={ENV_TOKEN: TOKEN})
    origin = dash.url

    with httpx.Client(base_url=dash.url, headers=BEARER) as client:
        csrf = csrf_of(client, f"/jobs/{job}/cancel")
        refused = {
            "no csrf field": ({}, {}),
            "an empty csrf field": ({"csrf": ""}, {}),
            "a wrong csrf field": ({"csrf": csrf[:-2] + "xx"}, {}),
            "another site's origin": ({"csrf": csrf}, {"origin": "http://evil.example"}),
            "a look-alike origin": ({"csrf": csrf}, {"origin": origin + ".evil.example"}),
            "a cross-site fetch": ({"csrf": csrf}, {"sec-fetch-site": "cross-site"}),
            "a same-site fetch": ({"csrf": csrf}, {"sec-fetch-site": "same-site"}),
            "a null origin, unexplained": ({"csrf": csrf}, {"origin": "null"}),
        }
        for what, (form, headers) in refused.items():
            res = client.post(f"/jobs/{job}/cancel", data=form, headers=headers)
            assert res.status_code == 403, what
            res = client.post("/purge", data={**form, "status": "CANCELED", "older_than": "0",
                                              "confirm": "yes"}, headers=headers)  # fmt: skip
            assert res.status_code == 403, what
        assert scheduler.get_job(job).status == JobStatus.WAITING
        assert scheduler.get_job(done).status == JobStatus.CANCELED  # not purged

    # The right token in a client without the cookie is no token: a fresh cookie comes.
    with httpx.Client(base_url=dash.url, headers=BEARER) as fresh:
        assert fresh.post(f"/jobs/{job}/cancel", data={"csrf": csrf}).status_code == 403
    assert scheduler.get_job(job).status == JobStatus.WAITING

    with httpx.Client(base_url=dash.url, headers=BEARER) as client:
        client.cookies.set(CSRF_COOKIE, csrf)
        res = client.post(f"/jobs/{job}/cancel", data={"csrf": csrf}, headers={"origin": origin,
                          "sec-fetch-site": "same-origin"})  # fmt: skip
        assert res.status_code == 303, res.text
        assert res.headers["location"].startswith(f"/jobs/{job}?message=")
        assert scheduler.get_job(job).status == JobStatus.CANCELED
        # A browser sends "Origin: null" under the pages' Referrer-Policy no-referrer; its
        # Sec-Fetch-Site says the form was ours.
        res = client.post(f"/jobs/{other}/cancel", data={"csrf": csrf},
                          headers={"origin": "null", "sec-fetch-site": "same-origin"})  # fmt: skip
        assert res.status_code == 303, res.text
        assert scheduler.get_job(other).status == JobStatus.CANCELED


# -- headers, and nothing from elsewhere ------------------------------------------------------


def test_every_response_has_a_strict_csp_and_no_page_loads_from_elsewhere(
    scheduler: Scheduler, dashboard_factory: StartDashboard
) -> None:
    job = scheduler.add_job(ECHO, {"link": "https://example.com/x.js"}, queue=PARKED).id
    failed = scheduler.add_job(ECHO, queue=PARKED).id
    scheduler.cancel_job(failed)
    dash = dashboard_factory()
    pages = ["/", "/jobs", "/jobs?status=canceled", "/jobs?status=nope", f"/jobs/{job}",
             f"/jobs/{job}/cancel", f"/jobs/{failed}/retry", "/jobs/no-such-job", "/series",
             "/nodes", "/purge"]  # fmt: skip
    other = ["/api/overview", f"/api/jobs/{job}", "/static/dashboard.css",
             "/static/dashboard.js", "/healthz", "/static/no-such-file"]  # fmt: skip
    with httpx.Client(base_url=dash.url) as client:
        for path in pages + other:
            res = client.get(path)
            csp = res.headers.get("content-security-policy", "")
            directives = dict((d.split()[0], d.split()[1:]) for d in csp.split(";") if d.strip())
            assert directives.get("default-src") == ["'none'"], (path, csp)
            assert directives.get("script-src") == ["'self'"], (path, csp)
            assert directives.get("frame-ancestors") == ["'none'"], (path, csp)
            assert "unsafe" not in csp and "http" not in csp and "*" not in csp, (path, csp)
            assert all(v in ([], ["'self'"], ["'none'"]) for v in directives.values()), csp
            assert res.headers.get("x-content-type-options") == "nosniff", path
            if path not in pages:
                continue
            assert res.headers["content-type"].startswith("text/html"), path
            page = res.text
            refs = re.findall(r'\b(?:src|href|action)\s*=\s*["\']?([^"\'\s>]*)', page, re.I)
            assert refs, path
            external = [r for r in refs if re.match(r"(?i)^(?:[a-z][a-z0-9+.-]*:|//|\\\\)", r)]
            assert not external, (path, external)
            assert "<style" not in page and " style=" not in page, path  # CSP: no inline
            scripts = re.findall(r"<script\b[^>]*>", page)
            assert scripts == ['<script src="/static/dashboard.js" defer>'], (path, scripts)
            assert re.search(r"<[^>]*\son[a-z]+\s*=", page) is None, path  # no inline handler
        css = client.get("/static/dashboard.css").text
        assert "@import" not in css and not re.search(r"url\(\s*['\"]?(?:[a-z]+:|//)", css)
        js = client.get("/static/dashboard.js").text
        assert "https://" not in js
        # The one http:// is SVG's namespace name, which nothing fetches.
        assert set(re.findall(r"http://[^\s\"']*", js)) <= {"http://www.w3.org/2000/svg"}


# -- refusals before listening ---------------------------------------------------------------


def test_a_reachable_address_needs_credentials(
    scheduler: Scheduler, e2e_store: E2EStore, dashboard_factory: StartDashboard
) -> None:
    for host in ("0.0.0.0", "[::]", "192.0.2.1", "dashboard.example"):
        port = free_port()
        res = run_ctl("dashboard", "--store", e2e_store.url, "--listen", f"{host}:{port}")
        assert res.returncode == 78, (host, res)
        assert "without authentication" in res.stderr, res.stderr
        assert ENV_TOKEN in res.stderr and ENV_USER in res.stderr and ENV_PASSWORD in res.stderr
        assert not listening(port), host
    # With a token it serves that address (reached here through loopback).
    dash = dashboard_factory(env={ENV_TOKEN: TOKEN}, listen_host="0.0.0.0")
    assert "(token)" in dash.stderr
    with httpx.Client(base_url=dash.url.replace("0.0.0.0", "127.0.0.1")) as client:
        assert client.get("/jobs").status_code == 401
        assert client.get("/jobs", headers=BEARER).status_code == 200


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({ENV_TOKEN: "short-token"}, "at least 16"),
        ({ENV_TOKEN: "x" * 15}, "at least 16"),
        ({ENV_TOKEN: "sixteen chars\n.."}, "printable"),
        ({ENV_USER: "operator"}, ENV_PASSWORD),
        ({ENV_PASSWORD: "secret"}, ENV_USER),
        ({ENV_USER: "a:b", ENV_PASSWORD: "secret"}, "':'"),
    ],
    ids=["short-token", "15-chars", "unprintable", "user-only", "password-only", "colon-user"],
)
def test_bad_credentials_exit_78_before_listening(
    scheduler: Scheduler, e2e_store: E2EStore, env: dict[str, str], words: str
) -> None:
    port = free_port()
    res = run_ctl("dashboard", "--store", e2e_store.url, "--listen", f"127.0.0.1:{port}", env=env)
    assert res.returncode == 78, res
    assert words in res.stderr, res.stderr
    assert not listening(port)
    for secret in env.values():
        if len(secret) > 8:
            assert secret not in res.stderr, "a rejected secret is not echoed"


def test_without_the_extra_it_says_how_to_install_it(
    scheduler: Scheduler, e2e_store: E2EStore, tmp_path: Path
) -> None:
    port = free_port()
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None  # as if the extra were not installed\n"
        "from taskschedctl.cli import run\n"
        f"sys.exit(run(['dashboard', '--store', {e2e_store.url!r}, "
        f"'--listen', '127.0.0.1:{port}']))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=ctl_env(), capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 69, res
    assert INSTALL in res.stderr and "starlette" in res.stderr, res.stderr
    assert not listening(port)


def test_sigterm_stops_it_cleanly_with_a_stream_open(
    scheduler: Scheduler, dashboard_factory: StartDashboard
) -> None:
    dash = dashboard_factory()
    port = int(dash.url.rsplit(":", 1)[1])
    with httpx.Client(base_url=dash.url) as client, client.stream("GET", "/live") as live:
        assert next(live.iter_lines()).startswith("retry:")
        assert client.get("/").status_code == 200
        took = dash.terminate(timeout=15)
    assert dash.proc.returncode == 0, dash.stderr
    assert not listening(port)
    assert "Traceback" not in dash.stderr, dash.stderr
    print(f"stopped {took:.2f}s after SIGTERM")


def test_purge_form_with_its_token_purges_the_chosen_final_jobs(
    scheduler: Scheduler, dashboard_factory: StartDashboard
) -> None:
    waiting = scheduler.add_job(ECHO, queue=PARKED).id
    canceled = [scheduler.add_job(ECHO, queue=PARKED).id for _ in range(2)]
    for job_id in canceled:
        scheduler.cancel_job(job_id)
    dash = dashboard_factory()
    with httpx.Client(base_url=dash.url) as client:
        csrf = csrf_of(client, "/purge")
        form = {"csrf": csrf, "status": ["CANCELED", "DONE"], "older_than": "0"}
        res = client.post("/purge", data=form)  # the box not ticked
        assert res.status_code == 400 and "tick the box" in res.text
        res = client.post("/purge", data={**form, "status": ["WAITING"], "confirm": "yes"})
        assert res.status_code == 400 and "not 'WAITING'" in html.unescape(res.text)
        assert len(scheduler.get_jobs(ids=[waiting, *canceled])) == 3
        res = client.post("/purge", data={**form, "confirm": "yes"})
        assert res.status_code == 200 and "Purged 2 job(s)." in res.text, res.text
    assert [p.id for p in scheduler.get_jobs(ids=[waiting, *canceled])] == [waiting]
