"""A kind served in two versions and stored in one: events.k8s.io/v1 Events, kept as core ones."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.machinery.identity import User
from tests.support.apiserver import MemoryAPI, MemoryServer

ADMIN = User("admin", ("system:masters",))
NEW_EVENTS = "/apis/events.k8s.io/v1/namespaces/default/events"
CORE_EVENTS = "/api/v1/namespaces/default/events"

NEW_EVENT: dict[str, Any] = {
    "apiVersion": "events.k8s.io/v1",
    "kind": "Event",
    "metadata": {"name": "scheduled"},
    "eventTime": "2027-01-15T08:00:00.000000Z",
    "reportingController": "default-scheduler",
    "reportingInstance": "default-scheduler-server-1",
    "action": "Binding",
    "reason": "Scheduled",
    "type": "Normal",
    "note": "Successfully assigned default/web to node-1",
    "regarding": {"kind": "Pod", "namespace": "default", "name": "web"},
}


class EventsAPITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.api = MemoryAPI(self.server, {"admin": ADMIN})

    def test_created_in_the_new_api_read_in_the_core_one(self) -> None:
        code, created = self.api.request(b"POST", NEW_EVENTS, NEW_EVENT)
        self.assertEqual(code, 201)
        self.assertEqual(created["apiVersion"], "events.k8s.io/v1")
        self.assertEqual(created["note"], NEW_EVENT["note"])
        code, core = self.api.request(b"GET", f"{CORE_EVENTS}/scheduled")
        self.assertEqual((code, core["apiVersion"]), (200, "v1"))
        self.assertEqual(core["message"], NEW_EVENT["note"])
        self.assertEqual(core["involvedObject"], NEW_EVENT["regarding"])
        self.assertEqual(core["reportingComponent"], "default-scheduler")
        self.assertNotIn("note", core)
        self.assertEqual(core["metadata"]["uid"], created["metadata"]["uid"])

    def test_core_events_listed_and_selected_in_the_new_api(self) -> None:
        core_event = {
            "metadata": {"name": "pulled"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web"},
            "reason": "Pulled",
            "message": "image pulled",
            "type": "Normal",
            "source": {"component": "kubelet", "host": "node-1"},
            "count": 3,
        }
        self.api.request(b"POST", CORE_EVENTS, core_event)
        self.api.request(b"POST", NEW_EVENTS, NEW_EVENT)
        code, listed = self.api.request(b"GET", f"{NEW_EVENTS}?fieldSelector=reason%3DPulled")
        self.assertEqual(code, 200)
        [pulled] = listed["items"]
        self.assertEqual(pulled["apiVersion"], "events.k8s.io/v1")
        self.assertEqual(pulled["deprecatedCount"], 3)
        self.assertEqual(pulled["deprecatedSource"], {"component": "kubelet", "host": "node-1"})
        self.assertEqual(pulled["regarding"]["name"], "web")
        code, by_object = self.api.request(
            b"GET", f"{NEW_EVENTS}?fieldSelector=regarding.name%3Dweb"
        )
        self.assertEqual(
            sorted(e["metadata"]["name"] for e in by_object["items"]), ["pulled", "scheduled"]
        )

    def test_patched_through_the_new_api(self) -> None:
        self.api.request(b"POST", NEW_EVENTS, NEW_EVENT)
        patch = {"series": {"count": 2, "lastObservedTime": "2027-01-15T08:01:00.000000Z"}}
        code, patched = self.api.request(
            b"PATCH",
            f"{NEW_EVENTS}/scheduled",
            patch,
            headers={"content-type": "application/merge-patch+json"},
        )
        self.assertEqual((code, patched["series"]["count"]), (200, 2))
        self.assertEqual(
            self.server.get("", "events", "scheduled", "default")["series"]["count"], 2
        )

    def test_a_new_event_must_say_who_reports_it(self) -> None:
        incomplete = {
            k: v for k, v in NEW_EVENT.items() if k not in ("reportingController", "eventTime")
        }
        code, status = self.api.request(b"POST", NEW_EVENTS, incomplete)
        self.assertEqual(code, 422)
        self.assertIn("eventTime: Required value", status["message"])
        self.assertIn("reportingController: Required value", status["message"])
        self.assertFalse(self.server.exists("", "events", "scheduled", "default"))

    def test_deleted_through_the_new_api(self) -> None:
        self.api.request(b"POST", NEW_EVENTS, NEW_EVENT)
        code, _ = self.api.request(b"DELETE", f"{NEW_EVENTS}/scheduled")
        self.assertEqual(code, 200)
        self.assertFalse(self.server.exists("", "events", "scheduled", "default"))

    def test_printed_as_kubectl_prints_core_events(self) -> None:
        self.api.request(b"POST", NEW_EVENTS, NEW_EVENT)
        table = {"accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
        _, new = self.api.request(b"GET", NEW_EVENTS, headers=table)
        _, core = self.api.request(b"GET", CORE_EVENTS, headers=table)
        self.assertEqual(new["columnDefinitions"], core["columnDefinitions"])
        self.assertEqual(new["rows"][0]["cells"], core["rows"][0]["cells"])
        self.assertIn("pod/web", new["rows"][0]["cells"])
