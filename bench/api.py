"""
Kubernetes API benchmark: creates, gets, lists and watch delivery against a
real ``twistd -n k3s-server`` on SQLite and on etcd, at 1, 16 and 64
concurrent clients, and the same operations straight to etcd through its v3
JSON gateway in the same run, as the storage ceiling.

    python bench/api.py [--quick] [--output docs/api-benchmark.md]

``--checks`` measures instead what the API's checks cost: Deployment creates
by a user whom RBAC allows (a RoleBinding to ``edit``) at 16 and 64 clients,
against a server with validation, defaulting and authorization on and one
started with ``--unchecked-api``, in the same run.

    python bench/api.py --checks [--quick] [--output docs/api-checks-benchmark.md]

It starts every process itself on loopback (127.0.0.40-42, free ports), runs
bounded loops (a count and a time limit per cell, whichever comes first),
stops every process by its own PID and prints one Markdown table.
``--quick`` is the CI mode: small counts, fewer cells.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import quote

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import deferLater, react
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IPolicyForHTTPS, IResponse
from zope.interface import implementer

if __package__ in (None, ""):
    # Run as a script: make the checkout (tests.support) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.net import free_port

TWISTD = str(Path(sys.executable).parent / "twistd")
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
SQLITE_HOST = "127.0.0.40"
ETCD_SERVER_HOST = "127.0.0.41"
ETCD_HOST = "127.0.0.42"
CHECKED_HOST = "127.0.0.43"
UNCHECKED_HOST = "127.0.0.44"
#: The user the checks benchmark creates as: not an admin, so RBAC decides every request.
BENCH_USER = "bench-user"
NAMESPACE = "bench"
SMALL_NAMESPACE = "bench-small"
WATCH_NAMESPACE = "bench-watch"
#: One ConfigMap value: a 256-byte payload, as in the datastore benchmark.
PAYLOAD = "x" * 256
START_LIMIT = 60.0
#: How long one event may take to reach every watcher before the cell gives up.
DELIVERY_LIMIT = 10.0


@dataclass(frozen=True)
class Budget:
    """
    How much work each cell may do: a loop stops at C{ops} operations or
    C{seconds}, whichever comes first.
    """

    clients: tuple[int, ...]
    ops: int
    seconds: float
    small_list: int
    list_keys: int
    list_repeats: int
    watchers: tuple[int, ...]
    watch_events: int


FULL = Budget(
    clients=(1, 16, 64),
    ops=2000,
    seconds=4.0,
    small_list=100,
    list_keys=10_000,
    list_repeats=5,
    watchers=(1, 16, 64, 500),
    watch_events=30,
)
QUICK = Budget(
    clients=(1, 16),
    ops=200,
    seconds=1.0,
    small_list=20,
    list_keys=1_000,
    list_repeats=2,
    watchers=(16,),
    watch_events=5,
)


# Numbers


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank C{fraction} percentile of C{samples} (NaN when empty)."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Cell:
    """One measurement: latencies (seconds) and the work done in C{elapsed} seconds."""

    latencies: list[float] = field(default_factory=list)
    done: int = 0
    elapsed: float = 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 0.99) * 1000

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed else float("nan")


async def gather(coroutines: Sequence[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run C{coroutines} together; raise the first failure once all ended."""
    results = await DeferredList(
        [Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True
    )
    for ok, value in results:
        if not ok:
            cast(Failure, value).raiseException()
    return [value for _, value in results]


async def run_clients(clients: int, budget: Budget, op: Callable[[int], Awaitable[object]]) -> Cell:
    """
    Call C{op(i)} from C{clients} concurrent loops until C{budget.ops} calls
    were made or C{budget.seconds} passed, timing each call.
    """
    cell = Cell()
    started = time.perf_counter()
    deadline = started + budget.seconds
    issued = 0

    async def client() -> None:
        nonlocal issued
        while issued < budget.ops and time.perf_counter() < deadline:
            i = issued
            issued += 1
            before = time.perf_counter()
            await op(i)
            cell.latencies.append(time.perf_counter() - before)
            cell.done += 1

    await gather([client() for _ in range(clients)])
    cell.elapsed = time.perf_counter() - started
    return cell


# HTTP


class UnexpectedAnswer(Exception):
    """A server answered something else than expected; the message says what."""


def json_body(document: object) -> FileBodyProducer:
    return FileBodyProducer(BytesIO(json.dumps(document).encode()))


async def fetch(
    agent: IAgent, method: bytes, url: str, body: object = None, expect: int = 200
) -> bytes:
    """One request; its body, or L{UnexpectedAnswer} on another status."""
    headers = Headers({b"Accept": [b"application/json"]})
    producer = None
    if body is not None:
        headers.addRawHeader(b"Content-Type", b"application/json")
        producer = json_body(body)
    response = await agent.request(method, url.encode(), headers, producer)
    raw = await readBody(response)
    if response.code != expect:
        raise UnexpectedAnswer(f"{method.decode()} {url}: {response.code} {raw[:300]!r}")
    return raw


async def call(
    agent: IAgent, method: bytes, url: str, body: object = None, expect: int = 200
) -> Any:
    """One request; the decoded JSON answer."""
    return json.loads(await fetch(agent, method, url, body, expect))


class Lines(TwistedProtocol):
    """A streaming body of newline-delimited JSON: each document goes to C{on_document}."""

    def __init__(self, on_document: Callable[[Any], None]) -> None:
        self._on_document = on_document
        self._partial = b""
        self.ended: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        for line in complete:
            if line.strip():
                self._on_document(json.loads(line))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.ended.called:
            self.ended.callback(None)

    def stop(self) -> None:
        if self.transport is not None and not self.ended.called:
            cast(IPushProducer, self.transport).stopProducing()


async def stream(
    agent: IAgent, url: str, on_document: Callable[[Any], None], body: object = None
) -> Lines:
    """Open a streaming request; returns once the response headers arrived."""
    method = b"GET" if body is None else b"POST"
    producer = None if body is None else json_body(body)
    response: IResponse = await agent.request(method, url.encode(), None, producer)
    if response.code != 200:
        raise UnexpectedAnswer(f"watch {url}: {response.code} {(await readBody(response))[:300]!r}")
    lines = Lines(on_document)
    response.deliverBody(lines)
    return lines


@implementer(IPolicyForHTTPS)
class ClientCertificatePolicy:
    """TLS to the API server: trust its CA only and present a client certificate (the admin's)."""

    def __init__(self, tls_dir: Path, client_pem: bytes | None = None) -> None:
        """:param client_pem: a certificate and its key; by default the admin's."""
        self._ca = Certificate.loadPEM((tls_dir / "server-ca.crt").read_bytes())
        if client_pem is None:
            client_pem = (tls_dir / "client-admin.crt").read_bytes() + (
                tls_dir / "client-admin.key"
            ).read_bytes()
        self._client = PrivateCertificate.loadPEM(client_pem)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(
            hostname.decode(), trustRoot=self._ca, clientCertificate=self._client
        )


def new_pool(reactor: Any, size: int) -> HTTPConnectionPool:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = size
    pool.retryAutomatically = False
    return pool


# Targets: the same operations against the API server and against etcd


class Target(Protocol):
    """What a cell runs: one object store, spoken to over HTTP."""

    async def ping(self) -> None: ...

    async def prepare(self, namespace: str) -> None: ...

    async def create(self, namespace: str, name: str) -> None: ...

    async def get(self, namespace: str, name: str) -> None: ...

    async def list(self, namespace: str, page: int = 0) -> int: ...

    async def watch(self, namespace: str, on_name: Callable[[str], None]) -> Lines: ...


def configmap(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"v": PAYLOAD},
    }


