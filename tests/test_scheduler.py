"""
The scheduler on the real object store over the in-memory datastore, on a
Clock: pods placed through ``pods/binding`` by kube's filters and scores,
unschedulable pods told why in kube's words (status and events), and tried
again when the cluster changes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.machinery.nodeaffinity import fits_node
from k3stw.machinery.objects import find_condition
from k3stw.scheduler.framework import (
    Cycle,
    NodeState,
    PodFacts,
    fit_error,
    pod_requests,
    run_filters,
    select_host,
)
from k3stw.scheduler.scheduler import Scheduler
from tests.support.apiserver import MemoryServer
from tests.test_join import Cluster


def node_object(
    name: str,
    cpu: str = "4",
    memory: str = "8Gi",
    pods: str = "110",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    ready: str = "True",
    unschedulable: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    resources = {"cpu": cpu, "memory": memory, "pods": pods}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": spec,
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady"}],
        },
    }


def pod_object(
    name: str,
    cpu: str | None = None,
    memory: str | None = None,
    node_name: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    container: dict[str, Any] = {"name": "c", "image": "nginx"}
    if requests:
        container["resources"] = {"requests": requests}
    if "ports" in spec:
        container["ports"] = spec.pop("ports")
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", **spec.pop("metadata", {})},
        "spec": {"containers": [container], **spec},
    }
    if node_name:
        body["spec"]["nodeName"] = node_name
    return body


def state(node: dict[str, Any], *pods: dict[str, Any]) -> NodeState:
    found = NodeState(node["metadata"]["name"])
    found.set_node(node)
    for pod in pods:
        found.add_pod(PodFacts.of(pod))
    return found


def reasons(pod: dict[str, Any], node: NodeState) -> tuple[str, ...]:
    rejected = run_filters(PodFacts.of(pod), node)
    return () if rejected is None else rejected.reasons


class FilterTests(SynchronousTestCase):
    """Each filter of the default profile, with kube-scheduler's reason."""

    def test_cordoned_node_is_unschedulable_unless_tolerated(self) -> None:
        cordoned = state(node_object("n", unschedulable=True))
        self.assertEqual(reasons(pod_object("p"), cordoned), ("node(s) were unschedulable",))
        tolerant = pod_object(
            "p", tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]
        )
        self.assertEqual(reasons(tolerant, cordoned), ())

    def test_not_ready_node_has_the_not_ready_taint(self) -> None:
        self.assertEqual(
            reasons(pod_object("p"), state(node_object("n", ready="False"))),
            ("node(s) had untolerated taint {node.kubernetes.io/not-ready: }",),
        )
        self.assertEqual(
            reasons(pod_object("p"), state(node_object("n", ready="Unknown"))),
            ("node(s) had untolerated taint {node.kubernetes.io/unreachable: }",),
        )

    def test_untolerated_taints_reject_tolerated_and_preferred_do_not(self) -> None:
        node = state(
            node_object(
                "n",
                taints=[
                    {"key": "soft", "value": "x", "effect": "PreferNoSchedule"},
                    {"key": "dedicated", "value": "db", "effect": "NoSchedule"},
                ],
            )
        )
        self.assertEqual(
            reasons(pod_object("p"), node), ("node(s) had untolerated taint {dedicated: db}",)
        )
        equal = [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]
        self.assertEqual(reasons(pod_object("p", tolerations=equal), node), ())
        wrong = [{"key": "dedicated", "value": "web"}]
        self.assertNotEqual(reasons(pod_object("p", tolerations=wrong), node), ())

    def test_node_selector_and_required_affinity(self) -> None:
        node = state(node_object("n", labels={"disk": "ssd", "gen": "5"}))
        mismatch = ("node(s) didn't match Pod's node affinity/selector",)
        self.assertEqual(reasons(pod_object("p", nodeSelector={"disk": "ssd"}), node), ())
        self.assertEqual(reasons(pod_object("p", nodeSelector={"disk": "hdd"}), node), mismatch)

        def required(*terms: dict[str, Any]) -> dict[str, Any]:
            return pod_object(
                "p",
                affinity={
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": list(terms)
                        }
                    }
                },
            )

        gt4 = {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}
        gt5 = {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["5"]}]}
        named = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}
        self.assertEqual(reasons(required(gt4), node), ())
        self.assertEqual(reasons(required(gt5), node), mismatch)
        self.assertEqual(reasons(required(gt5, named), node), ())  # terms are ORed

    def test_a_term_that_does_not_parse_selects_no_node(self) -> None:
        # The DaemonSet controller asks the same matcher (nodeaffinity.fits_node).
        node = node_object("n", labels={"gen": "5"})
        bad = {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["five"]}]}
        named = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}
        for terms, fits in (([bad], False), ([bad, named], True), ([{}], False)):
            spec: dict[str, Any] = {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": terms
                        }
                    }
                }
            }
            self.assertEqual(fits_node(spec, node), fits)
            self.assertEqual(
                reasons(pod_object("p", affinity=spec["affinity"]), state(node)) == (), fits
            )

    def test_host_port_conflicts(self) -> None:
        port = [{"containerPort": 80, "hostPort": 8080}]
        node = state(node_object("n"), pod_object("a", node_name="n", ports=port))
        self.assertEqual(
            reasons(pod_object("p", ports=port), node),
            ("node(s) didn't have free ports for the requested pod ports",),
        )
        udp = [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]
        self.assertEqual(reasons(pod_object("p", ports=udp), node), ())

    def test_resources_against_allocatable_less_requested(self) -> None:
        node = state(
            node_object("n", cpu="2", memory="1Gi", pods="2"),
            pod_object("a", cpu="1500m", memory="512Mi", node_name="n"),
        )
        self.assertEqual(reasons(pod_object("p", cpu="500m", memory="512Mi"), node), ())
        self.assertEqual(
            reasons(pod_object("p", cpu="501m", memory="513Mi"), node),
            ("Insufficient cpu", "Insufficient memory"),
        )
        node.add_pod(PodFacts.of(pod_object("b", node_name="n")))
        self.assertEqual(reasons(pod_object("p"), node), ("Too many pods",))

    def test_requests_count_init_containers_sidecars_and_overhead(self) -> None:
        spec = {
            "containers": [{"resources": {"requests": {"cpu": "100m"}}}],
            "initContainers": [
                {"restartPolicy": "Always", "resources": {"requests": {"cpu": "200m"}}},
                {"resources": {"requests": {"cpu": "1"}}},
            ],
            "overhead": {"cpu": "50m"},
        }
        self.assertEqual(pod_requests(spec), {"cpu": 1200 + 50})


