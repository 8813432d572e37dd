"""
The pod workers: one L{PodWorker} per pod UID bound to this node, each
syncing its pod against the runtime, as the kubelet's SyncPod does.

A sync observes what the runtime holds for the pod (its sandboxes and
containers, found by the ``io.kubernetes.pod.uid`` label, so containers a
previous kubelet started are adopted, their restart counts read from their
annotations), decides what to do, does it, and writes the pod's status when
it changed.  The worker syncs when its pod changes, one sync at a time, and
every second while its pod is settling (probes, back-offs, deadlines, pulls).
A steady pod (Running, every container running and ready, no probes, no
deadline) is synced every minute (the kubelet's ``syncFrequency``) and when
the node-wide relist (the kubelet's PLEG: two CRI list calls a second for all
pods) sees its sandbox or containers change, so that a container that exits
is still seen within a second while 100 idle pods cost two calls a second,
not four hundred.

A pod marked for deletion is killed (its containers stopped with the grace
period, its sandbox stopped), its final status written, and the object
deleted with grace period 0; a pod that left the API is killed and removed.
A pod's cgroups go with its sandbox (runc leaves them).  At start
L{PodWorkers} removes the sandboxes and cgroups of pods that no longer exist.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from k3stw.kubeclient import KubeAPI, KubeAPIError
from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.runtime import CRIError, Runtime
from k3stw.kubelet.pods import logs
from k3stw.kubelet.pods import spec as podspec
from k3stw.kubelet.pods.backoff import FailureBackoff
from k3stw.kubelet.pods.cgroups import PodCgroups
from k3stw.kubelet.pods.deletion import confirm_deletion, node_pods, pod_path
from k3stw.kubelet.pods.events import NORMAL, WARNING, PodEvents
from k3stw.kubelet.pods.imagegc import ImageGC, ImageGCPolicy
from k3stw.kubelet.pods.probes import KINDS, PodProbes, Prober, run_handler, title
from k3stw.kubelet.pods.spec import (
    CONTAINER_NAME,
    POD_UID,
    TERMINATION_MESSAGE_PATH,
    TERMINATION_MESSAGE_POLICY,
    ConfigError,
    DNSSettings,
    Lookups,
    PodIPs,
)
from k3stw.kubelet.pods.status import (
    TERMINAL,
    Observed,
    Waiting,
    pod_status,
    regular_containers_done,
    restart_count,
)
from k3stw.kubelet.pods.volumes import NoVolumes, VolumeManager
from k3stw.logs import Logger
from k3stw.machinery.informer import each_change
from k3stw.machinery.objects import Object, get_path, metadata, without_managed_fields
from k3stw.machinery.times import parse_time

#: How often the runtime is listed (the kubelet's PLEG relist period).
RELIST = 1.0
#: How often a steady pod is synced all the same (the kubelet's ``syncFrequency``).
RESYNC = 60.0
#: The shortest grace a container is stopped with (``minimumGracePeriodInSeconds``).
MINIMUM_GRACE = 2
#: How often a running pod that is synced every second anyway (probes, a pod not
#: yet steady) brings its configMap, secret, downwardAPI and projected volumes up
#: to date; a steady pod does at its minute's resync, as the kubelet's sync loop.
VOLUME_RESYNC = 10.0


@dataclass(frozen=True)
class PodFiles:
    """What the kubelet keeps on the node's disk beside the runtime ("": nothing, in tests)."""

    #: Where the pods' directories are (termination message files), ``/var/lib/kubelet``.
    kubelet_root: str = ""
    #: Where the logs' legacy symlinks go (``/var/log/containers``); set, the pods'
    #: log directories and dead symlinks are also removed.
    container_logs: str = ""


@dataclass(frozen=True)
class PodSettings:
    """What the pod workers know of their node."""

    node_name: str
    host_ips: tuple[str, ...]
    dns: DNSSettings = field(default_factory=DNSSettings)
    runtime_name: str = "containerd"
    cgroup_root: str = "/"
    allocatable: Mapping[str, str] = field(default_factory=dict)
    files: PodFiles = field(default_factory=PodFiles)
    #: Where the containers' logs go (``/var/log/pods``).
    pod_logs: str = podspec.POD_LOGS


def _field_path(pod: Mapping[str, Any], name: str) -> str:
    inits = {c.get("name") for c in get_path(pod, "spec", "initContainers") or ()}
    return f"spec.initContainers{{{name}}}" if name in inits else f"spec.containers{{{name}}}"


def _desired(pod: Mapping[str, Any]) -> tuple[object, ...]:
    """What of a pod the kubelet acts on: not its status, not its resourceVersion."""
    meta = {k: v for k, v in metadata(pod).items() if k not in ("resourceVersion", "managedFields")}
    return (meta, pod.get("spec"))


def _spec(pod: Mapping[str, Any], name: str) -> Object | None:
    for key in ("initContainers", "containers"):
        for container in get_path(pod, "spec", key) or ():
            if container.get("name") == name:
                found: Object = container
                return found
    return None


