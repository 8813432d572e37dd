"""
The kubelet's volume manager on the in-memory API server (asking as the
node, through the node authorizer) and a temporary directory, on a Clock:
kube's layout on disk, atomic updates, modes, optional objects, kube's error
messages, token rotation, and the CRI mounts.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

import jwt
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.tokens.request import TokenIssuer
from k3stw.kubelet.cri import api_pb2
from k3stw.kubelet.volumes import KUBELET_ROOT, VolumeError, VolumeManager
from k3stw.kubelet.volumes.atomic import DATA, FileProjection, write_payload
from k3stw.machinery.identity import User
from k3stw.machinery.objects import Object
from tests.support.apiserver import MemoryAPI, MemoryClient, MemoryServer
from tests.support.fakes import FakeMounter
from tests.test_tokens import AUDIENCES, ISSUER, cluster_keys

ADMIN = User("system:admin", ("system:masters",))
NODE = User("system:node:node-a", ("system:nodes",))
ACCESS = "/var/run/secrets/kubernetes.io/serviceaccount"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class VolumeTestCase(SynchronousTestCase):
    """A server in memory with tokens, the node node-a, and a volume manager asking as it."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.clock = self.server.clock
        self.api = MemoryAPI(
            self.server,
            {"admin": ADMIN, "node": NODE},
            token_requests=TokenIssuer(cluster_keys(), self.clock, ISSUER, AUDIENCES),
        )
        self.client = MemoryClient(self.api, "node")
        self.root = Path(self.mktemp()).absolute()
        self.mounter = FakeMounter()
        self.chance = 0.0
        self.manager = VolumeManager(
            self.client,
            self.clock,
            "node-a",
            self.mounter,
            str(self.root),
            chance=lambda: self.chance,
        )
        self.server.create("", "serviceaccounts", {"metadata": {"name": "default"}}, "default")
        self.server.create(
            "",
            "nodes",
            {
                "metadata": {"name": "node-a"},
                "status": {"allocatable": {"cpu": "2", "memory": "4Gi"}},
            },
        )

    def create(self, plural: str, obj: Object) -> Object:
        return self.server.create("", plural, obj, "default")

    def update(self, plural: str, obj: Object) -> Object:
        resource = self.server.resource("", plural)
        name = obj["metadata"]["name"]
        current = self.server.get("", plural, name, "default")
        obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self.server.run(self.server.store.update(resource, "default", name, obj))

    def pod(self, volumes: list[Object], mounts: list[Object] | None = None, **spec: Any) -> Object:
        """A pod on node-a with C{volumes}, its container mounting C{mounts}."""
        container = {"name": "main", "image": "busybox", "volumeMounts": mounts or []}
        body = {
            "metadata": {"name": "p", "labels": {"app": "web", "tier": "b"}},
            "spec": {
                "nodeName": "node-a",
                "automountServiceAccountToken": False,
                "containers": [container],
                "volumes": volumes,
                **spec,
            },
        }
        return self.create("pods", body)

    def prepare(self, pod: Object) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.manager.prepare(pod)))

    def refresh(self, pod: Object) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.manager.refresh(pod)))

    def fails(self, pod: Object) -> VolumeError:
        failure = self.failureResultOf(
            Deferred.fromCoroutine(self.manager.prepare(pod)), VolumeError
        )
        assert isinstance(failure.value, VolumeError)
        return failure.value

    def volume(self, pod: Object, plugin: str, name: str) -> Path:
        uid = str(pod["metadata"]["uid"])
        return self.root / "pods" / uid / "volumes" / f"kubernetes.io~{plugin}" / name


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class ConfigMapTests(VolumeTestCase):
    def test_layout_on_disk(self) -> None:
        """Real files in a timestamped directory, ``..data`` and one link per key through it."""
        self.create("configmaps", {"metadata": {"name": "x"}, "data": {"a": "1", "b": "two"}})
        pod = self.pod([{"name": "cfg", "configMap": {"name": "x"}}])
        self.prepare(pod)
        target = self.volume(pod, "configmap", "cfg")
        self.assertEqual(mode(target), 0o777)
        data = os.readlink(target / DATA)
        self.assertRegex(data, r"^\.\.2027_01_15_08_00_00\.\d+$")
        self.assertEqual(os.readlink(target / "a"), "..data/a")
        self.assertEqual(sorted(os.listdir(target)), sorted(["..data", data, "a", "b"]))
        self.assertEqual((target / "b").read_text(), "two")
        self.assertEqual(mode(target / data / "a"), 0o644)
        self.assertEqual(mode(target / data), 0o755)

    def test_items_paths_and_modes(self) -> None:
        """Items pick keys and place them; their mode beats defaultMode; binaryData is decoded."""
        self.create(
            "configmaps",
            {"metadata": {"name": "x"}, "data": {"a": "1"}, "binaryData": {"bin": b64("\x00\x01")}},
        )
        source = {
            "name": "x",
            "defaultMode": 0o600,
            "items": [
                {"key": "a", "path": "deep/er/a.txt", "mode": 0o400},
                {"key": "bin", "path": "b"},
            ],
        }
        pod = self.pod([{"name": "cfg", "configMap": source}])
        self.prepare(pod)
        target = self.volume(pod, "configmap", "cfg")
        self.assertEqual(os.readlink(target / "deep"), "..data/deep")
        self.assertEqual((target / "deep/er/a.txt").read_text(), "1")
        self.assertEqual(mode(target / "deep/er/a.txt"), 0o400)
        self.assertEqual((target / "b").read_bytes(), b"\x00\x01")
        self.assertEqual(mode(target / "b"), 0o600)

    def test_update_swaps_data_atomically(self) -> None:
        """A change writes a new directory and swaps ``..data``; open files stay valid."""
        self.create("configmaps", {"metadata": {"name": "x"}, "data": {"a": "old", "gone": "g"}})
        pod = self.pod([{"name": "cfg", "configMap": {"name": "x"}}])
        self.prepare(pod)
        target = self.volume(pod, "configmap", "cfg")
        first = os.readlink(target / DATA)
        self.clock.advance(60)
        self.refresh(pod)
        self.assertEqual(os.readlink(target / DATA), first, "unchanged: nothing rewritten")
        with (target / "a").open() as reader:
            self.update("configmaps", {"metadata": {"name": "x"}, "data": {"a": "new", "c": "3"}})
            self.refresh(pod)
            self.assertEqual(reader.read(), "old")
        second = os.readlink(target / DATA)
        self.assertRegex(second, r"^\.\.2027_01_15_08_01_00\.\d+$")
        self.assertFalse((target / first).exists())
        self.assertEqual((target / "a").read_text(), "new")
        self.assertEqual((target / "c").read_text(), "3")
        self.assertFalse(os.path.lexists(target / "gone"))

    def test_missing_configmap_is_kubes_failed_mount(self) -> None:
        pod = self.pod([{"name": "cfg", "configMap": {"name": "x"}}])
        error = self.fails(pod)
        self.assertEqual(
            str(error), 'MountVolume.SetUp failed for volume "cfg" : configmap "x" not found'
        )
        self.assertFalse(error.waiting)

    def test_optional_missing_configmap_is_empty_until_created(self) -> None:
        pod = self.pod([{"name": "cfg", "configMap": {"name": "x", "optional": True}}])
        self.prepare(pod)
        target = self.volume(pod, "configmap", "cfg")
        self.assertEqual([p for p in os.listdir(target) if not p.startswith("..")], [])
        self.create("configmaps", {"metadata": {"name": "x"}, "data": {"a": "1"}})
        self.refresh(pod)
        self.assertEqual((target / "a").read_text(), "1")

    def test_missing_key(self) -> None:
        """A key the items name must exist, unless the source is optional."""
        self.create("configmaps", {"metadata": {"name": "x"}, "data": {"a": "1"}})
        items = [{"key": "k", "path": "k"}, {"key": "a", "path": "a"}]
        pod = self.pod([{"name": "cfg", "configMap": {"name": "x", "items": items}}])
        self.assertEqual(
            str(self.fails(pod)),
            'MountVolume.SetUp failed for volume "cfg" : '
            "configmap references non-existent config key: k",
        )
        self.server.delete("", "pods", "p", "default", grace_period=0)
        pod = self.pod(
            [{"name": "cfg", "configMap": {"name": "x", "items": items, "optional": True}}]
        )
        self.prepare(pod)
        self.assertEqual(os.listdir(self.volume(pod, "configmap", "cfg") / DATA), ["a"])

    def test_configmap_of_another_nodes_pod_is_forbidden(self) -> None:
        """The node reads only what its own pods use (the node authorizer)."""
        self.create("configmaps", {"metadata": {"name": "x"}, "data": {"a": "1"}})
        pod = self.pod([{"name": "cfg", "configMap": {"name": "x"}}], nodeName="node-b")
        self.assertIn(
            'configmaps "x" is forbidden: User "system:node:node-a" cannot get resource '
            '"configmaps"',
            str(self.fails(pod)),
        )


