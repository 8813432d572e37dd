"""
LimitRanger and ResourceQuota admission, and the resourcequota controller,
on the in-memory server: defaults and bounds from LimitRanges, quota usage
counted and charged, and creates over a quota refused in kube's words.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver import quota
from k3stw.controllers.replicaset import ReplicaSetController
from k3stw.controllers.resourcequota import RESYNC, ResourceQuotaController
from k3stw.machinery.identity import User
from k3stw.machinery.objects import Object, find_condition
from tests.support.apiserver import MemoryAPI, MemoryServer
from tests.test_replicaset_controller import Cluster, replicaset

ADMIN = User("admin", ("system:masters",))


def _pod(name: str, *containers: dict[str, Any], **spec: Any) -> Object:
    listed = containers or ({"name": "c"},)
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"image": "i", **c} for c in listed], **spec},
    }


def _resources(requests: dict[str, str] | None = None, limits: dict[str, str] | None = None) -> Any:
    found: dict[str, Any] = {}
    if requests:
        found["requests"] = requests
    if limits:
        found["limits"] = limits
    return found


class LimitRangerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.server.start()

    def limit_range(self, *limits: dict[str, Any], name: str = "limits") -> None:
        self.server.create(
            "",
            "limitranges",
            {"metadata": {"name": name}, "spec": {"limits": list(limits)}},
            "default",
        )

    def create(self, pod: Object) -> Object:
        return self.server.create("", "pods", pod, "default")

    def refusal(self, pod: Object) -> tuple[int, str]:
        pods = self.server.resource("", "pods")
        error = self.server.fails(self.server.store.create(pods, "default", pod))
        return error.code, error.message

    def test_container_defaults_fill_what_a_container_lacks_and_are_announced(self) -> None:
        self.limit_range(
            {
                "type": "Container",
                "default": {"cpu": "500m", "memory": "256Mi"},
                "defaultRequest": {"cpu": "0.1", "memory": "128Mi"},
            }
        )
        pod = self.create(
            _pod(
                "web",
                {"name": "app", "resources": _resources(limits={"memory": "1Gi"})},
                {"name": "sidecar"},
            )
        )
        app, sidecar = pod["spec"]["containers"]
        # The stated limit stays, and (as kube's defaulting does) is the request too.
        self.assertEqual(
            app["resources"],
            {
                "limits": {"memory": "1Gi", "cpu": "500m"},
                "requests": {"memory": "1Gi", "cpu": "100m"},
            },
        )
        self.assertEqual(
            sidecar["resources"],
            {
                "limits": {"cpu": "500m", "memory": "256Mi"},
                "requests": {"cpu": "100m", "memory": "128Mi"},
            },
        )
        self.assertEqual(
            pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
            "LimitRanger plugin set: cpu request for container app; cpu limit for container app; "
            "cpu, memory request for container sidecar; cpu, memory limit for container sidecar",
        )
        self.assertEqual(pod["status"]["qosClass"], "Burstable")

    def test_max_alone_defaults_the_limit_and_the_request(self) -> None:
        self.limit_range({"type": "Container", "max": {"cpu": "1"}})
        pod = self.create(_pod("web"))
        self.assertEqual(
            pod["spec"]["containers"][0]["resources"],
            {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}},
        )

    def test_a_pod_without_a_limit_range_is_not_annotated(self) -> None:
        pod = self.create(_pod("web"))
        self.assertNotIn("annotations", pod["metadata"])
        self.assertEqual(pod["status"]["qosClass"], "BestEffort")

    def test_container_bounds_are_enforced_in_kubes_words(self) -> None:
        self.limit_range(
            {
                "type": "Container",
                "max": {"cpu": "1", "memory": "1Gi"},
                "min": {"memory": "64Mi"},
            }
        )
        code, message = self.refusal(
            _pod(
                "big",
                {
                    "name": "c",
                    "resources": _resources({"cpu": "2"}, {"cpu": "2", "memory": "32Mi"}),
                },
            )
        )
        self.assertEqual(code, 403)
        self.assertEqual(
            message,
            'pods "big" is forbidden: [minimum memory usage per Container is 64Mi, but request '
            "is 32Mi, maximum cpu usage per Container is 1, but limit is 2]",
        )
        self.assertFalse(self.server.exists("", "pods", "big", "default"))

    def test_one_violation_is_not_bracketed(self) -> None:
        self.limit_range({"type": "Container", "max": {"cpu": "1"}})
        _, message = self.refusal(
            _pod("big", {"name": "c", "resources": _resources(limits={"cpu": "1500m"})})
        )
        self.assertEqual(
            message,
            'pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 1500m',
        )

    def test_limit_to_request_ratio(self) -> None:
        self.limit_range({"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}})
        _, message = self.refusal(
            _pod("r", {"name": "c", "resources": _resources({"cpu": "100m"}, {"cpu": "1"})})
        )
        self.assertEqual(
            message,
            'pods "r" is forbidden: cpu max limit to request ratio per Container is 2, '
            "but provided ratio is 10.000000",
        )

    def test_pod_max_sums_the_containers(self) -> None:
        self.limit_range({"type": "Pod", "max": {"memory": "1Gi"}})
        half = {"resources": _resources(limits={"memory": "600Mi"})}
        _, message = self.refusal(_pod("p", {"name": "a", **half}, {"name": "b", **half}))
        self.assertEqual(
            message,
            'pods "p" is forbidden: maximum memory usage per Pod is 1Gi, but limit is 1200Mi',
        )
        self.create(_pod("one", {"name": "a", **half}))

    def test_a_claims_storage_request_is_bounded(self) -> None:
        self.limit_range(
            {"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "10Gi"}}
        )
        claims = self.server.resource("", "persistentvolumeclaims")

        def claim(name: str, storage: str) -> Object:
            spec = {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": storage}},
            }
            return {"metadata": {"name": name}, "spec": spec}

        error = self.server.fails(self.server.store.create(claims, "default", claim("big", "20Gi")))
        self.assertEqual(
            (error.code, error.message),
            (
                403,
                'persistentvolumeclaims "big" is forbidden: maximum storage usage per '
                "PersistentVolumeClaim is 10Gi, but request is 20Gi",
            ),
        )
        error = self.server.fails(
            self.server.store.create(claims, "default", claim("small", "500Mi"))
        )
        self.assertEqual(
            error.message,
            'persistentvolumeclaims "small" is forbidden: minimum storage usage per '
            "PersistentVolumeClaim is 1Gi, but request is 500Mi",
        )
        self.server.create("", "persistentvolumeclaims", claim("fits", "5Gi"), "default")


class QuotaControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.clock = self.server.clock
        self.server.start(
            ResourceQuotaController(self.server.informers, self.server.store, self.server.registry)
        )

    def quota(self, name: str = "q", **spec: Any) -> None:
        self.server.create(
            "", "resourcequotas", {"metadata": {"name": name}, "spec": spec}, "default"
        )
        self.clock.advance(0)

    def status(self, name: str = "q") -> dict[str, Any]:
        status: dict[str, Any] = self.server.get("", "resourcequotas", name, "default")["status"]
        return status

    def pod(self, name: str, *containers: dict[str, Any], **spec: Any) -> Object:
        pod = self.server.create("", "pods", _pod(name, *containers, **spec), "default")
        self.clock.advance(0)
        return pod

    def refusal(self, pod: Object) -> str:
        pods = self.server.resource("", "pods")
        return self.server.fails(self.server.store.create(pods, "default", pod)).message

    def finish(self, name: str) -> None:
        pod = self.server.get("", "pods", name, "default")
        pod["status"]["phase"] = "Succeeded"
        pods = self.server.resource("", "pods")
        self.server.run(self.server.store.update(pods, "default", name, pod, subresource="status"))
        self.clock.advance(0)

    def test_status_mirrors_hard_and_counts_what_the_namespace_holds(self) -> None:
        self.pod("a", {"name": "c", "resources": _resources({"cpu": "250m", "memory": "1Gi"})})
        self.server.create("", "configmaps", {"metadata": {"name": "x"}}, "default")
        hard = {
            "pods": "10",
            "requests.cpu": "2",
            "cpu": "2",
            "requests.memory": "4Gi",
            "limits.memory": "8Gi",
            "configmaps": "5",
            "count/pods": "10",
            "services": "3",
        }
        self.quota(hard=hard)
        status = self.status()
        self.assertEqual(status["hard"], hard)
        self.assertEqual(
            status["used"],
            {
                "pods": "1",
                "requests.cpu": "250m",
                "cpu": "250m",
                "requests.memory": "1Gi",
                "limits.memory": "0",
                # kube-root-ca.crt is published by another controller, not started here.
                "configmaps": "1",
                "count/pods": "1",
                "services": "0",
            },
        )

    def test_creates_are_charged_at_admission(self) -> None:
        self.quota(hard={"pods": "5", "requests.memory": "1Gi"})
        container = {"name": "c", "resources": _resources({"memory": "256Mi"})}
        self.pod("a", container)
        self.pod("b", container)
        self.assertEqual(self.status()["used"], {"pods": "2", "requests.memory": "512Mi"})

    def test_a_create_over_the_quota_is_refused_in_kubes_words(self) -> None:
        self.quota(hard={"requests.cpu": "2", "pods": "10"})
        self.pod("a", {"name": "c", "resources": _resources({"cpu": "1"})})
        message = self.refusal(_pod("b", {"name": "c", "resources": _resources({"cpu": "2"})}))
        self.assertEqual(
            message,
            'pods "b" is forbidden: exceeded quota: q, requested: requests.cpu=2, '
            "used: requests.cpu=1, limited: requests.cpu=2",
        )
        self.assertFalse(self.server.exists("", "pods", "b", "default"))
        self.assertEqual(self.status()["used"], {"requests.cpu": "1", "pods": "1"})

    def test_back_to_back_creates_cannot_both_take_the_last_of_a_quota(self) -> None:
        self.quota(hard={"pods": "1"})
        pods = self.server.resource("", "pods")
        store = self.server.store
        # Neither create waits for the controller, which never runs in between.
        self.server.run(store.create(pods, "default", _pod("a")))
        error = self.server.fails(store.create(pods, "default", _pod("b")))
        self.assertEqual(
            error.message,
            'pods "b" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, '
            "limited: pods=1",
        )

    def test_a_quota_on_limits_needs_every_container_to_state_them(self) -> None:
        self.quota(hard={"limits.cpu": "4", "limits.memory": "4Gi"})
        message = self.refusal(
            _pod(
                "p",
                {"name": "a", "resources": _resources(limits={"cpu": "1"})},
                {"name": "b"},
            )
        )
        self.assertEqual(
            message,
            'pods "p" is forbidden: failed quota: q: must specify limits.cpu for: b; '
            "limits.memory for: a,b",
        )

    def test_a_dry_run_is_admitted_but_not_charged(self) -> None:
        self.quota(hard={"pods": "1"})
        api = MemoryAPI(self.server, {"admin": ADMIN})
        path = "/api/v1/namespaces/default/pods?dryRun=All"
        code, _ = api.request(b"POST", path, _pod("a"))
        self.assertEqual(code, 201)
        self.assertEqual(self.status()["used"], {"pods": "0"})
        self.pod("b")
        code, refused = api.request(b"POST", path, _pod("c"))
        self.assertEqual(code, 403)
        self.assertEqual(refused["reason"], "Forbidden")
        self.assertIn('pods "c" is forbidden: exceeded quota: q', refused["message"])

    def test_finished_and_deleted_pods_give_their_quota_back(self) -> None:
        self.quota(hard={"pods": "2", "count/pods": "5"})
        self.pod("a")
        self.pod("b")
        self.finish("a")
        self.assertEqual(self.status()["used"], {"pods": "1", "count/pods": "2"})
        self.server.delete("", "pods", "b", "default")
        self.clock.advance(0)
        self.assertEqual(self.status()["used"], {"pods": "0", "count/pods": "1"})

    def test_scopes_select_the_pods_counted(self) -> None:
        self.quota("best-effort", hard={"pods": "5"}, scopes=["BestEffort"])
        self.quota("terminating", hard={"pods": "5"}, scopes=["Terminating"])
        self.quota(
            "high",
            hard={"pods": "5"},
            scopeSelector={
                "matchExpressions": [
                    {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}
                ]
            },
        )
        self.quota(
            "classless",
            hard={"pods": "5"},
            scopeSelector={
                "matchExpressions": [{"scopeName": "PriorityClass", "operator": "DoesNotExist"}]
            },
        )
        self.server.create(
            "scheduling.k8s.io", "priorityclasses", {"metadata": {"name": "high"}, "value": 1000}
        )
        self.pod("plain")
        self.pod("job", activeDeadlineSeconds=30)
        self.pod(
            "burst",
            {"name": "c", "resources": _resources({"cpu": "1"})},
            priorityClassName="high",
        )
        self.clock.advance(RESYNC)
        self.assertEqual(self.status("best-effort")["used"], {"pods": "2"})
        self.assertEqual(self.status("terminating")["used"], {"pods": "1"})
        self.assertEqual(self.status("high")["used"], {"pods": "1"})
        self.assertEqual(self.status("classless")["used"], {"pods": "2"})

    def test_services_count_their_load_balancers_and_node_ports(self) -> None:
        self.quota(hard={"services": "5", "services.loadbalancers": "1", "services.nodeports": "3"})
        ports = [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]
        self.server.create(
            "",
            "services",
            {"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": ports}},
            "default",
        )
        self.clock.advance(0)
        self.assertEqual(
            self.status()["used"],
            {"services": "1", "services.loadbalancers": "1", "services.nodeports": "2"},
        )
        services = self.server.resource("", "services")
        error = self.server.fails(
            self.server.store.create(
                services,
                "default",
                {"metadata": {"name": "np"}, "spec": {"type": "NodePort", "ports": ports}},
            )
        )
        self.assertEqual(
            error.message,
            'services "np" is forbidden: exceeded quota: q, requested: services.nodeports=2, '
            "used: services.nodeports=2, limited: services.nodeports=3",
        )

    def test_claims_count_their_storage_overall_and_by_class(self) -> None:
        fast = "fast.storageclass.storage.k8s.io/"
        hard = {"requests.storage": "10Gi", f"{fast}requests.storage": "4Gi"}
        self.quota(hard={**hard, "persistentvolumeclaims": "5"})
        claims = self.server.resource("", "persistentvolumeclaims")

        def claim(name: str, storage: str, **spec: Any) -> Object:
            requests = {"requests": {"storage": storage}}
            return {
                "metadata": {"name": name},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": requests, **spec},
            }

        self.server.create("", "persistentvolumeclaims", claim("a", "3Gi"), "default")
        self.server.create(
            "", "persistentvolumeclaims", claim("b", "2Gi", storageClassName="fast"), "default"
        )
        self.assertEqual(
            self.status()["used"],
            {
                "requests.storage": "5Gi",
                f"{fast}requests.storage": "2Gi",
                "persistentvolumeclaims": "2",
            },
        )
        error = self.server.fails(
            self.server.store.create(claims, "default", claim("c", "3Gi", storageClassName="fast"))
        )
        self.assertEqual(
            error.message,
            'persistentvolumeclaims "c" is forbidden: exceeded quota: q, requested: '
            f"{fast}requests.storage=3Gi, used: {fast}requests.storage=2Gi, "
            f"limited: {fast}requests.storage=4Gi",
        )
        self.clock.advance(RESYNC)
        self.assertEqual(self.status()["used"]["requests.storage"], "5Gi")

    def test_a_service_updated_into_a_load_balancer_is_charged(self) -> None:
        self.quota(hard={"services.loadbalancers": "1"})
        ports = [{"port": 80}]
        for name in ("a", "b"):
            self.server.create(
                "", "services", {"metadata": {"name": name}, "spec": {"ports": ports}}, "default"
            )
        services = self.server.resource("", "services")
        store = self.server.store

        def balanced(name: str) -> Object:
            service = self.server.get("", "services", name, "default")
            service["spec"]["type"] = "LoadBalancer"
            return service

        self.server.run(store.update(services, "default", "a", balanced("a")))
        self.assertEqual(self.status()["used"], {"services.loadbalancers": "1"})
        error = self.server.fails(store.update(services, "default", "b", balanced("b")))
        self.assertEqual(
            error.message,
            'services "b" is forbidden: exceeded quota: q, requested: services.loadbalancers=1, '
            "used: services.loadbalancers=1, limited: services.loadbalancers=1",
        )
        self.assertEqual(
            self.server.get("", "services", "b", "default")["spec"]["type"], "ClusterIP"
        )

    def test_object_counts_of_any_resource(self) -> None:
        self.quota(hard={"count/deployments.apps": "1"})
        deployment = {
            "metadata": {"name": "d"},
            "spec": {
                "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": _pod("x")["spec"]},
            },
        }
        self.server.create("apps", "deployments", deployment, "default")
        self.assertEqual(self.status()["used"], {"count/deployments.apps": "1"})
        deployments = self.server.resource("apps", "deployments")
        second = {**deployment, "metadata": {"name": "e"}}
        error = self.server.fails(self.server.store.create(deployments, "default", second))
        self.assertEqual(
            error.message,
            'deployments.apps "e" is forbidden: exceeded quota: q, requested: '
            "count/deployments.apps=1, used: count/deployments.apps=1, "
            "limited: count/deployments.apps=1",
        )
        self.server.delete("apps", "deployments", "d", "default")
        self.clock.advance(0)
        self.assertEqual(self.status()["used"], {"count/deployments.apps": "0"})


class ControllerCreatesTests(SynchronousTestCase):
    """A controller's creates are admitted as a client's are."""

    def test_a_replicaset_stops_at_the_quota_and_says_why(self) -> None:
        cluster = Cluster(self)
        server = cluster.server
        server.start(
            ResourceQuotaController(server.informers, server.store, server.registry),
            ReplicaSetController(server.informers, server.store, host="server-1"),
        )
        server.create(
            "",
            "resourcequotas",
            {"metadata": {"name": "q"}, "spec": {"hard": {"pods": "2"}}},
            "default",
        )
        cluster.settle()
        server.create("apps", "replicasets", replicaset(replicas=3), "default")
        cluster.settle()
        self.assertEqual(len(cluster.pods()), 2)
        failures = cluster.events("FailedCreate")
        self.assertTrue(failures)
        for failed in failures:
            self.assertRegex(
                failed,
                r'^Error creating: pods "web-[a-z0-9]{5}" is forbidden: exceeded quota: q, '
                r"requested: pods=1, used: pods=2, limited: pods=2$",
            )
        condition = find_condition(
            server.get("apps", "replicasets", "web", "default"), "ReplicaFailure"
        )
        assert condition is not None
        self.assertEqual(condition["reason"], "FailedCreate")


class UncountedQuotaTests(SynchronousTestCase):
    """A quota the controller has not counted yet (it is not running here)."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.server.start()
        self.quotas = self.server.resource("", "resourcequotas")
        held = {"metadata": {"name": "fresh"}, "spec": {"hard": {"pods": "1"}}}
        self.server.create("", "resourcequotas", held, "default")

    def create(self, name: str) -> Object:
        return self.server.create("", "pods", _pod(name), "default")

    def test_a_quota_without_status_limits_nothing_yet(self) -> None:
        self.create("a")
        self.create("b")

    def test_a_quota_with_hard_but_no_usage_refuses(self) -> None:
        held = self.server.get("", "resourcequotas", "fresh", "default")
        held["status"] = {"hard": {"pods": "1"}}
        store = self.server.store
        self.server.run(store.update(self.quotas, "default", "fresh", held, subresource="status"))
        pods = self.server.resource("", "pods")
        error = self.server.fails(store.create(pods, "default", _pod("p")))
        self.assertEqual(
            (error.code, error.message),
            (403, 'pods "p" is forbidden: status unknown for quota: fresh, resources: pods'),
        )


class UsageTests(SynchronousTestCase):
    def test_init_containers_count_when_they_need_more_than_the_containers(self) -> None:
        spec = {
            "containers": [{"resources": {"requests": {"cpu": "100m"}}}] * 2,
            "initContainers": [{"resources": {"requests": {"cpu": "500m"}}}],
        }
        self.assertEqual(quota.printed(quota.pod_amounts(spec, "requests")), {"cpu": "500m"})

    def test_terminal_pods_count_only_as_objects(self) -> None:
        pod = {**_pod("p"), "status": {"phase": "Failed"}}
        self.assertEqual(quota.printed(quota.usage("", "pods", pod, 0.0)), {"count/pods": "1"})
