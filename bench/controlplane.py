"""
Control-plane benchmark: the scheduler and the Deployment and ReplicaSet
controllers of a real ``twistd -n k3s-server --disable-agent``, with hollow
nodes (Node objects and their Leases, created and kept alive by this
process; no agents, no containers).

    python bench/controlplane.py [--nodes 100] [--pods 1000] [--replicas 1000]
                                 [--rounds 3] [--output docs/controlplane-benchmark.md]

Each round measures, in a fresh namespace each:

- pods: C{--pods} bare pods created by 32 concurrent clients, from the first
  create until every one has ``spec.nodeName`` (as a watch sees it);
- backlog: the same number of pods created while every node is cordoned,
  then every node uncordoned: the bind rate alone, from the first bind to
  the last that the watch sees;
- deployment: a Deployment of C{--replicas} replicas, from its create until
  every pod is bound;

and, while the server holds the nodes and the first phase's pods, its RSS
and the CPU seconds it spent on that phase (from ``/proc/<pid>``).  The
server runs on loopback (127.0.0.46) in a temporary directory and is ended
by its own PID.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall, deferLater, react
from twisted.python.failure import Failure

if __package__ in (None, ""):
    # Run as a script: make the checkout (tests.support) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The sibling benchmark's helpers (a script's own directory is on sys.path).
from api import machine

from k3stw.httpclient import HTTPSClient
from k3stw.kubeclient import KubeAPIError, KubeClient, Object
from k3stw.machinery.times import micro_time, rfc3339
from k3stw.pki.certs import KeyPair, load_pem_certificates, load_pem_key
from k3stw.pki.tls import PinnedCAPolicy
from tests.support.net import free_port

#: The server's twistd; C{BENCH_TWISTD} names another (a wrapper that profiles it, say).
TWISTD = os.environ.get("BENCH_TWISTD") or str(Path(sys.executable).parent / "twistd")
HOST = "127.0.0.46"
START_LIMIT = 60.0
#: Most requests in flight from this process at once.
CONCURRENCY = 32
#: How long one request may take: a loaded machine can stall the server for seconds.
CLIENT_TIMEOUT = 30.0
#: What the server logs when its scheduler or controllers lose their Lease.
LOST_LEASE = "failed to renew lease"
#: How long one phase may take before the run gives up.
PHASE_LIMIT = 120.0
#: A kubelet renews its Lease every quarter of its 40 s duration.
LEASE_SECONDS = 40
RENEW_EVERY = 10.0
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
#: A hollow node's size: scheduler_perf's default node (4 cpu, 32 GiB, 110 pods).
NODE_CAPACITY = {"cpu": "4", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
#: A bench pod's requests: scheduler_perf's default pod (100m cpu, 500 MiB).
POD_REQUESTS = {"cpu": "100m", "memory": "500Mi"}
GOAL_RATE = 200.0
GOAL_DEPLOYMENT = 10.0
GOAL_RSS = 200 * 1000 * 1000 / 2**20  # 200 MB in MiB


# The server


@dataclass
class Server:
    """A running ``twistd -n k3s-server`` and what a client needs to reach it."""

    process: subprocess.Popen[bytes]
    work: Path
    base: str

    @property
    def log(self) -> Path:
        return self.work / "server.log"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cpu_seconds(self) -> float:
        """User and system CPU the server has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mib(self, name: str = "VmRSS") -> float:
        """C{name} (VmRSS, VmHWM) of /proc/<pid>/status, in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {name} for {self.process.pid}")


def spawn_server(work: Path, host: str = HOST) -> Server:
    """Start a server without its own agent (every node is hollow)."""
    (work / "config.yaml").write_text("")
    port = free_port(host)
    argv = [
        TWISTD, "-n", "--pidfile=", "k3s-server", "--config", str(work / "config.yaml"),
        "--data-dir", str(work / "data"), "--bind-address", host,
        "--https-listen-port", str(port), "--write-kubeconfig", str(work / "k3s.yaml"),
        "--disable-agent", "--container-runtime", "none",
    ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("K3S_")}
    with (work / "server.log").open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=work, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    return Server(process, work, f"https://{host}:{port}")


async def sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def admin_client(reactor: Any, server: Server, connections: int) -> KubeClient:
    """The admin's client once the server answers /readyz, with C{connections} kept open."""
    tls = server.work / "data" / "server" / "tls"
    deadline = time.perf_counter() + START_LIMIT
    # The key is written before the certificate: wait for both.
    while not ((tls / "client-admin.key").exists() and (tls / "client-admin.crt").exists()):
        if server.process.poll() is not None or time.perf_counter() > deadline:
            raise RuntimeError(f"the server wrote no certificates:\n{server.log.read_text()}")
        await sleep(reactor, 0.1)
    admin = KeyPair(
        load_pem_certificates((tls / "client-admin.crt").read_bytes())[0],
        load_pem_key((tls / "client-admin.key").read_bytes()),
    )
    policy = PinnedCAPolicy((tls / "server-ca.crt").read_bytes(), admin)
    http = HTTPSClient(reactor, policy, timeout=CLIENT_TIMEOUT)
    http.pool.maxPersistentPerHost = connections
    client = KubeClient(http, server.base)
    while True:
        try:
            await client.http.fetch(server.base + "/readyz")
            # The default ServiceAccount admission needs exists once the controllers run.
            await client.get("/api/v1/namespaces/default/serviceaccounts/default")
            return client
        except Exception:
            if server.process.poll() is not None or time.perf_counter() > deadline:
                tail = server.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server did not become ready:\n{tail}") from None
        await sleep(reactor, 0.1)


