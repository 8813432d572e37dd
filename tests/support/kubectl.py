"""
The real kubectl against a real ``twistd -n k3s-server``: one server for a
test (L{KubectlServer}) or for a whole test class (L{KubectlServerCase}).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.twistd import Twistd, k3s_server

KUBECTL = "/usr/bin/kubectl"


def kubectl_env(root: Path) -> dict[str, str]:
    """kubectl's environment for the admin of the server under C{root}, and no one else's."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))},
        "KUBECONFIG": str(root / "k3s.yaml"),
        "KUBECACHEDIR": str(root / "cache"),
    }


def run_kubectl(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


def start_ready_server(case: SynchronousTestCase, root: Path, host: str) -> Twistd:
    """A server on C{host} (a loopback address) whose files are under C{root}, ready for kubectl."""
    port = free_port(host)
    server = k3s_server(case, root, host, port)
    server.start()
    server.wait_for_answer(host, port)
    env = kubectl_env(root)
    deadline = time.monotonic() + 30
    while run_kubectl(env, "get", "--raw", "/readyz").returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError("server never became ready:\n" + server.output)
        time.sleep(0.1)
    return server


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
        server = start_ready_server(case, root, host)
        return cls(case, server, kubectl_env(root))

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.env, *args, stdin=stdin)

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


class KubectlServerCase(SynchronousTestCase):
    """
    A server on C{host} for the whole class, ready before the first test, and kubectl
    pointed at it through the admin kubeconfig the server writes under C{root}.
    """

    host: ClassVar[str]
    server: ClassVar[Twistd]
    root: ClassVar[Path]
    env: ClassVar[dict[str, str]]

    @classmethod
    def setUpClass(cls) -> None:
        cls.root = Path(tempfile.mkdtemp(prefix=f"k3stw-{cls.__name__}-"))
        cls.server = start_ready_server(SynchronousTestCase(), cls.root, cls.host)
        cls.env = kubectl_env(cls.root)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    @classmethod
    def kubectl_raw(cls, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_kubectl(cls.env, *args, stdin=stdin)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """Run kubectl; its stdout, failing the test on a non-zero exit."""
        return self.kubectl_ok(*args, stdin=stdin).stdout

    def kubectl_ok(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run kubectl, failing the test on a non-zero exit."""
        result = self.kubectl_raw(*args, stdin=stdin)
        self.assertEqual(result.returncode, 0, f"kubectl {' '.join(args)}:\n{result.stderr}")
        return result

    def kubectl_fails(self, *args: str, stdin: str | None = None) -> str:
        result = self.kubectl_raw(*args, stdin=stdin)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        return result.stderr
