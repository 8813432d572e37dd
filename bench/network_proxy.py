"""
Cluster networking benchmarks, one section per component, each printing its
table (and, with ``--output``, writing it as its section of the document).

    python bench/network.py --section proxy [--quick] [--output docs/network-benchmark.md]

``proxy``: kube-proxy's rules in a node network namespace this script makes:
the sync time of 1,000 Services of 10 endpoints each in the iptables mode
(render, then one ``iptables-restore --noflush``) and the nftables mode
(render, then one ``nft -f``), as the node's kube-proxy does, and the
connection rate to a Service's ClusterIP next to the same pod's IP, from a
client pod, with each mode's rules in place, and through one DNAT rule
alone.  Three namespaces: the node (a bridge ``br0``, the rules), a server
pod and a client pod on the bridge.  Needs root, ``ip``, iptables, nft and
conntrack; every namespace made is deleted and every process ended by its
PID.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the checkout importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from network import in_ns, report, run

from k3stw.network.iptables import fetch_all_chains, saved_chains, unchanged_chains_dropped
from k3stw.network.proxynft import (
    TABLE,
    Existing,
    NFTRuleset,
    cleanup_text,
    parse_table,
    render_nft,
)
from k3stw.network.proxyrules import DISPATCH_ABOVE, NodeFacts, Ruleset, render

TAG = f"nb{os.getpid() % 100_000}"
NODE_NS, SERVER_NS, CLIENT_NS = f"{TAG}node", f"{TAG}srv", f"{TAG}cli"
GATEWAY, SERVER, CLIENT = "10.244.0.1", "10.244.0.2", "10.244.0.3"
SERVER_PORT = 8080
#: The client pod's source addresses, one per target of each phase: a run reuses the ports of
#: earlier ones, and a DNATed connection whose reply tuple is an earlier one's (to the pod
#: directly, or through another rule; conntrack keeps it 2 minutes in TIME_WAIT) clashes with
#: it, and its SYN is dropped: 1 s until the retransmit.
CLIENT_SOURCES = [f"10.244.0.{n}" for n in range(10, 18)]
#: The address the floor's one DNAT rule sends to the server pod.
FLOOR_IP = "10.97.0.1"
#: The measured Service's ClusterIP (one of the 1,000), and its index.
TARGET_INDEX = 500
SERVICES = 1000
ENDPOINTS = 10

#: A pod's server: answer each connection with one byte and close it.
SERVER_CODE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(512)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"x"); c.close()
"""
#: A pod's client: N connections one after another (connect, read the byte, close); prints rate.
CLIENT_CODE = """
import socket, sys, time
host, port, count, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
source = (sys.argv[5], 0)
done, started = 0, time.perf_counter()
while done < count and time.perf_counter() - started < limit:
    c = socket.create_connection((host, port), timeout=5, source_address=source)
    assert c.recv(1) == b"x"
    c.close(); done += 1
print(done / (time.perf_counter() - started))
"""