class ScoreTests(SynchronousTestCase):
    """The scores pick a node deterministically."""

    def test_least_allocated_prefers_the_emptier_node(self) -> None:
        busy = state(node_object("a"), pod_object("x", cpu="3", memory="6Gi", node_name="a"))
        idle = state(node_object("b"))
        chosen = select_host(PodFacts.of(pod_object("p", cpu="100m")), [busy, idle])
        self.assertEqual(chosen.name, "b")

    def test_ties_go_to_the_first_name(self) -> None:
        nodes = [state(node_object(name)) for name in ("c", "a", "b")]
        self.assertEqual(select_host(PodFacts.of(pod_object("p")), nodes).name, "a")

    def test_preferred_affinity_outweighs_spare_room(self) -> None:
        busy = state(
            node_object("a", labels={"disk": "ssd"}),
            pod_object("x", cpu="2", memory="4Gi", node_name="a"),
        )
        idle = state(node_object("b"))
        preferred = {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 50,
                        "preference": {
                            "matchExpressions": [
                                {"key": "disk", "operator": "In", "values": ["ssd"]}
                            ]
                        },
                    }
                ]
            }
        }
        pod = PodFacts.of(pod_object("p", affinity=preferred))
        self.assertEqual(select_host(pod, [busy, idle]).name, "a")

    def test_prefer_no_schedule_taints_push_pods_away(self) -> None:
        soft = [{"key": "soft", "value": "x", "effect": "PreferNoSchedule"}]
        nodes = [state(node_object("a", taints=soft)), state(node_object("b"))]
        self.assertEqual(select_host(PodFacts.of(pod_object("p")), nodes).name, "b")

    def test_one_owners_pods_spread_over_nodes(self) -> None:
        owner = {"ownerReferences": [{"uid": "rs-1", "controller": True, "kind": "ReplicaSet"}]}
        crowded = state(
            node_object("a"), pod_object("x", node_name="a", metadata=owner)
        )  # an idle copy of the same owner sits on a
        other = state(node_object("b"), pod_object("y", cpu="100m", node_name="b"))
        chosen = select_host(PodFacts.of(pod_object("p", metadata=owner)), [crowded, other])
        self.assertEqual(chosen.name, "b")

    def test_fit_error_is_kubes_message(self) -> None:
        nodes = [
            state(node_object("a", cpu="1")),
            state(
                node_object(
                    "b", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
                )
            ),
            state(
                node_object(
                    "c", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
                )
            ),
        ]
        pod = PodFacts.of(pod_object("p", cpu="2"))
        rejections = [r for r in (run_filters(pod, n) for n in nodes) if r is not None]
        self.assertEqual(
            fit_error(pod, rejections),
            "0/3 nodes are available: 1 Insufficient cpu, "
            "2 node(s) had untolerated taint {dedicated: db}. preemption: "
            "0/3 nodes are available: 1 No preemption victims found for incoming pod, "
            "2 Preemption is not helpful for scheduling.",
        )


