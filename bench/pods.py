"""
Pods benchmark: create-to-Running of real pods on one node, a
``twistd -n k3s-server --container-runtime containerd`` in a test machine,
next to containerd's own floor (the same CRI calls made directly), and the
node's footprint idle with 0 and with 100 pods.

    python bench/pods.py [--sequential 20] [--pods 100] [--idle 30] [--agent]
                         [--output docs/pods-benchmark.md]

Everything runs inside one test machine (tests/support/machines.py: its own
network, mount and PID namespaces, k3s's paths private to it), with the
busybox images of tests/support/images.py in ``agent/images``:

1. the floor: containerd started by k3stw's runtime service alone (the
   ``NodeRuntime`` of the server, no kubelet), driven through k3stw's
   ``CRIClient`` with the kubelet's own sandbox and container configs:
   RunPodSandbox, CreateContainer, StartContainer, then ContainerStatus until
   RUNNING; C{--sequential} one at a time, then C{--pods} at once; every
   sandbox removed and that node stopped;
2. k3stw: the server started on the same data directory (so the same
   containerd config and image store); idle footprint; C{--sequential} pods
   created one at a time, each timed from its create until a watch sees its
   Ready condition true; those deleted; C{--pods} created at once, timed
   until all are Ready; idle footprint with them running.

With C{--agent} the pods run on a ``k3s-agent`` instead (the floor is
skipped), and the server, ``--disable-agent``, is another process in the
same machine: the idle rows sample the agent, and the server's RSS beside it.

The clients (CRI and the API's) run inside the machine (``--inside``), so
nothing dials out of its network namespace; footprints are read from this
side's ``/proc``.  C{BENCH_TWISTD} names another twistd for the server (a
wrapper that profiles it, say); it must be reachable inside the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater, react
from twisted.python.failure import Failure

if __package__ in (None, ""):
    # Run as a script: make the checkout (tests.support) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The sibling benchmarks' helpers (a script's own directory is on sys.path).
from api import machine, percentile
from controlplane import bounded

from k3stw.httpclient import HTTPSClient
from k3stw.kubeclient import KubeAPIError, KubeClient, Object
from k3stw.kubelet.cni import CONFLIST_NAME, render_conflist
from k3stw.kubelet.pods.spec import POD_LOGS, DNSSettings, container_config, sandbox_config
from k3stw.pki.certs import KeyPair, load_pem_certificates, load_pem_key
from k3stw.pki.tls import PinnedCAPolicy
from tests.support.images import BUSYBOX_IMAGE, write_airgap_images
from tests.support.machines import Machine, machines

#: The server's twistd; C{BENCH_TWISTD} names another (a wrapper that profiles it, say).
TWISTD = os.environ.get("BENCH_TWISTD") or str(Path(sys.executable).parent / "twistd")
#: Inside the machine: k3s's paths.
DATA = Path("/var/lib/rancher/k3s")
SOCKET = "unix:///run/k3s/containerd/containerd.sock"
API = "https://127.0.0.1:6443"
NODE = "bench"
#: The cluster's token when the pods run on an agent.
TOKEN = "bench-token"
NAMESPACE = "bench"
#: The node's pod range, as the server's IPAM gives its first node.
POD_CIDR = "10.42.0.0/24"
START_LIMIT = 90.0
PHASE_LIMIT = 120.0
#: Settling time before an idle sample: the last status writes and events drain.
SETTLE = 5.0
GOAL_OVER_FLOOR = 0.150
GOAL_BURST = 20.0
GOAL_CPU = 2.0
GOAL_RSS = 100 * 1000 * 1000 / 2**20  # 100 MB in MiB

#: The floor's node: k3stw's containerd supervision and nothing else.
RUNTIME_TAC = """
from pathlib import Path
from twisted.application.service import Application
from twisted.internet import reactor
from k3stw.kubelet.containerd import NodeRuntime, RuntimeSettings

