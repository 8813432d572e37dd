"""
The real kubectl against a real ``k3s-server`` started for one test: what a
user types, with its output.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.twistd import Twistd, k3s_server

KUBECTL = "/usr/bin/kubectl"


@dataclass
class KubectlServer:
    """A running server (stopped with the test) and kubectl configured for it as admin."""

    case: SynchronousTestCase
    server: Twistd
    env: dict[str, str]

    @classmethod
    def start(cls, case: SynchronousTestCase, host: str) -> KubectlServer:
        """Start a server on C{host} (a loopback address) and wait until kubectl reaches it."""
        root = Path(case.mktemp()).absolute()
        port = free_port(host)
        server = k3s_server(case, root, host, port)
        server.start()
        server.wait_for_ping(host, port)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))},
            "KUBECONFIG": str(root / "k3s.yaml"),
            "KUBECACHEDIR": str(root / "cache"),
        }
        found = cls(case, server, env)
        deadline = time.monotonic() + 30
        while found.run("get", "--raw", "/readyz").returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError("server never became ready:\n" + server.output)
            time.sleep(0.1)
        return found

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL, *args], input=stdin, capture_output=True, text=True, env=self.env, timeout=60
        )

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """kubectl's stdout, failing the test on a non-zero exit."""
        result = self.run(*args, stdin=stdin)
        self.case.assertEqual(result.returncode, 0, f"kubectl {' '.join(args)}:\n{result.stderr}")
        return result.stdout

    def kubectl_fails(self, *args: str, stdin: str | None = None) -> str:
        """kubectl's stderr, failing the test unless it exits non-zero."""
        result = self.run(*args, stdin=stdin)
        self.case.assertNotEqual(result.returncode, 0, result.stdout)
        return result.stderr
