"""
Tunnel benchmark: throughput and stream-open latency through the websocket
tunnel (remotedialer's protocol, wss as in production) next to direct TCP and
direct TLS to the same service, and the memory an idle tunnel session costs.

    python bench/tunnel.py [--quick] [--output docs/tunnel-benchmark.md]

Processes, all started by this script on loopback and stopped by their own PID:

- a service (the stand-in for the kubelet) on 127.0.0.91, plain TCP and TLS:
  it echoes, sends N bytes (download) or swallows N bytes and answers (upload);
- a tunnel server on 127.0.0.90: L{TunnelServerFactory} behind a TLS listener
  (C{server_tls_options}, client certificate asked for, as the supervisor
  port does), path C{/v1-k3s/connect}; it runs every measurement, opening
  streams with L{TunnelEndpoint} and direct connections with TCP/TLS endpoints;
- agents: the agent's own end (L{AgentTunnelFactory}, wsproto), or with
  C{--agent-end autobahn} the end older agents ran (L{TunnelClientFactory}),
  sessions over TLS with a client certificate, dialling the service with
  L{TCPDialer}.

Memory is measured on a fresh tunnel server: its RSS before and after 1,000
idle sessions from two agent processes (source addresses in 127.0.1.0/24).
Every loop has a count and a time limit.  ``--quick`` is the CI mode.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import cProfile
import datetime
import json
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):
    # Run as a script: make the checkout importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import txaio
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from join_storm import Child, clean_environment, machine, memory_mb, percentile
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.stdio import StandardIO
from twisted.internet.task import deferLater, react
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from k3stw.pki.certs import KeyPair, SubjectAltNames, Usage, load_pem_key, new_ca, new_leaf
from k3stw.pki.tls import server_tls_options
from k3stw.tunnel.client import AgentTunnelFactory
from k3stw.tunnel.local import TCPDialer
from k3stw.tunnel.protocol import TunnelClientFactory, TunnelEndpoint, TunnelServerFactory
from k3stw.tunnel.session import Session
from tests.support.net import free_port
from tests.support.twistd import https_get

SERVER_HOST = "127.0.0.90"
SERVICE_HOST = "127.0.0.91"
AGENT_HOST = "127.0.0.92"
CONNECT_PATH = "/v1-k3s/connect"
#: What the service is asked: echo, send N bytes, or take N bytes and answer C{K}.
ECHO, DOWNLOAD, UPLOAD = b"E", b"D", b"U"
_LENGTH = struct.Struct(">Q")
CHUNK = bytes(64 * 1024)
#: A pump yields to the reactor after this many bytes, so one stream never starves the rest.
TURN_BYTES = 1024 * 1024
START_LIMIT = 30.0
MB = 1_000_000
#: Set by --profile: where the workers write their cProfile statistics.
PROFILE = ""
#: Set by --agent-end: the agents' websocket end.
AGENT_END = "wsproto"


@dataclass(frozen=True)
class Plan:
    """What one run does."""

    single_bytes: int
    parallel_bytes: int
    streams: tuple[int, ...]
    cell_limit: float
    opens: int
    open_limit: float
    sessions: int
    agent_processes: int
    settle: float


FULL = Plan(
    single_bytes=256 * 1024 * 1024,
    parallel_bytes=4 * 1024 * 1024,
    streams=(1, 64),
    cell_limit=30.0,
    opens=2000,
    open_limit=60.0,
    sessions=1000,
    agent_processes=2,
    settle=12.0,
)
QUICK = Plan(
    single_bytes=32 * 1024 * 1024,
    parallel_bytes=512 * 1024,
    streams=(1, 64),
    cell_limit=10.0,
    opens=200,
    open_limit=10.0,
    sessions=100,
    agent_processes=1,
    settle=6.0,
)


# -- shared by the worker processes -----------------------------------------------------


def no_delay(transport: object) -> None:
    """TCP_NODELAY, as every Go peer (kubelet, apiserver) has; a tunnel stream has no socket."""
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        setter(True)


def start_logging() -> None:
    """Warnings and errors to stderr (the Child's log); nothing held in memory."""
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)]
            )
        ],
        redirectStandardIO=False,
    )


class Commands(LineReceiver):
    """JSON commands on stdin, JSON events on stdout; stdin closing ends the process."""

    delimiter = b"\n"

    def __init__(self, handle: Callable[[dict[str, Any]], None], ended: Deferred[None]) -> None:
        self._handle = handle
        self._ended = ended

    def lineReceived(self, line: bytes) -> None:
        self._handle(json.loads(line))

    def say(self, **event: Any) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(event).encode() + b"\n")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._ended.called:
            self._ended.callback(None)


def commands(
    reactor: Any, handle: Callable[[dict[str, Any]], None]
) -> tuple[Commands, Deferred[None]]:
    ended: Deferred[None] = Deferred()
    channel = Commands(handle, ended)
    StandardIO(channel, reactor=reactor)
    return channel, ended


def credentials(certs: Path) -> tuple[Certificate, PrivateCertificate]:
    """The throwaway CA and the client (agent or server) certificate."""
    ca = Certificate.loadPEM((certs / "ca.crt").read_bytes())
    client = PrivateCertificate.loadPEM(
        (certs / "client.crt").read_bytes() + (certs / "client.key").read_bytes()
    )
    return ca, client


def serving_options(certs: Path) -> Any:
    from cryptography import x509

    ca_pem = (certs / "ca.crt").read_bytes()
    ca = KeyPair(
        x509.load_pem_x509_certificate(ca_pem), load_pem_key((certs / "ca.key").read_bytes())
    )
    serving = KeyPair(
        x509.load_pem_x509_certificate((certs / "serving.crt").read_bytes()),
        load_pem_key((certs / "serving.key").read_bytes()),
    )
    return server_tls_options(serving, ca_pem, ca)