class SecretTests(VolumeTestCase):
    def test_secret_is_decoded_on_tmpfs(self) -> None:
        self.create("secrets", {"metadata": {"name": "s"}, "data": {"pw": b64("hunter2")}})
        pod = self.pod([{"name": "sec", "secret": {"secretName": "s", "defaultMode": 0o440}}])
        self.prepare(pod)
        target = self.volume(pod, "secret", "sec")
        self.assertEqual((target / "pw").read_text(), "hunter2")
        self.assertEqual(mode(target / "pw"), 0o440)
        self.assertEqual(self.mounter.mounted, {str(target): 4 << 30}, "the node's allocatable")

    def test_missing_secret_and_key(self) -> None:
        pod = self.pod([{"name": "sec", "secret": {"secretName": "s"}}])
        self.assertEqual(
            str(self.fails(pod)), 'MountVolume.SetUp failed for volume "sec" : secret "s" not found'
        )
        self.create("secrets", {"metadata": {"name": "s"}, "data": {}})
        self.server.delete("", "pods", "p", "default", grace_period=0)
        items = [{"key": "k", "path": "k"}]
        pod = self.pod([{"name": "sec", "secret": {"secretName": "s", "items": items}}])
        self.assertEqual(
            str(self.fails(pod)),
            'MountVolume.SetUp failed for volume "sec" : references non-existent secret key: k',
        )

    def test_refused_tmpfs_fails_clearly(self) -> None:
        self.create("secrets", {"metadata": {"name": "s"}, "data": {}})
        pod = self.pod([{"name": "sec", "secret": {"secretName": "s"}}])
        self.mounter.refuse = True
        message = str(self.fails(pod))
        self.assertTrue(
            message.startswith(
                'MountVolume.SetUp failed for volume "sec" : mount failed: exit status 32\n'
            ),
            message,
        )


