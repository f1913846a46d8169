"""The Prometheus endpoint: scraped over real HTTP, exposition parsed, values and labels checked."""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from taskschedd import __version__
from taskschedd.errors import TaskSchedError
from taskschedd.metrics import (
    CONTENT_TYPE,
    DURATION_BUCKETS,
    MAX_LABEL_LENGTH,
    MAX_UNPROVEN,
    OTHER,
    QUEUE_REFRESH_IDLE,
    QUEUE_REFRESH_INTERVAL,
    Metrics,
    MetricsWriter,
    format_value,
)
from taskschedd.metricsserver import MAX_REQUEST, MetricsServer, free_fds
from tests.helpers import wait_for

# name{labels} value, with label values that may hold escaped quotes, backslashes, newlines.
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(?P<key>[a-zA-Z_]\w*)="(?P<value>(?:[^"\\]|\\.)*)",?')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), value)


def parse(text: str) -> tuple[Samples, dict[str, str], dict[str, str]]:
    """Samples keyed by (name, labels), and the TYPE and HELP of each family."""
    samples: Samples = {}
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line[7:].split(" ", 1)
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            name, text_ = line[7:].split(" ", 1)
            helps[name] = text_
            continue
        m = SAMPLE.match(line)
        assert m, f"not an exposition line: {line!r}"
        labels = m["labels"] or ""
        pairs = [(p["key"], unescape(p["value"])) for p in LABEL.finditer(labels)]
        assert "".join(p[0] for p in LABEL.finditer(labels)) == labels, line
        key = (m["name"], frozenset(pairs))
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = float(m["value"])
    return samples, types, helps


