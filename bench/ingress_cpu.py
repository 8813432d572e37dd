"""
The Ingress proxy's CPU per request, measured so that a shared, busy
machine barely moves it (CPU time, not a rate):

- ``memory``: the proxy's real protocol objects (client and backend
  connections of ``k3stw.network.ingressproxy``) on in-memory transports in
  this process, N keep-alive requests one after another on one client
  connection, then N pipelined in batches of 16: the proxy's own Python
  cost (heads, routing, framing, access log, metrics), without the reactor
  and the kernel.  ``time.process_time`` over N, the least of 25 runs.
- ``loopback``: the proxy as ``bench/ingress.py`` runs it (a process of its
  own on the epoll reactor, its access log to a file) on 127.0.0.1, the
  asyncio backend of ``bench/ingress.py``, and ``wrk`` with 32 keep-alive
  connections: the proxy process's CPU time (``/proc/<pid>/stat``) over
  the requests wrk counted, reactor and kernel included; then the same for
  the floors: ``bench/ingress.py``'s bare Twisted protocol answering
  itself, and a null proxy on Twisted (no parsing, a backend connection
  per client connection).

    python bench/ingress_cpu.py [--requests N] [--profile] [--no-loopback]

``--profile`` prints the memory run's cProfile, heaviest first.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the checkout importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ingress import BACKEND_CODE, BARE_CODE, HOST, INGRESS, INGRESS_CODE, PATH, WRK
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogBeginner, textFileLogObserver

from k3stw.network.ingressproxy import IngressMetrics, IngressProxy
from k3stw.network.ingressroutes import RoundRobin, RouteTable

#: What wrk sends (bench/ingress.py's load), and what curl or a browser-ish client does.
WRK_REQUEST = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (PATH.encode(), HOST.encode())
CLIENT_REQUEST = (
    b"GET %s?page=2 HTTP/1.1\r\nHost: %s\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
    b"Accept-Encoding: gzip, deflate\r\nCookie: session=0123456789abcdef\r\n"
    b"X-Request-Id: 5f0c6d2e-8a43-4c0b-9a53-1d2f3e4a5b6c\r\n\r\n" % (PATH.encode(), HOST.encode())
)
#: The backend's answer (bench/ingress.py's backend).
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 64
PIPELINED = 16


def _proxy() -> IngressProxy:
    table = RouteTable.of([INGRESS])
    endpoints = [("10.42.0.5", 8080)]

    def lookup(host: str, uri: str) -> Any:
        route = table.match(host, uri)
        return None if route is None else (route, endpoints)

    return IngressProxy(MemoryReactorClock(), lookup, RoundRobin().pick, IngressMetrics())


def memory_run(requests: int, request: bytes, pipelined: int) -> float:
    """CPU µs per request through the proxy's protocols on in-memory transports."""
    proxy = _proxy()
    client: Any = proxy.buildProtocol(None)
    out = StringTransport(
        hostAddress=IPv4Address("TCP", "10.0.0.1", 80),
        peerAddress=IPv4Address("TCP", "192.168.1.7", 40000),
    )
    client.makeConnection(out)
    client.dataReceived(request)
    clock: Any = proxy.reactor
    factory = clock.tcpClients[0][2]
    backend: Any = factory.buildProtocol(None)
    sent = StringTransport()
    backend.makeConnection(sent)
    backend.dataReceived(ANSWER)
    assert out.value().startswith(b"HTTP/1.1 200 OK\r\n") and out.value().endswith(b"x" * 64)
    batch = request * pipelined
    rounds = requests // pipelined
    started = time.process_time()
    for _ in range(rounds):
        client.dataReceived(batch)
        for _ in range(pipelined):
            backend.dataReceived(ANSWER)
        # What a transport would have sent by now.
        out.clear()
        sent.clear()
    spent = time.process_time() - started
    assert client.request is None and not client.buffer
    proxy.stop()
    return spent / (rounds * pipelined) * 1e6


