"""
Whether a backend has reached its database yet: L{DatastoreReadiness}, which
every backend's C{when_ready()} answers from, with the words each says when
it is unreachable or ready.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from k3stw.machinery.timing import Backoff

#: The wait between attempts to reach the database at start.
RECONNECT = Backoff(0.5, maximum=10.0)


class DatastoreReadiness:
    """
    A backend's readiness: false until it has reached its database, false
    again once it stops.

    :param description: how messages name the datastore (its endpoint, password redacted).
    :param log: the backend's logger, so that its lines keep its namespace.
    """

    def __init__(self, description: str, log: Logger) -> None:
        self.description = description
        self.ready = False
        self._log = log
        self._waiters: list[Deferred[None]] = []

    def when_ready(self) -> Deferred[None]:
        """Fires once the backend is ready."""
        if self.ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def unreachable(self, attempt: int, error: Exception) -> float:
        """
        Say that attempt number C{attempt} (from 1) failed with C{error}.

        :return: how long to wait before the next attempt (L{RECONNECT}).
        """
        delay = RECONNECT.delay(attempt)
        self._log.warn(
            "datastore {endpoint} unreachable (attempt {attempt}): {reason}; "
            "retrying in {delay:.1f}s",
            endpoint=self.description,
            attempt=attempt,
            reason=str(error),
            delay=delay,
        )
        return delay

    def reached(self, revision: int) -> None:
        """The backend is ready, at C{revision}: tell the log and the waiters."""
        self._log.info(
            "datastore {endpoint} ready at revision {rev}", endpoint=self.description, rev=revision
        )
        self.ready = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def lost(self) -> None:
        """The backend stopped; it is ready again only once it says so."""
        self.ready = False
