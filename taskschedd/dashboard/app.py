"""The dashboard's ASGI application (Starlette): pages, the live stream, the actions.

Every request passes :class:`Guard` first: authentication (when configured), CSRF on
every POST, and the security headers (a strict Content-Security-Policy: scripts, styles
and images from this package only, nothing inline, no other origin). Pages are Jinja2
templates with autoescaping on: whatever a job holds renders as text. Store work runs
in Starlette's thread pool with one Scheduler per thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from http.cookies import SimpleCookie
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskschedd import __version__
from taskschedd.config import Config
from taskschedd.dashboard import views
from taskschedd.dashboard.live import Feed, Histogram, public, sse
from taskschedd.dashboard.settings import Auth
from taskschedd.errors import JobNotFound, TaskSchedError
from taskschedd.model import JobStatus
from taskschedd.scheduler import Scheduler
from taskschedd.timeutil import format_duration, format_time, parse_duration

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
SESSION_COOKIE = "taskschedd_session"
CSRF_COOKIE = "taskschedd_csrf"
KEEPALIVE = 15.0
#: The largest form an action accepts (bytes): the purge form, the largest, is far less.
MAX_FORM = 16384


def _cookies(scope: Scope) -> dict[str, str]:
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is no cookie
                return {}
            return {k: m.value for k, m in jar.items()}
    return {}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _host_name(host: str) -> str:
    """The name of a Host header, without its port ([::1]:8080 -> ::1)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


#: The names a browser on this host uses for a loopback address.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _base(scope: Scope) -> str:
    return str(scope.get("root_path", "")).rstrip("/")


