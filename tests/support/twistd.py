"""Real ``twistd`` processes for integration tests: started with ``-n``, ended by their PID."""

from __future__ import annotations

import atexit
import base64
import http.client
import os
import resource
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port

#: The twistd of the environment running the tests, where the wheel is installed.
TWISTD = str(Path(sys.executable).parent / "twistd")
#: The ``k3s`` command of the same environment (its console script runs the same module).
K3S = (sys.executable, "-m", "k3stw.cli")
START_TIMEOUT = 30.0
#: Seconds a k3stw process may take to end after SIGTERM.  A graceful stop
#: takes well under one; past this, systemd's unit would end in SIGKILL.
STOP_TIMEOUT = 5.0

#: Every process started and not yet seen to end.
_started: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    """
    Kill what is still running at exit: processes whose caller never got to
    stop them, because stopping another one failed first (L{Twistd.stop}).
    """
    for process in _started:
        if process.poll() is None:
            process.kill()
            process.wait()


def clean_environment() -> dict[str, str]:
    """This environment without K3S_* variables, which would change what a test asks for."""
    return {k: v for k, v in os.environ.items() if not k.startswith("K3S_")}


def https_get(
    host: str, port: int, path: str, cafile: Path | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """One blocking GET: verified against C{cafile} (hostname included), or unverified."""
    if cafile is None:
        context = ssl._create_unverified_context()
    else:
        context = ssl.create_default_context(cafile=str(cafile))
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def admin_context(root: Path) -> ssl.SSLContext:
    """TLS as the admin of the L{k3s_server} under C{root}: its kubeconfig's certificate."""
    import yaml

    config = yaml.safe_load((root / "k3s.yaml").read_text())
    user = config["users"][0]["user"]
    cert = root / "admin.pem"
    cert.write_bytes(
        base64.b64decode(user["client-certificate-data"])
        + base64.b64decode(user["client-key-data"])
    )
    context = ssl.create_default_context(cafile=str(root / "data/server/tls/server-ca.crt"))
    context.load_cert_chain(str(cert))
    return context


def admin_request(
    root: Path, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    """
    One blocking request as the admin of the L{k3s_server} under C{root} (its
    kubeconfig's client certificate, the server CA); the status and the JSON answer.
    """
    import json

    import yaml

    config = yaml.safe_load((root / "k3s.yaml").read_text())
    context = admin_context(root)
    host, port = config["clusters"][0]["cluster"]["server"].removeprefix("https://").rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    try:
        connection.request(method, path, body, {"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


class Twistd:
    """
    One ``twistd -n <plugin> ...`` process, its output in a file.

    Registered with the test for cleanup, so it never outlives the test.
    """

    def __init__(
        self, case: SynchronousTestCase, workdir: Path, *args: str, memory_limit: int = 0
    ) -> None:
        """
        :param memory_limit: if given, the process's address space limit in
            bytes (C{RLIMIT_AS}): an allocation past it fails in the process.
        """
        self.workdir = workdir
        self.args = args
        self.memory_limit = memory_limit
        self.log = workdir / f"twistd-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        case.addCleanup(self.stop)

    def start(self) -> Twistd:
        node = self.args[:1] in (("k3s-server",), ("k3s-agent",))
        if node and not any(arg.startswith("--container-runtime") for arg in self.args):
            raise AssertionError(
                "a node started on this machine must run no containers: "
                "pass --container-runtime none (or run it in a test machine)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", *self.args],
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=clean_environment(),
                preexec_fn=self._limit if self.memory_limit else None,
            )
        _started.add(self.process)
        return self

    def _limit(self) -> None:
        resource.setrlimit(resource.RLIMIT_AS, (self.memory_limit, self.memory_limit))

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_exit(self, timeout: float = START_TIMEOUT) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until C{text} appears in the output; fail if the process exits first."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited ({self.process.returncode}):\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout}s:\n{self.output}")
            time.sleep(0.05)

    def wait_for_answer(
        self,
        host: str,
        port: int,
        path: str = "/ping",
        answer: bytes = b"pong",
        timeout: float = START_TIMEOUT,
    ) -> None:
        """Wait until C{path} answers 200 with C{answer} over TLS."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited ({self.process.returncode}):\n{self.output}")
            try:
                if https_get(host, port, path, timeout=1.0) == (200, answer):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no {path} within {timeout}s:\n{self.output}")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """
        SIGTERM, and the exit status once the process has ended.

        A process still running C{timeout} seconds after SIGTERM did not stop
        gracefully: it is killed, so that it does not outlive the test, and
        the test fails with the end of its output.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                _started.discard(process)
                raise AssertionError(
                    f"twistd {self.args[0]} was still running {timeout}s after SIGTERM and "
                    f"needed SIGKILL; its output ends:\n{self.output[-4000:]}"
                ) from None
        _started.discard(process)
        addresses = [line for line in self.output.splitlines() if "object at 0x" in line]
        if addresses:
            raise AssertionError(
                f"twistd {self.args[0]} logged lines a user cannot act on (object addresses):\n"
                + "\n".join(addresses[:5])
            )
        return process.returncode


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file below C{directory} with its bytes (links as their target)."""
    found: dict[str, bytes] = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_symlink():
            found[name] = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            found[name] = path.read_bytes()
    return found


def k3s_server(
    case: SynchronousTestCase, root: Path, host: str, port: int, *extra: str, memory_limit: int = 0
) -> Twistd:
    """
    A ``k3s-server`` process (not started) on C{host}:C{port} whose every file
    is under C{root}: an empty ``config.yaml``, ``data/``, the node identity in
    ``node/`` and the admin kubeconfig ``k3s.yaml``.  It advertises C{host}, so
    that agents learn a loopback address, never the machine's own.
    """
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yaml"
    if not config.exists():
        config.write_text("")
    return Twistd(
        case, root, "k3s-server",
        "--config", str(config),
        "--data-dir", str(root / "data"),
        "--node-identity-dir", str(root / "node"),
        "--bind-address", host,
        "--advertise-address", host,
        "--https-listen-port", str(port),
        "--write-kubeconfig", str(root / "k3s.yaml"),
        # Its kubelet API on a port of its own: many nodes share this host.
        "--kubelet-arg", f"port={free_port('127.0.0.1')}",
        # No containers, CNI or iptables in this machine's own namespaces.
        "--container-runtime", "none",
        *extra,
        memory_limit=memory_limit,
    )  # fmt: skip
