"""
The horizontal pod autoscaler on the in-memory server, on a Clock, with an
in-memory metrics source: kube's replica calculation, its limits and
behaviour, and the status, conditions and Events kube-controller-manager
writes.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers.horizontal import (
    SYNC_PERIOD,
    HorizontalController,
    PodMetric,
    group_pods,
    propose,
)
from k3stw.machinery.objects import Object, find_condition
from k3stw.machinery.times import go_duration, parse_go_duration, rfc3339
from tests.support.apiserver import MemoryServer
from tests.support.fakes import FakePodMetrics

CPU_50 = [
    {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
    }
]


def _pod(name: str, cpu: str = "100m", phase: str = "Running", ready: bool = True) -> Object:
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
        "status": {
            "phase": phase,
            "startTime": "2020-01-01T00:00:00Z",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": "2020-01-01T00:00:00Z",
                }
            ],
        },
    }


def _usage(**values: int) -> dict[str, PodMetric]:
    return {name: PodMetric(value, 1e10, 15.0) for name, value in values.items()}


class ReplicaCalculationTests(SynchronousTestCase):
    """kube's GetResourceReplicas, pure."""

    def test_replicas_grow_with_the_usage_ratio_rounded_up(self) -> None:
        pods = [_pod("a"), _pod("b")]
        proposal = propose(2, 50, True, _usage(a=90, b=80), pods, "cpu", "", 1e10)
        # 170m of 200m requested is 85 %, 1.7 times the target: ceil(1.7 * 2).
        self.assertEqual((proposal.replicas, proposal.utilization, proposal.average), (4, 85, 85))

    def test_a_change_within_the_tolerance_keeps_the_replicas(self) -> None:
        pods = [_pod("a"), _pod("b")]
        proposal = propose(2, 50, True, _usage(a=54, b=54), pods, "cpu", "", 1e10)
        self.assertEqual(proposal.replicas, 2)

    def test_pods_without_metrics_count_as_at_their_request_on_a_scale_down(self) -> None:
        pods = [_pod("a"), _pod("b"), _pod("c")]
        # Alone, a and b (10 %) would ask for 1 replica; c counted at 100 % keeps 3.
        proposal = propose(3, 50, True, _usage(a=10, b=10), pods, "cpu", "", 1e10)
        self.assertEqual(proposal.replicas, 3)
        self.assertEqual(proposal.utilization, 10)

    def test_unready_pods_count_as_idle_on_a_scale_up(self) -> None:
        pods = [_pod("a"), _pod("b", ready=False)]
        # a alone (200 %) would ask for 4 x 1; b at 0 % makes it ceil(2 x 2) = 4... of 2 pods.
        proposal = propose(2, 50, True, _usage(a=200, b=200), pods, "cpu", "", 1e10)
        self.assertEqual(proposal.replicas, 4)
        self.assertEqual(proposal.utilization, 200)
        # Counted as using what it reported, b would have made it 8.
        both = propose(2, 50, True, _usage(a=200, b=200), [_pod("a"), _pod("b")], "cpu", "", 1e10)
        self.assertEqual(both.replicas, 8)

    def test_cpu_samples_from_before_a_pod_turned_ready_are_left_out_while_it_starts(self) -> None:
        pod = _pod("a")
        now = 1e10
        pod["status"]["startTime"] = rfc3339(now - 60)
        pod["status"]["conditions"][0]["lastTransitionTime"] = rfc3339(now - 10)
        # Sampled over 15 s up to now: it began before the pod was Ready.
        groups = group_pods([pod], {"a": PodMetric(100, now, 15.0)}, "cpu", now)
        self.assertEqual((groups.ready, groups.unready), (0, {"a"}))
        # A whole window since it turned Ready, the sample counts.
        groups = group_pods([pod], {"a": PodMetric(100, now, 5.0)}, "cpu", now)
        self.assertEqual((groups.ready, groups.unready), (1, set()))
        # Memory samples count whatever the readiness.
        groups = group_pods([pod], {"a": PodMetric(100, now, 15.0)}, "memory", now)
        self.assertEqual(groups.ready, 1)

    def test_pending_failed_and_deleted_pods_are_not_counted(self) -> None:
        pending, failed, deleted = _pod("p", phase="Pending"), _pod("f", phase="Failed"), _pod("d")
        deleted["metadata"]["deletionTimestamp"] = "2020-01-01T00:00:00Z"
        groups = group_pods([pending, failed, deleted, _pod("m")], {}, "cpu", 1e10)
        self.assertEqual(groups.unready, {"p"})
        self.assertEqual(groups.ignored, {"f", "d"})
        self.assertEqual(groups.missing, {"m"})

    def test_an_average_value_target_divides_the_average_usage(self) -> None:
        pods = [_pod("a"), _pod("b")]
        proposal = propose(2, 100_000, False, _usage(a=300_000, b=100_000), pods, "memory", "", 0)
        self.assertEqual((proposal.replicas, proposal.utilization), (4, None))


