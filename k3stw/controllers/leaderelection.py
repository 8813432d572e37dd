"""
Leader election over coordination.k8s.io Leases, as client-go's
``leaderelection`` runs it for kube-controller-manager and kube-scheduler:
every server is a candidate for ``kube-system/kube-controller-manager`` and
``kube-system/kube-scheduler``; one holds each Lease at a time, and only the
holder runs the loops behind it.

A candidate tries for the Lease every retry period (jittered): it creates a
missing Lease, takes one whose holder has not renewed it within the lease
duration, and otherwise waits.  Like client-go, it judges expiry by its own
clock (when it last *saw* the record change), so clock skew between servers
does not matter.  The leader renews every retry period; when no renewal has
succeeded for the renew deadline it steps down: its loops stop, and it is a
candidate again (kube-controller-manager exits instead; a server here keeps
serving).  A server that stops gracefully gives its Leases up (client-go's
``ReleaseOnCancel``), so another takes over at once rather than after the
lease duration.

The election is a typed Automat machine: ``stopped``, ``candidate`` (its
state holds the attempts' timer) and ``leading`` (the renewals' timers).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from automat import TypeMachineBuilder
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from k3stw.apiserver.kinds import leases
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers.events import NORMAL, EventRecorder
from k3stw.logs import Logger
from k3stw.machinery.objects import Object
from k3stw.machinery.times import micro_time

#: Where the components' Leases live.
LEASE_NAMESPACE = "kube-system"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
#: client-go's JitterFactor: a candidate waits retry period times 1 to 2.2 between tries.
JITTER_FACTOR = 1.2
#: How long a graceful stop waits for the Lease to be given up.
RELEASE_TIMEOUT = 2.0


@dataclass(frozen=True)
class ElectionTiming:
    """``--leader-elect-lease-duration``, ``-renew-deadline``, ``-retry-period`` (seconds)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def candidate_identity(hostname: str) -> str:
    """A process's identity in elections: C{hostname}, then a UUID new at each start."""
    return f"{hostname}_{uuid.uuid4()}"


class LeaseLock:
    """
    One Lease, read and written as client-go's ``LeaseLock`` and
    ``tryAcquireOrRenew`` do, remembering when it last saw the record change.
    """

    def __init__(
        self,
        store: ObjectStore,
        namespace: str,
        name: str,
        identity: str,
        timing: ElectionTiming,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0

    @property
    def description(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def try_acquire_or_renew(self, now: float) -> bool:
        """Take or renew the Lease at C{now}; False while another holds it (or wrote first)."""
        try:
            lease = await self.store.get(leases.RESOURCE, self.namespace, self.name)
        except StatusError as e:
            if e.code != 404:
                raise
            return await self._create(now)
        spec = lease.get("spec") or {}
        record = tuple(spec.get(field) for field in _RECORD_FIELDS)
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder = spec.get("holderIdentity") or ""
        duration = spec.get("leaseDurationSeconds") or self.timing.lease_duration
        if holder and holder != self.identity and self._observed_at + duration > now:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            acquired = spec.get("acquireTime") or micro_time(now)
        else:
            acquired, transitions = micro_time(now), transitions + 1
        lease["spec"] = self._spec(self.identity, acquired, micro_time(now), transitions)
        return await self._update(lease, now)

    async def release(self, now: float) -> None:
        """Give the Lease up (an empty holder, a one-second duration) if it is still ours."""
        lease = await self.store.get(leases.RESOURCE, self.namespace, self.name)
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return
        stamp = micro_time(now)
        lease["spec"] = self._spec("", stamp, stamp, int(spec.get("leaseTransitions") or 0))
        lease["spec"]["leaseDurationSeconds"] = 1
        await self._update(lease, now)

    def _spec(self, holder: str, acquired: str, renewed: str, transitions: int) -> Object:
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": int(self.timing.lease_duration),
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }

    async def _create(self, now: float) -> bool:
        stamp = micro_time(now)
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._spec(self.identity, stamp, stamp, 0),
        }
        try:
            created = await self.store.create(leases.RESOURCE, self.namespace, lease)
        except StatusError as e:
            if e.code != 409:
                raise
            return False  # another candidate created it first
        self._saw(created, now)
        return True

    async def _update(self, lease: Object, now: float) -> bool:
        try:
            updated = await self.store.update(leases.RESOURCE, self.namespace, self.name, lease)
        except StatusError as e:
            if e.code != 409:
                raise
            return False  # another candidate wrote it since we read it
        self._saw(updated, now)
        return True

    def _saw(self, lease: Object, now: float) -> None:
        spec = lease.get("spec") or {}
        self._observed = tuple(spec.get(field) for field in _RECORD_FIELDS)
        self._observed_at = now