# Requests, bounded


async def bounded(
    items: Iterable[Any], call: Callable[[Any], Awaitable[object]], concurrency: int = CONCURRENCY
) -> None:
    """C{call(item)} for every item, at most C{concurrency} at once; the first failure raises."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await call(item)

    workers = [Deferred.fromCoroutine(worker()) for _ in range(concurrency)]
    for ok, value in await DeferredList(workers, consumeErrors=True):
        if not ok:
            cast(Failure, value).raiseException()


# Hollow nodes


def node_name(index: int) -> str:
    return f"hollow-{index:04d}"


def hollow_node(name: str, index: int, now: float, unschedulable: bool = False) -> Object:
    """A Node as a kubelet registers it: Ready, with a realistic size and the usual labels."""
    stamp = rfc3339(now)
    conditions = [
        {"type": kind, "status": "False", "reason": f"KubeletHas{reason}"}
        for kind, reason in (
            ("MemoryPressure", "SufficientMemory"),
            ("DiskPressure", "NoDiskPressure"),
            ("PIDPressure", "SufficientPID"),
        )
    ]
    conditions.append(
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "hollow"}
    )
    for condition in conditions:
        condition.update(lastHeartbeatTime=stamp, lastTransitionTime=stamp)
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    }
    address = f"10.{(index >> 8) & 255}.{index & 255}.1"  # never dialled: only data
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": True} if unschedulable else {},
        "status": {
            "capacity": dict(NODE_CAPACITY),
            "allocatable": dict(NODE_CAPACITY),
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": address},
                {"type": "Hostname", "address": name},
            ],
        },
    }


def node_lease(node: Object, now: float) -> Object:
    """The Lease a kubelet keeps for its node in kube-node-lease, owned by the Node."""
    name = node["metadata"]["name"]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
            ],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_time(now),
        },
    }


@dataclass
class HollowNodes:
    """C{count} nodes this process registers and keeps alive by renewing their Leases."""

    reactor: Any
    client: KubeClient
    count: int
    names: list[str] = field(default_factory=list)
    renewals: int = 0
    _loop: LoopingCall | None = None

    async def register(self) -> None:
        async def one(index: int) -> None:
            name = node_name(index)
            node = await self.client.create("/api/v1/nodes", hollow_node(name, index, time.time()))
            if not _ready(node):  # a create that drops status: post it as the kubelet would
                status = hollow_node(name, index, time.time())["status"]
                node = await self.client.merge_patch(
                    f"/api/v1/nodes/{name}/status", {"status": status}
                )
            await self.client.create(LEASES, node_lease(node, time.time()))
            self.names.append(name)

        await bounded(range(self.count), one)
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.renew()))
        self._loop.clock = self.reactor
        self._loop.start(RENEW_EVERY, now=False)

    async def renew(self) -> None:
        async def one(name: str) -> None:
            patch = {"spec": {"renewTime": micro_time(time.time())}}
            await self.client.merge_patch(f"{LEASES}/{name}", patch)

        try:
            await bounded(list(self.names), one, concurrency=4)
        except Exception as e:  # a kubelet tries again at its next renewal; so do we
            say(f"renewing the Leases failed: {e}")
            return
        self.renewals += 1

    async def cordon(self, unschedulable: bool) -> None:
        patch = {"spec": {"unschedulable": True if unschedulable else None}}
        await bounded(
            list(self.names), lambda name: self.client.merge_patch(f"/api/v1/nodes/{name}", patch)
        )

    async def ready(self) -> int:
        """How many of the nodes the server shows Ready and without taints."""
        nodes = (await self.client.get("/api/v1/nodes"))["items"]
        return sum(
            1
            for node in nodes
            if node["metadata"]["name"] in self.names
            and _ready(node)
            and not (node.get("spec") or {}).get("taints")
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()


def _ready(node: Object) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# Pods and their binding, as a watch sees it


LABELS = {"app": "bench"}


def pod_spec() -> Object:
    container = {
        "name": "pause",
        "image": "registry.k8s.io/pause:3.10",
        "resources": {"requests": dict(POD_REQUESTS)},
    }
    return {"containers": [container]}


def bench_pod(name: str) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(LABELS)},
        "spec": pod_spec(),
    }


def deployment(name: str, replicas: int) -> Object:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(LABELS)},
            "template": {"metadata": {"labels": dict(LABELS)}, "spec": pod_spec()},
        },
    }


class Bindings:
    """
    A watch of one namespace's pods: when each pod was first seen bound
    (C{perf_counter} seconds), and a Deferred that fires once C{target} are.
    """

    def __init__(self, reactor: Any, client: KubeClient, namespace: str, target: int) -> None:
        self.reactor = reactor
        self.client = client
        self.namespace = namespace
        self.target = target
        self.bound: dict[str, float] = {}
        self.nodes: dict[str, str] = {}
        self.done: Deferred[None] = Deferred()
        self._watch: Deferred[None] | None = None

    async def start(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        listed = await self.client.get(path + "?limit=1")
        params = {
            "resourceVersion": listed["metadata"]["resourceVersion"],
            "timeoutSeconds": str(int(PHASE_LIMIT * 2)),
        }
        self._watch = Deferred.fromCoroutine(self.client.watch(path, params, self._event))
        self._watch.addErrback(self._failed)

    def _event(self, kind: str, pod: Object) -> None:
        name = pod["metadata"]["name"]
        node = (pod.get("spec") or {}).get("nodeName")
        if kind == "DELETED" or not node or name in self.bound:
            return
        self.bound[name] = time.perf_counter()
        self.nodes[name] = node
        if len(self.bound) >= self.target and not self.done.called:
            self.done.callback(None)

    def _failed(self, failure: Any) -> None:
        if not self.done.called:
            self.done.errback(failure)

    async def wait(self) -> None:
        waiting = self.done.addTimeout(PHASE_LIMIT, self.reactor)
        try:
            await waiting
        finally:
            if self._watch is not None:
                self._watch.cancel()

    def bind_rate(self) -> float:
        """Pods bound per second from the first bind to the last."""
        times = sorted(self.bound.values())
        span = times[-1] - times[0]
        return (len(times) - 1) / span if span > 0 else float("nan")


async def new_namespace(client: KubeClient, name: str) -> None:
    await client.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )


#: DeleteOptions that remove a pod at once (``kubectl delete --grace-period=0 --force``).
FORCE = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}


async def drop_namespace(reactor: Any, client: KubeClient, name: str) -> None:
    """
    Delete a namespace with everything in it, and wait until it is gone.  Its
    pods are force-deleted: a hollow node has no kubelet to confirm a graceful
    deletion, so they would stay Terminating (and the namespace with them).
    """
    await client.delete(f"/api/v1/namespaces/{name}")
    deadline = time.perf_counter() + PHASE_LIMIT
    while time.perf_counter() < deadline:
        try:
            await client.call("DELETE", f"/api/v1/namespaces/{name}/pods", FORCE)
            await client.get(f"/api/v1/namespaces/{name}")
        except KubeAPIError as e:
            if e.code == 404:
                return
            raise
        await sleep(reactor, 0.25)
    raise RuntimeError(f"namespace {name} was not gone within {PHASE_LIMIT:g} s")


# One round


@dataclass
class Round:
    """One round's figures (seconds, unless named otherwise)."""

    pods_created: float = 0.0
    pods_bound: float = 0.0
    backlog_rate: float = 0.0
    backlog_bound: float = 0.0
    deployment_bound: float = 0.0
    phase_cpu: float = 0.0
    deployment_cpu: float = 0.0
    holding_rss: float = 0.0
    spread: tuple[int, int] = (0, 0)