def labelled(name: str, labels: dict[str, str], **options: Any) -> dict[str, Any]:
    """A pod with labels (and what L{pod_object} takes)."""
    metadata = options.pop("metadata", {})
    return pod_object(name, metadata={**metadata, "labels": labels}, **options)


def term(
    labels: dict[str, str], key: str = "kubernetes.io/hostname", **more: Any
) -> dict[str, Any]:
    """A PodAffinityTerm selecting C{labels} over C{key}."""
    return {"labelSelector": {"matchLabels": labels}, "topologyKey": key, **more}


def affinity(kind: str, *terms: dict[str, Any], preferred: bool = False) -> dict[str, Any]:
    """An ``affinity`` with C{terms} required (or preferred, each weighted by its ``weight``)."""
    if preferred:
        return {kind: {"preferredDuringSchedulingIgnoredDuringExecution": list(terms)}}
    return {kind: {"requiredDuringSchedulingIgnoredDuringExecution": list(terms)}}


def verdicts(pod: dict[str, Any], *nodes: NodeState) -> dict[str, tuple[str, ...]]:
    """Each node's filter reasons for C{pod}, in one cycle over all C{nodes}."""
    cycle = Cycle(PodFacts.of(pod), nodes)
    found = {}
    for node in nodes:
        rejected = cycle.filter(node)
        found[node.name] = () if rejected is None else rejected.reasons
    return found


def zoned(name: str, zone: str, *pods: dict[str, Any], **options: Any) -> NodeState:
    labels = {"topology.kubernetes.io/zone": zone} if zone else {}
    labels.update(options.pop("labels", {}))
    return state(node_object(name, labels=labels, **options), *pods)


ANTI = "node(s) didn't match pod anti-affinity rules"
AFFINE = "node(s) didn't match pod affinity rules"
EXISTING = "node(s) didn't satisfy existing pods anti-affinity rules"
SKEWED = "node(s) didn't match pod topology spread constraints"
ZONE = "topology.kubernetes.io/zone"


