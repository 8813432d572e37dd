"""
The node around the pods, without containerd: the CNI conflist from the
Node's podCIDR and the runtime told it; the Node's status from host facts and
the runtime's answers (Ready with kube's reasons, pressure conditions,
images); registries.yaml rendered as k3s renders it, and its errors; the
airgap images directory watched on a clock.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.kubelet.cni import CONFLIST_NAME, NodeNetwork, pod_cidrs, render_conflist
from k3stw.kubelet.config import KubeletConfig
from k3stw.kubelet.containerd import (
    IMAGES_POLL_INTERVAL,
    ContainerdPaths,
    NodeRuntime,
    RuntimeSettings,
    render_config,
    runtime_state,
)
from k3stw.kubelet.cri.memory import MemoryRuntime
from k3stw.kubelet.hostinfo import FilesystemUsage
from k3stw.kubelet.node import (
    MAX_IMAGES,
    NODES_PATH,
    EvictionThresholds,
    RuntimeState,
    desired_conditions,
    node_status,
    pressures,
    readiness_errors,
)
from k3stw.kubelet.registries import (
    HOSTS_HEADER,
    Registries,
    RegistriesError,
    host_configs,
    load_registries,
    parse_registries,
    write_hosts,
)
from k3stw.kubelet.service import KubeletService
from k3stw.machinery.objects import find_condition
from tests.support.fakes import FakeKubeClient
from tests.support.processes import FakeProcessReactor
from tests.test_containerd import STATUS_WITHOUT
from tests.test_kubelet_node import FACTS, NOW, config

NOT_READY_NETWORK = (
    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
    "message:Network plugin returns error: cni plugin not initialized"
)
GiB = 1024**3


def node_with(*cidrs: str) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if cidrs:
        spec = {"podCIDR": cidrs[0], "podCIDRs": list(cidrs)}
    return {"metadata": {"name": "node-1"}, "spec": spec}


def state_of(memory: MemoryRuntime) -> RuntimeState:
    found: RuntimeState = SynchronousTestCase().successResultOf(
        Deferred.fromCoroutine(runtime_state(memory))
    )
    return found


class ConflistTests(SynchronousTestCase):
    def test_bridge_host_local_and_portmap(self) -> None:
        conflist = json.loads(render_conflist(["10.42.3.0/24"]))
        self.assertEqual((conflist["name"], conflist["cniVersion"]), ("cbr0", "1.0.0"))
        bridge, portmap = conflist["plugins"]
        self.assertEqual(bridge["type"], "bridge")
        self.assertEqual(bridge["bridge"], "cni0")
        self.assertTrue(bridge["isGateway"] and bridge["hairpinMode"])
        self.assertEqual(
            bridge["ipam"],
            {
                "type": "host-local",
                "ranges": [[{"subnet": "10.42.3.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        )
        self.assertEqual(
            portmap, {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
        )

    def test_dual_stack_has_a_range_and_default_route_per_family(self) -> None:
        ipam = json.loads(render_conflist(["10.42.3.0/24", "fd00:42:0:3::/64"]))["plugins"][0][
            "ipam"
        ]
        self.assertEqual(
            ipam["ranges"], [[{"subnet": "10.42.3.0/24"}], [{"subnet": "fd00:42:0:3::/64"}]]
        )
        self.assertEqual(ipam["routes"], [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])

    def test_pod_cidrs_of_a_node(self) -> None:
        self.assertEqual(pod_cidrs(node_with()), ())
        self.assertEqual(pod_cidrs({"spec": {"podCIDR": "10.42.1.0/24"}}), ("10.42.1.0/24",))
        self.assertEqual(
            pod_cidrs(node_with("10.42.1.0/24", "fd00::/64")), ("10.42.1.0/24", "fd00::/64")
        )


class NodeNetworkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.conf_dir = Path(self.mktemp()) / "net.d"
        self.subnet_file = self.conf_dir.parent / "flannel" / "subnet.env"
        self.memory = MemoryRuntime(Clock(), pod_cidr="")

    def update(self, network: NodeNetwork, node: dict[str, Any]) -> None:
        self.successResultOf(Deferred.fromCoroutine(network.update(node)))

    def test_written_once_the_node_has_its_cidr_and_the_runtime_told(self) -> None:
        network = NodeNetwork(self.conf_dir, self.memory, subnet_file=self.subnet_file)
        self.update(network, node_with())
        self.assertFalse((self.conf_dir / CONFLIST_NAME).exists())
        self.assertEqual(self.memory.pod_cidr, "")

        self.update(network, node_with("10.42.7.0/24"))
        written = json.loads((self.conf_dir / CONFLIST_NAME).read_text())
        self.assertEqual(written["plugins"][0]["ipam"]["ranges"], [[{"subnet": "10.42.7.0/24"}]])
        self.assertEqual(self.memory.pod_cidr, "10.42.7.0/24")
        self.assertEqual(os.listdir(self.conf_dir), [CONFLIST_NAME])

        calls = len(self.memory.calls)
        self.update(network, node_with("10.42.7.0/24"))
        self.assertEqual(len(self.memory.calls), calls, "nothing new: nothing done")

    def test_the_bridge_takes_flannels_mtu_once_written(self) -> None:
        """As flannel's CNI plugin: the bridge's MTU is subnet.env's, rewritten when it appears."""
        network = NodeNetwork(self.conf_dir, self.memory, subnet_file=self.subnet_file)
        self.update(network, node_with("10.42.7.0/24"))
        bridge = json.loads((self.conf_dir / CONFLIST_NAME).read_text())["plugins"][0]
        self.assertNotIn("mtu", bridge)
        self.subnet_file.parent.mkdir(parents=True)
        self.subnet_file.write_text(
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.7.1/24\n"
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        )
        calls = len(self.memory.calls)
        self.update(network, node_with("10.42.7.0/24"))
        bridge = json.loads((self.conf_dir / CONFLIST_NAME).read_text())["plugins"][0]
        self.assertEqual(bridge["mtu"], 1450)
        self.assertEqual(
            len(self.memory.calls), calls, "the same range: the runtime not told again"
        )

    def test_every_family_is_sent_to_the_runtime(self) -> None:
        network = NodeNetwork(self.conf_dir, self.memory, subnet_file=self.subnet_file)
        self.update(network, node_with("10.42.7.0/24", "fd00:42::/64"))
        self.assertEqual(self.memory.pod_cidr, "10.42.7.0/24,fd00:42::/64")

    def test_flannel_backend_none_leaves_cni_to_the_user(self) -> None:
        network = NodeNetwork(
            self.conf_dir, self.memory, write_conflist=False, subnet_file=self.subnet_file
        )
        self.update(network, node_with("10.42.7.0/24"))
        self.assertFalse(self.conf_dir.exists())
        self.assertEqual(self.memory.pod_cidr, "10.42.7.0/24")

    def test_containerd_config_points_cni_at_the_conf_dir(self) -> None:
        paths = ContainerdPaths.of(Path("/var/lib/rancher/k3s"))
        cni = tomllib.loads(render_config(paths, "p:1", True))["plugins"][
            "io.containerd.grpc.v1.cri"
        ]["cni"]
        self.assertEqual(
            cni, {"bin_dir": "/usr/lib/cni", "conf_dir": "/var/lib/rancher/k3s/agent/etc/cni/net.d"}
        )