application = Application("bench-runtime")
runtime = NodeRuntime(reactor, Path("/var/lib/rancher/k3s"), RuntimeSettings())
runtime.setServiceParent(application)
runtime.when_ready().addCallback(lambda _: print("RUNTIME READY", flush=True))
"""


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# The pods


def bench_pod(name: str) -> Object:
    """A pod whose one container sleeps; stopped at once when deleted."""
    container = {
        "name": "sleep",
        "image": BUSYBOX_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sleep", "3600"],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "bench"}},
        "spec": {"containers": [container], "terminationGracePeriodSeconds": 1},
    }


@dataclass(frozen=True)
class FloorNode:
    """The node settings the kubelet's config builders need, as the server's kubelet has them."""

    cgroup_root: str
    dns: DNSSettings = field(default_factory=DNSSettings)
    pod_logs: str = POD_LOGS


# Inside the machine: the CRI floor


async def floor(reactor: Any, sequential: int, burst: int, cgroup_root: str) -> Object:
    """
    The CRI calls the kubelet makes for one pod, timed: C{sequential} pods
    one at a time, then C{burst} at once; every sandbox removed after.
    """
    from k3stw.kubelet.cri import api_pb2 as api
    from k3stw.kubelet.cri.client import CRIClient

    client = CRIClient(reactor, SOCKET, timeout=60)
    node = FloorNode(cgroup_root)
    sandboxes: list[str] = []

    async def one(name: str) -> float:
        pod = bench_pod(name)
        pod["metadata"]["uid"] = str(uuid.uuid4())
        started = time.perf_counter()
        config = sandbox_config(pod, node, 0)
        sandbox = await client.run_pod_sandbox(config)
        sandboxes.append(sandbox)
        spec = pod["spec"]["containers"][0]
        container = await client.create_container(
            sandbox, container_config(pod, spec, BUSYBOX_IMAGE, 0, []), config
        )
        await client.start_container(container)
        while (await client.container_status(container)).state != api.CONTAINER_RUNNING:
            await deferLater(reactor, 0.01, lambda: None)
        return time.perf_counter() - started

    try:
        # One pod first, untimed: containerd's first sandbox pays for loading its plugins.
        await one("warm-up")
        times = [await one(f"floor-{i}") for i in range(sequential)]
        started = time.perf_counter()
        results = await DeferredList(
            [Deferred.fromCoroutine(one(f"burst-{i}")) for i in range(burst)],
            fireOnOneErrback=True,
            consumeErrors=True,
        )
        total = time.perf_counter() - started
        burst_times = [value for _, value in results]

        async def remove(sandbox: str) -> None:
            await client.stop_pod_sandbox(sandbox)
            await client.remove_pod_sandbox(sandbox)

        await bounded(sandboxes, remove, concurrency=8)
        return {"sequential": times, "burst": burst_times, "burst_total": total}
    finally:
        client.close()


# Inside the machine: k3stw's pods through the API


async def admin_client(reactor: Any) -> KubeClient:
    """The admin's client once the node is Ready and pods can be admitted."""
    tls = DATA / "server" / "tls"
    admin = KeyPair(
        load_pem_certificates((tls / "client-admin.crt").read_bytes())[0],
        load_pem_key((tls / "client-admin.key").read_bytes()),
    )
    http = HTTPSClient(reactor, PinnedCAPolicy((tls / "server-ca.crt").read_bytes(), admin))
    http.pool.maxPersistentPerHost = 34
    client = KubeClient(http, API)
    deadline = time.perf_counter() + START_LIMIT
    while True:
        try:
            node = await client.get(f"/api/v1/nodes/{NODE}")
            await client.get("/api/v1/namespaces/default/serviceaccounts/default")
            if _ready(node) and not (node.get("spec") or {}).get("taints"):
                return client
        except KubeAPIError:
            pass
        if time.perf_counter() > deadline:
            raise RuntimeError("the node did not become Ready and schedulable")
        await deferLater(reactor, 0.2, lambda: None)


