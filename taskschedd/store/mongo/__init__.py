"""The MongoDB store: one database shared by any number of nodes on any number of hosts.

Data model (collection names configurable; defaults are the PHP original's):

* jobs (``taskscheduler.jobs``, an ordinary collection, never capped): ``_id`` is the
  job id (a string). Times are float epoch seconds. ``status`` is the JobStatus number;
  ``state`` ("ready" for WAITING/POSTPONED, "running", "final") exists so that the claim
  filters on equality (``$in`` would be a full scan on nx-27017). ``seq`` orders jobs
  for FIFO: ``time.time_ns()`` made strictly increasing per store object, so it orders
  the jobs of one client exactly and those of different clients by clock.
  ``once`` is always present and unique: ``"k:<once_key>"`` while an add_job_once job is
  active, ``"j:<id>"`` otherwise; it makes add_job_once race-free without relying on
  how null or missing values behave in unique indexes. ``data``, ``result`` and each
  entry of ``errors`` are JSON text, so user keys (dots, ``$``) never become field
  names. ``ended_at`` (a BSON date) is set only when the job is final and only feeds the
  TTL index; nothing filters on it.
* events (``taskscheduler.events``): one document per state change. ``seq`` is dense
  and increasing in commit order: a writer inserts ``_id`` = the zero-padded seq one
  above a seq it saw visible: the highest it read, or (without a read: one round trip
  per event) its own last insert or the top it read less than 0.25 s ago, or the seq a
  duplicate key just proved taken; after a few duplicates it reads the top again
  (events.EventLog). An event with seq N is therefore only ever written after N-1 was
  visible, so a follower reading ``seq > after`` never skips one that commits late (a
  shared counter would let N+1 commit before N). A floor document (``_id`` ``~floor``,
  no job) keeps the highest seq handed out when events are deleted (purge, flush, TTL),
  so seqs are not reused (EventLog says when a concurrent flush can still make one be).
* nodes (``taskscheduler.nodes``): ``_id`` is the node name; heartbeats upsert it.
* limits (``<jobs>_limits``, ``<jobs>_slots``): limit definitions with their rates'
  start logs, and what running jobs hold (limit slots, exclusive keys), fenced by the
  claim token and ended by the lease; a job joins them by its ``lim`` and ``xkey``
  fields (only present when set). See gates.py for the protocol (no transactions).

Every write after a claim is filtered by ``{_id, claim_token}``; a claim whose reply is
lost (AutoReconnect) is looked up by its token, never re-issued. ``settled_by`` (the
token) and, for a batch, ``settle_op`` say which settle landed. ``settle_batch`` does a
worker's batch in a few commands (bulk updates, each job still atomic on its own; see
docs/nx-27017.md, "Batches"). Job state is written
with write concern ``majority`` (journaled) by default; at start the store warns when
the deployment is a single server. The client is created lazily in each process (pymongo
is not fork-safe). Network errors become StoreUnavailable (the callers back off and
retry); URL passwords never appear in logs or errors.
"""

from taskschedd.store.mongo.store import DEFAULT_DATABASE, MongoStore
from taskschedd.store.mongo.waker import MongoWaker

__all__ = ["DEFAULT_DATABASE", "MongoStore", "MongoWaker"]
