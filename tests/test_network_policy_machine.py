"""
NetworkPolicies enforced for real: ``k3s-server --container-runtime
containerd`` in a test machine, three busybox pods on its node (an httpd
``web``, a ``client`` and an ``other``), busybox nc from inside the pods.

The client reaches web at first; a deny-all ingress policy on web refuses
it (kube-router's REJECT, at once), while the node itself still reaches web;
an allow rule for the client's label on port 80 lets the client through and
still refuses ``other``; deleting the policies opens web to everyone again.
The machine's filter table has kube-router's chains and jumps meanwhile.

Needs what tests/test_pods_machine.py needs, and ``ipset``.
"""

from __future__ import annotations

import time

from tests.support.images import BUSYBOX_IMAGE, INDEX_HTML
from tests.test_pods_machine import KUBECTL, PodsInAMachine

IMAGE = f"--image={BUSYBOX_IMAGE} --image-pull-policy=IfNotPresent"


def policy(name: str, ingress: list[dict[str, object]]) -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


class NetworkPolicyInAMachineTests(PodsInAMachine):
    timeout = 300

    def fetch_from(self, pod: str, ip: str) -> tuple[int, str]:
        """
        C{pod}'s HTTP request to web: the exit status and output of busybox
        ``nc -w 2`` (the static busybox ``wget`` crashes inside the image).
        """
        request = 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 2 ' + f"{ip} 80"
        out = self.machine.run(
            f"{KUBECTL} exec {pod} -- sh -c '{request}' 2>&1; echo status=$?", timeout=30
        )
        text, _, status = out.rstrip("\n").rpartition("status=")
        return int(status), text

    def reaches(self, pod: str, ip: str, expected: bool) -> None:
        """Wait (the controller syncs after each change) until C{pod} reaches web or is refused."""
        deadline = time.monotonic() + 30
        while True:
            status, text = self.fetch_from(pod, ip)
            if (status == 0) == expected:
                if expected:
                    self.assertTrue(text.endswith("\r\n\r\n" + INDEX_HTML.decode()), text)
                return
            if time.monotonic() > deadline:
                self.fail(f"{pod} -> web: status {status}, {text!r}, wanted reachable={expected}")
            time.sleep(0.5)

    def test_deny_then_allow_by_label_then_open_again(self) -> None:
        self.start_server("server.log")
        self.kubectl(f"run web {IMAGE} --labels app=web --command -- /bin/httpd -f -p 80 -h /www")
        for name in ("client", "other"):
            self.kubectl(f"run {name} {IMAGE} --labels app={name} --command -- /bin/sleep 3600")

        def running() -> bool:
            phases = [
                (self.pod(n).get("status") or {}).get("phase") for n in ("web", "client", "other")
            ]
            return phases == ["Running"] * 3

        self.until("the pods Running", running)
        ip = self.pod("web")["status"]["podIP"]
        self.reaches("client", ip, True)

        self.apply(policy("deny", []))
        self.reaches("client", ip, False)
        # Refused by the REJECT rule, not left to time out.
        started = time.monotonic()
        status, text = self.fetch_from("client", ip)
        self.assertNotEqual(status, 0)
        self.assertIn("refused", text)
        self.assertLess(time.monotonic() - started, 2)
        # The node itself still reaches its pod (probes come from there).
        self.assertEqual(self.fetch(ip), INDEX_HTML.decode())
        saved = self.machine.run("iptables-save -t filter")
        self.assertIn(":KUBE-NWPLCY-DEFAULT", saved)
        self.assertIn(":KUBE-POD-FW-", saved)
        self.assertRegex(saved, r":KUBE-NWPLCY-[A-Z2-7]{16} ")
        inputs = [line for line in saved.splitlines() if line.startswith("-A INPUT ")]
        self.assertRegex(inputs[0], r'"kube-router netpol - [A-Z2-7]{16}" -j KUBE-ROUTER-INPUT')
        self.assertIn("KUBE-DST-", self.machine.run("ipset list -n"))

        allow = {
            "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
            "ports": [{"port": 80}],
        }
        self.apply(policy("allow-client", [allow]))
        self.reaches("client", ip, True)
        self.reaches("other", ip, False)

        self.kubectl("delete networkpolicy deny allow-client")
        self.reaches("other", ip, True)
        self.reaches("client", ip, True)
        saved = self.machine.run("iptables-save -t filter")
        self.assertNotRegex(saved, r":KUBE-NWPLCY-[A-Z2-7]{16} ")
        self.assertNotIn("KUBE-DST-", self.machine.run("ipset list -n"))
