"""
Resident memory of a small cluster once it runs: a ``twistd -n k3s-server``
(with its own node, as by default) and one ``twistd -n k3s-agent`` joined to
it, measured once both nodes are Ready and the agent's tunnel is connected,
for each tree given, in alternating rounds of the same run.  Both nodes run
with ``--container-runtime none``: containerd, and the kubelet's gRPC client,
are not included (containers never run in this machine's own namespaces).

    python bench/footprint.py [--twistd NAME=PATH ...] [--runs N] [--settle S] [--quick]

C{--twistd} names a tree by the ``twistd`` of its environment (each tree in
its own virtualenv, its k3stw installed from that tree); without it, the
``twistd`` next to this Python. Every process runs on loopback
(127.0.0.60-61, free ports), in its own temporary directory, and is ended by
its own PID: SIGTERM, then SIGKILL past C{STOP_LIMIT} (counted in the table).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the checkout (tests.support) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.net import free_port

SERVER_HOST = "127.0.0.60"
AGENT_HOST = "127.0.0.61"
START_LIMIT = 60.0
#: Seconds a process may take to end after SIGTERM before it is killed.
STOP_LIMIT = 10.0
#: The agent's log line once its tunnel to the server is up.
TUNNEL_UP = "Remotedialer connected"


def status_kib(pid: int, field_name: str) -> int:
    """One C{/proc/<pid>/status} figure (``VmRSS``, ``VmHWM``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for {pid}")


@dataclass
class Process:
    """One ``twistd -n`` child, its output in a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited ({self.popen.returncode}):\n{self.output[-3000:]}"
            )

    def stop(self) -> tuple[float, bool]:
        """SIGTERM; seconds until it ended, and whether it needed SIGKILL."""
        if self.popen.poll() is not None:
            return 0.0, False
        started = time.perf_counter()
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_LIMIT)
            return time.perf_counter() - started, False
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            return time.perf_counter() - started, True


def spawn(name: str, argv: list[str], cwd: Path) -> Process:
    """Start C{argv} in C{cwd} without K3S_* variables, its output to C{name}.log."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("K3S_")}
    log = cwd / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Process(name, popen, log)


def wait_for(condition: Callable[[], bool], what: str, watched: Sequence[Process]) -> None:
    """Poll C{condition} until true; fail if a watched process exits or time runs out."""
    deadline = time.monotonic() + START_LIMIT
    while True:
        for process in watched:
            process.check()
        try:
            if condition():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {START_LIMIT:g} s")
        time.sleep(0.05)


def get(port: int, path: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    """One blocking GET to the server: status and body."""
    connection = http.client.HTTPSConnection(SERVER_HOST, port, context=context, timeout=2.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def ready_nodes(port: int, context: ssl.SSLContext) -> set[str]:
    """The nodes whose Ready condition is True."""
    status, body = get(port, "/api/v1/nodes", context)
    if status != 200:
        return set()
    return {
        node["metadata"]["name"]
        for node in json.loads(body)["items"]
        for condition in node.get("status", {}).get("conditions", [])
        if condition["type"] == "Ready" and condition["status"] == "True"
    }


@dataclass
class Sample:
    """One round of one tree: KiB figures and seconds."""

    agent_rss: int
    agent_hwm: int
    server_rss: int
    server_hwm: int
    agent_ready: float
    agent_stop: float
    agent_killed: bool
    server_stop: float
    server_killed: bool


def one_round(twistd: str, settle: float) -> Sample:
    """A server and one agent from C{twistd}, measured C{settle} s after both are up."""
    root = Path(tempfile.mkdtemp(prefix="k3stw-bench-footprint-"))
    running: list[Process] = []
    try:
        server_dir, agent_dir = root / "server", root / "agent"
        server_dir.mkdir()
        agent_dir.mkdir()
        (root / "config.yaml").write_text("")
        port = free_port(SERVER_HOST)
        server = spawn(
            "server",
            [
                twistd, "-n", "--pidfile=", "k3s-server", "--config", str(root / "config.yaml"),
                "--data-dir", str(server_dir / "data"),
                "--node-identity-dir", str(server_dir / "node"), "--node-name", "server",
                "--bind-address", SERVER_HOST, "--advertise-address", SERVER_HOST,
                "--https-listen-port", str(port),
                "--write-kubeconfig", str(server_dir / "k3s.yaml"),
                # Not the default 10250, which another server on this machine may hold.
                "--kubelet-arg", f"port={free_port('127.0.0.1')}",
                "--container-runtime", "none",
            ],
            server_dir,
        )  # fmt: skip
        running.append(server)
        tls = server_dir / "data" / "server" / "tls"
        wait_for(lambda: (tls / "client-admin.key").exists(), "certificates", running)
        admin = ssl.create_default_context(cafile=str(tls / "server-ca.crt"))
        admin.load_cert_chain(tls / "client-admin.crt", tls / "client-admin.key")
        wait_for(lambda: get(port, "/v1-k3s/readyz", admin)[0] == 200, "server ready", running)
        token = (server_dir / "data" / "server" / "token").read_text().strip()

        started = time.perf_counter()
        agent = spawn(
            "agent",
            [
                twistd, "-n", "--pidfile=", "k3s-agent", "--config", str(root / "config.yaml"),
                "--data-dir", str(agent_dir / "data"),
                "--node-identity-dir", str(agent_dir / "node"),
                "--node-name", "agent", "--node-ip", AGENT_HOST,
                "--server", f"https://{SERVER_HOST}:{port}", "--token", token,
                "--lb-server-port", str(free_port("127.0.0.1")),
                "--kubelet-arg", f"port={free_port('127.0.0.1')}",
                "--container-runtime", "none",
            ],
            agent_dir,
        )  # fmt: skip
        running.append(agent)
        wait_for(lambda: TUNNEL_UP in agent.output, "agent tunnel", running)
        wait_for(
            lambda: ready_nodes(port, admin) >= {"server", "agent"}, "both nodes Ready", running
        )
        agent_ready = time.perf_counter() - started
        time.sleep(settle)
        for process in running:
            process.check()
        figures = {
            (process.name, field_name): status_kib(process.popen.pid, field_name)
            for process in running
            for field_name in ("VmRSS", "VmHWM")
        }
        agent_stop, agent_killed = agent.stop()
        server_stop, server_killed = server.stop()
        return Sample(
            agent_rss=figures["agent", "VmRSS"],
            agent_hwm=figures["agent", "VmHWM"],
            server_rss=figures["server", "VmRSS"],
            server_hwm=figures["server", "VmHWM"],
            agent_ready=agent_ready,
            agent_stop=agent_stop,
            agent_killed=agent_killed,
            server_stop=server_stop,
            server_killed=server_killed,
        )
    finally:
        for process in reversed(running):
            process.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Tree:
    """A tree to measure: its name in the table, its environment's twistd, its rounds."""

    name: str
    twistd: str
    samples: list[Sample] = field(default_factory=list)


def spread(values: Sequence[float], unit: float = 1.0, digits: int = 1) -> str:
    """Median (min-max) of C{values} divided by C{unit}."""
    scaled = [v / unit for v in values]
    return (
        f"{statistics.median(scaled):.{digits}f} "
        f"({min(scaled):.{digits}f}-{max(scaled):.{digits}f})"
    )


def mib(name: str) -> Callable[[list[Sample]], str]:
    """A row of one KiB figure of the samples, in MiB."""
    return lambda samples: spread([getattr(s, name) for s in samples], 1024)


def seconds(name: str) -> Callable[[list[Sample]], str]:
    """A row of one duration of the samples."""
    return lambda samples: spread([getattr(s, name) for s in samples], digits=2)


def killed(name: str) -> Callable[[list[Sample]], str]:
    """A row counting the rounds in which a process needed SIGKILL."""
    return lambda samples: f"{sum(getattr(s, name) for s in samples)} of {len(samples)}"


ROWS: list[tuple[str, Callable[[list[Sample]], str]]] = [
    ("agent RSS, MiB", mib("agent_rss")),
    ("server RSS (its own node + one agent), MiB", mib("server_rss")),
    ("agent peak RSS (VmHWM), MiB", mib("agent_hwm")),
    ("server peak RSS (VmHWM), MiB", mib("server_hwm")),
    ("agent spawn to tunnel up and node Ready, s", seconds("agent_ready")),
    ("agent SIGTERM to exit, s", seconds("agent_stop")),
    ("agent needed SIGKILL", killed("agent_killed")),
    ("server SIGTERM to exit, s", seconds("server_stop")),
    ("server needed SIGKILL", killed("server_killed")),
]


def table(trees: Sequence[Tree]) -> str:
    """One Markdown table: a column per tree."""
    lines = [
        "| median (min-max) | " + " | ".join(tree.name for tree in trees) + " |",
        "|---|" + "---:|" * len(trees),
    ]
    for label, describe in ROWS:
        lines.append(f"| {label} | " + " | ".join(describe(t.samples) for t in trees) + " |")
    return "\n".join(lines)


def parse_tree(text: str) -> Tree:
    """C{NAME=PATH} (or a bare PATH, named by itself) as a L{Tree}."""
    name, separator, path = text.partition("=")
    if not separator:
        name, path = text, text
    if not os.access(path, os.X_OK):
        raise argparse.ArgumentTypeError(f"{path} is not an executable twistd")
    return Tree(name, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--twistd",
        action="append",
        type=parse_tree,
        metavar="NAME=PATH",
        help="a tree to measure, by its environment's twistd (repeat to compare trees)",
    )
    parser.add_argument("--runs", type=int, default=5, help="rounds per tree (default 5)")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds to wait once both are up (default 5)"
    )
    parser.add_argument("--quick", action="store_true", help="two rounds, for CI")
    arguments = parser.parse_args()
    trees: list[Tree] = arguments.twistd or [
        Tree("this tree", str(Path(sys.executable).parent / "twistd"))
    ]
    runs = 2 if arguments.quick else arguments.runs
    for round_number in range(runs):
        # Alternate which tree goes first, so that neither always follows the other.
        order = trees if round_number % 2 == 0 else list(reversed(trees))
        for tree in order:
            sample = one_round(tree.twistd, arguments.settle)
            tree.samples.append(sample)
            print(
                f"-- round {round_number + 1}, {tree.name}: agent {sample.agent_rss / 1024:.1f} "
                f"MiB, server {sample.server_rss / 1024:.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    bytecode = (
        "compiled from source at every start (PYTHONDONTWRITEBYTECODE)"
        if os.environ.get("PYTHONDONTWRITEBYTECODE")
        else "from cached bytecode" + (f" under {sys.pycache_prefix}" if sys.pycache_prefix else "")
    )
    print(
        f"# k3stw footprint: {runs} rounds per tree, {arguments.settle:g} s after both nodes "
        f"are Ready; {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, load average at the end "
        f"{load}; modules {bytecode}"
    )
    print(table(trees))


if __name__ == "__main__":
    main()
