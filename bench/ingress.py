"""
Ingress controller benchmark: k3stw's Ingress proxy (``k3stw.network.ingressproxy``,
its routes from an Ingress through ``k3stw.network.ingressroutes``) next to
haproxy configured for the same routes and to the backend reached directly,
in one run:

- requests per second with 32 keep-alive connections (``wrk``), each proxy
  on one core (the proxy pinned to CPU 0, haproxy with one thread);
- p99 latency of one connection's requests one after another, and what the
  proxy adds to the direct p99;
- connections held per MB: the proxy's RSS growth for 1,000 idle keep-alive
  client connections, each having had one request answered.

For comparison on the proxies' core: twisted.web answering by itself, and a
bare Twisted protocol answering each request head itself (the floor of any
proxy on Twisted's reactor).

    python bench/ingress.py [--quick] [--output docs/ingress-benchmark.md]

Three network namespaces as bench/network_proxy.py makes them: the node
(both proxies on its bridge address, ports 80 and 81), a backend pod (an
asyncio HTTP/1.1 server) and a client pod (``wrk`` and the connection
holder).  The Ingress proxy writes its access log to a file, as a node
does.  Needs root, ``ip``, haproxy and wrk (Debian packages); every
namespace made is deleted and every process ended by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the checkout importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from network import report
from network_proxy import (
    CLIENT_NS,
    GATEWAY,
    NODE_NS,
    SERVER,
    SERVER_NS,
    delete_namespaces,
    make_namespaces,
)

HAPROXY = "/usr/sbin/haproxy"
WRK = "/usr/bin/wrk"
BACKEND_PORT = 8080
INGRESS_PORT, HAPROXY_PORT, WEB_PORT, BARE_PORT = 80, 81, 82, 83
HOST = "site.test"
PATH = "/api/items"
HELD = 1000
START_LIMIT = 30.0

#: The backend pod: HTTP/1.1 keep-alive, a 64-byte answer to every request.
BACKEND_CODE = """
import asyncio, sys
HEAD = b"HTTP/1.1 200 OK\\r\\nContent-Length: 64\\r\\nContent-Type: text/plain\\r\\n\\r\\n"
ANSWER = HEAD + b"x" * 64
class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while b"\\r\\n\\r\\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\\r\\n\\r\\n")
            self.transport.write(ANSWER)
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answer, sys.argv[1], int(sys.argv[2]), backlog=1024)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

#: The Ingress proxy on the node: the Ingress's routes, the backend as its one endpoint.
INGRESS_CODE = """
import sys
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from k3stw.network.ingressproxy import IngressMetrics, IngressProxy
from k3stw.network.ingressroutes import RoundRobin, RouteTable
import json
address, port, ingress, endpoint, log = sys.argv[1:6]
globalLogBeginner.beginLoggingTo([textFileLogObserver(open(log, "a"))], redirectStandardIO=False)
table = RouteTable.of([json.loads(ingress)])
backend = (endpoint.split(":")[0], int(endpoint.split(":")[1]))
def lookup(host, uri):
    route = table.match(host, uri)
    return None if route is None else (route, [backend])
proxy = IngressProxy(reactor, lookup, RoundRobin().pick, IngressMetrics())
reactor.listenTCP(int(port), proxy, interface=address, backlog=1024)
print("ready", flush=True)
reactor.run()
"""

#: The ceiling of the Ingress proxy's design: twisted.web answering by itself, no proxying.
WEB_CODE = """
import sys
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
class Answer(Resource):
    isLeaf = True
    def render(self, request):
        return b"x" * 64
site = Site(Answer())
site.log = lambda request: None
reactor.listenTCP(int(sys.argv[2]), site, interface=sys.argv[1], backlog=1024)
print("ready", flush=True)
reactor.run()
"""

#: The floor of any proxy on Twisted: a bare Protocol answering each request head itself.
BARE_CODE = """
import sys
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
HEAD = b"HTTP/1.1 200 OK\\r\\nContent-Length: 64\\r\\nContent-Type: text/plain\\r\\n\\r\\n"
ANSWER = HEAD + b"x" * 64
class Answer(Protocol):
    buffer = b""
    def dataReceived(self, data):
        self.buffer += data
        count = self.buffer.count(b"\\r\\n\\r\\n")
        if count:
            self.buffer = self.buffer.rsplit(b"\\r\\n\\r\\n", 1)[1]
            self.transport.write(ANSWER * count)
factory = Factory.forProtocol(Answer)
reactor.listenTCP(int(sys.argv[2]), factory, interface=sys.argv[1], backlog=1024)
print("ready", flush=True)
reactor.run()
"""

