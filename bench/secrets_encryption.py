"""
What ``--secrets-encryption`` costs: Secret creates and gets (p50, p99, rate)
against real ``twistd -n k3s-server`` processes on SQLite, one without it,
one with it (AES-CBC), one with ``--secrets-encryption-provider=secretbox`` and
a second one without it (the spread between identical servers),
in the same run, at 1 and 16 concurrent clients, with ConfigMap creates (never
encrypted) as the control.

The servers are interleaved request by request: every client loop sends its
next request to the next server in turn, so that a neighbour's burst on a
shared machine (or a pause of the client itself) lands on all of them alike,
and each server's latencies come from the same moments.

    python bench/secrets_encryption.py [--quick] [--output docs/secrets-benchmark.md]

With C{--output}, the document's C{## Result} section is replaced (or added).

Every process runs on loopback (127.0.0.203-204, 127.0.0.206-207, free ports) in
a temporary directory and is stopped by its own PID.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# Run as a script, next to the API benchmark whose machinery it shares.
from api import (
    PAYLOAD,
    Budget,
    Cell,
    ClientCertificatePolicy,
    Processes,
    call,
    gather,
    new_pool,
    start_server,
)
from network import write_section
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.web.client import Agent

from tests.support.net import free_port

NAMESPACE = "bench-secrets"
#: Each column: its address and the flags that make it.
SERVERS = {
    "plain": ("127.0.0.203", ()),
    # A second server without encryption: its difference from the first is the
    # spread that identical servers show, against which the others are read.
    "plain again": ("127.0.0.207", ()),
    "aescbc": ("127.0.0.204", ("--secrets-encryption",)),
    "secretbox": (
        "127.0.0.206",
        ("--secrets-encryption", "--secrets-encryption-provider", "secretbox"),
    ),
}
FULL = Budget((1, 16), 12000, 30.0, 0, 0, 0, (), 0)
QUICK = Budget((1, 16), 300, 1.0, 0, 0, 0, (), 0)


def document(kind: str, name: str) -> dict[str, Any]:
    """A Secret or ConfigMap with one 256-byte value."""
    field = "stringData" if kind == "Secret" else "data"
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, field: {"v": PAYLOAD}}


#: One request to one server: C{(agent, base URL, i)}.
Request = Callable[[Any, str, int], Awaitable[object]]


async def interleaved(
    clients: int, budget: Budget, servers: list[tuple[str, Any, str]], request: Request
) -> dict[str, Cell]:
    """
    C{clients} loops, each sending its requests to the servers in turn (request
    C{i} to server C{i mod n}, numbered per server) until C{budget.ops}
    requests or C{budget.seconds}; each server's latencies and count.
    """
    cells = {column: Cell() for column, _, _ in servers}
    started = time.perf_counter()
    deadline = started + budget.seconds
    issued = 0

    async def client() -> None:
        nonlocal issued
        while issued < budget.ops and time.perf_counter() < deadline:
            i = issued
            issued += 1
            column, agent, base = servers[i % len(servers)]
            before = time.perf_counter()
            await request(agent, base, i // len(servers))
            cells[column].latencies.append(time.perf_counter() - before)
            cells[column].done += 1

    await gather([client() for _ in range(clients)])
    elapsed = time.perf_counter() - started
    for cell in cells.values():
        cell.elapsed = elapsed
    return cells


async def measure(
    servers: list[tuple[str, Any, str]], budget: Budget
) -> dict[str, dict[tuple[str, int], Cell]]:
    """Secret creates then gets, and ConfigMap creates as the control (never encrypted)."""
    results: dict[str, dict[tuple[str, int], Cell]] = {column: {} for column, _, _ in servers}
    for kind, plural in (("Secret", "secrets"), ("ConfigMap", "configmaps")):
        for clients in budget.clients:
            print(f"-- {kind} c{clients}", file=sys.stderr, flush=True)
            prefix = f"c{clients}-"

            async def create(
                agent: Any,
                base: str,
                i: int,
                prefix: str = prefix,
                plural: str = plural,
                kind: str = kind,
            ) -> None:
                url = f"{base}/api/v1/namespaces/{NAMESPACE}/{plural}"
                await call(agent, b"POST", url, document(kind, f"{prefix}{i}"), 201)

            made = await interleaved(clients, budget, servers, create)
            for column, cell in made.items():
                results[column][f"{kind} create", clients] = cell
            if kind != "Secret":
                continue
            # Every server made at least this many (they took turns).
            count = min(cell.done for cell in made.values())

            async def get(
                agent: Any, base: str, i: int, prefix: str = prefix, count: int = count
            ) -> None:
                url = f"{base}/api/v1/namespaces/{NAMESPACE}/secrets/{prefix}{i % count}"
                await call(agent, b"GET", url)

            for column, cell in (await interleaved(clients, budget, servers, get)).items():
                results[column][f"{kind} get", clients] = cell
    return results


async def run(reactor: Any, budget: Budget) -> dict[str, dict[tuple[str, int], Cell]]:
    processes = Processes(Path(tempfile.mkdtemp(prefix="k3stw-bench-secrets-")))
    trigger = reactor.addSystemEventTrigger("before", "shutdown", processes.close)
    pool = new_pool(reactor, max(budget.clients))
    try:
        servers = []
        for column, (host, flags) in SERVERS.items():
            print(f"-- {column}: start", file=sys.stderr, flush=True)
            # Several servers' nodes on one host: each kubelet on a port of its own.
            flags = (*flags, "--kubelet-arg", f"port={free_port('127.0.0.1')}")
            _, tls, base = await start_server(reactor, processes, column, host, None, flags)
            agent = Agent(reactor, ClientCertificatePolicy(tls), pool=pool)
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
            await call(agent, b"POST", f"{base}/api/v1/namespaces", namespace, 201)
            servers.append((column, agent, base))
        return await measure(servers, budget)
    finally:
        await pool.closeCachedConnections()
        reactor.removeSystemEventTrigger(trigger)
        processes.close()


def table(results: dict[str, dict[tuple[str, int], Cell]], budget: Budget) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    others = [column for column in SERVERS if column != "plain"]
    lines = [
        f"Secrets with and without `--secrets-encryption` ({now}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs shared, Python {platform.python_version()}; "
        f"{budget.ops} requests or {budget.seconds:g} s per row, the servers taking turns "
        "request by request; "
        f"load average at the end {os.getloadavg()[0]:.1f})",
        "",
        "| operation | clients | plain p50 ms | plain p99 ms | plain ops/s "
        + "".join(f"| {c} p50 ms | {c} p99 ms | {c} ops/s | {c} p99 difference " for c in others)
        + "|",
        "|---|---:|---:|---:|---:" + "|---:|---:|---:|---:" * len(others) + "|",
    ]
    for key in results["plain"]:
        plain = results["plain"][key]
        row = f"| {key[0]} | {key[1]} | {plain.p50_ms:.2f} | {plain.p99_ms:.2f} | {plain.rate:.0f} "
        for column in others:
            cell = results[column][key]
            difference = (cell.p99_ms / plain.p99_ms - 1) * 100
            row += (
                f"| {cell.p50_ms:.2f} | {cell.p99_ms:.2f} | {cell.rate:.0f} | {difference:+.1f}% "
            )
        lines.append(row + "|")
    lines += ["", "The transformers alone, in process, on one Secret as stored:"]
    for provider in (c for c in others if c != "plain again"):
        seal, open_ = transformer_cost(provider)
        lines.append(f"{provider} {seal:.1f} µs to encrypt, {open_:.1f} µs to decrypt;")
    lines[-1] = lines[-1].removesuffix(";") + "."
    return "\n".join(lines) + "\n"


def transformer_cost(provider: str, repeats: int = 5000) -> tuple[float, float]:
    """Microseconds to encrypt and to decrypt one stored 256-byte Secret (a 32-byte key)."""
    from k3stw.apiserver.encryption import Provider, Transformer, new_key

    transformer = Transformer([Provider(provider, (new_key("bench"),)), Provider("identity")])
    clear = json.dumps(document("Secret", "bench-0000")).encode()
    sealed = transformer.to_storage(clear)
    started = time.perf_counter()
    for _ in range(repeats):
        transformer.to_storage(clear)
    middle = time.perf_counter()
    for _ in range(repeats):
        transformer.from_storage(sealed)
    ended = time.perf_counter()
    return (middle - started) / repeats * 1e6, (ended - middle) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    budget = QUICK if arguments.quick else FULL

    async def go(reactor: Any) -> None:
        text = table(await run(reactor, budget), budget)
        print(text)
        if arguments.output is not None:
            # Only the figures: the document's explanations around them stay.
            write_section(arguments.output, "Result", text.rstrip("\n") + "\n")

    react(lambda reactor: Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    main()