class MetricsWindowTests(SynchronousTestCase):
    def test_a_window_reads_back_as_go_writes_it(self) -> None:
        for seconds in (15.0, 1.5, 60.0, 0.25, 3725.5):
            self.assertAlmostEqual(parse_go_duration(go_duration(round(seconds * 1e9))), seconds)


class HorizontalControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        self.metrics = FakePodMetrics(self.clock)
        self.hpas = self.server.resource("autoscaling", "horizontalpodautoscalers", "v2")
        self.controller = HorizontalController(
            self.server.informers, self.store, self.server.registry, self.metrics
        )
        self.server.start(self.controller)

    def deployment(self, replicas: int = 1) -> None:
        self.server.create(
            "apps",
            "deployments",
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                    },
                },
            },
            "default",
        )

    def pod(self, name: str, cpu: str | None = "100m", ready: bool = True, **usage: str) -> None:
        requests = {"cpu": cpu, "memory": "100Mi"} if cpu else {}
        self.server.create(
            "",
            "pods",
            {
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "c", "image": "nginx", "resources": {"requests": requests}}
                    ]
                },
            },
            "default",
        )
        pod = self.server.get("", "pods", name, "default")
        long_ago = rfc3339(self.clock.seconds() - 3600)
        pod["status"] = {
            "phase": "Running",
            "startTime": long_ago,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": long_ago,
                }
            ],
        }
        pods = self.server.resource("", "pods")
        self.server.run(self.store.update(pods, "default", name, pod, subresource="status"))
        if usage:
            self.metrics.set("default", name, **usage)

    def autoscaler(
        self, metrics: list[Any] | None = None, least: int = 1, most: int = 10, **spec: Any
    ) -> None:
        self.server.create(
            "autoscaling",
            "horizontalpodautoscalers",
            {
                "metadata": {"name": "web"},
                "spec": {
                    "scaleTargetRef": {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": "web",
                    },
                    "minReplicas": least,
                    "maxReplicas": most,
                    "metrics": CPU_50 if metrics is None else metrics,
                    **spec,
                },
            },
            "default",
        )

    def status(self) -> dict[str, Any]:
        hpa = self.run_get()
        status: dict[str, Any] = hpa.get("status") or {}
        return status

    def run_get(self) -> Object:
        return self.server.run(self.store.get(self.hpas, "default", "web"))

    def condition(self, kind: str) -> tuple[str, str, str]:
        found = find_condition(self.run_get(), kind)
        assert found is not None, kind
        return found["status"], found["reason"], found["message"]

    def replicas(self) -> int:
        replicas: int = self.server.get("apps", "deployments", "web", "default")["spec"]["replicas"]
        return replicas

    def events(self) -> list[tuple[str, str, str]]:
        events = self.server.resource("", "events")
        listed = self.server.run(self.store.list(events, "default")).items
        return [
            (e["type"], e["reason"], e["message"])
            for e in sorted(listed, key=lambda e: e["metadata"]["name"])
            if e["involvedObject"].get("kind") == "HorizontalPodAutoscaler"
        ]

    def test_first_looks_after_a_sync_period_and_scales_up_on_cpu_utilization(self) -> None:
        self.deployment(1)
        self.pod("web-a")
        self.metrics.set("default", "web-a", cpu="200m", memory="10Mi")
        self.autoscaler()
        self.clock.advance(SYNC_PERIOD - 1)
        self.assertEqual(self.replicas(), 1)
        self.assertNotIn("conditions", self.status())
        self.clock.advance(1)
        # 200 % of the request against a 50 % target: 4 replicas.
        self.assertEqual(self.replicas(), 4)
        status = self.status()
        self.assertEqual(status["currentReplicas"], 1)
        self.assertEqual(status["desiredReplicas"], 4)
        self.assertEqual(status["lastScaleTime"], rfc3339(self.clock.seconds()))
        self.assertEqual(
            status["currentMetrics"],
            [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "current": {"averageUtilization": 200, "averageValue": "200m"},
                    },
                }
            ],
        )
        self.assertEqual(
            [c["type"] for c in status["conditions"]],
            ["AbleToScale", "ScalingActive", "ScalingLimited"],
        )
        self.assertEqual(
            self.condition("AbleToScale"),
            (
                "True",
                "SucceededRescale",
                "the HPA controller was able to update the target scale to 4",
            ),
        )
        self.assertEqual(
            self.condition("ScalingActive"),
            (
                "True",
                "ValidMetricFound",
                "the HPA was able to successfully calculate a replica count from cpu resource "
                "utilization (percentage of request)",
            ),
        )
        self.assertEqual(
            self.condition("ScalingLimited"),
            ("False", "DesiredWithinRange", "the desired count is within the acceptable range"),
        )
        self.assertEqual(
            self.events(),
            [
                (
                    "Normal",
                    "SuccessfulRescale",
                    "New size: 4; reason: cpu resource utilization (percentage of request) "
                    "above target",
                )
            ],
        )

    def test_looks_again_every_sync_period(self) -> None:
        self.deployment(2)
        self.pod("web-a", cpu="100m")
        self.pod("web-b", cpu="100m")
        self.metrics.set("default", "web-a", cpu="50m")
        self.metrics.set("default", "web-b", cpu="50m")
        self.autoscaler()
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 2)
        self.assertEqual(self.condition("AbleToScale")[1], "ReadyForNewScale")
        self.metrics.set("default", "web-a", cpu="100m")
        self.metrics.set("default", "web-b", cpu="100m")
        self.clock.advance(SYNC_PERIOD - 1)
        self.assertEqual(self.replicas(), 2)
        self.clock.advance(1)
        self.assertEqual(self.replicas(), 4)

    def test_without_metrics_scaling_is_not_active_in_kubes_words(self) -> None:
        self.deployment(1)
        self.pod("web-a")
        self.autoscaler()
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 1)
        error = (
            "failed to get cpu utilization: unable to get metrics for resource cpu: "
            "no metrics returned from resource metrics API"
        )
        self.assertEqual(
            self.condition("ScalingActive"),
            (
                "False",
                "FailedGetResourceMetric",
                f"the HPA was unable to compute the replica count: {error}",
            ),
        )
        self.assertEqual(
            self.condition("AbleToScale"),
            (
                "True",
                "SucceededGetScale",
                "the HPA controller was able to get the target's current scale",
            ),
        )
        self.assertEqual(
            self.events(),
            [
                ("Warning", "FailedGetResourceMetric", error),
                (
                    "Warning",
                    "FailedComputeMetricsReplicas",
                    "invalid metrics (1 invalid out of 1), first error is: failed to get cpu "
                    f"resource metric value: {error}",
                ),
            ],
        )
        status = self.status()
        self.assertEqual(status["currentReplicas"], 1)
        self.assertEqual(status["desiredReplicas"], 0)
        # The metric it could not get is an empty one, which autoscaling/v1 readers carry along.
        self.assertEqual(status["currentMetrics"], [{"type": ""}])
        v1 = self.server.resource("autoscaling", "horizontalpodautoscalers", "v1")
        annotations = self.server.run(self.store.get(v1, "default", "web"))["metadata"][
            "annotations"
        ]
        self.assertEqual(
            annotations["autoscaling.alpha.kubernetes.io/current-metrics"], '[{"type":""}]'
        )

    def test_a_container_without_a_request_cannot_be_measured_against_it(self) -> None:
        self.deployment(1)
        self.pod("web-a", cpu=None)
        self.metrics.set("default", "web-a", cpu="200m")
        self.autoscaler()
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(
            self.condition("ScalingActive")[2],
            "the HPA was unable to compute the replica count: failed to get cpu utilization: "
            "missing request for cpu in container c of Pod web-a",
        )

    def test_scale_down_waits_for_the_stabilization_window(self) -> None:
        self.deployment(4)
        for name in ("web-a", "web-b", "web-c", "web-d"):
            self.pod(name)
            self.metrics.set("default", name, cpu="50m")
        self.autoscaler()
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 4)
        for name in ("web-a", "web-b", "web-c", "web-d"):
            self.metrics.set("default", name, cpu="10m")
        self.clock.advance(SYNC_PERIOD)
        # 10 % of requests asks for 1 replica, but 4 was recommended within 300 s.
        self.assertEqual(self.replicas(), 4)
        self.assertEqual(
            self.condition("AbleToScale"),
            (
                "True",
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest "
                "recent recommendation",
            ),
        )
        self.clock.advance(300 - SYNC_PERIOD)
        self.assertEqual(self.replicas(), 4)
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 1)
        self.assertEqual(
            self.events()[-1],
            ("Normal", "SuccessfulRescale", "New size: 1; reason: All metrics below target"),
        )

    def test_without_a_behavior_a_scale_up_at_most_doubles(self) -> None:
        self.deployment(3)
        for name in ("web-a", "web-b", "web-c"):
            self.pod(name)
            self.metrics.set("default", name, cpu="500m")
        self.autoscaler(most=20)
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 6)
        self.assertEqual(
            self.condition("ScalingLimited"),
            (
                "True",
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            ),
        )

    def test_max_replicas_limit_the_scale_up(self) -> None:
        self.deployment(2)
        for name in ("web-a", "web-b"):
            self.pod(name)
            self.metrics.set("default", name, cpu="500m")
        self.autoscaler(most=3)
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 3)
        self.assertEqual(
            self.condition("ScalingLimited"),
            (
                "True",
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            ),
        )

    def test_replicas_above_the_maximum_are_brought_down_to_it(self) -> None:
        self.deployment(5)
        self.autoscaler(most=3)
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 3)
        self.assertEqual(
            self.events(),
            [
                (
                    "Normal",
                    "SuccessfulRescale",
                    "New size: 3; reason: Current number of replicas above Spec.MaxReplicas",
                )
            ],
        )

    def test_a_target_scaled_to_zero_disables_scaling(self) -> None:
        self.deployment(0)
        self.autoscaler()
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 0)
        self.assertEqual(
            self.condition("ScalingActive"),
            (
                "False",
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            ),
        )

    def test_behavior_policies_limit_each_period(self) -> None:
        self.deployment(1)
        self.pod("web-a")
        self.metrics.set("default", "web-a", cpu="500m")
        behavior = {
            "scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
        }
        self.autoscaler(behavior=behavior)
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 2)
        self.assertEqual(self.condition("ScalingLimited")[1], "ScaleUpLimit")
        # One pod per 60 s: not again until the first change is 60 s old.
        self.clock.advance(SYNC_PERIOD * 3)
        self.assertEqual(self.replicas(), 2)
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 3)

    def test_an_average_value_target_of_memory(self) -> None:
        self.deployment(1)
        self.pod("web-a")
        self.metrics.set("default", "web-a", cpu="10m", memory="300Mi")
        memory = {"type": "AverageValue", "averageValue": "100Mi"}
        self.autoscaler([{"type": "Resource", "resource": {"name": "memory", "target": memory}}])
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 3)
        self.assertEqual(
            self.status()["currentMetrics"],
            [
                {
                    "type": "Resource",
                    "resource": {"name": "memory", "current": {"averageValue": "314572800"}},
                }
            ],
        )
        self.assertEqual(
            self.events()[-1],
            ("Normal", "SuccessfulRescale", "New size: 3; reason: memory resource above target"),
        )

    def test_a_container_resource_metric_counts_that_container_alone(self) -> None:
        self.deployment(1)
        self.pod("web-a")
        self.metrics.set("default", "web-a", cpu="100m")
        self.metrics.set("default", "web-a", container="sidecar", cpu="900m")
        target = {"type": "Utilization", "averageUtilization": 50}
        source = {"name": "cpu", "container": "c", "target": target}
        self.autoscaler([{"type": "ContainerResource", "containerResource": source}])
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 2)
        current = {"averageUtilization": 100, "averageValue": "100m"}
        self.assertEqual(
            self.status()["currentMetrics"],
            [
                {
                    "type": "ContainerResource",
                    "containerResource": {"name": "cpu", "container": "c", "current": current},
                }
            ],
        )

    def test_two_autoscalers_of_the_same_pods_are_ambiguous(self) -> None:
        self.deployment(1)
        self.pod("web-a")
        self.metrics.set("default", "web-a", cpu="200m")
        self.autoscaler(most=1)
        ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
        spec = {"scaleTargetRef": ref, "maxReplicas": 10, "metrics": CPU_50}
        self.server.create(
            "autoscaling",
            "horizontalpodautoscalers",
            {"metadata": {"name": "other"}, "spec": spec},
            "default",
        )
        # The first to look sees only itself; once both know the pods, neither scales.
        self.clock.advance(SYNC_PERIOD)
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.replicas(), 1)
        self.assertEqual(
            self.condition("ScalingActive"),
            (
                "False",
                "AmbiguousSelector",
                "pods by selector app=web are controlled by multiple HPAs: "
                "[default/other default/web]",
            ),
        )

    def test_pods_metrics_are_unavailable_without_a_custom_metrics_api(self) -> None:
        self.deployment(1)
        self.pod("web-a")
        pods_metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": "requests"},
                "target": {"type": "AverageValue", "averageValue": "10"},
            },
        }
        self.autoscaler([pods_metric])
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(
            self.condition("ScalingActive"),
            (
                "False",
                "FailedGetPodsMetric",
                "the HPA was unable to compute the replica count: unable to get metric requests: "
                "unable to fetch metrics from custom metrics API: no custom metrics API "
                "(custom.metrics.k8s.io) registered",
            ),
        )

    def test_a_missing_target_cannot_be_scaled(self) -> None:
        self.autoscaler()
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(
            self.condition("AbleToScale"),
            (
                "False",
                "FailedGetScale",
                "the HPA controller was unable to get the target's current scale: "
                'deployments.apps "web" not found',
            ),
        )
        self.assertEqual(
            self.events(), [("Warning", "FailedGetScale", 'deployments.apps "web" not found')]
        )

    def test_a_deleted_autoscaler_is_forgotten(self) -> None:
        self.deployment(1)
        self.autoscaler()
        self.server.delete("autoscaling", "horizontalpodautoscalers", "web", "default")
        self.clock.advance(SYNC_PERIOD)
        self.assertEqual(self.clock.getDelayedCalls(), [])
