"""
NetworkPolicies as kube-router's filter rules and ipsets, pure: each feature
of the NetworkPolicy API gives the allow rules expected in its policy's
chain (the ipsets shown by their members), and the pod chains, the top
chains and the transaction's bookkeeping are as kube-router lays them out.
"""

from __future__ import annotations

import hashlib
import re
from base64 import b32encode
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.network.policyrules import (
    DEFAULT_CHAIN,
    Firewall,
    IPSet,
    PolicySettings,
    pod_chain_name,
    policy_chain_name,
    relevant_pod_change,
    render,
    stale_sets,
)

NODE = "10.199.0.2"
SETTINGS = PolicySettings(frozenset({NODE}))


def pod(
    name: str,
    ip: str,
    labels: dict[str, str],
    namespace: str = "default",
    host: str = NODE,
    phase: str = "Running",
    ports: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "ports": ports or []}], **spec},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": host},
    }


PODS = [
    pod(
        "web",
        "10.42.0.5",
        {"app": "web"},
        ports=[
            {"name": "http", "containerPort": 80, "protocol": "TCP"},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
        ],
    ),
    pod("client", "10.42.0.6", {"app": "client"}),
    pod("other", "10.42.0.7", {"app": "other"}),
    # On another node, in a namespace labelled team=a.
    pod("api", "10.42.1.9", {"app": "client"}, namespace="prod", host="10.199.0.3"),
    # Not actionable: finished, or on the host's network.
    pod("done", "10.42.0.8", {"app": "client"}, phase="Succeeded"),
    pod("host", NODE, {"app": "client"}, hostNetwork=True),
]
NAMESPACES = [
    {"metadata": {"name": "default", "labels": {"kubernetes.io/metadata.name": "default"}}},
    {"metadata": {"name": "prod", "labels": {"team": "a"}}},
]
WEB = {"matchLabels": {"app": "web"}}
CLIENTS = {"matchLabels": {"app": "client"}}


def policy(spec: dict[str, Any], name: str = "p", namespace: str = "default") -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name}, "spec": spec}


def sync(*policies: dict[str, Any], saved: str = "", version: str = "1") -> Firewall:
    return render(PODS, NAMESPACES, policies, SETTINGS, version, saved)


def chain_rules(firewall: Firewall, chain: str) -> list[str]:
    """A chain's rules, without C{-A chain} and without their comments."""
    return [
        re.sub(r' -m comment --comment "[^"]*"', "", line)[len(f"-A {chain} ") :]
        for line in firewall.filter_rules.splitlines()
        if line.startswith(f"-A {chain} ")
    ]


def allowed(firewall: Firewall, name: str = "p", namespace: str = "default") -> list[str]:
    """A policy chain's allow rules, each ipset shown as its members: C{src=a,b dst=c -p tcp}."""
    members = {ipset.name: ",".join(ipset.entries) for ipset in firewall.sets}
    rules = chain_rules(firewall, policy_chain_name(namespace, name, "1"))
    marks, returns = rules[::2], rules[1::2]
    mark = " -j MARK --set-xmark 0x10000/0x10000"
    back = " -m mark --mark 0x10000/0x10000 -j RETURN"
    # Each allow rule marks the packet, then returns: the same match twice.
    assert [m.removesuffix(mark) for m in marks] == [r.removesuffix(back) for r in returns]
    return [
        re.sub(
            r"-m set --match-set (\S+) (src|dst)",
            lambda m: f"{m[2]}={members[m[1]]}",
            rule.removesuffix(mark),
        ).strip()
        for rule in marks
    ]


