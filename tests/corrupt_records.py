"""Records damaged as another client could write them (a script, a bad migration, a hand
edit), one case per way, for SQLite rows and MongoDB documents; shared by the store and
fault tests."""

from __future__ import annotations

import contextlib
import copy
import sqlite3
import time
from pathlib import Path
from typing import Any

from taskschedd.model import JobRecord, JobStatus

# SQLite: each case is one UPDATE of a job added for later; "due" makes it due at once.
SQLITE_CASES: dict[str, str] = {
    "data not JSON": "data = '{not json'",
    "data a BLOB": "data = x'00ff10'",
    "data invalid UTF-8": "data = CAST(x'7b2261223a2022ff227d' AS TEXT)",
    "data a 5000-digit integer": "data = '[' || printf('%.5000c', '7') || ']'",
    "data 2000 levels deep": "data = printf('%.2000c', '[') || printf('%.2000c', ']')",
    "options not JSON": "options = 'retry=3'",
    "options ill-typed": 'options = \'{"retry": "many", "timeout": [1]}\'',
    "errors not JSON": "errors = 'oops'",
    "at text": "at = 'soon'",
    "status 99": "status = 99",
    "status -1": "status = -1",
    "status text": "status = 'abc'",
    "attempt text": "attempt = 'abc'",
    "attempt huge": "attempt = 9223372036854775807",
    "attempt negative": "attempt = -5",
    "priority text": "priority = 'high'",
    "spawn text": "spawn = 'yes'",
    "at beyond any date": "at = 1e300",
    "running, lease NULL": "status = 2, claim_token = 'tok-null', lease_until = NULL",
    "running, lease beyond any date": (
        "status = 2, claim_token = 'tok-far', lease_until = 1e300, node = 'ghost'"
    ),
    "running, lease text": "status = 2, claim_token = 'tok-text', lease_until = 'later'",
    "running, no token": "status = 2, claim_token = NULL, lease_until = 1.0",
    "running, expired, bad data": (
        "status = 2, claim_token = 'tok-exp', lease_until = 1.0, node = 'ghost', data = '{not json'"
    ),
}

# MongoDB: each case is one $set/$unset of a job added for later.
MONGO_CASES: dict[str, dict[str, Any]] = {
    "data not JSON": {"$set": {"data": "{not json"}},
    "data an object": {"$set": {"data": {"a": 1}}},
    "data missing": {"$unset": {"data": ""}},
    "options a string": {"$set": {"options": "retry=3"}},
    "options ill-typed": {"$set": {"options": {"retry": "many"}}},
    "errors not a list": {"$set": {"errors": "oops"}},
    "at a string": {"$set": {"at": "soon"}},
    "at null": {"$set": {"at": None}},
    "at beyond any date": {"$set": {"at": 1e300}},
    "running, lease beyond any date": {
        "$set": {
            "state": "running",
            "status": 2,
            "claim_token": "t-far",
            "lease_until": 1e300,
            "node": "ghost",
        }
    },
    "status 99": {"$set": {"status": 99}},
    "status text": {"$set": {"status": "abc"}},
    "state unknown": {"$set": {"state": "limbo"}},
    "attempt text": {"$set": {"attempt": "abc"}},
    "attempt negative": {"$set": {"attempt": -5}},
    "priority text": {"$set": {"priority": "high"}},
    "spawn text": {"$set": {"spawn": "yes"}},
    "running, lease missing": {
        "$set": {"state": "running", "status": 2, "claim_token": "tok-null"},
        "$unset": {"lease_until": ""},
    },
    "running, lease text": {
        "$set": {"state": "running", "status": 2, "claim_token": "t2", "lease_until": "later"}
    },
    "running, no token": {
        "$set": {"state": "running", "status": 2, "claim_token": None, "lease_until": 1.0}
    },
    "running, expired, bad data": {
        "$set": {
            "state": "running",
            "status": 2,
            "claim_token": "tok-exp",
            "lease_until": 1.0,
            "node": "ghost",
            "data": "{not json",
        }
    },
}


def damage_sqlite(path: str | Path, job_id: str, case: str) -> None:
    """Write the case's damage into the job's row, and make it due now, in one write."""
    with contextlib.closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as conn:
        sql = SQLITE_CASES[case]
        due = "" if "at =" in sql else ", at = ?"
        args: list[Any] = [] if due == "" else [time.time()]
        cur = conn.execute(f"UPDATE jobs SET {sql}{due} WHERE id = ?", [*args, job_id])
        assert cur.rowcount == 1


def damage_mongo(url: str, options: dict[str, Any], job_id: str, case: str) -> None:
    """Write the case's damage into the job's document, and make it due now, in one write."""
    import pymongo

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
    with client:
        coll = client[options["database"]][options["jobs_collection"]]
        update = copy.deepcopy(MONGO_CASES[case])
        if "at" not in update.get("$set", {}):
            update.setdefault("$set", {})["at"] = float(f"{time.time():.15g}")
        assert coll.update_one({"_id": job_id}, update).matched_count == 1


def quarantined(record: JobRecord) -> bool:
    """Ended FAILED with reason "corrupt" and the decoding error as its last error."""
    return (
        record.status is JobStatus.FAILED
        and record.reason == "corrupt"
        and bool(record.errors)
        and record.errors[-1].reason == "corrupt"
        and record.errors[-1].type == "CorruptRecord"
    )
