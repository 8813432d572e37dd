"""The pod workers on an in-memory runtime and API, on a clock: every transition of a pod."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.memory import PAUSE_IMAGE, MemoryRuntime, Program
from k3stw.kubelet.pods.cgroups import PodCgroups
from k3stw.kubelet.pods.probes import USER_AGENT
from k3stw.kubelet.pods.spec import DNSSettings
from k3stw.kubelet.pods.worker import RESYNC, VOLUME_RESYNC, PodFiles, PodSettings, PodWorkers
from k3stw.kubelet.registries import parse_registries
from k3stw.kubelet.volumes import VolumeManager
from k3stw.machinery.objects import Object
from k3stw.machinery.times import rfc3339
from tests.support.fakes import FakeKubeClient, FakeMounter

START = 1_800_000_000.0
BUSYBOX = "docker.io/library/busybox:1.36"
PODS = "/api/v1/namespaces/default/pods"
EVENTS = "/api/v1/namespaces/default/events"


def make_pod(name: str = "web", **spec: Any) -> Object:
    containers = spec.pop("containers", None) or [
        {"name": "main", "image": "busybox:1.36", "command": ["httpd", "-f"]}
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"nodeName": "node-1", "restartPolicy": "Always", "containers": containers, **spec},
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    }


class FakeProber:
    """Answers httpGet probes with C{code}, tcpSocket probes on C{open_ports}; records them."""

    def __init__(self) -> None:
        self.code = 200
        self.open_ports: set[int] = set()
        self.gets: list[tuple[str, dict[str, str]]] = []
        self.checks: list[tuple[str, int, str]] = []
        self.serving = "SERVING"

    def http_get(
        self, url: str, headers: Mapping[str, str], timeout: float
    ) -> Deferred[tuple[int, bytes]]:
        self.gets.append((url, dict(headers)))
        return succeed((self.code, b""))

    def tcp_connect(self, host: str, port: int, timeout: float) -> Deferred[None]:
        if port in self.open_ports:
            return succeed(None)
        return fail(ConnectionRefusedError(f"dial tcp {host}:{port}: connect: connection refused"))

    def grpc_check(self, host: str, port: int, service: str, timeout: float) -> Deferred[str]:
        self.checks.append((host, port, service))
        return succeed(self.serving)


class PodWorkerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.client = FakeKubeClient(self.clock)
        self.runtime = MemoryRuntime(self.clock, images=(PAUSE_IMAGE, BUSYBOX))
        self.settings = PodSettings(
            "node-1", ("127.0.0.11",), DNSSettings(("10.43.0.10",), "cluster.local")
        )
        self.prober = FakeProber()
        self.execs: list[tuple[str, Sequence[str]]] = []
        self.exec_answer = (0, b"", b"")

        def exec_handler(container_id: str, cmd: Sequence[str]) -> tuple[int, bytes, bytes]:
            self.execs.append((container_id, cmd))
            return self.exec_answer

        self.runtime.exec_handler = exec_handler
        self.workers = self.start_workers()

    def start_workers(self, cgroups: PodCgroups | None = None) -> PodWorkers:
        workers = PodWorkers(
            self.clock,
            self.client,
            self.runtime,
            self.settings,
            prober=self.prober,
            cgroups=cgroups,
        )
        workers.startService()
        self.addCleanup(self.stop, workers)
        return workers

    def stop(self, workers: PodWorkers) -> None:
        if workers.running:
            workers.stopService()
            for container_id in self.runtime.running():
                self.runtime.exit(container_id, 137)
            self.assertEqual(self.clock.getDelayedCalls(), [])

    def advance(self, seconds: float) -> None:
        self.clock.pump([0.5] * round(seconds * 2))

    def create(self, pod: Object) -> Object:
        return self.client.put_object(f"{PODS}/{pod['metadata']['name']}", pod)

    def pod(self, name: str = "web") -> Object:
        return self.client.objects[f"{PODS}/{name}"]

    def status(self, name: str = "web", container: str = "main") -> Object:
        statuses = self.pod(name)["status"].get("containerStatuses") or []
        inits = self.pod(name)["status"].get("initContainerStatuses") or []
        found: Object = next(s for s in [*statuses, *inits] if s["name"] == container)
        return found

    def condition(self, kind: str, name: str = "web") -> Object:
        found: Object = next(c for c in self.pod(name)["status"]["conditions"] if c["type"] == kind)
        return found

    def events(self) -> list[tuple[str, str, str]]:
        return [
            (e["type"], e["reason"], e["message"])
            for path, e in sorted(
                self.client.objects.items(),
                key=lambda i: i[1]["firstTimestamp"] if i[0].startswith(EVENTS) else "",
            )
            if path.startswith(EVENTS + "/")
        ]

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events()]

    def sandbox(self) -> api.PodSandboxConfig:
        (sandbox,) = [s for s in self.runtime.sandboxes.values() if s.ready]
        return sandbox.config

    def sandbox_of(self, pod: str) -> api.PodSandboxConfig:
        (sandbox,) = [s for s in self.runtime.sandboxes.values() if s.config.metadata.name == pod]
        return sandbox.config

    def containers(self, name: str = "main") -> list[Any]:
        return sorted(
            (c for c in self.runtime.containers.values() if c.config.metadata.name == name),
            key=lambda c: c.created_at,
        )

    # A bound pod runs

    def test_runs_a_bound_pod_in_a_sandbox(self) -> None:
        self.create(make_pod(hostname="front", subdomain="web"))
        self.advance(1)
        config = self.sandbox()
        uid = self.pod()["metadata"]["uid"]
        self.assertEqual(
            (config.metadata.name, config.metadata.namespace, config.metadata.uid),
            ("web", "default", uid),
        )
        self.assertEqual(config.metadata.attempt, 0)
        self.assertEqual(config.hostname, "front")
        self.assertEqual(list(config.dns_config.servers), ["10.43.0.10"])
        self.assertEqual(
            list(config.dns_config.searches),
            ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
        )
        self.assertEqual(list(config.dns_config.options), ["ndots:5"])
        self.assertEqual(config.log_directory, f"/var/log/pods/default_web_{uid}")
        self.assertEqual(config.linux.cgroup_parent, f"/kubepods/besteffort/pod{uid}")
        self.assertEqual(config.labels["io.kubernetes.pod.uid"], uid)
        self.assertEqual(config.labels["app"], "web")
        (container,) = self.containers()
        self.assertEqual(list(container.config.command), ["httpd", "-f"])
        self.assertEqual(container.config.log_path, "main/0.log")
        self.assertEqual(container.config.labels["io.kubernetes.container.name"], "main")
        self.assertEqual(container.config.annotations["io.kubernetes.container.restartCount"], "0")
        self.assertEqual(container.state, api.CONTAINER_RUNNING)

    def test_pods_of_other_nodes_are_not_run(self) -> None:
        elsewhere = make_pod()
        elsewhere["spec"]["nodeName"] = "node-2"
        self.create(elsewhere)
        self.advance(1)
        self.assertEqual(self.runtime.sandboxes, {})
        self.assertNotIn("conditions", self.pod()["status"])

    def test_the_pod_cache_keeps_no_managed_fields(self) -> None:
        pod = make_pod()
        pod["metadata"]["managedFields"] = [
            {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}}
        ]
        self.create(pod)
        self.advance(1)
        self.assertIn("managedFields", self.pod()["metadata"])
        (cached,) = self.workers.informer.cache.list()
        self.assertNotIn("managedFields", cached["metadata"])
        self.assertEqual(cached["spec"], self.pod()["spec"])
        (worker,) = self.workers.workers.values()
        assert worker.pod is not None
        self.assertNotIn("managedFields", worker.pod["metadata"])
        self.assertEqual(len(self.containers()), 1)

    def test_a_running_pod_reports_running_and_ready(self) -> None:
        self.create(make_pod())
        self.advance(1)
        status = self.pod()["status"]
        self.assertEqual(status["phase"], "Running")
        self.assertEqual(status["podIP"], "10.42.0.2")
        self.assertEqual(status["podIPs"], [{"ip": "10.42.0.2"}])
        self.assertEqual(status["hostIP"], "127.0.0.11")
        self.assertEqual(status["startTime"], rfc3339(START))
        self.assertEqual(
            [(c["type"], c["status"]) for c in status["conditions"]],
            [
                ("PodReadyToStartContainers", "True"),
                ("Initialized", "True"),
                ("Ready", "True"),
                ("ContainersReady", "True"),
                ("PodScheduled", "True"),
            ],
        )
        main = self.status()
        self.assertEqual(set(main["state"]), {"running"})
        self.assertTrue(main["ready"])
        self.assertTrue(main["started"])
        self.assertEqual(main["restartCount"], 0)
        self.assertEqual(main["image"], BUSYBOX)
        self.assertTrue(main["imageID"].startswith("docker.io/library/busybox@sha256:"))
        self.assertEqual(main["containerID"], f"containerd://{self.containers()[0].id}")
        self.assertEqual(
            self.events(),
            [
                ("Normal", "Pulled", 'Container image "busybox:1.36" already present on machine'),
                ("Normal", "Created", "Created container main"),
                ("Normal", "Started", "Started container main"),
            ],
        )

    def test_status_is_written_only_when_it_changed(self) -> None:
        self.create(make_pod())
        self.advance(1)
        writes = self.client.count("PATCH", f"{PODS}/web/status")
        self.advance(10)
        self.assertEqual(self.client.count("PATCH", f"{PODS}/web/status"), writes)

    def test_environment_from_the_downward_api_config_maps_and_secrets(self) -> None:
        self.client.put_object(
            "/api/v1/namespaces/default/configmaps/settings",
            {"metadata": {"name": "settings"}, "data": {"mode": "fast", "level": "3"}},
        )
        self.client.put_object(
            "/api/v1/namespaces/default/secrets/creds",
            {"metadata": {"name": "creds"}, "data": {"password": base64.b64encode(b"s3").decode()}},
        )
        container = {
            "name": "main",
            "image": "busybox:1.36",
            "command": ["echo", "$(GREETING)"],
            "workingDir": "/srv",
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            "env": [
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {
                    "name": "PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
                },
                {
                    "name": "MEMORY",
                    "valueFrom": {
                        "resourceFieldRef": {
                            "containerName": "main",
                            "resource": "limits.memory",
                            "divisor": "1Mi",
                        }
                    },
                },
                {"name": "GREETING", "value": "hi $(NAME) in $(CFG_mode)"},
            ],
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
            "securityContext": {
                "runAsUser": 1000,
                "privileged": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
            },
        }
        pod_context = {"fsGroup": 2000, "supplementalGroups": [3000]}
        self.create(make_pod(containers=[container], securityContext=pod_context))
        self.advance(1)
        (created,) = self.containers()
        env = {kv.key: kv.value for kv in created.config.envs}
        self.assertEqual(env["CFG_mode"], "fast")
        self.assertEqual(env["NAME"], "web")
        self.assertEqual(env["NODE"], "node-1")
        self.assertEqual(env["APP"], "web")
        self.assertEqual(env["HOST_IP"], "127.0.0.11")
        self.assertEqual(env["PASSWORD"], "s3")
        self.assertEqual(env["MEMORY"], "64")
        self.assertEqual(env["GREETING"], "hi web in fast")
        self.assertEqual(list(created.config.command), ["echo", "hi web in fast"])
        self.assertEqual(created.config.working_dir, "/srv")
        resources = created.config.linux.resources
        self.assertEqual(
            (resources.cpu_shares, resources.cpu_quota, resources.cpu_period),
            (512, 50_000, 100_000),
        )
        self.assertEqual(resources.memory_limit_in_bytes, 64 * 1024 * 1024)
        security = created.config.linux.security_context
        self.assertEqual(security.run_as_user.value, 1000)
        self.assertTrue(security.readonly_rootfs)
        self.assertEqual(list(security.capabilities.add_capabilities), ["NET_ADMIN"])
        # The fsGroup (the volumes' group) first, then the pod's supplemental groups.
        self.assertEqual(list(security.supplemental_groups), [2000, 3000])

    def test_a_missing_config_map_is_a_create_container_config_error(self) -> None:
        container = {
            "name": "main",
            "image": "busybox:1.36",
            "env": [
                {
                    "name": "MODE",
                    "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}},
                }
            ],
        }
        self.create(make_pod(containers=[container]))
        self.advance(1)
        waiting = self.status()["state"]["waiting"]
        self.assertEqual(
            waiting,
            {"reason": "CreateContainerConfigError", "message": 'configmap "settings" not found'},
        )
        self.assertEqual(self.pod()["status"]["phase"], "Pending")
        self.assertIn(("Warning", "Failed", 'Error: configmap "settings" not found'), self.events())
        self.client.put_object(
            "/api/v1/namespaces/default/configmaps/settings",
            {"metadata": {"name": "settings"}, "data": {"other": "x"}},
        )
        self.advance(1)
        self.assertEqual(
            self.status()["state"]["waiting"]["message"],
            "couldn't find key mode in ConfigMap default/settings",
        )
        self.client.put_object(
            "/api/v1/namespaces/default/configmaps/settings",
            {"metadata": {"name": "settings"}, "data": {"mode": "x"}},
        )
        self.advance(1)
        self.assertEqual(self.pod()["status"]["phase"], "Running")

    # Images

    def test_a_failing_pull_backs_off_then_succeeds(self) -> None:
        self.create(make_pod(containers=[{"name": "main", "image": "nginx:1.27"}]))
        self.advance(0.5)
        self.assertEqual(self.status()["state"]["waiting"]["reason"], "ErrImagePull")
        self.assertEqual(self.reasons()[:3], ["Pulling", "Failed", "Failed"])
        self.advance(1)
        self.assertEqual(
            self.status()["state"]["waiting"],
            {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nginx:1.27"'},
        )
        self.assertIn(("Normal", "BackOff", 'Back-off pulling image "nginx:1.27"'), self.events())
        pulls = self.runtime.calls.count(("PullImage", "nginx:1.27"))
        self.advance(8)
        self.assertEqual(self.runtime.calls.count(("PullImage", "nginx:1.27")), pulls)
        self.runtime.registry["docker.io/library/nginx:1.27"] = 5000
        self.advance(2)
        self.assertEqual(self.runtime.calls.count(("PullImage", "nginx:1.27")), pulls + 1)
        self.assertEqual(self.pod()["status"]["phase"], "Running")
        self.assertIn("Successfully pulled image", self.events()[-3][2])

    def test_pulls_carry_the_credentials_of_the_images_registry(self) -> None:
        registries = parse_registries(
            'configs:\n  "registry.example:5000":\n    auth: {username: u, password: p}\n'
        )
        self.workers.stopService()
        self.workers = PodWorkers(
            self.clock, self.client, self.runtime, self.settings, pull_auth=registries.pull_auth
        )
        self.workers.startService()
        self.runtime.registry["registry.example:5000/app:1"] = 5000
        self.runtime.registry["docker.io/library/nginx:1.27"] = 5000
        containers = [
            {"name": "main", "image": "registry.example:5000/app:1"},
            {"name": "side", "image": "nginx:1.27"},
        ]
        self.create(make_pod(containers=containers))
        self.advance(1)
        self.assertEqual(
            self.runtime.pull_auths,
            {
                "registry.example:5000/app:1": api.AuthConfig(username="u", password="p"),
                "docker.io/library/nginx:1.27": None,
            },
        )

    def test_never_pull_policy_without_the_image(self) -> None:
        self.create(
            make_pod(containers=[{"name": "main", "image": "nginx:1", "imagePullPolicy": "Never"}])
        )
        self.advance(1)
        self.assertEqual(
            self.status()["state"]["waiting"],
            {
                "reason": "ErrImageNeverPull",
                "message": 'Container image "nginx:1" is not present with pull policy of Never',
            },
        )

    # Init containers

    def test_init_containers_run_in_order_before_the_containers(self) -> None:
        self.runtime.programs["first"] = Program(runs_for=2, exit_code=0)
        self.runtime.programs["second"] = Program(runs_for=2, exit_code=0)
        inits = [
            {"name": "first", "image": "busybox:1.36"},
            {"name": "second", "image": "busybox:1.36"},
        ]
        self.create(make_pod(initContainers=inits))
        self.advance(0.5)
        self.assertEqual(len(self.containers("first")), 1)
        self.assertEqual(self.containers("second"), [])
        self.assertEqual(
            self.status(container="main")["state"]["waiting"]["reason"], "PodInitializing"
        )
        self.assertEqual(
            self.status(container="second")["state"]["waiting"]["reason"], "PodInitializing"
        )
        initialized = self.condition("Initialized")
        self.assertEqual(
            (initialized["status"], initialized["reason"], initialized["message"]),
            (
                "False",
                "ContainersNotInitialized",
                "containers with incomplete status: [first second]",
            ),
        )
        self.advance(2.5)
        self.assertEqual(len(self.containers("second")), 1)
        self.assertEqual(self.containers("main"), [])
        self.advance(2.5)
        self.assertEqual(len(self.containers("main")), 1)
        self.assertEqual(self.pod()["status"]["phase"], "Running")
        first = self.status(container="first")
        self.assertEqual(first["state"]["terminated"]["reason"], "Completed")
        self.assertTrue(first["ready"])
        self.assertEqual(self.condition("Initialized")["status"], "True")

    def test_a_failed_init_container_fails_a_never_pod(self) -> None:
        self.runtime.programs["setup"] = Program(runs_for=1, exit_code=3)
        self.create(
            make_pod(
                restartPolicy="Never", initContainers=[{"name": "setup", "image": "busybox:1.36"}]
            )
        )
        self.advance(3)
        self.assertEqual(self.pod()["status"]["phase"], "Failed")
        self.assertEqual(self.containers("main"), [])
        self.assertEqual(self.status(container="setup")["state"]["terminated"]["exitCode"], 3)
        self.assertEqual(self.condition("PodReadyToStartContainers")["status"], "False")

    # Sidecars: init containers with restartPolicy Always

    def sidecar_pod(self, *sidecars: Object, **spec: Any) -> Object:
        inits = [{"image": "busybox:1.36", "restartPolicy": "Always", **c} for c in sidecars]
        inits += spec.pop("initContainers", [])
        return make_pod(initContainers=inits, **spec)

    def test_a_sidecar_starts_before_the_next_init_container_and_keeps_running(self) -> None:
        self.runtime.programs["setup"] = Program(runs_for=2, exit_code=0)
        setup = {"name": "setup", "image": "busybox:1.36"}
        self.create(self.sidecar_pod({"name": "proxy"}, initContainers=[setup]))
        self.advance(0.5)
        self.assertEqual(len(self.containers("proxy")), 1)
        self.assertEqual(self.containers("setup"), [])
        initialized = self.condition("Initialized")
        self.assertEqual(
            (initialized["status"], initialized["message"]),
            ("False", "containers with incomplete status: [setup]"),
        )
        self.advance(1)
        self.assertEqual(len(self.containers("setup")), 1)
        self.assertEqual(self.containers("main"), [])
        self.assertEqual(self.pod()["status"]["phase"], "Pending")
        self.advance(3)
        self.assertEqual(len(self.containers("main")), 1)
        proxy = self.status(container="proxy")
        self.assertEqual((proxy["started"], proxy["ready"]), (True, True))
        self.assertIn("running", proxy["state"])
        self.assertEqual(self.pod()["status"]["phase"], "Running")
        self.assertEqual(self.condition("Initialized")["status"], "True")
        self.assertEqual(self.condition("Ready")["status"], "True")
        self.assertEqual(len(self.runtime.running()), 2)
        self.assertIn(
            ("Normal", "Started", "Started container proxy"),
            self.events(),
        )

    def test_a_sidecars_startup_probe_holds_the_next_init_container(self) -> None:
        startup = {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30}
        self.create(self.sidecar_pod({"name": "proxy", "startupProbe": startup}))
        self.advance(3)
        self.assertEqual(self.containers("main"), [])
        proxy = self.status(container="proxy")
        self.assertEqual((proxy["started"], proxy["ready"]), (False, False))
        self.assertEqual(
            self.condition("Initialized")["message"], "containers with incomplete status: [proxy]"
        )
        self.assertEqual(self.pod()["status"]["phase"], "Pending")
        self.prober.open_ports.add(8080)
        self.advance(3)
        self.assertEqual(len(self.containers("main")), 1)
        self.assertEqual(self.condition("Initialized")["status"], "True")

    def test_an_exited_sidecar_is_restarted_whatever_the_pods_restart_policy(self) -> None:
        self.create(self.sidecar_pod({"name": "proxy"}, restartPolicy="Never"))
        self.advance(3)
        (proxy,) = self.containers("proxy")
        self.runtime.exit(proxy.id, 1)
        self.advance(2)
        status = self.status(container="proxy")
        self.assertEqual(status["restartCount"], 1)
        self.assertEqual(status["lastState"]["terminated"]["exitCode"], 1)
        self.assertIn("running", status["state"])
        # The regular container ran: a restarting sidecar does not make the pod Pending again.
        self.assertEqual(self.pod()["status"]["phase"], "Running")
        self.assertEqual(len(self.containers("main")), 1)

    def test_a_sidecars_readiness_counts_toward_the_pods(self) -> None:
        self.prober.code = 503
        readiness = {"httpGet": {"path": "/ready", "port": 9000}, "periodSeconds": 1}
        self.create(self.sidecar_pod({"name": "proxy", "readinessProbe": readiness}))
        self.advance(3)
        self.assertEqual(len(self.containers("main")), 1)
        ready = self.condition("Ready")
        self.assertEqual(
            (ready["status"], ready["message"]),
            ("False", "containers with unready status: [proxy]"),
        )
        self.assertTrue(self.status(container="proxy")["started"])
        self.prober.code = 200
        self.advance(2)
        self.assertEqual(self.condition("Ready")["status"], "True")
        self.assertTrue(self.status(container="proxy")["ready"])

    def finish_with_a_sidecar(self, policy: str, exit_code: int) -> str:
        """A pod whose container runs 3 s beside a sidecar that never exits: its phase."""
        self.runtime.programs["main"] = Program(runs_for=3, exit_code=exit_code)
        self.create(self.sidecar_pod({"name": "proxy"}, restartPolicy=policy))
        self.advance(8)
        return str(self.pod()["status"]["phase"])

    def test_a_never_pod_whose_containers_completed_succeeds_with_its_sidecars_stopped(
        self,
    ) -> None:
        self.assertEqual(self.finish_with_a_sidecar("Never", 0), "Succeeded")
        self.assertEqual(self.runtime.running(), [])
        self.assertIn("terminated", self.status(container="proxy")["state"])
        self.assertIn(("Normal", "Killing", "Stopping container proxy"), self.events())
        self.assertEqual(len(self.containers("proxy")), 1)

    def test_a_never_pod_whose_container_failed_is_failed_with_its_sidecars_stopped(
        self,
    ) -> None:
        self.assertEqual(self.finish_with_a_sidecar("Never", 2), "Failed")
        self.assertEqual(self.runtime.running(), [])

    def test_an_on_failure_pod_keeps_its_sidecars_while_its_containers_restart(self) -> None:
        self.assertEqual(self.finish_with_a_sidecar("OnFailure", 1), "Running")
        self.assertIn("running", self.status(container="proxy")["state"])
        self.assertGreaterEqual(self.status()["restartCount"], 1)

    def test_sidecars_stop_after_the_regular_containers_the_last_started_first(self) -> None:
        self.runtime.programs["main"] = Program(term_exit_code=None)
        pod = self.create(
            self.sidecar_pod({"name": "first"}, {"name": "second"}, terminationGracePeriodSeconds=5)
        )
        self.advance(4)
        self.assertEqual(len(self.runtime.running()), 3)
        names = {c.id: c.config.metadata.name for c in self.runtime.containers.values()}
        calls = len(self.runtime.calls)
        pod["metadata"]["deletionTimestamp"] = rfc3339(START + 30)
        pod["metadata"]["deletionGracePeriodSeconds"] = 5
        self.client.put_object(f"{PODS}/web", pod)
        self.advance(1)
        stops = [names[c] for m, c in self.runtime.calls[calls:] if m == "StopContainer"]
        # main ignores SIGTERM: the sidecars wait for it to be killed.
        self.assertEqual(stops, ["main"])
        self.assertEqual(len(self.runtime.running()), 3)
        self.advance(5)
        stops = [names[c] for m, c in self.runtime.calls[calls:] if m == "StopContainer"]
        self.assertEqual(stops, ["main", "second", "first"])
        self.assertNotIn(f"{PODS}/web", self.client.objects)

    # Restarts

    def test_a_crashing_container_restarts_with_back_off(self) -> None:
        self.runtime.programs["main"] = Program(runs_for=1, exit_code=1)
        pod = self.create(make_pod())
        uid = pod["metadata"]["uid"]
        self.advance(2.5)
        # The first exit is restarted at once.
        self.assertEqual(len(self.containers()), 2)
        self.assertEqual(self.containers()[1].config.log_path, "main/1.log")
        self.advance(1.5)
        main = self.status()
        self.assertEqual(main["restartCount"], 1)
        self.assertEqual(
            main["state"]["waiting"],
            {
                "reason": "CrashLoopBackOff",
                "message": f"back-off 10s restarting failed container=main pod=web_default({uid})",
            },
        )
        self.assertEqual(main["lastState"]["terminated"]["reason"], "Error")
        self.assertEqual(main["lastState"]["terminated"]["exitCode"], 1)
        self.assertIn(
            (
                "Warning",
                "BackOff",
                f"Back-off restarting failed container main in pod web_default({uid})",
            ),
            self.events(),
        )
        self.assertEqual(self.pod()["status"]["phase"], "Running")
        self.assertEqual(self.condition("Ready")["reason"], "ContainersNotReady")
        self.advance(9)
        self.assertEqual(self.status()["restartCount"], 2)
        # Old instances are removed; the last exited one stays for lastState.
        self.assertEqual(len(self.containers()), 2)
        self.advance(2)
        self.assertIn("back-off 20s", self.status()["state"]["waiting"]["message"])

    def test_the_back_off_is_forgotten_after_ten_quiet_minutes(self) -> None:
        self.runtime.programs["main"] = Program(runs_for=1, exit_code=1)
        self.create(make_pod())
        self.advance(14)
        self.assertEqual(self.status()["restartCount"], 2)
        self.runtime.programs["main"] = Program(runs_for=700, exit_code=1)
        self.advance(20)
        self.assertEqual(self.status()["restartCount"], 3)
        self.advance(702)
        # Ran for more than 10 minutes: restarted at once, without back-off.
        self.assertEqual(self.status()["restartCount"], 4)

    def test_on_failure_pod_that_succeeds_is_succeeded(self) -> None:
        self.runtime.programs["main"] = Program(runs_for=1, exit_code=0)
        self.create(make_pod(restartPolicy="OnFailure"))
        self.advance(3)
        status = self.pod()["status"]
        self.assertEqual(status["phase"], "Succeeded")
        self.assertEqual(self.status()["state"]["terminated"]["reason"], "Completed")
        self.assertEqual(len(self.containers()), 1)
        self.assertEqual(self.condition("Ready")["reason"], "PodCompleted")
        self.assertEqual(self.condition("Initialized")["reason"], "PodCompleted")
        self.assertEqual([s.ready for s in self.runtime.sandboxes.values()], [False])

    def test_a_finished_pod_is_left_alone_until_it_changes(self) -> None:
        self.runtime.programs["main"] = Program(runs_for=1, exit_code=0)
        self.create(make_pod(restartPolicy="Never"))
        self.advance(4)
        self.assertEqual(self.pod()["status"]["phase"], "Succeeded")
        calls = len(self.runtime.calls)
        self.advance(10)
        self.assertEqual(len(self.runtime.calls), calls)

    def test_host_network_pods_use_the_node_network_and_host_ports(self) -> None:
        container = {
            "name": "main",
            "image": "busybox:1.36",
            "ports": [{"containerPort": 8080, "hostPort": 18080, "protocol": "UDP"}],
        }
        self.create(make_pod(hostNetwork=True, containers=[container]))
        self.advance(1)
        config = self.sandbox()
        self.assertEqual(config.linux.security_context.namespace_options.network, api.NODE)
        self.assertEqual(config.hostname, "")
        self.assertEqual(list(config.dns_config.servers), [])
        (mapping,) = config.port_mappings
        self.assertEqual(
            (mapping.protocol, mapping.container_port, mapping.host_port), (api.UDP, 8080, 18080)
        )
        self.assertEqual(self.pod()["status"]["podIPs"], [{"ip": "127.0.0.11"}])

    def test_never_pod_whose_container_fails_is_failed(self) -> None:
        self.runtime.programs["main"] = Program(runs_for=1, exit_code=2)
        self.create(make_pod(restartPolicy="Never"))
        self.advance(3)
        self.assertEqual(self.pod()["status"]["phase"], "Failed")
        self.assertEqual(self.condition("ContainersReady")["reason"], "PodFailed")
        self.assertEqual(len(self.containers()), 1)

    def test_an_oom_kill_is_reported(self) -> None:
        self.create(make_pod(restartPolicy="Never"))
        self.advance(1)
        self.runtime.exit(self.containers()[0].id, 137, "OOMKilled")
        self.advance(1)
        terminated = self.status()["state"]["terminated"]
        self.assertEqual((terminated["reason"], terminated["exitCode"]), ("OOMKilled", 137))

    def test_active_deadline_fails_the_pod(self) -> None:
        self.create(make_pod(activeDeadlineSeconds=5))
        self.advance(6)
        status = self.pod()["status"]
        self.assertEqual(
            (status["phase"], status["reason"], status["message"]),
            (
                "Failed",
                "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline",
            ),
        )
        self.assertEqual(self.runtime.running(), [])
        self.assertIn("DeadlineExceeded", self.reasons())

    # Volumes

    def test_a_volume_the_node_cannot_mount_keeps_the_pod_creating(self) -> None:
        container = {
            "name": "main",
            "image": "busybox:1.36",
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }
        self.create(make_pod(containers=[container], volumes=[{"name": "data", "emptyDir": {}}]))
        self.advance(1)
        self.assertEqual(self.runtime.sandboxes, {})
        self.assertEqual(self.status()["state"]["waiting"]["reason"], "ContainerCreating")
        (event,) = [e for e in self.events() if e[1] == "FailedMount"]
        self.assertEqual(event[0], "Warning")
        self.assertIn("data", event[2])

    def with_volumes(self, root: Path) -> VolumeManager:
        """Workers again, with a volume manager of the kubelet root C{root}."""
        self.workers.stopService()
        volumes = VolumeManager(self.client, self.clock, "node-1", FakeMounter(), str(root))
        self.workers = PodWorkers(
            self.clock, self.client, self.runtime, self.settings, volumes=volumes
        )
        self.workers.startService()
        return volumes

    def test_a_running_pods_config_map_volume_follows_its_config_map(self) -> None:
        volumes = self.with_volumes(Path(self.mktemp()))
        config = {"metadata": {"name": "cfg", "namespace": "default"}, "data": {"k": "1"}}
        self.client.put_object("/api/v1/namespaces/default/configmaps/cfg", config)
        container = {
            "name": "main",
            "image": "busybox:1.36",
            "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}],
        }
        volume = {"name": "cfg", "configMap": {"name": "cfg"}}
        pod = self.create(make_pod(containers=[container], volumes=[volume]))
        self.advance(1)
        self.assertEqual(self.pod()["status"]["phase"], "Running")
        uid = pod["metadata"]["uid"]
        target = volumes.volume_dir(uid, "configMap", "cfg") / "k"
        self.assertEqual(target.read_text(), "1")
        (mount,) = self.containers()[0].config.mounts
        self.assertEqual((mount.container_path, mount.host_path), ("/cfg", str(target.parent)))
        config["data"] = {"k": "2"}
        self.client.put_object("/api/v1/namespaces/default/configmaps/cfg", config)
        # A steady pod (no probes) brings its files up to date at its minute's resync.
        self.advance(RESYNC)
        self.assertEqual(target.read_text(), "2")
        self.assertEqual(len(self.containers()), 1)
        self.client.remove_object(f"{PODS}/web")
        self.advance(1)
        self.assertFalse(volumes.pod_dir(uid).exists())

    def test_a_probed_pods_secret_volume_follows_its_secret_within_ten_seconds(self) -> None:
        """A pod synced every second (it has a probe) refreshes its volumes every VOLUME_RESYNC."""
        volumes = self.with_volumes(Path(self.mktemp()))
        path = "/api/v1/namespaces/default/secrets/tok"

        def secret(value: bytes) -> Object:
            data = {"token": base64.b64encode(value).decode()}
            return {"metadata": {"name": "tok", "namespace": "default"}, "data": data}

        self.client.put_object(path, secret(b"one"))
        # A secret volume is a tmpfs, sized by the node's memory.
        node = {"metadata": {"name": "node-1"}, "status": {"allocatable": {"memory": "1Gi"}}}
        self.client.put_object("/api/v1/nodes/node-1", node)
        container = {
            "name": "main",
            "image": "busybox:1.36",
            "volumeMounts": [{"name": "tok", "mountPath": "/tok"}],
            "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
        }
        volume = {"name": "tok", "secret": {"secretName": "tok"}}
        pod = self.create(make_pod(containers=[container], volumes=[volume]))
        self.advance(2)
        self.assertTrue(self.status()["ready"])
        target = volumes.volume_dir(pod["metadata"]["uid"], "secret", "tok") / "token"
        self.assertEqual(target.read_bytes(), b"one")
        self.client.put_object(path, secret(b"two"))
        self.advance(2)
        self.assertEqual(target.read_bytes(), b"one")
        self.advance(VOLUME_RESYNC)
        self.assertEqual(target.read_bytes(), b"two")
        self.assertEqual(len(self.containers()), 1)

    def test_an_adopted_pods_restarted_container_keeps_its_volumes(self) -> None:
        root = Path(self.mktemp())
        self.with_volumes(root)
        container = {
            "name": "main",
            "image": "busybox:1.36",
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        }
        self.create(make_pod(containers=[container], volumes=[{"name": "scratch", "emptyDir": {}}]))
        self.advance(1)
        (first,) = self.containers()
        self.with_volumes(root)
        self.advance(1)
        self.runtime.exit(first.id, 1)
        self.advance(2)
        self.assertEqual(self.status()["restartCount"], 1)
        second = self.containers()[-1]
        self.assertEqual(second.config.mounts, first.config.mounts)

    # Deletion

    def test_a_pod_marked_for_deletion_is_stopped_and_deleted(self) -> None:
        self.runtime.programs["main"] = Program(term_exit_code=None)
        pod = self.create(make_pod(terminationGracePeriodSeconds=5))
        self.advance(1)
        pod["metadata"]["deletionTimestamp"] = rfc3339(START + 5)
        pod["metadata"]["deletionGracePeriodSeconds"] = 5
        self.client.put_object(f"{PODS}/web", pod)
        self.advance(0.5)
        self.assertIn(("Normal", "Killing", "Stopping container main"), self.events())
        self.assertEqual(len(self.runtime.running()), 1)
        self.advance(5)
        self.assertEqual(self.runtime.running(), [])
        self.assertEqual(self.runtime.sandboxes, {})
        self.assertNotIn(f"{PODS}/web", self.client.objects)
        self.assertEqual(self.client.count("DELETE", f"{PODS}/web"), 1)
        self.advance(2)
        self.assertEqual(self.workers.workers, {})

    def test_a_deleted_pod_is_stopped_with_its_deletion_grace_before_the_object_goes(self) -> None:
        """
        ``kubectl delete --grace-period=7``: the API server marked the pod; its
        containers get StopContainer with 7 s (not the spec's 30), and only once
        they stopped is the object deleted, with grace 0 and the pod's UID.
        """
        self.runtime.programs["main"] = Program(term_exit_code=None)  # ignores SIGTERM
        pod = self.create(make_pod(terminationGracePeriodSeconds=30))
        self.advance(1)
        [container] = self.runtime.running()
        pod["metadata"]["deletionTimestamp"] = rfc3339(START + 8)
        pod["metadata"]["deletionGracePeriodSeconds"] = 7
        self.client.put_object(f"{PODS}/web", pod)
        self.advance(0.5)
        self.assertIn(("StopContainer", container), self.runtime.calls)
        self.advance(6)
        self.assertEqual(self.runtime.running(), [container])  # still within its grace
        self.assertEqual(self.client.count("DELETE", f"{PODS}/web"), 0)
        self.advance(1.5)
        self.assertEqual(self.runtime.running(), [])
        self.assertEqual(
            self.client.bodies[("DELETE", f"{PODS}/web")],
            [
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": pod["metadata"]["uid"]},
                }
            ],
        )
        self.assertNotIn(f"{PODS}/web", self.client.objects)

    def test_a_pod_gone_from_the_api_is_killed_and_removed(self) -> None:
        self.create(make_pod())
        self.advance(1)
        self.client.remove_object(f"{PODS}/web")
        self.advance(1)
        self.assertEqual(self.runtime.containers, {})
        self.assertEqual(self.runtime.sandboxes, {})
        self.assertEqual(self.workers.workers, {})

    # A kubelet restart

    def test_a_restarted_kubelet_adopts_running_containers_and_removes_orphans(self) -> None:
        self.runtime.programs["main"] = Program(runs_for=1, exit_code=1)
        self.create(make_pod())
        self.create(make_pod("doomed"))
        self.advance(2.5)
        self.assertEqual(self.status()["restartCount"], 1)
        self.workers.stopService()
        self.client.remove_object(f"{PODS}/doomed")
        self.runtime.programs["main"] = Program()
        self.workers = self.start_workers()
        self.advance(1)
        # The orphan is gone; web's containers were kept and counted on.
        self.assertEqual({s.config.metadata.name for s in self.runtime.sandboxes.values()}, {"web"})
        self.advance(12)
        self.assertEqual(self.status()["restartCount"], 2)
        self.assertEqual(len([s for s in self.runtime.sandboxes.values()]), 1)

    def fake_cgroups(self) -> tuple[Path, PodCgroups]:
        """A cgroup v1 layout in a directory: two hierarchies and the alias ``cpu``."""
        mount = Path(self.mktemp())
        for hierarchy in ("cpu,cpuacct", "memory"):
            (mount / hierarchy / "k3stw" / "kubepods" / "besteffort").mkdir(parents=True)
        (mount / "cpu").symlink_to("cpu,cpuacct")
        self.settings = replace(self.settings, cgroup_root="/k3stw")
        return mount, PodCgroups(self.settings.cgroup_root, mount)

    def make_pod_cgroups(self, mount: Path, uid: str, qos: str = "besteffort") -> list[Path]:
        """What runc leaves: the pod's cgroup and a container's inside, in each hierarchy."""
        made = []
        for hierarchy in ("cpu,cpuacct", "memory"):
            cgroup = mount / hierarchy / "k3stw" / "kubepods" / qos / f"pod{uid}"
            (cgroup / "0123abcd").mkdir(parents=True)
            made.append(cgroup)
        return made

    def test_a_deleted_pods_cgroups_are_removed_with_its_sandbox(self) -> None:
        mount, cgroups = self.fake_cgroups()
        self.workers.stopService()
        self.workers = self.start_workers(cgroups)
        pod = self.create(make_pod())
        other = self.create(make_pod("other"))
        self.advance(1)
        self.assertEqual(
            self.sandbox_of("web").linux.cgroup_parent,
            f"/k3stw/kubepods/besteffort/pod{pod['metadata']['uid']}",
        )
        mine = self.make_pod_cgroups(mount, pod["metadata"]["uid"])
        kept = self.make_pod_cgroups(mount, other["metadata"]["uid"])
        self.client.remove_object(f"{PODS}/web")
        self.advance(1)
        self.assertEqual([path for path in mine if path.exists()], [])
        self.assertEqual([path for path in kept if not path.exists()], [])
        self.assertEqual(cgroups.pod_uids(), {other["metadata"]["uid"]})

    def test_a_restarted_kubelet_removes_the_cgroups_of_pods_gone(self) -> None:
        mount, cgroups = self.fake_cgroups()
        pod = self.create(make_pod())
        self.advance(1)
        self.workers.stopService()
        kept = self.make_pod_cgroups(mount, pod["metadata"]["uid"])
        gone = self.make_pod_cgroups(mount, "0d1e-gone", qos="")
        gone += self.make_pod_cgroups(mount, "0d1e-burstable", qos="burstable")
        self.workers = self.start_workers(cgroups)
        self.advance(1)
        self.assertEqual([path for path in gone if path.exists()], [])
        self.assertEqual([path for path in kept if not path.exists()], [])

    # Termination messages and log files

    def with_files(self) -> tuple[Path, Path, Path]:
        """Workers that keep pod files, logs and log symlinks under a test directory."""
        root = Path(self.mktemp()).absolute()
        kubelet, pod_logs, links = root / "kubelet", root / "pods", root / "containers"
        self.settings = replace(
            self.settings,
            files=PodFiles(str(kubelet), str(links)),
            pod_logs=str(pod_logs),
        )
        self.workers.stopService()
        self.workers = self.start_workers()
        return kubelet, pod_logs, links

    def write_log(self, pod_logs: Path, pod: Object, lines: list[str]) -> Path:
        """
        The log of the pod's first container, as containerd writes it at
        create (MemoryRuntime writes none); the pod gets the uid C{u-1}.
        """
        pod["metadata"]["uid"] = "u-1"
        log = pod_logs / f"default_{pod['metadata']['name']}_u-1/main/0.log"
        log.parent.mkdir(parents=True)
        log.write_text("".join(f"2026-12-06T17:00:00.000000000Z stdout {line}\n" for line in lines))
        return log

    def test_the_termination_message_file_is_the_terminated_message(self) -> None:
        kubelet, _, _ = self.with_files()
        self.runtime.programs["main"] = Program(runs_for=2, exit_code=1)
        pod = self.create(make_pod(restartPolicy="Never"))
        self.advance(1)
        (container,) = self.containers()
        (mount,) = [
            m for m in container.config.mounts if m.container_path == "/dev/termination-log"
        ]
        host = Path(mount.host_path)
        self.assertEqual(
            host.parent, kubelet / "pods" / pod["metadata"]["uid"] / "containers" / "main"
        )
        self.assertRegex(host.name, "^[0-9a-f]{8}$")
        self.assertEqual(host.stat().st_mode & 0o777, 0o666)
        host.write_text("x" * 5000 + "the end\n")
        self.advance(2)
        terminated = self.status()["state"]["terminated"]
        self.assertEqual(terminated["exitCode"], 1)
        # The last 4096 bytes, as kube reads them.
        self.assertEqual(terminated["message"], "x" * 4088 + "the end\n")

    def test_a_custom_termination_message_path_is_mounted(self) -> None:
        self.with_files()
        containers = [
            {"name": "main", "image": "busybox:1.36", "terminationMessagePath": "/tmp/why"}
        ]
        self.create(make_pod(containers=containers))
        self.advance(1)
        (container,) = self.containers()
        self.assertEqual([m.container_path for m in container.config.mounts], ["/tmp/why"])

    def run_logging(self, exit_code: int, lines: list[str]) -> Object:
        """A FallbackToLogsOnError container that logs C{lines} and exits: its terminated state."""
        _, pod_logs, _ = self.with_files()
        self.runtime.programs["main"] = Program(runs_for=2, exit_code=exit_code)
        container = {
            "name": "main",
            "image": "busybox:1.36",
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        pod = make_pod(containers=[container], restartPolicy="Never")
        self.write_log(pod_logs, pod, lines)
        self.create(pod)
        self.advance(3)
        terminated: Object = self.status()["state"]["terminated"]
        return terminated

    def test_fallback_to_logs_on_error_reads_the_logs_tail(self) -> None:
        lines = [f"F line {n}" for n in range(100)] + ["P half ", "F a line"]
        message = self.run_logging(2, lines)["message"]
        expected = [f"line {n}" for n in range(22, 100)] + ["half a line"]
        self.assertEqual(message, "\n".join(expected) + "\n")

    def test_fallback_to_logs_is_only_for_failures(self) -> None:
        self.assertNotIn("message", self.run_logging(0, ["F all went well"]))

    def test_a_started_containers_log_is_linked_in_container_logs(self) -> None:
        _, pod_logs, links = self.with_files()
        pod = make_pod()
        log = self.write_log(pod_logs, pod, [])
        self.create(pod)
        self.advance(1)
        (container,) = self.containers()
        link = links / f"web_default_main-{container.id}.log"
        self.assertEqual(os.readlink(link), str(log))
        self.client.remove_object(f"{PODS}/web")
        self.advance(1)
        self.assertFalse(link.is_symlink())
        self.assertFalse(log.parent.parent.exists())

    def test_a_restarted_kubelet_removes_dead_log_links(self) -> None:
        _, _, links = self.with_files()
        links.mkdir(parents=True)
        (links / "gone_default_main-0123.log").symlink_to(links / "nowhere")
        (links / "kept.log").symlink_to(links)
        self.workers.stopService()
        self.workers = self.start_workers()
        self.advance(1)
        self.assertEqual(sorted(p.name for p in links.iterdir()), ["kept.log"])

    def test_a_dead_sandbox_is_recreated(self) -> None:
        self.create(make_pod())
        self.advance(1)
        (sandbox_id,) = self.runtime.sandboxes
        self.successResultOf(self.runtime.stop_pod_sandbox(sandbox_id))
        self.advance(1)
        self.assertEqual(self.sandbox().metadata.attempt, 1)
        self.assertIn("SandboxChanged", self.reasons())
        self.assertEqual(self.pod()["status"]["phase"], "Running")

    # Probes and hooks

    def probed(self, **probes: Any) -> Object:
        container = {
            "name": "main",
            "image": "busybox:1.36",
            "ports": [{"name": "http", "containerPort": 80}],
        }
        return make_pod(containers=[{**container, **probes}])

    def test_readiness_probe_gates_ready(self) -> None:
        self.prober.code = 503
        probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1}
        self.create(self.probed(readinessProbe=probe))
        self.advance(2)
        self.assertFalse(self.status()["ready"])
        self.assertTrue(self.status()["started"])
        self.assertEqual(self.condition("Ready")["reason"], "ContainersNotReady")
        self.assertEqual(self.pod()["status"]["phase"], "Running")
        self.assertIn(
            (
                "Warning",
                "Unhealthy",
                "Readiness probe failed: HTTP probe failed with statuscode: 503",
            ),
            self.events(),
        )
        url, headers = self.prober.gets[0]
        self.assertEqual(url, "http://10.42.0.2:80/healthz")
        self.assertEqual(headers["User-Agent"], USER_AGENT)
        self.prober.code = 200
        self.advance(2)
        self.assertTrue(self.status()["ready"])
        self.assertEqual(self.condition("Ready")["status"], "True")

    def test_a_failing_liveness_probe_restarts_the_container(self) -> None:
        self.exec_answer = (1, b"not alive", b"")
        probe = {
            "exec": {"command": ["cat", "/tmp/alive"]},
            "periodSeconds": 1,
            "failureThreshold": 3,
        }
        self.create(self.probed(livenessProbe=probe))
        self.advance(1)
        self.assertEqual(self.execs[0][1], ["cat", "/tmp/alive"])
        self.assertTrue(self.status()["ready"])
        self.advance(3)
        self.assertIn(("Warning", "Unhealthy", "Liveness probe failed: not alive"), self.events())
        self.assertIn(
            ("Normal", "Killing", "Container main failed liveness probe, will be restarted"),
            self.events(),
        )
        self.exec_answer = (0, b"", b"")
        self.advance(5)
        self.assertEqual(self.status()["restartCount"], 1)
        self.assertEqual(len(self.runtime.running()), 1)

    def test_a_startup_probe_holds_readiness_until_it_passes(self) -> None:
        startup = {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30}
        readiness = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
        self.create(self.probed(startupProbe=startup, readinessProbe=readiness))
        self.advance(3)
        main = self.status()
        self.assertEqual((main["started"], main["ready"]), (False, False))
        self.assertIn("dial tcp 10.42.0.2:8080: connect: connection refused", self.events()[-1][2])
        self.prober.open_ports.add(8080)
        self.advance(2)
        main = self.status()
        self.assertEqual((main["started"], main["ready"]), (True, True))

    def test_a_failing_post_start_hook_kills_the_container(self) -> None:
        self.exec_answer = (2, b"hook broke", b"")
        lifecycle = {"postStart": {"exec": {"command": ["setup"]}}}
        self.create(
            make_pod(
                restartPolicy="Never",
                containers=[{"name": "main", "image": "busybox:1.36", "lifecycle": lifecycle}],
            )
        )
        self.advance(1)
        self.assertIn(("Warning", "FailedPostStartHook", "hook broke"), self.events())
        self.assertEqual(self.runtime.running(), [])

    def delete_with_pre_stop(self, hook: Object) -> None:
        """Run a pod whose container has the preStop C{hook} for a second, then delete it."""
        lifecycle = {"preStop": hook}
        pod = self.create(
            make_pod(containers=[{"name": "main", "image": "busybox:1.36", "lifecycle": lifecycle}])
        )
        self.advance(1)
        pod["metadata"]["deletionTimestamp"] = rfc3339(START + 30)
        self.client.put_object(f"{PODS}/web", pod)

    def test_the_pre_stop_hook_runs_before_the_container_is_stopped(self) -> None:
        self.delete_with_pre_stop({"exec": {"command": ["drain"]}})
        self.advance(1)
        self.assertEqual([cmd for _, cmd in self.execs], [["drain"]])
        self.assertNotIn(f"{PODS}/web", self.client.objects)

    def test_a_grpc_probe_asks_the_health_service_of_the_pod(self) -> None:
        self.prober.serving = "NOT_SERVING"
        probe = {"grpc": {"port": 9090, "service": "api"}, "periodSeconds": 1}
        self.create(self.probed(readinessProbe=probe))
        self.advance(2)
        self.assertEqual(self.prober.checks[0], ("10.42.0.2", 9090, "api"))
        self.assertFalse(self.status()["ready"])
        self.assertIn(
            (
                "Warning",
                "Unhealthy",
                'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")',
            ),
            self.events(),
        )
        self.prober.serving = "SERVING"
        self.advance(2)
        self.assertTrue(self.status()["ready"])

    def test_a_pre_stop_sleep_holds_the_stop_for_its_seconds(self) -> None:
        self.delete_with_pre_stop({"sleep": {"seconds": 5}})
        self.advance(4.5)
        self.assertEqual(len(self.runtime.running()), 1)
        self.assertIn(f"{PODS}/web", self.client.objects)
        self.advance(1)
        self.assertEqual(self.runtime.running(), [])
        self.assertNotIn(f"{PODS}/web", self.client.objects)
        self.assertNotIn("FailedPreStopHook", self.reasons())

    def test_a_pre_stop_sleep_longer_than_the_grace_is_cut_short(self) -> None:
        self.runtime.programs["main"] = Program(term_exit_code=None)
        lifecycle = {"preStop": {"sleep": {"seconds": 20}}}
        container = {"name": "main", "image": "busybox:1.36", "lifecycle": lifecycle}
        pod = self.create(make_pod(containers=[container], terminationGracePeriodSeconds=30))
        self.advance(1)
        pod["metadata"]["deletionTimestamp"] = rfc3339(START + 4)
        pod["metadata"]["deletionGracePeriodSeconds"] = 3
        self.client.put_object(f"{PODS}/web", pod)
        # 3 s of sleep, then the least grace (2 s) before SIGKILL.
        self.advance(4.5)
        self.assertEqual(len(self.runtime.running()), 1)
        self.advance(1.5)
        self.assertEqual(self.runtime.running(), [])

    # A steady pod is watched by the node-wide relist

    def test_steady_pods_cost_two_list_calls_a_second(self) -> None:
        """
        Running and ready pods without probes are not synced every second: the
        relist lists every sandbox and container once a second, nothing more.
        """
        for name in ("a", "b", "c"):
            self.create(make_pod(name))
        self.advance(4)
        self.assertEqual({self.pod(n)["status"]["phase"] for n in "abc"}, {"Running"})
        calls = len(self.runtime.calls)
        self.advance(10)
        made = sorted({method for method, _ in self.runtime.calls[calls:]})
        self.assertEqual(made, ["ListContainers", "ListPodSandbox"])
        self.assertLessEqual(len(self.runtime.calls) - calls, 2 * 11)

    def test_a_steady_pods_exit_is_seen_within_a_second(self) -> None:
        """The relist sees a steady pod's container exit and syncs that pod at once."""
        self.create(make_pod(restartPolicy="Never"))
        self.advance(4)
        (container,) = self.runtime.running()
        self.runtime.exit(container, 3)
        self.advance(1.5)
        self.assertEqual(self.pod()["status"]["phase"], "Failed")
        self.assertEqual(self.status()["state"]["terminated"]["exitCode"], 3)

    def test_a_steady_pod_is_resynced_every_minute(self) -> None:
        """Without any change, a steady pod's sandbox and containers are looked at each minute."""
        self.create(make_pod())
        self.advance(4)
        calls = len(self.runtime.calls)
        self.advance(61)
        statuses = [m for m, _ in self.runtime.calls[calls:] if m == "ContainerStatus"]
        self.assertEqual(len(statuses), 1)