class InterPodAffinityTests(SynchronousTestCase):
    """InterPodAffinity's filter and score, with kube-scheduler's reasons."""

    def test_required_anti_affinity_keeps_off_nodes_with_matching_pods(self) -> None:
        web = labelled("w", {"app": "web"}, node_name="a")
        pod = labelled(
            "p", {"app": "web"}, affinity=affinity("podAntiAffinity", term({"app": "web"}))
        )
        self.assertEqual(
            verdicts(pod, state(node_object("a"), web), state(node_object("b"))),
            {"a": (ANTI,), "b": ()},
        )

    def test_anti_affinity_over_a_zone_keeps_off_the_whole_zone(self) -> None:
        db = labelled("d", {"app": "db"}, node_name="a")
        pod = pod_object("p", affinity=affinity("podAntiAffinity", term({"app": "db"}, ZONE)))
        found = verdicts(
            pod, zoned("a", "z1", db), zoned("b", "z1"), zoned("c", "z2"), zoned("d", "")
        )
        self.assertEqual(found, {"a": (ANTI,), "b": (ANTI,), "c": (), "d": ()})

    def test_existing_pods_anti_affinity_keeps_matching_pods_out(self) -> None:
        loner = pod_object(
            "l", node_name="a", affinity=affinity("podAntiAffinity", term({"app": "db"}, ZONE))
        )
        found = verdicts(
            labelled("p", {"app": "db"}),
            zoned("a", "z1", loner),
            zoned("b", "z1"),
            zoned("c", "z2"),
        )
        self.assertEqual(found, {"a": (EXISTING,), "b": (EXISTING,), "c": ()})
        self.assertEqual(verdicts(labelled("p", {"app": "web"}), zoned("a", "z1", loner))["a"], ())

    def test_required_affinity_needs_a_matching_pod_in_the_domain(self) -> None:
        cache = labelled("c", {"app": "cache"}, node_name="a")
        pod = pod_object("p", affinity=affinity("podAffinity", term({"app": "cache"}, ZONE)))
        found = verdicts(
            pod, zoned("a", "z1", cache), zoned("b", "z1"), zoned("c", "z2"), zoned("d", "")
        )
        self.assertEqual(found, {"a": (), "b": (), "c": (AFFINE,), "d": (AFFINE,)})

    def test_the_first_of_a_self_affine_group_goes_where_the_topology_exists(self) -> None:
        pod = labelled(
            "p", {"app": "cache"}, affinity=affinity("podAffinity", term({"app": "cache"}, ZONE))
        )
        self.assertEqual(verdicts(pod, zoned("a", "z1"), zoned("b", "")), {"a": (), "b": (AFFINE,)})
        stranger = pod_object("p", affinity=affinity("podAffinity", term({"app": "cache"}, ZONE)))
        self.assertEqual(verdicts(stranger, zoned("a", "z1")), {"a": (AFFINE,)})

    def test_a_node_without_a_pod_is_counted_afresh(self) -> None:
        # What preemption asks: would the pod fit if this zone's db pod left?
        db = labelled("d", {"app": "db"}, node_name="a")
        pod = PodFacts.of(
            pod_object("p", affinity=affinity("podAntiAffinity", term({"app": "db"}, ZONE)))
        )
        nodes = [zoned("a", "z1", db), zoned("b", "z1")]
        cycle = Cycle(pod, nodes)
        self.assertIsNotNone(cycle.filter(nodes[1]))
        emptied = zoned("a", "z1")
        self.assertIsNone(cycle.with_node(emptied).filter(emptied))
        self.assertIsNone(cycle.with_node(emptied).filter(nodes[1]))

    def test_terms_select_the_pods_own_namespace_unless_told_otherwise(self) -> None:
        other = labelled("w", {"app": "web"}, node_name="a", metadata={"namespace": "other"})
        node = state(node_object("a"), other)
        own = pod_object("p", affinity=affinity("podAntiAffinity", term({"app": "web"})))
        self.assertEqual(verdicts(own, node), {"a": ()})
        listed = pod_object(
            "p", affinity=affinity("podAntiAffinity", term({"app": "web"}, namespaces=["other"]))
        )
        self.assertEqual(verdicts(listed, node), {"a": (ANTI,)})
        everywhere = pod_object(
            "p", affinity=affinity("podAntiAffinity", term({"app": "web"}, namespaceSelector={}))
        )
        self.assertEqual(verdicts(everywhere, node), {"a": (ANTI,)})

    def test_namespace_selector_asks_the_namespaces_labels(self) -> None:
        other = labelled("w", {"app": "web"}, node_name="a", metadata={"namespace": "other"})
        node = state(node_object("a"), other)
        pod = pod_object(
            "p",
            affinity=affinity(
                "podAntiAffinity",
                term({"app": "web"}, namespaceSelector={"matchLabels": {"team": "x"}}),
            ),
        )
        facts = PodFacts.of(pod)
        labels = {"other": {"team": "x"}}
        cycle = Cycle(facts, [node], lambda namespace: labels.get(namespace, {}))
        rejected = cycle.filter(node)
        self.assertEqual(rejected.reasons if rejected else (), (ANTI,))
        self.assertIsNone(Cycle(facts, [node]).filter(node))

    def test_match_label_keys_narrow_to_pods_with_the_same_value(self) -> None:
        old = labelled("o", {"app": "web", "pod-template-hash": "1"}, node_name="a")
        node = state(node_object("a"), old)

        def pod(hash_: str) -> dict[str, Any]:
            anti = term({"app": "web"}, matchLabelKeys=["pod-template-hash"])
            return labelled(
                "p",
                {"app": "web", "pod-template-hash": hash_},
                affinity=affinity("podAntiAffinity", anti),
            )

        self.assertEqual(verdicts(pod("1"), node), {"a": (ANTI,)})
        self.assertEqual(verdicts(pod("2"), node), {"a": ()})

    def test_preferred_anti_affinity_pushes_away_and_affinity_pulls(self) -> None:
        web = labelled("w", {"app": "web"}, node_name="a")
        nodes = [
            state(node_object("a"), web),
            state(node_object("b"), pod_object("x", cpu="1", node_name="b")),
        ]
        soft = {"weight": 100, "podAffinityTerm": term({"app": "web"})}
        away = PodFacts.of(
            pod_object("p", affinity=affinity("podAntiAffinity", soft, preferred=True))
        )
        self.assertEqual(select_host(away, nodes).name, "b")
        near = PodFacts.of(
            pod_object("p", cpu="100m", affinity=affinity("podAffinity", soft, preferred=True))
        )
        self.assertEqual(Cycle(near, nodes).affinity_scores(nodes), [100, 0])
        self.assertEqual(select_host(near, nodes).name, "a")

    def test_placed_pods_terms_attract_matching_pods(self) -> None:
        soft = {"weight": 10, "podAffinityTerm": term({"app": "web"})}
        friendly = pod_object(
            "f", node_name="a", affinity=affinity("podAffinity", soft, preferred=True)
        )
        hard = pod_object(
            "h", node_name="b", affinity=affinity("podAffinity", term({"app": "web"}))
        )
        nodes = [
            state(node_object("a"), friendly),
            state(node_object("b"), hard),
            state(node_object("c")),
        ]
        pod = PodFacts.of(labelled("p", {"app": "web"}))
        # Raw 10, 1 (hardPodAffinityWeight) and 0, scaled between lowest and highest.
        self.assertEqual(Cycle(pod, nodes).affinity_scores(nodes), [100, 10, 0])
        self.assertEqual(
            Cycle(PodFacts.of(pod_object("p")), nodes).affinity_scores(nodes), [0, 0, 0]
        )