def _ready(obj: Object) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class Readiness:
    """A watch of the namespace's pods: when each was first seen Ready, and when deleted."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.ready: dict[str, float] = {}
        self.gone: set[str] = set()
        self._waiting: list[tuple[Callable[[], bool], Deferred[None]]] = []

    async def start(self) -> None:
        path = f"/api/v1/namespaces/{NAMESPACE}/pods"
        listed = await self.client.get(path)
        params = {
            "resourceVersion": listed["metadata"]["resourceVersion"],
            "timeoutSeconds": str(int(PHASE_LIMIT * 4)),
        }
        Deferred.fromCoroutine(self.client.watch(path, params, self._event)).addErrback(
            lambda failure: say(f"the watch failed: {failure.getErrorMessage()}")
        )

    def _event(self, kind: str, pod: Object) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            self.gone.add(name)
        elif name not in self.ready and _ready(pod):
            self.ready[name] = time.perf_counter()
        for check, done in list(self._waiting):
            if check():
                self._waiting.remove((check, done))
                done.callback(None)

    def until(self, reactor: Any, check: Callable[[], bool], what: str) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        if check():
            done.callback(None)
            return done
        self._waiting.append((check, done))

        def timed_out(_: object, timeout: float) -> Failure:
            return Failure(RuntimeError(f"no {what} within {timeout:g} s"))

        return done.addTimeout(PHASE_LIMIT, reactor, timed_out)

    def is_ready(self, name: str) -> Callable[[], bool]:
        return lambda: name in self.ready


async def k3stw_pods(reactor: Any, sequential: int, burst: int, keep: bool) -> Object:
    """
    C{sequential} pods one at a time, each from its create until Ready (then
    deleted), and C{burst} at once until all are Ready (left running with C{keep}).
    """
    client = await admin_client(reactor)
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
    try:
        with contextlib.suppress(KubeAPIError):  # there from an earlier phase
            await client.create(
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            )
        await client.get("/api/v1/namespaces/default/serviceaccounts/default")
        watch = Readiness(client)
        await watch.start()
        times = []
        names = [f"one-{i}" for i in range(sequential)]
        for name in names:
            started = time.perf_counter()
            await client.create(pods, bench_pod(name))
            await watch.until(reactor, watch.is_ready(name), f"{name} Ready")
            times.append(watch.ready[name] - started)
        await bounded(names, lambda name: client.delete(f"{pods}/{name}"), concurrency=8)
        await watch.until(reactor, lambda: set(names) <= watch.gone, "sequential pods deleted")

        names = [f"many-{i}" for i in range(burst)]
        created: dict[str, float] = {}

        async def create(name: str) -> None:
            created[name] = time.perf_counter()
            await client.create(pods, bench_pod(name))

        started = time.perf_counter()
        await bounded(names, create)
        await watch.until(reactor, lambda: set(names) <= set(watch.ready), "every pod Ready")
        total = max(watch.ready[n] for n in names) - started if names else 0.0
        burst_times = [watch.ready[n] - created[n] for n in names]
        if not keep:
            await bounded(names, lambda name: client.delete(f"{pods}/{name}"), concurrency=8)
            await watch.until(reactor, lambda: set(names) <= watch.gone, "pods deleted")
        return {"sequential": times, "burst": burst_times, "burst_total": total}
    finally:
        await client.http.close()


def inside(reactor: Any, argv: Sequence[str]) -> Deferred[None]:
    """The client half, run in the machine: one phase, its results as JSON on stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=("floor", "k3stw"))
    parser.add_argument("--sequential", type=int, required=True)
    parser.add_argument("--pods", type=int, required=True)
    parser.add_argument("--cgroup-root", default="/")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    async def go() -> None:
        if args.phase == "floor":
            found = await floor(reactor, args.sequential, args.pods, args.cgroup_root)
        else:
            found = await k3stw_pods(reactor, args.sequential, args.pods, args.keep)
        print(json.dumps(found), flush=True)

    return Deferred.fromCoroutine(go())


# This side: the machine, the nodes, the footprint


class Cleanups:
    """What tests.support.machines needs of a test case, for a script: cleanups run at the end."""

    def __init__(self) -> None:
        self._cleanups: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def addCleanup(self, function: Callable[..., object], *args: object) -> None:
        self._cleanups.append((function, args))

    def run(self) -> None:
        while self._cleanups:
            function, args = self._cleanups.pop()
            try:
                function(*args)
            except Exception as e:  # the others still run
                say(f"cleanup {function.__name__} failed: {e}")


@dataclass
class Node:
    """A ``twistd -n`` running in the machine: the host pid of its twistd, its log."""

    launcher: subprocess.Popen[bytes]
    pid: int
    log: Path

    def stop(self) -> None:
        """SIGTERM, as a node is stopped; it stops its containerd and exits."""
        if self.pid and Path(f"/proc/{self.pid}").exists():
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.launcher.wait(30)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the node did not stop on SIGTERM:\n{tail(self.log)}") from None


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def launch(machine: Machine, arguments: str, log: Path, ready: str) -> Node:
    """``twistd -n`` with C{arguments} in the machine, once its log says C{ready}."""
    launcher = machine.spawn(f"exec {TWISTD} -n --pidfile= {arguments}", log)
    deadline = time.monotonic() + START_LIMIT
    while ready not in log.read_text(errors="replace"):
        if launcher.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                launcher.kill()
            raise RuntimeError(f"{ready!r} not logged:\n{tail(log)}")
        time.sleep(0.1)
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    return Node(launcher, int(children[0]), log)


