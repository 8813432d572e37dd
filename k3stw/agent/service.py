"""The service tree of ``k3s-agent``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from k3stw.agent.cacerts import CAHashMismatch, Fetch, fetch_cluster_ca
from k3stw.lifecycle import ApplianceService, stop_with_error
from k3stw.logs import Logger
from k3stw.pki.token import Token

#: How long k3s waits before validating the token against the server again.
RETRY_DELAY = 2.0


@dataclass(frozen=True)
class AgentConfig:
    """An agent's settings, already validated."""

    data_dir: Path
    server_url: str
    token: Token


class AgentService(ApplianceService):
    """
    The root of an agent.  It validates the cluster CA against the token,
    retrying while the server cannot be reached, and stops the process if
    the token belongs to another cluster.
    """

    _log = Logger()

    def __init__(self, reactor: IReactorTime, config: AgentConfig, fetch: Fetch):
        super().__init__("k3s-agent")
        self.reactor = reactor
        self.config = config
        self.fetch = fetch
        self.cluster_ca: bytes | None = None
        self._joining: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._joining = Deferred.fromCoroutine(self._join())
        self._joining.addErrback(self._join_failed)

    def stopService(self) -> Deferred[None] | None:
        if self._joining is not None:
            self._joining.cancel()
        stopped: Deferred[None] | None = super().stopService()
        return stopped

    async def _join(self) -> None:
        url = self.config.server_url
        while True:
            try:
                self.cluster_ca = await fetch_cluster_ca(self.fetch, url, self.config.token)
                break
            except CAHashMismatch:
                raise
            except Exception as e:
                self._log.error(
                    "Failed to validate connection to cluster at {url}: {error}",
                    url=url,
                    error=str(e),
                )
                await deferLater(self.reactor, RETRY_DELAY)
        self._log.info(
            "Cluster CA of {url} verified against the token; TLS to the server is now pinned "
            "to it. Waiting: node registration is not part of this k3stw release yet.",
            url=url,
        )

    def _join_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(CAHashMismatch):
            # The real reactor is also an IReactorCore; only it can end the process.
            stop_with_error(self.reactor, str(failure.value))  # type: ignore[arg-type]
            return
        self._log.failure("The agent stopped joining", failure)
