"""
The kubelet as a service: wait for its container runtime (when the node has
one), register the Node, then renew its Lease and post its status on a
schedule, each job retrying with back-off when it fails.  The Node is watched
(an informer on this node alone), so checking the status costs no request
unless the status must be written.  A node without a runtime confirms the
deletion of its pods at once (L{k3stw.kubelet.pods.deletion}).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed

from k3stw.httpclient import RequestFailed
from k3stw.kubeclient import KubeAPI, KubeAPIError
from k3stw.kubelet.cni import NodeNetwork
from k3stw.kubelet.config import KubeletConfig
from k3stw.kubelet.containerd import runtime_state
from k3stw.kubelet.hostinfo import HostFacts, read_host_facts
from k3stw.kubelet.node import (
    LEASES_PATH,
    NODES_PATH,
    RuntimeState,
    build_lease,
    build_node,
    lease_path,
    node_path,
    node_status,
    reconcile_node,
    renew_lease,
    without_heartbeats,
)
from k3stw.kubelet.pods.deletion import NoRuntimePods
from k3stw.logs import Logger
from k3stw.machinery.informer import EventHandler, Informer
from k3stw.machinery.objects import Object, metadata
from k3stw.machinery.source import HTTPSource
from k3stw.machinery.times import micro_time, rfc3339
from k3stw.machinery.timing import Backoff, PeriodicJob, retrying

if TYPE_CHECKING:
    from k3stw.kubelet.containerd import NodeRuntime
    from k3stw.kubelet.cri.runtime import Runtime
    from k3stw.kubelet.pods.cgroups import PodCgroups
    from k3stw.kubelet.pods.volumes import VolumeManager
    from k3stw.kubelet.pods.worker import PodFiles, PodWorkers

#: Failures that say the server is away or unwell, logged without a traceback.
EXPECTED_FAILURES = (
    KubeAPIError,
    ConnectError,
    ConnectionClosed,
    DeferredTimeoutError,
    RequestFailed,
    ResponseFailed,
    OSError,
)


class KubeletService(MultiService):
    """
    One node's kubelet: its Node and Lease and, when it has a runtime, its pods.

    On start it registers the Node (or, when one of that name exists, takes
    it over: its own labels set again, what others set kept); then it renews
    the node's Lease every C{config.lease_interval} and checks the node's
    status every C{config.status_interval} against the watched Node, posting
    it when it changed or every C{config.status_report_interval}.  A Node
    deleted while the kubelet runs is registered again at once.

    :param clock: all timing goes through it.
    :param client: the API, with the node's identity.
    :param host_facts: reads the host's facts (tests pass fixed ones).
    :param jitter: a number in [0, 1) for each retry's random share.
    :param runtime: the node's container runtime, started as a child of the
        kubelet; the Node is registered once it answers, with its version
        (C{containerd://1.6.20}).  None: the node runs no runtime.
    :param volumes: the pods' volume manager (None: one that mounts nothing).
    :param cgroups: the pods' cgroups, removed with their sandboxes (None: left alone).
    :param pod_files: where termination message files and log symlinks go
        (None: none are made).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        client: KubeAPI,
        config: KubeletConfig,
        host_facts: Callable[[], HostFacts] | None = None,
        jitter: Callable[[], float] = random.random,
        runtime: NodeRuntime | None = None,
        volumes: VolumeManager | None = None,
        cgroups: PodCgroups | None = None,
        pod_files: PodFiles | None = None,
    ) -> None:
        super().__init__()
        self.volumes = volumes
        #: The pods' cgroups, removed with their sandboxes (None: left alone).
        self.cgroups = cgroups
        #: Where the pods' files and log symlinks go (None: nowhere, in tests).
        self.pod_files = pod_files
        #: The pod workers, once the node runs pods (it has a runtime and registered).
        self.pod_workers: PodWorkers | None = None
        self.clock = clock
        self.client = client
        self.config = config
        self._read_host_facts = host_facts or partial(read_host_facts, config.data_dir)
        self.node_runtime = runtime
        if runtime is not None:
            runtime.setServiceParent(self)
        #: The runtime once it answered (None before, or without one).
        self.runtime: Runtime | None = None
        #: ``<name>://<version>`` of the runtime, once it answered.
        self.runtime_version: str | None = None
        self.backoff = Backoff(
            config.retry_initial, config.retry_max, jitter=config.retry_jitter, chance=jitter
        )
        #: The Node as the server last returned it (None before registration).
        self.node: Object | None = None
        self._lease: Object | None = None
        #: When the status was last written (registration counts).
        self._reported_at = 0.0
        self._registering: Deferred[None] | None = None
        self.node_informer = Informer(
            HTTPSource(client, NODES_PATH, {"fieldSelector": f"metadata.name={config.node_name}"}),
            clock,
            backoff=self.backoff,
        )
        self.status_job = self._job(
            "Error updating node status",
            config.status_interval,
            self._post_status,
            first=config.status_interval,
        )
        # A Node deleted under the kubelet is registered again at the next check: now.
        self.node_informer.add_handler(EventHandler(on_delete=lambda _: self.status_job.run_now()))
        #: The node's CNI config, once the runtime answered.
        self.network: NodeNetwork | None = None
        self.node_informer.add_handler(
            EventHandler(
                on_add=self._network_changed, on_update=lambda _, n: self._network_changed(n)
            )
        )
        self.lease_job = self._job("Failed to update lease", config.lease_interval, self._renew)

    def _job(
        self, label: str, interval: float, job: Callable[[], Deferred[None]], first: float = 0.0
    ) -> PeriodicJob:
        return PeriodicJob(
            self.clock,
            interval,
            job,
            label,
            first=first,
            backoff=self.backoff,
            timeout=self.config.timeout,
            expected=EXPECTED_FAILURES,
        )

    def startService(self) -> None:
        super().startService()
        self._registering = Deferred.fromCoroutine(self._start())
        self._registering.addErrback(self._failed)

    def stopService(self) -> Deferred[None] | None:
        if self._registering is not None:
            self._registering.cancel()
            self._registering = None
        stopped: Deferred[None] | None = super().stopService()
        return stopped

    def _failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self._log.failure("kubelet stopped", failure)

    def _host_facts(self) -> HostFacts:
        facts = self._read_host_facts()
        if self.runtime_version is None:
            return facts
        return dataclasses.replace(facts, container_runtime_version=self.runtime_version)

    async def _start(self) -> None:
        if self.node_runtime is not None:
            await self._connect_runtime(self.node_runtime)
        await retrying(
            self.clock,
            self._timed(self._register),
            self.backoff,
            self._registration_failed,
        )
        self._registering = None
        self._log.info("Successfully registered node {node}", node=self.config.node_name)
        for service in (self.node_informer, self.lease_job, self.status_job):
            service.setServiceParent(self)
        if self.runtime is not None:
            self.pod_workers = self._pod_workers(self.runtime)
            self.pod_workers.setServiceParent(self)
            if self.pod_files is not None and self.pod_files.container_logs:
                self._rotate_logs(self.runtime)
        else:
            # Nothing runs here, so nothing need stop before a pod's deletion is confirmed.
            NoRuntimePods(self.clock, self.client, self.config.node_name).setServiceParent(self)

    def _pod_workers(self, runtime: Runtime) -> PodWorkers:
        """The workers that run this node's pods on its runtime."""
        from k3stw.kubelet.pods.imagegc import ImageGCPolicy
        from k3stw.kubelet.pods.probes import NetworkProber
        from k3stw.kubelet.pods.spec import DNSSettings
        from k3stw.kubelet.pods.worker import PodFiles, PodSettings, PodWorkers
        from k3stw.network.resolvconf import pick

        config = self.config
        registries = self.node_runtime.settings.registries if self.node_runtime else None
        settings = PodSettings(
            node_name=config.node_name,
            host_ips=config.node_ips,
            dns=DNSSettings(config.cluster_dns, config.cluster_domain, pick()),
            runtime_name=(self.runtime_version or "containerd").partition(":")[0],
            cgroup_root=config.cgroup_root,
            files=self.pod_files or PodFiles(),
        )
        return PodWorkers(
            self.clock,
            self.client,
            runtime,
            settings,
            volumes=self.volumes,
            prober=NetworkProber(self.clock) if IReactorTCP.providedBy(self.clock) else None,
            pull_auth=registries.pull_auth if registries is not None else None,
            cgroups=self.cgroups,
            image_gc=ImageGCPolicy(),
        )

    def _rotate_logs(self, runtime: Runtime) -> None:
        """Rotate the containers' logs, where the node keeps them (the container log manager)."""
        from k3stw.kubelet.logrotation import LogRotation, rotation_job

        rotation = LogRotation(
            self.clock,
            runtime,
            self.config.container_log_max_size,
            self.config.container_log_max_files,
        )
        rotation_job(rotation).setServiceParent(self)

    async def _connect_runtime(self, node_runtime: NodeRuntime) -> None:
        """Wait for the runtime, then learn its version (the kubelet registers only then)."""
        runtime = await node_runtime.when_ready()

        async def version() -> str:
            answer = await runtime.version()
            return f"{answer.runtime_name}://{answer.runtime_version}"

        def failed(attempt: int, error: Exception) -> None:
            self._log.warn(
                "Container runtime not answering Version (attempt {attempt}): {error}",
                attempt=attempt,
                error=str(error),
            )

        self.runtime_version = await retrying(self.clock, version, self.backoff, failed)
        self.runtime = runtime
        self.network = NodeNetwork(
            node_runtime.paths.cni_conf_dir, runtime, node_runtime.settings.cni
        )
        self._log.info("Container runtime {version} is ready", version=self.runtime_version)

    def _network_changed(self, node: Object) -> None:
        if self.network is not None:
            Deferred.fromCoroutine(self.network.update(node)).addErrback(
                lambda f: self._log.warn("Unable to set up the pod network: {e}", e=f.value)
            )

    async def _runtime_state(self) -> RuntimeState | None:
        return None if self.runtime is None else await runtime_state(self.runtime)

    def _timed(self, job: Callable[[], Deferred[None]]) -> Callable[[], Deferred[None]]:
        def attempt() -> Deferred[None]:
            return job().addTimeout(self.config.timeout, self.clock)

        return attempt

    def _registration_failed(self, attempt: int, error: Exception) -> None:
        if isinstance(error, EXPECTED_FAILURES):
            self._log.warn(
                "{what} (attempt {attempt}): {error}",
                what="Unable to register node with API server",
                attempt=attempt,
                error=self._describe(error),
            )
        else:
            self._log.failure(
                "{what} (attempt {attempt})",
                Failure(error),
                what="Unable to register node with API server",
                attempt=attempt,
            )

    def _describe(self, error: Exception) -> str:
        if isinstance(error, DeferredTimeoutError):
            return f"no answer within {self.config.timeout:g}s"
        return str(error) or type(error).__name__

    # Jobs

    def _register(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._registered())

    async def _registered(self) -> None:
        """Create the Node, or take over the one that exists, and record what the server holds."""
        config = self.config
        facts = self._host_facts()
        runtime = await self._runtime_state()
        now = rfc3339(self.clock.seconds())
        try:
            node = build_node(config, facts, now, runtime)
            self.node = await self.client.create(NODES_PATH, node)
            self._reported_at = self.clock.seconds()
            return
        except KubeAPIError as e:
            if e.code != 409:
                raise
        existing = await self.client.get(node_path(config.node_name))
        wanted = reconcile_node(existing, config, facts)
        if wanted != existing:
            existing = await self.client.replace(node_path(config.node_name), wanted)
        self.node = existing
        await self._write_status(existing, force=True)

    def _post_status(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._check_status())

    async def _check_status(self) -> None:
        """The status job: the watched Node's status, posted if it must be; a gone Node, again."""
        node = self._watched_node()
        if node is None and not self.node_informer.synced:
            node = await self._read_node()
        if node is None:
            self._log.warn(
                "Node {node} was deleted; registering it again", node=self.config.node_name
            )
            await self._registered()
            return
        if self.network is not None:
            await self.network.update(node)
        await self._write_status(node)

    def _watched_node(self) -> Object | None:
        """The newest Node seen: the informer's, or the one the last write returned."""
        cached = self.node_informer.get(self.config.node_name)
        if cached is None or self.node is None:
            return cached
        return cached if _version(cached) >= _version(self.node) else self.node

    async def _read_node(self) -> Object | None:
        try:
            return await self.client.get(node_path(self.config.node_name))
        except KubeAPIError as e:
            if e.code != 404:
                raise
            return None

    async def _write_status(self, node: Object, force: bool = False) -> None:
        """
        Put the node's status through the status subresource when it changed
        (heartbeat times aside), when C{force}d, or when
        C{status_report_interval} has passed since the last report, as the
        kubelet does: the Lease is the heartbeat, so an unchanged status is
        not rewritten every 10 s.  Conditions are measured against the status
        the server holds (the node lifecycle controller may have marked the
        node Unknown); a 409 means someone wrote in between, so read and try
        again.  A Node that is gone is registered again.
        """
        path = node_path(self.config.node_name)
        runtime = await self._runtime_state()
        for attempt in (1, 2):
            self.node = node
            seconds = self.clock.seconds()
            held = node.get("status") or {}
            facts = self._host_facts()
            status = node_status(self.config, facts, held, rfc3339(seconds), runtime)
            due = force or seconds - self._reported_at >= self.config.status_report_interval
            if not due and without_heartbeats(status) == without_heartbeats(held):
                return
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": self.config.node_name,
                    "resourceVersion": metadata(node).get("resourceVersion", ""),
                },
                "status": status,
            }
            try:
                self.node = await self.client.replace(path + "/status", body)
                self._reported_at = seconds
                return
            except KubeAPIError as e:
                if e.code == 404:
                    await self._registered()
                    return
                if e.code != 409 or attempt == 2:
                    raise
            read = await self._read_node()
            if read is None:
                await self._registered()
                return
            node = read

    def _renew(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._renew_lease())

    async def _renew_lease(self) -> None:
        """Renew the node's Lease from the copy last written; read or create it when needed."""
        config = self.config
        uid = str(metadata(self.node or {}).get("uid", ""))
        path = lease_path(config.node_name)
        for attempt in (1, 2):
            now = micro_time(self.clock.seconds())
            if self._lease is None:
                try:
                    self._lease = await self.client.get(path)
                except KubeAPIError as e:
                    if e.code != 404:
                        raise
                    lease = build_lease(config.node_name, uid, now, config.lease_duration)
                    self._lease = await self.client.create(LEASES_PATH, lease)
                    return
            renewed = renew_lease(self._lease, config.node_name, uid, now, config.lease_duration)
            try:
                self._lease = await self.client.replace(path, renewed)
                return
            except KubeAPIError as e:
                self._lease = None
                if e.code not in (404, 409) or attempt == 2:
                    raise


def _version(obj: Object) -> int:
    try:
        return int(metadata(obj).get("resourceVersion") or 0)
    except ValueError:
        return 0