#: (what, policy spec, the policy chain's allow rules).
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("ingress deny all", {"podSelector": WEB, "policyTypes": ["Ingress"]}, []),
    (
        "ingress: an empty rule allows everything",
        {"podSelector": WEB, "policyTypes": ["Ingress"], "ingress": [{}]},
        ["dst=10.42.0.5"],
    ),
    (
        "podSelector: actionable pods of the policy's namespace only",
        {"podSelector": WEB, "ingress": [{"from": [{"podSelector": CLIENTS}]}]},
        ["src=10.42.0.6 dst=10.42.0.5"],
    ),
    (
        "namespaceSelector: every pod of the matching namespaces",
        {
            "podSelector": WEB,
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}],
        },
        ["src=10.42.1.9 dst=10.42.0.5"],
    ),
    (
        "namespaceSelector and podSelector in one peer: both must match",
        {
            "podSelector": WEB,
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": CLIENTS}]}],
        },
        ["src=10.42.0.6,10.42.1.9 dst=10.42.0.5"],
    ),
    (
        "matchExpressions select too",
        {
            "podSelector": {
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]
            },
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "app", "operator": "NotIn", "values": ["web", "client"]}
                                ]
                            }
                        }
                    ]
                }
            ],
        },
        ["src=10.42.0.7 dst=10.42.0.5"],
    ),
    (
        "a peer selecting no pod allows nothing",
        {"podSelector": WEB, "ingress": [{"from": [{"podSelector": {"matchLabels": {"x": "y"}}}]}]},
        [],
    ),
    (
        "ipBlock with except",
        {
            "podSelector": WEB,
            "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.42.0.0/16"]}}]}
            ],
        },
        ["src=10.0.0.0/8,10.42.0.0/16 nomatch dst=10.42.0.5"],
    ),
    (
        "ipBlock /0 is two halves (hash:net holds no /0)",
        {"podSelector": WEB, "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]},
        ["src=0.0.0.0/1,128.0.0.0/1 dst=10.42.0.5"],
    ),
    (
        "an IPv6 ipBlock is left to the IPv6 rules",
        {"podSelector": WEB, "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/8"}}]}]},
        [],
    ),
    (
        "ports: numbers, an endPort range, protocols without a port",
        {
            "podSelector": WEB,
            "ingress": [
                {
                    "ports": [
                        {"protocol": "TCP", "port": 8080},
                        {"protocol": "TCP", "port": 8000, "endPort": 8010},
                        {"protocol": "UDP"},
                        {"protocol": "SCTP", "port": 9},
                    ]
                }
            ],
        },
        [
            "dst=10.42.0.5 -p tcp --dport 8080",
            "dst=10.42.0.5 -p tcp --dport 8000:8010",
            "dst=10.42.0.5 -p udp",
            "dst=10.42.0.5 -p sctp --dport 9",
        ],
    ),
    (
        "ports with peers: each port for the peers",
        {
            "podSelector": WEB,
            "ingress": [{"from": [{"podSelector": CLIENTS}], "ports": [{"port": 80}]}],
        },
        ["src=10.42.0.6 dst=10.42.0.5 -p tcp --dport 80"],
    ),
    (
        "named ports resolve on the protected pods, per protocol; unknown names allow nothing",
        {
            "podSelector": WEB,
            "ingress": [
                {
                    "from": [{"podSelector": CLIENTS}],
                    "ports": [
                        {"port": "http"},
                        {"port": "dns", "protocol": "UDP"},
                        {"port": "dns", "protocol": "TCP"},
                        {"port": "nope"},
                    ],
                }
            ],
        },
        [
            "src=10.42.0.6 dst=10.42.0.5 -p tcp --dport 80",
            "src=10.42.0.6 dst=10.42.0.5 -p udp --dport 53",
        ],
    ),
    ("egress deny all", {"podSelector": WEB, "policyTypes": ["Egress"]}, []),
    (
        "egress to pods on a port",
        {
            "podSelector": WEB,
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"podSelector": CLIENTS}], "ports": [{"port": 53, "protocol": "UDP"}]}
            ],
        },
        ["src=10.42.0.5 dst=10.42.0.6 -p udp --dport 53"],
    ),
    (
        "egress named port resolves on the peer pods",
        {
            "podSelector": CLIENTS,
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": WEB}], "ports": [{"port": "http"}]}],
        },
        ["src=10.42.0.6 dst=10.42.0.5 -p tcp --dport 80"],
    ),
    (
        "egress with ports and no peers: anywhere on those ports",
        {
            "podSelector": WEB,
            "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": 443}, {"port": "http"}]}],
        },
        ["src=10.42.0.5 -p tcp --dport 443", "src=10.42.0.5 -p tcp --dport 80"],
    ),
    (
        "egress to an ipBlock",
        {
            "podSelector": WEB,
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}],
        },
        ["src=10.42.0.5 dst=192.168.0.0/16"],
    ),
    (
        "both directions in one policy",
        {
            "podSelector": WEB,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": CLIENTS}]}],
            "egress": [{}],
        },
        ["src=10.42.0.6 dst=10.42.0.5", "src=10.42.0.5"],
    ),
    (
        "an empty podSelector protects every actionable pod of the namespace",
        {"podSelector": {}, "ingress": [{}]},
        ["dst=10.42.0.6,10.42.0.7,10.42.0.5"],
    ),
]


