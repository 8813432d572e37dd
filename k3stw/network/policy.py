"""
The network policy controller every node runs (k3s's embedded kube-router
netpol): informers on Pods, Namespaces and NetworkPolicies, and a full sync
of this node's filter table and ipsets after any change that matters and
every 5 minutes.  One sync runs at a time; requests made meanwhile collapse
into one more.  A sync is: C{iptables-save} of the filter table, the rules
rendered by L{k3stw.network.policyrules}, C{ipset restore} of the sets, one
C{iptables-restore --noflush} transaction, and the destruction of the sets
no rule uses any more.  The rules stay in place when the node stops, as
kube-router leaves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall

from k3stw.kubeclient import KubeAPI
from k3stw.logs import Logger
from k3stw.machinery.informer import EventHandler, Informer, Retention, each_change
from k3stw.machinery.objects import Object, metadata
from k3stw.machinery.processes import ProcessStartError, run_command
from k3stw.machinery.source import HTTPSource
from k3stw.network.iptables import TIMEOUT, IPTables
from k3stw.network.policyrules import PolicySettings, relevant_pod_change, render, stale_sets

__all__ = ["NetworkPolicyController"]

PODS_PATH = "/api/v1/pods"
NAMESPACES_PATH = "/api/v1/namespaces"
POLICIES_PATH = "/apis/networking.k8s.io/v1/networkpolicies"
#: kube-router's default ``--iptables-sync-period``, which k3s keeps.
SYNC_PERIOD = 300.0
#: Seconds before a failed sync is tried again.
RETRY_DELAY = 10.0


def _meta(obj: Object) -> Object:
    kept = ("name", "namespace", "uid", "resourceVersion", "labels")
    return {key: value for key, value in metadata(obj).items() if key in kept}


def _pod_view(obj: Object) -> Object:
    """What the rules read of a pod: labels, host network, container ports, status addresses."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return {
        "metadata": _meta(obj),
        "spec": {
            "hostNetwork": spec.get("hostNetwork", False),
            "containers": [
                {"ports": container.get("ports") or []}
                for container in spec.get("containers") or ()
                if container.get("ports")
            ],
        },
        "status": {
            key: status[key] for key in ("phase", "podIP", "podIPs", "hostIP") if key in status
        },
    }


def _metadata_view(obj: Object) -> Object:
    return {"metadata": _meta(obj)}


def _policy_view(obj: Object) -> Object:
    return {"metadata": _meta(obj), "spec": obj.get("spec") or {}}


class NetworkPolicyController(MultiService):
    """
    NetworkPolicy enforcement on one node.

    :param clock: the reactor: spawns the commands, times the syncs.
    :param client: the API as ``system:k3s-controller``.
    :param settings: the node's addresses and the cluster's ranges.
    :param iptables: the node's IPv4 iptables (its C{prefix} runs C{ipset} too).
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        client: KubeAPI,
        settings: PolicySettings,
        iptables: IPTables,
        period: float = SYNC_PERIOD,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.settings = settings
        self.iptables = iptables
        self.period = period
        self.pods = self._informer(client, PODS_PATH, _pod_view)
        self.namespaces = self._informer(client, NAMESPACES_PATH, _metadata_view)
        self.policies = self._informer(client, POLICIES_PATH, _policy_view)
        self.pods.add_handler(
            EventHandler(
                on_add=self._changed,
                on_update=lambda old, new: (
                    self._changed(new) if relevant_pod_change(old, new) else None
                ),
                on_delete=self._changed,
            )
        )
        self.namespaces.add_handler(each_change(self._changed))
        self.policies.add_handler(each_change(self._changed))
        #: The full syncs done.
        self.syncs = 0
        self._ready = False
        self._running: Deferred[None] | None = None
        self._again = False
        self._retry: IDelayedCall | None = None
        self._loop: LoopingCall | None = None

    def _informer(self, client: KubeAPI, path: str, view: Any) -> Informer:
        informer = Informer(HTTPSource(client, path), self.clock, retention=Retention(trim=view))
        informer.setServiceParent(self)
        return informer

    def startService(self) -> None:
        super().startService()
        synced = [
            informer.when_synced() for informer in (self.pods, self.namespaces, self.policies)
        ]
        DeferredList(synced, fireOnOneErrback=True, consumeErrors=True).addCallback(self._synced)

    def _synced(self, _: object) -> None:
        if not self.running:
            return
        self._ready = True
        # A sync now, and one every period (requested like any other).
        self._loop = LoopingCall(self.request_sync)
        self._loop.clock = IReactorTime(self.clock)
        self._loop.start(self.period, now=True)

    def stopService(self) -> Deferred[None]:
        self._ready = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        super().stopService()
        # A sync under way finishes (its commands are bounded), so the table is never half-done.
        running = self._running
        if running is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        running.addBoth(lambda _: done.callback(None))
        return done

    def _changed(self, obj: Object) -> None:
        self.request_sync()

    def request_sync(self) -> None:
        """A full sync: now, or once more after the one under way."""
        if not self._ready:
            return
        if self._running is not None:
            self._again = True
            return
        self._running = Deferred.fromCoroutine(self._sync_until_current())

    async def _sync_until_current(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self.sync()
                except ProcessStartError as e:
                    # As k3s does without a usable ipset: no enforcement, said once.
                    self._log.error("Network policy controller not running: {error}", error=e)
                    self._ready = False
                except Exception:
                    self._log.failure("Network policy sync failed; trying again shortly")
                    if self._ready and self._retry is None:
                        self._retry = IReactorTime(self.clock).callLater(
                            RETRY_DELAY, self._retry_now
                        )
                if not (self._again and self._ready):
                    return
        finally:
            self._running = None

    def _retry_now(self) -> None:
        self._retry = None
        self.request_sync()

    async def sync(self) -> None:
        """One full sync of the node's policy rules and sets."""
        version = str(int(IReactorTime(self.clock).seconds() * 1e9))
        saved = await self.iptables.save("filter")
        firewall = render(
            self.pods.cache.list(),
            self.namespaces.cache.list(),
            self.policies.cache.list(),
            self.settings,
            version,
            saved,
        )
        await self._ipset("restore", "-exist", stdin=firewall.ipset_restore())
        await self.iptables.restore(firewall.filter_rules)
        # A set can be destroyed only once no rule matches it.
        names = (await self._ipset("list", "-n")).split()
        stale = stale_sets(names, firewall)
        if stale:
            await self._ipset("restore", stdin="".join(f"destroy {name}\n" for name in stale))
        self.syncs += 1
        self._log.debug(
            "Network policy sync {version}: {chains} chains, {sets} sets",
            version=version,
            chains=len(firewall.chains),
            sets=len(firewall.sets),
        )

    async def _ipset(self, *args: str, stdin: str | None = None) -> str:
        argv: Sequence[str] = (*self.iptables.prefix, "ipset", *args)
        done = await run_command(
            self.clock, argv, timeout=TIMEOUT, stdin=None if stdin is None else stdin.encode()
        )
        return done.stdout.decode()
