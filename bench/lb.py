"""
Client-side load balancer benchmark: the agent's TCP balancer
(``k3stw.loadbalancer``) next to haproxy and next to a direct connection, in
one run: bulk throughput (1 and 64 streams), connections per second, the
latency it adds to a small request/response, and failover time when the
active server is killed.

    python bench/lb.py [--quick] [--output docs/lb-benchmark.md]

Every process runs on loopback (127.0.0.80-89), in its own process: the
backends (asyncio, one per address), haproxy (``mode tcp``, one thread) and
the k3stw balancer (a ``LoadBalancerService`` on the epoll reactor). The load
generator is this process, on blocking sockets. Every loop is bounded by a
count and a time limit; every process is ended by its own PID.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the checkout (tests.support) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The sibling benchmark's helpers (a script's own directory is on sys.path).
from api import Processes, machine, percentile

from tests.support.net import free_port

HAPROXY = "/usr/sbin/haproxy"
SCRIPT = os.path.abspath(__file__)
K3STW_HOST = "127.0.0.80"
HAPROXY_HOST = "127.0.0.81"
#: Distinct addresses, so that the balancers see distinct hosts.
BACKEND_HOSTS = ("127.0.0.82", "127.0.0.83", "127.0.0.84")
START_LIMIT = 30.0
#: What one read or write of the load generator and the backends moves.
CHUNK = 1024 * 1024
#: The small request/response of the latency and connection-rate cells.
MESSAGE = b"x" * 64

# The backend's protocol: the first byte of a connection chooses what it does.
SINK = b"S"  # count every byte until end of stream, then answer the count (8 bytes) and close
ECHO = b"E"  # send back every byte
NAME = b"N"  # answer the backend's name and close


@dataclass(frozen=True)
class Budget:
    """How much each cell may do: it stops at its count or after C{seconds}."""

    bulk_one_mib: int
    streams: int
    bulk_each_mib: int
    connections: int
    connection_clients: int
    round_trips: int
    repeats: int
    failovers: int
    seconds: float


FULL = Budget(
    bulk_one_mib=1024,
    streams=64,
    bulk_each_mib=16,
    connections=5000,
    connection_clients=4,
    round_trips=20_000,
    repeats=3,
    failovers=5,
    seconds=8.0,
)
QUICK = Budget(
    bulk_one_mib=128,
    streams=64,
    bulk_each_mib=2,
    connections=500,
    connection_clients=4,
    round_trips=2000,
    repeats=1,
    failovers=1,
    seconds=3.0,
)


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# The backend: asyncio, in its own process


class Backend(asyncio.BufferedProtocol):
    """One connection to a backend (see L{SINK}, L{ECHO}, L{NAME})."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.mode = b""
        self.count = 0
        self.buffer = memoryview(bytearray(CHUNK))
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        assert self.transport is not None
        start = 0
        if not self.mode:
            self.mode, start = bytes(self.buffer[:1]), 1
            if self.mode == NAME:
                self.transport.write(self.name)
                self.transport.close()
                return
        if self.mode == ECHO:
            self.transport.write(bytes(self.buffer[start:nbytes]))
        else:
            self.count += nbytes - start

    def eof_received(self) -> bool:
        assert self.transport is not None
        if self.mode == SINK:
            self.transport.write(self.count.to_bytes(8, "big"))
        return False  # asyncio closes the transport once the answer is written


def serve_backend(name: str, address: str) -> None:
    async def serve() -> None:
        host, port = split(address)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Backend(name.encode()), host, port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# The k3stw balancer, in its own process


def serve_balancer(address: str, servers: Sequence[str]) -> None:
    from twisted.internet import reactor as _reactor

    from k3stw.loadbalancer.service import LoadBalancerService

    reactor: Any = _reactor
    host, port = split(address)
    service = LoadBalancerService(reactor, f"https://{servers[0]}", port=port, bind_host=host)
    service.update_servers(servers)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


# Starting and stopping the other processes


def haproxy_config(address: str, servers: Sequence[str]) -> str:
    """
    haproxy's equivalent of the k3stw balancer: TCP pass-through, every
    connection to the first server, no health checks; a failed connect is
    retried once on the next server (``option redispatch``, ``balance first``
    avoids the server that just failed).
    """
    lines = [
        "global",
        "    maxconn 4096",
        "    nbthread 1",
        "defaults",
        "    mode tcp",
        "    timeout connect 10s",
        "    timeout client 60s",
        "    timeout server 60s",
        f"    retries {len(servers)}",
        "    option redispatch 1",
        "frontend balancer",
        f"    bind {address}",
        "    default_backend servers",
        "backend servers",
        "    balance first",
    ]
    lines += [f"    server s{i} {server}" for i, server in enumerate(servers)]
    return "\n".join(lines) + "\n"


