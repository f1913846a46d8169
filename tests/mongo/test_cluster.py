"""Several worker processes share one MongoDB store: every job runs exactly once, also
when the server restarts (or crashes) in the middle of the drain.

Each child is a ``taskschedd.Worker`` with its own MongoStore (and so its own client,
created after fork). Runs are counted twice: in the store (status, attempt, events) and
in a log file the job appends to, which the store cannot influence.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from taskschedd.errors import StoreUnavailable
from taskschedd.model import JobQuery, JobStatus
from taskschedd.store.mongo import MongoStore
from tests.helpers import wait_for
from tests.mongo.jobs import MODULE
from tests.mongo_server import MongoServer, external_mongo_uri, unique_db_name
from tests.store.test_contract import new_job

FORK = multiprocessing.get_context("fork")
WORKERS = 3

# nx-27017 rejects dots in collection names (the defaults have them): see docs/nx-27017.md.
NAMES = {
    "jobs_collection": "taskscheduler_jobs",
    "events_collection": "taskscheduler_events",
    "nodes_collection": "taskscheduler_nodes",
}


def open_mongo(uri: str, database: str) -> MongoStore:
    return MongoStore(uri, database=database, poll_interval=0.25, **NAMES)


def _work(uri: str, database: str, node: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    from taskschedd import log
    from taskschedd.worker import Worker

    log.configure(level="error")  # 2 lines per job otherwise
    store = open_mongo(uri, database)
    try:
        worker = Worker(store, allowed_modules=[MODULE], node=node, lease=30.0, poll_interval=0.25)
        barrier.wait(30)
        while True:
            try:
                worker.run(idle_exit=1.5)
                return
            except StoreUnavailable:
                # Worker.run leaves StoreUnavailable from next_due() to its caller.
                time.sleep(0.05)
    finally:
        store.close()


class Drain:
    """Inserts ``n`` Record jobs, runs WORKERS worker processes, checks the outcome."""

    def __init__(self, uri: str, tmp_path: Path, n: int) -> None:
        self.uri = uri
        self.database = unique_db_name("cluster")
        self.log = tmp_path / "runs.log"
        self.n = n
        self.store = open_mongo(uri, self.database)
        now = time.time()
        self.ids = [f"job-{i:05d}" for i in range(n)]
        self.store.insert(
            [
                new_job(i, cls=f"{MODULE}.Record", data={"log": str(self.log)}, now=now)
                for i in self.ids
            ]
        )
        barrier = FORK.Barrier(WORKERS)
        self.procs = [
            FORK.Process(target=_work, args=(uri, self.database, f"node-{k}", barrier))
            for k in range(WORKERS)
        ]
        for p in self.procs:
            p.start()

    def done(self) -> int:
        try:
            return len(self.store.find(JobQuery(statuses=(JobStatus.DONE,))))
        except StoreUnavailable:
            return 0

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
        alive = [p.pid for p in self.procs if p.is_alive()]
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        assert not alive, f"workers still running after {timeout}s: {alive}"
        assert [p.exitcode for p in self.procs] == [0] * WORKERS

    def check_each_ran_once(self) -> None:
        runs = Counter(line.split()[0] for line in self.log.read_text().splitlines())
        twice = [job_id for job_id, count in runs.items() if count != 1]
        assert not twice, f"ran more than once: {twice[:10]}"
        assert sorted(runs) == self.ids, "some jobs never ran"
        jobs = self.store.find(JobQuery())
        assert len(jobs) == self.n
        assert all(j.status == JobStatus.DONE and j.attempt == 1 for j in jobs), [
            (j.id, j.status.name, j.attempt) for j in jobs if j.attempt != 1 or not j.is_final
        ][:10]
        pids = {j.result["pid"] for j in jobs}
        assert len(pids) >= 2, "one worker took every job"
        events = self.store.events(limit=10 * self.n)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))  # dense, ordered
        processing = Counter(e.job_id for e in events if e.status == JobStatus.PROCESSING)
        assert all(processing[i] == 1 for i in self.ids)

    def close(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        self.store.close()
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.uri, serverSelectionTimeoutMS=5000
        )
        with client:
            client.drop_database(self.database)


@pytest.fixture
def server() -> Iterator[MongoServer]:
    if external_mongo_uri() is not None:
        pytest.skip("stops and restarts the server")
    with MongoServer() as srv:
        yield srv


@pytest.mark.slow
def test_workers_drain_1000_jobs_each_run_exactly_once(mongo_uri: str, tmp_path: Path) -> None:
    drain = Drain(mongo_uri, tmp_path, 1000)
    try:
        drain.join(240)
        drain.check_each_ran_once()
    finally:
        drain.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restart", "kill"])
def test_server_restart_in_the_middle_of_a_drain_loses_nothing(
    server: MongoServer, tmp_path: Path, how: str
) -> None:
    drain = Drain(server.uri, tmp_path, 300)
    try:
        wait_for(lambda: drain.done() >= 60, timeout=60, message="60 jobs done")
        if how == "kill":
            server.kill()  # a crash: committed writes survive in the WAL
            server.start()
        else:
            server.restart()
        assert drain.done() < 300, "the drain ended before the outage: nothing was tested"
        drain.join(240)
        drain.check_each_ran_once()
    finally:
        drain.close()