def prepare(machine: Machine) -> None:
    """The images in agent/images and the conflist the server's kubelet would write."""
    data = machine.rancher / "k3s"
    write_airgap_images(data / "agent" / "images")
    cni = data / "agent" / "etc" / "cni" / "net.d"
    cni.mkdir(parents=True, exist_ok=True)
    (cni / CONFLIST_NAME).write_text(render_conflist([POD_CIDR]))


def run_inside(machine: Machine, phase: str, *arguments: str) -> Object:
    """One phase of the client half in the machine; its JSON."""
    command = shlex.join([sys.executable, "-b", str(Path(__file__).resolve()), "--inside", phase])
    output = machine.run(f"{command} {shlex.join(arguments)}", timeout=PHASE_LIMIT * 3)
    found: Object = json.loads(output.strip().splitlines()[-1])
    return found


def proc_field(pid: int, file: str, name: str) -> float:
    """C{name} (VmRSS, Pss) of /proc/<pid>/C{file}, in MiB; 0 once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/{file}").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss(pid: int) -> float:
    return proc_field(pid, "status", "VmRSS")


def pss(pid: int) -> float:
    """The proportional set size of C{pid}: shared pages split between their users."""
    return proc_field(pid, "smaps_rollup", "Pss")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_processes(machine: Machine, command: str) -> list[int]:
    """The host pids of the machine's processes whose name starts with C{command}."""
    namespace = os.readlink(f"/proc/{machine.init_pid}/ns/pid")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns/pid") != namespace:
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            # The machine's init does not reap: the shims of removed sandboxes linger as zombies.
            if state != "Z" and (entry / "comm").read_text().strip().startswith(command):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


@dataclass
class Footprint:
    """The node idle: its CPU share and RSS, containerd's RSS, the shims'."""

    pods: int
    seconds: float
    cpu_percent: float
    rss: float
    containerd_rss: float
    shims: int
    shims_rss: float
    shims_pss: float
    load: str
    #: The RSS of the server when the node is an agent (another process).
    server_rss: float | None = None


def footprint(
    machine: Machine, node: Node, pods: int, seconds: float, server: Node | None = None
) -> Footprint:
    """Sample the node idle for C{seconds} (after L{SETTLE}); C{server} if it is another process."""
    time.sleep(SETTLE)
    before, started = cpu_seconds(node.pid), time.perf_counter()
    time.sleep(seconds)
    used, elapsed = cpu_seconds(node.pid) - before, time.perf_counter() - started
    containerd = machine_processes(machine, "containerd")
    shims = [
        pid for pid in containerd if (Path(f"/proc/{pid}/comm").read_text().strip() != "containerd")
    ]
    daemons = [pid for pid in containerd if pid not in shims]
    return Footprint(
        pods=pods,
        seconds=elapsed,
        cpu_percent=100 * used / elapsed,
        rss=rss(node.pid),
        containerd_rss=sum(rss(pid) for pid in daemons),
        shims=len(shims),
        shims_rss=sum(rss(pid) for pid in shims),
        shims_pss=sum(pss(pid) for pid in shims),
        load=load(),
        server_rss=None if server is None else rss(server.pid),
    )


@dataclass(frozen=True)
class Plan:
    sequential: int = 20
    pods: int = 100
    idle: float = 30.0
    #: The pods run on a k3s-agent, the server being another process.
    agent: bool = False


@dataclass
class Latencies:
    sequential: list[float]
    burst: list[float]
    burst_total: float
    load: str

    @classmethod
    def of(cls, found: Object) -> Latencies:
        return cls(found["sequential"], found["burst"], found["burst_total"], load())


@dataclass
class Run:
    plan: Plan
    floor: Latencies | None = None
    k3stw: Latencies | None = None
    footprints: list[Footprint] = field(default_factory=list)
    seconds: float = 0.0


