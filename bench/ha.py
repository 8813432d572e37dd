"""
High-availability benchmark: three k3stw servers on embedded etcd and
agents, each in a test machine of its own (tests/support/ha_machines.py:
network namespaces joined through a hub that holds haproxy as the fixed
registration address and runs the writer), started and removed by this script.

    python bench/ha.py [--rounds 20] [--writes 500] [--agents 2] [--k3s-elections]
                       [--output table.md]

It measures the start-to-ready time of the first server and of each server
joining through the fixed address; sequential write throughput and latency
through k3stw (ConfigMap creates) next to as many puts sent straight to
the same etcd member's JSON gateway, by one client in the hub, in the same
run; then rounds of faults while a writer in the hub creates ConfigMaps
through every server and records each acknowledged one, and a probe in
each agent's machine asks for its Node through the agent's own load
balancer every 0.1 s.  A round SIGKILLs (odd rounds) or partitions (even
rounds) the server whose member leads etcd, and takes the time from the
fault to the acknowledgement of the first write sent through each other
server after it, and to
the answer to the first probe of every agent sent after the fault; the
failed server then returns (restart or heal) and the time until it serves
the write acknowledged last before that is its catch-up.  At the end
every acknowledged write is looked up through every server.  Needs root
(see the module).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase

from tests.support.ha_machines import (
    FIXED,
    PORT,
    PYTHON,
    REPOSITORY,
    HACluster,
    Node,
    Writer,
    until,
)


@dataclass
class Round:
    kind: str
    victim: str
    writes: float
    agents: float
    catch_up: float


class Probes:
    """A probe per agent, in its machine, through its load balancer (127.0.0.1:6444)."""

    def __init__(self, cluster: HACluster, agents: list[Node]) -> None:
        self.stop_file = cluster.work / "probes-stop"
        self.records = {agent.name: cluster.work / f"probe-{agent.name}" for agent in agents}
        self.processes = [
            agent.machine.spawn(
                f"cd {REPOSITORY} && exec {PYTHON} -m tests.support.ha_writer probe "
                f"{cluster.tls} 6444 127.0.0.1 /api/v1/nodes/{agent.name} "
                f"{self.records[agent.name]} {self.stop_file}",
                cluster.work / f"probe-{agent.name}.log",
            )
            for agent in agents
        ]
        cluster.case.addCleanup(self.stop)

    def first_after(self, moment: float) -> dict[str, float]:
        """Per agent, seconds from C{moment} to the answer of its first probe sent after it."""
        found = {}
        for name, record in self.records.items():
            lines = record.read_text().splitlines() if record.exists() else []
            # A line still being written has one field.
            pairs = [fields for fields in map(str.split, lines) if len(fields) == 2]
            answers = [float(answered) for sent, answered in pairs if float(sent) > moment]
            if answers:
                found[name] = answers[0] - moment
        return found

    def stop(self) -> None:
        self.stop_file.touch()
        for process in self.processes:
            if process.poll() is None:
                process.wait(30)


def run(holder: SynchronousTestCase, work: Path, args: argparse.Namespace) -> str:
    cluster = HACluster(holder, work, 3, args.agents, "etcd")
    if args.k3s_elections:
        cluster.elections = ""
    cluster.start_haproxy()
    joins = []
    began = time.monotonic()
    servers = [cluster.server(1, "--cluster-init")]
    cluster.ready(servers[0])
    joins.append(("s1 (--cluster-init)", time.monotonic() - began))
    for i in (2, 3):
        began = time.monotonic()
        servers.append(cluster.server(i, f"--server https://{FIXED}:{PORT}"))
        cluster.ready(servers[-1])
        joins.append((f"s{i} (joins through the fixed address)", time.monotonic() - began))
    agents = [cluster.agent(i) for i in range(1, args.agents + 1)]
    until("every agent healthy", lambda: all(cluster.agent_healthy(a, servers) for a in agents))
    rate = ("rate", str(cluster.tls), str(PORT), servers[1].address, str(args.writes))
    rates = json.loads(cluster.tool(cluster.hub, *rate, timeout=1800))
    probes = Probes(cluster, agents)
    writer = Writer(cluster, servers)
    until("writes through every server", lambda: len(writer.acknowledged()) > 10)
    rounds = []
    for i in range(args.rounds):
        rounds.append(fault_round(cluster, writer, probes, servers, len(agents), i))
        print(rounds[-1], flush=True)
    writer.stop()
    probes.stop()
    lost = {s.name: writer.lost(s) for s in servers}
    acknowledged = len(writer.acknowledged())
    return render(joins, rates, rounds, acknowledged, lost, args)


def fault_round(
    cluster: HACluster, writer: Writer, probes: Probes, servers: list[Node], agents: int, i: int
) -> Round:
    """One fault of the etcd leader's server: SIGKILL in odd rounds, a partition in even ones."""
    kind = "SIGKILL" if i % 2 == 0 else "partition"
    victim = cluster.etcd_leader()
    others = {s.address for s in servers if s is not victim}
    began = time.monotonic()
    cluster.fail(victim, kind)
    until("writes through the others", lambda: others <= set(writer.first_after(began)), 120)
    until("every agent answering", lambda: len(probes.first_after(began)) == agents, 120)
    writes = max(writer.first_after(began)[a] for a in others)
    agents_back = max(probes.first_after(began).values())
    catch_up = cluster.bring_back(victim, kind, writer, 120)
    return Round(kind, victim.name, writes, agents_back, catch_up)


