"""The dashboard's read model without a web server: the jobs list's filters, the exact
counts it shows, the per-minute chart."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from taskschedd.dashboard.live import Histogram
from taskschedd.dashboard.views import Counts, FilterError, Filters
from taskschedd.model import EventRecord, JobStatus

NOW = 1_800_000_000.0


def test_filters_parse_and_round_trip_to_a_query() -> None:
    f = Filters.parse(
        {"status": "Failed", "queue": "q1", "class": "app.Job", "id": "01a", "since": "1h",
         "until": "2027-01-15T10:00:00Z", "before": "1234"},
        now=NOW,
    )  # fmt: skip
    assert f.status is JobStatus.FAILED and f.since == NOW - 3600
    q = f.query(51)
    assert q.statuses == (JobStatus.FAILED,) and q.queues == ("q1",) and q.classes == ("app.Job",)
    assert (q.id_prefix, q.before_seq, q.limit, q.newest_first) == ("01a", 1234, 51, True)
    assert q.until == f.until
    # The next page keeps every filter and changes the cursor only.
    again = Filters.parse(dict(parse_qsl(f.link(before=99))), now=NOW)
    assert again.before == 99 and again.status is JobStatus.FAILED and again.id_prefix == "01a"


def test_empty_filters_filter_nothing() -> None:
    f = Filters.parse({"status": "", "queue": " ", "class": ""}, now=NOW)
    assert f == Filters()
    assert f.countable


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "lost"}, "unknown status 'lost'; accepted: waiting"),
        ({"before": "-1"}, "expected a page cursor"),
        ({"before": "1e9"}, "expected a page cursor"),
        ({"before": "١٢"}, "expected a page cursor"),  # non-ASCII digits
        ({"since": "yesterday"}, "since: expected"),
        ({"queue": "q" * 201}, "at most 200"),
        ({"offset": "100"}, "unknown filter 'offset'"),
    ],
)
def test_bad_filters_say_what_is_accepted(params: dict[str, str], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        Filters.parse(params, now=NOW)


ROWS = [
    (0, "default", "a.A", 5),
    (3, "default", "a.A", 100),
    (4, "default", "a.B", 7),
    (3, "mail", "a.B", 20),
    ("junk", "mail", "a.B", 1),  # another client's record: counted as what it is
    (3, 42, None, 2),
    (3, "mail", "a.A", 0),  # a counter at zero is no row
]


def test_counts_fold_by_status_queue_and_class() -> None:
    c = Counts.of(ROWS)
    assert c.total == 135
    assert {k: v for k, v in c.by_status.items() if k in ("WAITING", "DONE", "FAILED")} == {
        "WAITING": 5, "DONE": 122, "FAILED": 7,
    }  # fmt: skip
    assert sum(c.by_status.values()) == 135  # the junk status counted under its own name
    assert c.by_queue["default"] == {"WAITING": 5, "DONE": 100, "FAILED": 7}
    assert c.by_queue["<int>"] == {"DONE": 2}
    assert c.by_class["<NoneType>"] == {"DONE": 2}
    d = c.to_dict()
    assert [q["name"] for q in d["queues"]] == ["default", "mail", "<int>"]
    assert list(d["by_status"])[:8] == [s.name for s in JobStatus]


def test_counts_answer_a_filtered_total_only_when_exact() -> None:
    c = Counts.of(ROWS)
    assert c.matching(Filters()) == 135
    assert c.matching(Filters(status=JobStatus.DONE)) == 122
    assert c.matching(Filters(queue="default", status=JobStatus.FAILED)) == 7
    assert c.matching(Filters(cls="a.B")) == 28
    assert c.matching(Filters(cls="a.B", queue="mail")) is None  # not in one table
    assert c.matching(Filters(id_prefix="01")) is None
    assert c.matching(Filters(since=NOW)) is None


def _event(t: float, status: JobStatus) -> EventRecord:
    return EventRecord(seq=1, job_id="j", time=t, status=status, attempt=1, cls="c", queue="q")


def test_the_chart_counts_ended_jobs_per_minute_for_an_hour() -> None:
    h = Histogram()
    h.add(
        [
            _event(NOW - 30, JobStatus.DONE),
            _event(NOW - 20, JobStatus.DONE),
            _event(NOW - 10, JobStatus.FAILED),
            _event(NOW - 5, JobStatus.TIMEOUT),
            _event(NOW - 5, JobStatus.PROCESSING),  # not an end
            _event(NOW - 5, JobStatus.CANCELED),  # neither done nor failed
            _event(NOW - 7200, JobStatus.DONE),  # older than the hour
        ]
    )
    chart = h.series(NOW)
    assert len(chart["minutes"]) == 60
    assert (chart["done"], chart["failed"]) == (2, 2)
    assert chart["failure_rate"] == 0.5
    assert sum(m["done"] for m in chart["minutes"]) == 2
    assert chart["minutes"][-1]["t"] == int(NOW // 60) * 60