class Bench:
    """One machine and its phases; L{run} does them all in order."""

    def __init__(self, case: Any, work: Path, plan: Plan) -> None:
        self.plan = plan
        self.work = work
        self.machine = machines(case, work / "machines", 1)[0]
        self.machine.boot(runtime=True)
        prepare(self.machine)

    def floor(self) -> Latencies:
        """containerd under k3stw's runtime service alone, driven through CRI; then stopped."""
        tac = self.work / "runtime.tac"
        tac.write_text(RUNTIME_TAC)
        node = launch(
            self.machine, f"--logfile=- -y {tac}", self.work / "floor.log", "RUNTIME READY"
        )
        try:
            found = run_inside(
                self.machine, "floor", "--sequential", str(self.plan.sequential),
                "--pods", str(self.plan.pods), "--cgroup-root", self.machine.cgroup_parent,
            )  # fmt: skip
        finally:
            node.stop()
        return Latencies.of(found)

    def server(self) -> Node:
        """The k3stw server with containerd, on the floor's data directory."""
        return launch(
            self.machine,
            f"k3s-server --bind-address 127.0.0.1 {self.node_arguments()}",
            self.work / "server.log",
            f"Successfully registered node {NODE}",
        )

    def split(self) -> tuple[Node, Node]:
        """A server with no agent, then the agent that runs the pods, on the same data directory."""
        server = launch(
            self.machine,
            f"k3s-server --disable-agent --bind-address 127.0.0.1 --token {TOKEN}",
            self.work / "server.log",
            "k3s is up and running",
        )
        try:
            agent = launch(
                self.machine,
                f"k3s-agent --server https://127.0.0.1:6443 --token {TOKEN} "
                + self.node_arguments(),
                self.work / "agent.log",
                f"Successfully registered node {NODE}",
            )
        except Exception:
            server.stop()
            raise
        return agent, server

    def node_arguments(self) -> str:
        return (
            f"--container-runtime containerd --node-ip 127.0.0.1 --node-name {NODE}"
            f" --kubelet-arg cgroup-root={self.machine.cgroup_parent}"
        )

    def k3stw(self, keep: bool = True) -> Latencies:
        found = run_inside(
            self.machine, "k3stw", "--sequential", str(self.plan.sequential),
            "--pods", str(self.plan.pods), *(["--keep"] if keep else []),
        )  # fmt: skip
        return Latencies.of(found)

    def run(self) -> Run:
        started = time.perf_counter()
        result = Run(self.plan)
        server: Node | None = None
        if self.plan.agent:
            say("a k3stw server with no agent, then the agent")
            node, server = self.split()
        else:
            say(f"the floor: {self.plan.sequential} pods one at a time, {self.plan.pods} at once")
            result.floor = self.floor()
            say(f"floor done (load {load()}); the k3stw server")
            node = self.server()
        try:
            # The first pods wait for the node to be Ready: the client half waits for that.
            say(f"node pid {node.pid}; idle footprint, no pods, {self.plan.idle:g} s")
            result.footprints.append(footprint(self.machine, node, 0, self.plan.idle, server))
            say(f"k3stw: {self.plan.sequential} pods one at a time, {self.plan.pods} at once")
            result.k3stw = self.k3stw()
            say(f"idle footprint with {self.plan.pods} pods, {self.plan.idle:g} s")
            result.footprints.append(
                footprint(self.machine, node, self.plan.pods, self.plan.idle, server)
            )
        except Exception:
            say(f"the node's log ends:\n{tail(node.log)}")
            raise
        finally:
            node.stop()
            if server is not None:
                server.stop()
        result.seconds = time.perf_counter() - started
        return result


# The report


def ms(samples: Sequence[float], fraction: float) -> str:
    return f"{percentile(samples, fraction) * 1000:,.0f}" if samples else "-"


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def table(result: Run) -> str:
    plan = result.plan
    lines = [
        f"| create to Running | {plan.sequential} one at a time: p50 / p99, ms "
        f"| {plan.pods} at once: p50 / p99, ms | {plan.pods} at once: all Running, s | load |",
        "|---|---:|---:|---:|---|",
    ]
    for name, found in (
        ("containerd's floor: CRI RunPodSandbox + CreateContainer + StartContainer + status",
         result.floor),
        ("k3stw: pod create to its Ready condition, seen by a watch", result.k3stw),
    ):  # fmt: skip
        if found is None:
            continue
        lines.append(
            f"| {name} | {ms(found.sequential, 0.5)} / {ms(found.sequential, 0.99)} "
            f"| {ms(found.burst, 0.5)} / {ms(found.burst, 0.99)} | {found.burst_total:.2f} "
            f"| {found.load} |"
        )
    node = "agent" if plan.agent else "server"
    lines += [
        "",
        f"| idle node | k3stw {node} CPU, % of a core | k3stw {node} RSS, MiB "
        + ("| server (`--disable-agent`) RSS, MiB " if plan.agent else "")
        + "| containerd RSS, MiB | shims: count, RSS sum / PSS sum, MiB | load |",
        "|---|---:|---:|" + ("---:|" if plan.agent else "") + "---:|---:|---|",
    ]
    for f in result.footprints:
        lines.append(
            f"| {f.pods} pods, {f.seconds:.0f} s | {f.cpu_percent:.2f} | {f.rss:.1f} "
            + (f"| {f.server_rss:.1f} " if f.server_rss is not None else "")
            + f"| {f.containerd_rss:.1f} | {f.shims}, {f.shims_rss:.1f} / {f.shims_pss:.1f} "
            f"| {f.load} |"
        )
    return "\n".join(lines)


