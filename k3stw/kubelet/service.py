"""
The kubelet as a service: register the Node, then renew its Lease and post
its status on a schedule, each job retrying with backoff when it fails.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed

from k3stw.httpclient import RequestFailed
from k3stw.kubeclient import KubeAPIError, KubeClient, Object
from k3stw.kubelet.config import KubeletConfig
from k3stw.kubelet.hostinfo import HostFacts, read_host_facts
from k3stw.kubelet.node import (
    LEASES_PATH,
    NODES_PATH,
    build_lease,
    build_node,
    lease_path,
    micro_time,
    node_path,
    node_status,
    reconcile_node,
    renew_lease,
    rfc3339,
    without_heartbeats,
)
from k3stw.logs import Logger

#: Failures that say the server is away or unwell, logged without a traceback.
_EXPECTED_FAILURES = (
    KubeAPIError,
    ConnectError,
    ConnectionClosed,
    DeferredTimeoutError,
    RequestFailed,
    ResponseFailed,
    OSError,
)

Job = Callable[[], Coroutine[Any, Any, None]]


class KubeletService(Service):
    """
    One node's kubelet, for now its node-status half.

    On start it registers the Node (or, when one of that name exists, takes
    it over: its own labels set again, what others set kept); then it renews
    the node's Lease every C{config.lease_interval} and checks the node's
    status every C{config.status_interval}, posting it when it changed or
    every C{config.status_report_interval}.  A Node deleted while the
    kubelet runs is registered again.

    :param clock: all timing goes through it.
    :param client: the API, with the node's identity.
    :param host_facts: reads the host's facts (tests pass fixed ones).
    :param jitter: a number in [0, 1) for each retry's random share.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        client: KubeClient,
        config: KubeletConfig,
        host_facts: Callable[[], HostFacts] | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.clock = clock
        self.client = client
        self.config = config
        self._host_facts = host_facts or partial(read_host_facts, config.data_dir)
        self._jitter = jitter
        #: The Node as the server last returned it (None before registration).
        self.node: Object | None = None
        self._lease: Object | None = None
        #: When the status was last written (registration counts).
        self._reported_at = 0.0
        self._jobs: list[Deferred[None]] = []

    def startService(self) -> None:
        super().startService()
        self._start_job(self._run())

    def stopService(self) -> None:
        super().stopService()
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.cancel()

    def _start_job(self, coroutine: Coroutine[Any, Any, None]) -> None:
        job = Deferred.fromCoroutine(coroutine)
        self._jobs.append(job)
        job.addErrback(self._job_ended)
        job.addBoth(self._forget_job, job)

    def _job_ended(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self._log.failure("kubelet job stopped", failure)

    def _forget_job(self, _: object, job: Deferred[None]) -> None:
        if job in self._jobs:
            self._jobs.remove(job)

    async def _run(self) -> None:
        await self._retrying("Unable to register node with API server", self._register)
        self._log.info("Successfully registered node {node}", node=self.config.node_name)
        self._start_job(
            self._every("Failed to update lease", self.config.lease_interval, self._renew_lease, 0)
        )
        self._start_job(
            self._every(
                "Error updating node status",
                self.config.status_interval,
                self._post_status,
                self.config.status_interval,
            )
        )

    # Scheduling

    async def _retrying(self, what: str, job: Job) -> None:
        """Run C{job} until it succeeds, waiting longer after each failure."""
        failures = 0
        while not await self._attempt(what, job, failures):
            failures += 1
            await deferLater(self.clock, self._backoff(failures))

    async def _every(self, what: str, interval: float, job: Job, first: float) -> None:
        """Run C{job} every C{interval} seconds (sooner after a failure), forever."""
        failures = 0
        delay = first
        while True:
            if delay > 0:
                await deferLater(self.clock, delay)
            if await self._attempt(what, job, failures):
                failures, delay = 0, interval
            else:
                failures += 1
                delay = self._backoff(failures)

    async def _attempt(self, what: str, job: Job, failures: int) -> bool:
        """Run C{job} once under the timeout; whether it succeeded (failures are logged)."""
        running = Deferred.fromCoroutine(job())
        running.addTimeout(self.config.timeout, self.clock)
        try:
            await running
        except CancelledError:
            if not self.running:
                raise
            self._log.warn("{what} (attempt {attempt}): cancelled", what=what, attempt=failures + 1)
            return False
        except _EXPECTED_FAILURES as e:
            self._log.warn(
                "{what} (attempt {attempt}): {error}",
                what=what,
                attempt=failures + 1,
                error=self._describe(e),
            )
            return False
        except Exception:
            self._log.failure("{what} (attempt {attempt})", what=what, attempt=failures + 1)
            return False
        return True

    def _describe(self, error: Exception) -> str:
        if isinstance(error, DeferredTimeoutError):
            return f"no answer within {self.config.timeout:g}s"
        return str(error) or type(error).__name__

    def _backoff(self, failures: int) -> float:
        config = self.config
        base = min(config.retry_initial * 2.0 ** (failures - 1), config.retry_max)
        return base * (1 + config.retry_jitter * self._jitter())

    # Jobs

    async def _register(self) -> None:
        """Create the Node, or take over the one that exists, and record what the server holds."""
        config = self.config
        facts = self._host_facts()
        now = rfc3339(self.clock.seconds())
        try:
            self.node = await self.client.create(NODES_PATH, build_node(config, facts, now))
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
        await self._post_status(force=True)

    async def _post_status(self, force: bool = False) -> None:
        """
        Read the Node and put its status through the status subresource when
        it changed (heartbeat times aside), when C{force}d, or when
        C{status_report_interval} has passed since the last report, as the
        kubelet does: the Lease is the heartbeat, so an unchanged status is
        not rewritten every 10 s.  Reading first measures condition
        transitions against what the server holds (the node lifecycle
        controller may have marked the node Unknown); a 409 means someone
        wrote in between, so read and try again.  A Node that is gone is
        registered again.
        """
        path = node_path(self.config.node_name)
        for attempt in (1, 2):
            try:
                self.node = await self.client.get(path)
            except KubeAPIError as e:
                if e.code != 404:
                    raise
                self._log.warn(
                    "Node {node} was deleted; registering it again", node=self.config.node_name
                )
                await self._register()
                return
            seconds = self.clock.seconds()
            held = self.node.get("status") or {}
            status = node_status(self.config, self._host_facts(), held, rfc3339(seconds))
            due = force or seconds - self._reported_at >= self.config.status_report_interval
            if not due and without_heartbeats(status) == without_heartbeats(held):
                return
            metadata = self.node.get("metadata") or {}
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": self.config.node_name,
                    "resourceVersion": metadata.get("resourceVersion", ""),
                },
                "status": status,
            }
            try:
                self.node = await self.client.replace(path + "/status", body)
                self._reported_at = seconds
                return
            except KubeAPIError as e:
                if e.code == 404:
                    await self._register()
                    return
                if e.code != 409 or attempt == 2:
                    raise

    async def _renew_lease(self) -> None:
        """Renew the node's Lease from the copy last written; read or create it when needed."""
        config = self.config
        uid = str(((self.node or {}).get("metadata") or {}).get("uid", ""))
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
