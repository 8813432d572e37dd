"""How k3stw runs under systemd: the units in etc/ and the readiness notice they wait for."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from k3stw.lifecycle import notify_systemd

SOURCE = Path(__file__).resolve().parents[1]


class NotifyTests(SynchronousTestCase):
    def listen(self, address: str) -> socket.socket:
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(address)
        receiver.settimeout(5)
        return receiver

    def test_ready_reaches_the_notify_socket(self) -> None:
        # A short path: a socket's may not exceed 107 bytes.
        directory = tempfile.mkdtemp(prefix="k3stw-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "notify")
        receiver = self.listen(path)
        self.patch(os, "environ", {**os.environ, "NOTIFY_SOCKET": path})
        notify_systemd("READY=1")
        self.assertEqual(receiver.recv(64), b"READY=1")

    def test_an_abstract_socket(self) -> None:
        name = f"k3stw-test-{os.getpid()}"
        receiver = self.listen("\0" + name)
        self.patch(os, "environ", {**os.environ, "NOTIFY_SOCKET": "@" + name})
        notify_systemd("READY=1")
        self.assertEqual(receiver.recv(64), b"READY=1")

    def test_nothing_without_systemd(self) -> None:
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})
        notify_systemd("READY=1")


class UnitTests(SynchronousTestCase):
    def test_the_units_run_the_readmes_install(self) -> None:
        """Each unit starts the twistd of the virtualenv the README installs, and waits
        for its readiness notice."""
        readme = (SOURCE / "README.md").read_text()
        (venv,) = set(re.findall(r"sudo python3 -m venv (\S+)", readme))
        for role in ("k3s-server", "k3s-agent"):
            unit = (SOURCE / "etc" / f"{role}.service").read_text()
            self.assertIn(f"\nExecStart={venv}/bin/twistd --nodaemon {role}\n", unit)
            self.assertIn("\nType=notify\n", unit)