class PolicyChainTests(SynchronousTestCase):
    def test_each_feature(self) -> None:
        for what, spec, expected in CASES:
            with self.subTest(what):
                self.assertEqual(allowed(sync(policy(spec))), expected, what)

    def test_names_are_kube_routers(self) -> None:
        """C{KUBE-DST-}/C{KUBE-SRC-}/... and base32(sha256(...))[:16] of kube-router's keys."""

        def hashed(text: str) -> str:
            return b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]

        firewall = sync(
            policy({"podSelector": WEB, "ingress": [{"from": [{"podSelector": CLIENTS}]}]})
        )
        self.assertEqual(
            sorted((s.name, s.kind, s.entries) for s in firewall.sets),
            [
                ("KUBE-DST-" + hashed("defaultpIPv4"), "hash:ip", ("10.42.0.5",)),
                ("KUBE-SRC-" + hashed("defaultpingressrule0IPv4pod"), "hash:ip", ("10.42.0.6",)),
            ],
        )
        self.assertEqual(
            policy_chain_name("default", "p", "7"), "KUBE-NWPLCY-" + hashed("defaultp7IPv4")
        )
        self.assertEqual(
            pod_chain_name("default", "web", "7"), "KUBE-POD-FW-" + hashed("defaultweb7")
        )

    def test_policy_types_default_from_the_rules(self) -> None:
        """Without policyTypes, egress rules make a policy two-way (as the API server defaults)."""
        firewall = sync(policy({"podSelector": WEB, "egress": [{}]}))
        self.assertEqual(allowed(firewall), ["src=10.42.0.5"])
        web = chain_rules(firewall, pod_chain_name("default", "web", "1"))
        self.assertIn(f"-j {policy_chain_name('default', 'p', '1')}", web)


