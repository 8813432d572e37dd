"""
kube-proxy as every k3s node runs it: informers on Services and
EndpointSlices (as ``system:kube-proxy``), and a sync that writes, in its
iptables mode (k3s's default), L{k3stw.network.proxyrules}' rules in one
``iptables-restore`` transaction or, in its nftables mode
(``--kube-proxy-arg=proxy-mode=nftables``), L{k3stw.network.proxynft}'s in
one ``nft -f`` transaction.  Each mode removes the other's rules at its first
sync, as kube-proxy does when the mode changes.

Syncs follow changes, at most one a second (kube's minSyncPeriod), and come
every 30 s regardless (its syncPeriod).  As kube-proxy's, they are partial:
the top-level chains are written whole, but only the changed Services' own
chains (``KUBE-SVC-``, ``KUBE-SEP-``...), the others staying as they are, and
the chains the previous sync made and this one does not are deleted.  A full
sync (the first, one after a failure, and one an hour) reads the nat table
(``iptables-save``), writes every chain that does not hold its rules already
(so a rule changed or deleted by hand comes back), deletes service chains
left from before, and ensures the jumps from the built-in chains one rule at
a time; in the nftables mode it reads kube-proxy's table and writes the
chains that differ likewise (L{proxynft.render_nft}).  Chains of others are
never flushed.  The rules stay in place when the service stops, as
kube-proxy leaves them.

At start it sets the sysctls a node needs: ``net.ipv4.ip_forward``,
``net.ipv4.conf.all.route_localnet`` (NodePorts on 127.0.0.1; iptables mode
only, as kube's) and, where
br_netfilter is loaded, ``net.bridge.bridge-nf-call-iptables``.  UDP flows to
removed endpoints, and flows to a port that had no endpoint (or no rule yet)
before this sync gave it some, are dropped with ``conntrack`` when it is
installed (L{proxyrules.stale_udp_flows}).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall

from k3stw.kubeclient import KubeAPI
from k3stw.logs import Logger
from k3stw.machinery.informer import Informer, Retention, each_change
from k3stw.machinery.objects import Object
from k3stw.machinery.processes import CommandFailed, run_command
from k3stw.machinery.source import HTTPSource
from k3stw.network.iptables import (
    IPTables,
    IPTablesError,
    saved_chains,
    unchanged_chains_dropped,
)
from k3stw.network.nftables import NFTables, NFTablesError
from k3stw.network.node import NetworkSettings
from k3stw.network.proxynft import (
    TABLE,
    Existing,
    NFTRuleset,
    cleanup_text,
    parse_table,
    render_nft,
)
from k3stw.network.proxyrules import (
    FILTER_CHAINS,
    JUMPS,
    LOCALNET_JUMPS,
    NAT_CHAINS,
    NodeFacts,
    Ruleset,
    UDPFlows,
    is_service_chain,
    render,
    stale_udp_flows,
)

__all__ = ["IPTABLES", "NFTABLES", "KubeProxy"]

#: kube-proxy's ``--proxy-mode`` values k3stw runs.
IPTABLES, NFTABLES = "iptables", "nftables"

SERVICES_PATH = "/api/v1/services"
SLICES_PATH = "/apis/discovery.k8s.io/v1/endpointslices"
#: kube-proxy's selector for both: not another proxy's Services, not headless Services' slices.
SELECTOR = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
#: kube-proxy's minSyncPeriod, syncPeriod and full-resync period, in seconds.
MIN_SYNC_PERIOD = 1.0
SYNC_PERIOD = 30.0
FULL_SYNC_PERIOD = 3600.0


#: Where an EndpointSlice names its Service.
SLICE_OF = "kubernetes.io/service-name"


def _service_of(obj: Object, label: str | None = None) -> tuple[str, str]:
    """The (namespace, name) of a Service, or of the Service an EndpointSlice's C{label} names."""
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(label, "") if label else meta.get("name", "")
    return (meta.get("namespace") or "default", str(name))


def _trim(obj: Object) -> Object:
    """What the rules read of a Service or EndpointSlice: no managed fields or annotations."""
    meta = {
        key: value
        for key, value in (obj.get("metadata") or {}).items()
        if key not in ("managedFields", "annotations", "ownerReferences")
    }
    return {**obj, "metadata": meta}