_RECORD_FIELDS = (
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaseTransitions",
)


class _Inputs(Protocol):
    def start(self) -> None:
        "Become a candidate."

    def stop(self) -> Deferred[None]:
        "Leave the election (stopping the loops and giving the Lease up, if leading)."

    def acquired(self) -> None:
        "The Lease is ours."

    def lost(self) -> None:
        "No renewal succeeded within the renew deadline."

    def leading(self) -> bool:
        "Whether this candidate holds the Lease."


@dataclass
class _Core:
    elected: LeaderElected
    lock: LeaseLock
    clock: IReactorTime
    jitter: Callable[[], float]


class _Attempts:
    """
    Tries to acquire or renew the Lease, one attempt at a time, each
    C{delay()} seconds after the last ended, handing each outcome to
    C{outcome}.
    """

    def __init__(
        self, core: _Core, delay: Callable[[], float], outcome: Callable[[bool], None]
    ) -> None:
        self.core = core
        self.delay = delay
        self.outcome = outcome
        self.attempt: Deferred[bool] | None = None
        self.cancelled = False
        # Never at once: the first attempt's outcome must not arrive inside a transition.
        self.timer: IDelayedCall | None = core.clock.callLater(0, self._try)

    def _try(self) -> None:
        self.timer = None
        lock = self.core.lock
        attempt = Deferred.fromCoroutine(lock.try_acquire_or_renew(self.core.clock.seconds()))
        self.attempt = attempt
        attempt.addErrback(self._failed)
        attempt.addCallback(self._tried)

    def _failed(self, failure: Failure) -> bool:
        if not self.cancelled:
            self.core.elected._log.warn(
                "error retrieving resource lock {lease}: {error}",
                lease=self.core.lock.description,
                error=str(failure.value) or type(failure.value).__name__,
            )
        return False

    def _tried(self, success: bool) -> None:
        self.attempt = None
        if self.cancelled:
            return
        self.timer = self.core.clock.callLater(self.delay(), self._try)
        self.outcome(success)

    def cancel(self) -> None:
        self.cancelled = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.attempt is not None:
            self.attempt.cancel()


class _Campaign:
    """The candidate's state: attempts every retry period (jittered) until one wins."""

    def __init__(self, inputs: _Inputs, core: _Core) -> None:
        retry = core.lock.timing.retry_period
        self.attempts = _Attempts(
            core, lambda: retry * (1 + JITTER_FACTOR * core.jitter()), self._outcome
        )
        self.inputs = inputs

    def _outcome(self, acquired: bool) -> None:
        if acquired:
            self.inputs.acquired()


class _Term:
    """The leader's state: renewals every retry period, and the renew deadline's timer."""

    def __init__(self, inputs: _Inputs, core: _Core) -> None:
        self.inputs = inputs
        self.core = core
        timing = core.lock.timing
        self.deadline = core.clock.callLater(timing.renew_deadline, self._expired)
        self.attempts = _Attempts(core, lambda: timing.retry_period, self._outcome)

    def _outcome(self, renewed: bool) -> None:
        if renewed:
            self.deadline.reset(self.core.lock.timing.renew_deadline)

    def _expired(self) -> None:
        self.attempts.cancel()
        self.inputs.lost()

    def cancel(self) -> None:
        self.attempts.cancel()
        if self.deadline.active():
            self.deadline.cancel()


