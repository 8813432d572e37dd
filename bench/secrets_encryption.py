"""
What ``--secrets-encryption`` costs: Secret creates and gets (p50, p99, rate)
against a real ``twistd -n k3s-server`` on SQLite without it and one with it,
in the same run, at 1 and 16 concurrent clients, with ConfigMap creates (never
encrypted) as the control.  The two servers are measured in turns, five
rounds each, and each cell shows its median round, so that a neighbour's
burst on a shared machine does not decide the comparison.

    python bench/secrets_encryption.py [--quick] [--output docs/secrets-benchmark.md]

Every process runs on loopback (127.0.0.203-204, free ports) in a temporary
directory and is stopped by its own PID.
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
    new_pool,
    run_clients,
    start_server,
)
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.web.client import Agent

from tests.support.net import free_port

PLAIN_HOST = "127.0.0.203"
ENCRYPTED_HOST = "127.0.0.204"
NAMESPACE = "bench-secrets"
ROUNDS = 5
FULL = Budget((1, 16), 1000, 2.0, 0, 0, 0, (), 0)
QUICK = Budget((1, 16), 200, 1.0, 0, 0, 0, (), 0)


def document(kind: str, name: str) -> dict[str, Any]:
    """A Secret or ConfigMap with one 256-byte value."""
    field = "stringData" if kind == "Secret" else "data"
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, field: {"v": PAYLOAD}}


async def measure_server(
    agent: Any, base: str, budget: Budget, round_: int
) -> dict[tuple[str, int], Cell]:
    """Secret creates then gets, and ConfigMap creates as the control (never encrypted)."""
    cells: dict[tuple[str, int], Cell] = {}
    for kind, plural in (("Secret", "secrets"), ("ConfigMap", "configmaps")):
        url = f"{base}/api/v1/namespaces/{NAMESPACE}/{plural}"
        for clients in budget.clients:
            prefix = f"r{round_}-c{clients}-"

            async def create(
                i: int, prefix: str = prefix, url: str = url, kind: str = kind
            ) -> None:
                await call(agent, b"POST", url, document(kind, f"{prefix}{i}"), 201)

            cells[f"{kind} create", clients] = await run_clients(clients, budget, create)
            if kind != "Secret":
                continue
            made = cells[f"{kind} create", clients].done

            async def get(i: int, prefix: str = prefix, made: int = made, url: str = url) -> None:
                await call(agent, b"GET", f"{url}/{prefix}{i % made}")

            cells[f"{kind} get", clients] = await run_clients(clients, budget, get)
    return cells


def median(cells: list[Cell]) -> Cell:
    """The round whose p99 is the median of the rounds' (the one shown for the cell)."""
    return sorted(cells, key=lambda cell: cell.p99_ms)[len(cells) // 2]


async def run(reactor: Any, budget: Budget) -> dict[str, dict[tuple[str, int], Cell]]:
    processes = Processes(Path(tempfile.mkdtemp(prefix="k3stw-bench-secrets-")))
    trigger = reactor.addSystemEventTrigger("before", "shutdown", processes.close)
    pool = new_pool(reactor, max(budget.clients))
    rounds: dict[str, dict[tuple[str, int], list[Cell]]] = {"plain": {}, "encrypted": {}}
    try:
        servers = {}
        for column, host, flags in (
            ("plain", PLAIN_HOST, ()),
            ("encrypted", ENCRYPTED_HOST, ("--secrets-encryption",)),
        ):
            print(f"-- {column}: start", file=sys.stderr, flush=True)
            # Two servers' nodes on one host: each kubelet on a port of its own.
            flags = (*flags, "--kubelet-arg", f"port={free_port('127.0.0.1')}")
            _, tls, base = await start_server(reactor, processes, column, host, None, flags)
            agent = Agent(reactor, ClientCertificatePolicy(tls), pool=pool)
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
            await call(agent, b"POST", f"{base}/api/v1/namespaces", namespace, 201)
            servers[column] = (agent, base)
        for round_ in range(ROUNDS):
            for column, (agent, base) in servers.items():
                print(f"-- {column}: round {round_ + 1}", file=sys.stderr, flush=True)
                cells = await measure_server(agent, base, budget, round_)
                for key, cell in cells.items():
                    rounds[column].setdefault(key, []).append(cell)
    finally:
        await pool.closeCachedConnections()
        reactor.removeSystemEventTrigger(trigger)
        processes.close()
    return {
        column: {key: median(cells) for key, cells in by_key.items()}
        for column, by_key in rounds.items()
    }


def table(results: dict[str, dict[tuple[str, int], Cell]], budget: Budget) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Secrets with and without `--secrets-encryption` ({now}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs shared, Python {platform.python_version()}; "
        f"{budget.ops} ops or {budget.seconds:g} s per cell, {ROUNDS} rounds alternating "
        "the servers, the median round shown; "
        f"load average at the end {os.getloadavg()[0]:.1f})",
        "",
        "| operation | clients | plain p50 ms | plain p99 ms | plain ops/s "
        "| encrypted p50 ms | encrypted p99 ms | encrypted ops/s | p99 difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in results["plain"]:
        plain, encrypted = results["plain"][key], results["encrypted"][key]
        difference = (encrypted.p99_ms / plain.p99_ms - 1) * 100
        lines.append(
            f"| {key[0]} | {key[1]} | {plain.p50_ms:.2f} | {plain.p99_ms:.2f} | {plain.rate:.0f} "
            f"| {encrypted.p50_ms:.2f} | {encrypted.p99_ms:.2f} | {encrypted.rate:.0f} "
            f"| {difference:+.1f}% |"
        )
    seal, open_ = transformer_cost()
    lines += [
        "",
        f"The transformer alone, in process, on one Secret as stored: {seal:.1f} µs to encrypt, "
        f"{open_:.1f} µs to decrypt.",
    ]
    return "\n".join(lines) + "\n"


def transformer_cost(repeats: int = 5000) -> tuple[float, float]:
    """Microseconds to encrypt and to decrypt one stored 256-byte Secret (AES-CBC, 32-byte key)."""
    from k3stw.apiserver.encryption import Provider, Transformer, new_key

    transformer = Transformer([Provider("aescbc", (new_key("bench"),)), Provider("identity")])
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
            arguments.output.write_text(text)

    react(lambda reactor: Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    main()