#: The ConfigMap kube-controller-manager (and k3stw) puts in every namespace.
ROOT_CA = "kube-root-ca.crt"


class KubernetesTarget:
    """ConfigMaps through the Kubernetes API of a k3s-server."""

    def __init__(self, agent: IAgent, base: str) -> None:
        self._agent = agent
        self._base = base

    def _url(self, namespace: str, rest: str = "") -> str:
        return f"{self._base}/api/v1/namespaces/{namespace}/configmaps{rest}"

    async def ping(self) -> None:
        await call(self._agent, b"GET", f"{self._base}/version")

    async def prepare(self, namespace: str) -> None:
        document = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        await call(self._agent, b"POST", f"{self._base}/api/v1/namespaces", document, 201)

    async def create(self, namespace: str, name: str) -> None:
        await call(self._agent, b"POST", self._url(namespace), configmap(name), 201)

    async def get(self, namespace: str, name: str) -> None:
        await call(self._agent, b"GET", self._url(namespace, f"/{name}"))

    async def list(self, namespace: str, page: int = 0) -> int:
        seen = 0
        token = ""
        while True:
            query = f"?limit={page}&continue={quote(token)}" if page else ""
            answer = await call(self._agent, b"GET", self._url(namespace, query))
            # Not the one every namespace holds (kube-root-ca.crt): the bench's own.
            seen += sum(1 for item in answer["items"] if item["metadata"]["name"] != ROOT_CA)
            token = answer["metadata"].get("continue", "")
            if not token:
                return seen

    async def watch(self, namespace: str, on_name: Callable[[str], None]) -> Lines:
        listed = await call(self._agent, b"GET", self._url(namespace, "?limit=1"))
        version = listed["metadata"]["resourceVersion"]

        def on_event(event: Any) -> None:
            if event["type"] == "ADDED":
                on_name(event["object"]["metadata"]["name"])

        query = f"?watch=true&resourceVersion={version}&timeoutSeconds=600"
        return await stream(self._agent, self._url(namespace, query), on_event)


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with C{prefix} (prefix ends in '/')."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class EtcdTarget:
    """
    The ceiling: the same objects as plain keys through etcd's JSON gateway
    (put, range, watch), with values the size of what the API server stores.
    """

    def __init__(self, agent: IAgent, base: str) -> None:
        self._agent = agent
        self._base = base
        self._value = b64(json.dumps(configmap("x" * 20)) + " " * 250)

    @staticmethod
    def _prefix(namespace: str) -> bytes:
        return f"/ceiling/configmaps/{namespace}/".encode()

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        return await call(self._agent, b"POST", self._base + path, body)

    async def ping(self) -> None:
        await call(self._agent, b"GET", f"{self._base}/health")

    async def prepare(self, namespace: str) -> None:
        pass

    async def create(self, namespace: str, name: str) -> None:
        key = b64(self._prefix(namespace) + name.encode())
        await self._post("/v3/kv/put", {"key": key, "value": self._value})

    async def get(self, namespace: str, name: str) -> None:
        answer = await self._post(
            "/v3/kv/range", {"key": b64(self._prefix(namespace) + name.encode())}
        )
        if not answer.get("kvs"):
            raise UnexpectedAnswer(f"etcd has no {namespace}/{name}")

    async def list(self, namespace: str, page: int = 0) -> int:
        prefix = self._prefix(namespace)
        body: dict[str, Any] = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        if page:
            body["limit"] = str(page)
        seen = 0
        while True:
            answer = await self._post("/v3/kv/range", body)
            kvs = answer.get("kvs", [])
            seen += len(kvs)
            if not answer.get("more"):
                return seen
            # The next page: after the last key, from the same snapshot.
            body["key"] = b64(base64.b64decode(kvs[-1]["key"]) + b"\x00")
            body["revision"] = answer["header"]["revision"]

    async def watch(self, namespace: str, on_name: Callable[[str], None]) -> Lines:
        prefix = self._prefix(namespace)
        created: Deferred[None] = Deferred()

        def on_message(message: Any) -> None:
            result = message.get("result", {})
            if result.get("created") and not created.called:
                created.callback(None)
            for event in result.get("events", []):
                if event.get("type", "PUT") == "PUT":
                    on_name(base64.b64decode(event["kv"]["key"]).decode().rsplit("/", 1)[1])

        request = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}}
        lines = await stream(self._agent, self._base + "/v3/watch", on_message, request)
        await created
        return lines


