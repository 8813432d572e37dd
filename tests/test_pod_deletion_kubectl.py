"""
Graceful pod deletion with the real kubectl against a real server whose own
node runs no container runtime (``--container-runtime none``): the API server
marks a bound pod Terminating, the node's kubelet confirms the deletion, and
``kubectl delete`` (which waits) completes; an unbound pod goes at once.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from tests.support.kubectl import KUBECTL, kubectl_env, run_kubectl, start_ready_server
from tests.support.twistd import Twistd

HOST = "127.0.0.183"


class PodDeletionKubectlTests(SynchronousTestCase):
    server: ClassVar[Twistd]
    root: ClassVar[Path]
    env: ClassVar[dict[str, str]]
    node: ClassVar[str]

    @classmethod
    def setUpClass(cls) -> None:
        cls.root = Path(SynchronousTestCase().mktemp()).absolute()
        cls.server = start_ready_server(SynchronousTestCase(), cls.root, HOST)
        cls.env = kubectl_env(cls.root)
        deadline = time.monotonic() + 60
        while not (names := run_kubectl(cls.env, "get", "nodes", "-o", "name").stdout.split()):
            if time.monotonic() > deadline:
                raise AssertionError("the server's node never registered")
            time.sleep(0.2)
        cls.node = names[0].removeprefix("node/")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = run_kubectl(self.env, *args, stdin=stdin)
        self.assertEqual(result.returncode, 0, f"kubectl {' '.join(args)}:\n{result.stderr}")
        return result.stdout

    def create(self, name: str, bound: bool = True) -> None:
        spec: dict[str, object] = {"containers": [{"name": "main", "image": "busybox"}]}
        if bound:
            spec["nodeName"] = self.node
        else:
            spec["schedulerName"] = "nobody"  # no scheduler binds it
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
        self.kubectl("create", "-f", "-", stdin=json.dumps(pod))

    def watch(self, name: str) -> tuple[subprocess.Popen[str], Path]:
        """``kubectl get pod <name> -w``, writing to a file, once it has shown the pod."""
        out = Path(self.mktemp())
        args = [
            "get",
            "pod",
            name,
            "-w",
            "--output-watch-events",
            "-o",
            "json",
        ]
        with out.open("w") as sink:
            watching = subprocess.Popen(
                [KUBECTL, *args], stdout=sink, stderr=subprocess.STDOUT, text=True, env=self.env
            )
        self.addCleanup(self.stop, watching)
        deadline = time.monotonic() + 30
        while '"ADDED"' not in out.read_text():
            self.assertLess(time.monotonic(), deadline, out.read_text())
            time.sleep(0.1)
        return watching, out

    def stop(self, process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            process.terminate()
            process.wait(10)

    def events(self, out: Path) -> list[tuple[str, int | None, str]]:
        """The watch's events until DELETED: type, deletionGracePeriodSeconds, phase."""
        deadline = time.monotonic() + 30
        while '"DELETED"' not in out.read_text():
            self.assertLess(time.monotonic(), deadline, out.read_text())
            time.sleep(0.1)
        text, decoder, found = out.read_text(), json.JSONDecoder(), []
        at = 0
        while text[at:].strip():
            at += len(text[at:]) - len(text[at:].lstrip())
            event, at = decoder.raw_decode(text, at)
            meta = event["object"]["metadata"]
            grace = meta.get("deletionGracePeriodSeconds")
            found.append((event["type"], grace, event["object"]["status"]["phase"]))
        return found

    def test_deleting_a_bound_pod_shows_it_terminating_and_completes(self) -> None:
        self.create("bound")
        _, out = self.watch("bound")
        started = time.monotonic()
        deleted = self.kubectl("delete", "pod", "bound")
        self.assertEqual(deleted, 'pod "bound" deleted\n')
        self.assertLess(time.monotonic() - started, 30)  # the kubelet, not the grace, ended it
        self.assertEqual(
            run_kubectl(self.env, "get", "pod", "bound").stderr,
            'Error from server (NotFound): pods "bound" not found\n',
        )
        events = self.events(out)
        # Terminating for the pod's own 30 s at most; its kubelet writes it Failed (stopped),
        # then deletes it with grace 0 (kube-apiserver writes that mark before removing it).
        self.assertEqual(
            events,
            [
                ("ADDED", None, "Pending"),
                ("MODIFIED", 30, "Pending"),
                ("MODIFIED", 30, "Failed"),
                ("MODIFIED", 0, "Failed"),
                ("DELETED", 0, "Failed"),
            ],
        )

    def test_a_longer_grace_period_is_confirmed_by_the_kubelet(self) -> None:
        self.create("slow")
        _, out = self.watch("slow")
        started = time.monotonic()
        self.kubectl("delete", "pod", "slow", "--grace-period=60")
        self.assertLess(time.monotonic() - started, 30)
        events = self.events(out)
        graces = [grace for kind, grace, _ in events if kind != "ADDED"]
        self.assertEqual(graces, [60, 60, 0, 0])

    def test_an_unbound_pod_goes_at_once(self) -> None:
        self.create("pending", bound=False)
        _, out = self.watch("pending")
        self.assertEqual(self.kubectl("delete", "pod", "pending"), 'pod "pending" deleted\n')
        events = self.events(out)
        self.assertEqual(
            events,
            [("ADDED", None, "Pending"), ("MODIFIED", 0, "Pending"), ("DELETED", 0, "Pending")],
        )

    def test_force_deletion_goes_at_once(self) -> None:
        self.create("forced")
        _, out = self.watch("forced")
        result = run_kubectl(self.env, "delete", "pod", "forced", "--grace-period=0", "--force")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn('pod "forced" force deleted', result.stdout)
        events = self.events(out)
        self.assertEqual(
            events,
            [("ADDED", None, "Pending"), ("MODIFIED", 0, "Pending"), ("DELETED", 0, "Pending")],
        )
