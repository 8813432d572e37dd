"""
Active health checks: every second, each server that is not waiting out a
backoff is asked "are you up?" by an injected check, and the answer drives its
state in the L{k3stw.loadbalancer.servers.ServerList}.

The check is a callable of the server address returning a ``Deferred[bool]``:
a TLS ``/ping`` probe, later the state of the tunnel to that server. A check
that fails (errback) or takes longer than ``timeout`` counts as failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS

from k3stw.httpclient import HTTPSClient
from k3stw.loadbalancer.servers import Server, ServerList
from k3stw.logs import Logger
from k3stw.machinery.timing import PeriodicJob

#: Is the server at this address up?
HealthCheck = Callable[[str], "Deferred[bool]"]


class HealthCheckService(Service):
    """
    Runs the health checks of ``servers`` every ``interval`` seconds.

    :param clock: schedules the rounds and the timeouts.
    :param servers: the list whose servers are checked.
    :param check: the check for servers without one of their own (None: no check,
        which k3s calls "unknown" and causes no transition).
    :param interval: seconds between rounds (k3s: 1 s).
    :param timeout: seconds before an unanswered check counts as failed.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        servers: ServerList,
        check: HealthCheck | None = None,
        interval: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.clock = clock
        self.servers = servers
        self.interval = interval
        self.timeout = timeout
        self._default_check = check
        self._checks: dict[str, HealthCheck | None] = {}
        self._running: dict[str, Deferred[Any]] = {}
        self._rounds = PeriodicJob(clock, interval, self._round, f"{servers.name} health checks")

    def set_check(self, address: str, check: HealthCheck | None) -> None:
        """Check ``address`` with ``check`` (for example its tunnel's state)."""
        self._checks[address] = check

    def set_default_check(self, check: HealthCheck | None) -> None:
        """Check servers without a check of their own with ``check``."""
        self._default_check = check

    def clear_check(self, address: str) -> None:
        """Check ``address`` with the default check again."""
        self._checks.pop(address, None)

    def startService(self) -> None:
        super().startService()
        self._rounds.startService()

    def stopService(self) -> None:
        super().stopService()
        self._rounds.stopService()
        for running in list(self._running.values()):
            running.cancel()

    async def _round(self) -> None:
        self.run_once()

    def run_once(self) -> None:
        """Start a check of every due server that has none running."""
        try:
            for server in self.servers.due_for_check():
                if server.address not in self._running:
                    self._start(server)
        except Exception:
            # A periodic job logs and survives its own exceptions.
            self._log.failure("Load balancer {name} health checks failed", name=self.servers.name)

    def _start(self, server: Server) -> None:
        check = self._checks.get(server.address, self._default_check)
        if check is None:
            return
        address = server.address
        answer: Deferred[bool] = maybeDeferred(check, address)
        answer.addTimeout(self.timeout, self.clock)
        answer.addCallbacks(
            lambda passed: self._check_answered(server, bool(passed)),
            lambda failure: self._check_answered(server, False, failure),
        )
        answer.addErrback(
            lambda failure: self._log.failure(
                "Load balancer {name} could not record a health check",
                failure,
                name=self.servers.name,
            )
        )
        self._running[address] = answer
        answer.addBoth(lambda _: self._running.pop(address, None))

    def _check_answered(self, server: Server, passed: bool, failure: Failure | None = None) -> None:
        if not self.running:
            return
        if failure is not None:
            self._log.debug(
                "Health check of load balancer server {address} failed: {error}",
                address=server.address,
                error=failure.getErrorMessage(),
            )
        self.servers.record_check(server, passed)


def ping_check(clock: IReactorTime, policy: IPolicyForHTTPS, timeout: float = 5.0) -> HealthCheck:
    """
    A TLS ``GET /ping`` straight to the server (not through the balancer):
    healthy when it answers 200.  The check until a tunnel reports instead.
    """
    client = HTTPSClient(clock, policy, persistent=False, timeout=timeout)

    async def ping(address: str) -> bool:
        response = await client.request(b"GET", f"https://{address}/ping")
        return response.code == 200

    return lambda address: Deferred.fromCoroutine(ping(address))