class DownwardAPITests(VolumeTestCase):
    def test_fields_and_resources(self) -> None:
        items = [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}, "mode": 0o400},
            {
                "path": "mem",
                "resourceFieldRef": {
                    "containerName": "main",
                    "resource": "limits.memory",
                    "divisor": "1Mi",
                },
            },
            {
                "path": "cpu",
                "resourceFieldRef": {"containerName": "main", "resource": "limits.cpu"},
            },
            {
                "path": "req",
                "resourceFieldRef": {
                    "containerName": "main",
                    "resource": "requests.cpu",
                    "divisor": "1m",
                },
            },
        ]
        body = {
            "metadata": {"name": "p", "labels": {"tier": "b", "app": "web"}},
            "spec": {
                "nodeName": "node-a",
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "main",
                        "image": "busybox",
                        "resources": {"limits": {"memory": "100M"}, "requests": {"cpu": "250m"}},
                    }
                ],
                "volumes": [{"name": "info", "downwardAPI": {"items": items}}],
            },
        }
        pod = self.create("pods", body)
        self.prepare(pod)
        target = self.volume(pod, "downward-api", "info")
        self.assertEqual((target / "labels").read_text(), 'app="web"\ntier="b"')
        self.assertEqual((target / "app").read_text(), "web")
        self.assertEqual((target / "name").read_text(), "p")
        self.assertEqual((target / "uid").read_text(), pod["metadata"]["uid"])
        self.assertEqual(mode(target / "uid"), 0o400)
        self.assertEqual((target / "mem").read_text(), "96")
        self.assertEqual((target / "cpu").read_text(), "2", "no limit: the node's allocatable")
        self.assertEqual((target / "req").read_text(), "250")