# Cells


async def fill(target: Target, namespace: str, names: Sequence[str]) -> None:
    """Create C{names} from 16 concurrent clients (not measured)."""
    queue = iter(names)

    async def client() -> None:
        for name in queue:
            await target.create(namespace, name)

    await gather([client() for _ in range(16)])


async def watch_delivery(target: Target, watchers: int, budget: Budget, reactor: Any) -> Cell:
    """
    C{watchers} watches on one namespace; then one create at a time, timed
    from just before the request is sent to each watcher parsing its ADDED.
    """
    namespace = f"{WATCH_NAMESPACE}-{watchers}"
    await target.prepare(namespace)
    pending: dict[str, tuple[float, list[int], Deferred[None]]] = {}
    cell = Cell()

    def on_name(name: str) -> None:
        entry = pending.get(name)
        if entry is None:
            return
        cell.latencies.append(time.perf_counter() - entry[0])
        entry[1][0] -= 1
        if entry[1][0] == 0:
            del pending[name]
            entry[2].callback(None)

    streams: list[Lines] = []
    try:
        for start in range(0, watchers, 50):
            batch = [
                target.watch(namespace, on_name) for _ in range(start, min(watchers, start + 50))
            ]
            streams.extend(await gather(batch))
        started = time.perf_counter()
        for i in range(budget.watch_events):
            if time.perf_counter() - started > budget.seconds:
                break
            name = f"event-{i:05d}"
            everyone: Deferred[None] = Deferred()
            pending[name] = (time.perf_counter(), [watchers], everyone)
            await target.create(namespace, name)
            await everyone.addTimeout(DELIVERY_LIMIT, reactor)
            cell.done += watchers
        cell.elapsed = time.perf_counter() - started
    finally:
        for lines in streams:
            lines.stop()
    return cell


