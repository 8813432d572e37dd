"""The real kubectl against one real ``twistd -n k3s-server`` per test class."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.twistd import Twistd, k3s_server

KUBECTL = "/usr/bin/kubectl"


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
        port = free_port(cls.host)
        cls.server = k3s_server(SynchronousTestCase(), cls.root, cls.host, port)
        cls.server.start()
        cls.server.wait_for_ping(cls.host, port)
        cls.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))},
            "KUBECONFIG": str(cls.root / "k3s.yaml"),
            "KUBECACHEDIR": str(cls.root / "cache"),
        }
        deadline = time.monotonic() + 30
        while cls.kubectl_raw("get", "--raw", "/v1-k3s/readyz").returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError("server never became ready:\n" + cls.server.output)
            time.sleep(0.1)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    @classmethod
    def kubectl_raw(cls, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL, *args], input=stdin, capture_output=True, text=True, env=cls.env, timeout=60
        )

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
