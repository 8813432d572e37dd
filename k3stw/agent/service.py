"""The service tree of ``k3s-agent``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twisted.application.service import IService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from k3stw.agent.cacerts import CAHashMismatch, Fetch
from k3stw.agent.join import Handshake, Joined, JoinRequest, Send
from k3stw.lifecycle import ApplianceService, StartupError, stop_with_error
from k3stw.logs import Logger
from k3stw.pki.token import Token


@dataclass(frozen=True)
class AgentConfig:
    """An agent's settings, already validated."""

    data_dir: Path
    server_url: str
    token: Token
    identity_dir: Path = Path("/etc/rancher/node")
    node_name: str = ""
    with_node_id: bool = False
    node_ips: tuple[str, ...] = ()
    node_external_ips: tuple[str, ...] = ()
    node_labels: tuple[str, ...] = ()
    node_taints: tuple[str, ...] = ()

    def join_request(self) -> JoinRequest:
        return JoinRequest(
            self.server_url,
            self.token,
            self.data_dir / "agent",
            self.identity_dir,
            self.node_name,
            self.with_node_id,
            self.node_ips,
        )


class AgentService(ApplianceService):
    """
    The root of an agent: the registration handshake (retrying while the
    server is unreachable or not ready, stopping the process if the token
    belongs to another cluster or the identity files cannot be used), then
    the kubelet.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        config: AgentConfig,
        fetch: Fetch,
        send: Send,
        start_kubelet: Callable[[Joined], IService] | None = None,
    ) -> None:
        super().__init__("k3s-agent")
        self.reactor = reactor
        self.config = config
        self.fetch = fetch
        self.send = send
        self.start_kubelet = start_kubelet
        self.joined: Joined | None = None
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
        handshake = Handshake(self.config.join_request(), self.reactor, self.fetch, self.send)
        self.joined = await handshake.run()
        self._log.info(
            "Node {node} joined the cluster at {url}; kubelet credentials are in {directory}",
            node=self.joined.identity.name,
            url=self.config.server_url,
            directory=str(self.config.data_dir / "agent"),
        )
        if self.start_kubelet is not None:
            self.start_kubelet(self.joined).setServiceParent(self)

    def _join_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(CAHashMismatch, StartupError):
            # The real reactor is also an IReactorCore; only it can end the process.
            stop_with_error(self.reactor, str(failure.value))  # type: ignore[arg-type]
            return
        self._log.failure("The agent stopped joining", failure)