class PodChainTests(SynchronousTestCase):
    def test_an_unselected_pod_is_allowed_both_ways(self) -> None:
        firewall = sync()
        chain = pod_chain_name("default", "client", "1")
        self.assertEqual(
            chain_rules(firewall, chain),
            [
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-m conntrack --ctstate INVALID -j DROP",
                "-m addrtype --src-type LOCAL -d 10.42.0.6 -j ACCEPT",
                f"-s 10.42.0.6 -j {DEFAULT_CHAIN}",
                f"-d 10.42.0.6 -j {DEFAULT_CHAIN}",
                "-m mark ! --mark 0x10000/0x10000 -j NFLOG --nflog-group 100"
                " -m limit --limit 10/minute --limit-burst 10",
                "-m mark ! --mark 0x10000/0x10000 -j REJECT",
                "-j MARK --set-mark 0/0x10000",
                "-j MARK --set-mark 0x20000/0x20000",
            ],
        )
        self.assertEqual(
            chain_rules(firewall, DEFAULT_CHAIN),
            [
                "-p icmp --icmp-type echo-request -j ACCEPT",
                "-p icmp --icmp-type destination-unreachable -j ACCEPT",
                "-p icmp --icmp-type time-exceeded -j ACCEPT",
                "-j MARK --set-xmark 0x10000/0x10000",
            ],
        )

    def test_a_selected_pod_runs_through_its_policies_only_in_their_directions(self) -> None:
        ingress = policy({"podSelector": WEB, "policyTypes": ["Ingress"]}, "in")
        egress = policy({"podSelector": WEB, "policyTypes": ["Egress"]}, "out")
        both = policy({"podSelector": WEB, "policyTypes": ["Ingress", "Egress"]}, "both")
        web = pod_chain_name("default", "web", "1")
        rules = chain_rules(sync(ingress), web)
        self.assertIn(f"-s 10.42.0.5 -j {DEFAULT_CHAIN}", rules)
        self.assertNotIn(f"-d 10.42.0.5 -j {DEFAULT_CHAIN}", rules)
        self.assertEqual(rules[4], f"-d 10.42.0.5 -j {policy_chain_name('default', 'in', '1')}")
        rules = chain_rules(sync(egress), web)
        self.assertEqual(
            rules[3:5],
            [
                f"-d 10.42.0.5 -j {DEFAULT_CHAIN}",
                f"-s 10.42.0.5 -j {policy_chain_name('default', 'out', '1')}",
            ],
        )
        rules = chain_rules(sync(both, ingress), web)
        self.assertEqual(
            rules[3:5],
            [
                f"-j {policy_chain_name('default', 'both', '1')}",
                f"-d 10.42.0.5 -j {policy_chain_name('default', 'in', '1')}",
            ],
        )
        self.assertEqual(
            rules[5],
            "-m mark ! --mark 0x10000/0x10000 -j NFLOG --nflog-group 100"
            " -m limit --limit 10/minute --limit-burst 10",
        )

    def test_only_this_nodes_actionable_pods_get_chains(self) -> None:
        firewall = sync(policy({"podSelector": {}, "ingress": [{}]}, namespace="prod"))
        chains = [c for c in firewall.chains if c.startswith("KUBE-POD-FW-")]
        self.assertEqual(
            chains,
            [pod_chain_name("default", name, "1") for name in ("client", "other", "web")],
        )
        # The remote pod is still protected in the sets every node shares.
        self.assertEqual(allowed(firewall, namespace="prod"), ["dst=10.42.1.9"])

    def test_top_chains_jump_to_each_local_pod_chain(self) -> None:
        firewall = sync()
        chain = pod_chain_name("default", "client", "1")
        self.assertEqual(
            chain_rules(firewall, "KUBE-ROUTER-FORWARD")[:6],
            [
                # Traffic to a cluster IP not DNATed (no endpoint) is left to kube-proxy's REJECT.
                "-d 10.43.0.0/16 -j RETURN",
                f"-d 10.42.0.6 -j {chain}",
                f"-m physdev --physdev-is-bridged -d 10.42.0.6 -j {chain}",
                f"-s 10.42.0.6 -j {chain}",
                f"-m physdev --physdev-is-bridged -s 10.42.0.6 -j {chain}",
                f"-d 10.42.0.7 -j {pod_chain_name('default', 'other', '1')}",
            ],
        )
        self.assertEqual(
            chain_rules(firewall, "KUBE-ROUTER-OUTPUT")[:2],
            [f"-d 10.42.0.6 -j {chain}", f"-s 10.42.0.6 -j {chain}"],
        )
        self.assertEqual(
            chain_rules(firewall, "KUBE-ROUTER-INPUT"),
            [
                "-d 10.43.0.0/16 -j RETURN",
                "-p tcp -m addrtype --dst-type LOCAL -m multiport --dports 30000:32767 -j RETURN",
                "-p udp -m addrtype --dst-type LOCAL -m multiport --dports 30000:32767 -j RETURN",
                *(
                    f"-s {ip} -j {pod_chain_name('default', name, '1')}"
                    for name, ip in (
                        ("client", "10.42.0.6"),
                        ("other", "10.42.0.7"),
                        ("web", "10.42.0.5"),
                    )
                ),
                "-m mark --mark 0x20000/0x20000 -j ACCEPT",
            ],
        )
        self.assertIn(
            '-A KUBE-ROUTER-INPUT -m comment --comment "allow traffic to primary/secondary'
            ' cluster IP range - EKROEGTNIJ3AP3LC" -d 10.43.0.0/16 -j RETURN',
            firewall.filter_rules,
        )


SAVED = """\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
:KUBE-NWPLCY-DEFAULT - [0:0]
:KUBE-NWPLCY-OLDOLDOLDOLDOLDO - [0:0]
:KUBE-POD-FW-OLDOLDOLDOLDOLDO - [0:0]
:KUBE-ROUTER-FORWARD - [0:0]
:KUBE-ROUTER-INPUT - [0:0]
:KUBE-ROUTER-OUTPUT - [0:0]
-A INPUT -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD
-A FLANNEL-FWD -s 10.42.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
"""


