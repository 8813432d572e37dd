"""
The node's containerd without containerd: its generated config (k3s's CRI
settings, the oom_score_adj restriction only where the capability is
missing, the template that replaces it), the airgap archives it imports, and
L{NodeRuntime}'s start, image import and stop on an in-memory process
reactor with the in-memory runtime.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from k3stw.kubelet.containerd import (
    GENERATED,
    ContainerdPaths,
    NodeRuntime,
    RuntimeSettings,
    TemplateError,
    config_text,
    image_archives,
    lacks_cap_sys_resource,
    render_config,
    write_config,
)
from k3stw.kubelet.cri.memory import MemoryRuntime
from tests.support.processes import FakeProcessReactor

#: This kind of machine: every capability but CAP_SYS_RESOURCE (bit 24).
STATUS_WITHOUT = "Name:\tpython3\nCapEff:\t000001ffffffffff\nCapBnd:\t000001fffeffffff\n"
STATUS_WITH = "Name:\tpython3\nCapBnd:\t000001ffffffffff\n"
CRI = "io.containerd.grpc.v1.cri"


class ConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = Path(self.mktemp()).absolute()
        self.paths = ContainerdPaths.of(self.data, self.data / "run")

    def test_k3s_paths(self) -> None:
        paths = ContainerdPaths.of(Path("/var/lib/rancher/k3s"))
        self.assertEqual(
            paths.config, Path("/var/lib/rancher/k3s/agent/etc/containerd/config.toml")
        )
        self.assertEqual(paths.template.name, "config.toml.tmpl")
        self.assertEqual(paths.root, Path("/var/lib/rancher/k3s/agent/containerd"))
        self.assertEqual(paths.endpoint, "unix:///run/k3s/containerd/containerd.sock")
        self.assertEqual(paths.log, Path("/var/lib/rancher/k3s/agent/containerd/containerd.log"))
        self.assertEqual(paths.images, Path("/var/lib/rancher/k3s/agent/images"))

    def test_capability_detection(self) -> None:
        self.assertTrue(lacks_cap_sys_resource(STATUS_WITHOUT))
        self.assertFalse(lacks_cap_sys_resource(STATUS_WITH))
        self.assertFalse(lacks_cap_sys_resource("Name:\tx\n"))

    def test_cri_settings(self) -> None:
        config = tomllib.loads(render_config(self.paths, "rancher/mirrored-pause:3.6", True))
        self.assertEqual(config["version"], 2)
        self.assertEqual(config["root"], str(self.paths.root))
        self.assertEqual(config["state"], str(self.paths.state))
        self.assertEqual(config["grpc"]["address"], str(self.paths.socket))
        cri = config["plugins"][CRI]
        self.assertEqual(cri["sandbox_image"], "rancher/mirrored-pause:3.6")
        self.assertEqual(
            (cri["stream_server_address"], cri["stream_server_port"]), ("127.0.0.1", "10010")
        )
        self.assertIs(cri["restrict_oom_score_adj"], True)
        self.assertEqual(cri["containerd"]["snapshotter"], "overlayfs")
        runc = cri["containerd"]["runtimes"]["runc"]
        self.assertEqual(runc["runtime_type"], "io.containerd.runc.v2")
        self.assertIs(runc["options"]["SystemdCgroup"], False)
        self.assertEqual(cri["cni"]["conf_dir"], str(self.paths.cni_conf_dir))
        self.assertEqual(cri["cni"]["bin_dir"], "/usr/lib/cni")

    def test_oom_score_adj_unrestricted_where_capability_exists(self) -> None:
        config = tomllib.loads(render_config(self.paths, "p", False))
        self.assertNotIn("restrict_oom_score_adj", config["plugins"][CRI])

    def test_written_from_proc_status(self) -> None:
        path = write_config(self.paths, "p", STATUS_WITHOUT)
        text = path.read_text()
        self.assertTrue(text.startswith(GENERATED))
        self.assertIn("restrict_oom_score_adj = true", text)
        self.assertTrue(self.paths.state.is_dir())

    def test_template_replaces_the_config(self) -> None:
        self.paths.config_dir.mkdir(parents=True)
        self.paths.template.write_text(
            '{{ template "base" . }}\n[plugins."io.containerd.grpc.v1.cri".x]\n  y = 1\n'
        )
        config = tomllib.loads(write_config(self.paths, "p", STATUS_WITH).read_text())
        self.assertEqual(config["plugins"][CRI]["x"], {"y": 1})
        self.assertEqual(config["plugins"][CRI]["sandbox_image"], "p")
        self.assertEqual(config_text("base", "whole = 1\n"), "whole = 1\n")

    def test_other_template_actions_are_refused(self) -> None:
        with self.assertRaises(TemplateError) as refused:
            config_text("base", "{{ .NodeConfig.AgentConfig.PauseImage }}")
        self.assertIn("config.toml.tmpl", str(refused.exception))

    def test_airgap_archives(self) -> None:
        self.paths.images.mkdir(parents=True)
        for name in ("b.tar", "a.tar.gz", "c.tar.zst", "d.tgz", "e.txt", "f.tar.bz2"):
            (self.paths.images / name).write_bytes(b"")
        found = [p.name for p in image_archives(self.paths.images)]
        self.assertEqual(found, ["a.tar.gz", "b.tar", "c.tar.zst", "d.tgz"])
        self.assertEqual(image_archives(self.data / "missing"), [])


class NodeRuntimeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.data = Path(self.mktemp()).absolute()
        self.memory = MemoryRuntime(self.reactor)
        self.endpoints: list[str] = []
        self.fatal: list[str] = []

    def node_runtime(self, settings: RuntimeSettings, command: str = "containerd") -> NodeRuntime:
        def connect(endpoint: str) -> MemoryRuntime:
            self.endpoints.append(endpoint)
            return self.memory

        return NodeRuntime(
            self.reactor,
            self.data,
            settings,
            run_dir=self.data / "run",
            proc_status=lambda: STATUS_WITHOUT,
            connect=connect,
            fatal=self.fatal.append,
            command=command,
        )

    def test_containerd_started_waited_for_images_imported_and_stopped(self) -> None:
        images = self.data / "agent" / "images"
        images.mkdir(parents=True)
        (images / "pause.tar").write_bytes(b"")
        self.memory.available = False
        node = self.node_runtime(RuntimeSettings(pause_image="example/pause:1"))
        ready = node.when_ready()
        node.startService()
        containerd = self.reactor.last
        config = self.data / "agent" / "etc" / "containerd" / "config.toml"
        self.assertEqual(list(containerd.args), ["containerd", "--config", str(config)])
        self.assertIn('sandbox_image = "example/pause:1"', config.read_text())
        self.assertEqual(self.endpoints, [f"unix://{self.data}/run/containerd/containerd.sock"])

        self.reactor.advance(0.2)
        self.assertNoResult(ready)
        self.memory.available = True
        self.reactor.advance(0.2)
        ctr = self.reactor.last
        self.assertEqual(
            list(ctr.args[:6]),
            [
                "ctr",
                "--address",
                f"{self.data}/run/containerd/containerd.sock",
                "--namespace",
                "k8s.io",
                "images",
            ],
        )
        self.assertEqual(ctr.args[-1], str(images / "pause.tar"))
        self.assertNoResult(ready)
        ctr.exit(0)
        self.reactor.advance(1)
        self.assertIs(self.successResultOf(ready), self.memory)
        self.assertIs(self.successResultOf(node.when_ready()), self.memory)

        stopped = node.stopService()
        assert stopped is not None
        self.assertIn("TERM", containerd.signals)
        containerd.exit(0)
        self.reactor.advance(1)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_existing_endpoint_starts_no_containerd(self) -> None:
        node = self.node_runtime(RuntimeSettings(endpoint="unix:///run/other.sock"))
        node.startService()
        self.assertEqual(self.endpoints, ["unix:///run/other.sock"])
        self.assertIs(self.successResultOf(node.when_ready()), self.memory)
        self.assertIsNone(node.containerd)
        stopped = node.stopService()
        assert stopped is not None
        self.successResultOf(stopped)

    def test_containerd_that_exits_before_answering_is_fatal(self) -> None:
        """
        A containerd that exits before it answered ends the node with one
        line naming its log and the opt-out, instead of a node waiting forever.
        """
        self.memory.available = False
        node = self.node_runtime(RuntimeSettings())
        node.startService()
        self.reactor.advance(0.2)
        self.assertEqual(self.fatal, [])
        self.reactor.last.exit(1)
        self.reactor.advance(0.2)
        log = self.data / "agent" / "containerd" / "containerd.log"
        self.assertEqual(
            self.fatal,
            [
                f"containerd did not start: containerd exited with status 1; see {log}, "
                "name a running CRI socket with --container-runtime-endpoint, or run no "
                "containers on this node with --container-runtime none"
            ],
        )
        stopped = node.stopService()
        assert stopped is not None
        self.reactor.advance(2)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_missing_containerd_is_fatal(self) -> None:
        """A node without containerd says which binary is missing and how to opt out."""
        self.memory.available = False
        missing = str(self.data / "no-containerd")
        node = self.node_runtime(RuntimeSettings(), command=missing)
        node.startService()
        self.reactor.advance(0.2)
        self.assertEqual(
            self.fatal,
            [
                f"containerd did not start: cannot run {missing}: no such file; install "
                "containerd (Debian: apt install containerd), name a running CRI socket with "
                "--container-runtime-endpoint, or run no containers on this node with "
                "--container-runtime none"
            ],
        )
        stopped = node.stopService()
        assert stopped is not None
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_containerd_restarted_after_it_answered_is_not_fatal(self) -> None:
        """Once containerd answered, an exit is the supervisor's to restart."""
        node = self.node_runtime(RuntimeSettings())
        ready = node.when_ready()
        node.startService()
        self.reactor.advance(0.2)
        self.successResultOf(ready)
        self.reactor.last.exit(1)
        self.reactor.advance(2)
        self.assertEqual(self.fatal, [])
        self.assertEqual(len(self.reactor.processes), 2)
        stopped = node.stopService()
        assert stopped is not None
        self.reactor.last.exit(0)
        self.reactor.advance(2)
        self.successResultOf(stopped)