def spread_of(bindings: Bindings, nodes: Sequence[str]) -> tuple[int, int]:
    """The fewest and most pods any of C{nodes} got."""
    counts = dict.fromkeys(nodes, 0)
    for node in bindings.nodes.values():
        counts[node] = counts.get(node, 0) + 1
    return min(counts.values()), max(counts.values())


async def pods_phase(
    reactor: Any, client: KubeClient, namespace: str, count: int
) -> tuple[float, float, Bindings]:
    """Create C{count} pods; seconds until all were created and until all were bound."""
    bindings = Bindings(reactor, client, namespace, count)
    await bindings.start()
    path = f"/api/v1/namespaces/{namespace}/pods"
    started = time.perf_counter()
    await bounded(range(count), lambda i: client.create(path, bench_pod(f"pod-{i:05d}")))
    created = time.perf_counter() - started
    await bindings.wait()
    return created, max(bindings.bound.values()) - started, bindings


async def backlog_phase(
    reactor: Any, client: KubeClient, nodes: HollowNodes, namespace: str, count: int
) -> tuple[float, float]:
    """
    C{count} pods made while every node is cordoned, then every node
    uncordoned: the bind rate from the first bind to the last, and seconds
    from the uncordon until all were bound.
    """
    await nodes.cordon(True)
    path = f"/api/v1/namespaces/{namespace}/pods"
    await bounded(range(count), lambda i: client.create(path, bench_pod(f"held-{i:05d}")))
    bindings = Bindings(reactor, client, namespace, count)
    await bindings.start()
    started = time.perf_counter()
    await nodes.cordon(False)
    await bindings.wait()
    return bindings.bind_rate(), max(bindings.bound.values()) - started


