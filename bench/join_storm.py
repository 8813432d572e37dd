"""
Join storm: N simulated agents join one real ``twistd -n k3s-server`` and
stay joined, renewing their Leases every 10 s.

    python bench/join_storm.py [--quick] [--client-processes 2] [--output docs/join-storm.md]

Each agent is the real thing minus the container runtime: the handshake of
L{k3stw.agent.join.Handshake} over real TLS (``/cacerts`` twice, the CA hash,
``/v1-k3s/config``, the CA files, two CSRs with the node password, which the
server checks with scrypt), then the kubelet of
L{k3stw.kubelet.service.KubeletService}, which registers the Node and renews
its Lease and status every 10 s over one kept-alive connection.  Every agent
has its own data and identity directory and node name (``storm-0001``...).

The run starts a fresh server for each N on a loopback address in
127.0.0.50-59, then client processes (this file with ``--worker``) that
start joins at a bounded concurrency, and measures:

- joins per second and join latency (handshake start to Node created);
- the server's and the clients' CPU (``/proc/<pid>/stat``, as cores used)
  during the joins and over a hold period, and the server's RSS;
- Lease renewals done during the hold, and at its end how many Leases the
  server holds fresh and how many Nodes it holds Ready.

Every process is stopped by its own PID in a ``finally``; temporary
directories are removed; every wait has a time limit.  ``--quick`` is the
CI mode (20 and 50 agents, a 15 s hold).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):
    # Run as a script: make the checkout (tests.support) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.net import free_port

TWISTD = str(Path(sys.executable).parent / "twistd")
SERVER_HOSTS = tuple(f"127.0.0.{n}" for n in range(50, 60))
START_LIMIT = 60.0
#: Lease renewal interval of the kubelet (KubeletConfig.lease_interval).
LEASE_INTERVAL = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_MB = 1 / 1024  # /proc/<pid>/status gives kB


@dataclass(frozen=True)
class Plan:
    """What one run does."""

    sizes: tuple[int, ...]
    hold: float
    concurrency: int
    client_processes: int
    join_limit: float


FULL = Plan(sizes=(100, 500, 1000), hold=60.0, concurrency=50, client_processes=1, join_limit=240)
QUICK = Plan(sizes=(20, 50), hold=15.0, concurrency=20, client_processes=1, join_limit=30)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank C{fraction} percentile of C{samples} (NaN when empty)."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


# The client side: one Twisted process simulating many agents (--worker).


@dataclass
class HoldCounts:
    """What the kubelets did since the last C{mark}."""

    lease_ok: int = 0
    lease_failed: int = 0
    status_ok: int = 0
    status_failed: int = 0
    lease_latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        self.lease_ok = self.lease_failed = self.status_ok = self.status_failed = 0
        self.lease_latencies = []
        self.failures = Counter()


def worker(arguments: argparse.Namespace) -> None:
    """Run the agents of one client process; commands on stdin, JSON events on stdout."""
    from twisted.internet.task import react

    react(lambda reactor: _worker(reactor, arguments))


def _worker(reactor: Any, arguments: argparse.Namespace) -> Any:
    # Imported here: the orchestrating process needs none of Twisted or k3stw.
    from twisted.application.service import IService
    from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
    from twisted.internet.stdio import StandardIO
    from twisted.logger import (
        FilteringLogObserver,
        ILogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        formatEvent,
        globalLogBeginner,
        textFileLogObserver,
    )
    from twisted.protocols.basic import LineReceiver
    from twisted.python.failure import Failure
    from twisted.web.iweb import IPolicyForHTTPS
    from zope.interface import provider

    from k3stw.agent.cacerts import Fetch, https_fetcher
    from k3stw.agent.join import Handshake, Send, https_sender
    from k3stw.agent.service import AgentConfig, kubelet_settings, node_client
    from k3stw.httpclient import HTTPSClient, HTTPStatusError, Response
    from k3stw.kubeclient import KubeAPIError, KubeClient, Object
    from k3stw.kubelet.node import LEASES_PATH, NODES_PATH
    from k3stw.kubelet.service import KubeletService
    from k3stw.pki.token import parse_token

    workdir = Path(arguments.agents_dir)
    token = parse_token(Path(arguments.token_file).read_text())
    problems: Counter[str] = Counter()
    samples: dict[str, str] = {}

    @provider(ILogObserver)
    def count_problems(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            where = str(event.get("log_namespace", "?"))
            problems[where] += 1
            samples.setdefault(where, (formatEvent(event) or "")[:300])

    log_file = open(workdir / "client.log", "a")  # noqa: SIM115 (open for the whole run)
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(log_file), [LogLevelFilterPredicate(LogLevel.warn)]
            ),
            count_problems,
        ],
        redirectStandardIO=False,
    )

    requests: Counter[str] = Counter()

    def counted_sender(send: Send) -> Send:
        async def counted(
            method: bytes,
            url: str,
            headers: dict[bytes, bytes],
            body: bytes | None,
            policy: IPolicyForHTTPS,
        ) -> Response:
            try:
                response = await send(method, url, headers, body, policy)
            except Exception as e:
                requests[type(e).__name__] += 1
                raise
            requests[str(response.code)] += 1
            return response

        return counted

    def counted_fetcher(fetch: Fetch) -> Fetch:
        def counted(url: str, policy: IPolicyForHTTPS) -> Deferred[bytes]:
            def ok(body: bytes) -> bytes:
                requests["200"] += 1
                return body

            def failed(failure: Failure) -> Failure:
                error = failure.value
                key = (
                    str(error.code) if isinstance(error, HTTPStatusError) else type(error).__name__
                )
                requests[key] += 1
                return failure

            return fetch(url, policy).addCallbacks(ok, failed)

        return counted

    fetch = counted_fetcher(https_fetcher(reactor))
    send = counted_sender(https_sender(reactor))
    hold = HoldCounts()

    class CountingKubeClient(KubeClient):
        """The kubelet's API client, counting renewals and firing C{registered}."""

        def __init__(self, http: HTTPSClient, server_url: str, node: str) -> None:
            super().__init__(http, server_url)
            self.registered: Deferred[None] = Deferred()
            self._node_path = f"{NODES_PATH}/{node}"

        async def call(
            self,
            method: str,
            path: str,
            body: Object | list[Any] | None = None,
            content_type: str = "application/json",
            params: dict[str, str] | None = None,
        ) -> Object:
            lease = path.startswith(LEASES_PATH) and method in ("PUT", "POST")
            status = method == "PUT" and path.endswith("/status")
            started = time.monotonic()
            try:
                answer = await super().call(method, path, body, content_type, params)
            except Exception as e:
                code = e.code if isinstance(e, KubeAPIError) else None
                # A GET answered 404 is the kubelet looking before it creates.
                if not (method == "GET" and code == 404):
                    kind = "Lease" if path.startswith(LEASES_PATH) else "Node"
                    what = str(code) if code is not None else type(e).__name__
                    hold.failures[f"{method} {kind}: {what}"] += 1
                if lease:
                    hold.lease_failed += 1
                elif status:
                    hold.status_failed += 1
                raise
            if lease:
                hold.lease_ok += 1
                hold.lease_latencies.append(time.monotonic() - started)
            elif status:
                hold.status_ok += 1
            elif not self.registered.called and (
                (method == "POST" and path == NODES_PATH)
                or (method == "PUT" and path == self._node_path)
            ):
                self.registered.callback(None)
            return answer

    kubelets: list[IService] = []
    clients: list[HTTPSClient] = []
    latencies: list[float] = []
    registered_at: list[float] = []
    marked = [0.0]
    handshakes: list[float] = []
    registrations: list[float] = []
    failures: Counter[str] = Counter()
    times = {"first_start": float("inf"), "last_done": 0.0}
    deadline = 0.0

    async def join(index: int) -> None:
        agent_dir = workdir / f"agent-{index:04d}"
        config = AgentConfig(
            data_dir=agent_dir / "data",
            server_url=arguments.server_url,
            token=token,
            identity_dir=agent_dir / "node",
            node_name=f"storm-{index:04d}",
            node_ips=(f"127.0.{100 + index // 250}.{1 + index % 250}",),
        )
        started = time.monotonic()
        times["first_start"] = min(times["first_start"], started)
        joined = await Handshake(config.join_request(), reactor, fetch, send).run()
        shaken = time.monotonic()
        http = node_client(reactor, joined, config.server_url).http
        client = CountingKubeClient(http, config.server_url, joined.identity.name)
        kubelet = KubeletService(reactor, client, kubelet_settings(config, joined))
        kubelets.append(kubelet)
        clients.append(client.http)
        kubelet.startService()
        await client.registered
        done = time.monotonic()
        times["last_done"] = max(times["last_done"], done)
        registered_at.append(done)
        latencies.append(done - started)
        handshakes.append(shaken - started)
        registrations.append(done - shaken)

    def bounded_join(index: int) -> Deferred[None]:
        joining = Deferred.fromCoroutine(join(index))
        joining.addTimeout(max(0.1, deadline - time.monotonic()), reactor)

        def failed(failure: Failure) -> None:
            failures[type(failure.value).__name__] += 1

        return joining.addErrback(failed)

    slots = DeferredSemaphore(arguments.concurrency)
    finished: Deferred[None] = Deferred()

    async def join_all() -> None:
        nonlocal deadline
        deadline = time.monotonic() + arguments.join_limit
        first, count = arguments.first, arguments.count
        await DeferredList(
            [slots.run(bounded_join, i) for i in range(first, first + count)],
            consumeErrors=True,
        )
        say(
            event="joined",
            joined=len(latencies),
            failed=dict(failures),
            latencies=latencies,
            handshakes=handshakes,
            registrations=registrations,
            first_start=times["first_start"],
            last_done=times["last_done"],
            requests=dict(requests),
        )

    async def stop() -> None:
        for kubelet in kubelets:
            kubelet.stopService()
        closing = DeferredList([c.close() for c in clients], consumeErrors=True)
        closing.addTimeout(10, reactor)
        with contextlib.suppress(Exception):
            await closing
        say(event="stopped", problems=dict(problems), samples=samples)
        if not finished.called:
            finished.callback(None)

    def command(line: str) -> None:
        if line == "go":
            Deferred.fromCoroutine(join_all())
        elif line == "mark":
            hold.reset()
            marked[0] = time.monotonic()
        elif line == "report":
            # Each kubelet renews on registering, then every interval (plus the
            # time a renewal takes, a few ms): the renewals due since the mark.
            now = time.monotonic()
            due = sum(
                int((now - t) // LEASE_INTERVAL) - int((marked[0] - t) // LEASE_INTERVAL)
                if t <= marked[0]
                else int((now - t) // LEASE_INTERVAL) + 1
                for t in registered_at
            )
            say(
                event="report",
                lease_due=due,
                lease_ok=hold.lease_ok,
                lease_failed=hold.lease_failed,
                status_ok=hold.status_ok,
                status_failed=hold.status_failed,
                lease_latencies=hold.lease_latencies,
                failures=dict(hold.failures),
            )
        elif line == "stop":
            Deferred.fromCoroutine(stop())

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            command(line.decode().strip())

        def connectionLost(self, reason: Failure | None = None) -> None:
            # The orchestrator went away: stop too.
            if not finished.called:
                Deferred.fromCoroutine(stop())

    commands = Commands()
    StandardIO(commands, reactor=reactor)

    def say(**event: Any) -> None:
        assert commands.transport is not None
        commands.transport.write(json.dumps(event).encode() + b"\n")

    say(event="ready")
    return finished


# The orchestrating side: processes, /proc samples, the report.


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process C{pid} (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU seconds of the main (reactor) thread of C{pid}."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) of C{pid} in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * PAGE_MB
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy (``/proc/stat``), all cores."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


@dataclass
class Usage:
    """CPU of a set of processes between two moments."""

    pids: list[int]
    started: float = 0.0
    cpu: float = 0.0
    main: float = 0.0
    machine: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self.cpu = sum(cpu_seconds(p) for p in self.pids)
        self.main = sum(main_thread_cpu_seconds(p) for p in self.pids)
        self.machine = machine_busy_seconds()

    def machine_cores(self) -> float:
        """Cores the whole machine kept busy since this sample."""
        return (machine_busy_seconds() - self.machine) / (time.monotonic() - self.started)

    def cores(self) -> tuple[float, float]:
        """(cores used, of which by main threads) since this sample."""
        elapsed = time.monotonic() - self.started
        cpu = sum(cpu_seconds(p) for p in self.pids) - self.cpu
        main = sum(main_thread_cpu_seconds(p) for p in self.pids) - self.main
        return cpu / elapsed, main / elapsed


def free_host() -> str:
    """A loopback address of 127.0.0.50-59 with nothing listening on 6443 (a hint of others)."""
    for host in SERVER_HOSTS:
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex((host, 6443)) != 0:
                return host
    return SERVER_HOSTS[0]


class Child:
    """A process this run started: its output lines, and a stop by its own PID."""

    def __init__(self, argv: list[str], log: Path, environment: dict[str, str]) -> None:
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=environment,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.decode("utf-8", "replace"))
        self.lines.put(None)

    def send(self, command: str) -> None:
        stdin: IO[bytes] | None = self.process.stdin
        if stdin is not None and self.process.poll() is None:
            with contextlib.suppress(OSError):
                stdin.write(command.encode() + b"\n")
                stdin.flush()

    def event(self, name: str, limit: float) -> dict[str, Any]:
        """The next JSON event called C{name}, waiting at most C{limit} seconds."""
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"pid {self.pid}: no {name!r} within {limit:g} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"pid {self.pid} ended: {self.tail()}")
            with contextlib.suppress(ValueError):
                document: dict[str, Any] = json.loads(line)
                if document.get("event") == name:
                    return document

    def tail(self, size: int = 3000) -> str:
        return self.log.read_bytes()[-size:].decode("utf-8", "replace")

    def stop(self, grace: float = 20.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.process.wait(10)
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        self._log_file.close()


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("K3S_", "NODE_NAME"))}


def start_server(work: Path, profile: Path | None) -> tuple[Child, str, Path]:
    """A ready k3s-server: the process, its URL and its data dir."""
    host = free_host()
    port = free_port(host)
    data = work / "server"
    config = work / "empty.yaml"
    config.write_text("")
    argv = [TWISTD, "-n", "--pidfile="]
    if profile is not None:
        argv += [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
    argv += [
        "k3s-server",
        "--config",
        str(config),
        "--data-dir",
        str(data),
        "--node-identity-dir",
        str(data / "node"),
        "--bind-address",
        host,
        "--https-listen-port",
        str(port),
        "--write-kubeconfig",
        str(data / "k3s.yaml"),
        "--token",
        "join-storm-" + os.urandom(8).hex(),
        # No containers in this machine's own namespaces.
        "--container-runtime",
        "none",
    ]
    server = Child(argv, work / "server.log", clean_environment())
    url = f"https://{host}:{port}"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"k3s-server ended at start: {server.tail()}")
        ready = f"{url}/v1-k3s/readyz"
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(ready, timeout=2, context=context) as r,
        ):
            if r.status == 200 and (data / "server" / "token").exists():
                return server, url, data
        time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"k3s-server not ready within {START_LIMIT:g} s: {server.tail()}")


