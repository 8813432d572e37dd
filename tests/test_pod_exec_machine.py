"""
kubectl reaches running pods for real: ``k3s-server --container-runtime
containerd`` in a test machine, kubectl in the machine, the server's own
node's kubelet relaying each upgrade to containerd's streaming server.

- ``kubectl exec -i`` with stdin piped: the process reads it to its end, and a
  non-zero exit is kubectl's exit status with kube's message;
- ``kubectl exec -it`` under a pseudo-terminal: the process has a TTY;
- ``kubectl cp`` into the pod and back out (tar through exec's stdin, stdout);
- ``kubectl attach -i`` to a container that reads its stdin once;
- ``kubectl port-forward`` and an HTTP request through it to busybox httpd;
- exec and port-forward to a pod on an agent in a second machine, through
  the agent's tunnel.

kubectl's own websockets are answered by the API server, which speaks
SPDY/3.1 to the kubelet: exec and attach's ``v5.channel.k8s.io`` channels
translated to SPDY streams, port-forward's ``SPDY/3.1+portforward.k8s.io``
unwrapped into a plain SPDY upgrade; kubectl never falls back to SPDY itself.
Needs what tests/test_pods_machine.py needs.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.images import BUSYBOX_IMAGE, INDEX_HTML, write_airgap_images
from tests.support.machines import machines
from tests.test_pods_machine import KUBECTL, PodsInAMachine

IMAGE = f"--image={BUSYBOX_IMAGE} --image-pull-policy=IfNotPresent"


class PodStreamsInAMachine(PodsInAMachine):
    def run_status(self, command: str, timeout: float = 60) -> tuple[int, str, str]:
        """C{command}'s exit status, stdout and stderr, on the machine."""
        errors = self.work / "stderr"
        out = self.machine.run(f'{{ {command} ; }} 2>{errors}; echo "status=$?"', timeout=timeout)
        text, _, status = out.rstrip("\n").rpartition("status=")
        return int(status), text, errors.read_text()

    def forwarded_page(self, fetches: int = 1) -> str:
        """The web pod's page, C{fetches} times, through ``kubectl port-forward``."""
        log = self.work / "port-forward.log"
        status, out, err = self.run_status(
            f"{KUBECTL} port-forward -v=8 pod/web 18080:80 >{log} 2>&1 & pf=$!;"
            f" for i in $(seq 100); do grep -q Forwarding {log} && break; sleep 0.1; done;"
            + " busybox wget -q -O - http://127.0.0.1:18080/;" * fetches
            + " kill $pf",
            timeout=60,
        )
        self.assertEqual(status, 0, out + err + log.read_text())
        return out

    def start_web(self) -> int:
        """The server and its node, and a Running busybox httpd pod ``web``; the node's pid."""
        node = self.start_server("server.log")
        self.kubectl(f"run web {IMAGE} --command -- /bin/httpd -f -p 80 -h /www")
        self.until(
            "web Running",
            lambda: (self.pod("web").get("status") or {}).get("phase") == "Running",
        )
        return node


class ExecInAMachineTests(PodStreamsInAMachine):
    def test_exec_stdin_exit_code_tty_and_cp(self) -> None:
        self.start_web()
        status, out, err = self.run_status(
            f"printf 'one\\ntwo\\n' | {KUBECTL} exec -i web -- sh -c 'cat; echo err >&2; exit 3'"
        )
        self.assertEqual((status, out), (3, "one\ntwo\n"), err)
        self.assertEqual(err, "err\ncommand terminated with exit code 3\n")
        # kubectl's websocket (v5) is answered by the API server: no fallback to SPDY.
        status, out, err = self.run_status(f"{KUBECTL} exec -v=8 web -- echo hi")
        self.assertEqual((status, out), (0, "hi\n"), err)
        self.assertIn("Sec-Websocket-Protocol: v5.channel.k8s.io", err)
        self.assertIn("Response Status: 101 Switching Protocols", err)
        self.assertNotIn("POST https://", err)

        # Under a pseudo-terminal (script's), the process gets a TTY.
        inner = f"{KUBECTL} exec -it web -- sh -c 'tty; test -t 0 && echo stdin is a tty'"
        status, out, err = self.run_status(
            f"script -qec {shlex.quote(inner)} /dev/null </dev/null", timeout=60
        )
        self.assertEqual(status, 0, out + err)
        self.assertIn("/dev/pts/", out)
        self.assertIn("stdin is a tty\r\n", out)

        # kubectl cp: a directory into the pod and back.
        source = self.work / "cp-in"
        (source / "sub").mkdir(parents=True)
        (source / "a.txt").write_text("alpha\n")
        (source / "sub" / "b.bin").write_bytes(bytes(range(256)) * 64)
        self.kubectl(f"cp {source} web:/tmp/copied")
        self.assertEqual(self.kubectl("exec web -- cat /tmp/copied/a.txt"), "alpha\n")
        back = self.work / "cp-out"
        self.kubectl(f"cp web:/tmp/copied {back}")
        self.assertEqual((back / "a.txt").read_text(), "alpha\n")
        self.assertEqual((back / "sub" / "b.bin").read_bytes(), bytes(range(256)) * 64)

        # No such container, no such pod: kube's refusals reach kubectl.
        status, out, err = self.run_status(f"{KUBECTL} exec web -c nope -- true")
        self.assertNotEqual(status, 0)
        self.assertIn("container nope is not valid for pod web", err)

    def test_attach_and_port_forward(self) -> None:
        self.start_web()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "once"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "once",
                        "image": BUSYBOX_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "stdin": True,
                        "stdinOnce": True,
                        "command": ["sh", "-c", "read line; echo got $line"],
                    }
                ],
            },
        }
        manifest = self.work / "once.json"
        manifest.write_text(json.dumps(pod))
        self.kubectl(f"apply -f {manifest}")
        self.until(
            "once Running",
            lambda: (self.pod("once").get("status") or {}).get("phase") == "Running",
        )
        status, out, err = self.run_status(f"echo hello | {KUBECTL} attach -i once", timeout=60)
        self.assertEqual(status, 0, out + err)
        self.assertIn("got hello\n", out)

        self.assertEqual(self.forwarded_page(fetches=2), INDEX_HTML.decode() * 2)
        forwarded = (self.work / "port-forward.log").read_text()
        self.assertIn("Forwarding from 127.0.0.1:18080 -> 80", forwarded)
        self.assertIn("Handling connection for 18080", forwarded)
        # The SPDY-in-websocket tunnel was answered: no fallback to a plain SPDY upgrade.
        self.assertIn("Sec-Websocket-Protocol: SPDY/3.1+portforward.k8s.io", forwarded)
        self.assertIn("Response Status: 101 Switching Protocols", forwarded)
        self.assertNotIn("POST https://", forwarded)