def _pod_ip(pod: Mapping[str, Any], observed: Observed, settings: PodSettings) -> str:
    """Where probes and hooks reach the pod: its sandbox's IP, the node's for hostNetwork."""
    if get_path(pod, "spec", "hostNetwork") or observed.sandbox is None:
        return settings.host_ips[0] if settings.host_ips else "127.0.0.1"
    return observed.sandbox.network.ip


def _running_kinds(pod: Mapping[str, Any]) -> list[Object]:
    """The containers that run alongside each other: the sidecars and the regular ones."""
    return [*podspec.sidecars(pod), *(get_path(pod, "spec", "containers") or ())]


def _steady(pod: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """
    Whether nothing but a change of the pod or of its containers in the
    runtime can change its status: Running, every container (and sidecar)
    running and ready, no probes and no deadline to act on.
    """
    spec = pod.get("spec") or {}
    containers = _running_kinds(pod)
    names = {c.get("name") for c in containers}
    inits = status.get("initContainerStatuses") or ()
    statuses = [
        *(s for s in inits if s.get("name") in names),
        *(status.get("containerStatuses") or ()),
    ]
    return (
        status.get("phase") == "Running"
        and spec.get("activeDeadlineSeconds") is None
        and not any(c.get(f"{kind}Probe") for c in containers for kind in KINDS)
        and len(statuses) == len(containers)
        and all(s.get("ready") and "running" in (s.get("state") or {}) for s in statuses)
    )


def _add_termination_message(status: api.ContainerStatus) -> None:
    """
    Add an exited container's termination message to its status's message,
    as the kubelet does when it reads the container's status.
    """
    fallback = (
        status.annotations.get(TERMINATION_MESSAGE_POLICY) == "FallbackToLogsOnError"
        and status.exit_code != 0
        and status.reason != "ContainerCannotRun"
    )
    path = status.annotations.get(TERMINATION_MESSAGE_PATH, "")
    message = logs.read_termination_message(status, path, fallback)
    if message:
        status.message = f"{status.message}: {message}" if status.message else message


def _pull_policy(container: Mapping[str, Any]) -> str:
    policy = container.get("imagePullPolicy")
    if policy:
        return str(policy)
    image = str(container.get("image", ""))
    tagged = ":" in image.rpartition("/")[2] or "@" in image
    return "IfNotPresent" if tagged and not image.endswith(":latest") else "Always"


class PodWorkers(MultiService):
    """
    The node's pods (an informer of ``spec.nodeName=<node>``) and a worker
    for each.

    :param volumes: the volume manager (L{NoVolumes} until one is wired).
    :param prober: runs httpGet and tcpSocket probes and hooks (None: they fail).
    :param pull_auth: the CRI credentials for an image's registry (None: pulls without).
    :param cgroups: the pods' cgroups, removed with their sandboxes (None: left alone).
    :param image_gc: how unused images are collected (None: they are not).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        client: KubeAPI,
        runtime: Runtime,
        settings: PodSettings,
        volumes: VolumeManager | None = None,
        prober: Prober | None = None,
        pull_auth: Callable[[str], api.AuthConfig | None] | None = None,
        cgroups: PodCgroups | None = None,
        image_gc: ImageGCPolicy | None = None,
    ) -> None:
        super().__init__()
        self.cgroups = cgroups
        self.prober = prober
        self.pull_auth = pull_auth or (lambda image: None)
        self.clock = clock
        self.client = client
        self.runtime = runtime
        self.settings = settings
        self.volumes: VolumeManager = volumes or NoVolumes()
        self.events = PodEvents(client, clock, settings.node_name)
        self.crash_backoff = FailureBackoff()
        self.pull_backoff = FailureBackoff()
        self.workers: dict[str, PodWorker] = {}
        self.informer = node_pods(client, clock, settings.node_name)
        self.informer.setServiceParent(self)
        self.informer.add_handler(each_change(self._changed, deleted=self._deleted))
        if image_gc is not None:
            ImageGC(clock, runtime, client, settings.node_name, image_gc).setServiceParent(self)
        self._cleaning: Deferred[None] | None = None
        #: Each pod UID's sandboxes and containers (id, state) at the last relist.
        self._relisted: dict[str, frozenset[tuple[str, int]]] = {}
        self._relist_timer: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._cleaning = self.informer.when_synced().addCallback(
            lambda _: Deferred.fromCoroutine(self.remove_orphans())
        )
        self._cleaning.addErrback(self._cleanup_failed)

    def stopService(self) -> Deferred[None] | None:
        if self._cleaning is not None:
            self._cleaning.cancel()
            self._cleaning = None
        for worker in list(self.workers.values()):
            worker.stop()
        if self._relist_timer is not None and self._relist_timer.active():
            self._relist_timer.cancel()
        self._relist_timer = None
        stopped: Deferred[None] | None = super().stopService()
        return stopped

    def _cleanup_failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self._log.warn("cleaning up orphaned pods failed: {error}", error=failure.value)

    def _changed(self, pod: Object) -> None:
        # Handlers hear the decoded object whole; its managed fields would live on in the worker.
        pod = without_managed_fields(pod)
        uid = str(metadata(pod).get("uid", ""))
        worker = self.workers.get(uid)
        if worker is None:
            worker = self.workers[uid] = PodWorker(self, pod)
            worker.kick()
        else:
            worker.update(pod)

    def _deleted(self, pod: Object) -> None:
        worker = self.workers.get(str(metadata(pod).get("uid", "")))
        if worker is not None:
            worker.update(None)

    def relist_soon(self) -> None:
        """Relist within L{RELIST}: a worker's pod became steady."""
        if self.running and (self._relist_timer is None or not self._relist_timer.active()):
            self._relist_timer = self.clock.callLater(RELIST, self._relist)

    def _relist(self) -> None:
        self._relist_timer = None
        if not any(worker.steady for worker in self.workers.values()):
            self._relisted.clear()
            return
        relisting = Deferred.fromCoroutine(self.relist())
        relisting.addErrback(
            lambda failure: self._log.warn(
                "Relisting the runtime failed: {error}", error=failure.value
            )
        ).addBoth(lambda _: self.relist_soon())

    async def relist(self) -> None:
        """List every sandbox and container once; sync the steady pods whose ones changed."""
        found: dict[str, set[tuple[str, int]]] = {}
        for sandbox in await self.runtime.list_pod_sandboxes():
            uid = sandbox.labels.get(POD_UID) or sandbox.metadata.uid
            found.setdefault(uid, set()).add((sandbox.id, sandbox.state))
        for container in await self.runtime.list_containers():
            found.setdefault(container.labels.get(POD_UID, ""), set()).add(
                (container.id, container.state)
            )
        now = {uid: frozenset(items) for uid, items in found.items()}
        before, self._relisted = self._relisted, now
        for uid, worker in list(self.workers.items()):
            # A pod new to the relist is synced once more: it may have changed before the list.
            if worker.steady and before.get(uid) != now.get(uid, frozenset()):
                worker.kick()

    def pod_by_name(self, namespace: str, name: str) -> Object | None:
        """
        The node's pod of that name, with the status its worker last wrote
        (the kubelet's status manager), else the one the API holds.
        """
        pod = self.informer.get(f"{namespace}/{name}")
        if pod is None:
            return None
        worker = self.workers.get(str(metadata(pod).get("uid", "")))
        if worker is None or worker.written is None:
            return pod
        return {**pod, "status": worker.written}

    def finished(self, worker: PodWorker) -> None:
        """A worker's pod is gone and cleaned up."""
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
        self.events.forget(worker.uid)
        for backoff in (self.crash_backoff, self.pull_backoff):
            backoff.forget(worker.uid)

    async def remove_orphans(self) -> None:
        """Stop and remove the sandboxes, containers and cgroups of pods that no longer exist."""
        self._cleaning = None
        known = {uid for uid in self.workers}
        for sandbox in await self.runtime.list_pod_sandboxes():
            uid = sandbox.labels.get(POD_UID) or sandbox.metadata.uid
            if uid in known:
                continue
            self._log.info(
                "Removing sandbox {id} of pod {pod} which no longer exists",
                id=sandbox.id[:13],
                pod=f"{sandbox.metadata.namespace}/{sandbox.metadata.name}",
            )
            try:
                await self.runtime.stop_pod_sandbox(sandbox.id)
                await self.runtime.remove_pod_sandbox(sandbox.id)
            except CRIError as e:
                if not e.not_found:
                    raise
            await self.volumes.cleanup(uid)
            meta = sandbox.metadata
            self.remove_logs(
                {"metadata": {"name": meta.name, "namespace": meta.namespace, "uid": uid}}
            )
        if self.cgroups is not None:
            self.cgroups.remove_all_but(known)
        if self.settings.files.container_logs:
            logs.remove_dead_symlinks(self.settings.files.container_logs)

    def remove_logs(self, pod: Object) -> None:
        """
        A removed pod's log directory, and the symlinks left pointing
        nowhere (the kubelet's log GC), where the node keeps logs.
        """
        directory = self.settings.files.container_logs
        if not directory:
            return
        shutil.rmtree(podspec.log_directory(pod, self.settings.pod_logs), ignore_errors=True)
        logs.remove_dead_symlinks(directory)


class PodWorker:
    """One pod's worker; see the module docstring."""

    _log = Logger()

    def __init__(self, workers: PodWorkers, pod: Object) -> None:
        self.workers = workers
        self.clock = workers.clock
        self.runtime = workers.runtime
        self.uid = str(metadata(pod).get("uid", ""))
        #: The pod as the API holds it (None: gone from the API).
        self.pod: Object | None = pod
        #: The last pod seen, to kill and name what remains once it is gone.
        self.last: Object = pod
        #: The status last written.
        self.written: Object | None = None
        self._syncing: Deferred[None] | None = None
        self._busy = False
        self._again = False
        #: The last sync found nothing to watch for (a finished pod): no relist until it changes.
        self._idle = False
        #: The last sync found the pod steady (see the module docstring): the relist watches it.
        self.steady = False
        #: How many containers this worker started (a sync that started one looks again).
        self._started = 0
        self.probes = PodProbes()
        self._timer: IDelayedCall | None = None
        self._done = False
        #: When each image's last pull failed (its back-off is measured from there).
        self._pull_failed_at: dict[str, float] = {}
        #: When the pod's volumes were last set up or refreshed.
        self._volumes_at = -VOLUME_RESYNC

    def update(self, pod: Object | None) -> None:
        """The pod changed (None: it left the API); a change of its status alone waits."""
        changed = pod is None or _desired(pod) != _desired(self.last)
        self.pod = pod
        if pod is not None:
            self.last = pod
        if changed:
            self.kick()

    def kick(self) -> None:
        """Sync now, or right after the sync in flight."""
        if self._done:
            return
        if self._busy:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        # Set before the sync starts: it may finish, or be asked for again, before returning.
        self._busy = True
        self._idle = False
        self.steady = False
        syncing = Deferred.fromCoroutine(self.sync())
        if self._busy:
            self._syncing = syncing
        syncing.addErrback(self._failed).addBoth(self._synced)

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(CRIError, KubeAPIError, OSError):
            self._log.warn(
                "Error syncing pod {pod}: {error}",
                pod=podspec.pod_full_name(self.last),
                error=str(failure.value),
            )
        else:
            self._log.failure("Error syncing pod {pod}", failure, pod=self.uid)

    def _synced(self, _: object) -> None:
        self._syncing = None
        self._busy = False
        if self._done:
            return
        if self._again:
            self._again = False
            self.kick()
        elif not self._idle:
            self._timer = self.clock.callLater(RESYNC if self.steady else RELIST, self.kick)
            if self.steady:
                self.workers.relist_soon()

    def stop(self) -> None:
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._syncing is not None:
            self._syncing.cancel()

    # Observing

    async def observe(self) -> Observed:
        """What the runtime holds for this pod: its newest sandbox, its containers by name."""
        selector = {POD_UID: self.uid}
        sandboxes = await self.runtime.list_pod_sandboxes(
            api.PodSandboxFilter(label_selector=selector)
        )
        observed = Observed(runtime=self.workers.settings.runtime_name)
        if sandboxes:
            newest = max(sandboxes, key=lambda s: (s.metadata.attempt, s.created_at))
            try:
                observed.sandbox = await self.runtime.pod_sandbox_status(newest.id)
            except CRIError as e:
                if not e.not_found:
                    raise
        containers = await self.runtime.list_containers(
            api.ContainerFilter(label_selector=selector)
        )
        for container in sorted(containers, key=lambda c: -c.created_at):
            try:
                status = await self.runtime.container_status(container.id)
            except CRIError as e:
                if e.not_found:
                    continue
                raise
            if status.state == api.CONTAINER_EXITED:
                _add_termination_message(status)
            name = status.labels.get(CONTAINER_NAME) or status.metadata.name
            observed.containers.setdefault(name, []).append(status)
        return observed

    # Syncing

    async def sync(self) -> None:
        pod = self.pod
        if pod is None:
            await self._gone()
            return
        if metadata(pod).get("deletionTimestamp"):
            await self._terminate(pod)
            return
        observed = await self.observe()
        if get_path(pod, "status", "phase") in TERMINAL:
            await self._kill(pod, observed)
            await self._write_status(pod, await self.observe(), terminating=True)
            # Nothing runs and nothing will: only a change of the pod (its deletion) matters now.
            self._idle = True
            return
        deadline = self._deadline(pod)
        if deadline is not None and self.clock.seconds() >= deadline:
            message = "Pod was active on the node longer than the specified deadline"
            await self.workers.events.emit(pod, NORMAL, "DeadlineExceeded", message)
            await self._kill(pod, observed)
            await self._write_status(
                pod, await self.observe(), failed=("DeadlineExceeded", message)
            )
            return
        if not observed.sandbox_ready:
            if not await self._start_sandbox(pod, observed):
                await self._write_status(pod, observed)
                return
            observed = await self.observe()
        elif self.clock.seconds() - self._volumes_at >= VOLUME_RESYNC:
            await self._refresh_volumes(pod, adopted=self._volumes_at < 0)
        started = self._started
        await self._start_containers(pod, observed)
        if self._started != started:
            waiting, observed = observed.waiting, await self.observe()
            observed.waiting = waiting
        await self._probe(pod, observed)
        status = await self._write_status(pod, observed)
        self.steady = _steady(pod, status)
        if status["phase"] in TERMINAL or regular_containers_done(pod, observed):
            await self._kill(pod, observed)
            await self._write_status(pod, await self.observe(), terminating=True)

    def _deadline(self, pod: Object) -> float | None:
        seconds = get_path(pod, "spec", "activeDeadlineSeconds")
        start = parse_time(get_path(pod, "status", "startTime"))
        if seconds is None or start is None:
            return None
        return start + int(seconds)

    async def _start_sandbox(self, pod: Object, observed: Observed) -> bool:
        """Make the pod's volumes ready and (re)create its sandbox; whether it now runs."""
        try:
            await self.workers.volumes.prepare(pod)
        except Exception as e:  # Any manager's error (MountError, VolumeError) is a FailedMount.
            await self.workers.events.emit(pod, WARNING, "FailedMount", str(e))
            return False
        self._volumes_at = self.clock.seconds()
        attempt = 0
        if observed.sandbox is not None:
            attempt = observed.sandbox.metadata.attempt + 1
            if observed.containers and get_path(pod, "spec", "restartPolicy") == "Never":
                # A Never pod whose sandbox died after its containers ran is not restarted.
                return False
            await self.workers.events.emit(
                pod,
                NORMAL,
                "SandboxChanged",
                "Pod sandbox changed, it will be killed and re-created.",
            )
            await self._kill(pod, observed)
            await self._remove_sandboxes()
        config = podspec.sandbox_config(pod, self.workers.settings, attempt)
        try:
            await self.runtime.run_pod_sandbox(config)
        except CRIError as e:
            await self.workers.events.emit(
                pod,
                WARNING,
                "FailedCreatePodSandBox",
                f"Failed to create pod sandbox: {e.details}",
            )
            return False
        return True

    async def _refresh_volumes(self, pod: Object, adopted: bool) -> None:
        """
        Bring the running pod's volume contents up to date; a failure is a
        FailedMount.  A pod found running (C{adopted}) is prepared in full, so
        that the manager knows its volumes when a container restarts.
        """
        volumes = self.workers.volumes
        self._volumes_at = self.clock.seconds()
        try:
            await (volumes.prepare(pod) if adopted else volumes.refresh(pod))
        except Exception as e:  # As in _start_sandbox: the containers keep running regardless.
            await self.workers.events.emit(pod, WARNING, "FailedMount", str(e))

    async def _start_containers(self, pod: Object, observed: Observed) -> None:
        """
        Init containers one by one, in order (a sidecar counts as done once
        started); then every container that should run.  Once the regular
        containers ran, exited sidecars are restarted whatever the pod's
        restart policy, until the regular containers are done for good.
        """
        if regular_containers_done(pod, observed):
            return
        if not await self._start_init_containers(pod, observed):
            return
        policy = get_path(pod, "spec", "restartPolicy") or "Always"
        for container in get_path(pod, "spec", "containers") or ():
            instances = observed.containers.get(str(container.get("name"))) or []
            newest = instances[0] if instances else None
            if newest is None or newest.state == api.CONTAINER_CREATED:
                await self._start(pod, container, observed, 0 if newest is None else None)
            elif newest.state == api.CONTAINER_EXITED and (
                policy == "Always" or (policy == "OnFailure" and newest.exit_code != 0)
            ):
                await self._restart(pod, container, observed, newest)

    async def _start_init_containers(self, pod: Object, observed: Observed) -> bool:
        """Advance the init containers; whether the pod is initialized (its containers may run)."""
        policy = get_path(pod, "spec", "restartPolicy") or "Always"
        # The regular containers ran: only the sidecars are kept running now.
        initialized = any(
            observed.containers.get(str(c.get("name")))
            for c in get_path(pod, "spec", "containers") or ()
        )
        for container in get_path(pod, "spec", "initContainers") or ():
            name = str(container.get("name"))
            sidecar = podspec.is_sidecar(container)
            if initialized and not sidecar:
                continue
            instances = observed.containers.get(name) or []
            newest = instances[0] if instances else None
            if newest is None or newest.state == api.CONTAINER_CREATED:
                await self._start(pod, container, observed, 0 if newest is None else None)
            elif newest.state == api.CONTAINER_RUNNING:
                if not sidecar:
                    return False
                if self.probes.started(name, newest.id, container):
                    continue
            elif sidecar:
                await self._restart(pod, container, observed, newest)
            elif newest.exit_code == 0:
                continue
            elif policy != "Never":
                await self._restart(pod, container, observed, newest)
            if not initialized:
                return False
        return True

    async def _restart(
        self, pod: Object, container: Object, observed: Observed, exited: api.ContainerStatus
    ) -> None:
        """Start an exited container again, unless it is inside its crash back-off."""
        name = str(container.get("name"))
        meta = metadata(pod)
        key = f"{podspec.pod_full_name(pod)}_{self.uid}_{name}_{podspec.container_hash(container)}"
        finished = exited.finished_at / 1e9
        now = self.clock.seconds()
        backoff = self.workers.crash_backoff
        delay = backoff.waiting(key, finished, now)
        who = f"{meta.get('name')}_{meta.get('namespace')}({self.uid})"
        if delay is not None:
            observed.waiting[name] = Waiting(
                "CrashLoopBackOff",
                f"back-off {delay:g}s restarting failed container={name} pod={who}",
            )
            await self.workers.events.emit(
                pod,
                WARNING,
                "BackOff",
                f"Back-off restarting failed container {name} in pod {who}",
                _field_path(pod, name),
            )
            return
        backoff.next(key, finished)
        await self._start(pod, container, observed, restart_count(exited) + 1)

    async def _start(
        self, pod: Object, container: Object, observed: Observed, count: int | None
    ) -> None:
        """
        Pull the image, build the config, create and start one container
        (C{count}: its restart count; None: start the one already created).
        A failure becomes the container's waiting reason and an Event.
        """
        name = str(container.get("name"))
        field_path = _field_path(pod, name)
        events = self.workers.events
        if count is None:
            created = observed.containers[name][0]
            await self._run(pod, container, observed, created.id)
            return
        image_ref = await self._ensure_image(pod, container, observed)
        if image_ref is None:
            return
        try:
            lookups = await self._lookups(pod)
            ips = PodIPs(
                self.workers.settings.host_ips,
                tuple(ip["ip"] for ip in get_path(pod, "status", "podIPs") or ())
                or self._sandbox_ips(observed),
            )
            env = podspec.container_env(pod, container, lookups, ips)
        except ConfigError as e:
            observed.waiting[name] = Waiting("CreateContainerConfigError", str(e))
            await events.emit(pod, WARNING, "Failed", f"Error: {e}", field_path)
            return
        mounts = self.workers.volumes.mounts(pod, container)
        mounts += self._termination_message_mount(container)
        config = podspec.container_config(pod, container, image_ref, count, env, mounts)
        sandbox = observed.sandbox
        assert sandbox is not None
        sandbox_config = podspec.sandbox_config(
            pod, self.workers.settings, sandbox.metadata.attempt
        )
        try:
            container_id = await self.runtime.create_container(sandbox.id, config, sandbox_config)
        except CRIError as e:
            observed.waiting[name] = Waiting("CreateContainerError", e.details)
            await events.emit(pod, WARNING, "Failed", f"Error: {e.details}", field_path)
            return
        await events.emit(pod, NORMAL, "Created", f"Created container {name}", field_path)
        await self._run(pod, container, observed, container_id)
        await self._prune(observed.containers.get(name) or [])

    def _termination_message_mount(self, container: Object) -> list[api.Mount]:
        """A new termination message file, mounted at the container's terminationMessagePath."""
        root = self.workers.settings.files.kubelet_root
        if not root:
            return []
        name = str(container.get("name"))
        try:
            host = logs.termination_message_file(root, self.uid, name)
        except OSError as e:
            self._log.warn(
                "Cannot make the termination message file of {name}: {error}", name=name, error=e
            )
            return []
        return [
            api.Mount(
                container_path=podspec.termination_message_path(container), host_path=str(host)
            )
        ]

    async def _link_log(self, pod: Object, name: str, container_id: str) -> None:
        """The legacy ``/var/log/containers`` symlink to a started container's log."""
        directory = self.workers.settings.files.container_logs
        if not directory:
            return
        try:
            log = (await self.runtime.container_status(container_id)).log_path
        except CRIError:
            return
        meta = metadata(pod)
        link = logs.legacy_symlink(
            directory, str(meta.get("name")), str(meta.get("namespace")), name, container_id
        )
        # Only for a log that exists, as the kubelet.
        if not log or not os.path.exists(log):
            return
        try:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(log)
        except OSError as e:
            self._log.warn(
                "Failed to create legacy symbolic link {link}: {error}", link=str(link), error=e
            )

    async def _run(
        self, pod: Object, container: Object, observed: Observed, container_id: str
    ) -> None:
        name = str(container.get("name"))
        field_path = _field_path(pod, name)
        try:
            await self.runtime.start_container(container_id)
        except CRIError as e:
            observed.waiting[name] = Waiting("RunContainerError", e.details)
            await self.workers.events.emit(
                pod, WARNING, "Failed", f"Error: {e.details}", field_path
            )
            return
        self._started += 1
        await self.workers.events.emit(
            pod, NORMAL, "Started", f"Started container {name}", field_path
        )
        await self._link_log(pod, name, container_id)
        hook = get_path(container, "lifecycle", "postStart")
        if hook:
            outcome = await run_handler(
                hook,
                container,
                container_id,
                _pod_ip(pod, observed, self.workers.settings),
                self.runtime,
                self.workers.prober,
                podspec.grace_period(pod),
                self.clock,
            )
            if not outcome.ok:
                await self.workers.events.emit(
                    pod, WARNING, "FailedPostStartHook", outcome.output, field_path
                )
                observed.waiting[name] = Waiting("PostStartHookError", outcome.output)
                await self.workers.events.emit(
                    pod, NORMAL, "Killing", "FailedPostStartHook", field_path
                )
                await self._stop_container(
                    pod, observed, name, container_id, max(MINIMUM_GRACE, podspec.grace_period(pod))
                )

    async def _prune(self, instances: Sequence[api.ContainerStatus]) -> None:
        """Keep one exited instance of a container (its lastState) beside the new one."""
        for old in instances[1:]:
            await self.runtime.remove_container(old.id)
            self._remove_log(old)

    def _remove_log(self, container: api.ContainerStatus) -> None:
        """A removed container's log and its symlink go too (where the node keeps them)."""
        directory = self.workers.settings.files.container_logs
        if not directory:
            return
        meta = metadata(self.last)
        name = container.labels.get(CONTAINER_NAME) or container.metadata.name
        logs.legacy_symlink(
            directory, str(meta.get("name")), str(meta.get("namespace")), name, container.id
        ).unlink(missing_ok=True)
        if container.log_path:
            # Its rotated files too, as the kubelet's log manager cleans them.
            for log in glob.glob(glob.escape(container.log_path) + "*"):
                Path(log).unlink(missing_ok=True)

    def _sandbox_ips(self, observed: Observed) -> tuple[str, ...]:
        sandbox = observed.sandbox
        if sandbox is None or not sandbox.network.ip:
            return ()
        return (sandbox.network.ip, *(ip.ip for ip in sandbox.network.additional_ips))

    async def _ensure_image(self, pod: Object, container: Object, observed: Observed) -> str | None:
        """The image's ID, pulled as the container's pull policy says; None if not (yet) there."""
        name = str(container.get("name"))
        image = str(container.get("image", ""))
        field_path = _field_path(pod, name)
        events = self.workers.events
        policy = _pull_policy(container)
        present = await self.runtime.image_status(image)
        if present is not None and policy != "Always":
            await events.emit(
                pod,
                NORMAL,
                "Pulled",
                f'Container image "{image}" already present on machine',
                field_path,
            )
            return present.id
        if policy == "Never":
            message = f'Container image "{image}" is not present with pull policy of Never'
            observed.waiting[name] = Waiting("ErrImageNeverPull", message)
            await events.emit(pod, WARNING, "ErrImageNeverPull", message, field_path)
            return None
        key = f"{self.uid}_{image}"
        backoff = self.workers.pull_backoff
        failed_at = self._pull_failed_at.get(image)
        if failed_at is not None and backoff.waiting(key, failed_at, self.clock.seconds()):
            message = f'Back-off pulling image "{image}"'
            observed.waiting[name] = Waiting("ImagePullBackOff", message)
            await events.emit(pod, NORMAL, "BackOff", message, field_path)
            return None
        await events.emit(pod, NORMAL, "Pulling", f'Pulling image "{image}"', field_path)
        started = self.clock.seconds()
        try:
            await self.runtime.pull_image(image, self.workers.pull_auth(image))
            pulled = await self.runtime.image_status(image)
        except CRIError as e:
            failed = self.clock.seconds()
            backoff.next(key, failed)
            self._pull_failed_at[image] = failed
            observed.waiting[name] = Waiting("ErrImagePull", e.details)
            await events.emit(
                pod, WARNING, "Failed", f'Failed to pull image "{image}": {e.details}', field_path
            )
            await events.emit(pod, WARNING, "Failed", "Error: ErrImagePull", field_path)
            return None
        took = self.clock.seconds() - started
        size = pulled.size if pulled is not None else 0
        await events.emit(
            pod,
            NORMAL,
            "Pulled",
            f'Successfully pulled image "{image}" in {took:.3g}s ({took:.3g}s including '
            f"waiting). Image size: {size} bytes.",
            field_path,
        )
        return pulled.id if pulled is not None else image

    async def _lookups(self, pod: Object) -> Lookups:
        """The ConfigMaps, Secrets and services the pod's environments refer to."""
        client = self.workers.client
        namespace = metadata(pod).get("namespace", "")
        config_maps, secrets = podspec.referenced(pod)

        async def read(path: str) -> Object | None:
            try:
                return await client.get(path)
            except KubeAPIError as e:
                if e.code != 404:
                    raise
                return None

        base = f"/api/v1/namespaces/{namespace}"
        services: list[Object] = []
        if get_path(pod, "spec", "enableServiceLinks") is not False:
            listed = await client.call("GET", f"{base}/services", params={})
            services = list(listed.get("items") or [])
        if namespace != "default":
            master = await read("/api/v1/namespaces/default/services/kubernetes")
            services += [master] if master else []
        return Lookups(
            config_maps={n: await read(f"{base}/configmaps/{n}") for n in sorted(config_maps)},
            secrets={n: await read(f"{base}/secrets/{n}") for n in sorted(secrets)},
            services=tuple(services),
            allocatable=self.workers.settings.allocatable,
        )

    # Probes

    async def _probe(self, pod: Object, observed: Observed) -> None:
        """Run the probes that are due; publish started and ready; kill what failed liveness."""
        now = self.clock.seconds()
        policy = get_path(pod, "spec", "restartPolicy") or "Always"
        for container in _running_kinds(pod):
            name = str(container.get("name"))
            instances = observed.containers.get(name) or []
            if not instances or instances[0].state != api.CONTAINER_RUNNING:
                continue
            newest = instances[0]
            started_at = newest.started_at / 1e9
            for kind in KINDS:
                if not self.probes.due(name, kind, newest.id, container, started_at):
                    continue
                if self.probes.next_due(name, kind) > now:
                    continue
                probe = container[f"{kind}Probe"]
                outcome = await run_handler(
                    probe,
                    container,
                    newest.id,
                    _pod_ip(pod, observed, self.workers.settings),
                    self.runtime,
                    self.workers.prober,
                    float(probe.get("timeoutSeconds") or 1),
                    self.clock,
                )
                field_path = _field_path(pod, name)
                if not outcome.ok:
                    await self.workers.events.emit(
                        pod,
                        WARNING,
                        "Unhealthy",
                        f"{title(kind)} probe failed: {outcome.output}".rstrip(),
                        field_path,
                    )
                if self.probes.record(name, kind, container, outcome, now) is False:
                    if kind == "readiness":
                        continue
                    restarts = policy != "Never" or podspec.is_sidecar(container)
                    restarted = ", will be restarted" if restarts else ""
                    await self.workers.events.emit(
                        pod,
                        NORMAL,
                        "Killing",
                        f"Container {name} failed {kind} probe{restarted}",
                        field_path,
                    )
                    grace = probe.get("terminationGracePeriodSeconds")
                    grace = podspec.grace_period(pod) if grace is None else int(grace)
                    await self._stop_container(
                        pod, observed, name, newest.id, max(MINIMUM_GRACE, grace)
                    )
                    break
            observed.probed[name] = (
                self.probes.started(name, newest.id, container),
                self.probes.ready(name, newest.id, container),
            )

    # Status

    async def _write_status(
        self,
        pod: Object,
        observed: Observed,
        terminating: bool = False,
        failed: tuple[str, str] | None = None,
    ) -> Object:
        """Compute the pod's status and write it through ``pods/status`` if it changed."""
        base = pod if self.written is None else {**pod, "status": self.written}
        status = pod_status(
            base,
            observed,
            self.workers.settings.host_ips,
            self.clock.seconds(),
            terminating=terminating,
            failed=failed,
        )
        if status == self.written:
            return status
        held = pod.get("status") or {}
        patch: Object = {"status": {**{k: None for k in held if k not in status}, **status}}
        await self.workers.client.call(
            "PATCH", pod_path(pod) + "/status", patch, "application/merge-patch+json"
        )
        self.written = status
        return status

    # Stopping

    async def _kill(self, pod: Object, observed: Observed, reason: str = "") -> None:
        """
        Stop every running container with the pod's grace period, then the
        sandbox.  The regular containers stop first, together; then the
        sidecars one by one, the last started first, each with what remains
        of the grace (kubelet 1.32's termination ordering).
        """
        grace = max(MINIMUM_GRACE, podspec.grace_period(pod))
        began = self.clock.seconds()
        side = [str(c.get("name")) for c in podspec.sidecars(pod)]
        regular = [name for name in observed.containers if name not in side]
        await self._stop_running(pod, observed, regular, grace, reason)
        for name in reversed(side):
            left = max(MINIMUM_GRACE, int(grace - (self.clock.seconds() - began)))
            await self._stop_running(pod, observed, [name], left, reason)
        if observed.sandbox is not None and observed.sandbox_ready:
            await self.runtime.stop_pod_sandbox(observed.sandbox.id)

    async def _stop_running(
        self, pod: Object, observed: Observed, names: Sequence[str], grace: int, reason: str
    ) -> None:
        """Stop the running instances of the named containers together."""
        stops = []
        for name in names:
            running = [
                c for c in observed.containers.get(name) or () if c.state == api.CONTAINER_RUNNING
            ]
            for container in running:
                await self.workers.events.emit(
                    pod,
                    NORMAL,
                    "Killing",
                    reason or f"Stopping container {name}",
                    _field_path(pod, name),
                )
                stops.append(
                    Deferred.fromCoroutine(
                        self._stop_container(pod, observed, name, container.id, grace)
                    )
                )
        if stops:
            try:
                await gatherResults(stops, consumeErrors=True)
            except FirstError as e:
                e.subFailure.raiseException()

    async def _stop_container(
        self, pod: Object, observed: Observed, name: str, container_id: str, grace: int
    ) -> None:
        """Run the container's preStop hook (its time counts against the grace), then stop it."""
        spec = _spec(pod, name)
        hook = get_path(spec, "lifecycle", "preStop") if spec else None
        if spec is not None and hook:
            began = self.clock.seconds()
            outcome = await run_handler(
                hook,
                spec,
                container_id,
                _pod_ip(pod, observed, self.workers.settings),
                self.runtime,
                self.workers.prober,
                grace,
                self.clock,
            )
            if not outcome.ok:
                await self.workers.events.emit(
                    pod, WARNING, "FailedPreStopHook", "PreStopHook failed", _field_path(pod, name)
                )
            grace = max(MINIMUM_GRACE, int(grace - (self.clock.seconds() - began)))
        try:
            await self.runtime.stop_container(container_id, grace)
        except CRIError as e:
            if not e.not_found:
                raise

    async def _remove_sandboxes(self) -> None:
        selector = {POD_UID: self.uid}
        for sandbox in await self.runtime.list_pod_sandboxes(
            api.PodSandboxFilter(label_selector=selector)
        ):
            await self.runtime.stop_pod_sandbox(sandbox.id)
            await self.runtime.remove_pod_sandbox(sandbox.id)
        if self.workers.cgroups is not None:
            self.workers.cgroups.remove(self.uid)
        self.workers.remove_logs(self.last)

    async def _terminate(self, pod: Object) -> None:
        """A pod marked for deletion: kill it, write its final status, delete the object."""
        await self._kill(pod, await self.observe())
        await self._write_status(pod, await self.observe(), terminating=True)
        await self._remove_sandboxes()
        await self.workers.volumes.cleanup(self.uid)
        await confirm_deletion(self.workers.client, pod)

    async def _gone(self) -> None:
        """The pod left the API: kill what remains of it and forget it."""
        await self._kill(self.last, await self.observe())
        await self._remove_sandboxes()
        await self.workers.volumes.cleanup(self.uid)
        self._done = True
        self.workers.finished(self)
