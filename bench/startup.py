"""
Start-up cost of ``twistd -n k3s-server``: cold start (PKI generated), warm
start (everything reused), and resident memory once it serves, next to the
floor of the stack it stands on: a bare ``twistd web`` TLS server, measured
in the same run on the same machine.  The server runs its node with
``--container-runtime none``: containerd (a process of its own, and the
kubelet's gRPC client) is not included.

    python bench/startup.py [--runs N] [--quick]

Every process runs on loopback and is ended by its own PID.
"""

from __future__ import annotations

import argparse
import http.client
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
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the checkout (tests.support) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.net import free_port

TWISTD = str(Path(sys.executable).parent / "twistd")
HOST = "127.0.0.9"
START_TIMEOUT = 60.0


def answers(port: int, path: str, expected: bytes) -> bool:
    context = ssl._create_unverified_context()
    connection = http.client.HTTPSConnection(HOST, port, context=context, timeout=1.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().read() == expected
    except OSError:
        return False
    finally:
        connection.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def timed_start(
    argv: list[str], cwd: Path, port: int, path: str, expected: bytes
) -> tuple[float, float]:
    """Seconds from spawn until C{path} answers, and RSS (MiB) one second later."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("K3S_")}
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, cwd=cwd, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while not answers(port, path, expected):
            if process.poll() is not None:
                raise RuntimeError(f"{argv[3]} exited with {process.returncode}")
            if time.perf_counter() - started > START_TIMEOUT:
                raise RuntimeError(f"{argv[3]} did not answer within {START_TIMEOUT}s")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        time.sleep(1.0)
        return elapsed, rss_mib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def k3stw_server(work: Path, port: int) -> list[str]:
    config = work / "config.yaml"
    config.write_text("")
    return [
        TWISTD, "-n", "--pidfile=", "k3s-server", "--config", str(config),
        "--data-dir", str(work / "data"), "--bind-address", HOST,
        "--https-listen-port", str(port), "--write-kubeconfig", str(work / "k3s.yaml"),
        "--node-identity-dir", str(work / "node"),
        # Not the default 10250, which another server on this machine may hold.
        "--kubelet-arg", f"port={free_port('127.0.0.1')}",
        # Without containerd: the control plane and its node, never containers here.
        "--container-runtime", "none",
    ]  # fmt: skip


def twistd_web(work: Path, port: int) -> list[str]:
    """The peer: Twisted's own TLS web server, with the certificate k3stw made."""
    tls = work / "data" / "server" / "tls"
    (work / "www").mkdir(exist_ok=True)
    (work / "www" / "ping").write_bytes(b"pong")
    listen = (
        f"ssl:{port}:interface={HOST}:privateKey={tls / 'serving-kube-apiserver.key'}"
        f":certKey={tls / 'serving-kube-apiserver.crt'}"
    )
    return [TWISTD, "-n", "--pidfile=", "web", "--listen", listen, "--path", str(work / "www")]


def measure(runs: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": [], "peer": []}
    for _ in range(runs):
        work = Path(tempfile.mkdtemp(prefix="k3stw-bench-"))
        try:
            port = free_port(HOST)
            argv = k3stw_server(work, port)
            results["cold"].append(timed_start(argv, work, port, "/ping", b"pong"))
            results["warm"].append(timed_start(argv, work, port, "/ping", b"pong"))
            peer = twistd_web(work, port)
            results["peer"].append(timed_start(peer, work, port, "/ping", b"pong"))
        finally:
            shutil.rmtree(work)
    return results


def table(results: dict[str, list[tuple[float, float]]]) -> str:
    rows = [
        ("k3stw server, cold start (PKI generated)", results["cold"]),
        ("k3stw server, warm start (PKI reused)", results["warm"]),
        ("peer: bare `twistd web` TLS server", results["peer"]),
    ]
    describe: Callable[[list[float]], str] = lambda xs: (  # noqa: E731
        f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"
    )
    lines = [
        "| start | to /ping answering, s: median (min-max) | RSS after start, MiB: median |",
        "|---|---|---|",
    ]
    for name, samples in rows:
        seconds = [s for s, _ in samples]
        rss = [r for _, r in samples]
        lines.append(f"| {name} | {describe(seconds)} | {statistics.median(rss):.1f} |")
    return "\n".join(lines)


def bytecode() -> str:
    """Whether the servers load k3stw from cached bytecode, as an installed wheel does."""
    probe = (
        "import importlib.util, os, k3stw.tap.server as m; "
        "print(os.path.exists(importlib.util.cache_from_source(m.__file__)))"
    )
    # Asked of a child, which finds k3stw where twistd will (not this checkout's path).
    cached = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, check=True
    ).stdout.strip()
    if cached == "True":
        return "k3stw loaded from cached bytecode"
    return "k3stw compiled from source at every start (no __pycache__: PYTHONDONTWRITEBYTECODE?)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="starts of each kind (default 5)")
    parser.add_argument("--quick", action="store_true", help="two runs, for CI")
    arguments = parser.parse_args()
    runs = 2 if arguments.quick else arguments.runs
    print(
        f"# k3stw start-up, {runs} runs, {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    )
    print(f"# {bytecode()}")
    print(table(measure(runs)))
    print("\nGoals (issue 2): warm start under 1 s, RSS under 60 MB.")


if __name__ == "__main__":
    main()