class NodeStatusTests(SynchronousTestCase):
    def test_ready_false_with_kubes_message_while_the_network_is_not_ready(self) -> None:
        memory = MemoryRuntime(Clock())
        memory.network_ready = False
        status = node_status(config(), FACTS, None, NOW, state_of(memory))
        ready = find_condition({"status": status}, "Ready")
        assert ready is not None
        self.assertEqual(
            (ready["status"], ready["reason"], ready["message"]),
            ("False", "KubeletNotReady", NOT_READY_NETWORK),
        )
        memory.network_ready = True
        status = node_status(config(), FACTS, status, NOW, state_of(memory))
        ready = find_condition({"status": status}, "Ready")
        assert ready is not None
        self.assertEqual((ready["status"], ready["reason"]), ("True", "KubeletReady"))

    def test_runtime_down_and_several_errors(self) -> None:
        self.assertEqual(readiness_errors(RuntimeState(None)), ["container runtime is down"])
        self.assertEqual(readiness_errors(None), [])
        conditions = desired_conditions(FACTS, RuntimeState(()))
        ready = dict(
            (kind, (status, reason, message)) for kind, status, reason, message in conditions
        )
        self.assertEqual(
            ready["Ready"],
            (
                "False",
                "KubeletNotReady",
                "[container runtime not ready: <nil>, container runtime network not ready: <nil>]",
            ),
        )

    def test_runtime_that_stops_answering_is_down(self) -> None:
        memory = MemoryRuntime(Clock())
        memory.available = False
        self.assertEqual(state_of(memory), RuntimeState(None))

    def test_pressure_from_the_default_hard_thresholds(self) -> None:
        fs = FilesystemUsage(100 * GiB, 50 * GiB, 50 * GiB, 1000, 900)
        healthy = replace(
            FACTS, memory_available_bytes=GiB, nodefs=fs, imagefs=fs, pid_max=1000, processes=10
        )
        self.assertEqual(
            pressures(healthy),
            {"MemoryPressure": False, "DiskPressure": False, "PIDPressure": False},
        )
        low_memory = replace(healthy, memory_available_bytes=99 * 1024 * 1024)
        self.assertTrue(pressures(low_memory)["MemoryPressure"])
        # nodefs.available<10%; imagefs.available<15% (so 12% is pressure on the imagefs only).
        twelve = FilesystemUsage(100 * GiB, 12 * GiB, 88 * GiB, 1000, 900)
        self.assertFalse(pressures(replace(healthy, nodefs=twelve))["DiskPressure"])
        self.assertTrue(pressures(replace(healthy, imagefs=twelve))["DiskPressure"])
        inodes = FilesystemUsage(100 * GiB, 50 * GiB, 50 * GiB, 1000, 40)
        self.assertTrue(pressures(replace(healthy, nodefs=inodes))["DiskPressure"])
        # No pid.available threshold by default, as the kubelet on Linux.
        crowded = replace(healthy, processes=999)
        self.assertFalse(pressures(crowded)["PIDPressure"])
        self.assertTrue(pressures(crowded, EvictionThresholds(pid_available=0.1))["PIDPressure"])

        conditions = {c[0]: c for c in desired_conditions(low_memory, None)}
        self.assertEqual(
            conditions["MemoryPressure"],
            (
                "MemoryPressure",
                "True",
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
        )
        self.assertEqual(conditions["DiskPressure"][1:3], ("False", "KubeletHasNoDiskPressure"))

    def test_images_biggest_first_digests_then_tags(self) -> None:
        memory = MemoryRuntime(Clock(), images=())
        small = memory.add_image("docker.io/library/busybox:1", size=10)
        small.repo_tags.append("docker.io/library/busybox:latest")
        memory.add_image("docker.io/rancher/mirrored-pause:3.6", size=700)
        for i in range(MAX_IMAGES):
            memory.add_image(f"example.com/filler:{i}", size=100 + i)
        images = state_of(memory).images
        self.assertEqual(len(images), MAX_IMAGES)
        self.assertEqual(images[0]["sizeBytes"], 700)
        self.assertEqual(images[0]["names"][-1], "docker.io/rancher/mirrored-pause:3.6")
        self.assertNotIn(10, [i["sizeBytes"] for i in images])
        named = state_of(MemoryRuntime(Clock(), images=())).images
        self.assertEqual(named, ())
        only = MemoryRuntime(Clock(), images=())
        image = only.add_image("docker.io/library/busybox:1", size=10)
        image.repo_tags.extend(f"docker.io/library/busybox:{i}" for i in range(2, 9))
        names = state_of(only).images[0]["names"]
        self.assertEqual(len(names), 5)
        self.assertEqual(names[: len(image.repo_digests)], list(image.repo_digests))

    def test_status_carries_the_images(self) -> None:
        memory = MemoryRuntime(Clock())
        status = node_status(config(), FACTS, None, NOW, state_of(memory))
        self.assertEqual(len(status["images"]), 1)
        self.assertNotIn("images", node_status(config(), FACTS, None, NOW))


REGISTRIES = """
mirrors:
  docker.io:
    endpoint:
      - "http://127.0.0.1:5000"
      - "mirror.example.com/custom/v2"
      - "http://127.0.0.1:5000/"
      - "https://registry-1.docker.io"
    rewrite:
      "^rancher/(.*)": "mirrored/rancher/$1"
  "*":
    endpoint: ["https://all.example.com"]
configs:
  mirror.example.com:
    auth: {username: u, password: "p\\"w"}
    tls: {ca_file: /etc/ca.crt, cert_file: /etc/c.crt, key_file: /etc/c.key}
  registry.example.org:
    tls: {insecure_skip_verify: true}
  ghcr.io:
    auth: {auth: dTpw}
"""


class RegistriesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registries = parse_registries(REGISTRIES)

    def test_mirror_hosts_toml(self) -> None:
        hosts = host_configs(self.registries)
        # A registry with only a config gets its hosts.toml too, as k3s writes it.
        self.assertEqual(
            sorted(hosts),
            ["_default", "docker.io", "ghcr.io", "mirror.example.com", "registry.example.org"],
        )
        docker = hosts["docker.io"]
        self.assertTrue(docker.startswith(HOSTS_HEADER))
        parsed = tomllib.loads(docker)
        self.assertEqual(parsed["server"], "https://registry-1.docker.io/v2")
        self.assertEqual(
            list(parsed["host"]),
            ["http://127.0.0.1:5000/v2", "https://mirror.example.com/custom/v2"],
            "scheme defaults, duplicates dropped, the registry itself last stays the default",
        )
        local = parsed["host"]["http://127.0.0.1:5000/v2"]
        self.assertEqual(local["capabilities"], ["pull", "resolve"])
        self.assertEqual(local["rewrite"], {"^rancher/(.*)": "mirrored/rancher/$1"})
        mirror = parsed["host"]["https://mirror.example.com/custom/v2"]
        self.assertTrue(mirror["override_path"])
        self.assertEqual(mirror["ca"], ["/etc/ca.crt"])
        self.assertEqual(mirror["client"], [["/etc/c.crt", "/etc/c.key"]])
        default = tomllib.loads(hosts["_default"])
        self.assertNotIn("server", default)
        self.assertEqual(list(default["host"]), ["https://all.example.com/v2"])
        insecure = tomllib.loads(hosts["registry.example.org"])
        self.assertEqual(insecure["server"], "https://registry.example.org/v2")
        self.assertTrue(insecure["skip_verify"])

    def test_written_and_stale_ones_removed(self) -> None:
        certs = Path(self.mktemp())
        (certs / "old.example.com").mkdir(parents=True)
        (certs / "old.example.com" / "hosts.toml").write_text(HOSTS_HEADER + 'server = "x"\n')
        (certs / "mine.example.com").mkdir()
        (certs / "mine.example.com" / "hosts.toml").write_text('server = "https://mine"\n')
        write_hosts(certs, self.registries)
        self.assertEqual(
            sorted(os.listdir(certs)),
            [
                "_default",
                "docker.io",
                "ghcr.io",
                "mine.example.com",
                "mirror.example.com",
                "registry.example.org",
            ],
        )
        write_hosts(certs, Registries())
        self.assertEqual(os.listdir(certs), ["mine.example.com"])

    def test_auth_in_containerds_config_and_for_pulls(self) -> None:
        paths = ContainerdPaths.of(Path("/var/lib/rancher/k3s"))
        cri = tomllib.loads(render_config(paths, "p:1", True, self.registries))["plugins"][
            "io.containerd.grpc.v1.cri"
        ]
        self.assertEqual(
            cri["registry"]["configs"],
            {
                "ghcr.io": {"auth": {"auth": "dTpw"}},
                "mirror.example.com": {"auth": {"username": "u", "password": 'p"w'}},
            },
        )
        self.assertEqual(
            cri["registry"]["config_path"], "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"
        )
        auth = self.registries.pull_auth("ghcr.io/org/app:1")
        assert auth is not None
        self.assertEqual(auth.auth, "dTpw")
        self.assertIsNone(self.registries.pull_auth("busybox"))
        hub = parse_registries(
            "configs:\n  registry-1.docker.io:\n    auth: {username: a, password: b}\n"
        )
        found = hub.pull_auth("rancher/mirrored-pause:3.6")
        assert found is not None
        self.assertEqual((found.username, found.password), ("a", "b"))

    def test_malformed_files_name_the_file_and_field(self) -> None:
        hub = "mirrors:\n  docker.io:\n    "
        config = "configs:\n  a.io:\n    "
        cases = [
            ("mirrors: [a]", "mirrors: expected a mapping, got list"),
            (hub + "endpoint: http://x", "mirrors.docker.io.endpoint: expected a list of URLs"),
            (hub + "endpoints: [x]", "mirrors.docker.io.endpoints: unknown field"),
            (
                hub + "endpoint: ['http://']",
                "mirrors.docker.io.endpoint[0]: invalid URL 'http://': no host",
            ),
            (
                config + "tls: {insecure_skip_verify: yes please}",
                "configs.a.io.tls.insecure_skip_verify: expected true or false",
            ),
            (config + "auth: {user: x}", "configs.a.io.auth.user: unknown field"),
            (
                config + "auth: {username: 5}",
                "configs.a.io.auth.username: expected a string, got int",
            ),
            ("mirror: {}", "registries.mirror: unknown field"),
        ]
        for text, message in cases:
            with self.assertRaises(RegistriesError, msg=text) as raised:
                parse_registries(text, "r.yaml")
            self.assertEqual(str(raised.exception), "r.yaml: " + message)
        with self.assertRaises(RegistriesError) as raised:
            parse_registries("mirrors: {a: [}", "r.yaml")
        self.assertTrue(str(raised.exception).startswith("r.yaml: invalid YAML: "))

    def test_a_missing_file_is_no_registries(self) -> None:
        self.assertEqual(load_registries(Path(self.mktemp())), Registries())
        self.assertEqual(parse_registries(""), Registries())


class ImagesWatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.data = Path(self.mktemp()).absolute()
        self.images = self.data / "agent" / "images"
        self.images.mkdir(parents=True)
        memory = MemoryRuntime(self.reactor)
        self.node = NodeRuntime(
            self.reactor,
            self.data,
            RuntimeSettings(endpoint="unix:///run/cri.sock"),
            proc_status=lambda: STATUS_WITHOUT,
            connect=lambda endpoint: memory,
        )

    def imports(self) -> list[str]:
        return [p.args[-1] for p in self.reactor.processes if p.args[0] == "ctr"]

    def finish_imports(self) -> None:
        for process in self.reactor.processes:
            if process.args[0] == "ctr" and not process.exited:
                process.exit(0)
        self.reactor.advance(0)

    def test_new_and_changed_archives_are_imported_once_they_hold_still(self) -> None:
        first = self.images / "a.tar"
        first.write_bytes(b"a")
        self.node.startService()
        self.addCleanup(self.node.stopService)
        self.assertEqual(self.imports(), [str(first)])
        self.finish_imports()
        self.successResultOf(self.node.when_ready())

        self.reactor.advance(IMAGES_POLL_INTERVAL)
        self.assertEqual(len(self.imports()), 1, "unchanged: not imported again")
        second = self.images / "b.tar.zst"
        second.write_bytes(b"b")
        self.reactor.advance(IMAGES_POLL_INTERVAL)
        self.assertEqual(len(self.imports()), 1, "seen once: it may still be being written")
        second.write_bytes(b"bb")
        self.reactor.advance(IMAGES_POLL_INTERVAL)
        self.assertEqual(len(self.imports()), 1, "still growing")
        self.reactor.advance(IMAGES_POLL_INTERVAL)
        zstd = self.reactor.processes[-1]
        self.assertEqual(zstd.args[0], "zstd")
        zstd.exit(0)
        self.reactor.advance(0)
        self.assertEqual(
            self.imports()[-1].rsplit("/", 1)[0], str(self.data / "agent" / "containerd")
        )
        self.finish_imports()

        first.write_bytes(b"changed")
        os.utime(first, ns=(1, 1))
        for _ in range(3):
            self.reactor.advance(IMAGES_POLL_INTERVAL)
        self.assertEqual(self.imports()[-1], str(first))
        self.finish_imports()
        stopped = self.node.stopService()
        assert stopped is not None
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class KubeletNetworkTests(SynchronousTestCase):
    def test_conflist_follows_the_assigned_cidr_and_ready_follows_the_runtime(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        client = FakeKubeClient(clock)
        data = Path(self.mktemp()).absolute()
        memory = MemoryRuntime(clock, pod_cidr="")
        memory.network_ready = False
        runtime = NodeRuntime(
            clock,
            data,
            RuntimeSettings(endpoint="unix:///run/cri.sock"),
            connect=lambda endpoint: memory,
        )
        settings = KubeletConfig(
            node_name="node-1", node_ips=("127.0.0.11",), data_dir=str(data), retry_jitter=0.0
        )
        kubelet = KubeletService(clock, client, settings, host_facts=lambda: FACTS, runtime=runtime)
        kubelet.startService()
        clock.pump([0.5] * 4)
        path = f"{NODES_PATH}/node-1"
        ready = find_condition(client.objects[path], "Ready")
        assert ready is not None
        self.assertEqual((ready["status"], ready["message"]), ("False", NOT_READY_NETWORK))
        self.assertNotIn("taints", client.objects[path]["spec"], "the lifecycle controller's job")

        node = client.objects[path]
        node["spec"].update({"podCIDR": "10.42.5.0/24", "podCIDRs": ["10.42.5.0/24"]})
        client.put_object(path, node)
        clock.pump([0.5] * 2)
        conflist = data / "agent" / "etc" / "cni" / "net.d" / CONFLIST_NAME
        self.assertIn("10.42.5.0/24", conflist.read_text())
        self.assertEqual(memory.pod_cidr, "10.42.5.0/24")

        memory.network_ready = True  # containerd found the conflist
        clock.pump([0.5] * 22)
        ready = find_condition(client.objects[path], "Ready")
        assert ready is not None
        self.assertEqual((ready["status"], ready["reason"]), ("True", "KubeletReady"))
        self.assertEqual(len(client.objects[path]["status"]["images"]), 1)
        kubelet.stopService()