def goals(result: Run) -> str:
    parts = []
    if result.floor and result.k3stw and result.k3stw.sequential:
        over = percentile(result.k3stw.sequential, 0.5) - percentile(result.floor.sequential, 0.5)
        parts.append(
            f"p50 within the floor + {GOAL_OVER_FLOOR * 1000:.0f} ms: "
            f"{over * 1000:+.0f} ms ({verdict(over <= GOAL_OVER_FLOOR)})"
        )
    if result.k3stw and result.k3stw.burst:
        total = result.k3stw.burst_total
        parts.append(
            f"{result.plan.pods} pods Running within {GOAL_BURST:g} s: {total:.1f} s "
            f"({verdict(total <= GOAL_BURST)})"
        )
    busy = [f for f in result.footprints if f.pods]
    if busy:
        f = busy[-1]
        parts.append(
            f"with {f.pods} pods the node process idle under {GOAL_CPU:g}% of a core: "
            f"{f.cpu_percent:.2f}% ({verdict(f.cpu_percent < GOAL_CPU)}) and under 100 MB "
            f"({GOAL_RSS:.1f} MiB): {f.rss:.1f} MiB ({verdict(f.rss < GOAL_RSS)})"
        )
    return "Goals (issue 18): " + "; ".join(parts) + "."


def report(result: Run) -> str:
    plan = result.plan
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# Pods benchmark",
            "",
            f"Written by `python bench/pods.py --sequential {plan.sequential} --pods {plan.pods} "
            f"--idle {plan.idle:g}{' --agent' if plan.agent else ''}`: one test machine "
            "(own network, mount and PID namespaces), "
            "Debian's containerd with k3stw's generated config, busybox pods running "
            "`sleep 3600`, a bridge CNI. The floor is the same containerd (same binary, config, "
            "data directory and images) under k3stw's runtime service alone, before the server "
            "starts, driven through k3stw's `CRIClient` with the kubelet's own sandbox and "
            "container configs (`k3stw.kubelet.pods.spec`); its sandboxes are removed before "
            "the server runs. The k3stw rows time a pod from its create (POST) until a watch "
            "of its namespace sees its Ready condition true: the scheduler's bind, the "
            "kubelet's informer, its CRI calls and its status write. Both clients run inside "
            "the machine and share its 2 cores with the node. "
            + (
                "The pods run on a `k3s-agent` (its kubelet and containerd's supervision), the "
                "server (`--disable-agent`) being another process in the machine; the floor is "
                "skipped. The idle rows sample the agent process"
                if plan.agent
                else "The idle rows sample the server process (API, controllers, scheduler and "
                "kubelet in one)"
            )
            + f" after {SETTLE:g} s of settling; PSS splits the shims' shared pages between them.",
            "",
            f"Machine: {machine()}; load average (1, 5, 15 min) with each row",
            f"Date: {now}; {result.seconds:.0f} s in all",
            "",
            table(result),
            "",
            goals(result),
            "",
        ]
    )


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sequential", type=int, default=20, help="pods one at a time (20)")
    parser.add_argument("--pods", type=int, default=100, help="pods at once (100)")
    parser.add_argument("--idle", type=float, default=30.0, help="idle sample, s (30)")
    parser.add_argument(
        "--agent", action="store_true", help="run the pods on a k3s-agent, the server apart"
    )
    parser.add_argument("--output", help="also write the report to this file")
    args = parser.parse_args(argv)
    plan = Plan(args.sequential, args.pods, args.idle, args.agent)
    cleanups = Cleanups()
    work = Path(tempfile.mkdtemp(prefix="k3stw-bench-pods-"))
    say(f"work in {work}")
    try:
        text = report(Bench(cleanups, work, plan).run())
    finally:
        cleanups.run()
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inside"]:
        react(inside, (sys.argv[2:],))
    else:
        main(sys.argv[1:])