Results = dict[tuple[str, int], Cell]


async def bench_target(
    target: Target, budget: Budget, reactor: Any, log: Callable[[str], None]
) -> Results:
    """Every cell against one target."""
    out: Results = {}
    # Connections (and TLS handshakes) first, so that no cell pays for them.
    await gather([target.ping() for _ in range(max(budget.clients))])
    await target.prepare(NAMESPACE)
    created: list[str] = []
    for clients in budget.clients:
        log(f"create x{clients}")

        async def create(i: int, prefix: str = f"c{clients}-") -> None:
            await target.create(NAMESPACE, f"{prefix}{i:06d}")
            created.append(f"{prefix}{i:06d}")

        out["create", clients] = await run_clients(clients, budget, create)
    for clients in budget.clients:
        log(f"get x{clients}")

        async def get(i: int) -> None:
            await target.get(NAMESPACE, created[i % len(created)])

        out["get", clients] = await run_clients(clients, budget, get)

    await target.prepare(SMALL_NAMESPACE)
    await fill(target, SMALL_NAMESPACE, [f"s-{i:05d}" for i in range(budget.small_list)])
    for clients in budget.clients:
        log(f"list {budget.small_list} x{clients}")

        async def small_list(i: int) -> None:
            seen = await target.list(SMALL_NAMESPACE)
            if seen != budget.small_list:
                raise UnexpectedAnswer(f"listed {seen} of {budget.small_list}")

        out["list_small", clients] = await run_clients(clients, budget, small_list)

    log(f"fill to {budget.list_keys}")
    missing = budget.list_keys - len(created)
    await fill(target, NAMESPACE, [f"fill-{i:06d}" for i in range(max(0, missing))])
    total = max(budget.list_keys, len(created))
    big = replace(budget, ops=budget.list_repeats, seconds=30.0)
    for key, page in (("list_big", 0), ("list_paged", 500)):
        log(key)

        async def big_list(i: int, page: int = page) -> None:
            seen = await target.list(NAMESPACE, page)
            if seen != total:
                raise UnexpectedAnswer(f"listed {seen} of {total}")

        out[key, 1] = await run_clients(1, big, big_list)
    for watchers in budget.watchers:
        log(f"watch x{watchers}")
        out["watch", watchers] = await watch_delivery(target, watchers, budget, reactor)
    return out


# Processes: every one started here is stopped here, by its own PID


@dataclass
class Processes:
    """The processes this run started, each with the log file it writes to."""

    workdir: Path
    running: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / f"{name}.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("K3S_", "ETCD"))}
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=self.workdir, env=environment, stdout=out, stderr=subprocess.STDOUT
            )
        self.running.append((process, log))
        return process, log

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running = [(p, log) for p, log in self.running if p is not process]

    def log_tail(self, process: subprocess.Popen[bytes], size: int = 4000) -> str:
        log = next(log for p, log in self.running if p is process)
        return log.read_text(errors="replace")[-size:]

    def close(self) -> None:
        """Stop every process still running, then remove the work directory."""
        for process, _ in list(self.running):
            self.stop(process)
        shutil.rmtree(self.workdir, ignore_errors=True)