class Guard:
    """Authentication, CSRF and security headers for everything below it."""

    def __init__(
        self,
        app: ASGIApp,
        auth: Auth,
        render_login: Callable[[Scope, str], bytes],
        hosts: frozenset[str] | None = None,
    ):
        self.app = app
        self.auth = auth
        self.render_login = render_login
        #: The Host names accepted (None: any). Without credentials on a loopback address,
        #: a web page elsewhere could reach us through DNS rebinding (its own name
        #: resolved to 127.0.0.1): its requests carry its name, never one of ours.
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies = _cookies(scope)
        csrf = cookies.get(CSRF_COOKIE, "")
        fresh_csrf = None
        if len(csrf) < 32:
            csrf = fresh_csrf = secrets.token_urlsafe(32)
        scope.setdefault("state", {})["csrf"] = csrf
        path = scope["path"][len(_base(scope)) :] if scope.get("root_path") else scope["path"]

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if fresh_csrf is not None:
                    headers.append((b"set-cookie", self._cookie(scope, CSRF_COOKIE, fresh_csrf)))
                message = {**message, "headers": headers}
            await send(message)

        if self.hosts is not None and _host_name(_header(scope, b"host") or "") not in self.hosts:
            await self._plain(send_secured, 421, "unknown Host: use http://127.0.0.1:PORT/")
            return
        if scope["method"] == "POST" and not await self._same_origin(scope):
            await self._plain(send_secured, 403, "cross-site request refused")
            return
        if self.auth.enabled and not path.startswith("/static/"):
            allowed = self._authenticated(scope, cookies)
            if not allowed and path == "/login" and self.auth.token is not None:
                await self._login(scope, receive, send_secured, csrf)
                return
            if not allowed:
                await self._refuse(scope, send_secured)
                return
        await self.app(scope, receive, send_secured)

    def _cookie(self, scope: Scope, name: str, value: str, max_age: int | None = None) -> bytes:
        path = _base(scope) or "/"
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        age = f"; Max-Age={max_age}" if max_age is not None else ""
        return f"{name}={value}; Path={path}; HttpOnly; SameSite=Strict{secure}{age}".encode()

    def _authenticated(self, scope: Scope, cookies: dict[str, str]) -> bool:
        given = _header(scope, b"authorization") or ""
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() == "bearer":
            return self.auth.token_ok(credentials.strip())
        if scheme.lower() == "basic" and self.auth.user is not None:
            try:
                text = base64.b64decode(credentials.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, sep, password = text.partition(":")
            return bool(sep) and self.auth.basic_ok(user, password)
        session = cookies.get(SESSION_COOKIE)
        return session is not None and self.auth.session_ok(session)

    async def _same_origin(self, scope: Scope) -> bool:
        """Browsers say where a request comes from: a POST from another site is refused
        before anything else (the CSRF token is checked again by each action)."""
        site = _header(scope, b"sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = _header(scope, b"origin")
        if origin is None or origin == "null":
            # Under our Referrer-Policy no-referrer, browsers send "Origin: null" even
            # for our own forms: their Sec-Fetch-Site still tells our page from another.
            return origin is None or site == "same-origin"
        host = _header(scope, b"host") or ""
        return origin.split("://", 1)[-1] == host

    async def _plain(
        self, send: Send, status: int, text: str, extra: list[Any] | None = None
    ) -> None:
        body = (text + "\n").encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]
        await send(
            {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
        )
        await send({"type": "http.response.body", "body": body})

    async def _html(self, send: Send, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if self.auth.token is None:  # basic: the browser asks for the credentials
            await self._plain(send, 401, "authentication required",
                              [(b"www-authenticate", b'Basic realm="taskschedd", charset="UTF-8"')])  # fmt: skip
            return
        accept = _header(scope, b"accept") or ""
        if "text/html" in accept and scope["method"] == "GET":
            body = self.render_login(scope, "")
            await self._html(send, 401, body)
            return
        await self._plain(send, 401, "authentication required: send Authorization: Bearer TOKEN",
                          [(b"www-authenticate", b'Bearer realm="taskschedd"')])  # fmt: skip

    async def _login(self, scope: Scope, receive: Receive, send: Send, csrf: str) -> None:
        if scope["method"] != "POST":
            await self._refuse(scope, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > 8192:
                await self._plain(send, 413, "request too large")
                return
            if not message.get("more_body"):
                break
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not hmac.compare_digest(form.get("csrf", "").encode(), csrf.encode()):
            await self._plain(send, 403, "CSRF token missing or wrong: reload the page")
            return
        if not self.auth.token_ok(form.get("token", "").strip()):
            page = self.render_login(scope, "That token is not right.")
            await self._html(send, 401, page)
            return
        target = (_base(scope) or "") + "/"
        headers = [
            (b"location", target.encode()),
            (
                b"set-cookie",
                self._cookie(scope, SESSION_COOKIE, self.auth.session_value(), 86400 * 7),
            ),
        ]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


class Dashboard:
    """The routes and what they need: a Scheduler per thread, the feed, the templates."""

    def __init__(self, scheduler: Callable[[], Scheduler], *, read_only: bool, auth: Auth) -> None:
        self.make_scheduler = scheduler
        self.read_only = read_only
        self.auth = auth
        self._local = threading.local()
        self._secret = secrets.token_bytes(32)
        self._all: list[Scheduler] = []
        self._all_lock = threading.Lock()
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("taskschedd.dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["when"] = lambda ts: format_time(ts) if ts is not None else "-"
        self.env.filters["ago"] = _ago
        self.env.filters["duration"] = format_duration
        self.env.filters["urlpart"] = lambda s: quote(str(s), safe="")
        self.env.globals["version"] = __version__
        self.env.globals["status_order"] = views.STATUS_ORDER
        self.feed = Feed(self.sched, _snapshot)

    # -- plumbing ---------------------------------------------------------------------------
    def sched(self) -> Scheduler:
        sched: Scheduler | None = getattr(self._local, "sched", None)
        if sched is None:
            sched = self.make_scheduler()
            self._local.sched = sched
            with self._all_lock:
                if all(s is not sched for s in self._all):  # a factory may share one
                    self._all.append(sched)
        return sched

    def close(self) -> None:
        self.feed.stop()
        with self._all_lock:
            for sched in self._all:
                with contextlib.suppress(Exception):  # at shutdown: nothing left to tell
                    sched.close()
            self._all.clear()

    def render(
        self, request: Request, name: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        base = _base(request.scope)
        page = self.env.get_template(name).render(
            base=base,
            csrf=request.scope["state"]["csrf"],
            read_only=self.read_only,
            logged_in=self.auth.token is not None,
            now=time.time(),
            **context,
        )
        return HTMLResponse(page, status_code=status, headers={"cache-control": "no-store"})

    def render_login(self, scope: Scope, problem: str) -> bytes:
        page = self.env.get_template("login.html").render(
            base=_base(scope), csrf=scope["state"]["csrf"], problem=problem,
            read_only=True, logged_in=False, now=time.time(), page="login",
        )  # fmt: skip
        return page.encode()

    def seal(self, message: str) -> str:
        """What an action's outcome carries to the job page it redirects to: a page shows
        only messages this process wrote, never text a crafted link brings."""
        return hmac.new(self._secret, message.encode(), "sha256").hexdigest()

    def unsealed(self, request: Request) -> str | None:
        message = request.query_params.get("message")
        seal = request.query_params.get("seal", "")
        if message is None or not hmac.compare_digest(seal.encode(), self.seal(message).encode()):
            return None
        return message

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status, page="error", message=message)

    async def form(self, request: Request) -> dict[str, list[str]] | Response:
        """The POSTed form, or the refusal when it is too large or its CSRF token is
        missing or wrong. URL-encoded only, as every form here is: Starlette's own
        parser needs python-multipart, which the extra does not install."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                return self.error(request, 413, "The form is too large.")
        try:
            fields = parse_qs(
                body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20
            )
        except ValueError:  # more fields than any form here has
            return self.error(request, 400, "The form has too many fields.")
        given = _field(fields, "csrf")
        if not given or not hmac.compare_digest(
            given.encode(), request.scope["state"]["csrf"].encode()
        ):
            return self.error(
                request, 403, "CSRF token missing or wrong: reload the page and try again."
            )
        return fields

    # -- pages -------------------------------------------------------------------------------
    def overview(self, request: Request) -> Response:
        sched = self.sched()
        snap = self.feed.snapshot(sched)
        return self.render(request, "overview.html", page="overview", snap=snap,
                           chart=_chart_svg(snap["chart"]))  # fmt: skip

    def jobs(self, request: Request) -> Response:
        sched = self.sched()
        try:
            f = views.Filters.parse(dict(request.query_params))
        except views.FilterError as exc:
            return self.render(request, "jobs.html", 400, page="jobs", f=views.Filters(),
                               problem=str(exc), result=None, raw=dict(request.query_params))  # fmt: skip
        counts = views.Counts.of(self.feed.snapshot(sched)["rows"]) if f.countable else None
        result = views.jobs_page(sched, f, counts)
        return self.render(request, "jobs.html", page="jobs", f=f, problem=None, result=result,
                           raw=dict(request.query_params))  # fmt: skip

    def job(self, request: Request) -> Response:
        try:
            view = views.job_view(self.sched(), request.path_params["job_id"])
        except JobNotFound as exc:
            return self.error(request, 404, str(exc))
        return self.render(request, "job.html", page="job", v=view, message=self.unsealed(request))

    def series(self, request: Request) -> Response:
        return self.render(
            request, "series.html", page="series", jobs=views.series_list(self.sched())
        )

    def nodes(self, request: Request) -> Response:
        snap = self.feed.snapshot(self.sched())
        return self.render(request, "nodes.html", page="nodes", snap=snap)

    # -- JSON for the live pages ---------------------------------------------------------------
    def job_json(self, request: Request) -> Response:
        try:
            job = self.sched().get_job(request.path_params["job_id"]).record
        except JobNotFound as exc:
            return JSONResponse({"error": str(exc)}, 404)
        return JSONResponse(
            {"id": job.id, "status": job.status.name, "attempt": job.attempt,
             "progress": job.progress, "node": job.node, "worker": job.worker},
            headers={"cache-control": "no-store"},
        )  # fmt: skip

    def overview_json(self, request: Request) -> Response:
        snap = self.feed.snapshot(self.sched())
        return JSONResponse(public(snap), headers={"cache-control": "no-store"})

    async def live(self, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        sub = self.feed.subscribe(loop)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 3000\n\n"
                snap = await run_in_threadpool(lambda: self.feed.snapshot(self.sched(), 5.0))
                yield sse("overview", public(snap))
                while True:
                    if sub.lost:
                        sub.lost = False
                        yield sse("resync", {})
                    try:
                        message = await asyncio.wait_for(sub.queue.get(), KEEPALIVE)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield message
            finally:
                self.feed.unsubscribe(sub)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    # -- actions -------------------------------------------------------------------------------
    async def action(self, request: Request) -> Response:
        what = request.path_params["action"]
        job_id = request.path_params["job_id"]
        if what not in ("cancel", "retry"):
            return self.error(request, 404, f"no action {what!r}: accepted: cancel, retry")
        if self.read_only:
            return self.error(
                request, 403, "this dashboard is read-only: it cancels and retries nothing"
            )
        if request.method == "GET":
            try:
                view = await run_in_threadpool(lambda: views.job_view(self.sched(), job_id))
            except JobNotFound as exc:
                return self.error(request, 404, str(exc))
            return self.render(request, "confirm.html", page="confirm", action=what, v=view)
        fields = await self.form(request)
        if isinstance(fields, Response):
            return fields
        message = await run_in_threadpool(self._act, what, job_id)
        if isinstance(message, Response):
            return message
        base = _base(request.scope)
        seal = self.seal(message)
        target = (
            f"{base}/jobs/{quote(job_id, safe='')}?message={quote(message, safe='')}&seal={seal}"
        )
        return RedirectResponse(target, status_code=303)

    def _act(self, what: str, job_id: str) -> str:
        from taskschedd.jobinfo import blocked_below, canceled_by, failed_dependency_of

        sched = self.sched()
        try:
            if what == "cancel":
                before = sched.get_job(job_id).record
                waiting = blocked_below(sched, job_id)
                job = sched.cancel_job(job_id).record
                if before.is_final:
                    return f"Already {job.status.name}: not changed."
                text = (
                    "Cancel requested: its node stops it."
                    if job.status is JobStatus.PROCESSING
                    else f"Now {job.status.name}."
                )
                if waiting:
                    ended = [r for r in sched.get_jobs(ids=sorted(waiting)) if r.status.is_final]
                    if ended:
                        text += f" {len(ended)} dependent job(s) canceled."
                return text
            job = sched.retry_job(job_id).record
            failed = failed_dependency_of(sched, job)
            if failed is not None:
                return f"{job.status.name} again: dependency {failed[0]} ended {failed[1]}; retry it first."
            text = f"Re-queued: now {job.status.name}."
            left = canceled_by(sched, job.id)
            if left:
                text += f" {len(left)} dependent job(s) it canceled stay CANCELED."
            return text
        except JobNotFound as exc:
            return str(exc)
        except TaskSchedError as exc:
            return f"Not done: {exc}"

    async def purge(self, request: Request) -> Response:
        if self.read_only:
            return self.error(request, 403, "this dashboard is read-only: it purges nothing")
        if request.method == "GET":
            return self.render(request, "purge.html", page="purge", problem=None, done=None,
                               finals=views.FINAL_NAMES, chosen=views.FINAL_NAMES, older="7d")  # fmt: skip
        fields = await self.form(request)
        if isinstance(fields, Response):
            return fields
        chosen = fields.get("status", [])
        older = _field(fields, "older_than").strip()
        problem = None
        bad = [s for s in chosen if s not in views.FINAL_NAMES]
        if not chosen or bad:
            problem = f"choose among {', '.join(views.FINAL_NAMES)}" + (
                f", not {bad[0]!r}" if bad else ""
            )
        seconds = 0.0
        if problem is None:
            try:
                seconds = parse_duration(older, what="older than")
            except ValueError as exc:
                problem = str(exc)
        if problem is None and _field(fields, "confirm") != "yes":
            problem = "tick the box to confirm: purged jobs cannot be brought back"
        if problem is not None:
            return self.render(request, "purge.html", 400, page="purge", problem=problem, done=None,
                               finals=views.FINAL_NAMES, chosen=chosen, older=older)  # fmt: skip
        statuses = [JobStatus[s] for s in chosen]
        n = await run_in_threadpool(lambda: self.sched().purge(statuses, seconds))
        return self.render(request, "purge.html", page="purge", problem=None, done=n,
                           finals=views.FINAL_NAMES, chosen=chosen, older=older)  # fmt: skip


def _field(fields: dict[str, list[str]], name: str) -> str:
    """A form field's first value ("" when absent)."""
    return (fields.get(name) or [""])[0]


def _snapshot(sched: Scheduler, histogram: Histogram, now: float) -> dict[str, Any]:
    rows = sched.store.counts()
    return {
        "time": now,
        "rows": rows,
        "counts": views.Counts.of(rows).to_dict(),
        "chart": histogram.series(now),
        "nodes": views.nodes(sched, now),
    }


def _ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    delta = (time.time() if now is None else now) - ts
    return f"{format_duration(abs(delta))} ago" if delta >= 0 else f"in {format_duration(-delta)}"


def _chart_svg(chart: dict[str, Any]) -> dict[str, Any]:
    """Bar geometry for the server-rendered chart (the page's script redraws it live)."""
    minutes = chart["minutes"]
    peak = max([m["done"] + m["failed"] for m in minutes] + [1])
    bars = []
    for i, m in enumerate(minutes):
        done_h = round(100 * m["done"] / peak, 1)
        failed_h = round(100 * m["failed"] / peak, 1)
        bars.append({"x": i * 10, "done_h": done_h, "failed_h": failed_h, "m": m})
    return {"bars": bars, "peak": peak}


def create_app(
    store: str | None = None,
    *,
    config: str | Config | None = None,
    read_only: bool = False,
    auth: Auth | None = None,
    scheduler: Callable[[], Scheduler] | None = None,
    hosts: frozenset[str] | None = None,
) -> Starlette:
    """The dashboard as an ASGI application, to serve or to mount in another one.

    ``store``/``config`` name the store as for :class:`Scheduler` (``scheduler``: a
    factory instead). ``auth``: the credentials it requires itself; leave it out when the
    application it is mounted in authenticates its users. ``read_only``: no actions.
    ``hosts``: the only Host names served (``LOOPBACK_HOSTS`` for a loopback listener
    without credentials: no DNS rebinding); None serves any.
    """
    make = scheduler or (lambda: Scheduler(store, config=config))
    dash = Dashboard(make, read_only=read_only, auth=auth or Auth())
    static = StaticFiles(directory=str(files("taskschedd.dashboard") / "static"))
    routes = [
        Route("/", dash.overview),
        Route("/jobs", dash.jobs),
        Route("/jobs/{job_id}", dash.job),
        Route("/jobs/{job_id}/{action}", dash.action, methods=["GET", "POST"]),
        Route("/series", dash.series),
        Route("/nodes", dash.nodes),
        Route("/purge", dash.purge, methods=["GET", "POST"]),
        Route("/live", dash.live),
        Route("/api/overview", dash.overview_json),
        Route("/api/jobs/{job_id}", dash.job_json),
        Route(
            "/login",
            lambda r: RedirectResponse((_base(r.scope) or "") + "/", 303),
            methods=["GET", "POST"],
        ),
        Route("/healthz", lambda r: PlainTextResponse("ok\n")),
        Mount("/static", static, name="static"),
    ]

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, TaskSchedError):
            return dash.error(request, 503, f"The store answered with an error: {exc}")
        raise exc

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        # The feed's thread and each thread's store (a server that runs the lifespan;
        # a mounted app is closed with its process).
        await run_in_threadpool(dash.close)

    app = Starlette(routes=routes, exception_handlers={TaskSchedError: on_error}, lifespan=lifespan)
    app.state.dashboard = dash
    app.add_middleware(Guard, auth=dash.auth, render_login=dash.render_login, hosts=hosts)
    return app


__all__ = ["LOOPBACK_HOSTS", "Guard", "create_app"]