class ServiceAccountTokenTests(VolumeTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.create(
            "configmaps", {"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": "CA"}}
        )

    def api_access_pod(self) -> Object:
        """A pod as admission leaves it: with the ``kube-api-access-*`` projected volume."""
        body = {
            "metadata": {"name": "p"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": "busybox"}]},
        }
        return self.create("pods", body)

    def token_requests(self) -> int:
        path = "/api/v1/namespaces/default/serviceaccounts/default/token"
        return self.client.requests.count(("POST", path))

    def test_kube_api_access_volume(self) -> None:
        pod = self.api_access_pod()
        (volume,) = pod["spec"]["volumes"]
        self.prepare(pod)
        target = self.volume(pod, "projected", volume["name"])
        self.assertEqual(
            sorted(p for p in os.listdir(target) if not p.startswith("..")),
            ["ca.crt", "namespace", "token"],
        )
        self.assertEqual((target / "ca.crt").read_text(), "CA")
        self.assertEqual((target / "namespace").read_text(), "default")
        claims = jwt.decode((target / "token").read_text(), options={"verify_signature": False})
        self.assertEqual(claims["sub"], "system:serviceaccount:default:default")
        self.assertEqual(claims["kubernetes.io"]["pod"]["uid"], pod["metadata"]["uid"])
        self.assertEqual(claims["kubernetes.io"]["warnafter"], claims["iat"] + 3607)
        (mount,) = self.manager.mounts(pod, pod["spec"]["containers"][0])
        self.assertEqual(
            mount,
            api_pb2.Mount(
                container_path=ACCESS,
                host_path=str(target),
                readonly=True,
                selinux_relabel=False,
                propagation=api_pb2.PROPAGATION_PRIVATE,
            ),
        )

    def test_token_rotates_after_80_percent_of_its_life(self) -> None:
        pod = self.api_access_pod()
        self.prepare(pod)
        target = self.volume(pod, "projected", pod["spec"]["volumes"][0]["name"])
        first = (target / "token").read_text()
        self.clock.advance(3607 * 0.8 - 2)
        self.refresh(pod)
        self.assertEqual((self.token_requests(), (target / "token").read_text()), (1, first))
        self.clock.advance(3)
        self.refresh(pod)
        self.assertEqual(self.token_requests(), 2)
        self.assertNotEqual((target / "token").read_text(), first)

    def test_jitter_refreshes_up_to_ten_seconds_early(self) -> None:
        pod = self.api_access_pod()
        self.prepare(pod)
        self.chance = 0.99
        self.clock.advance(3607 - 721 - 9 + 0.5)
        self.refresh(pod)
        self.assertEqual(self.token_requests(), 2)

    def test_long_tokens_rotate_after_a_day(self) -> None:
        source = {"serviceAccountToken": {"path": "t", "expirationSeconds": 7 * 86400}}
        pod = self.pod([{"name": "tok", "projected": {"sources": [source]}}])
        self.prepare(pod)
        self.clock.advance(86400 - 1)
        self.refresh(pod)
        self.assertEqual(self.token_requests(), 1)
        self.clock.advance(2)
        self.refresh(pod)
        self.assertEqual(self.token_requests(), 2)

    def test_cached_token_served_while_refresh_fails(self) -> None:
        """While the API refuses, the unexpired token stays; once expired, the mount fails."""
        pod = self.api_access_pod()
        self.prepare(pod)
        target = self.volume(pod, "projected", pod["spec"]["volumes"][0]["name"])
        first = (target / "token").read_text()
        self.server.delete("", "serviceaccounts", "default", "default")
        self.clock.advance(3600)
        self.refresh(pod)
        self.assertEqual((target / "token").read_text(), first)
        self.clock.advance(8)
        failure = self.failureResultOf(
            Deferred.fromCoroutine(self.manager.refresh(pod)), VolumeError
        )
        self.assertEqual(
            str(failure.value),
            f'MountVolume.SetUp failed for volume "{pod["spec"]["volumes"][0]["name"]}" : '
            'serviceaccounts "default" not found',
        )

    def test_audience_and_missing_ca(self) -> None:
        """The audience is asked for; every failing source is reported at once."""
        sources = [
            {"serviceAccountToken": {"path": "t", "audience": "vault"}},
            {"configMap": {"name": "none"}},
            {"secret": {"name": "nothing"}},
        ]
        pod = self.pod([{"name": "pr", "projected": {"sources": sources}}])
        self.assertEqual(
            str(self.fails(pod)),
            'MountVolume.SetUp failed for volume "pr" : '
            '[configmap "none" not found, secret "nothing" not found]',
        )
        self.create("configmaps", {"metadata": {"name": "none"}})
        self.create("secrets", {"metadata": {"name": "nothing"}})
        self.prepare(pod)
        target = self.volume(pod, "projected", "pr")
        claims = jwt.decode((target / "t").read_text(), options={"verify_signature": False})
        self.assertEqual(claims["aud"], ["vault"])


class HostPathTests(VolumeTestCase):
    def host(self, name: str) -> str:
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        return str(base / name)

    def test_types(self) -> None:
        made_dir, made_file = self.host("d/e"), self.host("f")
        pod = self.pod(
            [
                {"name": "d", "hostPath": {"path": made_dir, "type": "DirectoryOrCreate"}},
                {"name": "f", "hostPath": {"path": made_file, "type": "FileOrCreate"}},
            ],
            [{"name": "d", "mountPath": "/d"}, {"name": "f", "mountPath": "/f"}],
        )
        self.prepare(pod)
        self.assertEqual(mode(Path(made_dir)), 0o755)
        self.assertTrue(Path(made_file).is_file())
        self.assertEqual(mode(Path(made_file)), 0o644)
        mounts = self.manager.mounts(pod, pod["spec"]["containers"][0])
        self.assertEqual(
            [(m.host_path, m.readonly) for m in mounts], [(made_dir, False), (made_file, False)]
        )

    def test_type_check_messages(self) -> None:
        missing, directory = self.host("missing"), self.host("")
        short = tempfile.mkdtemp()  # a socket's path must be short
        self.addCleanup(shutil.rmtree, short)
        sock_path = os.path.join(short, "s")
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        listener.bind(sock_path)
        cases = [
            ({"path": missing, "type": "Directory"}, f"{missing} is not a directory"),
            ({"path": directory, "type": "File"}, f"{directory} is not a file"),
            ({"path": directory, "type": "FileOrCreate"}, f"{directory} is not a file"),
            ({"path": directory, "type": "Socket"}, f"{directory} is not a socket file"),
            ({"path": directory, "type": "CharDevice"}, f"{directory} is not a character device"),
            ({"path": sock_path, "type": "BlockDevice"}, f"{sock_path} is not a block device"),
        ]
        for source, message in cases:
            pod = self.pod([{"name": "h", "hostPath": source}])
            self.assertEqual(
                str(self.fails(pod)),
                f'MountVolume.SetUp failed for volume "h" : hostPath type check failed: {message}',
            )
            self.server.delete("", "pods", "p", "default", grace_period=0)
        pod = self.pod([{"name": "h", "hostPath": {"path": sock_path, "type": "Socket"}}])
        self.prepare(pod)


class ClaimTests(VolumeTestCase):
    def claim(self, phase: str = "Pending", volume: str = "") -> Object:
        body = {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                "volumeName": volume,
            },
        }
        claim = self.create("persistentvolumeclaims", body)
        claim["status"] = {"phase": phase}
        resource = self.server.resource("", "persistentvolumeclaims")
        return self.server.run(
            self.server.store.update(resource, "default", "data", claim, subresource="status")
        )

    def test_unbound_claim_waits(self) -> None:
        self.claim()
        pod = self.pod([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}])
        error = self.fails(pod)
        self.assertTrue(error.waiting)
        self.assertEqual(
            str(error),
            'error processing PVC default/data: PVC default/data has non-bound phase ("Pending") '
            'or empty pvc.Spec.VolumeName ("")',
        )

    def test_missing_claim_waits(self) -> None:
        pod = self.pod([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}])
        error = self.fails(pod)
        self.assertTrue(error.waiting)
        self.assertEqual(
            str(error),
            "error processing PVC default/data: failed to fetch PVC from API server: "
            'persistentvolumeclaims "data" not found',
        )

    def test_bound_host_path_volume_is_used_in_place(self) -> None:
        path = str(Path(self.mktemp()).absolute() / "pvc-1_default_data")
        claim = self.claim("Bound", "pvc-1")
        self.server.create(
            "",
            "persistentvolumes",
            {
                "metadata": {"name": "pvc-1"},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                    "claimRef": {
                        "namespace": "default",
                        "name": "data",
                        "uid": claim["metadata"]["uid"],
                    },
                },
            },
        )
        pod = self.pod(
            [{"name": "v", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}}],
            [{"name": "v", "mountPath": "/data"}],
        )
        self.prepare(pod)
        self.assertTrue(os.path.isdir(path))
        (mount,) = self.manager.mounts(pod, pod["spec"]["containers"][0])
        self.assertEqual((mount.host_path, mount.readonly), (path, True))

    def local_volume(self, path: str, annotations: dict[str, str]) -> None:
        claim = self.claim("Bound", "pvc-2")
        required = {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a"]}
                    ]
                }
            ]
        }
        self.server.create(
            "",
            "persistentvolumes",
            {
                "metadata": {"name": "pvc-2", "annotations": annotations},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "local": {"path": path},
                    "nodeAffinity": {"required": required},
                    "claimRef": {
                        "namespace": "default",
                        "name": "data",
                        "uid": claim["metadata"]["uid"],
                    },
                },
            },
        )

    def test_a_local_path_volume_gets_its_directory_made(self) -> None:
        path = str(Path(self.mktemp()).absolute() / "pvc-2_default_data")
        self.local_volume(path, {"pv.kubernetes.io/provisioned-by": "rancher.io/local-path"})
        pod = self.pod([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}])
        self.prepare(pod)
        self.assertEqual(mode(Path(path)), 0o777)

    def test_another_local_volume_must_exist(self) -> None:
        path = str(Path(self.mktemp()).absolute() / "absent")
        self.local_volume(path, {})
        pod = self.pod([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}])
        self.assertEqual(
            str(self.fails(pod)),
            f'MountVolume.SetUp failed for volume "v" : path "{path}" does not exist',
        )
        self.assertFalse(os.path.exists(path))


