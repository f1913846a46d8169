"""A bare taskschedd worker process (no master): ``python -m bench.tsd_worker STORE_URL``.

Used for the "bare workers" row, which shows what the master costs (and as the stand-in
when the daemon is not available).
"""

from __future__ import annotations

import signal
import sys

from taskschedd import Worker
from taskschedd.store import open_store


def main() -> int:
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    store = open_store(sys.argv[1], create=True)
    # As the daemon's workers are by default (claim_ahead: 64).
    worker = Worker(store, allowed_modules=["bench.jobs"], in_process=False, claim_ahead=64)
    worker.run(stop=lambda: bool(stopping), idle_exit=float(sys.argv[2]) if sys.argv[2:] else None)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
