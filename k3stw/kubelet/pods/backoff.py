"""
client-go's C{flowcontrol.Backoff} as the kubelet uses it for crashing
containers and failing image pulls: 10 s doubling to 300 s, no jitter,
measured from the failure's time; an entry quiet for twice the maximum is
forgotten, so the next failure waits 10 s again.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The kubelet's ``backOffPeriod`` and ``MaxContainerBackOff``.
INITIAL = 10.0
MAXIMUM = 300.0


@dataclass
class _Entry:
    delay: float
    updated: float


class FailureBackoff:
    """Back-off per key (a container of a pod, an image of a pod)."""

    def __init__(self, initial: float = INITIAL, maximum: float = MAXIMUM) -> None:
        self.initial = initial
        self.maximum = maximum
        self._entries: dict[str, _Entry] = {}

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and now - entry.updated > 2 * self.maximum:
            del self._entries[key]
            return None
        return entry

    def waiting(self, key: str, since: float, now: float) -> float | None:
        """The current delay if a failure at C{since} is still inside it at C{now}, else None."""
        entry = self._live(key, now)
        if entry is None or now - since >= entry.delay:
            return None
        return entry.delay

    def next(self, key: str, at: float) -> None:
        """A failure at C{at}: the first waits C{initial}, each one after twice as long."""
        entry = self._live(key, at)
        if entry is None:
            self._entries[key] = _Entry(self.initial, at)
        else:
            entry.delay = min(entry.delay * 2, self.maximum)
            entry.updated = at

    def forget(self, prefix: str) -> None:
        """Drop every key that starts with C{prefix} (a pod that is gone)."""
        for key in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[key]