@dataclass
class Cluster:
    """Backends on L{BACKEND_HOSTS}, and balancers in front of them."""

    processes: Processes
    backends: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    balancers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], address: str) -> subprocess.Popen[bytes]:
        process, _ = self.processes.spawn(name, argv)
        wait_listening(address, process)
        return process

    def start_backends(self) -> list[str]:
        addresses = []
        for number, host in enumerate(BACKEND_HOSTS):
            address = f"{host}:{free_port(host)}"
            argv = [sys.executable, SCRIPT, "--backend", f"b{number}", address]
            self.backends[address] = self.start(f"backend-{host}", argv, address)
            addresses.append(address)
        return addresses

    def start_k3stw(self, servers: Sequence[str]) -> str:
        address = f"{K3STW_HOST}:{free_port(K3STW_HOST)}"
        argv = [sys.executable, SCRIPT, "--balancer", address, *servers]
        self.balancers["k3stw"] = self.start("k3stw", argv, address)
        return address

    def start_haproxy(self, servers: Sequence[str]) -> str:
        address = f"{HAPROXY_HOST}:{free_port(HAPROXY_HOST)}"
        config = self.processes.workdir / "haproxy.cfg"
        config.write_text(haproxy_config(address, servers))
        argv = [HAPROXY, "-f", str(config), "-db"]
        self.balancers["haproxy"] = self.start("haproxy", argv, address)
        return address

    def stop_all(self) -> None:
        for process, _ in list(self.processes.running):
            self.processes.stop(process)
        self.backends.clear()
        self.balancers.clear()


