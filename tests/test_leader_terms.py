"""
kube-controller-manager's loops across leadership terms, on the in-memory
server and its Clock: a leader that loses its Lease stops its controllers;
when it wins the Lease again they start as a new process would, acting on
everything that changed while another led, and forgetting the timers of
their last term.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import k3stw
from k3stw.controllers.events import EventRecorder
from k3stw.controllers.garbage import GarbageCollector
from k3stw.controllers.leaderelection import CONTROLLER_MANAGER, LeaderElected
from k3stw.controllers.namespacedefaults import default_service_accounts
from k3stw.controllers.nodeipam import COMPONENT, NodeIPAMController, cidr_sets
from k3stw.controllers.replicaset import ReplicaSetController
from k3stw.controllers.tainteviction import TaintEvictionController
from k3stw.machinery.controller import Controller
from k3stw.machinery.times import micro_time
from tests.support.apiserver import MemoryServer
from tests.test_controllers import owned_by
from tests.test_replicaset_controller import replicaset

UNREACHABLE = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}


class LeadershipTermTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        informers, store = self.server.informers, self.store
        self.controllers: list[Controller] = [
            GarbageCollector(informers, store, self.server.registry),
            default_service_accounts(informers, store),
            NodeIPAMController(
                informers,
                store,
                cidr_sets("10.42.0.0/16", 24),
                EventRecorder(store, self.clock, COMPONENT, ""),
            ),
            ReplicaSetController(informers, store),
            TaintEvictionController(informers, store),
        ]
        self.elected = LeaderElected(store, CONTROLLER_MANAGER, "server-1", jitter=lambda: 0.0)
        for controller in self.controllers:
            controller.setServiceParent(self.elected)
        self.server.start(self.elected)
        self.clock.advance(0)
        self.assertTrue(self.elected.leading)

    def lose_and_win_again(self) -> None:
        """Another holder takes the Lease; once it goes silent, this server leads again."""
        leases = self.server.resource("coordination.k8s.io", "leases")
        lease = self.server.get("coordination.k8s.io", "leases", CONTROLLER_MANAGER, "kube-system")
        lease["spec"].update(holderIdentity="server-2", renewTime=micro_time(self.clock.seconds()))
        self.server.run(self.store.update(leases, "kube-system", CONTROLLER_MANAGER, lease))
        self.advance_until(lambda: not self.elected.leading)
        self.assertFalse(any(controller.running for controller in self.controllers))
        self.away()
        self.advance_until(lambda: self.elected.leading)
        self.assertTrue(all(controller.running for controller in self.controllers))
        self.regained = self.clock.seconds()

    def advance_until(self, done: Callable[[], bool]) -> None:
        for _ in range(60):
            if done():
                return
            self.clock.advance(1)
        self.fail("waited a minute in vain")

    def away(self) -> None:
        """What changes while another server leads (nothing by default)."""

    def exists(self, group: str, plural: str, name: str, namespace: str | None = None) -> bool:
        return self.server.exists(group, plural, name, namespace)

    def evicted(self, name: str) -> bool:
        """Deleted by the taint eviction: gone, or Terminating (its node has no kubelet)."""
        if not self.exists("", "pods", name, "default"):
            return True
        return bool(
            self.server.get("", "pods", name, "default")["metadata"].get("deletionTimestamp")
        )

    def node(self, name: str, **spec: object) -> None:
        self.server.create("", "nodes", {"metadata": {"name": name}, "spec": spec})

    def pod(self, name: str, node: str) -> None:
        spec = {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}
        self.server.create("", "pods", {"metadata": {"name": name}, "spec": spec}, "default")

    def test_changes_made_under_another_leader_are_acted_on(self) -> None:
        owner = self.server.create("", "configmaps", {"metadata": {"name": "owner"}}, "default")
        self.server.create("", "configmaps", owned_by(owner, "child"), "default")
        self.node("tainted", taints=[UNREACHABLE])

        def away() -> None:
            self.server.delete("", "configmaps", "owner", "default")
            self.server.create("", "namespaces", {"metadata": {"name": "team"}})
            self.node("new")
            self.server.create("apps", "replicasets", replicaset(replicas=2), "default")
            self.pod("web", "tainted")
            self.assertTrue(self.exists("", "configmaps", "child", "default"))
            self.assertFalse(self.exists("", "serviceaccounts", "default", "team"))

        self.away = away  # type: ignore[method-assign]
        self.lose_and_win_again()
        # The garbage collector, the namespace defaults, node IPAM, the
        # ReplicaSet controller and the taint eviction controller: each acted.
        self.assertFalse(self.exists("", "configmaps", "child", "default"))
        self.assertTrue(self.exists("", "serviceaccounts", "default", "team"))
        self.assertTrue(self.server.get("", "nodes", "new")["spec"].get("podCIDRs"))
        pods = self.server.run(self.store.list(self.server.resource("", "pods"), "default"))
        owned = [p for p in pods.items if p["metadata"].get("ownerReferences")]
        self.assertEqual(len(owned), 2)
        self.clock.advance(301)
        self.assertTrue(self.evicted("web"))

    def test_a_new_term_forgets_the_last_terms_timers(self) -> None:
        """A scheduled eviction starts over in a new term, as in a new process."""
        self.node("tainted", taints=[UNREACHABLE])
        self.pod("web", "tainted")
        self.clock.advance(100)
        self.lose_and_win_again()
        self.clock.advance(299)  # past the last term's due time
        self.assertFalse(self.evicted("web"))
        self.clock.advance(1.1)
        self.assertTrue(self.evicted("web"))


class HandlerRegistrationTests(SynchronousTestCase):
    def test_every_controller_registers_its_handlers_for_replay(self) -> None:
        """
        Handlers added straight to an informer would miss a new term's
        replay: every controller goes through C{Controller.add_handler}.
        """
        root = Path(k3stw.__file__).parent
        offenders = [
            f"{path.relative_to(root)}:{number}"
            for folder in ("controllers", "scheduler", "supervisor")
            for path in sorted((root / folder).glob("*.py"))
            if re.search(r"^class \w+\(.*Controller.*\):", path.read_text(), re.M)
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if ".add_handler(" in line and "self.add_handler(" not in line
        ]
        self.assertEqual(offenders, [])