def series(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def scrape(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(version=__version__)


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    with MetricsServer(("127.0.0.1", 0), metrics.collect) as srv:
        yield srv


def test_scrape_of_a_fresh_node(metrics: Metrics, server: MetricsServer) -> None:
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    status, ctype, body = scrape(server.url)
    assert (status, ctype) == (200, CONTENT_TYPE)
    samples, types, helps = parse(body)
    assert types == {
        "taskschedd_jobs_total": "counter",
        "taskschedd_job_duration_seconds": "histogram",
        "taskschedd_queue_depth": "gauge",
        "taskschedd_queue_oldest_waiting_seconds": "gauge",
        "taskschedd_workers": "gauge",
        "taskschedd_lease_reaps_total": "counter",
        "taskschedd_build_info": "gauge",
    }
    assert set(helps) == set(types) and all(helps.values())
    assert samples == {
        series("taskschedd_workers", state="busy"): 0,
        series("taskschedd_workers", state="idle"): 0,
        series("taskschedd_lease_reaps_total"): 0,
        series("taskschedd_build_info", version=__version__): 1,
    }


def test_scrape_after_updates(metrics: Metrics, server: MetricsServer) -> None:
    metrics.job_finished("myapp.jobs.Mail", "done", 0.003)
    metrics.job_finished("myapp.jobs.Mail", "done", 0.2)
    metrics.job_finished("myapp.jobs.Mail", "failed", 7.5)
    metrics.job_finished("myapp.jobs.Mail", "retried", 1000.0)  # beyond the last bucket
    metrics.job_finished("myapp.jobs.Report", "canceled")  # never ran: no duration
    metrics.lease_reaped()
    metrics.lease_reaped(2)
    metrics.set_workers(busy=3, idle=1)
    stats = {
        "by_queue": {
            "default": {"WAITING": 4, "POSTPONED": 1, "PROCESSING": 3, "DONE": 9},
            "batch": {"DONE": 2},
        },
        "oldest_waiting_age": {"default": 12.5},
    }
    metrics.set_queue_stats(stats, queues=["critical", "default"])

    samples, _, _ = parse(scrape(server.url)[2])
    mail, report = "myapp.jobs.Mail", "myapp.jobs.Report"
    assert samples[series("taskschedd_jobs_total", **{"class": mail, "outcome": "done"})] == 2
    assert samples[series("taskschedd_jobs_total", **{"class": mail, "outcome": "failed"})] == 1
    assert samples[series("taskschedd_jobs_total", **{"class": report, "outcome": "canceled"})]
    buckets = {
        dict(labels)["le"]: value
        for (name, labels), value in samples.items()
        if name == "taskschedd_job_duration_seconds_bucket" and ("class", mail) in labels
    }
    assert list(buckets) == [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]
    assert buckets["0.005"] == 1
    assert buckets["0.25"] == 2
    assert buckets["10.0"] == 3
    assert buckets["300.0"] == 3
    assert buckets["+Inf"] == 4
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert samples[series("taskschedd_job_duration_seconds_count", **{"class": mail})] == 4
    total = samples[series("taskschedd_job_duration_seconds_sum", **{"class": mail})]
    assert math.isclose(total, 0.003 + 0.2 + 7.5 + 1000.0)
    assert series("taskschedd_job_duration_seconds_count", **{"class": report}) not in samples
    assert samples[series("taskschedd_lease_reaps_total")] == 3
    assert samples[series("taskschedd_workers", state="busy")] == 3
    assert samples[series("taskschedd_workers", state="idle")] == 1
    depth = {dict(labels)["queue"]: v for (n, labels), v in samples.items() if n.endswith("_depth")}
    assert depth == {"critical": 0, "default": 5, "batch": 0}
    oldest = {
        dict(labels)["queue"]: v
        for (n, labels), v in samples.items()
        if n.endswith("_oldest_waiting_seconds")
    }
    assert oldest == {"critical": 0, "default": 12.5, "batch": 0}

    metrics.set_queue_stats({"by_queue": {}, "oldest_waiting_age": {}}, queues=["default"])
    samples, _, _ = parse(scrape(server.url)[2])
    assert samples[series("taskschedd_queue_depth", queue="default")] == 0
    assert series("taskschedd_queue_depth", queue="batch") not in samples  # no stale series


def test_label_values_are_escaped(metrics: Metrics, server: MetricsServer) -> None:
    nasty = 'a"b\\c\nd} e="f'
    metrics.job_finished(nasty, "done", 1.0)
    body = scrape(server.url)[2]
    assert 'class="a\\"b\\\\c\\nd} e=\\"f"' in body
    samples, _, _ = parse(body)
    assert samples[series("taskschedd_jobs_total", **{"class": nasty, "outcome": "done"})] == 1
    assert len(body.splitlines()) == len([line for line in body.split("\n") if line])


def test_other_paths_are_404(server: MetricsServer) -> None:
    base = server.url.removesuffix("/metrics")
    for path in ("/", "/metrics/extra", "/favicon.ico"):
        status, _, body = scrape(base + path)
        assert status == 404, path
        assert "/metrics" in body
    assert scrape(server.url + "?name[]=x")[0] == 200


def test_a_failing_collector_gives_500_and_the_server_lives_on() -> None:
    calls = []

    def collect() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return "# HELP x y\n# TYPE x gauge\nx 1\n"

    with MetricsServer(("127.0.0.1", 0), collect) as srv:
        status, _, body = scrape(srv.url)
        assert status == 500 and "boom" in body
        assert scrape(srv.url) == (200, CONTENT_TYPE, "# HELP x y\n# TYPE x gauge\nx 1\n")


def test_close_releases_the_port(metrics: Metrics) -> None:
    srv = MetricsServer(("127.0.0.1", 0), metrics.collect)
    url = srv.url
    assert scrape(url)[0] == 200
    srv.close()
    srv.close()  # twice is fine
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    host, port = srv.address
    with socket.create_server((host, port)):  # free again
        pass


def test_a_busy_port_is_a_clear_error(metrics: Metrics, server: MetricsServer) -> None:
    with pytest.raises(TaskSchedError, match=r"cannot serve metrics on 127\.0\.0\.1:\d+: .*"):
        MetricsServer(server.address, metrics.collect)


def test_ipv6_listen_address(metrics: Metrics) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = MetricsServer(("::1", 0), metrics.collect)
    except TaskSchedError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with srv:
        assert srv.url.startswith("http://[::1]:")
        assert scrape(srv.url)[0] == 200


def test_forked_child_does_not_hold_the_listening_socket(server: MetricsServer) -> None:
    fd = server.listener.fileno()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.fstat(fd)
            os._exit(1)  # still open
        except OSError:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert scrape(server.url)[0] == 200  # the parent still serves


def test_queue_refresh_is_due_only_while_scraped(metrics: Metrics) -> None:
    t = 1000.0
    assert metrics.queue_refresh_due(t)  # never refreshed
    metrics.set_queue_stats({}, queues=["default"], now=t)
    assert not metrics.queue_refresh_due(t + QUEUE_REFRESH_INTERVAL + 1)  # nobody scraped
    metrics.collect()  # a scrape, at the real monotonic time
    now = time.monotonic()
    metrics.set_queue_stats({}, queues=["default"], now=now)
    assert not metrics.queue_refresh_due(now + 1)
    assert metrics.queue_refresh_due(now + QUEUE_REFRESH_INTERVAL)
    assert not metrics.queue_refresh_due(now + QUEUE_REFRESH_IDLE + 1)


def test_writer_and_values() -> None:
    assert [format_value(v) for v in (3, 3.0, 0.25, math.inf, -math.inf, math.nan)] == [
        "3", "3", "0.25", "+Inf", "-Inf", "NaN",
    ]  # fmt: skip
    w = MetricsWriter()
    with pytest.raises(ValueError):
        w.sample(1)
    with pytest.raises(ValueError):
        w.family("bad-name", "gauge", "x")
    w.family("ok", "gauge", "line one\nback\\slash")
    with pytest.raises(ValueError):
        w.sample(1, {"bad-label": "x"})
    w.sample(2, {"a": "b"})
    assert w.text() == '# HELP ok line one\\nback\\\\slash\n# TYPE ok gauge\nok{a="b"} 2\n'
    with pytest.raises(ValueError):
        Metrics("1", buckets=[1.0, 0.5])
    with pytest.raises(ValueError):
        Metrics("1").lease_reaped(-1)


# -- bounded labels ------------------------------------------------------------------------


def test_unknown_unproven_and_excess_classes_count_as_other() -> None:
    m = Metrics(
        __version__, known_class=lambda cls: cls.startswith("app."), max_classes=MAX_UNPROVEN + 3
    )
    m.job_finished("elsewhere.Job", "done", 0.1)  # not known to the node
    m.job_finished("app." + "x" * MAX_LABEL_LENGTH, "done", 0.1)  # too long
    m.job_finished(OTHER, "done", 0.1)  # would merge with the fold
    for i in range(MAX_UNPROVEN + 5):  # only ever failed: may be made up
        m.job_finished(f"app.Made{i}", "failed", 0.0)
    m.job_finished("app.Made0", "done", 0.2)  # proven: keeps its label, counts as proven
    for i in range(5):
        m.job_finished(f"app.Real{i}", "done", 0.1)
    samples, _, _ = parse(m.collect())
    jobs = {
        dict(labels)["class"]: value
        for (name, labels), value in samples.items()
        if name == "taskschedd_jobs_total" and dict(labels)["outcome"] in ("done", "failed")
    }
    unproven = {f"app.Made{i}" for i in range(MAX_UNPROVEN)}
    assert set(jobs) == {OTHER, *unproven, "app.Real0", "app.Real1", "app.Real2"}
    other = {k: v for k, v in samples.items() if dict(k[1]).get("class") == OTHER}
    assert other[series("taskschedd_jobs_total", **{"class": OTHER, "outcome": "done"})] == 5
    assert other[series("taskschedd_jobs_total", **{"class": OTHER, "outcome": "failed"})] == 5
    assert samples[series("taskschedd_jobs_total", **{"class": "app.Made0", "outcome": "done"})]


def test_queue_labels_beyond_the_cap_are_summed_as_other() -> None:
    m = Metrics(__version__, max_queues=2)
    by_queue = {f"q{i}": {"WAITING": 1, "POSTPONED": 1} for i in range(6)}
    by_queue["z" * (MAX_LABEL_LENGTH + 1)] = {"WAITING": 10}
    ages = {"q5": 7.0, "q0": 1.0, "q9": "bad"}
    m.set_queue_stats({"by_queue": by_queue, "oldest_waiting_age": ages}, queues=["mine"])
    samples, _, _ = parse(m.collect())
    depth = {dict(k[1])["queue"]: v for k, v in samples.items() if k[0] == "taskschedd_queue_depth"}
    oldest = {
        dict(k[1])["queue"]: v
        for k, v in samples.items()
        if k[0] == "taskschedd_queue_oldest_waiting_seconds"
    }
    assert depth == {"mine": 0, "q0": 2, "q1": 2, OTHER: 4 * 2 + 10}
    assert oldest == {"mine": 0, "q0": 1.0, "q1": 0, OTHER: 7.0}


# -- a server that cannot be hurt ----------------------------------------------------------


def _thread_cpu(thread_id: int) -> float:
    with open(f"/proc/self/task/{thread_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def test_idle_connections_are_bounded_evicted_and_timed_out(metrics: Metrics) -> None:
    threads = threading.active_count()
    with MetricsServer(("127.0.0.1", 0), metrics.collect, max_connections=4, timeout=0.5) as srv:
        socks = [socket.create_connection(srv.address, timeout=5) for _ in range(50)]
        try:
            assert scrape(srv.url)[0] == 200  # evicts an idle one to get in
            assert threading.active_count() == threads + 1
            assert srv.connections <= 4
            wait_for(lambda: all(_closed_by_peer(s) for s in socks), 5, message="all closed")
            wait_for(lambda: srv.connections == 0, 2, message="no connection left")
        finally:
            for s in socks:
                s.close()


def test_a_trickling_client_is_cut_off_at_its_deadline(metrics: Metrics) -> None:
    with (
        MetricsServer(("127.0.0.1", 0), metrics.collect, timeout=0.5) as srv,
        socket.create_connection(srv.address, timeout=5) as s,
    ):
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while not _closed_by_peer(s):  # one byte every 0.1 s, never done
                s.send(b"G")
                time.sleep(0.1)
                assert time.monotonic() - started < 5
        assert time.monotonic() - started < 2


def test_without_spare_descriptors_it_pauses_without_spinning(metrics: Metrics) -> None:
    spare = free_fds()
    if spare is None:
        pytest.skip("no descriptor count here")
    with MetricsServer(("127.0.0.1", 0), metrics.collect, fd_reserve=spare + 100) as srv:
        thread_id = srv._thread.native_id
        assert thread_id is not None
        cpu = _thread_cpu(thread_id)
        with socket.create_connection(srv.address, timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            s.settimeout(1.0)
            with pytest.raises(TimeoutError):
                s.recv(100)  # waits in the backlog
            assert _thread_cpu(thread_id) - cpu < 0.3
            srv.fd_reserve = 0  # descriptors to spare again: served after the pause
            s.settimeout(5)
            assert s.recv(100).startswith(b"HTTP/1.1 200 OK")


def test_bad_requests_get_short_answers(server: MetricsServer) -> None:
    def ask(request: bytes) -> bytes:
        with socket.create_connection(server.address, timeout=5) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data

    assert ask(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert ask(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert ask(b"GET /" + b"a" * (MAX_REQUEST + 10)).startswith(b"HTTP/1.1 431 ")
    head = ask(b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")


def test_clients_that_reset_leave_no_traceback(
    metrics: Metrics, capfd: pytest.CaptureFixture[str]
) -> None:
    with MetricsServer(("127.0.0.1", 0), metrics.collect) as srv:
        for i in range(30):
            s = socket.create_connection(srv.address, timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n" if i % 2 else b"GET /met")
            s.close()  # RST
        assert scrape(srv.url)[0] == 200
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