def make_namespaces() -> None:
    """The node with its bridge, and two pods on it (their default route via the node)."""
    for ns in (NODE_NS, SERVER_NS, CLIENT_NS):
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", NODE_NS, "link", "add", "br0", "type", "bridge")
    run("ip", "-n", NODE_NS, "addr", "add", f"{GATEWAY}/24", "dev", "br0")
    run("ip", "-n", NODE_NS, "link", "set", "br0", "up")
    for ns, address, n in ((SERVER_NS, SERVER, 1), (CLIENT_NS, CLIENT, 2)):
        near, far = f"{TAG}v{n}", f"{TAG}p{n}"
        run("ip", "link", "add", near, "type", "veth", "peer", "name", far)
        run("ip", "link", "set", near, "netns", NODE_NS)
        run("ip", "link", "set", far, "netns", ns)
        run("ip", "-n", NODE_NS, "link", "set", near, "master", "br0")
        run("ip", "-n", NODE_NS, "link", "set", near, "up")
        run("ip", "-n", ns, "link", "set", far, "name", "eth0")
        run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)
    for source in CLIENT_SOURCES:
        run("ip", "-n", CLIENT_NS, "addr", "add", f"{source}/24", "dev", "eth0")
    in_ns(NODE_NS, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    in_ns(NODE_NS, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")


def delete_namespaces() -> None:
    for ns in (NODE_NS, SERVER_NS, CLIENT_NS):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def cluster(count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """C{count} Services of 10 endpoints; the TARGET_INDEX-th's one endpoint is the server pod."""
    services, slices = [], []
    target_ip = ""
    for i in range(count):
        ip = f"10.96.{i // 250}.{i % 250 + 1}"
        name = f"svc{i:04d}"
        services.append(
            {
                "metadata": {"namespace": "bench", "name": name},
                "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
            }
        )
        if i == TARGET_INDEX:
            target_ip = ip
            addresses = [(SERVER, SERVER_PORT)]
        else:
            addresses = [
                (f"10.245.{(i * ENDPOINTS + j) // 250}.{(i * ENDPOINTS + j) % 250 + 1}", 80)
                for j in range(ENDPOINTS)
            ]
        slices.append(
            {
                "metadata": {
                    "namespace": "bench",
                    "name": f"{name}-x",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": addresses[0][1], "protocol": "TCP"}],
                "endpoints": [{"addresses": [a], "nodeName": "node"} for a, _ in addresses],
            }
        )
    return services, slices, target_ip


def _cpu() -> float:
    """User and system seconds of this process and of its ended children."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def feed(*args: Any) -> tuple[Ruleset, bytes]:
    """A sync's rules and the restore input as L{IPTables.restore} writes it."""
    ruleset = render(*args)
    return ruleset, fetch_all_chains(ruleset.text).encode()


def full_feed(
    backend: str, services: list[dict[str, Any]], slices: list[dict[str, Any]], node: NodeFacts
) -> tuple[Ruleset, bytes, int]:
    """
    A full sync's input as its KubeProxy makes it: the nat table listed, the
    rules rendered, the chains that hold their rules already left out.  The
    number of nat chains written.
    """
    saved = in_ns(NODE_NS, f"{backend}-save", "-t", "nat")
    ruleset = render(services, slices, node, saved_chains(saved))
    text = unchanged_chains_dropped(ruleset.text, {"nat": saved})
    nat = text[text.index("*nat") :]
    return ruleset, fetch_all_chains(text).encode(), nat.count("\n:")


def nft_existing() -> Existing:
    """What kube-proxy's table in the node holds, listed as its KubeProxy lists it."""
    argv = ("ip", "netns", "exec", NODE_NS, "nft", "-t", "-p", "list", "table", "ip", TABLE)
    with tempfile.TemporaryFile() as listing:
        # Into a file, as NFTables.table has it (nft writes a word per system call).
        done = subprocess.run(argv, stdout=listing, stderr=subprocess.PIPE, timeout=120)
        if done.returncode == 1 and b"No such file or directory" in done.stderr:
            return Existing(frozenset(), frozenset())
        if done.returncode != 0:
            raise SystemExit(f"nft list table failed: {done.stderr.decode(errors='replace')}")
        listing.seek(0)
        return parse_table(listing.read().decode())


def nft_apply(ruleset: NFTRuleset) -> None:
    """A sync's transactions as L{KubeProxy} runs them: new chains declared, then the rest."""
    if ruleset.declarations:
        in_ns(NODE_NS, "nft", "-f", "-", stdin=ruleset.declarations.encode())
    in_ns(NODE_NS, "nft", "-f", "-", stdin=ruleset.text.encode())


def _flush_iptables(backend: str) -> None:
    for name in ("nat", "filter"):
        in_ns(NODE_NS, backend, "-t", name, "-F")
        in_ns(NODE_NS, backend, "-t", name, "-X")


def _rates(quick: bool, phase: int, targets: Sequence[tuple[str, str, int]]) -> dict[str, float]:
    """
    Connections/s to each of C{targets} (label, host, port; the first is the
    reference), taking turns for 5 rounds: each label's median, and under
    ``<label>/`` the median of each round's ratio to the reference (the
    machine's load drifts between rounds; a round's two runs are next to each
    other).  Each target of each C{phase} is reached from an address of its
    own (see L{CLIENT_SOURCES}).
    """
    count, limit = (1000, 5.0) if quick else (3000, 10.0)
    found: dict[str, list[float]] = {label: [] for label, _, _ in targets}
    for _ in range(5):
        for index, (label, host, port) in enumerate(targets):
            source = CLIENT_SOURCES[phase * len(targets) + index]
            out = in_ns(
                CLIENT_NS,
                sys.executable,
                "-c",
                CLIENT_CODE,
                host,
                str(port),
                str(count),
                str(limit),
                source,
            )
            found[label].append(float(out))
    reference = targets[0][0]
    rates = {label: statistics.median(values) for label, values in found.items()}
    for label, values in found.items():
        ratios = [mine / base for mine, base in zip(values, found[reference], strict=True)]
        rates[f"{label}/"] = statistics.median(ratios)
    return rates


def proxy_section(quick: bool) -> tuple[list[tuple[str, str, str]], str]:
    """The proxy section's rows (measure, figure, goal) and its notes."""
    node = NodeFacts(name="node", node_ips=(GATEWAY,), cluster_cidrs=("10.244.0.0/16",))
    services, slices, target = cluster(SERVICES)
    rows: list[tuple[str, str, str]] = []
    rounds = 3 if quick else 5
    timings: dict[str, list[float]] = {}

    def clock(cell: str, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Wall time, and the CPU time of this process and the commands it ran (the machine
        # may be busy with other work: CPU time is what the sync itself costs).
        started, cpu = time.perf_counter(), _cpu()
        result = action(*args, **kwargs)
        timings.setdefault(cell, []).append(time.perf_counter() - started)
        timings.setdefault(f"{cell} cpu", []).append(_cpu() - cpu)
        return result

    one = {("bench", "svc0001")}
    nft = ("nft", "-f", "-")
    written: dict[str, int] = {}
    for _ in range(rounds):
        for backend in ("iptables", "iptables-legacy"):
            # Each round from empty tables: a node's first sync, a full resync, a partial one,
            # as KubeProxy makes them (listing, render, the chains not held as written).
            _flush_iptables(backend)
            restore = (f"{backend}-restore", "-w", "5", "--noflush")
            full, text, _ = clock("render first", full_feed, backend, services, slices, node)
            clock(f"{backend} first", in_ns, NODE_NS, *restore, stdin=text)
            _, text, written[backend] = clock(
                f"{backend} list full", full_feed, backend, services, slices, node
            )
            clock(f"{backend} full", in_ns, NODE_NS, *restore, stdin=text)
            # The worst case: every chain differs from what the table holds (all rewritten).
            chains = sorted(full.nat_chains)
            clock(f"{backend} list all", in_ns, NODE_NS, f"{backend}-save", "-t", "nat")
            _, text = clock(f"{backend} render all", feed, services, slices, node, chains)
            clock(f"{backend} all", in_ns, NODE_NS, *restore, stdin=text)
            _, text = clock("render partial", feed, services, slices, node, chains, one)
            clock(f"{backend} partial", in_ns, NODE_NS, *restore, stdin=text)
        # nftables mode, as its KubeProxy does: a full sync lists the table and writes what
        # differs (first from none, then over itself), then every chain again, then one
        # Service's chains.
        in_ns(NODE_NS, *nft, stdin=cleanup_text().encode())
        for cell in ("first", "full"):
            existing = clock(f"nft list {cell}", nft_existing)
            tables = clock(f"nft render {cell}", render_nft, services, slices, node, None, None,
                           existing)  # fmt: skip
            written[f"nft {cell}"] = sum(
                1 for line in tables.text.splitlines() if line.startswith("flush chain ip")
                and "/" in line
            )  # fmt: skip
            clock(f"nft {cell}", nft_apply, tables)
        existing = clock("nft list all", nft_existing)
        names = Existing(existing.chains, existing.sets)
        tables = clock("nft render all", render_nft, services, slices, node, None, None, names)
        clock("nft all", nft_apply, tables)
        partial = clock("nft render partial", render_nft, services, slices, node, tables, one)
        clock("nft partial", in_ns, NODE_NS, *nft, stdin=partial.text.encode())
    in_ns(NODE_NS, *nft, stdin=cleanup_text().encode())
    # The same rules as kube-proxy feeds them (no listing first), once: the listing's worth.
    _flush_iptables("iptables")
    plain = ("iptables-restore", "-w", "5", "--noflush")
    clock("plain first", in_ns, NODE_NS, *plain, stdin=full.text.encode())
    median = {cell: statistics.median(values) for cell, values in timings.items()}
    lines = len(full.text.splitlines())
    nft_lines = len(tables.text.splitlines()) + len(tables.declarations.splitlines())

    def goal(*cells: str) -> str:
        seconds = sum(median[cell] for cell in cells)
        return f"< 1 s: {'met' if seconds < 1.0 else 'NOT met'}"

    def both(*cells: str) -> str:
        wall = sum(median[cell] for cell in cells)
        return f"{wall:.3f} (CPU {sum(median[f'{cell} cpu'] for cell in cells):.3f})"

    rows += [
        (
            f"render all of 1,000 Services x 10 endpoints ({lines:,} lines), s",
            both("iptables render all"),
            "",
        ),
        ("render a partial sync (one Service's chains), s", both("render partial"), ""),
        (
            "first sync into empty tables (list + render + restore), nf_tables, s",
            both("render first", "iptables first"),
            goal("render first", "iptables first"),
        ),
        (
            "full resync (list + render + compare + restore of the chains that differ:"
            f" {written['iptables']}), nf_tables, s",
            both("iptables list full", "iptables full"),
            goal("iptables list full", "iptables full"),
        ),
        (
            "full resync with every chain differing (list + render + restore of all), nf_tables, s",
            both("iptables list all", "iptables render all", "iptables all"),
            "",
        ),
        (
            "partial sync after one Service changed, nf_tables, s",
            both("render partial", "iptables partial"),
            goal("render partial", "iptables partial"),
        ),
        (
            "first sync of the same rules without the leading `-S` (as kube-proxy feeds them),"
            " nf_tables, s",
            both("iptables render all", "plain first"),
            "",
        ),
        (
            "first sync / full resync with iptables-legacy, s",
            f"{both('render first', 'iptables-legacy first')} /"
            f" {both('iptables-legacy list full', 'iptables-legacy full')}",
            "",
        ),
        (
            f"nftables mode: render all ({nft_lines:,} lines of `nft -f`), s",
            both("nft render all"),
            "",
        ),
        (
            "nftables mode: first sync (list + render + `nft -f` twice, no table before), s",
            both("nft list first", "nft render first", "nft first"),
            goal("nft list first", "nft render first", "nft first"),
        ),
        (
            "nftables mode: full resync (list + render + compare + `nft -f` of the chains that"
            f" differ: {written['nft full']}), s",
            both("nft list full", "nft render full", "nft full"),
            goal("nft list full", "nft render full", "nft full"),
        ),
        (
            "nftables mode: full resync with every chain differing (list + render + `nft -f` of"
            " all), s",
            both("nft list all", "nft render all", "nft all"),
            "",
        ),
        (
            "nftables mode: partial sync after one Service changed, s",
            both("nft render partial", "nft partial"),
            goal("nft render partial", "nft partial"),
        ),
    ]
    _flush_iptables("iptables-legacy")

    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            SERVER_NS,
            sys.executable,
            "-c",
            SERVER_CODE,
            SERVER,
            str(SERVER_PORT),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    direct = ("direct", SERVER, SERVER_PORT)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        # iptables mode: kube's rules (the last partial sync's) and the jumps its node ensures.
        _, text = feed(services, slices, node, chains)
        in_ns(NODE_NS, *plain, stdin=text)
        jumps = (
            ("nat", "PREROUTING", "KUBE-SERVICES"),
            ("nat", "OUTPUT", "KUBE-SERVICES"),
            ("nat", "POSTROUTING", "KUBE-POSTROUTING"),
            ("filter", "FORWARD", "KUBE-FORWARD"),
        )
        for table, chain, target_chain in jumps:
            in_ns(NODE_NS, "iptables", "-t", table, "-I", chain, "-j", target_chain)
        with_iptables = _rates(quick, 0, [direct, ("service", target, 80)])
        _flush_iptables("iptables")
        # nftables mode: kube's table alone.
        in_ns(NODE_NS, *nft, stdin=render_nft(services, slices, node).text.encode())
        with_nft = _rates(quick, 1, [direct, ("service", target, 80)])
        in_ns(NODE_NS, *nft, stdin=cleanup_text().encode())
        # The floor: one hand-written DNAT rule to the same pod, nothing else loaded.
        dnat = ("-d", FLOOR_IP, "-p", "tcp", "--dport", "80", "-j", "DNAT")
        to = ("--to-destination", f"{SERVER}:{SERVER_PORT}")
        in_ns(NODE_NS, "iptables", "-t", "nat", "-A", "PREROUTING", *dnat, *to)
        with_rule = _rates(quick, 2, [direct, ("dnat", FLOOR_IP, 80)])
        _flush_iptables("iptables")
        floor_nft = (
            "add table ip k3stwfloor\n"
            "add chain ip k3stwfloor pre { type nat hook prerouting priority -100 ; }\n"
            f"add rule ip k3stwfloor pre ip daddr {FLOOR_IP} tcp dport 80"
            f" dnat to {SERVER}:{SERVER_PORT}\n"
        )
        in_ns(NODE_NS, *nft, stdin=floor_nft.encode())
        with_nft_rule = _rates(quick, 3, [direct, ("dnat", FLOOR_IP, 80)])
        in_ns(NODE_NS, "nft", "delete", "table", "ip", "k3stwfloor")
    finally:
        server.terminate()
        server.wait(10)

    for what, rates, label, goal_given in (
        ("iptables mode: ClusterIP / pod IP, 1,000 Services' rules loaded", with_iptables,
         "service", True),
        ("nftables mode: ClusterIP / pod IP, 1,000 Services' rules loaded", with_nft,
         "service", True),
        ("the floor: one `iptables -t nat ... -j DNAT` rule to the pod / pod IP, nothing else"
         " loaded", with_rule, "dnat", False),
        ("the floor: one nft `dnat to` rule to the pod / pod IP, nothing else loaded",
         with_nft_rule, "dnat", False),
    ):  # fmt: skip
        ratio = rates[f"{label}/"]
        verdict = f">= 90%: {'met' if ratio >= 0.9 else 'NOT met'}" if goal_given else ""
        figure = f"{rates[label]:,.0f} / {rates['direct']:,.0f}; {ratio:.0%}"
        rows.append((f"connections/s, 1 client, one after another (medians of 5 rounds): {what}",
                     figure, verdict))  # fmt: skip
    notes = (
        f"The measured Service is the {TARGET_INDEX + 1}st of {SERVICES:,}. Each connection"
        " row is its own phase: the rules named, and nothing else, in the node's tables, the"
        " pod IP directly and the Service taking turns for 5 rounds; the percentage is the"
        " median of each round's ratio, so each is against direct connections made next to"
        " it under the same rules (every new connection through the node's PREROUTING meets"
        " them, to a Service or not). Each target of each phase connects from a client address"
        " of its own: a run reuses earlier runs' ports, and a DNATed connection whose reply"
        " tuple is one conntrack still holds (2 minutes in TIME_WAIT) from a direct connection"
        " or another rule's clashes with it and waits 1 s for its SYN's retransmit."
        " In iptables mode, above"
        f" {DISPATCH_ABOVE} rules, nat KUBE-SERVICES jumps by destination address block"
        " (`-d 10.96.2.0/27 -j KUBE-SVCS-10.96.2.0/27`, 32 blocks here) to chains holding"
        " kube's own per-Service rules, so a new connection evaluates a few dozen rules instead"
        " of walking up to 1,000. In nftables mode one map lookup (`ip daddr . meta l4proto ."
        " th dport vmap @service-ips`) finds the Service. The floor rows are what any NAT costs"
        " here: one DNAT rule, no Service table, the same pod; the Service rows add kube's"
        " chains (policy chain, endpoint chain, masquerade checks) on top of it.\n\n"
        "Reading the sync figures: kube-proxy writes the same rule text (chain names, rules"
        " and comments of its large-cluster mode). A full sync (at start, after a failure,"
        " hourly) lists the table first (iptables mode: `iptables-save -t nat`; nftables mode:"
        " `nft -t -p list table ip kube-proxy`, into a file, as nft writes its listing a word"
        " per system call), compares each chain's rules with the rendered ones and writes only"
        " the chains that differ (the count in the row; a rule deleted, changed or added by"
        " hand makes its chain differ), deleting stale ones, in the same one transaction: the"
        " rendered iptables rules are brought to iptables-save's form for the comparison"
        " (option order, `/32`, hex marks, `--set-xmark`, statistic's rounding, recent's"
        " defaults), nft's need none but the protocol numbers of `-p`; a rule in another form"
        " only makes its chain written again. The nftables mode always rewrites its"
        " top-level chains and maps. The rows with every chain differing are the worst case"
        " (the listing, then all of it written over the table). Debian's iptables 1.8.9 with"
        " the nf_tables backend spends seconds on a restore of many chains in `--noflush`"
        " mode: it notes every chain a line names in a sorted linked list (a scan per line,"
        " ~11,000 chains x ~43,000 lines) and then fetches those chains one netlink request"
        " each (perf: 85% of the time in that scan's strcmp). A command that names no chain"
        " makes it fetch all of the table's chains in one dump instead; the only one that"
        " changes nothing is a listing, so a table block declaring 500 chains or more starts"
        " with `-S` (its output is dropped): still one transaction per table, kube's chain"
        " names. The row without it is the same text as kube-proxy feeds it. Partial syncs"
        " (the changed Services' chains, top-level chains whole) stay as kube-proxy does"
        " them. In the nftables mode (`--kube-proxy-arg=proxy-mode=nftables`, nftables"
        " 1.0.6) each `numgen ... vmap {...}` makes an anonymous map, and the kernel"
        " (`__nft_set_trans_bind`) walks the whole transaction so far for each one made or"
        " dropped: the policy chains come first in the transaction, and a full sync declares"
        " the chains the table lacks (empty, referred to by nothing yet, so inert) in an"
        " `nft -f` of their own just before the one that writes them (0.08 s, and the main"
        " one ~0.3 s cheaper than with 11,000 declarations ahead of the 1,000 maps);"
        " `delete table` and all of it again in one transaction costs ~7 s here."
    )
    return rows, notes


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--section", choices=["proxy"], required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path)
    options = parser.parse_args(argv)
    started = time.monotonic()
    make_namespaces()
    try:
        rows, notes = proxy_section(options.quick)
    finally:
        delete_namespaces()
    iptables = run("iptables", "--version").strip()
    nft = run("nft", "--version").strip()
    report(
        "kube-proxy (iptables, nftables)",
        (
            "Written by `python bench/network.py --section proxy"
            " --output docs/network-benchmark.md`."
            " kube-proxy's syncs as its `KubeProxy` makes them (iptables mode: the listing,"
            " `proxyrules.render`, the chains that differ, then one `iptables-restore"
            " --noflush` fed as `IPTables.restore` feeds it; nftables mode: the listing,"
            " `proxynft.render_nft`, then `nft -f` of the new chains and one of the rest), in a"
            " network namespace of their own: a node with a"
            " bridge and two pods on it. The connection cells are one Python client opening"
            " connections one after another to a Python server that writes a byte and closes,"
            " direct and through the ClusterIP (or the one DNAT rule) taking turns. Times are"
            " wall seconds, with the CPU seconds of the whole sync (listing, render, comparison,"
            " restore) in parentheses (the machine is shared: CPU time is what a sync itself"
            " costs)."
        ),
        f"{iptables}; {nft}",
        started,
        options.quick,
        rows,
        notes,
        options.output,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
