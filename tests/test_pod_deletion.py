"""
Graceful pod deletion as kube-apiserver 1.32 does it (podStrategy's
CheckGracefulDelete, rest.BeforeDelete): a bound pod is marked with
``deletionTimestamp`` = now + its grace period and kept for its kubelet; an
unbound or finished pod goes at once; a later DELETE may only shorten the
grace; grace 0 removes it.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds.pods import grace_period
from k3stw.kubeclient import KubeAPI, KubeAPIError
from k3stw.kubelet.pods.deletion import confirm_deletion
from k3stw.machinery.identity import User
from k3stw.machinery.objects import Object
from k3stw.machinery.times import rfc3339
from tests.support.apiserver import START, MemoryAPI, MemoryClient, MemoryServer

ADMIN = User("admin", ("system:masters",))
PODS = "/api/v1/namespaces/default/pods"


def pod_object(name: str, node: str = "n1", **spec: Any) -> Object:
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "c", "image": "busybox"}],
            **({"nodeName": node} if node else {}),
            **spec,
        },
    }


class GracePeriodTests(SynchronousTestCase):
    """The pod strategy's grace period of a DELETE."""

    def test_the_pods_own_unless_asked(self) -> None:
        pod = pod_object("a", terminationGracePeriodSeconds=45)
        self.assertEqual(grace_period(pod, None), 45)
        self.assertEqual(grace_period(pod, 5), 5)
        self.assertEqual(grace_period(pod, 0), 0)

    def test_zero_for_a_pod_no_kubelet_runs(self) -> None:
        self.assertEqual(
            grace_period(pod_object("a", node="", terminationGracePeriodSeconds=45), 9), 0
        )

    def test_zero_for_a_finished_pod(self) -> None:
        for phase in ("Succeeded", "Failed"):
            pod = {**pod_object("a", terminationGracePeriodSeconds=45), "status": {"phase": phase}}
            self.assertEqual(grace_period(pod, 9), 0)


class GracefulDeleteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.pods = self.server.resource("", "pods")
        self.api = MemoryAPI(self.server, {"admin": ADMIN})

    def create(self, pod: Object) -> Object:
        return self.server.create("", "pods", pod, "default")

    def delete(self, name: str, **options: Any) -> tuple[int, Any]:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", **options}
        return self.api.request(b"DELETE", f"{PODS}/{name}", body)

    def exists(self, name: str) -> bool:
        return self.server.exists("", "pods", name, "default")

    def at(self, seconds: float) -> str:
        return rfc3339(START + seconds)

    def test_a_bound_pod_is_marked_with_its_default_grace_and_kept(self) -> None:
        self.create(pod_object("a"))
        code, answer = self.delete("a")
        self.assertEqual(code, 200)
        self.assertEqual(answer["kind"], "Pod")
        meta = answer["metadata"]
        self.assertEqual(
            (meta["deletionTimestamp"], meta["deletionGracePeriodSeconds"]), (self.at(30), 30)
        )
        stored = self.server.get("", "pods", "a", "default")["metadata"]
        self.assertEqual(stored["deletionGracePeriodSeconds"], 30)

    def test_the_asked_grace_wins_and_a_later_delete_may_only_shorten_it(self) -> None:
        self.create(pod_object("a"))
        self.delete("a", gracePeriodSeconds=60)
        self.server.clock.advance(10)
        _, longer = self.delete("a", gracePeriodSeconds=90)
        self.assertEqual(longer["metadata"]["deletionTimestamp"], self.at(60))
        _, again = self.delete("a")
        self.assertEqual(again["metadata"]["deletionGracePeriodSeconds"], 60)
        _, shorter = self.delete("a", gracePeriodSeconds=20)
        # The deadline moves back by the difference: 60 - 60 + 20.
        self.assertEqual(
            (
                shorter["metadata"]["deletionTimestamp"],
                shorter["metadata"]["deletionGracePeriodSeconds"],
            ),
            (self.at(20), 20),
        )
        self.assertTrue(self.exists("a"))

    def test_shortening_past_the_deadline_leaves_one_second(self) -> None:
        self.create(pod_object("a"))
        self.delete("a", gracePeriodSeconds=30)
        self.server.clock.advance(25)
        _, shorter = self.delete("a", gracePeriodSeconds=2)
        meta = shorter["metadata"]
        self.assertEqual(
            (meta["deletionTimestamp"], meta["deletionGracePeriodSeconds"]), (self.at(25), 1)
        )

    def test_grace_zero_removes_it_at_once_or_once_marked(self) -> None:
        self.create(pod_object("a"))
        self.create(pod_object("b"))
        code, _ = self.delete("a", gracePeriodSeconds=0)
        self.assertEqual(code, 200)
        self.assertFalse(self.exists("a"))
        self.delete("b")
        self.assertTrue(self.exists("b"))
        self.delete("b", gracePeriodSeconds=0)
        self.assertFalse(self.exists("b"))

    def test_the_query_parameter_counts_too(self) -> None:
        self.create(pod_object("a"))
        code, _ = self.api.request(b"DELETE", f"{PODS}/a?gracePeriodSeconds=0")
        self.assertEqual(code, 200)
        self.assertFalse(self.exists("a"))

    def test_a_negative_grace_is_one_second(self) -> None:
        self.create(pod_object("a"))
        _, answer = self.delete("a", gracePeriodSeconds=-5)
        self.assertEqual(answer["metadata"]["deletionGracePeriodSeconds"], 1)

    def test_an_unbound_or_finished_pod_goes_at_once(self) -> None:
        self.create(pod_object("unbound", node=""))
        _, gone = self.server.delete("", "pods", "unbound", "default")
        self.assertTrue(gone)
        self.create(pod_object("done"))
        done = self.server.get("", "pods", "done", "default")
        done["status"] = {"phase": "Succeeded"}
        self.server.run(
            self.server.store.update(self.pods, "default", "done", done, subresource="status")
        )
        _, gone = self.server.delete("", "pods", "done", "default")
        self.assertTrue(gone)

    def test_writes_to_a_terminating_pod_keep_it(self) -> None:
        """Only grace 0 lets a write remove it (kube's ShouldDeleteDuringUpdate)."""
        self.create(pod_object("a"))
        self.delete("a")
        pod = self.server.get("", "pods", "a", "default")
        pod["status"] = {"phase": "Running"}
        self.server.run(
            self.server.store.update(self.pods, "default", "a", pod, subresource="status")
        )
        self.assertTrue(self.exists("a"))

    def test_finalizers_hold_a_pod_deleted_with_grace_zero_until_removed(self) -> None:
        self.create({**pod_object("a"), "metadata": {"name": "a", "finalizers": ["example.com/x"]}})
        self.delete("a")
        self.delete("a", gracePeriodSeconds=0)
        pod = self.server.get("", "pods", "a", "default")
        self.assertEqual(pod["metadata"]["deletionGracePeriodSeconds"], 0)
        pod["metadata"]["finalizers"] = []
        self.server.run(self.server.store.update(self.pods, "default", "a", pod))
        self.assertFalse(self.exists("a"))

    def test_a_uid_precondition_guards_the_confirmation(self) -> None:
        self.create(pod_object("a"))
        self.delete("a")
        code, answer = self.delete("a", gracePeriodSeconds=0, preconditions={"uid": "other"})
        self.assertEqual((code, answer["reason"]), (409, "Conflict"))
        self.assertTrue(self.exists("a"))

    def test_eviction_uses_its_grace_period(self) -> None:
        self.create(pod_object("a"))
        eviction = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "a", "namespace": "default"},
            "deleteOptions": {"gracePeriodSeconds": 7},
        }
        code, _ = self.api.request(b"POST", f"{PODS}/a/eviction", eviction)
        self.assertEqual(code, 201)
        meta = self.server.get("", "pods", "a", "default")["metadata"]
        self.assertEqual(meta["deletionGracePeriodSeconds"], 7)

    def test_delete_collection_marks_bound_pods(self) -> None:
        self.create(pod_object("bound"))
        self.create(pod_object("unbound", node=""))
        code, _ = self.api.request(b"DELETE", PODS)
        self.assertEqual(code, 200)
        self.assertEqual((self.exists("bound"), self.exists("unbound")), (True, False))
        self.api.request(b"DELETE", PODS, {"gracePeriodSeconds": 0})
        self.assertFalse(self.exists("bound"))


class ConfirmDeletionTests(SynchronousTestCase):
    """The kubelet's final DELETE of a pod it stopped, as its node."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        node = User("system:node:n1", ("system:nodes",))
        self.api = MemoryAPI(self.server, {"admin": ADMIN, "node": node})
        self.client = MemoryClient(self.api, "node")
        self.kube = cast(KubeAPI, self.client)

    def confirm(self, pod: Object) -> None:
        self.successResultOf(Deferred.fromCoroutine(confirm_deletion(self.kube, pod)))

    def test_deletes_its_pod(self) -> None:
        pod = self.server.create("", "pods", pod_object("a"), "default")
        self.confirm(pod)
        self.assertFalse(self.server.exists("", "pods", "a", "default"))

    def test_a_pod_gone_meanwhile_is_done(self) -> None:
        """The node authorizer refuses (n1 has no such pod now): gone, not an error."""
        pod = self.server.create("", "pods", pod_object("a"), "default")
        self.api.request(b"DELETE", f"{PODS}/a", {"gracePeriodSeconds": 0})
        self.confirm(pod)
        self.assertEqual(self.client.requests[-1], ("GET", f"{PODS}/a"))

    def test_another_nodes_pod_is_refused(self) -> None:
        """A 403 for a pod that is still there is an error."""
        pod = self.server.create("", "pods", pod_object("a", node="n2"), "default")
        failure = self.failureResultOf(
            Deferred.fromCoroutine(confirm_deletion(self.kube, pod)), KubeAPIError
        )
        self.assertEqual(failure.value.code, 403)
        self.assertTrue(self.server.exists("", "pods", "a", "default"))