async def deployment_phase(
    reactor: Any, client: KubeClient, namespace: str, replicas: int
) -> float:
    """Seconds from a Deployment's create until all its C{replicas} pods are bound."""
    bindings = Bindings(reactor, client, namespace, replicas)
    await bindings.start()
    started = time.perf_counter()
    await client.create(
        f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment("bench", replicas)
    )
    await bindings.wait()
    return max(bindings.bound.values()) - started


def say(text: str) -> None:
    print(f"-- {text}", file=sys.stderr, flush=True)


async def one_round(
    reactor: Any, server: Server, client: KubeClient, nodes: HollowNodes, plan: Plan, number: int
) -> Round:
    out = Round()
    namespace = f"cp-{number}-pods"
    await new_namespace(client, namespace)
    say(f"round {number}: {plan.pods} pods")
    cpu = server.cpu_seconds()
    out.pods_created, out.pods_bound, bindings = await pods_phase(
        reactor, client, namespace, plan.pods
    )
    out.phase_cpu = server.cpu_seconds() - cpu
    out.spread = spread_of(bindings, nodes.names)
    await sleep(reactor, 1.0)  # the events and status writes behind the last binds settle
    out.holding_rss = server.memory_mib()
    await drop_namespace(reactor, client, namespace)

    namespace = f"cp-{number}-backlog"
    await new_namespace(client, namespace)
    say(f"round {number}: backlog of {plan.pods} pods on cordoned nodes")
    out.backlog_rate, out.backlog_bound = await backlog_phase(
        reactor, client, nodes, namespace, plan.pods
    )
    await drop_namespace(reactor, client, namespace)

    namespace = f"cp-{number}-deploy"
    await new_namespace(client, namespace)
    say(f"round {number}: a Deployment of {plan.replicas} replicas")
    cpu = server.cpu_seconds()
    out.deployment_bound = await deployment_phase(reactor, client, namespace, plan.replicas)
    out.deployment_cpu = server.cpu_seconds() - cpu
    await drop_namespace(reactor, client, namespace)
    return out


@dataclass(frozen=True)
class Plan:
    nodes: int
    pods: int
    replicas: int
    rounds: int


@dataclass
class Run:
    """Every round, and the server's footprint."""

    plan: Plan
    rounds: list[Round] = field(default_factory=list)
    idle_rss: float = 0.0
    nodes_rss: float = 0.0
    peak_rss: float = 0.0
    total_cpu: float = 0.0
    renewals: int = 0
    lost_leases: int = 0
    seconds: float = 0.0


