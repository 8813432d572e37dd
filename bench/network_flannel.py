"""
Cluster networking benchmarks, one section per component, each printing its
table (and, with ``--output``, writing it as its section of the document).

    python bench/network.py --section flannel [--quick] [--profile]
                            [--output docs/network-benchmark.md]

``flannel``: pod-to-pod TCP throughput across two nodes with each backend
(vxlan, host-gw) next to node-to-node throughput over the same link, in
the same run (iperf3, turns taken).  Two node network namespaces joined by
a veth pair (MTU 1500), each with a pod namespace on a ``cni0`` bridge as
the node's CNI config makes it (the pod's MTU flannel's, hairpin mode);
the nodes get what k3stw's flannel writes for each other
(``k3stw.network.vxlan``: the ``flannel.1`` device and each peer's
neighbour, FDB entry and route; ``k3stw.network.hostgw``: the route),
flannel's chains (``k3stw.network.flannel.rules``), and kube-proxy's and
the network policy controller's rules for no Service and no policy.  The
control plane is not running: the kernel's data path is what is measured.
``--profile`` samples more rounds with ``perf`` to put each hop's CPU per
byte next to node to node's.  Needs root, ``ip``, ``bridge``, iptables,
iperf3 (and perf); every namespace made is deleted and every process ended
by its PID.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the checkout importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from network import in_ns, report, run

from k3stw.network import hostgw, policyrules, proxyrules, vxlan
from k3stw.network.flannel import JUMPS, Lease, Link, rules

TAG = f"nb{os.getpid() % 100_000}"
CLUSTER = "10.42.0.0/16"
#: The nodes' link: node n is 10.197.0.<n>.
LINK_MTU = 1500
IPERF_PORT = 5201
#: ``--profile``: perf's sampling rate, its file, and whose samples count.
PERF_HZ = 4000
PERF_DATA = f"/tmp/{TAG}.perf.data"
SAMPLED = ("iperf3", "ksoftirqd/0", "ksoftirqd/1")
PROFILED_ROUNDS = 3
#: What the figures and the hop tables show (runs and profiles of 2026-12-07, under load).
NOTES = (
    "Where the pod path's CPU goes (`--profile`, the tables below): every hop it adds is"
    " per-packet work (route lookups, device queues, vxlan's encapsulation and gro_cells,"
    " cni0, br_netfilter, the rules), spread thin; no one hop holds the gap. The segments stay"
    " whole (GSO) all the way: on the nodes' link vxlan pod traffic moves ~55 KB per packet,"
    " node traffic ~60 KB (`ip -s link`); flannel.1 keeps its checksum and segmentation"
    " offloads (`ethtool -k`: tx-checksumming, TSO, GRO on), rp_filter is off.",
    "One stream's rate is bound by the sending thread's CPU per byte (the last row of each"
    " table) more than by the machine's: a veth hands a packet to its peer inside the sender's own"
    " softirq, so that thread runs both nodes' hops up to the receiving socket, where two"
    " machines would split them. Steering each node's receive work to a CPU of its own (RPS"
    " on its end of the link) was tried and not kept: in this VM the cross-CPU hand-off costs"
    " the floor more than it saves, and under shared load its rounds scatter from 60% to"
    " 110%.",
    "Levers tried on the nodes (2026-12-07, under load): flannel.1 already has the options"
    " flannel creates it with (VNI 1, port 8472, local and dev bound, nolearning, no GBP,"
    " ttl auto; udpcsum is the kernel's default, which flannel's netlink call keeps); the"
    " known `ethtool -K flannel.1 tx-checksum-ip-generic off` workaround, which k3stw does not"
    " apply, drops TSO and brings vxlan to 17% of node to node; NOTRACK in the raw table for"
    " the node's own UDP 8472 packets saves ~2% of the pod path's CPU (its conntrack share"
    " 0.19 -> 0.12 copies) but makes them UNTRACKED, so a host firewall's"
    " `--ctstate NEW -p udp --dport 8472 -j ACCEPT` stops matching: not adopted. A forwarded"
    " pod packet is accepted by its pod chain's ESTABLISHED rule within 6 rules of FORWARD;"
    " br_netfilter on cni0 stays (kube-proxy needs it for pods reaching a Service on the same"
    " bridge); veth GRO is not something a node's CNI turns on. None of these, nor all of"
    " them moves the ratio by more than NOTRACK's ~2%.",
    "The nodes hold, besides flannel's chains, kube-proxy's chains for no Service and the"
    " network policy controller's for no policy (each node's pod has its firewall chain), as"
    " every k3s node does, and the pods' bridge ports are in hairpin mode as the CNI config"
    " makes them; node traffic meets INPUT/OUTPUT's share of those rules, pod traffic"
    " FORWARD's, vxlan's outer packets INPUT's and OUTPUT's too: to conntrack their flows stay"
    " NEW (each direction has its own source port), so every one of them also walks"
    " kube-proxy's NEW-only chains (filter KUBE-SERVICES: a REJECT per Service without"
    " endpoints).",
)
COPY = "copy to and from user space"
SEND = "TCP send"
#: Not a hop: the samples of the thread that sends (one stream's rate follows its CPU).
SENDER = "sending thread"
#: Where a sample's CPU goes: the first of these functions met from the
#: leaf of its stack up names its hop (the innermost: netfilter's hooks run
#: inside the bridge's and IP's functions, and those inside the sender's).
HOPS: dict[str, tuple[str, ...]] = {
    COPY: ("_copy_from_iter", "_copy_to_iter"),
    "netfilter: conntrack": ("nf_conntrack_in", "__nf_conntrack_confirm", "nf_confirm"),
    "netfilter: nat hooks": ("nf_nat_ipv4_pre_routing", "nf_nat_inet_fn", "nf_nat_ipv4_out"),
    "netfilter: iptables rules (nft)": ("nft_do_chain_ipv4", "nft_do_chain"),
    "netfilter: br_netfilter (cni0)": (
        "br_nf_pre_routing",
        "br_nf_pre_routing_finish",
        "br_nf_hook_thresh",
        "br_nf_forward_ip",
        "br_nf_post_routing",
        "br_nf_local_in",
        "ip_sabotage_in",
    ),
    "netfilter: hook calls": ("nf_hook_slow",),
    "vxlan encapsulation": ("vxlan_xmit", "vxlan_xmit_one", "udp_tunnel_xmit_skb", "iptunnel_xmit"),
    "vxlan decapsulation, gro_cells": (
        "vxlan_rcv",
        "gro_cell_poll",
        "gro_cells_receive",
        "udp_queue_rcv_skb",
        "__udp4_lib_rcv",
        "udp_unicast_rcv_skb",
    ),
    "bridge (cni0)": (
        "br_handle_frame",
        "br_handle_frame_finish",
        "br_dev_xmit",
        "br_forward",
        "br_pass_frame_up",
        "br_netif_receive_skb",
        "__br_forward",
        "br_forward_finish",
        "br_dev_queue_push_xmit",
    ),
    "IP forwarding (route lookup)": (
        "ip_forward",
        "ip_forward_finish",
        "ip_route_input_noref",
        "ip_route_input_slow",
    ),
    "veth": ("veth_xmit",),
    "IP output, device queue": (
        "ip_finish_output2",
        "__dev_queue_xmit",
        "ip_output",
        "__ip_local_out",
        "dev_hard_start_xmit",
        "validate_xmit_skb",
    ),
    "IP input": ("ip_rcv", "ip_list_rcv", "ip_rcv_finish", "ip_sublist_rcv", "ip_local_deliver"),
    "softirq, backlog": (
        "net_rx_action",
        "process_backlog",
        "__netif_receive_skb_core",
        "__netif_receive_skb_core.constprop.0",
        "__netif_receive_skb_one_core",
        "netif_receive_skb",
        "__napi_poll",
        "handle_softirqs",
    ),
    "TCP receive (data, ACKs)": ("tcp_v4_rcv", "tcp_v4_do_rcv", "tcp_rcv_established"),
    SEND: ("tcp_sendmsg", "tcp_write_xmit", "__tcp_transmit_skb"),
    "TCP recvmsg": ("tcp_recvmsg",),
}
_HOP_OF = {function: hop for hop, functions in HOPS.items() for function in functions}


class FlannelNodes:
    """Two nodes (``<tag>f<n>``) with a pod each (``<tag>fp<n>``); see the module docstring."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.nodes = [f"{TAG}f1", f"{TAG}f2"]
        self.pods = [f"{TAG}fp1", f"{TAG}fp2"]
        self.addresses = ["10.197.0.1", "10.197.0.2"]
        self.subnets = [
            ipaddress.IPv4Network("10.42.0.0/24"),
            ipaddress.IPv4Network("10.42.1.0/24"),
        ]
        self.links = [f"{TAG}e1", f"{TAG}e2"]
        self.mtu = LINK_MTU - vxlan.ENCAP_OVERHEAD if backend == "vxlan" else LINK_MTU

    def pod_ip(self, n: int) -> str:
        return str(self.subnets[n].network_address + 2)

    def make(self) -> None:
        for ns in self.nodes + self.pods:
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", self.links[0], "type", "veth", "peer", "name", self.links[1])
        for n, ns in enumerate(self.nodes):
            run("ip", "link", "set", self.links[n], "netns", ns)
            run("ip", "-n", ns, "addr", "add", f"{self.addresses[n]}/24", "dev", self.links[n])
            run("ip", "-n", ns, "link", "set", self.links[n], "mtu", str(LINK_MTU), "up")
            in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self._pod(n)
            in_ns(
                ns,
                "iptables-restore",
                "-w",
                "--noflush",
                stdin=rules(CLUSTER, str(self.subnets[n])).encode(),
            )
            for table, chain, arguments in JUMPS:
                in_ns(ns, "iptables", "-w", "-t", table, "-A", chain, *arguments)
            self._other_rules(n)
        macs = [self._local(n) for n in range(2)]
        for n, ns in enumerate(self.nodes):
            other = 1 - n
            lease = Lease(
                f"node{other}",
                self.subnets[other],
                self.addresses[other],
                self.backend,
                {"VNI": vxlan.VNI, "VtepMAC": macs[other]} if macs[other] else None,
            )
            entries = (
                vxlan.entries(lease)
                if self.backend == "vxlan"
                else hostgw.entries(lease, self.links[n])
            )
            for tool in ("bridge", "ip"):
                lines = "".join(f"{e.apply}\n" for e in entries if e.tool == tool)
                if lines:
                    run(
                        tool,
                        "-n" if tool == "ip" else "-netns",
                        ns,
                        "-batch",
                        "-",
                        stdin=lines.encode(),
                    )

    def _pod(self, n: int) -> None:
        """cni0 with the range's first address, the pod on it (as the bridge plugin makes it)."""
        ns, pod, subnet = self.nodes[n], self.pods[n], self.subnets[n]
        run("ip", "-n", ns, "link", "add", "cni0", "type", "bridge")
        run(
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            f"{subnet.network_address + 1}/{subnet.prefixlen}",
            "dev",
            "cni0",
        )
        run("ip", "-n", ns, "link", "set", "cni0", "mtu", str(self.mtu), "up")
        near, far = f"{TAG}v{n}", f"{TAG}p{n}"
        run(
            "ip",
            "link",
            "add",
            near,
            "mtu",
            str(self.mtu),
            "type",
            "veth",
            "peer",
            "name",
            far,
            "mtu",
            str(self.mtu),
        )
        run("ip", "link", "set", near, "netns", ns)
        run("ip", "link", "set", far, "netns", pod)
        run("ip", "-n", ns, "link", "set", near, "master", "cni0", "up")
        # The conflist's hairpinMode (a pod reaching itself through a Service).
        run("ip", "-n", ns, "link", "set", near, "type", "bridge_slave", "hairpin", "on")
        run("ip", "-n", pod, "link", "set", far, "name", "eth0")
        run("ip", "-n", pod, "addr", "add", f"{self.pod_ip(n)}/{subnet.prefixlen}", "dev", "eth0")
        run("ip", "-n", pod, "link", "set", "eth0", "up")
        run("ip", "-n", pod, "route", "add", "default", "via", str(subnet.network_address + 1))

    def _other_rules(self, n: int) -> None:
        """
        What kube-proxy (no Service) and the policy controller (no policy, the
        node's pod) write too: every packet of both paths meets them on a node.
        """
        ns = self.nodes[n]
        facts = proxyrules.NodeFacts(f"node{n}", (self.addresses[n],), (CLUSTER,))
        in_ns(
            ns,
            "iptables-restore",
            "-w",
            "--noflush",
            stdin=proxyrules.render([], [], facts).text.encode(),
        )
        for table, chain, arguments in proxyrules.JUMPS + proxyrules.LOCALNET_JUMPS:
            in_ns(ns, "iptables", "-w", "-t", table, "-I", chain, "1", *arguments)
        pod = {
            "metadata": {"namespace": "default", "name": f"pod{n}"},
            "spec": {"containers": []},
            "status": {"podIP": self.pod_ip(n), "hostIP": self.addresses[n]},
        }
        firewall = policyrules.render(
            [pod], [], [], policyrules.PolicySettings(frozenset({self.addresses[n]})), "1"
        )
        if firewall.sets:
            in_ns(ns, "ipset", "restore", "-exist", stdin=firewall.ipset_restore().encode())
        in_ns(ns, "iptables-restore", "-w", "--noflush", stdin=firewall.filter_rules.encode())

    def _local(self, n: int) -> str | None:
        """The node's own set-up (vxlan: ``flannel.1``); its VTEP MAC."""
        if self.backend != "vxlan":
            return None
        device = vxlan.Device(Link(self.links[n], self.addresses[n], LINK_MTU), self.subnets[n])
        lines = "".join(f"{line}\n" for line in vxlan.device_commands(device, None))
        run("ip", "-n", self.nodes[n], "-batch", "-", stdin=lines.encode())
        found = json.loads(run("ip", "-n", self.nodes[n], "-j", "link", "show", vxlan.DEVICE))
        return str(found[0]["address"])

    def delete(self) -> None:
        for ns in self.nodes + self.pods:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def throughput(
    server_ns: str, client_ns: str, address: str, seconds: float, hops: Counter[str] | None = None
) -> float:
    """
    Gbit/s that iperf3 moves from C{client_ns} to C{address} (a server in
    C{server_ns}); with C{hops}, the run is sampled with ``perf`` and each
    sample of iperf3's (softirqs included) is counted into the hop it is in
    (L{hop_of}).
    """
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            server_ns,
            "iperf3",
            "-s",
            "-1",
            "-B",
            address,
            "-p",
            str(IPERF_PORT),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            if f":{IPERF_PORT}" in in_ns(server_ns, "ss", "-Hltn"):
                break
            time.sleep(0.05)
        perf = None
        if hops is not None:
            record = ["perf", "record", "-a", "-g", "-F", str(PERF_HZ), "-o", PERF_DATA]
            perf = subprocess.Popen(
                [*record, "--", "sleep", f"{seconds - 0.5:g}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        report = json.loads(
            in_ns(
                client_ns,
                "iperf3",
                "-J",
                "-c",
                address,
                "-p",
                str(IPERF_PORT),
                "-t",
                f"{seconds:g}",
            )
        )
        if perf is not None and hops is not None:
            perf.wait(30)
            script = run("perf", "script", "-i", PERF_DATA, "-F", "comm,tid,ip,sym")
            threads: dict[str, Counter[str]] = {}
            for sample in script.split("\n\n"):
                lines = [line.split() for line in sample.strip().splitlines()]
                if len(lines) > 1 and len(lines[0]) == 2 and lines[0][0] in SAMPLED:
                    hop = hop_of([line[1] for line in lines[1:] if len(line) > 1])
                    threads.setdefault(lines[0][1], Counter())[hop] += 1
            for counted in threads.values():
                hops.update(counted)
            if threads:
                sender = max(threads.values(), key=lambda counted: counted[SEND])
                hops[SENDER] += sum(sender.values())
    finally:
        server.terminate()
        server.wait(10)
        if os.path.exists(PERF_DATA):
            os.unlink(PERF_DATA)
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9


def hop_of(stack: Sequence[str]) -> str:
    """The hop a sample (its functions, leaf first) is in: the innermost one named in L{HOPS}."""
    for function in stack:
        hop = _HOP_OF.get(function)
        if hop is not None:
            return hop
    return "other (syscalls, scheduler, skb alloc/free)"


def hop_table(backend: str, pod: Counter[str], node: Counter[str]) -> str:
    """
    Each hop's CPU per byte on both paths, in units of the copy (the CPU that
    copying a byte from the sender and to the receiver takes, the same work
    on both paths: load that slows the machine inflates every hop alike).
    """
    unit_pod, unit_node = pod[COPY] or 1, node[COPY] or 1
    order = sorted(
        (set(pod) | set(node)) - {SENDER},
        key=lambda h: node[h] / unit_node - pod[h] / unit_pod,
    )
    lines = [
        f"| {backend}: hop (CPU per byte, copy = 1) | pod to pod | node to node | extra |",
        "|---|---:|---:|---:|",
    ]
    for hop in order:
        a, b = pod[hop] / unit_pod, node[hop] / unit_node
        lines.append(f"| {hop} | {a:.2f} | {b:.2f} | {a - b:+.2f} |")
    a = (sum(pod.values()) - pod[SENDER]) / unit_pod
    b = (sum(node.values()) - node[SENDER]) / unit_node
    lines.append(f"| all | {a:.2f} | {b:.2f} | {a - b:+.2f} ({b / a:.0%} as fast) |")
    a, b = pod[SENDER] / unit_pod, node[SENDER] / unit_node
    lines.append(
        f"| of which the sending thread (its softirqs too) | {a:.2f} | {b:.2f} | {a - b:+.2f}"
        f" ({b / a:.0%} as fast) |"
    )
    return "\n".join(lines)


def flannel_section(quick: bool, profile: bool) -> tuple[list[tuple[str, str, str]], str]:
    """The flannel section's rows (measure, figure, goal) and its notes (and hop tables)."""
    seconds, rounds = (2.0, 2) if quick else (4.0, 7)
    goals = {"vxlan": 0.70, "host-gw": 0.90}
    rows: list[tuple[str, str, str]] = []
    notes, tables = [], []
    for backend, goal in goals.items():
        nodes = FlannelNodes(backend)
        try:
            nodes.make()
            node_rates, pod_rates = [], []
            for _ in range(rounds):
                node_rates.append(
                    throughput(nodes.nodes[1], nodes.nodes[0], nodes.addresses[1], seconds)
                )
                pod_rates.append(throughput(nodes.pods[1], nodes.pods[0], nodes.pod_ip(1), seconds))
            if profile:
                # Rounds of their own: perf's sampling costs the timed ones nothing.
                pod_hops: Counter[str] = Counter()
                node_hops: Counter[str] = Counter()
                for _ in range(PROFILED_ROUNDS):
                    throughput(
                        nodes.nodes[1], nodes.nodes[0], nodes.addresses[1], seconds, node_hops
                    )
                    throughput(nodes.pods[1], nodes.pods[0], nodes.pod_ip(1), seconds, pod_hops)
                tables.append(hop_table(backend, pod_hops, node_hops))
        finally:
            nodes.delete()
        node, pod = statistics.median(node_rates), statistics.median(pod_rates)
        # Rounds next to each other share the machine's load: the ratio is taken per round.
        ratio = statistics.median(p / n for p, n in zip(pod_rates, node_rates, strict=True))
        rows.append((f"{backend}: node to node, TCP", f"{node:.2f} Gbit/s", "the floor"))
        rows.append(
            (
                f"{backend}: pod to pod across the nodes, TCP (pod MTU {nodes.mtu})",
                f"{pod:.2f} Gbit/s; {ratio:.0%} of node to node",
                f">= {goal:.0%} {'met' if ratio >= goal else 'NOT met'}",
            )
        )
        notes.append(
            f"{backend}: {rounds} rounds of {seconds:g} s each way taken in turns; node to node"
            f" {', '.join(f'{r:.2f}' for r in node_rates)}, pod to pod"
            f" {', '.join(f'{r:.2f}' for r in pod_rates)} Gbit/s (the table: the medians, and"
            " the median of each round's pod / node ratio)."
        )
    notes.extend(NOTES)
    return rows, "\n\n".join(["\n".join(f"- {note}" for note in notes), *tables])


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--section", choices=["flannel"], required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--profile", action="store_true", help="add each hop's CPU per byte (perf, sampled)"
    )
    options = parser.parse_args(argv)
    started = time.monotonic()
    rows, notes = flannel_section(options.quick, options.profile)
    iperf = run("iperf3", "--version").splitlines()[0].strip()
    report(
        "flannel (vxlan, host-gw)",
        (
            "Written by `python bench/network.py --section flannel --profile"
            " --output docs/network-benchmark.md`."
            " Two node network namespaces on a veth pair (MTU 1500), a pod namespace on each"
            " node's `cni0` bridge (hairpin mode); the nodes hold what k3stw's flannel writes for"
            " each other (vxlan: `flannel.1`, VNI 1, port 8472, and the peer's neighbour, FDB"
            " entry and onlink route; host-gw: the route through the peer), flannel's chains, and"
            " kube-proxy's and the network policy controller's rules (no Service, no policy)."
            " iperf3, one TCP stream, pod to pod and node to node taking turns in the same run."
        ),
        iperf,
        started,
        options.quick,
        rows,
        notes,
        options.output,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
