"""
The cluster DNS section of the network benchmark:

    python bench/network.py --section dns [--quick] [--output docs/network-benchmark.md]

The node's cluster DNS (``k3stw.network.dns``: C{twisted.names} over
the cluster state, epoll reactor, one process) next to dnsmasq (Debian's
``dnsmasq-base``) holding the same names (``--addn-hosts``, ``--local`` for
the cluster domain, so that a missing name is NXDOMAIN there too), both on
loopback (127.0.0.91, 127.0.0.92), asked by the same client, dnsperf, with
100 questions in flight: A questions for Service names (answered), then
names that do not exist (NXDOMAIN, what a pod's search list produces).
Every server is ended by its own PID; each cell stops after its seconds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the checkout (tests.support) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from api import Processes, machine
from network import write_section

from tests.support.net import free_port

SCRIPT = os.path.abspath(__file__)
DNSMASQ = "/usr/sbin/dnsmasq"
DNSPERF = "/usr/bin/dnsperf"
K3STW_DNS = "127.0.0.91"
DNSMASQ_HOST = "127.0.0.92"
#: How many Services the cluster has (each one name, one address).
SERVICES = 1000
IN_FLIGHT = 100
START_LIMIT = 30.0


def service_names(count: int) -> list[tuple[str, str]]:
    """The cluster's Services as (name, ClusterIP)."""
    return [
        (f"svc-{i}.bench.svc.cluster.local", f"10.43.{i // 250 + 1}.{i % 250 + 1}")
        for i in range(count)
    ]


def serve_cluster_dns(host: str, port: int, count: int) -> None:
    """The node's DNS server over a cluster of C{count} Services, until SIGTERM."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from k3stw.network.dns import ClusterDNSDatagramProtocol, ClusterDNSFactory
    from k3stw.network.dnsrecords import ClusterState

    state = ClusterState()
    state.put_namespace({"metadata": {"name": "bench"}})
    for name, ip in service_names(count):
        service = {
            "metadata": {"name": name.split(".")[0], "namespace": "bench"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80}]},
        }
        state.put_service(service)
    state.synced = True
    factory = ClusterDNSFactory(state, reactor, [])
    running: Any = reactor
    running.listenUDP(port, ClusterDNSDatagramProtocol(factory, running), interface=host)
    print("serving", flush=True)
    running.run()


def wait_for(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_LIMIT
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{log.name}: {text!r} not seen:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def dnsperf(host: str, port: int, queries: Path, seconds: float) -> tuple[float, float, int]:
    """dnsperf's queries per second, average latency (ms) and lost queries."""
    done = subprocess.run(
        [DNSPERF, "-s", host, "-p", str(port), "-d", str(queries), "-l", f"{seconds:g}",
         "-q", str(IN_FLIGHT), "-t", "2", "-c", "1"],
        capture_output=True, text=True, timeout=seconds + 30,
    )  # fmt: skip
    out = done.stdout

    def figure(label: str) -> float:
        found = re.search(rf"{label}:\s+([0-9.]+)", out)
        if found is None:
            raise SystemExit(f"dnsperf said no {label}:\n{out}{done.stderr}")
        return float(found.group(1))

    lost = re.search(r"Queries lost:\s+(\d+)", out)
    return (
        figure("Queries per second"),
        figure("Average Latency \\(s\\)") * 1000,
        int(lost.group(1) if lost else 0),
    )