async def run(reactor: Any, plan: Plan, host: str = HOST) -> Run:
    """Start a server, register the hollow nodes, run the rounds, stop everything."""
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="k3stw-bench-controlplane-"))
    server = spawn_server(work, host)
    trigger = reactor.addSystemEventTrigger("before", "shutdown", server.stop)
    result = Run(plan)
    nodes: HollowNodes | None = None
    client: KubeClient | None = None
    try:
        say(f"server pid {server.process.pid}, log {server.log}")
        client = await admin_client(reactor, server, CONCURRENCY + 2)
        await sleep(reactor, 1.0)
        result.idle_rss = server.memory_mib()
        say(f"registering {plan.nodes} hollow nodes")
        nodes = HollowNodes(reactor, client, plan.nodes)
        await nodes.register()
        if await nodes.ready() != plan.nodes:
            raise RuntimeError(f"only {await nodes.ready()} of {plan.nodes} nodes are Ready")
        result.nodes_rss = server.memory_mib()
        for number in range(1, plan.rounds + 1):
            done = await one_round(reactor, server, client, nodes, plan, number)
            say(f"round {number}: {done}")
            result.rounds.append(done)
        ready = await nodes.ready()
        if ready != plan.nodes:
            raise RuntimeError(f"only {ready} of {plan.nodes} nodes stayed Ready")
        result.peak_rss = server.memory_mib("VmHWM")
        result.total_cpu = server.cpu_seconds()
        result.renewals = nodes.renewals
    except Exception:
        kept = Path(tempfile.mkdtemp(prefix="k3stw-bench-controlplane-failed-")) / "server.log"
        shutil.copy(server.log, kept)
        say(f"the server's log ({kept}) ends:\n" + kept.read_text(errors="replace")[-3000:])
        raise
    finally:
        if nodes is not None:
            nodes.stop()
        if client is not None:
            await client.http.close()
        reactor.removeSystemEventTrigger(trigger)
        server.stop()
        result.lost_leases = server.log.read_text(errors="replace").count(LOST_LEASE)
        shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    return result


# The report