def _build_machine() -> Callable[[_Core], _Inputs]:
    builder = TypeMachineBuilder(_Inputs, _Core)

    def campaign(inputs: _Inputs, core: _Core) -> _Campaign:
        return _Campaign(inputs, core)

    def lead(inputs: _Inputs, core: _Core) -> _Term:
        core.elected._became_leader()
        return _Term(inputs, core)

    stopped = builder.state("stopped")
    candidate = builder.state("candidate", campaign)
    leading = builder.state("leading", lead)

    stopped.upon(_Inputs.start).to(candidate).returns(None)

    @stopped.upon(_Inputs.stop).loop()
    def stay_stopped(inputs: _Inputs, core: _Core) -> Deferred[None]:
        return succeed(None)

    @candidate.upon(_Inputs.acquired).to(leading)
    def won(inputs: _Inputs, core: _Core, campaign: _Campaign) -> None:
        campaign.attempts.cancel()

    @candidate.upon(_Inputs.stop).to(stopped)
    def withdraw(inputs: _Inputs, core: _Core, campaign: _Campaign) -> Deferred[None]:
        campaign.attempts.cancel()
        return succeed(None)

    @leading.upon(_Inputs.lost).to(candidate)
    def step_down(inputs: _Inputs, core: _Core, term: _Term) -> None:
        term.cancel()
        core.elected._stopped_leading(failed=True)

    @leading.upon(_Inputs.stop).to(stopped)
    def resign(inputs: _Inputs, core: _Core, term: _Term) -> Deferred[None]:
        term.cancel()
        return core.elected._stopped_leading(failed=False)

    candidate.upon(_Inputs.start).loop().returns(None)
    leading.upon(_Inputs.start).loop().returns(None)
    stopped.upon(_Inputs.leading).loop().returns(False)
    candidate.upon(_Inputs.leading).loop().returns(False)
    leading.upon(_Inputs.leading).loop().returns(True)
    return builder.build()


_Machine = _build_machine()


class LeaderElected(MultiService):
    """
    Services that run only while this process holds a Lease.

    Add services to it as to any L{MultiService}.  Starting it enters the
    election; its children start when the Lease is won and stop when it is
    lost or this service stops.  Its C{running} says whether the children
    run (whether this process leads), not whether it campaigns.

    :param lease: the Lease's name (L{CONTROLLER_MANAGER}, L{SCHEDULER}).
    :param identity: this process's holderIdentity (L{candidate_identity}).
    :param events: records ``LeaderElection`` Events on the Lease, if given.
    :param jitter: a random number in [0, 1) (the candidates' spread).
    """

    _log = Logger()

    def __init__(
        self,
        store: ObjectStore,
        lease: str,
        identity: str,
        events: EventRecorder | None = None,
        timing: ElectionTiming = ElectionTiming(),
        namespace: str = LEASE_NAMESPACE,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        super().__init__()
        self.lock = LeaseLock(store, namespace, lease, identity, timing)
        self.events = events
        self._machine = _Machine(_Core(self, self.lock, store.clock, jitter))

    @property
    def identity(self) -> str:
        return self.lock.identity

    @property
    def leading(self) -> bool:
        """Whether this process holds the Lease."""
        return self._machine.leading()

    def startService(self) -> None:
        self._log.info("attempting to acquire leader lease {lease}...", lease=self.lock.description)
        self._machine.start()

    def stopService(self) -> Deferred[None]:
        return self._machine.stop()

    def _became_leader(self) -> None:
        self._log.info("successfully acquired lease {lease}", lease=self.lock.description)
        self._record("became leader")
        MultiService.startService(self)

    def _stopped_leading(self, failed: bool) -> Deferred[None]:
        if failed:
            self._log.error(
                "failed to renew lease {lease}: timed out waiting for the condition",
                lease=self.lock.description,
            )
            self._record("stopped leading")
        stopped: Deferred[None] = maybeDeferred(MultiService.stopService, self)
        if not failed:
            stopped.addBoth(lambda _: self._release())
        return stopped

    def _release(self) -> Deferred[None]:
        lock = self.lock
        released = Deferred.fromCoroutine(lock.release(lock.store.clock.seconds()))
        released.addTimeout(RELEASE_TIMEOUT, lock.store.clock)
        released.addErrback(
            lambda failure: self._log.warn(
                "could not give up lease {lease}: {error}",
                lease=lock.description,
                error=str(failure.value) or type(failure.value).__name__,
            )
        )
        return released

    def _record(self, what: str) -> None:
        if self.events is None:
            return
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.lock.name, "namespace": self.lock.namespace},
        }
        self.events.emit(lease, NORMAL, "LeaderElection", f"{self.identity} {what}")