def memory(requests: int, trials: int = 25) -> dict[str, float]:
    """
    The memory figures: one request at a time and pipelined, for both
    requests; the least of C{trials} short runs (a shared machine's other
    work only ever adds to a run).
    """
    figures = {}
    for name, request in (("wrk", WRK_REQUEST), ("client", CLIENT_REQUEST)):
        memory_run(requests, request, 1)  # warm up
        for label, pipelined in (("keep-alive", 1), (f"pipelined {PIPELINED}", PIPELINED)):
            figures[f"{name} request, {label}"] = min(
                memory_run(requests, request, pipelined) for _ in range(trials)
            )
    return figures


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: The floor of any proxy on Twisted: each client connection gets its own backend
#: connection, and bytes go on as they come (no parsing), with the same direct send.
NULL_PROXY_CODE = """
import sys
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor
from twisted.internet.protocol import ClientCreator, Factory, Protocol
from k3stw.network.http1 import send
class Backend(Protocol):
    def __init__(self, client):
        self.client = client
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.client.backend = self.transport
        send(self.transport, self.client.waiting)
    def dataReceived(self, data):
        send(self.client.transport, data)
class Client(Protocol):
    backend, waiting = None, b""
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        ClientCreator(reactor, Backend, self).connectTCP(sys.argv[3], int(sys.argv[4]))
    def dataReceived(self, data):
        if self.backend is None:
            self.waiting += data
        else:
            send(self.backend, data)
factory = Factory.forProtocol(Client)
reactor.listenTCP(int(sys.argv[2]), factory, interface=sys.argv[1], backlog=1024)
print("ready", flush=True)
reactor.run()
"""


def loopback(seconds: int) -> dict[str, tuple[float, int]]:
    """
    CPU µs per request (and the requests) of the Ingress proxy's process
    under wrk on 127.0.0.1, and of the floors beside it: a bare Twisted
    protocol answering itself, and a null proxy on Twisted.
    """
    work = Path(tempfile.mkdtemp(prefix="ingress-cpu-"))
    started: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def start(*argv: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
        started.append(process)
        assert process.stdout is not None
        if b"ready" not in process.stdout.readline():
            raise SystemExit(f"{argv[:3]} did not start")
        return process

    backend = "127.0.0.1:18080"
    script = work / "done.lua"
    script.write_text(
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("JSON %d %d\\n", summary.requests,'
        " summary.errors.status + summary.errors.read + summary.errors.connect))\n"
        "end\n"
    )
    figures = {}
    try:
        start(sys.executable, "-c", BACKEND_CODE, "127.0.0.1", "18080")
        access = str(work / "access.log")
        targets = {
            "k3stw ingress": ("18081", (INGRESS_CODE, json.dumps(INGRESS), backend, access)),
            "bare Twisted protocol answering itself": ("18082", (BARE_CODE,)),
            "null proxy on Twisted": ("18083", (NULL_PROXY_CODE, *backend.split(":"))),
        }
        for name, (port, (code, *rest)) in targets.items():
            process = start(sys.executable, "-c", code, "127.0.0.1", port, *rest)
            argv = [WRK, "-t1", "-c32", f"-d{seconds}s", "-H", f"Host: {HOST}", "-s", str(script)]
            before = _cpu_seconds(process.pid)
            done = subprocess.run(
                [*argv, f"http://127.0.0.1:{port}{PATH}"], capture_output=True, timeout=seconds + 60
            )
            spent = _cpu_seconds(process.pid) - before
            line = next(x for x in done.stdout.decode().splitlines() if x.startswith("JSON "))
            count, errors = map(int, line.split()[1:])
            if errors:
                raise SystemExit(f"wrk counted {errors} errors for {name}")
            figures[name] = (spent / count * 1e6, count)
    finally:
        for process in started:
            process.kill()
            process.wait(10)
        shutil.rmtree(work)
    return figures


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per run")
    parser.add_argument("--seconds", type=int, default=10, help="the loopback run's length")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-loopback", action="store_true")
    options = parser.parse_args(argv)
    # The access log written to a file, as a node writes it (open for the process's life).
    devnull = open(os.devnull, "w")  # noqa: SIM115
    globalLogBeginner.beginLoggingTo([textFileLogObserver(devnull)], redirectStandardIO=False)
    if options.profile:
        profile = cProfile.Profile()
        profile.runcall(memory_run, options.requests, WRK_REQUEST, 1)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    for name, figure in memory(options.requests).items():
        print(f"memory, {name}: {figure:.2f} µs/request")
    if not options.no_loopback and os.path.exists(WRK):
        for name, (cpu, count) in loopback(options.seconds).items():
            print(
                f"loopback, wrk 32 connections, {name}: {cpu:.2f} µs/request ({count:,} requests)"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