def render(
    joins: list[tuple[str, float]],
    rates: dict[str, dict[str, float]],
    rounds: list[Round],
    acknowledged: int,
    lost: dict[str, list[str] | None],
    args: argparse.Namespace,
) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    etcd = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split()
    labels = {"k3stw": "k3stw (ConfigMap create)", "etcd": "etcd gateway put (same member)"}
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average at the end: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"Date: {when}; three servers and {args.agents} agents, each in its own network "
        f"namespace; etcd {etcd[2] if len(etcd) > 2 else '?'} with "
        + (
            "k3s's heartbeat-interval 500 and election-timeout 5000"
            if args.k3s_elections
            else "`--etcd-arg election-timeout=1000 --etcd-arg heartbeat-interval=100`"
        ),
        "",
        "| server | start to ready (s) |",
        "|---|---:|",
        *(f"| {name} | {seconds:.1f} |" for name, seconds in joins),
        "",
        f"| {args.writes} sequential writes through s2, from the hub | writes/s | p50 (ms) "
        "| p99 (ms) |",
        "|---|---:|---:|---:|",
        *(
            f"| {labels[label]} | {r['rate']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} |"
            for label, r in rates.items()
        ),
        "",
        "| round | fault of the etcd leader's server | to a write through every other "
        "server (s) | to every agent answering (s) | its catch-up once back (s) |",
        "|---:|---|---:|---:|---:|",
        *(
            f"| {i} | {r.kind} {r.victim} | {r.writes:.2f} | {r.agents:.2f} | {r.catch_up:.1f} |"
            for i, r in enumerate(rounds, 1)
        ),
        "",
        f"Writes acknowledged: {acknowledged}; lost, per server: "
        + ", ".join(f"{name} {len(m) if m is not None else 'unknown'}" for name, m in lost.items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument(
        "--k3s-elections",
        action="store_true",
        help="k3s's etcd timings (500 ms heartbeat, 5 s election) instead of 100 ms and 1 s",
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="k3stw-ha-bench-"))
    holder = SynchronousTestCase()
    table = ""
    try:
        table = run(holder, work, args)
    finally:
        result = TestResult()
        holder._runCleanups(result)
        for _, failure in result.errors:
            print("cleanup failed:", failure, file=sys.stderr)
        if table:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept the logs in {work}", file=sys.stderr)
    print(table)
    if args.output:
        args.output.write_text(table)


if __name__ == "__main__":
    main()