@implementer(IPushProducer)
class Pump:
    """Writes C{size} zero bytes to C{transport} as fast as it takes them, honouring pauses."""

    def __init__(self, reactor: Any, transport: Any, size: int, done: Callable[[], None]) -> None:
        self._reactor = reactor
        self._transport = transport
        self.left = size
        self._done = done
        self._paused = False
        self._running = False
        self._stopped = False

    def start(self) -> None:
        self._transport.registerProducer(self, True)
        self._run()

    def _run(self) -> None:
        if self._running or self._paused or self._stopped:
            return
        self._running = True
        try:
            budget = TURN_BYTES
            while self.left > 0 and budget > 0 and not self._paused and not self._stopped:
                chunk = CHUNK if self.left >= len(CHUNK) else CHUNK[: self.left]
                self.left -= len(chunk)
                budget -= len(chunk)
                self._transport.write(chunk)
        finally:
            self._running = False
        if self.left == 0:
            self._finish()
        elif not self._paused and not self._stopped:
            self._reactor.callLater(0, self._run)

    def _finish(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._transport.unregisterProducer()
            self._done()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._run()

    def stopProducing(self) -> None:
        self._stopped = True


# -- the service (the kubelet's stand-in) ----------------------------------------------------


class ServiceProtocol(Protocol):
    """Echo (C{E...}), send N bytes (C{D<u64>}), or take N bytes and answer C{K} (C{U<u64>})."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._header = b""
        self._mode: bytes | None = None
        self._left = 0

    def connectionMade(self) -> None:
        no_delay(self.transport)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self._mode is None:
            self._header += data
            mode = self._header[:1]
            if mode == ECHO:
                self._mode, data = ECHO, self._header[1:]
            elif mode in (DOWNLOAD, UPLOAD) and len(self._header) >= 1 + _LENGTH.size:
                (size,) = _LENGTH.unpack_from(self._header, 1)
                self._mode, data = mode, self._header[1 + _LENGTH.size :]
                if mode == DOWNLOAD:
                    Pump(self._reactor, self.transport, size, self.transport.loseConnection).start()
                    return
                self._left = size
            else:
                return
        if self._mode == ECHO:
            if data:
                self.transport.write(data)
        elif self._mode == UPLOAD and self._left > 0:
            self._left -= len(data)
            if self._left <= 0:
                self.transport.write(b"K")


def service_worker(reactor: Any, arguments: argparse.Namespace) -> Deferred[None]:
    start_logging()
    factory = Factory.forProtocol(lambda: ServiceProtocol(reactor))
    plain = reactor.listenTCP(0, factory, backlog=1024, interface=SERVICE_HOST)
    tls = reactor.listenSSL(
        0, factory, serving_options(Path(arguments.certs)), backlog=1024, interface=SERVICE_HOST
    )
    channel, ended = commands(reactor, lambda command: None)
    channel.say(event="ready", tcp=plain.getHost().port, tls=tls.getHost().port)
    return ended


# -- the agents -----------------------------------------------------------------------


def node_credentials(arguments: argparse.Namespace) -> Callable[[int], Any] | None:
    """
    Against a k3s-server (C{--k3s-tls}): the TLS options of session C{n}, with
    a client certificate of its own node (C{system:node:bench-<n>}, O
    C{system:nodes}) from the server's client CA, so that every session is
    another node in its registry.  Trusts the server CA.
    """
    if not arguments.k3s_tls:
        return None
    from cryptography import x509

    tls = Path(arguments.k3s_tls)
    client_ca = KeyPair(
        x509.load_pem_x509_certificate((tls / "client-ca.crt").read_bytes()),
        load_pem_key((tls / "client-ca.key").read_bytes()),
    )
    server_ca = Certificate.loadPEM((tls / "server-ca.crt").read_bytes())
    now = datetime.datetime.now(datetime.UTC)

    def options(n: int) -> Any:
        pair = new_leaf(
            client_ca, f"system:node:bench-{n:04d}", Usage.CLIENT, now, ["system:nodes"]
        )
        certificate = PrivateCertificate.loadPEM(pair.certificate_pem + pair.key_pem)
        return optionsForClientTLS(SERVER_HOST, trustRoot=server_ca, clientCertificate=certificate)

    return options


def agents_worker(reactor: Any, arguments: argparse.Namespace) -> Deferred[None]:
    start_logging()
    cast(Any, txaio).config.loop = reactor
    ca, client = credentials(Path(arguments.certs))
    options = optionsForClientTLS(SERVER_HOST, trustRoot=ca, clientCertificate=client)
    node_options = node_credentials(arguments)
    dialer = TCPDialer(reactor)
    url = f"wss://{SERVER_HOST}:{arguments.port}{CONNECT_PATH}"
    sessions: list[Session] = []
    failures: dict[str, int] = {}

    def authorize(proto: str, address: str) -> bool:
        return proto == "tcp" and address.startswith(SERVICE_HOST + ":")

    # Each open session resolves the oldest connection still waiting for one.
    waiting: deque[Deferred[None]] = deque()

    def opened(name: str, session: Session) -> None:
        sessions.append(session)
        if waiting:
            waiting.popleft().callback(None)

    # One factory for every session, as an agent has one per server (a factory
    # per session would count autobahn's copy of its options in each).
    agent_end = AgentTunnelFactory if arguments.agent_end == "wsproto" else TunnelClientFactory
    factory = agent_end(
        url, clock=reactor, authorizer=authorize, dialer=dialer, opened=opened, name="agent"
    )

    async def connect_one(index: int) -> None:
        source = (
            AGENT_HOST if arguments.count == 1 else f"127.0.1.{1 + (arguments.first + index) % 250}"
        )
        endpoint = wrapClientTLS(
            options if node_options is None else node_options(arguments.first + index),
            TCP4ClientEndpoint(reactor, SERVER_HOST, arguments.port, 30, (source, 0)),
        )
        session_open: Deferred[None] = Deferred()
        waiting.append(session_open)
        try:
            await endpoint.connect(factory)
        except BaseException:
            waiting.remove(session_open)
            raise
        await session_open.addTimeout(30, reactor)

    async def connect_all() -> None:
        slots = DeferredSemaphore(50)
        started = time.monotonic()

        def one(index: int) -> Deferred[None]:
            def failed(failure: Failure) -> None:
                key = type(failure.value).__name__
                failures[key] = failures.get(key, 0) + 1

            return Deferred.fromCoroutine(connect_one(index)).addErrback(failed)

        await DeferredList([slots.run(one, i) for i in range(arguments.count)])
        channel.say(
            event="connected",
            sessions=len(sessions),
            failures=failures,
            seconds=time.monotonic() - started,
        )

    def handle(command: dict[str, Any]) -> None:
        if command["do"] == "go":
            Deferred.fromCoroutine(connect_all())
        elif command["do"] == "count":
            channel.say(event="count", sessions=sum(1 for s in sessions if not s.ended.called))

    channel, ended = commands(reactor, handle)
    channel.say(event="ready")
    return ended


# -- the tunnel server, which also runs the measurements ------------------------------------


class Mover(Protocol):
    """One stream of a throughput cell: asks the service for a download or an upload."""

    def __init__(self, reactor: Any, direction: bytes, size: int) -> None:
        self._reactor = reactor
        self._direction = direction
        self._size = size
        self.moved = 0
        self.done: Deferred[None] = Deferred()
        self._pump: Pump | None = None

    def connectionMade(self) -> None:
        no_delay(self.transport)

    def begin(self) -> None:
        assert self.transport is not None
        self.transport.write(self._direction + _LENGTH.pack(self._size))
        if self._direction == UPLOAD:
            self._pump = Pump(self._reactor, self.transport, self._size, lambda: None)
            self._pump.start()

    def dataReceived(self, data: bytes) -> None:
        if self._direction == DOWNLOAD:
            self.moved += len(data)
            if self.moved >= self._size:
                self._finish()
        elif data.startswith(b"K"):
            self.moved = self._size
            self._finish()

    def sent(self) -> int:
        """Bytes written so far (an upload cut short by the time limit)."""
        return self._size - self._pump.left if self._pump is not None else self.moved

    def _finish(self) -> None:
        if not self.done.called:
            self.done.callback(None)
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.errback(reason)


class Echo(Protocol):
    """Sends one echo request on connecting; C{echoed} fires with the first byte back."""

    def __init__(self) -> None:
        self.echoed: Deferred[None] = Deferred()
        self.connected_at = 0.0

    def connectionMade(self) -> None:
        self.connected_at = time.perf_counter()
        assert self.transport is not None
        no_delay(self.transport)
        self.transport.write(ECHO + b".")

    def dataReceived(self, data: bytes) -> None:
        if not self.echoed.called:
            self.echoed.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.echoed.called:
            self.echoed.errback(reason)


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process C{pid} has used (C{/proc/<pid>/stat})."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime, the 14th and 15th fields; the text after the ")" starts at the 3rd.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(
    reactor: Any,
    endpoint: Callable[[], IStreamClientEndpoint],
    streams: int,
    direction: bytes,
    size: int,
    limit: float,
    pids: dict[str, int],
) -> dict[str, Any]:
    """
    Move C{size} bytes on each of C{streams} streams at once; bytes, seconds,
    finished, and the CPU seconds each process of C{pids} used meanwhile.
    """
    movers = [Mover(reactor, direction, size) for _ in range(streams)]
    for mover in movers:
        await connectProtocol(endpoint(), mover)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    for mover in movers:
        mover.begin()
    finished = True
    try:
        everything = DeferredList([m.done for m in movers], fireOnOneErrback=True)
        await everything.addTimeout(limit, reactor)
    except Exception:
        finished = False
    elapsed = time.perf_counter() - started
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    moved = sum(m.moved if direction == DOWNLOAD else m.sent() for m in movers)
    if not finished:
        for mover in movers:
            if mover.transport is not None:
                mover.transport.loseConnection()
    await deferLater(reactor, 0.3, lambda: None)
    return {"bytes": moved, "seconds": elapsed, "finished": finished, "cpu": cpu}


async def open_latency(
    reactor: Any, endpoint: Callable[[], IStreamClientEndpoint], count: int, limit: float
) -> dict[str, Any]:
    """Sequential opens: seconds to connected and to the first byte echoed."""
    connected: list[float] = []
    echoed: list[float] = []
    deadline = time.perf_counter() + limit
    failures = 0
    for _ in range(count):
        if time.perf_counter() > deadline:
            break
        echo = Echo()
        started = time.perf_counter()
        try:
            await connectProtocol(endpoint(), echo)
            await echo.echoed.addTimeout(10, reactor)
        except Exception:
            failures += 1
            continue
        echoed.append(time.perf_counter() - started)
        connected.append(echo.connected_at - started)
        assert echo.transport is not None
        echo.transport.loseConnection()
    await deferLater(reactor, 0.3, lambda: None)
    return {"connected": connected, "echoed": echoed, "failures": failures}


def server_worker(reactor: Any, arguments: argparse.Namespace) -> Deferred[None]:
    start_logging()
    cast(Any, txaio).config.loop = reactor
    certs = Path(arguments.certs)
    sessions: list[Session] = []

    def check(request: ConnectionRequest, transport: ITransport) -> str:
        if request.path != CONNECT_PATH:
            raise ConnectionDeny(404, "not found")
        certificate = getattr(transport, "getPeerCertificate", lambda: None)()
        if certificate is None:
            raise ConnectionDeny(401, "a client certificate is required")
        return f"{certificate.get_subject().CN}@{request.peer}"

    factory = TunnelServerFactory(
        check=check, opened=lambda name, session: sessions.append(session), clock=reactor
    )
    port = reactor.listenSSL(
        0, factory, serving_options(certs), backlog=1024, interface=SERVER_HOST
    )

    async def run(command: dict[str, Any]) -> None:
        ca, client = credentials(certs)
        tls_options = optionsForClientTLS(SERVICE_HOST, trustRoot=ca, clientCertificate=client)
        tcp_port, tls_port = command["tcp"], command["tls"]
        session = next(s for s in sessions if not s.ended.called)

        def tunnel() -> IStreamClientEndpoint:
            return TunnelEndpoint(session, f"{SERVICE_HOST}:{tcp_port}", reactor)

        def tunnel_tls() -> IStreamClientEndpoint:
            inner = TunnelEndpoint(session, f"{SERVICE_HOST}:{tls_port}", reactor)
            return wrapClientTLS(tls_options, inner)

        def tcp() -> IStreamClientEndpoint:
            return TCP4ClientEndpoint(reactor, SERVICE_HOST, tcp_port, 10)

        def tls() -> IStreamClientEndpoint:
            return wrapClientTLS(
                tls_options, TCP4ClientEndpoint(reactor, SERVICE_HOST, tls_port, 10)
            )

        targets = {"tunnel": tunnel, "tcp": tcp, "tunnel+tls": tunnel_tls, "tls": tls}
        pids = {"server": os.getpid(), "agent": command["agent"], "service": command["service"]}
        for name, endpoint in targets.items():
            for streams in command["streams"]:
                size = command["single"] if streams == 1 else command["parallel"]
                for direction in (DOWNLOAD, UPLOAD):
                    result = await throughput(
                        reactor, endpoint, streams, direction, size, command["limit"], pids
                    )
                    channel.say(
                        event="throughput",
                        target=name,
                        streams=streams,
                        direction=direction.decode(),
                        **result,
                    )
        for name, endpoint in targets.items():
            result = await open_latency(reactor, endpoint, command["opens"], command["open_limit"])
            channel.say(event="latency", target=name, **result)
        channel.say(event="done")

    def failed(failure: Failure) -> None:
        channel.say(event="done", error=failure.getTraceback())

    def handle(command: dict[str, Any]) -> None:
        if command["do"] == "run":
            Deferred.fromCoroutine(run(command)).addErrback(failed)
        elif command["do"] == "count":
            channel.say(event="count", sessions=sum(1 for s in sessions if not s.ended.called))

    channel, ended = commands(reactor, handle)
    channel.say(event="ready", port=port.getHost().port)
    return ended


# -- the orchestrator -------------------------------------------------------------------


def make_certificates(directory: Path) -> None:
    """A throwaway CA, a serving certificate for the server and service, a client certificate."""
    now = datetime.datetime.now(datetime.UTC)
    ca = new_ca("k3stw-bench-ca", now)
    serving = new_leaf(
        ca,
        "k3stw-bench",
        Usage.SERVER,
        now,
        alt_names=SubjectAltNames.of([SERVER_HOST, SERVICE_HOST]),
    )
    client = new_leaf(ca, "system:node:bench", Usage.CLIENT, now, organizations=["system:nodes"])
    for name, pair in (("ca", ca), ("serving", serving), ("client", client)):
        (directory / f"{name}.crt").write_bytes(pair.certificate_pem)
        (directory / f"{name}.key").write_bytes(pair.key_pem)


def spawn(work: Path, log: str, *options: str) -> Child:
    argv = [sys.executable, os.path.abspath(__file__), "--certs", str(work), *options]
    if PROFILE:
        argv += ["--profile", PROFILE]
    argv += ["--agent-end", AGENT_END]
    return Child(argv, work / log, clean_environment())


def send(child: Child, **command: Any) -> None:
    child.send(json.dumps(command))


def rss_kib(pid: int) -> float:
    return memory_mb(pid)[0] * 1024


@dataclass
class Results:
    """What the run measured."""

    throughput: list[dict[str, Any]]
    latency: dict[str, dict[str, Any]]
    memory: dict[str, Any]


def measure_streams(work: Path, plan: Plan, say: Callable[[str], None]) -> tuple[Any, Any]:
    service = spawn(work, "service.log", "--worker", "service")
    server = spawn(work, "server.log", "--worker", "server")
    children = [service, server]
    try:
        ports = service.event("ready", START_LIMIT)
        port = server.event("ready", START_LIMIT)["port"]
        agent = spawn(work, "agent.log", "--worker", "agents", "--port", str(port), "--count", "1")
        children.append(agent)
        agent.event("ready", START_LIMIT)
        send(agent, do="go")
        connected = agent.event("connected", START_LIMIT)
        if connected["sessions"] != 1:
            raise RuntimeError(f"the agent did not connect: {connected} {agent.tail()}")
        send(
            server,
            do="run",
            agent=agent.pid,
            service=service.pid,
            tcp=ports["tcp"],
            tls=ports["tls"],
            streams=list(plan.streams),
            single=plan.single_bytes,
            parallel=plan.parallel_bytes,
            limit=plan.cell_limit,
            opens=plan.opens,
            open_limit=plan.open_limit,
        )
        cells: list[dict[str, Any]] = []
        latency: dict[str, dict[str, Any]] = {}
        cell_count = 4 * len(plan.streams) * 2
        for _ in range(cell_count):
            cell = server.event("throughput", plan.cell_limit + 60)
            say(
                f"{cell['target']} x{cell['streams']} {cell['direction']}: "
                f"{cell['bytes'] / cell['seconds'] / MB:.1f} MB/s"
            )
            cells.append(cell)
        for _ in range(4):
            result = server.event("latency", plan.open_limit + 30)
            say(f"open {result['target']}: p50 {percentile(result['echoed'], 0.5) * 1e3:.2f} ms")
            latency[result["target"]] = result
        done = server.event("done", 30)
        if "error" in done:
            raise RuntimeError(done["error"])
        return cells, latency
    finally:
        for child in reversed(children):
            child.stop()


def warm_up(work: Path, port: int, *options: str) -> Child:
    """
    One session (from its own agent process, kept open, not counted) before
    the server's RSS is read: the first upgrade loads code and initialises
    OpenSSL and autobahn once per process, which is no session's share.
    """
    warm = spawn(
        work, "warm.log", "--worker", "agents", "--port", str(port), "--count", "1",
        "--first", "9999", *options,
    )  # fmt: skip
    try:
        warm.event("ready", START_LIMIT)
        send(warm, do="go")
        if warm.event("connected", 60)["sessions"] != 1:
            raise RuntimeError(f"the warm-up session did not open: {warm.tail()}")
    except BaseException:
        warm.stop()
        raise
    return warm


def memory_result(
    opened: int,
    held: int,
    connected: list[dict[str, Any]],
    server: tuple[float, float, float],
    agents: tuple[float, float],
    agent_processes: int,
) -> dict[str, Any]:
    """One memory phase's figures, as the report reads them (server: before, after, peak)."""
    return {
        "sessions": opened,
        "held": held,
        "failures": [c["failures"] for c in connected],
        "connect_seconds": max(c["seconds"] for c in connected),
        "server_before": server[0],
        "server_after": server[1],
        "server_peak": server[2],
        "agents_before": agents[0],
        "agents_after": agents[1],
        "agent_processes": agent_processes,
    }


def measure_memory(work: Path, plan: Plan, say: Callable[[str], None]) -> dict[str, Any]:
    server = spawn(work, "memory-server.log", "--worker", "server")
    children = [server]
    try:
        port = server.event("ready", START_LIMIT)["port"]
        children.append(warm_up(work, port))
        share = plan.sessions // plan.agent_processes
        agents = []
        for n in range(plan.agent_processes):
            count = share if n < plan.agent_processes - 1 else plan.sessions - share * n
            agent = spawn(
                work,
                f"agents-{n}.log",
                "--worker",
                "agents",
                "--port",
                str(port),
                "--count",
                str(count),
                "--first",
                str(n * share),
            )
            children.append(agent)
            agents.append(agent)
        for agent in agents:
            agent.event("ready", START_LIMIT)
        time.sleep(2.0)
        server_before = rss_kib(server.pid)
        agents_before = sum(rss_kib(a.pid) for a in agents)
        started = time.monotonic()
        for agent in agents:
            send(agent, do="go")
        connected = [agent.event("connected", 120) for agent in agents]
        opened = sum(c["sessions"] for c in connected)
        say(f"{opened} sessions open in {time.monotonic() - started:.1f} s; settling")
        time.sleep(plan.settle)
        send(server, do="count")
        held = server.event("count", 30)["sessions"] - 1
        server_after, server_peak = (x * 1024 for x in memory_mb(server.pid))
        agents_after = sum(rss_kib(a.pid) for a in agents)
        return memory_result(
            opened,
            held,
            connected,
            (server_before, server_after, server_peak),
            (agents_before, agents_after),
            len(agents),
        )
    finally:
        for child in reversed(children):
            child.stop()


#: Log lines of a k3s-server's tunnel registry: a session registered, a session ended.
REGISTERED = "Handling backend connection request ["
UNREGISTERED = "error in remotedialer server ["


def k3s_arguments(root: Path, port: int) -> list[str]:
    """A lean k3s-server (no agent of its own) on SERVER_HOST whose every file is under C{root}."""
    config = root / "config.yaml"
    config.write_text("")
    return [
        "--config", str(config),
        "--data-dir", str(root / "data"),
        "--node-identity-dir", str(root / "node"),
        "--bind-address", SERVER_HOST,
        "--advertise-address", SERVER_HOST,
        "--https-listen-port", str(port),
        "--write-kubeconfig", str(root / "k3s.yaml"),
        "--kubelet-arg", f"port={free_port('127.0.0.1')}",
        "--disable-agent", "--container-runtime", "none",
    ]  # fmt: skip


def wait_for_ping(child: Child, port: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    for _ in range(int(limit / 0.1) + 1):
        if child.process.poll() is not None:
            raise RuntimeError(f"k3s-server ended: {child.tail()}")
        with contextlib.suppress(OSError):
            if https_get(SERVER_HOST, port, "/ping", timeout=1.0) == (200, b"pong"):
                return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise TimeoutError(f"k3s-server: no /ping within {limit:g} s: {child.tail()}")


def registered(log: Path) -> int:
    """Sessions the server's registry holds, from its log lines."""
    text = log.read_text(errors="replace")
    return text.count(REGISTERED) - text.count(UNREGISTERED)


def measure_k3s_memory(
    work: Path, plan: Plan, say: Callable[[str], None], trace: bool
) -> dict[str, Any]:
    """
    Idle sessions on a real C{twistd -n k3s-server}'s C{/v1-k3s/connect}
    (twisted.web, C{WebSocketResource}, the node-certificate check), each
    with its own node certificate.  One warm-up session first (it loads
    autobahn), not counted.  With C{trace}, the server runs in this script
    (L{k3s_worker}, the same C{build_server}) under C{tracemalloc}, and the
    largest differences between before and after are printed.
    """
    root = work / "k3s"
    root.mkdir()
    port = free_port(SERVER_HOST)
    log = root / "k3s-server.log"
    flags = k3s_arguments(root, port)
    if trace:
        argv = [sys.executable, os.path.abspath(__file__), "--worker", "k3s", "--", *flags]
    else:
        twistd = str(Path(sys.executable).parent / "twistd")
        argv = [twistd, "-n", "--pidfile=", f"--logfile={log}", "k3s-server", *flags]
    server = Child(argv, root / "k3s-server.stderr", clean_environment())
    children = [server]
    tls = root / "data" / "server" / "tls"
    try:
        wait_for_ping(server, port, 60)
        children.append(warm_up(work, port, "--k3s-tls", str(tls)))
        share = plan.sessions // plan.agent_processes
        agents = []
        for n in range(plan.agent_processes):
            count = share if n < plan.agent_processes - 1 else plan.sessions - share * n
            agent = spawn(
                work, f"k3s-agents-{n}.log", "--worker", "agents", "--port", str(port),
                "--count", str(count), "--first", str(n * share), "--k3s-tls", str(tls),
            )  # fmt: skip
            children.append(agent)
            agents.append(agent)
        for agent in agents:
            agent.event("ready", START_LIMIT)
        time.sleep(plan.settle)
        if trace:
            send(server, do="snapshot", path=str(root / "before.snapshot"))
            server.event("snapshot", 120)
        server_before = rss_kib(server.pid)
        held_before = 1 if trace else registered(log)
        agents_before = sum(rss_kib(a.pid) for a in agents)
        started = time.monotonic()
        for agent in agents:
            send(agent, do="go")
        connected = [agent.event("connected", 300) for agent in agents]
        opened = sum(c["sessions"] for c in connected)
        say(f"k3s-server: {opened} sessions open in {time.monotonic() - started:.1f} s; settling")
        time.sleep(plan.settle)
        if trace:
            send(server, do="count")
            held = server.event("count", 30)["sessions"] - held_before
        else:
            held = registered(log) - held_before
        server_after, server_peak = (x * 1024 for x in memory_mb(server.pid))
        agents_after = sum(rss_kib(a.pid) for a in agents)
        if trace:
            send(server, do="garbage")
            garbage = server.event("garbage", 120)
            say(f"garbage: {garbage}; {garbage['freed'] / max(1, held):.0f} B/session freed")
            send(server, do="snapshot", path=str(root / "after.snapshot"))
            server.event("snapshot", 300)
            print_trace(root / "before.snapshot", root / "after.snapshot", max(1, held))
        return memory_result(
            opened,
            held,
            connected,
            (server_before, server_after, server_peak),
            (agents_before, agents_after),
            len(agents),
        )
    finally:
        for child in reversed(children):
            child.stop()


def print_trace(before: Path, after: Path, sessions: int) -> None:
    """The largest growths between two tracemalloc snapshots, per session, to stderr."""
    import tracemalloc

    old, new = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    for group in ("lineno", "traceback"):
        stats = new.compare_to(old, group)
        total = sum(s.size_diff for s in stats)
        print(f"-- tracemalloc by {group}: {total / sessions:.0f} B/session", file=sys.stderr)
        for stat in stats[: 30 if group == "lineno" else 12]:
            print(
                f"{stat.size_diff / sessions:8.0f} B {stat.count_diff / sessions:6.2f} blocks",
                file=sys.stderr,
            )
            frames = stat.traceback.format()[-(2 if group == "lineno" else 16) :]
            print("    " + "\n    ".join(frames), file=sys.stderr)


def web_objects() -> dict[str, int]:
    """How many twisted.web objects (channels, requests) the process holds, garbage included."""
    import gc

    from twisted.web.http import HTTPChannel, Request

    counts = {"HTTPChannel": 0, "Request": 0}
    for thing in gc.get_objects():
        if isinstance(thing, HTTPChannel):
            counts["HTTPChannel"] += 1
        elif isinstance(thing, Request):
            counts["Request"] += 1
    return counts


def k3s_worker(reactor: Any, arguments: argparse.Namespace) -> Deferred[None]:
    """C{k3s-server} in this process (its C{build_server}), under tracemalloc: for --trace."""
    import gc
    import tracemalloc

    from k3stw.server.service import build_server, prepare_server
    from k3stw.tap.server import Options, server_config

    tracemalloc.start(int(os.environ.get("BENCH_TRACE_FRAMES", "12")))
    start_logging()
    options = Options()
    options.parseOptions(arguments.k3s)
    config = server_config(options)
    service = build_server(config, prepare_server(config), reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

    def handle(command: dict[str, Any]) -> None:
        if command["do"] == "snapshot":
            gc.collect()
            tracemalloc.take_snapshot().dump(command["path"])
            channel.say(event="snapshot")
        elif command["do"] == "count":
            sessions = [o for o in gc.get_objects() if isinstance(o, Session)]
            channel.say(event="count", sessions=sum(1 for s in sessions if not s.ended.called))
        elif command["do"] == "garbage":
            # What a full collection would free now: the web objects of each
            # upgrade are cycles, left to the collector.
            live = web_objects()
            traced = tracemalloc.get_traced_memory()[0]
            unreachable = gc.collect()
            channel.say(
                event="garbage",
                live=live,
                collected=web_objects(),
                unreachable=unreachable,
                freed=traced - tracemalloc.get_traced_memory()[0],
            )

    channel, ended = commands(reactor, handle)
    return ended


def mb_s(cell: dict[str, Any]) -> float:
    return float(cell["bytes"]) / float(cell["seconds"]) / MB


def throughput_table(cells: Sequence[dict[str, Any]]) -> str:
    by_key = {(c["target"], c["streams"], c["direction"]): c for c in cells}
    lines = [
        "| path | streams | download MB/s (agent to server) | upload MB/s (server to agent) "
        "| download vs direct | upload vs direct |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    peers = {"tunnel": "tcp", "tunnel+tls": "tls", "tcp": "tcp", "tls": "tls"}
    names = {
        "tcp": "direct TCP",
        "tls": "direct TLS",
        "tunnel": "tunnel (plain TCP inside)",
        "tunnel+tls": "tunnel (TLS inside, as to a kubelet)",
    }
    order = ["tcp", "tunnel", "tls", "tunnel+tls"]
    widths = sorted({c["streams"] for c in cells})
    for target in order:
        for streams in widths:
            down = by_key.get((target, streams, "D"))
            up = by_key.get((target, streams, "U"))
            if down is None or up is None:
                continue
            peer_down = by_key[(peers[target], streams, "D")]
            peer_up = by_key[(peers[target], streams, "U")]
            mark = {True: "", False: " (time limit)"}
            lines.append(
                f"| {names[target]} | {streams} "
                f"| {mb_s(down):,.1f}{mark[down['finished']]} "
                f"| {mb_s(up):,.1f}{mark[up['finished']]} "
                f"| {mb_s(down) / mb_s(peer_down):.0%} | {mb_s(up) / mb_s(peer_up):.0%} |"
            )
    return "\n".join(lines)


def cpu_table(cells: Sequence[dict[str, Any]]) -> str:
    """CPU seconds per GB moved, by process: what the machine's load does not change much."""
    lines = [
        "| path | streams | download: agent / server / service | "
        "upload: agent / server / service |",
        "|---|---:|---:|---:|",
    ]
    by_key = {(c["target"], c["streams"], c["direction"]): c for c in cells}
    names = {
        "tcp": "direct TCP",
        "tls": "direct TLS",
        "tunnel": "tunnel (plain TCP inside)",
        "tunnel+tls": "tunnel (TLS inside, as to a kubelet)",
    }
    widths = sorted({c["streams"] for c in cells})
    for target in ["tcp", "tunnel", "tls", "tunnel+tls"]:
        for streams in widths:
            row = [f"| {names[target]} | {streams} "]
            for direction in "DU":
                cell = by_key.get((target, streams, direction))
                if cell is None or not cell["bytes"]:
                    row.append("| - ")
                    continue
                per_gb = {k: v / (cell["bytes"] / 1e9) for k, v in cell["cpu"].items()}
                row.append(
                    f"| {per_gb['agent']:.2f} / {per_gb['server']:.2f} / {per_gb['service']:.2f} "
                )
            lines.append("".join(row) + "|")
    return "\n".join(lines)


def latency_table(latency: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| path | opens | connected p50 / p99 (ms) | first byte echoed p50 / p99 (ms) | failed |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {
        "tcp": "direct TCP",
        "tls": "direct TLS (handshake included)",
        "tunnel": "tunnel, TunnelEndpoint",
        "tunnel+tls": "tunnel, TLS inside (handshake included)",
    }
    for target in ["tcp", "tunnel", "tls", "tunnel+tls"]:
        r = latency[target]

        def ms(samples: list[float], fraction: float) -> str:
            return f"{percentile(samples, fraction) * 1000:.2f}"

        lines.append(
            f"| {names[target]} | {len(r['echoed']):,} "
            f"| {ms(r['connected'], 0.5)} / {ms(r['connected'], 0.99)} "
            f"| {ms(r['echoed'], 0.5)} / {ms(r['echoed'], 0.99)} | {r['failures']} |"
        )
    return "\n".join(lines)


def memory_table(memory: dict[str, Any]) -> str:
    n = max(1, memory["held"])
    server = (memory["server_after"] - memory["server_before"]) / n
    agents = (memory["agents_after"] - memory["agents_before"]) / max(1, memory["sessions"])
    return "\n".join(
        [
            "| side | sessions | RSS before (MiB) | RSS with the sessions (MiB) "
            "| per session (KiB) |",
            "|---|---:|---:|---:|---:|",
            f"| tunnel server (1 process) | {memory['held']:,} "
            f"| {memory['server_before'] / 1024:.1f} | {memory['server_after'] / 1024:.1f} "
            f"| {server:.1f} |",
            f"| agents ({memory['agent_processes']} processes, summed) | {memory['sessions']:,} "
            f"| {memory['agents_before'] / 1024:.1f} | {memory['agents_after'] / 1024:.1f} "
            f"| {agents:.1f} |",
        ]
    )


def goals(cells: Sequence[dict[str, Any]], latency: dict[str, Any], memory: dict[str, Any]) -> str:
    by_key = {(c["target"], c["streams"], c["direction"]): c for c in cells}

    def ratio(target: str, peer: str, direction: str) -> float:
        return mb_s(by_key[(target, 1, direction)]) / mb_s(by_key[(peer, 1, direction)])

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    worst = min(ratio("tunnel", "tcp", "D"), ratio("tunnel", "tcp", "U"))
    p99 = percentile(latency["tunnel"]["echoed"], 0.99) * 1000
    tls_p99 = percentile(latency["tunnel+tls"]["echoed"], 0.99) * 1000
    per_session = (memory["server_after"] - memory["server_before"]) / max(1, memory["held"])
    return "\n".join(
        [
            "Goals:",
            f"- one stream at least 30% of direct TCP: {worst:.0%} in the slower direction "
            f"({verdict(worst >= 0.30)})",
            f"- stream open p99 under 5 ms (TunnelEndpoint.connect to the first byte echoed): "
            f"{p99:.2f} ms ({verdict(p99 < 5)}); with TLS inside, handshake included (as to a "
            f"kubelet): {tls_p99:.2f} ms ({verdict(tls_p99 < 5)})",
            f"- under 50 KB per idle session on the server: {per_session * 1.024:.1f} KB "
            f"({per_session:.1f} KiB) ({verdict(per_session * 1.024 < 50)})",
        ]
    )


def report(results: Results, plan: Plan, quick: bool, seconds: float) -> str:
    now = datetime.datetime.now(datetime.UTC)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    memory = results.memory
    return "\n\n".join(
        [
            f"Machine: {machine()}; load average at the end {load}",
            f"Date: {now:%Y-%m-%d %H:%M} UTC; mode: {'quick' if quick else 'full'}, "
            f"agents' websocket end: {AGENT_END}, {seconds:.0f} s in all",
            f"### Throughput (MB = 10^6 bytes; one stream moves "
            f"{plan.single_bytes // 2**20} MiB, each of the parallel streams "
            f"{plan.parallel_bytes // 2**20} MiB)",
            throughput_table(results.throughput),
            "### CPU seconds per GB moved, by process (the same cells; the agent is idle on "
            "the direct paths)",
            cpu_table(results.throughput),
            f"### Stream open, {plan.opens:,} sequential opens",
            latency_table(results.latency),
            f"### Idle sessions ({memory['sessions']:,} opened in "
            f"{memory['connect_seconds']:.1f} s, {memory['held']:,} held by the server after "
            f"{plan.settle:g} s idle; server RSS peak {memory['server_peak'] / 1024:.1f} MiB; "
            f"connect failures {memory['failures']})",
            memory_table(memory),
            goals(results.throughput, results.latency, memory),
        ]
    )


def k3s_report(memory: dict[str, Any], plan: Plan, quick: bool, seconds: float) -> str:
    now = datetime.datetime.now(datetime.UTC)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    per_session = (memory["server_after"] - memory["server_before"]) / max(1, memory["held"])
    table = memory_table(memory).replace(
        "| tunnel server (1 process) |", "| k3s-server, /v1-k3s/connect (1 process) |"
    )
    return "\n\n".join(
        [
            f"Machine: {machine()}; load average at the end {load}",
            f"Date: {now:%Y-%m-%d %H:%M} UTC; mode: {'quick' if quick else 'full'}, "
            f"--server k3s, {seconds:.0f} s in all",
            f"### Idle sessions on k3s-server ({memory['sessions']:,} opened in "
            f"{memory['connect_seconds']:.1f} s, each its own node certificate; "
            f"{memory['held']:,} held by the server's registry after {plan.settle:g} s idle; "
            f"server RSS peak {memory['server_peak'] / 1024:.1f} MiB; "
            f"connect failures {memory['failures']})",
            table,
            f"Per idle session on the server: {per_session * 1.024:.1f} KB "
            f"({per_session:.1f} KiB); goal under 50 KB: "
            f"{'met' if per_session * 1.024 < 50 else 'MISSED'}",
        ]
    )


def orchestrate(arguments: argparse.Namespace) -> int:
    global PROFILE, AGENT_END
    PROFILE = os.path.abspath(arguments.profile) if arguments.profile else ""
    AGENT_END = arguments.agent_end
    plan = QUICK if arguments.quick else FULL
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {line}", file=sys.stderr, flush=True)

    # The k3s-server inherits this: 1,000 sessions need more than 1,024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    work = Path(tempfile.mkdtemp(prefix="tunnel-bench-"))
    if arguments.server == "k3s":
        try:
            make_certificates(work)
            memory = measure_k3s_memory(work, plan, say, arguments.trace)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        text = k3s_report(memory, plan, arguments.quick, time.monotonic() - started)
        print(text)
        if arguments.output:
            Path(arguments.output).write_text(text + "\n")
        return 0
    try:
        make_certificates(work)
        cells, latency = measure_streams(work, plan, say)
        memory = measure_memory(work, plan, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(
        Results(cells, latency, memory), plan, arguments.quick, time.monotonic() - started
    )
    print(text)
    if arguments.output:
        Path(arguments.output).write_text(text + "\n")
    return 0


def worker(arguments: argparse.Namespace) -> None:
    # 1,000 sessions and their sockets need more than the usual 1,024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    run = {
        "service": service_worker,
        "server": server_worker,
        "agents": agents_worker,
        "k3s": k3s_worker,
    }
    if arguments.profile:
        profiler = cProfile.Profile()
        path = f"{arguments.profile}.{arguments.worker}.{os.getpid()}.prof"
        # react() ends with sys.exit: the statistics are written at exit.
        atexit.register(profiler.dump_stats, path)
        atexit.register(profiler.disable)
        profiler.enable()
    react(lambda reactor: run[arguments.worker](reactor, arguments))


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI mode: small runs, 100 sessions")
    parser.add_argument("--output", help="write the report (Markdown) here too")
    parser.add_argument("--profile", help="cProfile every worker into PROFILE.<worker>.<pid>.prof")
    # The processes this script starts.
    parser.add_argument(
        "--server",
        choices=("bare", "k3s"),
        default="bare",
        help="bare: the whole run on a TunnelServerFactory listener; k3s: only the idle "
        "sessions, on a real `twistd -n k3s-server`'s /v1-k3s/connect",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="with --server k3s: run the server in this script under tracemalloc and print "
        "what grew per session (its RSS is then not comparable)",
    )
    parser.add_argument(
        "--agent-end",
        choices=("wsproto", "autobahn"),
        default="wsproto",
        help="the agents' websocket: wsproto (the agent's, k3stw.tunnel.client) or autobahn "
        "(TunnelClientFactory, as agents ran it before)",
    )
    parser.add_argument(
        "--worker", choices=("service", "server", "agents", "k3s"), help=argparse.SUPPRESS
    )
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--k3s-tls", help=argparse.SUPPRESS)
    parser.add_argument("k3s", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse(sys.argv[1:] if argv is None else argv)
    if arguments.worker:
        worker(arguments)
        return 0
    return orchestrate(arguments)


if __name__ == "__main__":
    sys.exit(main())