def admin_get(url: str, data: Path, path: str) -> Any:
    """GET C{path} as the cluster admin (the server's own admin certificate)."""
    tls = data / "server" / "tls"
    context = ssl.create_default_context(cafile=str(tls / "server-ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(str(tls / "client-admin.crt"), str(tls / "client-admin.key"))
    with urllib.request.urlopen(url + path, timeout=30, context=context) as answer:
        return json.loads(answer.read())


def server_view(url: str, data: Path) -> tuple[int, int]:
    """(Leases renewed within one interval and a margin, Nodes Ready) of the storm's agents."""
    leases = admin_get(url, data, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")
    now = datetime.datetime.now(datetime.UTC)
    fresh = 0
    for lease in leases.get("items", []):
        if not lease["metadata"]["name"].startswith("storm-"):
            continue
        renewed = (lease.get("spec") or {}).get("renewTime")
        if renewed:
            when = datetime.datetime.fromisoformat(renewed.replace("Z", "+00:00"))
            if (now - when).total_seconds() <= LEASE_INTERVAL + 5:
                fresh += 1
    nodes = admin_get(url, data, "/api/v1/nodes")
    ready = 0
    for node in nodes.get("items", []):
        if not node["metadata"]["name"].startswith("storm-"):
            continue
        conditions = (node.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            ready += 1
    return fresh, ready


@dataclass
class Row:
    """The figures of one N."""

    agents: int
    client_processes: int
    joined: int = 0
    join_seconds: float = float("nan")
    latencies: list[float] = field(default_factory=list)
    handshakes: list[float] = field(default_factory=list)
    registrations: list[float] = field(default_factory=list)
    join_failures: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    server_join_cores: tuple[float, float] = (float("nan"), float("nan"))
    client_join_cores: tuple[float, float] = (float("nan"), float("nan"))
    hold_seconds: float = 0.0
    server_hold_cores: tuple[float, float] = (float("nan"), float("nan"))
    client_hold_cores: tuple[float, float] = (float("nan"), float("nan"))
    machine_join_cores: float = float("nan")
    machine_hold_cores: float = float("nan")
    server_idle_mb: float = float("nan")
    server_hold_start_mb: float = float("nan")
    server_hold_end_mb: float = float("nan")
    server_hold_mb: float = float("nan")
    server_peak_mb: float = float("nan")
    client_mb: float = float("nan")
    lease_ok: int = 0
    lease_due: int = 0
    lease_failed: int = 0
    status_ok: int = 0
    status_failed: int = 0
    lease_latencies: list[float] = field(default_factory=list)
    hold_failures: Counter[str] = field(default_factory=Counter)
    fresh_leases: int = 0
    ready_nodes: int = 0
    client_problems: Counter[str] = field(default_factory=Counter)
    client_samples: dict[str, str] = field(default_factory=dict)
    server_problems: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def rate(self) -> float:
        return self.joined / self.join_seconds if self.join_seconds > 0 else float("nan")


def run_size(
    agents: int, plan: Plan, work: Path, agents_root: Path, profile: Path | None, say: Any
) -> Row:
    """Start a server, join C{agents} agents, hold them, stop everything."""
    row = Row(agents, plan.client_processes)
    server: Child | None = None
    workers: list[Child] = []
    agents_dir = Path(tempfile.mkdtemp(prefix=f"storm-{agents}-", dir=agents_root))
    try:
        server, url, data = start_server(work, profile)
        say(f"server pid {server.pid} at {url}")
        time.sleep(1.0)  # let the embedded agent register
        row.server_idle_mb = memory_mb(server.pid)[0]
        share, extra = divmod(agents, plan.client_processes)
        first = 1
        for k in range(plan.client_processes):
            count = share + (1 if k < extra else 0)
            directory = agents_dir / f"client-{k}"
            directory.mkdir()
            argv = [
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                "--server-url",
                url,
                "--token-file",
                str(data / "server" / "token"),
                "--agents-dir",
                str(directory),
                "--first",
                str(first),
                "--count",
                str(count),
                "--concurrency",
                str(max(1, plan.concurrency // plan.client_processes)),
                "--join-limit",
                str(plan.join_limit),
            ]
            workers.append(Child(argv, work / f"client-{k}.log", clean_environment()))
            first += count
        for w in workers:
            w.event("ready", START_LIMIT)
        client_pids = [w.pid for w in workers]

        # Joins
        server_usage, client_usage = Usage([server.pid]), Usage(client_pids)
        go = time.monotonic()
        for w in workers:
            w.send("go")
        say(f"{agents} agents joining")
        joined_events = [w.event("joined", plan.join_limit + 60) for w in workers]
        row.server_join_cores = server_usage.cores()
        row.client_join_cores = client_usage.cores()
        row.machine_join_cores = server_usage.machine_cores()
        for e in joined_events:
            row.joined += e["joined"]
            row.latencies += e["latencies"]
            row.handshakes += e["handshakes"]
            row.registrations += e["registrations"]
            row.join_failures.update(e["failed"])
            row.requests.update(e["requests"])
        row.join_seconds = max(e["last_done"] for e in joined_events) - go
        say(f"{row.joined} joined in {row.join_seconds:.1f} s; holding {plan.hold:g} s")

        # Hold
        for w in workers:
            w.send("mark")
        server_usage, client_usage = Usage([server.pid]), Usage(client_pids)
        hold_rss: list[float] = []
        end = time.monotonic() + plan.hold
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            hold_rss.append(memory_mb(server.pid)[0])
        row.server_hold_cores = server_usage.cores()
        row.client_hold_cores = client_usage.cores()
        row.machine_hold_cores = server_usage.machine_cores()
        row.hold_seconds = time.monotonic() - server_usage.started
        row.server_hold_mb = max(hold_rss)
        row.server_hold_start_mb, row.server_hold_end_mb = hold_rss[0], hold_rss[-1]
        row.server_peak_mb = memory_mb(server.pid)[1]
        row.client_mb = sum(memory_mb(p)[0] for p in client_pids)
        for w in workers:
            w.send("report")
        for e in [w.event("report", 60) for w in workers]:
            row.lease_ok += e["lease_ok"]
            row.lease_due += e["lease_due"]
            row.lease_failed += e["lease_failed"]
            row.status_ok += e["status_ok"]
            row.status_failed += e["status_failed"]
            row.lease_latencies += e["lease_latencies"]
            row.hold_failures.update(e["failures"])
        row.fresh_leases, row.ready_nodes = server_view(url, data)
        for w in workers:
            w.send("stop")
        for w in workers:
            with contextlib.suppress(TimeoutError, RuntimeError):
                e = w.event("stopped", 30)
                row.client_problems.update(e["problems"])
                row.client_samples.update(e["samples"])
    except (TimeoutError, RuntimeError, OSError) as e:
        row.error = str(e)[:2000]
        say(f"failed: {row.error}")
    finally:
        for w in workers:
            w.stop()
        if server is not None:
            server.stop()
            row.server_problems = [
                line
                for line in server.log.read_text(errors="replace").splitlines()
                if "#error]" in line or "#critical]" in line or "Traceback" in line
            ]
        shutil.rmtree(agents_dir, ignore_errors=True)
        shutil.rmtree(work / "server", ignore_errors=True)
    return row


# The report


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    memory = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        memory = int(f.readline().split()[1]) / 1024 / 1024
    return (
        f"{model}, {os.cpu_count()} cores, {memory:.0f} GB RAM, Linux {platform.release()}, "
        f"CPython {platform.python_version()}"
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def cores(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.2f} ({pair[1]:.2f})"


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| agents | joined | join time (s) | joins/s | join p50 / p99 (ms) "
        "| handshake p50 / p99 (ms) | server cores, joins | client cores, joins "
        "| server cores, hold | client cores, hold | server RSS idle / hold / peak (MB) "
        "| Lease renewals in hold (failed) | Leases fresh / Nodes Ready at end |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.agents:,} | {r.joined:,} | {r.join_seconds:.1f} | {r.rate:.1f} "
            f"| {ms(percentile(r.latencies, 0.5))} / {ms(percentile(r.latencies, 0.99))} "
            f"| {ms(percentile(r.handshakes, 0.5))} / {ms(percentile(r.handshakes, 0.99))} "
            f"| {cores(r.server_join_cores)} | {cores(r.client_join_cores)} "
            f"| {cores(r.server_hold_cores)} | {cores(r.client_hold_cores)} "
            f"| {r.server_idle_mb:.0f} / {r.server_hold_mb:.0f} / {r.server_peak_mb:.0f} "
            f"| {r.lease_ok:,} of {r.lease_due:,} due ({r.lease_failed}) "
            f"| {r.fresh_leases:,} / {r.ready_nodes:,} |"
        )
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def goals(rows: Sequence[Row]) -> str:
    biggest = max(rows, key=lambda r: r.agents)
    n = biggest.agents
    held_cores = biggest.server_hold_cores[0]
    all_in = biggest.joined == n and biggest.join_seconds <= 60
    return "\n".join(
        [
            f"Goals (issue 5), at {n:,} agents:",
            f"- all {n:,} joined within 60 s: {biggest.joined:,} joined in "
            f"{biggest.join_seconds:.1f} s ({verdict(all_in)})",
            f"- held with 10 s Lease renewals under one core: "
            f"{held_cores:.2f} cores ({verdict(held_cores < 1)})",
            f"- held under 300 MB RSS: {biggest.server_hold_mb:.0f} MB "
            f"(peak {biggest.server_peak_mb:.0f} MB) ({verdict(biggest.server_hold_mb < 300)})",
            "- Anchor: the k3s sizing guide puts a 2 CPU / 4 GB server at about 350 agents.",
        ]
    )


def details(rows: Sequence[Row]) -> str:
    out = []
    for r in rows:
        others_join = r.machine_join_cores - r.server_join_cores[0] - r.client_join_cores[0]
        others_hold = r.machine_hold_cores - r.server_hold_cores[0] - r.client_hold_cores[0]
        out.append(
            f"- {r.agents:,} agents: other processes on the machine used {others_join:.2f} "
            f"cores during the joins and {others_hold:.2f} during the hold; server RSS "
            f"{r.server_hold_start_mb:.0f} MB at the start of the hold, "
            f"{r.server_hold_end_mb:.0f} MB at its end; node registration p50 / p99 "
            f"{ms(percentile(r.registrations, 0.5))} / {ms(percentile(r.registrations, 0.99))} ms; "
            f"Lease renewal p50 / p99 in hold {ms(percentile(r.lease_latencies, 0.5))} / "
            f"{ms(percentile(r.lease_latencies, 0.99))} ms; status posts in hold {r.status_ok:,} "
            f"({r.status_failed} failed); client RSS {r.client_mb:.0f} MB; supervisor answers "
            f"{dict(sorted(r.requests.items()))}"
            + (f"; join failures {dict(r.join_failures)}" if r.join_failures else "")
            + (f"; hold failures {dict(r.hold_failures)}" if r.hold_failures else "")
            + (
                f"; client warnings/errors {dict(r.client_problems)}"
                f" e.g. {next(iter(r.client_samples.values()), '')!r}"
                if r.client_problems
                else ""
            )
            + (
                f"; server error lines {len(r.server_problems)}, first: {r.server_problems[0]!r}"
                if r.server_problems
                else "; no error lines in the server log"
            )
            + (f"; RUN FAILED: {r.error}" if r.error else "")
        )
    return "\n".join(out)


def report(rows: Sequence[Row], plan: Plan, quick: bool, seconds: float, agents_root: Path) -> str:
    now = datetime.datetime.now(datetime.UTC)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    clients = (
        "one client process"
        if plan.client_processes == 1
        else f"{plan.client_processes} client processes"
    )
    return "\n\n".join(
        [
            "# Join storm",
            "Written by `python bench/join_storm.py"
            + (" --quick" if quick else "")
            + (f" --client-processes {plan.client_processes}" if plan.client_processes != 1 else "")
            + "`: N simulated agents, each with the real handshake (TLS, `/cacerts` with the "
            "CA hash, `/v1-k3s/config`, the CA files, two CSRs with its own node password, "
            "checked by scrypt on the server), then the real kubelet (Node registration, Lease "
            "and status every 10 s on one kept-alive TLS connection), each with its own data "
            f"and identity directory and node name, from {clients} against one fresh "
            "`twistd -n k3s-server` (SQLite) per N, all on the same cores. Joins start "
            f"{plan.concurrency} at a time; a join is timed from the start of its handshake to "
            "its Node created. CPU is utime+stime from `/proc/<pid>/stat` as cores used, in "
            "brackets the main (reactor) thread alone; hold = the "
            f"{plan.hold:g} s after the last join. Agent files live under {agents_root} (each "
            "real agent has its own disk; the server's data dir is on the real disk).",
            f"Machine: {machine()}; load average at the end {load}",
            f"Date: {now:%Y-%m-%d %H:%M} UTC; mode: {'quick' if quick else 'full'}, "
            f"{seconds:.0f} s in all",
            table(rows),
            goals(rows),
            "Details:\n" + details(rows),
        ]
    )


def orchestrate(arguments: argparse.Namespace) -> int:
    plan = QUICK if arguments.quick else FULL
    if arguments.sizes:
        plan = Plan(
            tuple(int(n) for n in arguments.sizes.split(",")),
            plan.hold,
            plan.concurrency,
            plan.client_processes,
            plan.join_limit,
        )
    plan = Plan(
        plan.sizes,
        arguments.hold if arguments.hold is not None else plan.hold,
        arguments.concurrency or plan.concurrency,
        arguments.client_processes,
        plan.join_limit,
    )
    agents_root = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())
    started = time.monotonic()
    rows: list[Row] = []
    work = Path(tempfile.mkdtemp(prefix="join-storm-"))

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {line}", file=sys.stderr, flush=True)

    try:
        for n in plan.sizes:
            profile = (
                Path(arguments.server_profile).with_suffix(f".{n}.prof")
                if arguments.server_profile
                else None
            )
            rows.append(run_size(n, plan, work, agents_root, profile, say))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(rows, plan, arguments.quick, time.monotonic() - started, agents_root)
    print(text)
    if arguments.output:
        Path(arguments.output).write_text(text + "\n")
    return 1 if any(r.error for r in rows) else 0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI mode: 20 and 50 agents, 15 s hold")
    parser.add_argument("--output", help="write the report (Markdown) here too")
    parser.add_argument("--sizes", help="comma-separated agent counts (default 100,500,1000)")
    parser.add_argument("--hold", type=float, help="seconds to hold the agents after joining")
    parser.add_argument("--concurrency", type=int, help="joins in flight, over all clients")
    parser.add_argument("--client-processes", type=int, default=1, choices=(1, 2))
    parser.add_argument("--server-profile", help="cProfile the server into PATH.<N>.prof")
    # The client processes this script starts.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--server-url", help=argparse.SUPPRESS)
    parser.add_argument("--token-file", help=argparse.SUPPRESS)
    parser.add_argument("--agents-dir", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--join-limit", type=float, default=240.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse(sys.argv[1:] if argv is None else argv)
    if arguments.worker:
        worker(arguments)
        return 0
    return orchestrate(arguments)


if __name__ == "__main__":
    sys.exit(main())