#: haproxy with the same routes: host site.test, path prefix /api (element-wise), else 404.
HAPROXY_CONFIG = """
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option forwardfor
frontend web
    bind {address}:{port}
    acl site hdr(host) -i {host}
    acl api path_beg -i /api/
    acl api path -i /api
    use_backend api if site api
    default_backend none
backend api
    http-reuse always
    server pod {server}:{backend_port}
backend none
    http-request deny deny_status 404
"""

#: The client pod's holder: N connections, one request answered on each, then held.
HOLD_CODE = """
import socket, sys, time
host, port, count, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
request = f"GET /api/items HTTP/1.1\\r\\nHost: {name}\\r\\n\\r\\n".encode()
held = []
for _ in range(count):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(request)
    answer = b""
    while b"x" * 64 not in answer:
        answer += s.recv(4096)
    held.append(s)
print("held", flush=True)
sys.stdin.readline()
"""

INGRESS = {
    "metadata": {"name": "site", "namespace": "bench", "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {
        "rules": [
            {
                "host": HOST,
                "http": {
                    "paths": [
                        {
                            "path": "/api",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "api", "port": {"number": 80}}},
                        }
                    ]
                },
            }
        ]
    },
}


class Processes:
    """The processes this run starts, each ended by its PID."""

    def __init__(self, work: Path) -> None:
        self.started: list[subprocess.Popen[bytes]] = []
        #: Where each process's stderr goes, said when one fails.
        self.errors = work / "stderr.log"

    def start(self, ns: str, *argv: str, cpu: int | None = None) -> subprocess.Popen[bytes]:
        pinned = ("taskset", "-c", str(cpu)) if cpu is not None else ()
        with self.errors.open("ab") as errors:
            process = subprocess.Popen(
                ("ip", "netns", "exec", ns, *pinned, *argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
        self.started.append(process)
        return process

    def ready(self, process: subprocess.Popen[bytes], word: bytes = b"ready") -> None:
        assert process.stdout is not None
        line = process.stdout.readline()
        if word not in line:
            raise SystemExit(f"a process did not start: {self.errors.read_text()}")

    def end_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def wrk(target: str, connections: int, seconds: int, host: str) -> dict[str, float]:
    """``wrk``'s rate and latency percentiles (ms) for C{target} from the client pod."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("JSON {\\"rate\\": %f, \\"p50\\": %f, \\"p99\\": %f,'
        ' \\"errors\\": %d, \\"non2xx\\": %d}\\n", summary.requests / (summary.duration / 1e6),'
        " latency:percentile(50) / 1000, latency:percentile(99) / 1000,"
        " summary.errors.connect + summary.errors.read + summary.errors.write"
        " + summary.errors.timeout, summary.errors.status))\n"
        "end\n"
    )
    try:
        argv = ["ip", "netns", "exec", CLIENT_NS, "taskset", "-c", "1", WRK, "-t1"]
        argv += [f"-c{connections}", f"-d{seconds}s", "-H", f"Host: {host}", "-s", str(script)]
        done = subprocess.run(
            [*argv, target],
            capture_output=True,
            timeout=seconds + 60,
        )
    finally:
        script.unlink()
    line = next((x for x in done.stdout.decode().splitlines() if x.startswith("JSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {done.stdout.decode()} {done.stderr.decode()}")
    figures: dict[str, float] = json.loads(line[5:])
    return figures


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def held_per_mib(processes: Processes, proxy_pid: int, port: int) -> float:
    """Idle keep-alive connections the proxy holds per MiB of its RSS growth."""
    before = rss_mib(proxy_pid)
    holder = processes.start(
        CLIENT_NS, sys.executable, "-c", HOLD_CODE, GATEWAY, str(port), str(HELD), HOST
    )
    processes.ready(holder, b"held")
    time.sleep(1)
    grown = rss_mib(proxy_pid) - before
    holder.kill()
    holder.wait(10)
    return HELD / grown if grown > 0 else float("inf")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s runs instead of 20 s")
    parser.add_argument("--output", type=Path, help="write the table into this document")
    options = parser.parse_args(argv)
    seconds = 5 if options.quick else 20
    if options.output and not options.output.exists():
        options.output.write_text("# Ingress benchmark\n")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ingress-bench-"))
    processes = Processes(work)
    make_namespaces()
    try:
        backend = processes.start(
            SERVER_NS, sys.executable, "-c", BACKEND_CODE, SERVER, str(BACKEND_PORT), cpu=1
        )
        processes.ready(backend)
        endpoint = f"{SERVER}:{BACKEND_PORT}"
        ingress = processes.start(
            NODE_NS,
            sys.executable,
            "-c",
            INGRESS_CODE,
            GATEWAY,
            str(INGRESS_PORT),
            json.dumps(INGRESS),
            endpoint,
            str(work / "access.log"),
            cpu=0,
        )
        processes.ready(ingress)
        config = work / "haproxy.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(
                address=GATEWAY,
                port=HAPROXY_PORT,
                host=HOST,
                server=SERVER,
                backend_port=BACKEND_PORT,
            )
        )
        haproxy = processes.start(NODE_NS, HAPROXY, "-db", "-f", str(config), cpu=0)
        web = processes.start(
            NODE_NS, sys.executable, "-c", WEB_CODE, GATEWAY, str(WEB_PORT), cpu=0
        )
        processes.ready(web)
        bare = processes.start(
            NODE_NS, sys.executable, "-c", BARE_CODE, GATEWAY, str(BARE_PORT), cpu=0
        )
        processes.ready(bare)
        time.sleep(1)
        if haproxy.poll() is not None:
            raise SystemExit(f"haproxy did not start: {processes.errors.read_text()}")

        targets = {
            "direct": f"http://{SERVER}:{BACKEND_PORT}{PATH}",
            "k3stw ingress": f"http://{GATEWAY}:{INGRESS_PORT}{PATH}",
            "haproxy": f"http://{GATEWAY}:{HAPROXY_PORT}{PATH}",
            "twisted.web alone (no proxying)": f"http://{GATEWAY}:{WEB_PORT}{PATH}",
            "bare Twisted protocol answering itself": f"http://{GATEWAY}:{BARE_PORT}{PATH}",
        }
        rate = {name: wrk(url, 32, seconds, HOST) for name, url in targets.items()}
        latency = {name: wrk(url, 1, seconds, HOST) for name, url in targets.items()}
        held = {
            "k3stw ingress": held_per_mib(processes, ingress.pid, INGRESS_PORT),
            "haproxy": held_per_mib(processes, haproxy.pid, HAPROXY_PORT),
        }
        access_lines = sum(1 for _ in (work / "access.log").open())
    finally:
        processes.end_all()
        delete_namespaces()
    # Kept after a failure: its stderr.log says what went wrong.
    shutil.rmtree(work, ignore_errors=True)

    def errors(name: str) -> str:
        count = int(rate[name]["errors"] + rate[name]["non2xx"])
        return f" ({count} errors)" if count else ""

    share = rate["k3stw ingress"]["rate"] / rate["haproxy"]["rate"]
    added = latency["k3stw ingress"]["p99"] - latency["direct"]["p99"]
    added_haproxy = latency["haproxy"]["p99"] - latency["direct"]["p99"]
    rows = [
        (
            f"requests/s, 32 connections: {name}",
            f"{rate[name]['rate']:,.0f}{errors(name)}",
            "",
        )
        for name in targets
    ]
    rows += [
        ("k3stw ingress rate / haproxy rate", f"{share:.0%}", "≥ 50%"),
        *(
            (f"p99 latency, 1 connection: {name}", f"{latency[name]['p99']:.3f} ms", "")
            for name in targets
        ),
        ("p99 added by the k3stw ingress", f"{added:.3f} ms", "< 2 ms"),
        ("p99 added by haproxy", f"{added_haproxy:.3f} ms", ""),
        *(
            (f"idle connections held per MiB: {name}", f"{value:,.0f}", "")
            for name, value in held.items()
        ),
    ]
    notes = (
        "Both proxies on CPU 0 (the Ingress proxy is one Python process; haproxy"
        ' `nbthread 1`), wrk and the backend on CPU 1. "twisted.web alone" is a'
        ' twisted.web Site answering 64 bytes itself on CPU 0; "bare Twisted protocol" a'
        " Protocol writing a canned 64-byte answer per request head, on CPU 0: the floor"
        " of any proxy on Twisted's reactor, which also reads and writes a backend"
        " connection per request. Same routes: host"
        f" `{HOST}`, path prefix `/api`, else 404. The Ingress proxy wrote"
        f" {access_lines:,} access log lines and counted every request in its metrics."
    )
    haproxy_version = subprocess.run(
        (HAPROXY, "-v"), capture_output=True, text=True
    ).stdout.splitlines()[0]
    report(
        "Ingress controller",
        "Requests through k3stw's Ingress proxy, haproxy and to the backend directly"
        " (bench/ingress.py).",
        haproxy_version,
        started,
        options.quick,
        rows,
        notes,
        options.output,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