def wait_listening(address: str, process: subprocess.Popen[bytes]) -> None:
    """Return once C{address} accepts connections (L{run} prints the logs of a failure)."""
    deadline = time.perf_counter() + START_LIMIT
    while process.poll() is None and time.perf_counter() < deadline:
        try:
            socket.create_connection(split(address), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{process.args!r}: nothing listens on {address} (exit {process.poll()})")


# The load generator


def connect(address: str, mode: bytes, timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(split(address), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(mode)
    return sock


def receive(sock: socket.socket, size: int) -> bytes:
    """Exactly C{size} bytes, or fewer if the peer closes."""
    parts = []
    while size > 0:
        part = sock.recv(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def bulk(address: str, streams: int, each_mib: int, seconds: float) -> float:
    """
    MB/s through C{address}: C{streams} connections each upload C{each_mib}
    MiB (or what they can in C{seconds}), timed from when all are connected
    until the last backend has confirmed what it received.
    """
    chunk = memoryview(bytes(CHUNK))
    ready = threading.Barrier(streams + 1, timeout=START_LIMIT)

    def upload() -> int:
        with connect(address, SINK) as sock:
            ready.wait()
            deadline = time.perf_counter() + seconds
            for _ in range(each_mib):
                sock.sendall(chunk)
                if time.perf_counter() > deadline:
                    break
            sock.shutdown(socket.SHUT_WR)
            return int.from_bytes(receive(sock, 8), "big")

    with ThreadPoolExecutor(streams) as pool:
        uploads = [pool.submit(upload) for _ in range(streams)]
        ready.wait()
        started = time.perf_counter()
        received = sum(u.result() for u in uploads)
        elapsed = time.perf_counter() - started
    return received / elapsed / 1e6


def connection_rate(address: str, count: int, clients: int, seconds: float) -> float:
    """Connections per second: open, one 64-byte echo, close, from C{clients} threads."""
    deadline = time.perf_counter() + seconds
    left = iter(range(count))
    lock = threading.Lock()

    def client() -> int:
        done = 0
        while time.perf_counter() < deadline:
            with lock:
                if next(left, None) is None:
                    break
            with connect(address, ECHO, timeout=5.0) as sock:
                sock.sendall(MESSAGE)
                if receive(sock, len(MESSAGE)) != MESSAGE:
                    raise RuntimeError(f"{address} echoed something else")
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(lambda _: client(), range(clients)))
    return done / (time.perf_counter() - started)


def round_trips(addresses: dict[str, str], count: int, seconds: float) -> dict[str, list[float]]:
    """
    Round-trip times (s) of a 64-byte echo on one persistent connection per
    path, the paths taking turns so that the machine's noise falls on all alike.
    """
    samples: dict[str, list[float]] = {path: [] for path in addresses}
    sockets = {path: connect(address, ECHO) for path, address in addresses.items()}
    try:
        deadline = time.perf_counter() + seconds
        for turn in range(count + 200):  # 200 to warm up: caches, the balancer's dial
            for path, sock in sockets.items():
                before = time.perf_counter()
                sock.sendall(MESSAGE)
                if receive(sock, len(MESSAGE)) != MESSAGE:
                    raise RuntimeError(f"{addresses[path]} echoed something else")
                if turn >= 200:
                    samples[path].append(time.perf_counter() - before)
            if time.perf_counter() > deadline:
                break
    finally:
        for sock in sockets.values():
            sock.close()
    return samples


def name_of(address: str, timeout: float = 1.0) -> str:
    """The name of the backend that answers through C{address} ('' on any failure)."""
    try:
        with connect(address, NAME, timeout=timeout) as sock:
            return receive(sock, 64).decode()
    except OSError:
        return ""


def failover(cluster: Cluster, address: str, seconds: float) -> float:
    """
    Seconds from killing the backend that serves C{address} to the first new
    connection through C{address} answered by another backend.
    """
    names = {f"b{n}": a for n, a in enumerate(cluster.backends)}
    active = name_of(address)
    if active not in names:
        raise RuntimeError(f"{address} answered {active!r} before the kill")
    victim = cluster.backends[names[active]]
    killed = time.perf_counter()
    victim.kill()
    deadline = killed + seconds
    while time.perf_counter() < deadline:
        answer = name_of(address)
        if answer and answer != active:
            return time.perf_counter() - killed
        time.sleep(0.001)
    raise RuntimeError(f"{address}: no other backend answered within {seconds:g} s of the kill")


# The run

PATHS = ("direct", "haproxy", "k3stw")


@dataclass
class Results:
    """Each figure by path (L{PATHS})."""

    bulk_one: dict[str, list[float]] = field(default_factory=dict)
    bulk_many: dict[str, list[float]] = field(default_factory=dict)
    rate: dict[str, list[float]] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)
    failover: dict[str, list[float]] = field(default_factory=dict)
    balancer_cpu: dict[str, float] = field(default_factory=dict)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def say(step: str) -> None:
    print(f"-- {step}", file=sys.stderr, flush=True)


def steady_state(cluster: Cluster, budget: Budget, results: Results) -> None:
    """Every cell but failover, on one set of processes, path after path."""
    backends = cluster.start_backends()
    addresses = {
        "direct": backends[0],
        "haproxy": cluster.start_haproxy(backends),
        "k3stw": cluster.start_k3stw(backends),
    }
    cpu = {path: cpu_seconds(p.pid) for path, p in cluster.balancers.items()}
    for repeat in range(1, budget.repeats + 1):
        for path, address in addresses.items():
            say(f"{path}: bulk and connections, {repeat} of {budget.repeats}")
            one = bulk(address, 1, budget.bulk_one_mib, budget.seconds)
            results.bulk_one.setdefault(path, []).append(one)
            many = bulk(address, budget.streams, budget.bulk_each_mib, budget.seconds)
            results.bulk_many.setdefault(path, []).append(many)
            rate = connection_rate(
                address, budget.connections, budget.connection_clients, budget.seconds
            )
            results.rate.setdefault(path, []).append(rate)
    say("latency, the paths taking turns")
    results.latency = round_trips(addresses, budget.round_trips, budget.seconds)
    for path, process in cluster.balancers.items():
        results.balancer_cpu[path] = cpu_seconds(process.pid) - cpu[path]
    cluster.stop_all()


def failovers(cluster: Cluster, budget: Budget, results: Results) -> None:
    """Failover through each balancer, each time on fresh backends and a fresh balancer."""
    for path, start in (("haproxy", cluster.start_haproxy), ("k3stw", cluster.start_k3stw)):
        say(f"{path}: failover")
        for _ in range(budget.failovers):
            try:
                address = start(cluster.start_backends())
                results.failover.setdefault(path, []).append(
                    failover(cluster, address, budget.seconds)
                )
            finally:
                cluster.stop_all()


def run(budget: Budget) -> Results:
    results = Results()
    cluster = Cluster(Processes(Path(tempfile.mkdtemp(prefix="k3stw-bench-lb-"))))
    try:
        steady_state(cluster, budget, results)
        failovers(cluster, budget, results)
    except Exception:
        for process, log in cluster.processes.running:
            tail = log.read_text(errors="replace")[-2000:]
            print(f"-- {process.args!r} log ends:\n{tail}", file=sys.stderr)
        raise
    finally:
        cluster.processes.close()
    return results


# The report


def ratio(results: dict[str, list[float]]) -> float:
    return statistics.median(results["k3stw"]) / statistics.median(results["haproxy"])


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def table(results: Results, budget: Budget) -> str:
    p50 = {path: percentile(samples, 0.50) for path, samples in results.latency.items()}
    p99 = {path: percentile(samples, 0.99) for path, samples in results.latency.items()}
    added50 = {path: p50[path] - p50["direct"] for path in PATHS}
    added99 = {path: p99[path] - p99["direct"] for path in PATHS}
    failover_ms = {
        path: f"{statistics.median(times) * 1000:.1f} (max {max(times) * 1000:.1f})"
        for path, times in results.failover.items()
    }
    bulk_goal = min(ratio(results.bulk_one), ratio(results.bulk_many))
    slowest_failover = max(results.failover["k3stw"])
    runs = f"median of {budget.repeats}"

    def median(figures: dict[str, list[float]]) -> list[str]:
        return [f"{statistics.median(figures[path]):,.0f}" for path in PATHS]

    rows = [
        (f"bulk, 1 stream of {budget.bulk_one_mib} MiB, MB/s ({runs})",
         median(results.bulk_one), f"{ratio(results.bulk_one):.0%}",
         f">= 40% of haproxy: {verdict(bulk_goal >= 0.4)}"),
        (f"bulk, {budget.streams} streams of {budget.bulk_each_mib} MiB each, MB/s ({runs})",
         median(results.bulk_many), f"{ratio(results.bulk_many):.0%}", ""),
        (f"connections/s, {budget.connection_clients} clients: open, 64 B echo, close ({runs})",
         median(results.rate), f"{ratio(results.rate):.0%}", ""),
        ("round trip, 64 B echo, p50 µs", [us(p50[path]) for path in PATHS], "", ""),
        ("round trip, 64 B echo, p99 µs", [us(p99[path]) for path in PATHS], "", ""),
        ("added over direct, p50 µs", ["-"] + [us(added50[p]) for p in PATHS[1:]], "", ""),
        ("added over direct, p99 µs", ["-"] + [us(added99[p]) for p in PATHS[1:]], "",
         f"< 1,000 µs: {verdict(added99['k3stw'] < 1e-3)}"),
        (f"failover, kill to first answer, ms: median (max) of {budget.failovers}",
         ["-", failover_ms["haproxy"], failover_ms["k3stw"]], "",
         f"< 1 s: {verdict(slowest_failover < 1.0)}"),
        ("balancer CPU, bulk to latency, s", ["-"] + [
            f"{results.balancer_cpu[p]:.1f}" for p in PATHS[1:]], "", ""),
    ]  # fmt: skip
    lines = [
        "| measure | direct | haproxy | k3stw | k3stw / haproxy | goal |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, figures, compared, goal in rows:
        lines.append(f"| {name} | " + " | ".join(figures) + f" | {compared} | {goal} |")
    return "\n".join(lines)


def haproxy_version() -> str:
    answer = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True, check=True)
    return answer.stdout.split(" - ")[0].strip()


#: How the figures are made, above the table.
METHOD = (
    "Written by `python bench/lb.py --output docs/lb-benchmark.md`. Three paths to the "
    "same asyncio backends: direct, through haproxy (`mode tcp`, `balance first`, "
    "`option redispatch`, no health checks, `nbthread 1`) and through the k3stw "
    "balancer (`LoadBalancerService`, epoll reactor, no health check), each balancer "
    "in its own process with three backends on distinct loopback addresses. The load "
    "generator is one Python process on blocking sockets (threads for parallel "
    "streams and clients), on the same cores. Bulk: each stream uploads to a sink that "
    "answers the byte count at end of stream, timed from all connected to the last "
    "count. Round trips: one persistent connection per path, the paths taking turns. "
    "Failover: a fresh balancer and backends, the active backend killed (SIGKILL), "
    "then a new connection every millisecond until one is answered by another backend."
)


def report(results: Results, budget: Budget, quick: bool, seconds: float) -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "--quick" if quick else "full"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    about = (
        f"Machine: {machine()}; {haproxy_version()}; load average at the end {load}\n"
        f"Date: {stamp}; mode: {mode}, {seconds:.0f} s in all; "
        f"cells stop at their count or {budget.seconds:g} s"
    )
    return f"# Load balancer benchmark\n\n{METHOD}\n\n{about}\n\n{table(results, budget)}\n"


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts, for CI")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--backend", nargs=2, metavar=("NAME", "HOST:PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--balancer", nargs="+", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.backend:
        serve_backend(*args.backend)
        return
    if args.balancer:
        serve_balancer(args.balancer[0], args.balancer[1:])
        return
    budget = QUICK if args.quick else FULL
    # A SIGTERM ends the run through the finally blocks that stop its processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    started = time.perf_counter()
    results = run(budget)
    text = report(results, budget, args.quick, time.perf_counter() - started)
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
