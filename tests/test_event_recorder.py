"""The controllers' and the kubelet's Events: written once, counted again when they repeat."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers.events import REPEAT_WINDOW, WARNING, EventRecorder
from k3stw.kubelet.pods.events import QUIET, PodEvents
from k3stw.machinery.objects import Object
from tests.support.apiserver import MemoryServer
from tests.support.fakes import FakeKubeClient

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default", "uid": "u-1", "resourceVersion": "7"},
}


class EventRecorderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.recorder = EventRecorder(
            self.server.store, self.server.clock, "deployment-controller", "server-1"
        )

    def events(self) -> list[dict[str, object]]:
        store, resource = self.server.store, self.server.resource("", "events")
        return self.server.run(store.list(resource, "default")).items

    def test_written_as_kube_controller_manager_writes_it(self) -> None:
        self.server.run(self.recorder.emit(DEPLOYMENT, "Normal", "ScalingReplicaSet", "Scaled up"))
        [event] = self.events()
        self.assertEqual(
            event["involvedObject"],
            {
                "kind": "Deployment",
                "namespace": "default",
                "name": "web",
                "uid": "u-1",
                "apiVersion": "apps/v1",
                "resourceVersion": "7",
            },
        )
        self.assertEqual(
            (event["reason"], event["message"], event["type"], event["count"]),
            ("ScalingReplicaSet", "Scaled up", "Normal", 1),
        )
        self.assertEqual(
            event["source"], {"component": "deployment-controller", "host": "server-1"}
        )
        self.assertTrue(str(event["metadata"]["name"]).startswith("web."))  # type: ignore[index]

    def test_events_of_one_object_at_one_instant_are_all_written(self) -> None:
        """Names are the time in nanoseconds: a clock that stands still must not lose any."""
        self.server.run(self.recorder.emit(DEPLOYMENT, "Normal", "SuccessfulCreate", "one"))
        self.server.run(self.recorder.emit(DEPLOYMENT, "Normal", "SuccessfulDelete", "two"))
        reasons = sorted(str(event["reason"]) for event in self.events())
        self.assertEqual(reasons, ["SuccessfulCreate", "SuccessfulDelete"])

    def test_a_repeat_is_counted_on_the_same_event(self) -> None:
        for _ in range(3):
            self.server.run(self.recorder.emit(DEPLOYMENT, WARNING, "FailedCreate", "quota"))
            self.server.clock.advance(5)
        [event] = self.events()
        self.assertEqual(event["count"], 3)
        self.assertNotEqual(event["firstTimestamp"], event["lastTimestamp"])

    def test_a_repeat_after_the_window_is_a_new_event(self) -> None:
        self.server.run(self.recorder.emit(DEPLOYMENT, WARNING, "FailedCreate", "quota"))
        self.server.clock.advance(REPEAT_WINDOW + 1)
        self.server.run(self.recorder.emit(DEPLOYMENT, WARNING, "FailedCreate", "quota"))
        self.assertEqual([e["count"] for e in self.events()], [1, 1])

    def test_a_deleted_event_is_written_anew(self) -> None:
        self.server.run(self.recorder.emit(DEPLOYMENT, WARNING, "FailedCreate", "quota"))
        [event] = self.events()
        name = event["metadata"]["name"]  # type: ignore[index]
        self.server.delete("", "events", name, "default")
        self.server.run(self.recorder.emit(DEPLOYMENT, WARNING, "FailedCreate", "quota"))
        self.assertEqual([e["count"] for e in self.events()], [1])

    def test_a_failed_write_is_dropped_not_raised(self) -> None:
        orphan = {**DEPLOYMENT, "metadata": {**DEPLOYMENT["metadata"], "namespace": "gone"}}
        self.server.run(self.recorder.emit(orphan, WARNING, "FailedCreate", "x"))
        self.assertEqual(self.events(), [])
        self.flushLoggedErrors()


POD: dict[str, Any] = {"metadata": {"name": "web", "namespace": "default", "uid": "p-1"}}


class KubeletEventTests(SynchronousTestCase):
    """The kubelet's Events, through the API: the same rules, its source, its field paths."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeKubeClient(self.clock)
        self.events = PodEvents(self.client, self.clock, "node-1")

    def emit(self, reason: str, field_path: str = "spec.containers{main}") -> None:
        self.successResultOf(self.events.emit(POD, WARNING, reason, "failed", field_path))

    def written(self) -> list[Object]:
        prefix = "/api/v1/namespaces/default/events/"
        return [obj for path, obj in sorted(self.client.objects.items()) if path.startswith(prefix)]

    def test_written_as_the_kubelet_writes_it(self) -> None:
        self.emit("BackOff")
        [event] = self.written()
        self.assertEqual(
            event["involvedObject"],
            {
                "kind": "Pod",
                "namespace": "default",
                "name": "web",
                "uid": "p-1",
                "apiVersion": "v1",
                "fieldPath": "spec.containers{main}",
            },
        )
        self.assertEqual(event["source"], {"component": "kubelet", "host": "node-1"})
        self.assertEqual(
            (event["reportingComponent"], event["reportingInstance"]), ("kubelet", "node-1")
        )

    def test_repeats_are_counted_but_not_sooner_than_quiet(self) -> None:
        for _ in range(3):
            self.emit("BackOff")
            self.clock.advance(QUIET / 2)
        [event] = self.written()
        self.assertEqual(event["count"], 2)
        self.emit("BackOff", field_path="spec.containers{side}")
        self.assertEqual(len(self.written()), 2)

    def test_a_deleted_event_is_written_anew(self) -> None:
        self.emit("BackOff")
        [event] = self.written()
        self.client.remove_object(f"/api/v1/namespaces/default/events/{event['metadata']['name']}")
        self.clock.advance(QUIET)
        self.emit("BackOff")
        self.assertEqual([e["count"] for e in self.written()], [1])
