"""
k3s's etcd node controller on the in-memory server: a server's own Node is
marked as an etcd node, and deleting an etcd Node (or annotating it for
removal) removes its member, on the server whose member leads etcd.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from k3stw.etcd.nodes import (
    ADDRESS,
    FINALIZER,
    NAME,
    NOT_LEADER_RETRY,
    REMOVE,
    REMOVED,
    ROLE,
    EtcdNodeController,
)
from k3stw.machinery.objects import Object
from tests.support.apiserver import MemoryServer


class Members:
    """etcd's membership as the controller sees it: who leads, which members were removed."""

    def __init__(self) -> None:
        self.leader = True
        self.removed: list[tuple[str, str]] = []

    async def is_leader(self) -> bool:
        return self.leader

    async def remove_member(self, name: str, address: str) -> bool:
        self.removed.append((name, address))
        return True


def node(name: str) -> Object:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


class EtcdNodeControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.members = Members()
        self.controller = EtcdNodeController(
            self.server.informers, self.server.store, self.members, "s1", "s1-0a1b2c3d", "10.0.0.5"
        )
        self.server.start(self.controller)

    def test_own_node_is_marked_as_an_etcd_node(self) -> None:
        self.server.create("", "nodes", node("s1"))
        self.server.create("", "nodes", node("agent"))
        meta = self.server.get("", "nodes", "s1")["metadata"]
        self.assertEqual(meta["annotations"][NAME], "s1-0a1b2c3d")
        self.assertEqual(meta["annotations"][ADDRESS], "10.0.0.5")
        self.assertEqual(meta["labels"][ROLE], "true")
        self.assertIn(FINALIZER, meta["finalizers"])
        # Only its own: another node is left alone.
        self.assertNotIn("annotations", self.server.get("", "nodes", "agent")["metadata"])

    def test_deleting_an_etcd_node_removes_its_member_then_the_node(self) -> None:
        self.server.create("", "nodes", node("s1"))
        self.server.delete("", "nodes", "s1")
        self.assertEqual(self.members.removed, [("s1-0a1b2c3d", "10.0.0.5")])
        self.assertFalse(self.server.exists("", "nodes", "s1"))

    def test_only_the_etcd_leaders_server_removes(self) -> None:
        self.members.leader = False
        self.server.create("", "nodes", node("s1"))
        self.server.delete("", "nodes", "s1")
        self.assertEqual(self.members.removed, [])
        self.assertTrue(self.server.exists("", "nodes", "s1"))
        self.members.leader = True
        self.server.clock.advance(NOT_LEADER_RETRY)
        self.assertEqual(self.members.removed, [("s1-0a1b2c3d", "10.0.0.5")])
        self.assertFalse(self.server.exists("", "nodes", "s1"))

    def test_the_remove_annotation_removes_the_member_and_keeps_the_node(self) -> None:
        self.server.create("", "nodes", node("s1"))

        def annotate(current: Object) -> Object:
            current["metadata"]["annotations"][REMOVE] = "True"
            return current

        resource = self.server.resource("", "nodes")
        self.server.run(self.server.store.guaranteed_update(resource, None, "s1", annotate))
        self.assertEqual(self.members.removed, [("s1-0a1b2c3d", "10.0.0.5")])
        annotations = self.server.get("", "nodes", "s1")["metadata"]["annotations"]
        self.assertEqual(annotations[REMOVED], "s1-0a1b2c3d")
        self.assertNotIn(NAME, annotations)
        # Deleting it now does not ask etcd again: the member is gone already.
        self.server.delete("", "nodes", "s1")
        self.assertEqual(len(self.members.removed), 1)
        self.assertFalse(self.server.exists("", "nodes", "s1"))

    def test_a_new_member_clears_an_old_removal(self) -> None:
        """The server re-joined under a new member name: the old removal no longer applies."""
        rejoined = node("s1")
        rejoined["metadata"]["annotations"] = {REMOVE: "true", REMOVED: "s1-99999999"}
        self.server.create("", "nodes", rejoined)
        annotations = self.server.get("", "nodes", "s1")["metadata"]["annotations"]
        self.assertEqual(annotations, {NAME: "s1-0a1b2c3d", ADDRESS: "10.0.0.5"})
        self.assertEqual(self.members.removed, [])
