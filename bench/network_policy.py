"""
Cluster networking benchmark, one section per component.

    python bench/network.py [--section policy] [--quick] [--output FILE]

``policy``: the network policy controller's full sync for many pods and
policies (default 200 pods, all on this node, and 50 policies), as the
controller does it: ``iptables-save -t filter``, the rules rendered by
``k3stw.network.policyrules``, ``ipset restore``, one ``iptables-restore
--noflush``, the stale sets destroyed.  Every command runs in a network
namespace the benchmark makes and deletes; nothing touches this machine's
own tables.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the checkout importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from network import write_section

from k3stw.network.policyrules import PolicySettings, render, stale_sets

NODE = "10.199.0.2"


def policy_cluster(pods: int, policies: int) -> tuple[list[Any], list[Any], list[Any]]:
    """C{pods} pods of 10 apps in 5 namespaces; C{policies} policies with every kind of rule."""
    namespaces = [
        {"metadata": {"name": f"ns{n}", "labels": {"team": f"t{n % 2}"}}} for n in range(5)
    ]
    pod_objects = [
        {
            "metadata": {
                "namespace": f"ns{i % 5}",
                "name": f"pod{i}",
                "labels": {"app": f"a{i % 10}"},
            },
            "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {
                "phase": "Running",
                "podIP": f"10.42.{i // 250}.{i % 250 + 2}",
                "hostIP": NODE,
            },
        }
        for i in range(pods)
    ]
    policy_objects = []
    for i in range(policies):
        app = {"matchLabels": {"app": f"a{i % 10}"}}
        peer = {"matchLabels": {"app": f"a{(i + 1) % 10}"}}
        spec: dict[str, Any] = {
            "podSelector": app,
            "policyTypes": ["Ingress", "Egress"] if i % 2 else ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": peer}], "ports": [{"port": 80}, {"port": "http"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "t1"}}}]},
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.42.0.0/16"]}}]},
            ],
        }
        if i % 2:
            spec["egress"] = [
                {"to": [{"podSelector": peer}]},
                {"ports": [{"port": 53, "protocol": "UDP"}]},
            ]
        policy_objects.append(
            {"metadata": {"namespace": f"ns{i % 5}", "name": f"p{i}"}, "spec": spec}
        )
    return pod_objects, namespaces, policy_objects


def _timed(step: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = step()
    return time.perf_counter() - started, result


def policy_section(pods: int, policies: int, rounds: int) -> str:
    namespace = f"k3stw-bench-np-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    inside = ["ip", "netns", "exec", namespace]

    def run(*argv: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [*inside, *argv], input=stdin, capture_output=True, text=True, check=True, timeout=120
        )
        return done.stdout

    objects = policy_cluster(pods, policies)
    settings = PolicySettings(frozenset({NODE}))
    rows: dict[str, list[float]] = {}
    sizes: tuple[int, int, int] = (0, 0, 0)
    try:
        for index in range(rounds):
            timings: dict[str, float] = {}
            timings["iptables-save"], saved = _timed(lambda: run("iptables-save", "-t", "filter"))
            timings["render"], firewall = _timed(
                lambda: render(*objects, settings, str(time.time_ns()), saved)  # noqa: B023
            )
            timings["ipset restore"], _ = _timed(
                lambda: run("ipset", "restore", "-exist", stdin=firewall.ipset_restore())  # noqa: B023
            )
            timings["iptables-restore"], _ = _timed(
                lambda: run("iptables-restore", "-w", "5", "--noflush", stdin=firewall.filter_rules)  # noqa: B023
            )

            def cleanup() -> None:
                stale = stale_sets(run("ipset", "list", "-n").split(), firewall)  # noqa: B023
                if stale:
                    run("ipset", "restore", stdin="".join(f"destroy {s}\n" for s in stale))

            timings["stale sets"], _ = _timed(cleanup)
            timings["full sync"] = sum(timings.values())
            # The first sync creates everything; the later ones also replace the old chains.
            key = "first" if index == 0 else "later"
            for name, seconds in timings.items():
                rows.setdefault(f"{key}|{name}", []).append(seconds)
            sizes = (
                firewall.filter_rules.count("\n-A ") + firewall.filter_rules.count("\n-I "),
                len(firewall.chains),
                len(firewall.sets),
            )
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)
    lines = [
        "## Network policy",
        "",
        f"Full sync of the network policy controller, {pods} pods (all on this node) and"
        f" {policies} policies: {sizes[0]} rules in {sizes[1]} chains, {sizes[2]} ipsets."
        f" Median of {rounds - 1} later syncs (each replaces the previous sync's chains);"
        " the first sync, which creates everything, on its own. Milliseconds.",
        "",
        "| step | first sync | later syncs (median) |",
        "|---|---:|---:|",
    ]
    for name in (
        "iptables-save",
        "render",
        "ipset restore",
        "iptables-restore",
        "stale sets",
        "full sync",
    ):
        first = rows[f"first|{name}"][0] * 1000
        later = statistics.median(rows.get(f"later|{name}", [0.0])) * 1000
        lines.append(f"| {name} | {first:.1f} | {later:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--section", choices=["policy"], default="policy")
    parser.add_argument("--quick", action="store_true", help="small counts, for CI")
    parser.add_argument("--output", help="also write the report to this file")
    args = parser.parse_args(argv)
    text = policy_section(20, 5, 3) if args.quick else policy_section(200, 50, 6)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"{text}\nMeasured {stamp} (`python bench/network.py --section policy`).\n"
    print(text)
    if args.output:
        write_section(Path(args.output), "Network policy", text)


if __name__ == "__main__":
    main(sys.argv[1:])
