"""
The scheduler and kube-controller-manager's controllers in a real cluster of
three nodes (a ``k3s-server`` with its own node and two ``k3s-agent``
processes on their own loopback addresses), driven with the real kubectl.
No kubelet runs pods yet: where a controller waits on readiness, the test
plays kubelet and marks pods Running and Ready through the status
subresource.

The cluster is shared by the class: each test undoes its taints, cordons and
labels and waits at cleanup until its pods are gone, as placements count every
pod on a node.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any, ClassVar

from twisted.trial.unittest import SynchronousTestCase

from tests.test_join import Cluster

SERVER_HOST = "127.0.0.141"
AGENTS = {"agent-1": "127.0.0.142", "agent-2": "127.0.0.143"}
NODES = {"server", *AGENTS}


def pod_manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    container = {"name": "c", "image": "busybox"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [container], **spec},
    }


class ControlPlaneClusterTests(SynchronousTestCase):
    cluster: ClassVar[Cluster]

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = Cluster.with_agents("k3stw-controlplane-", SERVER_HOST, AGENTS)

    def tearDown(self) -> None:
        self.assertNotIn("Traceback", self.cluster.server.output)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.stop()

    def kubectl(self, *args: str) -> str:
        """kubectl's stdout, failing the test on a non-zero exit."""
        done = self.cluster.kubectl(*args)
        self.assertEqual(done.returncode, 0, f"kubectl {' '.join(args)}:\n{done.stderr}")
        return done.stdout

    def remove(self, kind: str, name: str, selector: str | None = None) -> None:
        """At cleanup, delete the object and wait until the C{selector}'s pods are gone."""

        def removed() -> None:
            self.cluster.kubectl("delete", kind, name, "--wait=false")
            pods = selector or f"app={name}"
            self.cluster.wait(lambda: not self.items("pods", pods), f"{kind} {name}'s pods gone")

        self.addCleanup(removed)

    def apply(self, obj: dict[str, Any]) -> None:
        path = self.cluster.root / f"{obj['metadata']['name']}.json"
        path.write_text(json.dumps(obj))
        self.kubectl("apply", "-f", str(path))

    def items(self, kind: str, selector: str) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = json.loads(
            self.kubectl("get", kind, "-l", selector, "-o", "json")
        )["items"]
        return listed

    def placement(self, selector: str) -> Counter[str]:
        """How many of the selected pods each node holds (``""`` for unbound pods)."""
        return Counter(p["spec"].get("nodeName", "") for p in self.items("pods", selector))

    def wait_placed(self, selector: str, count: int) -> Counter[str]:
        """Wait until exactly C{count} pods are selected, all bound; their placement."""

        def placed() -> bool:
            where = self.placement(selector)
            return where.total() == count and "" not in where

        self.cluster.wait(placed, f"{count} bound pods with {selector}")
        return self.placement(selector)

    def mark_ready(self, selector: str) -> None:
        """Play kubelet: every selected pod not Ready yet turns Running and Ready."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ready = {"type": "Ready", "status": "True", "lastTransitionTime": now}
        status = json.dumps({"status": {"phase": "Running", "conditions": [ready]}})
        waiting = [
            pod["metadata"]["name"]
            for pod in self.items("pods", selector)
            if not any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions") or []
            )
        ]
        if waiting:
            # One kubectl for all; a pod the controller deletes meanwhile is no failure.
            self.cluster.kubectl(
                "patch", "pod", *waiting, "--subresource=status", "--type=merge", "-p", status
            )

    def rolled_out(self, name: str) -> bool:
        """Whether ``kubectl rollout status`` says done (marking the pods it waits on first)."""
        self.mark_ready(f"app={name}")
        status = self.cluster.kubectl("rollout", "status", f"deployment/{name}", "--watch=false")
        return status.stdout.startswith(f'deployment "{name}" successfully rolled out')

    def replica_counts(self, selector: str) -> dict[str, int]:
        """Each selected ReplicaSet's ``spec.replicas``, by name."""
        return {
            rs["metadata"]["name"]: rs["spec"]["replicas"]
            for rs in self.items("replicasets", selector)
        }

    def images(self, selector: str) -> set[str]:
        return {p["spec"]["containers"][0]["image"] for p in self.items("pods", selector)}

    def revisions(self, name: str) -> list[str]:
        """The REVISION column of ``kubectl rollout history``."""
        history = self.kubectl("rollout", "history", f"deployment/{name}")
        return [line.split()[0] for line in history.splitlines()[2:] if line.strip()]

    def test_a_deployment_spread_scaled_rolled_back_and_collected(self) -> None:
        """
        Six replicas land two on each node; scaling down and up, a rolling
        update with history and undo, and the ReplicaSets and pods of the
        deleted Deployment collected.
        """
        self.kubectl("create", "deployment", "web", "--image=busybox", "--replicas=6")
        self.assertEqual(self.wait_placed("app=web", 6), dict.fromkeys(NODES, 2))

        [replicaset] = self.items("replicasets", "app=web")
        first = replicaset["metadata"]["name"]
        self.assertEqual(first, f"web-{replicaset['metadata']['labels']['pod-template-hash']}")

        self.kubectl("scale", "deployment", "web", "--replicas=2")
        self.wait_placed("app=web", 2)
        self.kubectl("scale", "deployment", "web", "--replicas=6")
        self.assertEqual(set(self.wait_placed("app=web", 6)), NODES)
        scaled = [
            e["message"]
            for e in self.events("Deployment", "web")
            if e["reason"] == "ScalingReplicaSet"
        ]
        self.assertEqual(
            scaled,
            [
                f"Scaled up replica set {first} from 0 to 6",
                f"Scaled down replica set {first} from 6 to 2",
                f"Scaled up replica set {first} from 2 to 6",
            ],
        )
        self.cluster.wait(lambda: self.rolled_out("web"), "web's first rollout")

        self.kubectl("set", "image", "deployment/web", "busybox=busybox:1.36")

        def surged() -> bool:
            """
            25% of 6: at most 8 pods, at least 5 available. With the new pods
            never Ready, the old ReplicaSet gives up one and the new grows to 3.
            """
            counts = self.replica_counts("app=web")
            return counts.pop(first, None) == 5 and list(counts.values()) == [3]

        self.cluster.wait(surged, "the old ReplicaSet at 5 and the new at 3")
        self.assertEqual(self.wait_placed("app=web", 8).total(), 8)
        self.cluster.wait(lambda: self.rolled_out("web"), "web's rolling update")
        self.cluster.wait(lambda: len(self.items("pods", "app=web")) == 6, "the old pods gone")
        self.assertEqual(self.images("app=web"), {"busybox:1.36"})
        self.assertEqual(self.revisions("web"), ["1", "2"])

        # undo copies revision 1's template back: its ReplicaSet becomes revision 3.
        self.kubectl("rollout", "undo", "deployment/web")
        self.cluster.wait(lambda: self.rolled_out("web"), "web's rollback")
        self.cluster.wait(lambda: self.images("app=web") == {"busybox"}, "revision 1's image")
        self.assertEqual(self.revisions("web"), ["2", "3"])
        self.assertEqual(len(self.items("replicasets", "app=web")), 2)

        self.kubectl("delete", "deployment", "web")
        self.cluster.wait(
            lambda: not self.items("replicasets", "app=web") and not self.items("pods", "app=web"),
            "web's ReplicaSets and pods collected",
        )

    def test_a_paused_deployment_rolls_out_on_resume_and_restart(self) -> None:
        """A paused Deployment makes no ReplicaSet for a new template until resumed."""
        self.kubectl("create", "deployment", "paused", "--image=busybox")
        self.remove("deployment", "paused")
        self.cluster.wait(lambda: self.rolled_out("paused"), "paused's first rollout")
        self.kubectl("rollout", "pause", "deployment/paused")
        self.kubectl("set", "image", "deployment/paused", "busybox=busybox:1.36")

        def progressing() -> tuple[str, str]:
            got = json.loads(self.kubectl("get", "deployment", "paused", "-o", "json"))
            conditions = got.get("status", {}).get("conditions") or []
            found: dict[str, str] = next((c for c in conditions if c["type"] == "Progressing"), {})
            return found.get("reason", ""), found.get("message", "")

        self.cluster.wait(lambda: progressing()[0] == "DeploymentPaused", "DeploymentPaused")
        self.assertEqual(progressing(), ("DeploymentPaused", "Deployment is paused"))
        self.assertEqual(len(self.replica_counts("app=paused")), 1)
        self.assertEqual(self.images("app=paused"), {"busybox"})

        self.kubectl("rollout", "resume", "deployment/paused")
        self.cluster.wait(lambda: self.rolled_out("paused"), "the resumed rollout")
        self.cluster.wait(lambda: self.images("app=paused") == {"busybox:1.36"}, "the new image")
        self.assertEqual(self.revisions("paused"), ["1", "2"])

        self.kubectl("rollout", "restart", "deployment/paused")
        self.cluster.wait(lambda: len(self.replica_counts("app=paused")) == 3, "a third ReplicaSet")
        self.cluster.wait(lambda: self.rolled_out("paused"), "the restart")
        self.assertEqual(self.revisions("paused"), ["1", "2", "3"])
        [pod] = self.items("pods", "app=paused")
        self.assertIn("kubectl.kubernetes.io/restartedAt", pod["metadata"]["annotations"])

    def events(self, kind: str, name: str) -> list[dict[str, Any]]:
        """The Events about one object, oldest first."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        listed: list[dict[str, Any]] = json.loads(
            self.kubectl("get", "events", "--field-selector", selector, "-o", "json")
        )["items"]
        return sorted(listed, key=lambda e: e.get("lastTimestamp") or e["eventTime"])

    def workload(
        self, kind: str, name: str, container: dict[str, Any] | None = None, **spec: Any
    ) -> None:
        """
        Apply a C{kind} of apps/v1 with C{spec}'s fields, whose pods (labelled
        ``app=<name>``) run one busybox container with C{container}'s fields;
        removed at cleanup.
        """
        template = {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": "busybox", **(container or {})}]},
        }
        spec.update(selector={"matchLabels": {"app": name}}, template=template)
        metadata = {"name": name, "namespace": "default"}
        self.apply({"apiVersion": "apps/v1", "kind": kind, "metadata": metadata, "spec": spec})
        self.remove(kind.lower(), name)

    def test_a_daemonset_pod_on_every_node_rolled_one_at_a_time(self) -> None:
        """
        A DaemonSet's pods, one bound to each of the three nodes; a new image
        replaces them one node at a time (maxUnavailable 1), until ``kubectl
        rollout status`` says done.
        """
        self.workload("DaemonSet", "probe")
        self.assertEqual(self.wait_placed("app=probe", 3), dict.fromkeys(NODES, 1))
        created = [
            e for e in self.events("DaemonSet", "probe") if e["reason"] == "SuccessfulCreate"
        ]
        self.assertEqual(len(created), 3, created)

        def rolled_out() -> bool:
            self.mark_ready("app=probe")
            status = self.cluster.kubectl("rollout", "status", "daemonset/probe", "--watch=false")
            return status.stdout.startswith('daemon set "probe" successfully rolled out')

        self.cluster.wait(rolled_out, "probe's pods available")
        self.kubectl("set", "image", "daemonset/probe", "c=busybox:1.36")

        def images() -> list[str]:
            return sorted(
                p["spec"]["containers"][0]["image"] for p in self.items("pods", "app=probe")
            )

        # With the replacement never Ready, only one node's pod is replaced.
        self.cluster.wait(
            lambda: images() == ["busybox", "busybox", "busybox:1.36"], "one pod replaced"
        )
        self.cluster.wait(rolled_out, "probe's rolling update")
        self.assertEqual(images(), ["busybox:1.36"] * 3)
        self.assertEqual(self.wait_placed("app=probe", 3), dict.fromkeys(NODES, 1))

    def test_deletion_cascades_orphan_and_foreground(self) -> None:
        """
        ``--cascade=orphan`` leaves the ReplicaSet and pods, with no owner;
        ``--cascade=foreground`` removes them before the ReplicaSet itself.
        """
        self.kubectl("create", "deployment", "cascade", "--image=busybox", "--replicas=2")
        self.remove("replicaset", "--selector=app=cascade", "app=cascade")
        self.wait_placed("app=cascade", 2)
        [replicaset] = self.items("replicasets", "app=cascade")
        self.kubectl("delete", "deployment", "cascade", "--cascade=orphan")
        self.cluster.wait(
            lambda: (
                [
                    rs["metadata"].get("ownerReferences")
                    for rs in self.items("replicasets", "app=cascade")
                ]
                == [None]
            ),
            "the ReplicaSet orphaned",
        )
        self.assertEqual(self.wait_placed("app=cascade", 2).total(), 2)
        # kubectl returns once the ReplicaSet is gone, which foreground deletion allows only
        # after its pods are.
        name = replicaset["metadata"]["name"]
        self.kubectl("delete", "replicaset", name, "--cascade=foreground", "--timeout=30s")
        self.assertEqual(self.items("pods", "app=cascade"), [])

    def test_a_replicaset_adopts_a_matching_pod(self) -> None:
        """A bare pod matching a new ReplicaSet's selector is adopted: one pod fewer is made."""
        self.apply(pod_manifest("adopted", {}))
        self.workload("ReplicaSet", "adopted", replicas=2)
        self.wait_placed("app=adopted", 2)
        owners = {
            p["metadata"]["name"]: [o["kind"] for o in p["metadata"].get("ownerReferences", [])]
            for p in self.items("pods", "app=adopted")
        }
        self.assertEqual(owners.pop("adopted"), ["ReplicaSet"])
        self.assertEqual(list(owners.values()), [["ReplicaSet"]])

    def test_taints_and_node_selectors_honoured(self) -> None:
        """
        A Deployment's pods avoid a node tainted NoSchedule; a pod selecting
        agent-2 by hostname lands there, and one selecting the tainted node
        is refused with both reasons counted.
        """
        self.kubectl("taint", "node", "agent-1", "dedicated=db:NoSchedule")
        self.addCleanup(
            self.cluster.kubectl, "taint", "node", "agent-1", "dedicated=db:NoSchedule-"
        )
        self.kubectl("create", "deployment", "avoid", "--image=busybox", "--replicas=4")
        self.remove("deployment", "avoid")
        self.assertEqual(self.wait_placed("app=avoid", 4), {"server": 2, "agent-2": 2})
        # A DaemonSet that does not tolerate the taint skips the node until it is lifted.
        self.workload("DaemonSet", "tolerant")
        self.assertEqual(self.wait_placed("app=tolerant", 2), {"server": 1, "agent-2": 1})

        pinned = pod_manifest("pinned", {"nodeSelector": {"kubernetes.io/hostname": "agent-2"}})
        self.apply(pinned)
        self.remove("pod", "pinned")
        self.assertEqual(self.wait_placed("app=pinned", 1), {"agent-2": 1})
        scheduled = [
            e["message"] for e in self.events("Pod", "pinned") if e["reason"] == "Scheduled"
        ]
        self.assertEqual(scheduled, ["Successfully assigned default/pinned to agent-2"])

        barred = pod_manifest("barred", {"nodeSelector": {"kubernetes.io/hostname": "agent-1"}})
        self.apply(barred)
        self.remove("pod", "barred")
        condition = self.wait_unschedulable("barred")
        self.assertEqual(
            condition["message"],
            "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, "
            "2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes "
            "are available: 3 Preemption is not helpful for scheduling.",
        )

        self.kubectl("taint", "node", "agent-1", "dedicated=db:NoSchedule-")
        self.assertEqual(self.wait_placed("app=barred", 1), {"agent-1": 1})
        self.assertEqual(self.wait_placed("app=tolerant", 3), dict.fromkeys(NODES, 1))

    def test_cordoned_node_takes_no_new_pods(self) -> None:
        """A cordoned node takes no new replicas; uncordoned, it takes them again."""
        self.kubectl("cordon", "agent-2")
        self.addCleanup(self.cluster.kubectl, "uncordon", "agent-2")
        self.kubectl("create", "deployment", "cordoned", "--image=busybox", "--replicas=4")
        self.remove("deployment", "cordoned")
        self.assertEqual(self.wait_placed("app=cordoned", 4), {"server": 2, "agent-1": 2})
        self.kubectl("uncordon", "agent-2")
        self.kubectl("scale", "deployment", "cordoned", "--replicas=6")
        self.assertEqual(self.wait_placed("app=cordoned", 6), dict.fromkeys(NODES, 2))

    def test_host_ports_one_pod_per_node(self) -> None:
        """
        Replicas asking for one host port fit one to a node; the fourth is
        refused, and is the one removed when scaled down to three.
        """
        port = {"containerPort": 80, "hostPort": 8080}
        self.workload("Deployment", "ported", {"ports": [port]}, replicas=4)
        self.cluster.wait(
            lambda: self.placement("app=ported") == {**dict.fromkeys(NODES, 1), "": 1},
            "three ported pods bound and one pending",
        )
        [pending] = [p for p in self.items("pods", "app=ported") if "nodeName" not in p["spec"]]
        self.assertEqual(
            self.wait_unschedulable(pending["metadata"]["name"])["message"],
            "0/3 nodes are available: 3 node(s) didn't have free ports for the requested pod "
            "ports. preemption: 0/3 nodes are available: 3 No preemption victims found for "
            "incoming pod.",
        )
        self.kubectl("scale", "deployment", "ported", "--replicas=3")
        self.assertEqual(self.wait_placed("app=ported", 3), dict.fromkeys(NODES, 1))

    def wait_unschedulable(self, name: str) -> dict[str, Any]:
        """The pod's PodScheduled condition once the scheduler has refused it."""

        def scheduled() -> dict[str, Any]:
            pod = json.loads(self.kubectl("get", "pod", name, "-o", "json"))
            conditions = pod.get("status", {}).get("conditions") or []
            return next((c for c in conditions if c["type"] == "PodScheduled"), {})

        self.cluster.wait(scheduled, f"{name}'s PodScheduled condition")
        condition = scheduled()
        self.assertEqual((condition["status"], condition["reason"]), ("False", "Unschedulable"))
        return condition

    def test_an_unschedulable_pod_explained(self) -> None:
        """A pod asking for 1000 CPUs stays Pending: its condition, event and describe say why."""
        resources = {"requests": {"cpu": "1000"}}
        hungry = pod_manifest("hungry", {})
        hungry["spec"]["containers"][0]["resources"] = resources
        self.apply(hungry)
        self.remove("pod", "hungry")
        message = (
            "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are "
            "available: 3 No preemption victims found for incoming pod."
        )
        self.assertEqual(self.wait_unschedulable("hungry")["message"], message)
        self.assertEqual(self.placement("app=hungry"), {"": 1})

        events = json.loads(
            self.kubectl(
                "get", "events", "--field-selector", "involvedObject.name=hungry", "-o", "json"
            )
        )["items"]
        failed = [e for e in events if e["reason"] == "FailedScheduling"]
        self.assertTrue(failed, events)
        self.assertEqual(failed[0]["message"], message)
        self.assertEqual(failed[0]["type"], "Warning")
        described = self.kubectl("describe", "pod", "hungry")
        self.assertIn("FailedScheduling", described)
        self.assertIn("0/3 nodes are available: 3 Insufficient cpu.", described)

    def test_an_unschedulable_pod_is_bound_once_a_node_fits(self) -> None:
        """A pod selecting a label no node has is retried, and bound, once a node gets it."""
        self.apply(pod_manifest("waiting", {"nodeSelector": {"disk": "ssd"}}))
        self.remove("pod", "waiting")
        self.assertEqual(
            self.wait_unschedulable("waiting")["message"],
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. "
            "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.",
        )
        self.kubectl("label", "node", "agent-1", "disk=ssd")
        self.addCleanup(self.cluster.kubectl, "label", "node", "agent-1", "disk-")
        self.assertEqual(self.wait_placed("app=waiting", 1), {"agent-1": 1})

    def test_jobs_and_cronjobs_make_pods(self) -> None:
        """A Job's pod, and a Job made from a CronJob's template, each get a bound pod."""
        self.kubectl("create", "job", "once", "--image=busybox", "--", "true")
        self.remove("job", "once", "batch.kubernetes.io/job-name=once")
        [node] = self.wait_placed("batch.kubernetes.io/job-name=once", 1)
        self.assertIn(node, NODES)

        self.kubectl("create", "cronjob", "tick", "--image=busybox", "--schedule=* * * * *")
        self.remove("cronjob", "tick", "batch.kubernetes.io/job-name=tick-now")
        self.kubectl("create", "job", "tick-now", "--from=cronjob/tick")
        [node] = self.wait_placed("batch.kubernetes.io/job-name=tick-now", 1)
        self.assertIn(node, NODES)
        job = json.loads(self.kubectl("get", "job", "tick-now", "-o", "json"))
        self.assertEqual(
            job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual"
        )
        [owner] = job["metadata"]["ownerReferences"]
        self.assertEqual((owner["kind"], owner["name"]), ("CronJob", "tick"))

    def test_a_job_runs_its_completions_two_at_a_time(self) -> None:
        """completions 3, parallelism 2: two pods, a third once one succeeds, then Complete."""
        job = json.loads(
            self.kubectl("create", "job", "batch", "--image=busybox", "--dry-run=client", "-o=json")
        )
        job["spec"].update(completions=3, parallelism=2)
        selector = "batch.kubernetes.io/job-name=batch"
        self.apply(job)
        self.remove("job", "batch", selector)
        self.wait_placed(selector, 2)
        succeeded = json.dumps({"status": {"phase": "Succeeded"}})

        def succeed(pod: dict[str, Any]) -> None:
            name = pod["metadata"]["name"]
            self.kubectl(
                "patch", "pod", name, "--subresource=status", "--type=merge", "-p", succeeded
            )

        first = self.items("pods", selector)[0]
        succeed(first)
        self.wait_placed(selector, 3)
        for pod in self.items("pods", selector):
            if pod["metadata"]["name"] != first["metadata"]["name"]:
                succeed(pod)
        out = self.kubectl("wait", "--for=condition=complete", "job/batch", "--timeout=30s")
        self.assertEqual(out.strip(), "job.batch/batch condition met")
        status = json.loads(self.kubectl("get", "job", "batch", "-o", "json"))["status"]
        self.assertEqual((status["succeeded"], status.get("active", 0)), (3, 0))

    def test_drain_honours_a_disruption_budget(self) -> None:
        """
        ``kubectl drain`` cordons agent-2 and evicts its pod through the
        Eviction API while a PodDisruptionBudget allows one disruption; the
        replacement lands elsewhere. With the budget at zero, eviction is refused.
        """
        self.kubectl("create", "deployment", "drained", "--image=busybox", "--replicas=3")
        self.remove("deployment", "drained")
        self.assertEqual(self.wait_placed("app=drained", 3), dict.fromkeys(NODES, 1))
        self.cluster.wait(lambda: self.rolled_out("drained"), "drained's pods Ready")
        self.kubectl("create", "pdb", "drained", "--selector=app=drained", "--min-available=2")
        self.addCleanup(self.cluster.kubectl, "delete", "pdb", "drained")

        def allowed() -> int | None:
            got = json.loads(self.kubectl("get", "pdb", "drained", "-o", "json"))
            allowed: int | None = got.get("status", {}).get("disruptionsAllowed")
            return allowed

        self.cluster.wait(lambda: allowed() == 1, "one disruption allowed")
        self.addCleanup(self.cluster.kubectl, "uncordon", "agent-2")
        drained = self.kubectl("drain", "agent-2", "--ignore-daemonsets", "--timeout=30s")
        self.assertIn("node/agent-2 drained", drained)
        where = self.wait_placed("app=drained", 3)
        self.assertNotIn("agent-2", where)
        self.assertEqual(set(where), {"server", "agent-1"})

        # The replacement is not Ready: no disruption is allowed, and eviction says so.
        self.cluster.wait(lambda: allowed() == 0, "no disruption allowed")
        refused = self.cluster.kubectl("drain", "agent-1", "--ignore-daemonsets", "--timeout=3s")
        self.addCleanup(self.cluster.kubectl, "uncordon", "agent-1")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(
            "Cannot evict pod as it would violate the pod's disruption budget.",
            refused.stdout + refused.stderr,
        )

    def test_recreate_progress_deadline_and_undo_to_a_revision(self) -> None:
        """
        Recreate removes every old pod before making a new one; a rollout
        whose pods never turn Ready exceeds its progress deadline, and
        ``rollout undo --to-revision=1`` brings the first template back.
        """
        self.kubectl("create", "deployment", "swap", "--image=busybox", "--replicas=3")
        self.remove("deployment", "swap")
        self.cluster.wait(lambda: self.rolled_out("swap"), "swap's first rollout")
        [old] = self.replica_counts("app=swap")
        recreate = {"spec": {"strategy": {"type": "Recreate", "rollingUpdate": None}}}
        self.kubectl("patch", "deployment", "swap", "--type=merge", "-p", json.dumps(recreate))
        self.kubectl("set", "image", "deployment/swap", "busybox=busybox:1.36")
        self.cluster.wait(lambda: self.rolled_out("swap"), "the recreated rollout")
        self.assertEqual(self.images("app=swap"), {"busybox:1.36"})
        self.assertEqual(self.wait_placed("app=swap", 3).total(), 3)
        # The old ReplicaSet went to 0 before the new one came up, all at once (a rolling
        # update of 3 would surge by 1).
        [new] = set(self.replica_counts("app=swap")) - {old}
        scaled = [e["message"] for e in self.events("Deployment", "swap")]
        self.assertEqual(
            scaled,
            [
                f"Scaled up replica set {old} from 0 to 3",
                f"Scaled down replica set {old} from 3 to 0",
                f"Scaled up replica set {new} from 0 to 3",
            ],
        )

        deadline = {"spec": {"progressDeadlineSeconds": 1}}
        self.kubectl("patch", "deployment", "swap", "--type=merge", "-p", json.dumps(deadline))
        self.kubectl("set", "image", "deployment/swap", "busybox=busybox:1.37")

        def stalled() -> str:
            got = self.cluster.kubectl("rollout", "status", "deployment/swap", "--watch=false")
            return got.stderr

        self.cluster.wait(stalled, "the progress deadline")
        self.assertEqual(stalled(), 'error: deployment "swap" exceeded its progress deadline\n')
        self.assertEqual(self.revisions("swap"), ["1", "2", "3"])
        detail = self.kubectl("rollout", "history", "deployment/swap", "--revision=1")
        self.assertIn("Image:\tbusybox\n", detail)

        self.kubectl("rollout", "undo", "deployment/swap", "--to-revision=1")
        self.cluster.wait(lambda: self.rolled_out("swap"), "the rollback to revision 1")
        self.cluster.wait(lambda: self.images("app=swap") == {"busybox"}, "revision 1's image")
        self.assertEqual(self.revisions("swap"), ["2", "3", "4"])

    def test_a_parallel_statefulset_its_claims_and_scale_down(self) -> None:
        """
        A Parallel StatefulSet makes its three pods at once (spread over the
        nodes) and a PersistentVolumeClaim per pod from its template; scaled
        to one, the highest ordinals go and the claims stay (Retain).
        """
        claim = {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
        self.workload(
            "StatefulSet",
            "db",
            replicas=3,
            podManagementPolicy="Parallel",
            serviceName="db",
            volumeClaimTemplates=[claim],
        )
        self.addCleanup(self.cluster.kubectl, "delete", "pvc", "-l", "app=db")
        self.assertEqual(self.wait_placed("app=db", 3), dict.fromkeys(NODES, 1))
        names = sorted(p["metadata"]["name"] for p in self.items("pods", "app=db"))
        self.assertEqual(names, ["db-0", "db-1", "db-2"])
        claims = sorted(c["metadata"]["name"] for c in self.items("pvc", "app=db"))
        self.assertEqual(claims, ["data-db-0", "data-db-1", "data-db-2"])
        [pod] = [p for p in self.items("pods", "app=db") if p["metadata"]["name"] == "db-1"]
        [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "data"]
        self.assertEqual(volume["persistentVolumeClaim"], {"claimName": "data-db-1"})

        self.kubectl("scale", "statefulset", "db", "--replicas=1")
        self.wait_placed("app=db", 1)
        self.assertEqual([p["metadata"]["name"] for p in self.items("pods", "app=db")], ["db-0"])
        self.assertEqual(len(self.items("pvc", "app=db")), 3)

    def test_requests_fill_nodes_and_a_freed_node_takes_the_waiting_pod(self) -> None:
        """
        Pods asking for three quarters of a node's CPU fit one to a node; the
        fourth waits on Insufficient cpu until a bound one is deleted, then
        takes its node.
        """
        node = json.loads(self.kubectl("get", "node", "server", "-o", "json"))
        cpus = int(node["status"]["allocatable"]["cpu"])
        for index in range(1, 5):
            big = pod_manifest(f"big-{index}", {})
            big["metadata"]["labels"]["size"] = "big"
            big["spec"]["containers"][0]["resources"] = {"requests": {"cpu": f"{cpus * 750}m"}}
            self.apply(big)
            self.remove("pod", f"big-{index}")
            if index == 3:
                self.assertEqual(self.wait_placed("size=big", 3), dict.fromkeys(NODES, 1))
        self.assertEqual(
            self.wait_unschedulable("big-4")["message"],
            "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are "
            "available: 3 No preemption victims found for incoming pod.",
        )
        freed = json.loads(self.kubectl("get", "pod", "big-2", "-o", "json"))["spec"]["nodeName"]
        self.kubectl("delete", "pod", "big-2", "--wait=false")
        self.cluster.wait(
            lambda: self.placement("app=big-4") == {freed: 1}, f"big-4 bound to {freed}"
        )
