"""
High-availability benchmark: three k3stw servers on embedded etcd, each on
its own loopback address, started by this script.

    python bench/ha.py [--rounds 5] [--writes 500] [--output docs/ha-benchmark.md]

It measures the join time of each new server (start to ``/v1-k3s/readyz``),
write throughput and latency through k3stw (ConfigMap creates) next to the
same number of writes sent straight to etcd's gateway (``/v3/kv/put`` on
the same member, with the client certificate) in the same run, then kill
rounds: the server whose member leads etcd is SIGKILLed, and the time to
the first acknowledged write through each other server is taken while a
writer keeps writing through all of them; every acknowledged write must be
there afterwards; the killed server is started again before the next round.
Everything started is stopped by PID.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.trial.unittest import SynchronousTestCase

from tests.support.embedded_etcd import Admin, EtcdServers, KillRound

ADDRESSES = ["127.0.0.241", "127.0.0.242", "127.0.0.243"]


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Connection:
    """One persistent HTTPS connection that POSTs JSON and times each request."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)

    def post(self, path: str, body: object) -> int:
        self.connection.request(
            "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        response = self.connection.getresponse()
        response.read()
        return response.status


def timed(count: int, write: Callable[[int], int]) -> tuple[float, list[float]]:
    """Sequential writes: (writes per second, latencies in ms)."""
    latencies: list[float] = []
    began = time.perf_counter()
    for i in range(count):
        start = time.perf_counter()
        status = write(i)
        latencies.append((time.perf_counter() - start) * 1000)
        assert status in (200, 201), status
    return count / (time.perf_counter() - began), latencies


def write_rates(
    servers: EtcdServers, admin: Admin, count: int
) -> dict[str, tuple[float, float, float]]:
    address = ADDRESSES[1]
    k3stw = Connection(address, servers.port, admin.context)
    tls = servers.home("s1") / "data/server/tls/etcd"
    context = ssl.create_default_context(cafile=str(tls / "server-ca.crt"))
    context.load_cert_chain(str(tls / "client.crt"), str(tls / "client.key"))
    raw = Connection(address, 2379, context)
    value = "x" * 256

    def through_k3stw(i: int) -> int:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"rate-{i}"},
                "data": {"v": value}}  # fmt: skip
        return k3stw.post("/api/v1/namespaces/default/configmaps", body)

    def straight_to_etcd(i: int) -> int:
        import base64

        key = base64.b64encode(f"/bench/raw/{i}".encode()).decode()
        return raw.post(
            "/v3/kv/put", {"key": key, "value": base64.b64encode(value.encode()).decode()}
        )

    results = {}
    for label, write in (("k3stw", through_k3stw), ("etcd", straight_to_etcd)):
        rate, latencies = timed(count, write)
        results[label] = (rate, percentile(latencies, 0.5), percentile(latencies, 0.99))
    return results


def kill_round(servers: EtcdServers, admin: Admin) -> tuple[float, int, int]:
    """(seconds to the first write through every survivor, writes acknowledged, lost)."""
    kill = KillRound(servers, admin, prefix=f"kill-{time.monotonic_ns()}")
    kill.run(before=10, settle=1.0)
    stored = admin.configmaps(kill.survivors[0], servers.port)
    lost = len(set(kill.acknowledged) - stored)
    back = servers.server(kill.victim_name, kill.victim).start()
    servers.ready(back, kill.victim, timeout=120)
    return max(kill.first_after_kill.values()), len(kill.acknowledged), lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    holder = SynchronousTestCase()
    servers = EtcdServers(holder, ADDRESSES)
    try:
        joins = []
        began = time.monotonic()
        first = servers.first("s1", ADDRESSES[0]).start()
        servers.ready(first, ADDRESSES[0], timeout=120)
        joins.append(("s1 (--cluster-init)", time.monotonic() - began))
        for i, address in enumerate(ADDRESSES[1:], 2):
            began = time.monotonic()
            server = servers.joining(f"s{i}", address).start()
            servers.ready(server, address, timeout=120)
            joins.append((f"s{i} (join)", time.monotonic() - began))
        admin = Admin(servers.home("s1"))
        rates = write_rates(servers, admin, args.writes)
        rounds = [kill_round(servers, admin) for _ in range(args.rounds)]
    finally:
        servers.stop_all()
        for process in servers.processes.values():
            process.stop(timeout=20)
    table = render(joins, rates, rounds, args)
    print(table)
    if args.output:
        args.output.write_text(table)


def render(
    joins: list[tuple[str, float]],
    rates: dict[str, tuple[float, float, float]],
    rounds: list[tuple[float, int, int]],
    args: argparse.Namespace,
) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average at the end: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"Date: {when}; three servers on 127.0.0.241-243, etcd 3.4 with "
        "`--etcd-arg election-timeout=1000 --etcd-arg heartbeat-interval=100`",
        "",
        "| server | start to ready (s) |",
        "|---|---:|",
        *(f"| {name} | {seconds:.1f} |" for name, seconds in joins),
        "",
        f"| {args.writes} sequential writes through s2 | writes/s | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|",
        *(
            f"| {'k3stw (ConfigMap create)' if label == 'k3stw' else 'etcd gateway put (peer)'} "
            f"| {rate:,.0f} | {p50:.2f} | {p99:.2f} |"
            for label, (rate, p50, p99) in rates.items()
        ),
        "",
        "| kill round | leader's server SIGKILLed to a write through every survivor (s) "
        "| writes acknowledged | lost |",
        "|---:|---:|---:|---:|",
        *(
            f"| {i} | {seconds:.2f} | {count} | {lost} |"
            for i, (seconds, count, lost) in enumerate(rounds, 1)
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