def dns_section(quick: bool) -> str:
    seconds = 3.0 if quick else 10.0
    names = service_names(SERVICES)
    with tempfile.TemporaryDirectory(prefix="k3stw-bench-dns-") as work:
        workdir = Path(work)
        processes = Processes(workdir)
        hits = workdir / "hits.txt"
        hits.write_text("".join(f"{name} A\n" for name, _ in names))
        misses = workdir / "misses.txt"
        misses.write_text("".join(f"{name.replace('svc-', 'gone-')} A\n" for name, _ in names))
        hosts = workdir / "hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in names))
        k3stw_port, dnsmasq_port = free_port(K3STW_DNS), free_port(DNSMASQ_HOST)
        try:
            ours, log = processes.spawn(
                "k3stw-dns",
                [sys.executable, SCRIPT, "--serve-dns", K3STW_DNS, str(k3stw_port), str(SERVICES)],
            )
            wait_for(log, "serving", ours)
            theirs, log = processes.spawn(
                "dnsmasq",
                [DNSMASQ, "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                 "--bind-interfaces", f"--listen-address={DNSMASQ_HOST}",
                 f"--port={dnsmasq_port}", f"--addn-hosts={hosts}", "--local=/cluster.local/",
                 "--cache-size=10000", "--pid-file=", "--user=root", "--log-facility=-"],
            )  # fmt: skip
            wait_for(log, "started", theirs)
            rows = []
            for label, queries in (("A, Service names (answered)", hits),
                                   ("A, missing names (NXDOMAIN)", misses)):  # fmt: skip
                k3stw = dnsperf(K3STW_DNS, k3stw_port, queries, seconds)
                peer = dnsperf(DNSMASQ_HOST, dnsmasq_port, queries, seconds)
                rows.append((label, k3stw, peer))
        finally:
            for process, _ in list(processes.running):
                processes.stop(process)
    return dns_report(rows, quick, seconds)


def dns_report(rows: list[tuple[str, tuple[float, float, int], tuple[float, float, int]]],
               quick: bool, seconds: float) -> str:  # fmt: skip
    version = subprocess.run([DNSMASQ, "--version"], capture_output=True, text=True).stdout
    perf = subprocess.run([DNSPERF, "-h"], capture_output=True, text=True)
    perf_version = re.search(
        r"DNS Performance Testing Tool\s+Version ([0-9.]+)", perf.stdout + perf.stderr
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"Written by `python bench/network.py --section dns{' --quick' if quick else ''}`. "
        f"{SERVICES} Services; the k3stw server (`ClusterDNSFactory` over `ClusterState`, "
        "epoll reactor, the answers kept as packets) and dnsmasq "
        "(`--addn-hosts` with the same names, `--local=/cluster.local/`, cache 10000, "
        "one process) on loopback, each asked in turn by dnsperf "
        f"{perf_version.group(1) if perf_version else ''} with {IN_FLIGHT} questions in "
        f"flight for {seconds:g} s, cycling through every name.",
        "",
        f"Machine: {machine()}; {version.splitlines()[0] if version else 'dnsmasq'}; "
        f"load average at the end {load}; date {stamp}",
        "",
        "| questions | k3stw q/s | dnsmasq q/s | k3stw / dnsmasq | goal | "
        "latency k3stw / dnsmasq (ms) | lost k3stw / dnsmasq |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, (ours_rate, ours_ms, ours_lost), (peer_rate, peer_ms, peer_lost) in rows:
        ratio = ours_rate / peer_rate if peer_rate else float("nan")
        lines.append(
            f"| {label} | {ours_rate:,.0f} | {peer_rate:,.0f} | {ratio:.0%} | ≥ 50% | "
            f"{ours_ms:.2f} / {peer_ms:.2f} | {ours_lost} / {peer_lost} |"
        )
    lines += [
        "",
        "Both answer from memory: k3stw sends a question it answered before (same bytes but "
        "the ID) the packet it kept, until the cluster state changes; dnsmasq looks the name "
        "up in its hosts table. The client and the server share the 2 cores with whatever "
        "else runs (load average above), so rates move by tens of percent between runs; the "
        "ratio is the figure to read.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--section", choices=["dns"], default="dns")
    parser.add_argument("--quick", action="store_true", help="short cells, for CI")
    parser.add_argument("--output", type=Path, help="also write the section into this file")
    parser.add_argument("--serve-dns", nargs=3, metavar=("HOST", "PORT", "SERVICES"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.serve_dns:
        host, port, count = args.serve_dns
        serve_cluster_dns(host, int(port), int(count))
        return
    # A SIGTERM ends the run through the finally blocks that stop its processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    body = dns_section(args.quick)
    print(body)
    if args.output:
        write_section(args.output, "Cluster DNS", body)


if __name__ == "__main__":
    main(sys.argv[1:])