class EmptyDirAndMountTests(VolumeTestCase):
    def test_empty_dirs(self) -> None:
        pod = self.pod(
            [
                {"name": "scratch", "emptyDir": {}},
                {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            ]
        )
        self.prepare(pod)
        scratch, ram = (
            self.volume(pod, "empty-dir", "scratch"),
            self.volume(pod, "empty-dir", "ram"),
        )
        self.assertEqual((mode(scratch), mode(ram)), (0o777, 0o777))
        self.assertEqual(self.mounter.mounted, {str(ram): 64 * 1024 * 1024})
        self.prepare(pod)
        self.assertEqual(len(self.mounter.mounted), 1)

    def test_memory_size_is_the_smallest_of_node_pod_and_volume(self) -> None:
        """Node allocatable memory (4Gi), else the pod's limit if less, else sizeLimit if less."""
        limits = {"limits": {"memory": "1Gi"}}
        body = {
            "metadata": {"name": "p"},
            "spec": {
                "nodeName": "node-a",
                "automountServiceAccountToken": False,
                "containers": [
                    {"name": "a", "image": "i", "resources": limits},
                    {"name": "b", "image": "i", "resources": limits},
                ],
                "volumes": [
                    {"name": "pod", "emptyDir": {"medium": "Memory"}},
                    {"name": "small", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                    {"name": "big", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
                ],
            },
        }
        pod = self.create("pods", body)
        self.prepare(pod)
        self.assertEqual(
            {Path(path).name: size for path, size in self.mounter.mounted.items()},
            {"pod": 2 << 30, "small": 1 << 20, "big": 2 << 30},
        )

    def test_refused_memory_mount(self) -> None:
        self.mounter.refuse = True
        pod = self.pod([{"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}])
        target = self.volume(pod, "empty-dir", "ram")
        self.assertEqual(
            str(self.fails(pod)),
            'MountVolume.SetUp failed for volume "ram" : mount failed: exit status 32\n'
            "Mounting command: mount\n"
            f"Mounting arguments: -t tmpfs -o size=1048576 tmpfs {target}\n"
            'Output: mount: only root can use "--options" option',
        )

    def test_cri_mounts(self) -> None:
        """readOnly, subPath (made if missing), propagation; SELinux relabelling never."""
        mounts: list[Object] = [
            {"name": "scratch", "mountPath": "/a", "readOnly": True},
            {"name": "scratch", "mountPath": "/b", "subPath": "x/y"},
            {"name": "scratch", "mountPath": "/c", "mountPropagation": "HostToContainer"},
            {"name": "scratch", "mountPath": "/d", "mountPropagation": "Bidirectional"},
        ]
        pod = self.pod([{"name": "scratch", "emptyDir": {}}], mounts)
        self.prepare(pod)
        scratch = str(self.volume(pod, "empty-dir", "scratch"))
        found = self.manager.mounts(pod, pod["spec"]["containers"][0])
        self.assertEqual(
            [
                (m.container_path, m.host_path, m.readonly, m.propagation, m.selinux_relabel)
                for m in found
            ],
            [
                ("/a", scratch, True, api_pb2.PROPAGATION_PRIVATE, False),
                ("/b", f"{scratch}/x/y", False, api_pb2.PROPAGATION_PRIVATE, False),
                ("/c", scratch, False, api_pb2.PROPAGATION_HOST_TO_CONTAINER, False),
                ("/d", scratch, False, api_pb2.PROPAGATION_BIDIRECTIONAL, False),
            ],
        )
        self.assertEqual(mode(Path(scratch) / "x/y"), 0o777)

    def test_sub_path_expr_expands_the_containers_variables(self) -> None:
        """``$(VAR)`` from plain values and pod fields; unknown ones kept; ``$$`` escapes."""
        mounts: list[Object] = [
            {"name": "logs", "mountPath": "/a", "subPathExpr": "$(POD)/$(KIND)/$(NOPE)/$$(POD)"},
        ]
        pod = self.pod([{"name": "logs", "emptyDir": {}}], mounts)
        env = [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "KIND", "value": "web-$(POD)"},
        ]
        container = {**pod["spec"]["containers"][0], "env": env}
        self.prepare(pod)
        (mount,) = self.manager.mounts(pod, container)
        logs = self.volume(pod, "empty-dir", "logs")
        self.assertEqual(mount.host_path, str(logs / "p/web-p/$(NOPE)/$(POD)"))
        self.assertTrue(os.path.isdir(mount.host_path))

    def test_config_sub_path_is_the_file_itself(self) -> None:
        """A subPath of a configMap volume is its current file (so it never sees updates)."""
        self.create("configmaps", {"metadata": {"name": "x"}, "data": {"a": "1"}})
        pod = self.pod(
            [{"name": "cfg", "configMap": {"name": "x"}}],
            [{"name": "cfg", "mountPath": "/etc/a", "subPath": "a"}],
        )
        self.prepare(pod)
        (mount,) = self.manager.mounts(pod, pod["spec"]["containers"][0])
        target = self.volume(pod, "configmap", "cfg")
        self.assertEqual(mount.host_path, str(target / os.readlink(target / DATA) / "a"))
        self.assertTrue(mount.readonly)

    def test_sub_path_may_not_leave_its_volume(self) -> None:
        pod = self.pod(
            [{"name": "scratch", "emptyDir": {}}],
            [{"name": "scratch", "mountPath": "/a", "subPath": "out"}],
        )
        self.prepare(pod)
        scratch = self.volume(pod, "empty-dir", "scratch")
        (scratch / "out").symlink_to("/etc")
        with self.assertRaises(VolumeError) as raised:
            self.manager.mounts(pod, pod["spec"]["containers"][0])
        self.assertEqual(
            str(raised.exception), f'subpath "/etc" not within volume path "{scratch}"'
        )

    def test_mount_of_a_volume_not_set_up(self) -> None:
        pod = self.pod([{"name": "nope", "emptyDir": {}}], [{"name": "nope", "mountPath": "/x"}])
        with self.assertRaises(VolumeError) as raised:
            self.manager.mounts(pod, pod["spec"]["containers"][0])
        self.assertEqual(
            str(raised.exception), 'cannot find volume "nope" to mount into container "main"'
        )

    def test_cleanup_unmounts_and_removes_the_pod_dir(self) -> None:
        host = Path(self.mktemp()).absolute()
        self.create("secrets", {"metadata": {"name": "s"}, "data": {}})
        pod = self.pod(
            [
                {"name": "sec", "secret": {"secretName": "s"}},
                {"name": "h", "hostPath": {"path": str(host), "type": "DirectoryOrCreate"}},
            ]
        )
        self.prepare(pod)
        self.successResultOf(Deferred.fromCoroutine(self.manager.cleanup(pod["metadata"]["uid"])))
        self.assertEqual(self.mounter.mounted, {})
        self.assertFalse((self.root / "pods" / pod["metadata"]["uid"]).exists())
        self.assertTrue(host.is_dir())

    def test_default_root_is_kubes(self) -> None:
        self.assertEqual(KUBELET_ROOT, "/var/lib/kubelet")


class NodeAuthorizerTests(VolumeTestCase):
    """What the node may read and ask for, for its volumes: only what its pods use."""

    def ask(self, method: bytes, path: str, body: object = None) -> int:
        return self.api.request(method, path, body, token="node")[0]

    def test_claims_volumes_and_tokens_of_its_pods(self) -> None:
        for name in ("data", "other"):
            self.create(
                "persistentvolumeclaims",
                {
                    "metadata": {"name": name},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                },
            )
            self.server.create(
                "",
                "persistentvolumes",
                {
                    "metadata": {"name": f"pv-{name}"},
                    "spec": {
                        "capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": "/srv"},
                        "claimRef": {"namespace": "default", "name": name},
                    },
                },
            )
        self.create("serviceaccounts", {"metadata": {"name": "robot"}})
        pod = self.pod([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}])
        claims = "/api/v1/namespaces/default/persistentvolumeclaims/"
        self.assertEqual(self.ask(b"GET", claims + "data"), 200)
        self.assertEqual(self.ask(b"GET", claims + "other"), 403)
        self.assertEqual(self.ask(b"GET", "/api/v1/persistentvolumes/pv-data"), 200)
        self.assertEqual(self.ask(b"GET", "/api/v1/persistentvolumes/pv-other"), 403)
        accounts = "/api/v1/namespaces/default/serviceaccounts/"
        bound = {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": pod["metadata"]["uid"]}
        body = {"spec": {"boundObjectRef": bound}}
        self.assertEqual(self.ask(b"POST", accounts + "default/token", body), 201)
        self.assertEqual(self.ask(b"POST", accounts + "robot/token", body), 403)

    def test_node_tokens_are_bound_to_its_pods(self) -> None:
        """NodeRestriction: a kubelet's token is bound to one of its own pods, by uid."""
        mine = self.pod([])
        other = self.create(
            "pods",
            {
                "metadata": {"name": "q"},
                "spec": {"nodeName": "node-b", "containers": [{"name": "c", "image": "i"}]},
            },
        )
        path = "/api/v1/namespaces/default/serviceaccounts/default/token"

        def ask(reference: Object | None) -> tuple[int, str]:
            body = {"spec": {} if reference is None else {"boundObjectRef": reference}}
            code, answer = self.api.request(b"POST", path, body, token="node")
            return code, answer.get("message", "")

        def to(pod: Object, uid: str | None = None) -> Object:
            return {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"] if uid is None else uid,
            }

        forbidden = 'serviceaccounts "default" is forbidden: '
        self.assertEqual(ask(None), (403, forbidden + "node requested token not bound to a pod"))
        self.assertEqual(
            ask(to(mine, "")),
            (403, forbidden + "node requested token with a pod binding without a uid"),
        )
        self.assertEqual(
            ask(to(mine, "u-1")),
            (
                403,
                forbidden + "the UID in the bound object reference (u-1) does not match the UID "
                "in record. The object might have been deleted and then recreated",
            ),
        )
        self.assertEqual(
            ask(to(other)),
            (403, forbidden + "node requested token bound to a pod scheduled on a different node"),
        )
        self.assertEqual(ask(to(mine))[0], 201)


class AtomicWriterTests(SynchronousTestCase):
    def test_refuses_paths_out_of_the_volume(self) -> None:
        target = Path(self.mktemp())
        for path, message in (
            ("/abs", "invalid path: must be relative path: /abs"),
            ("a/../b", "invalid path: must not contain '..': a/../b"),
            ("..x", "invalid path: must not start with '..': ..x"),
        ):
            with self.assertRaises(ValueError) as raised:
                write_payload(target, {path: FileProjection(b"", 0o644)}, 0.0)
            self.assertEqual(str(raised.exception), message)


class FSGroupTests(VolumeTestCase):
    """A pod's fsGroup: its volumes' files get the group, directories setgid."""

    def test_volumes_are_given_to_the_fs_group(self) -> None:
        self.create("configmaps", {"metadata": {"name": "x"}, "data": {"a": "1"}})
        pod = self.pod(
            [{"name": "cfg", "configMap": {"name": "x"}}, {"name": "scratch", "emptyDir": {}}],
            securityContext={"fsGroup": 2345},
        )
        self.prepare(pod)
        scratch = self.volume(pod, "empty-dir", "scratch")
        info = scratch.stat()
        self.assertEqual(info.st_gid, 2345)
        self.assertTrue(info.st_mode & stat.S_ISGID)
        config = self.volume(pod, "configmap", "cfg")
        data = config / os.readlink(config / DATA)
        # Read-only kinds: group-readable files, group-searchable setgid directories.
        self.assertEqual((data / "a").stat().st_gid, 2345)
        self.assertEqual(mode(data / "a"), 0o644)
        self.assertEqual(data.stat().st_mode & 0o7777, 0o2755)
        self.assertEqual(os.lstat(config / "a").st_gid, 2345)
        # A file a container writes later is the group's on the next setup (policy Always).
        (scratch / "late").write_text("x")
        os.chown(scratch / "late", -1, 0)
        os.chmod(scratch / "late", 0o600)
        self.prepare(pod)
        self.assertEqual(((scratch / "late").stat().st_gid, mode(scratch / "late")), (2345, 0o660))

    def test_on_root_mismatch_leaves_a_volume_whose_root_is_the_groups(self) -> None:
        pod = self.pod(
            [{"name": "scratch", "emptyDir": {}}],
            securityContext={"fsGroup": 2345, "fsGroupChangePolicy": "OnRootMismatch"},
        )
        self.prepare(pod)
        scratch = self.volume(pod, "empty-dir", "scratch")
        (scratch / "late").write_text("x")
        os.chown(scratch / "late", -1, 0)  # (setgid gave it the group: a container took it back)
        self.prepare(pod)
        self.assertEqual((scratch / "late").stat().st_gid, 0)
        os.chown(scratch, -1, 0)
        self.prepare(pod)
        self.assertEqual((scratch / "late").stat().st_gid, 2345)
