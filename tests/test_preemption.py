"""
kube-scheduler's DefaultPreemption: the victims a node would give up (the
fewest, of lower priority, sparing PodDisruptionBudgets), the node chosen
among candidates, kube's messages, and the scheduler carrying it out on the
in-memory server (``DisruptionTarget``, ``Preempted`` events, the
nominated node held for the preemptor).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.machinery.objects import find_condition, object_key
from k3stw.scheduler.framework import PodFacts, Rejection, fit_error, run_filters
from k3stw.scheduler.preemption import (
    Candidate,
    pick_candidate,
    preempt,
    select_victims,
    split_by_budgets,
)
from k3stw.scheduler.scheduler import Scheduler
from tests.support.apiserver import MemoryServer
from tests.test_join import Cluster as RealCluster
from tests.test_scheduler import node_object, pod_object, state

CRITICAL = "system-cluster-critical"


def pod(
    name: str, priority: int, cpu: str = "1", started: str | None = None, **spec: Any
) -> dict[str, Any]:
    """A bound pod of C{priority} (as admission would fill it in) on node ``n``."""
    body = pod_object(
        name, cpu=cpu, node_name=spec.pop("node_name", "n"), priority=priority, **spec
    )
    body["metadata"]["uid"] = f"uid-{name}"
    if started is not None:
        body["status"] = {"startTime": started}
    return body


def budget(labels: dict[str, str], allowed: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "pdb", "namespace": "default"},
        "spec": {"selector": {"matchLabels": labels}},
        "status": {"disruptionsAllowed": allowed},
    }


class Cluster:
    """Nodes and their pods as the scheduler's cache holds them, with the pod objects."""

    def __init__(self, *nodes: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
        self.objects = {object_key(p): p for _, pods in nodes for p in pods}
        self.states = {n["metadata"]["name"]: state(n, *pods) for n, pods in nodes}

    def lookup(self, key: str) -> dict[str, Any] | None:
        return self.objects.get(key)

    def victims(
        self, preemptor: dict[str, Any], node: str = "n", budgets: Sequence[dict[str, Any]] = ()
    ) -> Candidate | Rejection:
        return select_victims(
            PodFacts.of(preemptor), self.states[node], self.lookup, budgets, run_filters
        )

    def preempt(self, preemptor: dict[str, Any]) -> tuple[str | None, str]:
        facts = PodFacts.of(preemptor)
        rejections = {}
        for name, node in self.states.items():
            rejected = run_filters(facts, node)
            assert rejected is not None
            rejections[name] = rejected
        verdict = preempt(preemptor, facts, rejections, self.states, self.lookup, [], run_filters)
        found = verdict.candidate
        return (found.node if found else None), fit_error(
            facts, list(rejections.values()), verdict.message
        )


def names(found: Candidate | Rejection) -> list[str]:
    assert isinstance(found, Candidate), found
    return [v["metadata"]["name"] for v in found.victims]


class VictimTests(SynchronousTestCase):
    """What one node would give up."""

    def test_fewest_victims_of_the_lowest_priority(self) -> None:
        cluster = Cluster(
            (node_object("n", cpu="3"), [pod("low", 1), pod("mid", 2), pod("lowest", 0)])
        )
        self.assertEqual(names(cluster.victims(pod("p", 10, node_name=None))), ["lowest"])
        wide = pod("p", 10, cpu="2", node_name=None)
        self.assertEqual(names(cluster.victims(wide)), ["low", "lowest"])

    def test_pods_of_equal_or_higher_priority_are_never_victims(self) -> None:
        cluster = Cluster((node_object("n", cpu="2"), [pod("same", 10), pod("higher", 20)]))
        found = cluster.victims(pod("p", 10, node_name=None))
        self.assertEqual(found, Rejection(("No preemption victims found for incoming pod",), False))

    def test_removing_every_lower_pod_must_be_enough(self) -> None:
        cluster = Cluster((node_object("n", cpu="2"), [pod("low", 0), pod("higher", 20)]))
        found = cluster.victims(pod("p", 10, cpu="2", node_name=None))
        self.assertEqual(found, Rejection(("Insufficient cpu",), True))

    def test_host_port_conflicts_are_resolved_by_preemption(self) -> None:
        port = [{"containerPort": 80, "hostPort": 8080}]
        cluster = Cluster((node_object("n"), [pod("web", 0, ports=port), pod("other", 0)]))
        self.assertEqual(names(cluster.victims(pod("p", 5, ports=port, node_name=None))), ["web"])

    def test_a_budget_spares_its_pods_where_another_pod_will_do(self) -> None:
        older = pod("older", 0, started="2026-01-01T00:00:00Z")
        younger = pod("younger", 0, started="2026-01-02T00:00:00Z", metadata={"labels": {"a": "b"}})
        cluster = Cluster((node_object("n", cpu="2"), [older, younger]))
        preemptor = pod("p", 10, node_name=None)
        # Of equals, the younger goes (the older is given back first)...
        self.assertEqual(names(cluster.victims(preemptor)), ["younger"])
        # ...unless a budget that allows no disruption covers it.
        protected = cluster.victims(preemptor, budgets=[budget({"a": "b"}, 0)])
        self.assertEqual(names(protected), ["older"])
        assert isinstance(protected, Candidate)
        self.assertEqual(protected.budget_violations, 0)

    def test_victims_come_most_important_first_with_violations_counted(self) -> None:
        protected = pod("protected", 0, metadata={"labels": {"a": "b"}})
        cluster = Cluster((node_object("n", cpu="2"), [protected, pod("higher", 5)]))
        found = cluster.victims(
            pod("p", 10, cpu="2", node_name=None), budgets=[budget({"a": "b"}, 0)]
        )
        self.assertEqual(names(found), ["higher", "protected"])
        assert isinstance(found, Candidate)
        self.assertEqual(found.budget_violations, 1)

    def test_budgets_count_violations_when_they_cannot_be_spared(self) -> None:
        labelled = {"labels": {"a": "b"}}
        pods = [pod("x", 0, metadata=labelled), pod("y", 0, metadata=labelled)]
        violating, sparing = split_by_budgets(pods, [budget({"a": "b"}, 1)])
        self.assertEqual([p["metadata"]["name"] for p in violating], ["y"])
        self.assertEqual([p["metadata"]["name"] for p in sparing], ["x"])
        empty = {**budget({}, 0), "spec": {"selector": {}}}
        self.assertEqual(split_by_budgets(pods, [empty]), ([], pods))


class CandidateTests(SynchronousTestCase):
    """kube's order among nodes that could take the pod."""

    def candidate(self, node: str, *victims: dict[str, Any], violations: int = 0) -> Candidate:
        return Candidate(node, victims, violations)

    def test_order_of_preference(self) -> None:
        a = self.candidate("a", pod("a1", 1), violations=1)
        b = self.candidate("b", pod("b1", 5))
        self.assertEqual(pick_candidate([a, b]).node, "b")  # fewer budget violations
        c = self.candidate("c", pod("c1", 3))
        self.assertEqual(pick_candidate([b, c]).node, "c")  # lower highest priority
        d = self.candidate("d", pod("d1", 3), pod("d2", 1))
        e = self.candidate("e", pod("e1", 3), pod("e2", 0), pod("e3", 0))
        self.assertEqual(pick_candidate([c, d]).node, "c")  # smaller sum of priorities
        self.assertEqual(pick_candidate([d, e]).node, "d")  # sums shift by 2**31 a victim
        early = self.candidate("f", pod("f1", 3, started="2026-01-01T00:00:00Z"))
        late = self.candidate("g", pod("g1", 3, started="2026-02-01T00:00:00Z"))
        self.assertEqual(pick_candidate([early, late]).node, "g")  # latest start


class MessageTests(SynchronousTestCase):
    """The FailedScheduling message's preemption tail, in kube's words."""

    def test_taints_are_not_helped_and_a_candidate_ends_the_message(self) -> None:
        taint = [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
        cluster = Cluster(
            (node_object("a", cpu="1"), [pod("low", 0, node_name="a")]),
            (node_object("b", cpu="1", taints=taint), []),
        )
        self.assertEqual(
            cluster.preempt(pod("p", 10, node_name=None)),
            (
                "a",
                "0/2 nodes are available: 1 Insufficient cpu, "
                "1 node(s) had untolerated taint {dedicated: db}.",
            ),
        )
        self.assertEqual(
            cluster.preempt(pod("p", 0, node_name=None)),
            (
                None,
                "0/2 nodes are available: 1 Insufficient cpu, "
                "1 node(s) had untolerated taint {dedicated: db}. preemption: "
                "0/2 nodes are available: 1 No preemption victims found for incoming pod, "
                "1 Preemption is not helpful for scheduling.",
            ),
        )

    def test_preemption_policy_never(self) -> None:
        cluster = Cluster((node_object("n", cpu="1"), [pod("low", 0)]))
        never = pod("p", 10, node_name=None, preemptionPolicy="Never")
        self.assertEqual(
            cluster.preempt(never),
            (
                None,
                "0/1 nodes are available: 1 Insufficient cpu. "
                "preemption: not eligible due to preemptionPolicy=Never.",
            ),
        )

    def test_only_victims_still_terminating_by_preemption_hold_the_pod_back(self) -> None:
        going = pod("going", 0, metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"})
        cluster = Cluster((node_object("n", cpu="1"), [going]))
        nominated = pod("p", 10, node_name=None)
        nominated["status"] = {"nominatedNodeName": "n"}
        self.assertEqual(cluster.preempt(nominated)[0], "n")  # deleted for another reason
        going["status"] = {
            "conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
            ]
        }
        self.assertEqual(
            cluster.preempt(nominated),
            (
                None,
                "0/1 nodes are available: 1 Insufficient cpu. preemption: "
                "not eligible due to a terminating pod on the nominated node.",
            ),
        )


class PreemptingSchedulerTests(SynchronousTestCase):
    """The scheduler preempts on the in-memory server."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.clock = self.server.clock
        self.scheduler = Scheduler(
            self.server.informers, self.server.store, "server-1", self.server.registry
        )
        self.server.start(self.scheduler)
        self.server.create("", "nodes", node_object("node-1", cpu="2"))

    def add_pod(self, name: str, cpu: str, critical: bool = False, **spec: Any) -> None:
        if critical:
            spec["priorityClassName"] = CRITICAL
        self.server.create("", "pods", pod_object(name, cpu=cpu, **spec), "default")

    def pod(self, name: str) -> dict[str, Any]:
        return self.server.get("", "pods", name, "default")

    def events(self, name: str) -> list[tuple[str, str, str]]:
        listed = self.server.run(
            self.server.store.list(self.server.resource("", "events"), "default")
        )
        return [
            (e["type"], e["reason"], e["message"])
            for e in listed.items
            if e["involvedObject"]["name"] == name
        ]

    def test_a_critical_pod_preempts_a_lower_one_and_takes_its_place(self) -> None:
        self.add_pod("low", "1500m")
        self.add_pod("small", "500m")
        self.assertEqual(self.pod("low")["spec"]["nodeName"], "node-1")
        self.add_pod("critical", "1", critical=True)
        critical = self.pod("critical")
        self.assertEqual(critical["status"]["nominatedNodeName"], "node-1")
        self.assertEqual(
            self.events("critical"),
            [("Warning", "FailedScheduling", "0/1 nodes are available: 1 Insufficient cpu.")],
        )
        self.assertEqual(
            self.events("low"),
            [
                ("Normal", "Scheduled", "Successfully assigned default/low to node-1"),
                (
                    "Normal",
                    "Preempted",
                    f"Preempted by pod {critical['metadata']['uid']} on node node-1",
                ),
            ],
        )
        # The victim is Terminating; its kubelet confirms it gone.
        self.assertIsNotNone(self.pod("low")["metadata"].get("deletionTimestamp"))
        self.server.confirm_pod_deletions()
        self.assertFalse(self.server.exists("", "pods", "low", "default"))
        self.assertTrue(self.server.exists("", "pods", "small", "default"))
        self.clock.advance(1.0)
        self.assertEqual(self.pod("critical")["spec"]["nodeName"], "node-1")

    def test_a_pod_preempts_the_lower_pod_its_anti_affinity_keeps_it_from(self) -> None:
        self.add_pod("web", "100m", metadata={"labels": {"app": "web"}})
        term = {
            "labelSelector": {"matchLabels": {"app": "web"}},
            "topologyKey": "kubernetes.io/hostname",
        }
        affinity = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
        self.add_pod("critical", "100m", critical=True, affinity=affinity)
        self.assertEqual(
            self.events("critical"),
            [
                (
                    "Warning",
                    "FailedScheduling",
                    "0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules.",
                )
            ],
        )
        # The victim is Terminating; its kubelet confirms it gone.
        self.assertIsNotNone(self.pod("web")["metadata"].get("deletionTimestamp"))
        self.server.confirm_pod_deletions()
        self.assertFalse(self.server.exists("", "pods", "web", "default"))
        self.clock.advance(1.0)
        self.assertEqual(self.pod("critical")["spec"]["nodeName"], "node-1")

    def test_a_terminating_victim_is_marked_and_waited_for(self) -> None:
        self.add_pod("low", "2", metadata={"finalizers": ["example.com/hold"]})
        self.add_pod("critical", "1", critical=True)
        low = self.pod("low")
        self.assertIsNotNone(low["metadata"].get("deletionTimestamp"))
        condition = find_condition(low, "DisruptionTarget")
        assert condition is not None
        self.assertEqual(
            (condition["status"], condition["reason"], condition["message"]),
            (
                "True",
                "PreemptionByScheduler",
                "default-scheduler: preempting to accommodate a higher priority pod",
            ),
        )
        self.clock.advance(1.0)  # tried again: the victim is still going
        scheduled = find_condition(self.pod("critical"), "PodScheduled")
        assert scheduled is not None
        self.assertEqual(
            scheduled["message"],
            "0/1 nodes are available: 1 Insufficient cpu. preemption: "
            "not eligible due to a terminating pod on the nominated node.",
        )
        self.assertEqual(len([e for e in self.events("low") if e[1] == "Preempted"]), 1)
        # Meanwhile a lower-priority pod may not take the room held for the preemptor.
        low["metadata"]["finalizers"] = []
        pods = self.server.resource("", "pods")
        self.server.run(self.server.store.update(pods, "default", "low", low))
        self.server.confirm_pod_deletions()
        self.add_pod("sneak", "1500m")
        self.assertIsNone(self.pod("sneak")["spec"].get("nodeName"))
        self.clock.advance(2.0)
        self.assertEqual(self.pod("critical")["spec"]["nodeName"], "node-1")
        self.assertIsNone(self.pod("sneak")["spec"].get("nodeName"))

    def test_pods_of_equal_priority_are_left_alone(self) -> None:
        self.add_pod("first", "2", critical=True)
        self.add_pod("second", "1", critical=True)
        self.assertEqual(self.pod("first")["spec"]["nodeName"], "node-1")
        self.assertNotIn("nominatedNodeName", self.pod("second")["status"])
        self.assertEqual(
            self.events("second"),
            [
                (
                    "Warning",
                    "FailedScheduling",
                    "0/1 nodes are available: 1 Insufficient cpu. preemption: "
                    "0/1 nodes are available: 1 No preemption victims found for incoming pod.",
                )
            ],
        )

    def test_a_budget_steers_preemption_to_the_unprotected_node(self) -> None:
        self.server.create("", "nodes", node_object("node-2", cpu="2"))
        labels = {"labels": {"app": "db"}}
        self.add_pod("db", "2", metadata=labels, nodeSelector={"kubernetes.io/hostname": "node-1"})
        self.add_pod("web", "2", nodeSelector={"kubernetes.io/hostname": "node-2"})
        pdb = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "maxUnavailable": 0},
        }
        self.server.create("policy", "poddisruptionbudgets", pdb, "default")
        self.add_pod("critical", "1", critical=True)
        self.assertEqual(self.pod("critical")["status"]["nominatedNodeName"], "node-2")
        self.assertTrue(self.server.exists("", "pods", "db", "default"))
        # The victim is Terminating; its kubelet confirms it gone.
        self.assertIsNotNone(self.pod("web")["metadata"].get("deletionTimestamp"))
        self.server.confirm_pod_deletions()
        self.assertFalse(self.server.exists("", "pods", "web", "default"))


class PriorityAdmissionTests(SynchronousTestCase):
    """kube-apiserver's Priority plugin: a pod's priority comes from its PriorityClass."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.pods = self.server.resource("", "pods")

    def add_class(self, name: str, value: int, **more: Any) -> None:
        body = {"metadata": {"name": name}, "value": value, **more}
        self.server.create("scheduling.k8s.io", "priorityclasses", body)

    def create(self, name: str, **spec: Any) -> dict[str, Any]:
        created = self.server.create("", "pods", pod_object(name, **spec), "default")
        stored: dict[str, Any] = created["spec"]
        return stored

    def refused(self, name: str, **spec: Any) -> str:
        error = self.server.fails(
            self.server.store.create(self.pods, "default", pod_object(name, **spec))
        )
        self.assertEqual(error.code, 403)
        return error.message

    def test_the_class_gives_priority_and_policy(self) -> None:
        self.add_class("batch", 1000, preemptionPolicy="Never")
        spec = self.create("p", priorityClassName="batch")
        self.assertEqual((spec["priority"], spec["preemptionPolicy"]), (1000, "Never"))
        spec = self.create("q", priorityClassName="system-cluster-critical")
        self.assertEqual(spec["priority"], 2000000000)
        spec = self.create("r")
        self.assertEqual((spec["priority"], spec["preemptionPolicy"]), (0, "PreemptLowerPriority"))

    def test_a_global_default_class_applies_to_pods_naming_none(self) -> None:
        self.add_class("usual", 50, globalDefault=True)
        spec = self.create("p")
        self.assertEqual((spec["priorityClassName"], spec["priority"]), ("usual", 50))

    def test_system_names_are_reserved(self) -> None:
        classes = self.server.resource("scheduling.k8s.io", "priorityclasses")
        reserved = "priority class names with 'system-' prefix are reserved for system use only"
        for body, error in (
            ({"metadata": {"name": "system-mine"}, "value": 5}, "system-mine is not a known"),
            (
                {"metadata": {"name": "system-node-critical"}, "value": 5},
                "value of system-node-critical PriorityClass must be 2000001000",
            ),
        ):
            refused = self.server.fails(self.server.store.create(classes, None, body))
            self.assertEqual(refused.code, 422)
            self.assertIn(f"metadata.name: Forbidden: {reserved}. error: {error}", refused.message)

    def test_refusals_in_kubes_words(self) -> None:
        self.assertEqual(
            self.refused("p", priorityClassName="nope"),
            'pods "p" is forbidden: no PriorityClass with name nope was found',
        )
        self.assertEqual(
            self.refused("p", priority=7),
            'pods "p" is forbidden: the integer value of priority (7) must not be provided in '
            "pod spec; priority admission controller computed 0 from the given PriorityClass "
            "name",
        )
        self.assertEqual(
            self.refused("p", preemptionPolicy="Never"),
            'pods "p" is forbidden: the string value of PreemptionPolicy (Never) must not be '
            "provided in pod spec; priority admission controller computed PreemptLowerPriority "
            "from the given PriorityClass name",
        )
        self.assertFalse(self.server.exists("", "pods", "p", "default"))


class RealPreemptionTests(SynchronousTestCase):
    """A real server and kubectl: a high-priority pod takes a low pod's host port."""

    def setUp(self) -> None:
        self.cluster = RealCluster(
            Path(tempfile.mkdtemp(prefix="k3stw-preemption-")), host="127.0.0.174"
        ).start()
        self.addCleanup(self.cluster.stop)
        self.cluster.wait(lambda: self.cluster.node_status() == {"server": "True"}, "Ready")

    def run_pod(self, name: str, **spec: Any) -> None:
        container = {
            "name": name,
            "image": "nginx",
            "ports": [{"containerPort": 80, "hostPort": 8080}],
        }
        overrides = json.dumps({"spec": {"containers": [container], **spec}})
        ran = self.cluster.kubectl("run", name, "--image=nginx", "--overrides", overrides)
        self.assertEqual(ran.returncode, 0, ran.stderr)

    def test_a_high_priority_pod_preempts_the_pod_holding_its_host_port(self) -> None:
        kubectl = self.cluster.kubectl
        created = kubectl("create", "priorityclass", "high", "--value=1000")
        self.assertEqual(created.returncode, 0, created.stderr)
        listed = kubectl("get", "priorityclasses").stdout
        self.assertRegex(listed, r"system-node-critical\s+2000001000\s+false")

        def node_of(name: str) -> str:
            return kubectl("get", "pod", name, "-o", "jsonpath={.spec.nodeName}").stdout

        self.run_pod("low")
        self.cluster.wait(lambda: node_of("low") == "server", "low on server")
        self.run_pod("critical", priorityClassName="high")
        self.cluster.wait(lambda: node_of("critical") == "server", "critical on server")
        gone = kubectl("get", "pod", "low")
        self.assertIn('pods "low" not found', gone.stderr)
        uid = kubectl("get", "pod", "critical", "-o", "jsonpath={.metadata.uid}").stdout
        events = kubectl("get", "events", "--field-selector", "involvedObject.name=low").stdout
        self.assertIn(f"Preempted by pod {uid} on node server", events)
        described = kubectl("describe", "pod", "critical").stdout
        self.assertIn("didn't have free ports for the requested pod ports", described)