def spread(values: Sequence[float], best: Callable[[Sequence[float]], float], unit: str) -> str:
    """Best of the rounds, and the range when there are several."""
    text = f"{best(values):,.1f}{unit}"
    if len(values) > 1:
        text += f" ({min(values):,.1f}-{max(values):,.1f})"
    return text


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def table(result: Run) -> str:
    plan, rounds = result.plan, result.rounds
    end_to_end = [plan.pods / r.pods_bound for r in rounds]
    creates = [plan.pods / r.pods_created for r in rounds]
    backlog = [r.backlog_rate for r in rounds]
    backlog_bound = [r.backlog_bound for r in rounds]
    deploy = [r.deployment_bound for r in rounds]
    cpu = [r.phase_cpu for r in rounds]
    per_cpu = [plan.pods / r.phase_cpu for r in rounds if r.phase_cpu]
    deploy_cpu = [r.deployment_cpu for r in rounds]
    holding = [r.holding_rss for r in rounds]
    fewest = min(r.spread[0] for r in rounds)
    most = max(r.spread[1] for r in rounds)
    pods, backlogged = f"{plan.pods:,} pods", f"backlog of {plan.pods:,}"
    rows = [
        (f"{pods}: created by {CONCURRENCY} clients, creates/s", spread(creates, max, "")),
        (f"{pods}: first create to all bound, pods bound/s", spread(end_to_end, max, "")),
        (f"{pods}: pods per node (fewest-most)", f"{fewest}-{most}"),
        (f"{pods}: server CPU for the phase, s", spread(cpu, min, "")),
        (f"{pods}: pods per server CPU-second", spread(per_cpu, max, "") if per_cpu else "-"),
        (f"{backlogged}: bind rate, first to last bind, pods/s", spread(backlog, max, "")),
        (f"{backlogged}: uncordon to all bound, s", spread(backlog_bound, min, "")),
        (f"Deployment of {plan.replicas:,}: create to all bound, s", spread(deploy, min, "")),
        (f"Deployment of {plan.replicas:,}: server CPU, s", spread(deploy_cpu, min, "")),
        ("server RSS: started, no nodes, MiB", f"{result.idle_rss:.1f}"),
        (f"server RSS: {plan.nodes} nodes, MiB", f"{result.nodes_rss:.1f}"),
        (f"server RSS: {plan.nodes} nodes and {pods}, MiB", spread(holding, min, "")),
        ("server RSS: peak of the run (VmHWM), MiB", f"{result.peak_rss:.1f}"),
        ("server CPU: whole run, s", f"{result.total_cpu:.1f}"),
    ]
    lines = ["| measure | best (range) |", "|---|---:|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    return "\n".join(lines)


def goals(result: Run) -> str:
    rounds = result.rounds
    rate = max(r.backlog_rate for r in rounds)
    end_to_end = max(result.plan.pods / r.pods_bound for r in rounds)
    deploy = min(r.deployment_bound for r in rounds)
    first, most = rounds[0].holding_rss, max(r.holding_rss for r in rounds)
    return (
        f"Goals (issue 17): >= {GOAL_RATE:.0f} pods bound/s: bind rate {rate:,.0f}, "
        f"end to end {end_to_end:,.0f} ({verdict(min(rate, end_to_end) >= GOAL_RATE)}); "
        f"{result.plan.replicas:,} replicas bound within {GOAL_DEPLOYMENT:g} s: {deploy:.1f} s "
        f"({verdict(deploy <= GOAL_DEPLOYMENT)}); server RSS < 200 MB ({GOAL_RSS:.0f} MiB) "
        f"holding {result.plan.nodes} nodes and {result.plan.pods:,} pods: {first:.1f} MiB in "
        f"round 1, {most:.1f} MiB at most, after earlier rounds' pods came and went "
        f"({verdict(most < GOAL_RSS)}); the run's peak {result.peak_rss:.1f} MiB."
    )


#: kube-scheduler's own figures, quoted (there is no kube-scheduler on this machine to run).
PEER = (
    "Peer, quoted and not measured here: kube-scheduler's `scheduler_perf` runs the scheduler "
    "alone, in Go, against an in-process kube-apiserver and etcd, with the same node (4 cpu, "
    "32Gi, 110 pods) and pod (100m, 500Mi) templates as this benchmark. Its "
    "`SchedulingBasic/5000Nodes_10000Pods` case fails below a threshold of 680 pods/s "
    "(`test/integration/scheduler_perf/misc/performance-config.yaml`; 810 pods/s for "
    "`5000Nodes_50000Pods`), and a run posted in kubernetes/kubernetes#131345 (April 2025) "
    "saw 600-690 pods/s per one-second sample. Those figures come from Kubernetes' CI "
    "benchmark machines, far bigger than this 2-core one, with the pods created by the "
    "test's own client and no kube-controller-manager running; here one "
    "Python process serves the API, stores every write in SQLite, runs the controllers and "
    "the scheduler, and shares its 2 cores with the benchmark's client."
)


def report(result: Run) -> str:
    plan = result.plan
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join(
        [
            "# Control-plane benchmark",
            "",
            f"Written by `python bench/controlplane.py --nodes {plan.nodes} --pods {plan.pods} "
            f"--replicas {plan.replicas} --rounds {plan.rounds}`: a real "
            "`twistd -n k3s-server --disable-agent` on SQLite, with hollow nodes (Node objects "
            f"of {NODE_CAPACITY['cpu']} cpu, {NODE_CAPACITY['memory']}, {NODE_CAPACITY['pods']} "
            f"pods, their Leases renewed every {RENEW_EVERY:g} s by the benchmark; no agents, no "
            f"containers) and pods requesting {POD_REQUESTS['cpu']} cpu and "
            f"{POD_REQUESTS['memory']}. The benchmark's client (TLS, JSON, the watch) shares the "
            "cores with the server. Bound means a watch of the namespace saw `spec.nodeName`. "
            "The wall-clock rates fall with the server's share of the cores when the machine "
            "is loaded; pods per server CPU-second (from `/proc/<pid>/stat`) does not.",
            "",
            f"Machine: {machine()}; load average at the end {load}",
            f"Date: {now}; {plan.rounds} round(s), {result.seconds:.0f} s in all, "
            f"{result.renewals} rounds of node Lease renewals, {result.lost_leases} leader "
            "Lease renewals the server missed (each stops its scheduler or controllers for a "
            "while); best of the rounds (range)",
            "",
            table(result),
            "",
            goals(result),
            "",
            PEER,
            "",
        ]
    )


def main(reactor: Any, argv: Sequence[str]) -> Deferred[None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=100, help="hollow nodes (default 100)")
    parser.add_argument("--pods", type=int, default=1000, help="pods per phase (default 1000)")
    parser.add_argument("--replicas", type=int, default=1000, help="Deployment replicas")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--output", help="also write the report to this file")
    args = parser.parse_args(argv)
    plan = Plan(args.nodes, args.pods, args.replicas, max(1, args.rounds))

    async def go() -> None:
        text = report(await run(reactor, plan))
        print(text)
        if args.output:
            Path(args.output).write_text(text)

    return Deferred.fromCoroutine(go())


if __name__ == "__main__":
    react(main, (sys.argv[1:],))