async def wait_until_ready(
    reactor: Any, agent: IAgent, url: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    """Poll C{url} until it answers 200; fail with the log's tail if the process exits."""
    deadline = time.perf_counter() + START_LIMIT
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{url}: process exited with {process.returncode}:\n{tail}")
        try:
            await fetch(agent, b"GET", url)
            return
        except Exception:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{url} did not answer 200 within {START_LIMIT:g} s") from None
        await deferLater(reactor, 0.1, lambda: None)


async def start_etcd(reactor: Any, processes: Processes) -> str:
    client, peer = free_port(ETCD_HOST), free_port(ETCD_HOST)
    client_url, peer_url = f"http://{ETCD_HOST}:{client}", f"http://{ETCD_HOST}:{peer}"
    process, log = processes.spawn(
        "etcd",
        [
            ETCD, "--name", "solo", "--data-dir", str(processes.workdir / "etcd"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"solo={peer_url}",
        ],
    )  # fmt: skip
    pool = new_pool(reactor, 1)
    try:
        await wait_until_ready(
            reactor, Agent(reactor, pool=pool), client_url + "/health", process, log
        )
    finally:
        await pool.closeCachedConnections()
    return client_url


async def start_server(
    reactor: Any,
    processes: Processes,
    name: str,
    host: str,
    datastore: str | None,
    flags: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], Path, str]:
    """A ready k3s-server on C{host}: its process, its TLS directory and its base URL."""
    work = processes.workdir / name
    work.mkdir()
    (work / "config.yaml").write_text("")
    port = free_port(host)
    argv = [
        TWISTD, "-n", "--pidfile=", "k3s-server", "--config", str(work / "config.yaml"),
        "--data-dir", str(work / "data"), "--bind-address", host,
        "--https-listen-port", str(port), "--write-kubeconfig", str(work / "k3s.yaml"),
        "--node-identity-dir", str(work / "node"), "--container-runtime", "none",
    ]  # fmt: skip
    if datastore:
        argv += ["--datastore-endpoint", datastore]
    process, log = processes.spawn(name, [*argv, *flags])
    base = f"https://{host}:{port}"
    tls = work / "data" / "server" / "tls"
    deadline = time.perf_counter() + START_LIMIT
    # The key is written before the certificate: wait for both.
    while not ((tls / "client-admin.key").exists() and (tls / "client-admin.crt").exists()):
        if process.poll() is not None or time.perf_counter() > deadline:
            raise RuntimeError(f"{name} wrote no certificates:\n{log.read_text()[-2000:]}")
        await deferLater(reactor, 0.1, lambda: None)
    pool = new_pool(reactor, 1)
    agent = Agent(reactor, ClientCertificatePolicy(tls), pool=pool)
    try:
        await wait_until_ready(reactor, agent, base + "/v1-k3s/readyz", process, log)
        await wait_until_settled(reactor, agent, base, process, log)
    finally:
        await pool.closeCachedConnections()
    return process, tls, base


#: After the server's own node is Ready, the last of its start-up work (the node's
#: first status, the control loops' first lists) has this long to finish.
SETTLE_SECONDS = 2.0


async def wait_until_settled(
    reactor: Any, agent: IAgent, base: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    """
    Wait until the server's own node is Ready, then L{SETTLE_SECONDS}: a server that
    has just answered /readyz is still joining its node (scrypt, certificates, the
    kubelet's registration), and the first cells would measure that, not the API.
    """
    deadline = time.perf_counter() + START_LIMIT
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the server exited with {process.returncode}:\n{tail}")
        nodes = await call(agent, b"GET", base + "/api/v1/nodes")
        if any(_ready(node) for node in nodes.get("items") or ()):
            break
        if time.perf_counter() > deadline:
            raise RuntimeError(f"no node of the server was Ready within {START_LIMIT:g} s")
        await deferLater(reactor, 0.1, lambda: None)
    await deferLater(reactor, SETTLE_SECONDS, lambda: None)


def _ready(node: Any) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# The run


TARGET_LIMIT = 600.0


def progress(column: str) -> Callable[[str], None]:
    def say(step: str) -> None:
        print(f"-- {column}: {step}", file=sys.stderr, flush=True)

    return say


async def measure(reactor: Any, column: str, target: Target, budget: Budget) -> Results:
    """Every cell against C{target}, within L{TARGET_LIMIT}."""
    measured: Deferred[Results] = Deferred.fromCoroutine(
        bench_target(target, budget, reactor, progress(column))
    )
    return await measured.addTimeout(TARGET_LIMIT, reactor)


async def run(reactor: Any, budget: Budget) -> list[tuple[str, Results]]:
    columns: list[tuple[str, Results]] = []
    processes = Processes(Path(tempfile.mkdtemp(prefix="k3stw-bench-api-")))
    pool = new_pool(reactor, max(*budget.clients, *budget.watchers))
    # Interrupted (^C stops the reactor), no finally below would run: stop them then too.
    trigger = reactor.addSystemEventTrigger("before", "shutdown", processes.close)
    try:
        etcd = await start_etcd(reactor, processes)
        for column, host, datastore in (
            ("k3s-server on SQLite", SQLITE_HOST, None),
            ("k3s-server on etcd", ETCD_SERVER_HOST, etcd),
        ):
            progress(column)("start")
            name = "sqlite" if datastore is None else "etcd-server"
            server, tls, base = await start_server(reactor, processes, name, host, datastore)
            agent = Agent(reactor, ClientCertificatePolicy(tls), pool=pool)
            try:
                results = await measure(reactor, column, KubernetesTarget(agent, base), budget)
            except Exception:
                print(f"-- {column} failed; its log ends:", file=sys.stderr)
                print(processes.log_tail(server), file=sys.stderr)
                raise
            finally:
                await pool.closeCachedConnections()
                processes.stop(server)
            columns.append((column, results))
        column = "etcd gateway (ceiling)"
        target = EtcdTarget(Agent(reactor, pool=pool), etcd)
        columns.append((column, await measure(reactor, column, target, budget)))
    finally:
        reactor.removeSystemEventTrigger(trigger)
        await pool.closeCachedConnections()
        processes.close()
    return columns


# What the checks cost


def deployment(name: str) -> dict[str, Any]:
    """A Deployment as users write them: enough for every check to have work to do."""
    labels = {"app": name}
    container = {
        "name": "web",
        "image": "nginx:1.27",
        "ports": [{"name": "http", "containerPort": 80}],
        "env": [{"name": "MODE", "value": "bench"}],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def user_certificate(tls: Path) -> bytes:
    """A client certificate and key for L{BENCH_USER}, signed by the server's client CA."""
    from k3stw.pki.certs import KeyPair, Usage, load_pem_certificates, load_pem_key, new_leaf

    ca = KeyPair(
        load_pem_certificates((tls / "client-ca.crt").read_bytes())[0],
        load_pem_key((tls / "client-ca.key").read_bytes()),
    )
    now = datetime.datetime.now(datetime.UTC)
    pair = new_leaf(ca, BENCH_USER, Usage.CLIENT, now, ["bench-group"])
    return pair.certificate_pem + pair.key_pem


async def allow_bench_user(admin: IAgent, base: str) -> None:
    """The bench namespace, and a RoleBinding there to kube's ``edit`` for L{BENCH_USER}."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    await call(admin, b"POST", f"{base}/api/v1/namespaces", namespace, 201)
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "bench-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": BENCH_USER}],
    }
    url = f"{base}/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/rolebindings"
    await call(admin, b"POST", url, binding, 201)


#: Rounds of the checks benchmark: each cell is run this often, alternating the servers
#: (so that load from elsewhere falls on both alike), and the median round is shown.
CHECK_ROUNDS = 3


async def bench_user(
    reactor: Any, pool: HTTPConnectionPool, tls: Path, base: str
) -> Callable[[str], Awaitable[object]]:
    """Prepare a server for L{BENCH_USER}; a create of a named Deployment as that user."""
    admin = Agent(reactor, ClientCertificatePolicy(tls), pool=pool)
    await allow_bench_user(admin, base)
    user = Agent(reactor, ClientCertificatePolicy(tls, user_certificate(tls)), pool=pool)
    url = f"{base}/apis/apps/v1/namespaces/{NAMESPACE}/deployments"

    async def create(name: str) -> None:
        await call(user, b"POST", url, deployment(name), 201)

    return create


def median_cell(cells: list[Cell]) -> Cell:
    """The round whose throughput is the median of C{cells}'."""
    return sorted(cells, key=lambda cell: cell.rate)[len(cells) // 2]


async def run_checks(reactor: Any, budget: Budget, rounds: int) -> list[tuple[str, Results]]:
    """Both servers at once; each cell C{rounds} times, alternating between them."""
    servers = (
        ("checks on", CHECKED_HOST, ()),
        ("checks off (--unchecked-api)", UNCHECKED_HOST, ("--unchecked-api",)),
    )
    processes = Processes(Path(tempfile.mkdtemp(prefix="k3stw-bench-checks-")))
    pool = new_pool(reactor, 64)
    trigger = reactor.addSystemEventTrigger("before", "shutdown", processes.close)
    creates = {}
    cells: dict[tuple[str, int], list[Cell]] = {}
    try:
        for column, host, flags in servers:
            progress(column)("start")
            name = "unchecked" if flags else "checked"
            # Both run at once: each its own node, its kubelet on a port of its own.
            own_node = ("--node-name", f"bench-{name}", "--kubelet-arg", f"port={free_port(host)}")
            _, tls, base = await start_server(
                reactor, processes, name, host, None, (*flags, *own_node)
            )
            creates[column] = await bench_user(reactor, pool, tls, base)
        for round in range(rounds):
            for clients in (16, 64):
                for column, _, _ in servers:
                    progress(column)(f"round {round + 1}: create x{clients}")
                    create = creates[column]
                    prefix = f"r{round}-c{clients}-"

                    async def op(i: int, create: Any = create, prefix: str = prefix) -> None:
                        await create(f"{prefix}{i}")

                    cell = await run_clients(clients, budget, op)
                    cells.setdefault((column, clients), []).append(cell)
    finally:
        reactor.removeSystemEventTrigger(trigger)
        await pool.closeCachedConnections()
        processes.close()
    return [
        (
            column,
            {("create", n): median_cell(cells[column, n]) for n in (16, 64)},
        )
        for column, _, _ in servers
    ]


def checks_report(
    columns: list[tuple[str, Results]], budget: Budget, rounds: int, quick: bool, seconds: float
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (_, on), (_, off) = columns
    lines = [
        "| clients | checks on | checks off | throughput cost |",
        "|---:|---:|---:|---:|",
    ]
    costs = []
    for (_, clients), checked in sorted(on.items()):
        unchecked = off[("create", clients)]
        cost = 1 - checked.rate / unchecked.rate
        costs.append(cost)
        lines.append(f"| {clients} | {cell_text(checked)} | {cell_text(unchecked)} | {cost:.1%} |")
    verdict = "met" if max(costs) <= 0.15 else "MISSED"
    return "\n".join(
        [
            "# What the API's checks cost",
            "",
            "Written by `python bench/api.py --checks --output docs/api-checks-benchmark.md`: "
            "Deployment creates (one container with ports, env, resources and a probe) through "
            f"a real `twistd -n k3s-server` on SQLite, as `{BENCH_USER}`, a user RBAC allows "
            "through a RoleBinding to `edit`; against a server with its checks (schema and "
            "semantic validation, defaulting, RBAC) and one started with `--unchecked-api`, "
            "in the same run, from one Twisted client process on the same cores.",
            "",
            f"Machine: {machine()}; load average at the end {load}",
            f"Date: {now}; mode: {'--quick' if quick else 'full'}, {seconds:.0f} s in all; "
            f"cells stop at {budget.ops} operations or {budget.seconds:g} s; "
            f"each cell run {rounds} times, alternating the servers, the median shown; "
            "each cell: p50 / p99 latency in ms · creates/s",
            "",
            *lines,
            "",
            f"Goal (issue 16): the checks cost at most 15% of create throughput: "
            f"{max(costs):.1%} at most ({verdict}).",
            "",
        ]
    )


# The table


ROWS = [
    ("create", "create"),
    ("get", "get"),
    ("list_small", "list {small}"),
    ("list_big", "list {keys}, one call"),
    ("list_paged", "list {keys}, pages of 500"),
    ("watch", "watch: 1 create -> N watchers"),
]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    return f"{cell.p50_ms:.1f} / {cell.p99_ms:.1f} · {cell.rate:,.0f}/s"


def table(columns: list[tuple[str, Results]], budget: Budget) -> str:
    lines = [
        "| operation | clients | " + " | ".join(name for name, _ in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for key, label in ROWS:
        counts = sorted({n for _, results in columns for k, n in results if k == key})
        for n in counts:
            text = label.format(small=budget.small_list, keys=f"{budget.list_keys:,}")
            cells = [cell_text(results.get((key, n))) for _, results in columns]
            lines.append(f"| {text} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(value: float, limit: float) -> str:
    return f"{value:.1f} ms ({'met' if value < limit else 'MISSED'})"


def goals(columns: list[tuple[str, Results]], budget: Budget) -> str:
    named = dict(columns)
    sqlite = named.get("k3s-server on SQLite", {})
    parts = []
    if ("create", 16) in sqlite:
        parts.append(
            f"write p99 at 16 clients on SQLite < 15 ms: {verdict(sqlite['create', 16].p99_ms, 15)}"
        )
    for name, results in columns[:2]:
        if ("list_big", 1) in results:
            label = f"list {budget.list_keys:,} ConfigMaps < 300 ms ({name}, p50)"
            parts.append(f"{label}: {verdict(results['list_big', 1].p50_ms, 300)}")
    for name, results in columns[:2]:
        watchers = max((n for k, n in results if k == "watch"), default=0)
        if watchers:
            label = f"1 event to {watchers} watchers, p99 < 100 ms ({name})"
            parts.append(f"{label}: {verdict(results['watch', watchers].p99_ms, 100)}")
    return "Goals (issue 4): " + "; ".join(parts) + "."


def report(columns: list[tuple[str, Results]], budget: Budget, quick: bool, seconds: float) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join(
        [
            "# Kubernetes API benchmark",
            "",
            "Written by `python bench/api.py --output docs/api-benchmark.md`: ConfigMaps "
            "through a real `twistd -n k3s-server` (TLS, client certificate) and plain keys "
            "through etcd's JSON gateway, from one Twisted client process on the same cores "
            "(its TLS and JSON work is inside every number). Each server is measured once "
            f"its own node is Ready and {SETTLE_SECONDS:g} s more have passed. Watch delivery: "
            "from just before the create is sent to each watcher having parsed its ADDED event.",
            "",
            f"Machine: {machine()}; load average at the end {load}",
            f"Date: {now}; mode: {'--quick' if quick else 'full'}, {seconds:.0f} s in all; "
            f"cells stop at {budget.ops} operations or {budget.seconds:g} s; "
            f"each cell: p50 / p99 latency in ms · throughput "
            "(operations/s; for watches, deliveries/s)",
            "",
            table(columns, budget),
            "",
            goals(columns, budget),
            "",
        ]
    )


def main(reactor: Any, argv: Sequence[str]) -> Deferred[None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts, for CI")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument(
        "--checks", action="store_true", help="what validation, defaulting and RBAC cost"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=CHECK_ROUNDS,
        help=f"with --checks: runs of each cell (default {CHECK_ROUNDS}; --quick: 1)",
    )
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL

    async def go() -> None:
        started = time.perf_counter()
        if args.checks:
            rounds = 1 if args.quick else max(args.rounds, 1)
            columns = await run_checks(reactor, budget, rounds)
            elapsed = time.perf_counter() - started
            text = checks_report(columns, budget, rounds, args.quick, elapsed)
        else:
            columns = await run(reactor, budget)
            text = report(columns, budget, args.quick, time.perf_counter() - started)
        print(text)
        if args.output:
            Path(args.output).write_text(text)

    return Deferred.fromCoroutine(go())


if __name__ == "__main__":
    react(main, (sys.argv[1:],))