class TransactionTests(SynchronousTestCase):
    def test_a_first_sync_declares_everything_and_jumps_first(self) -> None:
        text = sync().filter_rules
        lines = text.splitlines()
        self.assertEqual(lines[0], "*filter")
        self.assertEqual(lines[-1], "COMMIT")
        self.assertEqual(
            lines[-4:-1],
            [
                '-I INPUT 1 -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV"'
                " -j KUBE-ROUTER-INPUT",
                '-I FORWARD 1 -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T"'
                " -j KUBE-ROUTER-FORWARD",
                '-I OUTPUT 1 -m comment --comment "kube-router netpol - VEAAIY32XVBHCSCY"'
                " -j KUBE-ROUTER-OUTPUT",
            ],
        )
        declared = [line[1:].split()[0] for line in lines if line.startswith(":")]
        self.assertEqual(
            declared[:4],
            ["KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT", DEFAULT_CHAIN],
        )
        self.assertNotIn("-X", text)

    def test_a_later_sync_deletes_old_chains_and_fixes_only_displaced_jumps(self) -> None:
        text = sync(saved=SAVED, version="2").filter_rules
        lines = text.splitlines()
        for old in ("KUBE-NWPLCY-OLDOLDOLDOLDOLDO", "KUBE-POD-FW-OLDOLDOLDOLDOLDO"):
            self.assertIn(f":{old} - [0:0]", lines)
            self.assertIn(f"-X {old}", lines)
        # Chains that are not kube-router's, and its default chain, stay.
        self.assertNotIn("FLANNEL-FWD", text)
        self.assertNotIn(f"-X {DEFAULT_CHAIN}", text)
        # INPUT's jump is first already; FORWARD's is second and moves up; OUTPUT has none.
        self.assertEqual(
            [line for line in lines if line.startswith(("-I ", "-D "))],
            [
                '-D FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T"'
                " -j KUBE-ROUTER-FORWARD",
                '-I FORWARD 1 -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T"'
                " -j KUBE-ROUTER-FORWARD",
                '-I OUTPUT 1 -m comment --comment "kube-router netpol - VEAAIY32XVBHCSCY"'
                " -j KUBE-ROUTER-OUTPUT",
            ],
        )

    def test_chain_names_change_with_every_sync(self) -> None:
        first, second = sync(version="1"), sync(version="2")
        self.assertFalse(
            {c for c in first.chains if c.startswith("KUBE-POD-FW-")}
            & {c for c in second.chains if c.startswith("KUBE-POD-FW-")}
        )
        self.assertEqual(first.sets, second.sets)

    def test_ipsets_are_filled_aside_and_swapped_in(self) -> None:
        firewall = Firewall(
            (
                IPSet("KUBE-DST-A", "hash:ip", ("10.42.0.5",)),
                IPSet("KUBE-SRC-B", "hash:net", ("10.0.0.0/8", "10.42.0.0/16 nomatch")),
            ),
            "",
        )
        ip, net = "TMP-PRBJ7ASFQM5DJR3Q", "TMP-LP6R7TXZCLIUYMBN"
        self.assertEqual(
            firewall.ipset_restore(),
            f"create {ip} hash:ip timeout 0\n"
            f"flush {ip}\n"
            f"add {ip} 10.42.0.5 timeout 0\n"
            "create KUBE-DST-A hash:ip timeout 0\n"
            f"swap {ip} KUBE-DST-A\n"
            f"flush {ip}\n"
            f"create {net} hash:net timeout 0\n"
            f"flush {net}\n"
            f"add {net} 10.0.0.0/8 timeout 0\n"
            f"add {net} 10.42.0.0/16 timeout 0 nomatch\n"
            "create KUBE-SRC-B hash:net timeout 0\n"
            f"swap {net} KUBE-SRC-B\n"
            f"flush {net}\n"
            # Sorted by name.
            f"destroy {net}\n"
            f"destroy {ip}\n",
        )
        self.assertEqual(
            stale_sets(["KUBE-DST-A", "KUBE-DST-C", "KUBE-SRC-B", "KUBE-SRC-D", "mine"], firewall),
            ["KUBE-DST-C", "KUBE-SRC-D"],
        )

    def test_relevant_pod_changes(self) -> None:
        web = pod("web", "10.42.0.5", {"app": "web"})
        self.assertFalse(relevant_pod_change(web, {**web, "spec": {"containers": []}}))
        for changed in (
            pod("web", "10.42.0.9", {"app": "web"}),
            pod("web", "10.42.0.5", {"app": "db"}),
            pod("web", "10.42.0.5", {"app": "web"}, phase="Succeeded"),
            pod("web", "10.42.0.5", {"app": "web"}, host="10.199.0.9"),
        ):
            self.assertTrue(relevant_pod_change(web, changed))
