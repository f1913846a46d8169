"""The README's "Writing jobs" example, runnable against the ``make run`` node.

``SendMail`` reads ``self.context.mailer``: what the node's setup hook (``setup`` below,
named in the configuration as ``setup_hook: taskschedd.examples.mail:setup``) built once
for each worker. Here the mailer only logs and counts what it would send, so the example
runs with no mail server; a real hook would open an SMTP connection or a client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from taskschedd import Job, log


# The README shows this class as written: keep the two the same (tests/docs checks it).
class SendMail(Job):  # in an importable module of yours, e.g. myapp/jobs.py
    def start(self) -> dict[str, str]:
        mailer = self.context.mailer  # what the node's setup hook built for this worker
        mailer.send(self.data["to"], self.data["body"])
        self.update_progress(100)
        return {"sent_to": self.data["to"]}  # stored as the job's result (JSON)


@dataclass
class LogMailer:
    """Stands in for an SMTP client: logs each mail on the node's log."""

    sent: int = 0
    _log: Any = field(default_factory=lambda: log.get_logger("taskschedd.examples.mail"))

    def send(self, to: str, body: str) -> None:
        if not isinstance(to, str) or "@" not in to:
            raise ValueError(f"not a mail address: {to!r}")
        self.sent += 1
        self._log.info(
            "mail sent (example mailer: nothing leaves this host)", to=to, chars=len(body)
        )


@dataclass(frozen=True)
class Context:
    """What every job of a worker sees as ``self.context``."""

    mailer: LogMailer


def setup() -> Context:
    """The setup hook: runs once in each worker before it takes jobs."""
    return Context(mailer=LogMailer())
