"""
Leader election over Leases on the in-memory server, on Clocks: a candidate
takes a free Lease and renews it, another waits until the holder has been
silent for the lease duration, a leader that cannot renew within the renew
deadline stops its loops, and a graceful stop hands the Lease over at once.

Each candidate has its own object store and Clock on the one datastore, as
servers share a datastore: a candidate whose Clock stands still is a server
that has stopped renewing.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers.events import EventRecorder
from k3stw.controllers.leaderelection import (
    CONTROLLER_MANAGER,
    LeaderElected,
    candidate_identity,
)
from k3stw.machinery.times import micro_time
from tests.support.apiserver import START, MemoryServer


class LeaderElectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)

    def candidate(self, name: str, clock: Clock | None = None) -> tuple[LeaderElected, Service]:
        """A candidate on its own Clock (started at the server's time), with one loop to run."""
        if clock is None:
            clock = Clock()
            clock.advance(self.server.clock.seconds())
        store = ObjectStore(self.server.datastore, clock)
        events = EventRecorder(store, clock, "kube-controller-manager", name)
        elected = LeaderElected(
            store, CONTROLLER_MANAGER, candidate_identity(name), events, jitter=lambda: 0.0
        )
        loop = Service()
        loop.setServiceParent(elected)
        elected.startService()
        self.addCleanup(elected.stopService)
        return elected, loop

    def lease(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.server.get(
            "coordination.k8s.io", "leases", CONTROLLER_MANAGER, "kube-system"
        )["spec"]
        return spec

    def event_messages(self) -> list[str]:
        events = self.server.run(
            self.server.store.list(self.server.resource("", "events"), "kube-system")
        )
        return [event["message"] for event in events.items]

    def test_acquires_a_missing_lease(self) -> None:
        """The first candidate creates the Lease as client-go writes it and runs its loops."""
        elected, loop = self.candidate("server-1")
        self.assertFalse(loop.running)
        clock = elected.lock.store.clock
        assert isinstance(clock, Clock)
        clock.advance(0)
        self.assertTrue(elected.leading)
        self.assertTrue(loop.running)
        self.assertTrue(elected.identity.startswith("server-1_"))
        now = micro_time(START)
        self.assertEqual(
            self.lease(),
            {
                "holderIdentity": elected.identity,
                "leaseDurationSeconds": 15,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        )
        self.assertEqual(self.event_messages(), [f"{elected.identity} became leader"])

    def test_renews_every_retry_period(self) -> None:
        """The leader renews every two seconds, keeping acquireTime and the transitions."""
        clock = Clock()
        clock.advance(START)
        _, loop = self.candidate("server-1", clock)
        clock.advance(0)
        clock.advance(2)
        self.assertEqual(self.lease()["renewTime"], micro_time(START + 2))
        clock.advance(2)
        spec = self.lease()
        self.assertEqual(spec["renewTime"], micro_time(START + 4))
        self.assertEqual(spec["acquireTime"], micro_time(START))
        self.assertEqual(spec["leaseTransitions"], 0)
        self.assertTrue(loop.running)

    def test_second_candidate_waits_then_takes_over(self) -> None:
        """
        While the holder renews, another candidate waits; once it stops
        renewing, the other takes the Lease within the lease duration (and a
        retry period) of last seeing it change, never before.
        """
        first_clock, second_clock = Clock(), self.server.clock
        first_clock.advance(START)
        first, first_loop = self.candidate("server-1", first_clock)
        first_clock.advance(0)
        second, second_loop = self.candidate("server-2", second_clock)
        for _ in range(20):
            first_clock.advance(2)
            second_clock.advance(2)
            self.assertFalse(second.leading)
        self.assertEqual(self.lease()["holderIdentity"], first.identity)
        # The first server stops renewing (its clock stands still).
        silent_since = second_clock.seconds()
        while not second.leading:
            second_clock.advance(2)
            self.assertLessEqual(second_clock.seconds() - silent_since, 15 + 2)
        self.assertGreaterEqual(second_clock.seconds() - silent_since, 15)
        self.assertTrue(second_loop.running)
        spec = self.lease()
        self.assertEqual(spec["holderIdentity"], second.identity)
        self.assertEqual(spec["leaseTransitions"], 1)
        self.assertEqual(spec["acquireTime"], micro_time(second_clock.seconds()))
        # The first one comes back: its renewals fail, and at the deadline it steps down.
        self.assertTrue(first_loop.running)
        first_clock.advance(2)
        first_clock.advance(2)
        self.assertTrue(first.leading)
        first_clock.advance(6)
        self.assertFalse(first.leading)
        self.assertFalse(first_loop.running)
        self.assertIn(f"{first.identity} stopped leading", self.event_messages())
        self.assertEqual(self.lease()["holderIdentity"], second.identity)

    def test_step_down_stops_the_loops_when_renewals_fail(self) -> None:
        """A leader whose datastore is away stops its loops at the renew deadline."""
        clock = self.server.clock
        elected, loop = self.candidate("server-1", clock)
        clock.advance(0)
        self.assertTrue(loop.running)
        self.server.datastore.stopService()
        for _ in range(4):
            clock.advance(2)
        self.assertTrue(loop.running)
        clock.advance(2)
        self.assertFalse(elected.leading)
        self.assertFalse(loop.running)
        # A candidate again: it leads again once the datastore is back.
        self.server.datastore.startService()
        clock.advance(5)
        self.assertTrue(elected.leading)
        self.assertTrue(loop.running)

    def test_graceful_stop_hands_over_at_once(self) -> None:
        """A leader that stops gives the Lease up; the next candidate takes it on its next try."""
        clock = self.server.clock
        first, first_loop = self.candidate("server-1", clock)
        clock.advance(0)
        second, _ = self.candidate("server-2", clock)
        clock.advance(0)
        self.assertFalse(second.leading)
        self.successResultOf(first.stopService())
        self.assertFalse(first_loop.running)
        self.assertEqual(self.lease()["holderIdentity"], "")
        self.assertEqual(self.lease()["leaseDurationSeconds"], 1)
        clock.advance(2)
        self.assertTrue(second.leading)
        self.assertEqual(self.lease()["leaseTransitions"], 1)
        self.successResultOf(second.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_services_added_while_leading_start(self) -> None:
        """A service added to a leader starts at once; one added to a candidate waits."""
        clock = self.server.clock
        first, _ = self.candidate("server-1", clock)
        second, _ = self.candidate("server-2", clock)
        clock.advance(0)
        late, waiting = Service(), Service()
        late.setServiceParent(first)
        waiting.setServiceParent(second)
        self.assertTrue(late.running)
        self.assertFalse(waiting.running)
