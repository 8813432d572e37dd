"""
Kinds served in two versions and stored in one: events.k8s.io/v1 Events,
kept as core ones, and autoscaling/v1 HorizontalPodAutoscalers, kept as v2.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds.horizontalpodautoscalers import to_v1, to_v2
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


V2_HPA: dict[str, Any] = {
    "apiVersion": "autoscaling/v2",
    "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 1,
        "maxReplicas": 5,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 60},
                },
            },
            {
                "type": "Resource",
                "resource": {
                    "name": "memory",
                    "target": {"type": "AverageValue", "averageValue": "100Mi"},
                },
            },
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "queue_depth"},
                    "target": {"type": "AverageValue", "averageValue": "10"},
                },
            },
            {
                "type": "External",
                "external": {
                    "metric": {"name": "sqs", "selector": {"matchLabels": {"q": "jobs"}}},
                    "target": {"type": "Value", "value": "30"},
                },
            },
        ],
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
    },
    "status": {
        "currentReplicas": 2,
        "desiredReplicas": 2,
        "currentMetrics": [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "current": {"averageUtilization": 42}},
            },
            {
                "type": "Pods",
                "pods": {"metric": {"name": "queue_depth"}, "current": {"averageValue": "7"}},
            },
        ],
        "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}],
    },
}
V1_HPAS = "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers"
V2_HPAS = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers"


class AutoscalingV1Tests(SynchronousTestCase):
    def test_v1_shows_cpu_and_keeps_the_rest_in_kubes_annotations(self) -> None:
        v1 = to_v1(V2_HPA)
        self.assertEqual(v1["apiVersion"], "autoscaling/v1")
        self.assertEqual(v1["spec"]["targetCPUUtilizationPercentage"], 60)
        self.assertNotIn("metrics", v1["spec"])
        annotations = v1["metadata"]["annotations"]
        self.assertEqual(
            json.loads(annotations["autoscaling.alpha.kubernetes.io/metrics"]),
            [
                {"type": "Resource", "resource": {"name": "memory", "targetAverageValue": "100Mi"}},
                {"type": "Pods", "pods": {"metricName": "queue_depth", "targetAverageValue": "10"}},
                {
                    "type": "External",
                    "external": {
                        "metricName": "sqs",
                        "metricSelector": {"matchLabels": {"q": "jobs"}},
                        "targetValue": "30",
                    },
                },
            ],
        )
        self.assertEqual(v1["status"]["currentCPUUtilizationPercentage"], 42)
        self.assertEqual(
            json.loads(annotations["autoscaling.alpha.kubernetes.io/current-metrics"]),
            [{"type": "Pods", "pods": {"metricName": "queue_depth", "currentAverageValue": "7"}}],
        )
        self.assertIn("autoscaling.alpha.kubernetes.io/conditions", annotations)
        self.assertIn("autoscaling.alpha.kubernetes.io/behavior", annotations)

    def test_round_trip_through_v1_loses_nothing(self) -> None:
        self.assertEqual(to_v2(to_v1(V2_HPA)), V2_HPA)

    def test_the_stored_object_is_not_changed(self) -> None:
        before = json.dumps(V2_HPA)
        to_v1(V2_HPA)
        self.assertEqual(json.dumps(V2_HPA), before)

    def test_a_v1_client_writes_v2_objects(self) -> None:
        server = MemoryServer(self)
        api = MemoryAPI(server, {"admin": ADMIN})
        v1 = {
            "metadata": {"name": "api"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"},
                "maxReplicas": 3,
                "targetCPUUtilizationPercentage": 70,
            },
        }
        code, created = api.request(b"POST", V1_HPAS, v1)
        self.assertEqual((code, created["apiVersion"]), (201, "autoscaling/v1"))
        code, stored = api.request(b"GET", f"{V2_HPAS}/api")
        self.assertEqual(
            stored["spec"]["metrics"],
            [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        )

    def test_a_v1_read_modify_write_keeps_v2_metrics(self) -> None:
        server = MemoryServer(self)
        api = MemoryAPI(server, {"admin": ADMIN})
        api.request(b"POST", V2_HPAS, {k: v for k, v in V2_HPA.items() if k != "status"})
        _, v1 = api.request(b"GET", f"{V1_HPAS}/web")
        v1["spec"]["maxReplicas"] = 9
        code, _ = api.request(b"PUT", f"{V1_HPAS}/web", v1)
        self.assertEqual(code, 200)
        _, v2 = api.request(b"GET", f"{V2_HPAS}/web")
        self.assertEqual(v2["spec"]["maxReplicas"], 9)
        self.assertEqual(v2["spec"]["metrics"], V2_HPA["spec"]["metrics"])
        self.assertNotIn("annotations", v2["metadata"])