class ServerAndAgent(PodStreamsInAMachine):
    """A server (node m0) in C{self.machine} and an agent (node m1) in a second machine."""

    timeout = 300

    def setUp(self) -> None:
        self.work = Path(self.mktemp()).absolute()
        self.machine, self.agent = machines(self, self.work / "machines", 2)
        for machine in (self.machine, self.agent):
            machine.boot(runtime=True)
            write_airgap_images(machine.rancher / "k3s" / "agent" / "images")

    def start_nodes(self, server_flags: str = "") -> subprocess.Popen[bytes]:
        """The server (with C{server_flags}) and the agent, its log C{agent_log}; its process."""
        self.launch(
            f"k3s-server --node-name m0 --kubelet-arg cgroup-root={self.machine.cgroup_parent}"
            f"{' ' + server_flags if server_flags else ''}",
            "server.log",
            "Successfully registered node m0",
        )
        return self.start_agent()

    def start_agent(self) -> subprocess.Popen[bytes]:
        """The agent (node m1) joining the server, its log C{agent_log}; its process."""
        token = self.machine.run("cat /var/lib/rancher/k3s/server/token").strip()
        self.agent_log = self.work / "agent.log"
        process = self.agent.spawn(
            f"exec {Path(sys.executable).with_name('twistd')} -n --pidfile= k3s-agent"
            f" --server https://{self.machine.address}:6443 --token {token} --node-name m1"
            f" --kubelet-arg cgroup-root={self.agent.cgroup_parent}",
            self.agent_log,
        )

        self.addCleanup(self.stop_agent, process)
        return process

    def stop_agent(self, process: subprocess.Popen[bytes]) -> int:
        """SIGTERM to the agent's twistd (nsenter's child), which exits; nsenter's status."""
        if process.poll() is None:
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
            for child in children.split():
                os.kill(int(child), signal.SIGTERM)
        return process.wait(30)


class StreamsThroughTheTunnelTests(ServerAndAgent):
    """The pod on an agent in a second machine: the streams cross the agent's tunnel."""

    def test_exec_and_port_forward_to_an_agents_pod(self) -> None:
        self.start_nodes()
        agent_log = self.agent_log
        self.until(
            "the agent's tunnel",
            lambda: "Remotedialer connected" in agent_log.read_text(errors="replace"),
            timeout=90,
        )
        overrides = json.dumps({"spec": {"nodeName": "m1"}})
        self.kubectl(
            f"run web {IMAGE} --overrides='{overrides}' --command -- /bin/httpd -f -p 80 -h /www"
        )
        self.until(
            "web Running on m1",
            lambda: (self.pod("web").get("status") or {}).get("phase") == "Running",
            timeout=90,
        )
        self.assertEqual(self.pod("web")["spec"]["nodeName"], "m1")
        status, out, err = self.run_status(
            f"echo through | {KUBECTL} exec -i web -- sh -c 'cat; hostname; exit 5'"
        )
        self.assertEqual((status, out), (5, "through\nweb\n"), err)
        self.assertIn("command terminated with exit code 5", err)
        self.assertEqual(self.forwarded_page(), INDEX_HTML.decode())
