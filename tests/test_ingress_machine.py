"""
The Ingress controller for real: a server (m0) and an agent (m1), each in
its own test machine with containerd, flannel's vxlan between them; busybox
httpd pods behind two Services, one Ingress with host and path rules, a TLS
Secret, and clients inside the machines (tests/support/ingressclient.py):

- ``site.test/a/`` reaches the ``alpha`` Service and ``site.test/b/`` the
  ``beta`` one, on both nodes' port 80; ``x.beta.test`` (a wildcard rule)
  ``beta``; a request no rule matches gets Traefik's 404; the Ingress's
  status lists both nodes' addresses;
- on port 443 the SNI name ``site.test`` gets the Secret's certificate and
  the page, another name the controller's default certificate;
- the ``alpha`` pod replaced by another (the new one Ready first, the old
  one deleted with a preStop pause, as a rolling update does) while a client
  sends request after request: not one fails, and both pods answered;
- a websocket echo server, run as a process in m1 behind a selector-less
  Service and a hand-written EndpointSlice, answers through the Ingress;
- the node's access log and its metrics (the kubelet's ``/metrics/ingress``,
  through the API server) tell of the requests.

Needs what tests/test_flannel_machine.py needs.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from k3stw.pki.certs import Usage, new_ca, new_leaf
from tests.support.images import BUSYBOX_IMAGE
from tests.support.machines import Machine
from tests.test_flannel_machine import TwoMachinesWithFlannel

CLIENT = Path(__file__).parent / "support" / "ingressclient.py"
PYTHON = sys.executable
WS_PORT = 8765


def web_pod(name: str, app: str, node: str) -> dict[str, Any]:
    """A busybox httpd pod of C{app} on C{node}: its pages (``/``, ``/a/``, ``/b/``) say C{name}."""
    script = (
        "mkdir -p /srv/a /srv/b && for d in /srv /srv/a /srv/b; do echo $NAME > $d/index.html;"
        " done && exec httpd -f -p 80 -h /srv"
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "web",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", script],
                    "env": [{"name": "NAME", "value": name}],
                    "ports": [{"containerPort": 80}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1},
                    # As a rolling update wants: the endpoint is withdrawn before the server stops.
                    "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
                }
            ],
        },
    }


def service(name: str, selector: dict[str, str] | None = None, target: int = 80) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": 80, "targetPort": target}]}
    if selector:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def backend(name: str) -> dict[str, Any]:
    return {"service": {"name": name, "port": {"number": 80}}}


INGRESS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "Ingress",
    "metadata": {"name": "site"},
    "spec": {
        "tls": [{"hosts": ["site.test"], "secretName": "site-tls"}],
        "rules": [
            {
                "host": "site.test",
                "http": {
                    "paths": [
                        {"path": "/a", "pathType": "Prefix", "backend": backend("alpha")},
                        {"path": "/b", "pathType": "Prefix", "backend": backend("beta")},
                    ]
                },
            },
            {
                "host": "*.beta.test",
                "http": {
                    "paths": [{"path": "/", "pathType": "Prefix", "backend": backend("beta")}]
                },
            },
            {
                "host": "ws.test",
                "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend("ws")}]},
            },
        ],
    },
}


class IngressAcrossTwoMachines(TwoMachinesWithFlannel):
    def client(self, machine: Machine, *args: str, timeout: float = 30) -> str:
        return machine.run(f"{PYTHON} {CLIENT} {' '.join(args)}", timeout=timeout)

    def answers(self, machine: Machine, ip: str, host: str, path: str, expected: str) -> bool:
        try:
            return self.client(machine, "get", ip, host, path) == expected
        except AssertionError:
            return False

    def end(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    def apply(self, manifest: dict[str, Any]) -> None:
        path = self.work / f"{manifest['kind']}-{manifest['metadata']['name']}.json"
        path.write_text(json.dumps(manifest))
        self.kubectl(f"apply -f {path}")

    def ready(self, pod: str) -> bool:
        conditions = (self.pod(pod).get("status") or {}).get("conditions") or ()
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def status_addresses(self) -> list[str]:
        found = json.loads(self.kubectl("get ingress site -o json"))
        return sorted(
            i["ip"] for i in found.get("status", {}).get("loadBalancer", {}).get("ingress", [])
        )

    def tls_secret(self) -> str:
        """The ``site-tls`` Secret, made by ``kubectl create secret tls``; its cert's SHA-256."""
        now = datetime.datetime.now(datetime.UTC)
        pair = new_leaf(new_ca("test-ca", now), "site.test", Usage.SERVER, now)
        (self.work / "tls.crt").write_bytes(pair.certificate_pem)
        (self.work / "tls.key").write_bytes(pair.key_pem)
        self.kubectl(
            f"create secret tls site-tls --cert {self.work}/tls.crt --key {self.work}/tls.key"
        )
        return hashlib.sha256(pair.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()

    def test_routes_tls_replacement_under_load_and_websockets(self) -> None:
        self.start_nodes()
        self.until("m1 registered", self.agent_registered, 90)
        self.until(
            "both nodes annotated", lambda: self.annotated("m0") and self.annotated("m1"), 60
        )
        server, agent = self.machine.address, self.agent.address
        self.apply(web_pod("alpha-1", "alpha", "m1"))
        self.apply(web_pod("beta-1", "beta", "m0"))
        self.apply(service("alpha", {"app": "alpha"}))
        self.apply(service("beta", {"app": "beta"}))
        fingerprint = self.tls_secret()
        self.apply(INGRESS)
        self.assertIn("traefik", self.kubectl("get ingress site"))
        for pod in ("alpha-1", "beta-1"):
            self.until(f"{pod} Ready", partial(self.ready, pod), 90)

        # Host and path rules, on both nodes, from the other machine.
        for machine, ip in ((self.agent, server), (self.machine, agent)):
            self.until(
                f"site.test/a/ through {ip}",
                partial(self.answers, machine, ip, "site.test", "/a/", "200 alpha-1\n"),
                60,
            )
            self.assertEqual(self.client(machine, "get", ip, "site.test", "/b/"), "200 beta-1\n")
            self.assertEqual(self.client(machine, "get", ip, "x.beta.test", "/"), "200 beta-1\n")
            self.assertEqual(
                self.client(machine, "get", ip, "nothing.test", "/"), "404 404 page not found\n"
            )
        both = sorted([server, agent])
        self.until("the Ingress status", lambda: self.status_addresses() == both, 60)

        # TLS: the Secret's certificate for its SNI name, the default one for others.
        self.assertEqual(
            self.client(self.agent, "tls", server, "site.test", "/a/"),
            f"{fingerprint} 200 alpha-1\n",
        )
        other = self.client(self.agent, "tls", server, "other.test", "/").split()[0]
        self.assertNotEqual(other, fingerprint)

        # The alpha pod replaced while a client loops: no request fails.
        stop = self.work / "stop-loop"
        loop = self.agent.reading(f"{PYTHON} {CLIENT} loop {server} site.test /a/ {stop}")
        self.addCleanup(self.end, loop)
        time.sleep(2)
        self.apply(web_pod("alpha-2", "alpha", "m0"))
        self.until("alpha-2 Ready", lambda: self.ready("alpha-2"), 90)
        self.kubectl("delete pod alpha-1 --wait=true --timeout=60s")
        time.sleep(2)
        stop.touch()
        out, _ = loop.communicate(timeout=60)
        result = json.loads(out)
        self.assertEqual(result["failures"], [], result)
        self.assertEqual(sorted(result["bodies"]), ["alpha-1", "alpha-2"], result)

        # A websocket, to a process in m1 behind a selector-less Service.
        listening = self.agent.reading(f"{PYTHON} {CLIENT} ws-server {agent} {WS_PORT}")
        self.addCleanup(self.end, listening)
        assert listening.stdout is not None
        self.assertEqual(listening.stdout.readline(), b"listening\n")
        self.apply(service("ws", target=WS_PORT))
        self.apply(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "ws-1", "labels": {"kubernetes.io/service-name": "ws"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": WS_PORT, "protocol": "TCP"}],
                "endpoints": [{"addresses": [agent], "conditions": {"ready": True}}],
            }
        )
        self.until(
            "the websocket echo",
            lambda: (
                self.client(self.machine, "ws-client", server, "ws.test", "hello") == "101 hello\n"
            ),
            30,
        )

        # The node's access log and metrics tell of them.
        log = self.log.read_text(errors="replace")
        self.assertIn('"GET /a/ HTTP/1.1" 200', log)
        self.assertIn('"default/site"', log)
        metrics = self.kubectl("get --raw /api/v1/nodes/m0/proxy/metrics/ingress")
        self.assertIn(
            'k3stw_ingress_requests_total{backend="default/beta:80",code="200",'
            'ingress="default/site",method="GET"}',
            metrics,
        )