class KubeProxy(Service):
    """
    The node's kube-proxy (see the module docstring).

    :param client: the API as ``system:kube-proxy``.
    :param iptables: the IPv4 iptables to write.
    :param sysctls: where the sysctls are (``/proc/sys``).
    :param mode: ``iptables`` or ``nftables`` (kube-proxy's ``--proxy-mode``).
    :param nft: the ``nft`` command (nftables mode, and the clean-up of its table).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: NetworkSettings,
        client: KubeAPI,
        iptables: IPTables | None = None,
        sysctls: Path = Path("/proc/sys"),
        mode: str = IPTABLES,
        nft: NFTables | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.mode = mode
        self.iptables = iptables or IPTables(reactor)
        self.nft = nft or NFTables(reactor, self.iptables.prefix)
        self.sysctls = sysctls
        params = {"labelSelector": SELECTOR}
        keep = Retention(trim=_trim)
        self.services = Informer(HTTPSource(client, SERVICES_PATH, params), reactor, retention=keep)
        self.slices = Informer(HTTPSource(client, SLICES_PATH, params), reactor, retention=keep)
        self.services.add_handler(each_change(lambda svc: self.changed(_service_of(svc))))
        self.slices.add_handler(each_change(lambda item: self.changed(_service_of(item, SLICE_OF))))
        self.node = NodeFacts(name=settings.node_name)
        self.conntrack = shutil.which("conntrack")
        #: What the last successful sync wrote (None before one), in the mode's terms.
        self.applied: Ruleset | None = None
        self.applied_nft: NFTRuleset | None = None
        #: The next full sync makes kube-proxy's table anew (the last one failed).
        self._replace_table = False
        #: The other mode's rules are gone (kube-proxy removes them once, at start).
        self._other_mode_cleaned = False
        self._timer: IDelayedCall | None = None
        self._syncing: Deferred[None] | None = None
        self._again = False
        #: The Services whose chains the next partial sync writes.
        self._dirty: set[tuple[str, str]] = set()
        self._last_sync = float("-inf")
        self._last_full = float("-inf")
        self._full_due = True
        #: The UDP flows the last sync served (for conntrack's clean-up).
        self._udp: dict[str, UDPFlows] = {}
        self._periodic = LoopingCall(self.changed)
        self._periodic.clock = reactor

    def startService(self) -> None:
        super().startService()
        self.node = self._prepare_node()
        if self.conntrack is None:
            self._log.warn("conntrack not found: stale UDP flows will not be cleared")
        self.services.startService()
        self.slices.startService()
        synced = gatherResults([self.services.when_synced(), self.slices.when_synced()])
        synced.addCallback(lambda _: self.changed())
        self._periodic.start(SYNC_PERIOD, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.services.stopService()
        self.slices.stopService()
        if self._periodic.running:
            self._periodic.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        # A restore under way ends first; the rules stay, as kube-proxy leaves them.
        return self._syncing or succeed(None)

    def _sysctl(self, name: str, value: str = "1") -> bool:
        """Set C{name} (dotted) to C{value}; whether it holds it."""
        path = self.sysctls / name.replace(".", "/")
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as e:
            self._log.warn("can't set sysctl {name}: {error}", name=name, error=e)
            return False
        return True

    def _prepare_node(self) -> NodeFacts:
        """The sysctls kube-proxy sets at start, and the node's facts for the rules."""
        self._sysctl("net.ipv4.ip_forward")
        # br_netfilter loaded: bridged pod traffic (a pod reaching a Service) must see iptables.
        if (self.sysctls / "net/bridge").is_dir():
            self._sysctl("net.bridge.bridge-nf-call-iptables")
        # nftables mode has no localhost NodePorts, so leaves route_localnet alone (as kube).
        localnet = self.mode == IPTABLES and self._sysctl("net.ipv4.conf.all.route_localnet")
        liberal = self.sysctls / "net/netfilter/nf_conntrack_tcp_be_liberal"
        try:
            be_liberal = liberal.read_text().strip() not in ("", "0")
        except OSError:
            be_liberal = False
        return NodeFacts(
            name=self.settings.node_name,
            node_ips=self.settings.node_ips,
            cluster_cidrs=self.settings.cluster_cidrs,
            localhost_node_ports=localnet,
            tcp_be_liberal=be_liberal,
        )

    def changed(self, service: tuple[str, str] | None = None) -> None:
        """
        Ask for a sync (that writes C{service}'s chains, if given): at once
        if the last began a second ago or more, else when it has; one more
        after a sync under way.  Nothing is written before both informers
        have listed.
        """
        if service is not None:
            self._dirty.add(service)
        if not (self.running and self.services.synced and self.slices.synced):
            return
        if self._syncing is not None:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            return
        wait = max(0.0, self._last_sync + MIN_SYNC_PERIOD - self.reactor.seconds())
        self._timer = self.reactor.callLater(wait, self._start_sync)

    def _start_sync(self) -> None:
        self._timer = None
        self._again = False
        self._last_sync = self.reactor.seconds()
        self._syncing = Deferred.fromCoroutine(self.sync())

        def done(_: object) -> None:
            self._syncing = None
            if self._again:
                self.changed()

        self._syncing.addBoth(done)

    async def sync(self) -> None:
        """Write the rules of every Service now; a failure makes the next sync a full one."""
        started = self.reactor.seconds()
        full = self._full_due or started - self._last_full >= FULL_SYNC_PERIOD
        changed = self._dirty
        self._dirty = set()
        try:
            if not self._other_mode_cleaned:
                await self._clean_other_mode()
            if self.mode == NFTABLES:
                udp, count = await self._sync_nftables(full, changed)
            else:
                udp, count = await self._sync_iptables(full, changed)
        except Exception:
            self._full_due = True
            self._replace_table = full
            self._log.failure("Failed to sync {mode} rules; a full sync follows", mode=self.mode)
            return
        before, self._udp = self._udp, udp
        if full:
            self._full_due, self._last_full = False, started
        # Full syncs (at start, after a failure, hourly) are worth a line; the others are not.
        (self._log.info if full else self._log.debug)(
            "Synced {mode} rules: {count} service chains in {took:.3f} s (full sync: {full})",
            mode=self.mode,
            count=count,
            took=self.reactor.seconds() - started,
            full=full,
        )
        await self._clear_udp_flows(before, udp)

    async def _sync_iptables(
        self, full: bool, changed: set[tuple[str, str]]
    ) -> tuple[dict[str, UDPFlows], int]:
        services, slices = self.services.cache.list(), self.slices.cache.list()
        if full or self.applied is None:
            # The nat table as it is: chains holding their rules already are left alone (one a
            # rule of which was changed or deleted by hand is written again).
            saved = await self.iptables.save("nat")
            ruleset = render(services, slices, self.node, saved_chains(saved))
            text = unchanged_chains_dropped(ruleset.text, {"nat": saved})
        else:
            existing = sorted(self.applied.nat_chains)
            ruleset = render(services, slices, self.node, existing, changed)
            if ruleset.large != self.applied.large:
                # Every chain's comments change with the mode.
                ruleset = render(services, slices, self.node, existing)
            text = ruleset.text
        await self.iptables.restore(text)
        if full:
            await self._ensure_jumps()
        self.applied = ruleset
        return ruleset.udp, len(ruleset.nat_chains)

    async def _sync_nftables(
        self, full: bool, changed: set[tuple[str, str]]
    ) -> tuple[dict[str, UDPFlows], int]:
        services, slices = self.services.cache.list(), self.slices.cache.list()
        previous = self.applied_nft
        if full or previous is None:
            # The table rewritten in place (chains holding their rules already left alone);
            # made anew after a failed full sync.
            existing = None if self._replace_table else await self._nft_existing()
            ruleset = render_nft(services, slices, self.node, previous, None, existing)
        else:
            ruleset = render_nft(services, slices, self.node, previous, changed)
        if ruleset.declarations:
            await self.nft.apply(ruleset.declarations)
        await self.nft.apply(ruleset.text)
        self.applied_nft = ruleset
        self._replace_table = False
        return ruleset.udp, len(ruleset.chains)

    async def _nft_existing(self) -> Existing:
        return parse_table(await self.nft.table(TABLE))

    async def _clean_other_mode(self) -> None:
        """
        Remove the rules of the mode this kube-proxy does not run (kube's
        ``CleanupLeftovers`` when the mode changes): iptables mode deletes the
        ``ip kube-proxy`` table; nftables mode the jumps to kube-proxy's
        iptables chains, and those chains.  The kubelet's KUBE-FIREWALL stays.
        """
        try:
            if self.mode == NFTABLES:
                for table, chain, rule in JUMPS:
                    await self.iptables.delete_rule(table, chain, rule)
                nat = [c for c in await self.iptables.chains("nat") if is_service_chain(c)]
                await self.iptables.remove_chains("nat", [*NAT_CHAINS, *nat])
                await self.iptables.remove_chains("filter", FILTER_CHAINS)
            elif shutil.which("nft") is not None:
                await self.nft.apply(cleanup_text())
        except (IPTablesError, NFTablesError) as e:
            self._log.warn("can't remove the other proxy mode's rules: {error}", error=e)
        self._other_mode_cleaned = True

    async def _ensure_jumps(self) -> None:
        jumps = JUMPS + (LOCALNET_JUMPS if self.node.localhost_node_ports else ())
        for table, chain, rule in jumps:
            await self.iptables.ensure_rule(table, chain, rule, first=True)

    async def _clear_udp_flows(
        self, before: Mapping[str, UDPFlows], after: Mapping[str, UDPFlows]
    ) -> None:
        if self.conntrack is None:
            return
        for args in stale_udp_flows(before, after):
            try:
                argv = (*self.iptables.prefix, self.conntrack, *args)
                await run_command(self.reactor, argv, timeout=10.0)
            except CommandFailed as e:
                # conntrack exits 1 when no flow matched: nothing to clear.
                self._log.debug("conntrack {args}: {error}", args=" ".join(args), error=e)