class TopologySpreadTests(SynchronousTestCase):
    """PodTopologySpread's filter and score for a pod's own constraints."""

    def spread(self, **constraint: Any) -> dict[str, Any]:
        return labelled(
            "p",
            {"app": "web"},
            topologySpreadConstraints=[
                {
                    "maxSkew": 1,
                    "topologyKey": ZONE,
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"app": "web"}},
                    **constraint,
                }
            ],
        )

    def web(self, name: str, node: str, **labels: str) -> dict[str, Any]:
        return labelled(name, {"app": "web", **labels}, node_name=node)

    def test_max_skew_keeps_pods_out_of_the_fuller_zone(self) -> None:
        nodes = (
            zoned("a", "z1", self.web("1", "a"), self.web("2", "a")),
            zoned("b", "z2", self.web("3", "b")),
            zoned("c", ""),
        )
        self.assertEqual(
            verdicts(self.spread(), *nodes),
            {"a": (SKEWED,), "b": (), "c": (SKEWED + " (missing required label)",)},
        )
        self.assertEqual(verdicts(self.spread(maxSkew=2), *nodes)["a"], ())

    def test_pods_of_other_namespaces_terminating_or_unselected_do_not_count(self) -> None:
        deleting = self.web("2", "a")
        deleting["metadata"]["deletionTimestamp"] = "2027-01-01T00:00:00Z"
        nodes = (
            zoned(
                "a",
                "z1",
                self.web("1", "a"),
                deleting,
                labelled("3", {"app": "web"}, node_name="a", metadata={"namespace": "other"}),
                labelled("4", {"app": "db"}, node_name="a"),
            ),
            zoned("b", "z2"),
        )
        # Only web-1 counts: 1 + itself - 0 is within a skew of 2.
        self.assertEqual(verdicts(self.spread(maxSkew=2), *nodes), {"a": (), "b": ()})

    def test_fewer_domains_than_min_domains_make_the_global_minimum_zero(self) -> None:
        nodes = (zoned("a", "z1", self.web("1", "a")), zoned("b", "z2", self.web("2", "b")))
        self.assertEqual(verdicts(self.spread(), *nodes), {"a": (), "b": ()})
        self.assertEqual(
            verdicts(self.spread(minDomains=3), *nodes), {"a": (SKEWED,), "b": (SKEWED,)}
        )

    def test_node_affinity_policy_leaves_out_nodes_the_pod_cannot_use(self) -> None:
        nodes = (
            zoned("a", "z1", self.web("1", "a")),
            zoned("b", "z2", labels={"pool": "old"}),
        )
        honored = self.spread()
        honored["spec"]["nodeSelector"] = {ZONE: "z1"}
        self.assertEqual(verdicts(honored, *nodes)["a"], ())
        ignored = self.spread(nodeAffinityPolicy="Ignore")
        ignored["spec"]["nodeSelector"] = {ZONE: "z1"}
        self.assertEqual(verdicts(ignored, *nodes)["a"], (SKEWED,))

    def test_node_taints_policy_honor_leaves_out_tainted_nodes(self) -> None:
        taint = [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
        nodes = (zoned("a", "z1", self.web("1", "a")), zoned("b", "z2", taints=taint))
        self.assertEqual(verdicts(self.spread(), *nodes)["a"], (SKEWED,))
        self.assertEqual(verdicts(self.spread(nodeTaintsPolicy="Honor"), *nodes)["a"], ())

    def test_match_label_keys_count_only_the_same_revision(self) -> None:
        nodes = (
            zoned("a", "z1", self.web("1", "a", rev="old"), self.web("2", "a", rev="old")),
            zoned("b", "z2"),
        )
        pod = self.spread(matchLabelKeys=["rev"])
        pod["metadata"]["labels"]["rev"] = "new"
        self.assertEqual(verdicts(pod, *nodes), {"a": (), "b": ()})
        pod["metadata"]["labels"]["rev"] = "old"
        self.assertEqual(verdicts(pod, *nodes), {"a": (SKEWED,), "b": ()})

    def test_schedule_anyway_scores_the_emptier_zone_higher(self) -> None:
        nodes = [
            zoned("a", "z1", self.web("1", "a"), self.web("2", "a")),
            zoned("b", "z2", self.web("3", "b")),
            zoned("c", "z3", pod_object("x", cpu="2", node_name="c")),
        ]
        pod = PodFacts.of(self.spread(whenUnsatisfiable="ScheduleAnyway"))
        self.assertEqual(verdicts(self.spread(whenUnsatisfiable="ScheduleAnyway"), *nodes)["a"], ())
        # Counts 2, 1, 0 over three zones (weight ln 5): rounded 3, 2, 0, then
        # 100 * (3 + 0 - score) / 3.
        self.assertEqual(Cycle(pod, nodes).spread_scores(nodes), [0, 33, 100])
        self.assertEqual(select_host(pod, nodes).name, "c")


class SchedulerTests(SynchronousTestCase):
    """The loop: binding, Unschedulable status and events, requeues, assumed pods."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.clock = self.server.clock
        self.scheduler = Scheduler(self.server.informers, self.server.store, "server-1")
        self.server.start(self.scheduler)

    def add_node(self, name: str, **options: Any) -> None:
        self.server.create("", "nodes", node_object(name, **options))

    def add_pod(self, name: str, **options: Any) -> None:
        self.server.create("", "pods", pod_object(name, **options), "default")

    def pod(self, name: str) -> dict[str, Any]:
        return self.server.get("", "pods", name, "default")

    def node_of(self, name: str) -> str | None:
        node: str | None = self.pod(name)["spec"].get("nodeName")
        return node

    def events(self, name: str) -> list[tuple[str, str, str, int]]:
        resource = self.server.resource("", "events")
        listed = self.server.run(self.server.store.list(resource, "default"))
        return [
            (e["type"], e["reason"], e["message"], e["count"])
            for e in listed.items
            if e["involvedObject"]["name"] == name
        ]

    def test_binds_a_pending_pod_and_records_scheduled(self) -> None:
        self.add_node("node-1")
        self.add_pod("web")
        pod = self.pod("web")
        self.assertEqual(pod["spec"]["nodeName"], "node-1")
        scheduled = find_condition(pod, "PodScheduled")
        assert scheduled is not None
        self.assertEqual(scheduled["status"], "True")
        self.assertEqual(
            self.events("web"),
            [("Normal", "Scheduled", "Successfully assigned default/web to node-1", 1)],
        )
        event = self.server.run(
            self.server.store.list(self.server.resource("", "events"), "default")
        ).items[0]
        self.assertEqual(event["source"], {"component": "default-scheduler", "host": "server-1"})

    def test_leaves_pods_of_other_schedulers_and_bound_pods_alone(self) -> None:
        self.add_node("node-1")
        self.add_pod("other", schedulerName="my-scheduler")
        self.add_pod("placed", node_name="elsewhere")
        self.assertIsNone(self.node_of("other"))
        self.assertEqual(self.node_of("placed"), "elsewhere")
        self.assertEqual(self.events("other"), [])

    def test_unschedulable_pod_gets_status_and_event_in_kubes_words(self) -> None:
        self.add_node("node-1", cpu="1")
        taint = [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
        self.add_node("node-2", taints=taint)
        self.add_node("node-3", taints=taint)
        self.add_pod("big", cpu="2")
        message = (
            "0/3 nodes are available: 1 Insufficient cpu, "
            "2 node(s) had untolerated taint {dedicated: db}. preemption: "
            "0/3 nodes are available: 1 No preemption victims found for incoming pod, "
            "2 Preemption is not helpful for scheduling."
        )
        condition = find_condition(self.pod("big"), "PodScheduled")
        assert condition is not None
        self.assertEqual(
            (condition["status"], condition["reason"], condition["message"]),
            ("False", "Unschedulable", message),
        )
        self.assertEqual(self.events("big"), [("Warning", "FailedScheduling", message, 1)])

    def test_no_nodes(self) -> None:
        self.add_pod("web")
        self.assertEqual(
            self.events("web"),
            [("Warning", "FailedScheduling", "no nodes available to schedule pods", 1)],
        )

    def test_a_new_node_places_waiting_pods_after_their_back_off(self) -> None:
        self.add_node("node-1", cpu="1")
        self.add_pod("big", cpu="2")
        self.add_node("node-2", cpu="4")
        self.assertIsNone(self.node_of("big"))  # still backing off (1 s after one attempt)
        self.clock.advance(1.0)
        self.assertEqual(self.node_of("big"), "node-2")

    def test_node_change_that_makes_room_requeues(self) -> None:
        self.add_node("node-1", unschedulable=True)
        self.add_pod("web")
        self.clock.advance(5)
        self.assertIsNone(self.node_of("web"))
        node = self.server.get("", "nodes", "node-1")
        node["spec"]["unschedulable"] = False
        resource = self.server.resource("", "nodes")
        self.server.run(self.server.store.update(resource, None, "node-1", node))
        self.clock.advance(1.0)
        self.assertEqual(self.node_of("web"), "node-1")

    def test_deleting_a_pod_frees_room_for_a_waiting_one(self) -> None:
        self.add_node("node-1", cpu="1")
        self.add_pod("first", cpu="800m")
        self.add_pod("second", cpu="800m")
        self.assertEqual(self.node_of("first"), "node-1")
        self.assertIsNone(self.node_of("second"))
        self.server.delete("", "pods", "first", "default")
        self.clock.advance(1.0)
        # Terminating, it holds its requests on the node until its kubelet confirms it gone.
        self.assertIsNone(self.node_of("second"))
        self.server.confirm_pod_deletions()
        self.clock.advance(1.0)
        self.assertEqual(self.node_of("second"), "node-1")

    def test_repeated_failures_back_off_and_count_one_event(self) -> None:
        self.add_node("node-1", cpu="1")
        self.add_pod("big", cpu="2")
        self.clock.advance(300.0)  # retried after the unschedulable timeout
        self.clock.advance(300.0)
        events = self.events("big")
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0][3], 3)

    def test_assumed_pods_are_counted_before_the_informer_sees_them_bound(self) -> None:
        # The pod informer hears nothing more once both pods are cached: the
        # second pod must see the first's requests on node-1 all the same.
        self.scheduler.stopService()
        self.add_node("node-1", cpu="1")
        self.add_node("node-2", cpu="1")
        self.add_pod("a", cpu="600m")
        self.add_pod("b", cpu="600m")
        self.scheduler.pods.stopService()
        self.scheduler.startService()
        self.assertEqual({self.node_of("a"), self.node_of("b")}, {"node-1", "node-2"})

    def test_pending_pods_get_a_turn_when_the_scheduler_starts_again(self) -> None:
        self.scheduler.stopService()
        self.add_node("node-1")
        self.add_pod("web")
        self.assertIsNone(self.node_of("web"))
        self.scheduler.startService()
        self.assertEqual(self.node_of("web"), "node-1")

    def test_spreads_one_owners_pods(self) -> None:
        for name in ("node-1", "node-2", "node-3"):
            self.add_node(name)
        owner = {
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web",
                    "uid": "rs-uid",
                    "controller": True,
                }
            ]
        }
        for index in range(3):
            self.add_pod(f"web-{index}", metadata=owner)
        self.assertEqual(
            sorted(str(self.node_of(f"web-{i}")) for i in range(3)),
            ["node-1", "node-2", "node-3"],
        )

    def test_anti_affine_replicas_one_per_node_and_the_rest_told_why(self) -> None:
        self.add_node("node-1")
        self.add_node("node-2")
        anti = affinity("podAntiAffinity", term({"app": "web"}))
        for index in range(3):
            self.add_pod(f"web-{index}", metadata={"labels": {"app": "web"}}, affinity=anti)
        self.assertEqual({self.node_of("web-0"), self.node_of("web-1")}, {"node-1", "node-2"})
        self.assertIsNone(self.node_of("web-2"))
        message = (
            "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules. "
            "preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
        )
        self.assertEqual(self.events("web-2"), [("Warning", "FailedScheduling", message, 1)])
        self.server.delete("", "pods", "web-0", "default")
        self.clock.advance(1.0)
        self.assertIsNone(self.node_of("web-2"))  # web-0 is Terminating, still there
        self.server.confirm_pod_deletions()
        self.clock.advance(1.0)
        self.assertIsNotNone(self.node_of("web-2"))

    def test_relabelling_a_placed_pod_lets_an_anti_affine_pod_in(self) -> None:
        self.add_node("node-1")
        self.add_pod("old", node_name="node-1", metadata={"labels": {"app": "web"}})
        self.add_pod("new", affinity=affinity("podAntiAffinity", term({"app": "web"})))
        self.assertIsNone(self.node_of("new"))
        old = self.pod("old")
        old["metadata"]["labels"] = {"app": "retired"}
        resource = self.server.resource("", "pods")
        self.server.run(self.server.store.update(resource, "default", "old", old))
        self.clock.advance(1.0)
        self.assertEqual(self.node_of("new"), "node-1")

    def test_a_pod_waiting_for_affinity_is_placed_when_its_peer_is(self) -> None:
        self.add_node("node-1", labels={ZONE: "z1"})
        self.add_node("node-2", labels={ZONE: "z2"})
        self.add_pod("app", affinity=affinity("podAffinity", term({"app": "cache"}, ZONE)))
        self.assertIsNone(self.node_of("app"))
        self.add_pod("cache", metadata={"labels": {"app": "cache"}}, nodeSelector={ZONE: "z2"})
        self.assertEqual(self.node_of("cache"), "node-2")
        self.clock.advance(1.0)
        self.assertEqual(self.node_of("app"), "node-2")

    def test_namespace_selectors_read_the_namespaces_labels(self) -> None:
        self.server.create(
            "", "namespaces", {"metadata": {"name": "team-x", "labels": {"team": "x"}}}
        )
        self.add_node("node-1")
        self.add_node("node-2")
        other = pod_object("db", node_name="node-1", metadata={"labels": {"app": "db"}})
        self.server.create(
            "",
            "pods",
            {**other, "metadata": {**other["metadata"], "namespace": "team-x"}},
            "team-x",
        )
        self.add_pod("busy", cpu="3", node_name="node-2")  # node-1 would score higher
        selector = {"matchLabels": {"team": "x"}}
        anti = affinity("podAntiAffinity", term({"app": "db"}, namespaceSelector=selector))
        self.add_pod("web", affinity=anti)
        self.assertEqual(self.node_of("web"), "node-2")


class RealSchedulerTests(SynchronousTestCase):
    """A real server with its own node and one agent: kubectl sees pods placed, or told why not."""

    def setUp(self) -> None:
        self.cluster = Cluster(
            Path(tempfile.mkdtemp(prefix="k3stw-scheduler-")), host="127.0.0.170"
        ).start()
        self.addCleanup(self.cluster.stop)
        self.cluster.agent("worker", "127.0.0.171").start()
        self.cluster.wait(
            lambda: self.cluster.node_status() == {"server": "True", "worker": "True"},
            "two Ready nodes",
        )

    def test_kubectl_run_places_pods_and_describes_the_impossible_one(self) -> None:
        kubectl = self.cluster.kubectl
        for name in ("web-1", "web-2"):
            ran = kubectl(
                "run",
                name,
                "--image=nginx",
                '--overrides={"spec": {"nodeSelector": {"kubernetes.io/hostname": "worker"}}}',
            )
            self.assertEqual(ran.returncode, 0, ran.stderr)
        ran = kubectl(
            "run",
            "huge",
            "--image=nginx",
            "--overrides",
            '{"spec": {"containers": [{"name": "huge", "image": "nginx",'
            ' "resources": {"requests": {"cpu": "1000"}}}]}}',
        )
        self.assertEqual(ran.returncode, 0, ran.stderr)

        def placed() -> bool:
            wide = kubectl("get", "pods", "-o", "wide").stdout
            rows = {line.split()[0]: line.split() for line in wide.splitlines()[1:]}
            return all(rows.get(name, [""] * 7)[6] == "worker" for name in ("web-1", "web-2"))

        self.cluster.wait(placed, "web-1 and web-2 on worker")
        message = (
            "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: "
            "2 No preemption victims found for incoming pod."
        )

        def described() -> bool:
            return message in kubectl("describe", "pod", "huge").stdout

        self.cluster.wait(described, "FailedScheduling on huge")
        described_pod = kubectl("describe", "pod", "huge").stdout
        self.assertIn("FailedScheduling", described_pod)
        self.assertIn("default-scheduler", described_pod)
        self.assertRegex(kubectl("get", "pod", "huge").stdout, r"huge\s+0/1\s+Pending")
