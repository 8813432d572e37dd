"""
The job and TTL-after-finished controllers on the real object store over the
in-memory datastore, on a Clock: pods made from the template and counted as
the test moves them to Succeeded or Failed through the status subresource.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.binding import bind
from k3stw.apiserver.kinds import events, jobs, pods
from k3stw.controllers.jobs import (
    COMPLETION_INDEX,
    TRACKING_FINALIZER,
    JobController,
    TTLAfterFinishedController,
    intervals,
    parse_intervals,
)
from k3stw.machinery.objects import Object, find_condition
from tests.support.apiserver import MemoryServer

NS = "default"


def job_manifest(name: str = "pi", **spec: Any) -> Object:
    template = {
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
        }
    }
    return {"metadata": {"name": name}, "spec": {"template": template, **spec}}


class JobTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        self.controller = JobController(self.server.informers, self.store, "server")
        self.server.start(self.controller)

    def create(self, name: str = "pi", **spec: Any) -> Object:
        return self.server.run(self.store.create(jobs.RESOURCE, NS, job_manifest(name, **spec)))

    def job(self, name: str = "pi") -> Object:
        return self.server.get("batch", "jobs", name, NS)

    def pods(self, active: bool = True) -> list[Object]:
        """The Job's pods: those still running (not finished, not being deleted), or all."""
        found = self.server.run(self.store.list(pods.RESOURCE, NS)).items
        if active:
            found = [
                p
                for p in found
                if not p["metadata"].get("deletionTimestamp")
                and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
            ]
        return sorted(found, key=lambda p: p["metadata"]["name"])

    def finish(self, pod: Object, phase: str, **status: Any) -> None:
        self.clock.advance(1)
        name = pod["metadata"]["name"]
        current = self.server.get("", "pods", name, NS)
        current["status"] = {**current.get("status", {}), "phase": phase, **status}
        self.server.run(self.store.update(pods.RESOURCE, NS, name, current, subresource="status"))

    def condition(self, kind: str, name: str = "pi") -> Object | None:
        return find_condition(self.job(name), kind)

    def reasons(self) -> list[str]:
        listed = self.server.run(self.store.list(events.RESOURCE, NS)).items
        return [e["reason"] for e in sorted(listed, key=lambda e: e["metadata"]["name"])]

    def delete_bound(self, pod: Object) -> None:
        """A user deletes the pod once it runs on a node: it is Terminating, not gone."""
        name = pod["metadata"]["name"]
        binding = {"target": {"kind": "Node", "name": "n1"}}
        self.server.run(bind(self.store, NS, name, binding))
        self.finish(pod, "Running")
        _, gone = self.server.delete("", "pods", name, NS)
        self.assertFalse(gone)

    def test_a_terminating_pod_is_replaced_at_once_and_counted_failed(self) -> None:
        """podReplacementPolicy TerminatingOrFailed (the default)."""
        self.create(backoffLimit=3)
        [pod] = self.pods()
        self.delete_bound(pod)
        status = self.job()["status"]
        self.assertEqual((status["failed"], status["terminating"]), (1, 1))
        self.clock.advance(11)  # the failure's back-off (10 s)
        [replacement] = self.pods()
        self.assertNotEqual(replacement["metadata"]["name"], pod["metadata"]["name"])
        status = self.job()["status"]
        self.assertEqual((status["active"], status["terminating"]), (1, 1))

    def test_with_replacement_policy_failed_the_replacement_waits_for_the_pod_to_go(self) -> None:
        self.create(backoffLimit=3, podReplacementPolicy="Failed")
        [pod] = self.pods()
        self.delete_bound(pod)
        self.clock.advance(11)
        self.assertEqual(self.pods(), [])
        self.assertEqual(self.job()["status"]["terminating"], 1)
        self.assertEqual(self.job()["status"].get("failed", 0), 0)
        self.server.confirm_pod_deletions()  # its kubelet: Failed, then gone
        self.assertEqual(self.job()["status"]["failed"], 1)
        self.clock.advance(11)  # the failure's back-off
        self.assertEqual(len(self.pods()), 1)

    def test_a_job_makes_a_tracked_pod_from_its_template(self) -> None:
        job = self.create()
        [pod] = self.pods()
        meta = pod["metadata"]
        uid = job["metadata"]["uid"]
        self.assertTrue(meta["name"].startswith("pi-"))
        self.assertEqual(meta["generateName"], "pi-")
        self.assertEqual(meta["finalizers"], [TRACKING_FINALIZER])
        for label in ("batch.kubernetes.io/controller-uid", "controller-uid"):
            self.assertEqual(meta["labels"][label], uid)
        self.assertEqual(meta["labels"]["job-name"], "pi")
        [owner] = meta["ownerReferences"]
        self.assertEqual((owner["kind"], owner["uid"], owner["controller"]), ("Job", uid, True))
        status = self.job()["status"]
        self.assertEqual((status["active"], status["ready"]), (1, 0))
        self.assertIn("startTime", status)
        self.assertEqual(self.reasons(), ["SuccessfulCreate"])

    def test_a_job_runs_to_completion_as_its_pods_succeed(self) -> None:
        self.create(completions=3, parallelism=2)
        first, _ = self.pods()
        self.finish(first, "Succeeded")
        status = self.job()["status"]
        self.assertEqual(status["succeeded"], 1)
        self.assertEqual(status["uncountedTerminatedPods"], {})
        # Counted, so released: the finalizer is gone.
        self.assertNotIn(
            "finalizers", self.server.get("", "pods", first["metadata"]["name"], NS)["metadata"]
        )
        self.assertEqual(len(self.pods()), 2)  # the second, and a third for the last completion
        self.assertIsNone(self.condition("Complete"))
        for pod in self.pods():
            self.finish(pod, "Succeeded")
        status = self.job()["status"]
        self.assertEqual((status["succeeded"], status["active"]), (3, 0))
        complete = self.condition("Complete")
        assert complete is not None
        self.assertEqual((complete["status"], complete["reason"]), ("True", "CompletionsReached"))
        self.assertEqual(complete["message"], "Reached expected number of succeeded pods")
        criteria = self.condition("SuccessCriteriaMet")
        assert criteria is not None
        self.assertEqual(criteria["reason"], "CompletionsReached")
        self.assertIn("completionTime", status)
        self.assertIn("Completed", self.reasons())

    def test_failed_pods_are_replaced_after_a_growing_backoff(self) -> None:
        self.create(backoffLimit=3)
        [pod] = self.pods()
        self.finish(pod, "Failed")
        self.assertEqual(self.job()["status"]["failed"], 1)
        self.assertEqual(self.pods(), [])  # not yet: 10 s of back-off
        self.clock.advance(9)
        self.assertEqual(self.pods(), [])
        self.clock.advance(1.5)
        [second] = self.pods()
        self.finish(second, "Failed")
        self.clock.advance(19)
        self.assertEqual(self.pods(), [])  # the second wait is 20 s
        self.clock.advance(1.5)
        self.assertEqual(len(self.pods()), 1)

    def test_a_job_fails_once_its_backoff_limit_is_passed(self) -> None:
        self.create(backoffLimit=1)
        self.finish(self.pods()[0], "Failed")
        self.clock.advance(11)
        [second] = self.pods()
        self.finish(second, "Failed")
        failed = self.condition("Failed")
        assert failed is not None
        self.assertEqual(failed["reason"], "BackoffLimitExceeded")
        self.assertEqual(failed["message"], "Job has reached the specified backoff limit")
        target = self.condition("FailureTarget")
        assert target is not None
        self.assertEqual(target["reason"], "BackoffLimitExceeded")
        self.assertEqual(self.job()["status"]["failed"], 2)
        self.assertIn("BackoffLimitExceeded", self.reasons())
        self.clock.advance(60)
        self.assertEqual(self.pods(), [])

    def test_a_fail_job_rule_fails_the_job_at_the_first_matching_exit_code(self) -> None:
        policy = {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
            ]
        }
        self.create(backoffLimit=6, podFailurePolicy=policy)
        [pod] = self.pods()
        exited = {"name": "main", "state": {"terminated": {"exitCode": 42}}}
        self.finish(pod, "Failed", containerStatuses=[exited])
        failed = self.condition("Failed")
        assert failed is not None
        message = (
            f"Container main for pod {NS}/{pod['metadata']['name']} failed with exit code 42"
            " matching FailJob rule at index 1"
        )
        self.assertEqual((failed["reason"], failed["message"]), ("PodFailurePolicy", message))
        target = self.condition("FailureTarget")
        assert target is not None
        self.assertEqual(target["reason"], "PodFailurePolicy")
        self.assertEqual(self.job()["status"]["failed"], 1)

    def test_an_ignored_failure_is_replaced_without_counting(self) -> None:
        policy = {
            "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
        }
        self.create(backoffLimit=0, podFailurePolicy=policy)
        [pod] = self.pods()
        disrupted = {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "EvictionByEvictionAPI",
        }
        self.finish(pod, "Failed", conditions=[disrupted])
        status = self.job()["status"]
        self.assertNotIn("failed", status)
        self.assertIsNone(self.condition("Failed"))
        self.assertNotIn(
            "finalizers", self.server.get("", "pods", pod["metadata"]["name"], NS)["metadata"]
        )
        [replacement] = self.pods()
        self.assertNotEqual(replacement["metadata"]["name"], pod["metadata"]["name"])
        # A failure the policy does not name counts: backoffLimit 0 is passed.
        self.finish(replacement, "Failed")
        failed = self.condition("Failed")
        assert failed is not None
        self.assertEqual(failed["reason"], "BackoffLimitExceeded")

    def test_on_failure_restarts_count_against_the_backoff_limit(self) -> None:
        manifest = job_manifest(backoffLimit=2)
        manifest["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
        self.server.run(self.store.create(jobs.RESOURCE, NS, manifest))
        [pod] = self.pods()
        restarted = {"name": "main", "restartCount": 1, "state": {"running": {}}}
        self.finish(pod, "Running", containerStatuses=[restarted])
        self.assertIsNone(self.condition("Failed"))
        self.finish(pod, "Running", containerStatuses=[{**restarted, "restartCount": 2}])
        failed = self.condition("Failed")
        assert failed is not None
        self.assertEqual(failed["reason"], "BackoffLimitExceeded")

    def test_a_job_past_its_deadline_fails_and_its_pods_go(self) -> None:
        self.create(activeDeadlineSeconds=30, parallelism=2, completions=4)
        self.assertEqual(len(self.pods()), 2)
        self.clock.advance(29)
        self.assertIsNone(self.condition("Failed"))
        self.clock.advance(1.5)
        failed = self.condition("Failed")
        assert failed is not None
        self.assertEqual(failed["reason"], "DeadlineExceeded")
        self.assertEqual(failed["message"], "Job was active longer than specified deadline")
        self.assertEqual(self.pods(active=False), [])
        status = self.job()["status"]
        self.assertEqual((status["active"], status["failed"], status["terminating"]), (0, 2, 0))
        self.assertIn("SuccessfulDelete", self.reasons())

    def test_suspending_deletes_the_pods_and_resuming_makes_them_again(self) -> None:
        self.create(parallelism=2, completions=2)
        self.assertEqual(len(self.pods()), 2)

        def suspend(value: bool) -> None:
            self.clock.advance(1)
            job = self.job()
            job["spec"]["suspend"] = value
            self.server.run(self.store.update(jobs.RESOURCE, NS, "pi", job))

        suspend(True)
        self.assertEqual(self.pods(active=False), [])
        suspended = self.condition("Suspended")
        assert suspended is not None
        self.assertEqual((suspended["status"], suspended["reason"]), ("True", "JobSuspended"))
        self.assertEqual(self.job()["status"]["active"], 0)
        suspend(False)
        self.clock.advance(600)  # past any back-off the deleted pods started
        self.assertEqual(len(self.pods()), 2)
        resumed = self.condition("Suspended")
        assert resumed is not None
        self.assertEqual((resumed["status"], resumed["reason"]), ("False", "JobResumed"))
        self.assertIn("Suspended", self.reasons())
        self.assertIn("Resumed", self.reasons())

    def test_an_indexed_job_gives_each_pod_an_index(self) -> None:
        self.create(completionMode="Indexed", completions=3, parallelism=3)
        made = self.pods()
        indexes = sorted(p["metadata"]["annotations"][COMPLETION_INDEX] for p in made)
        self.assertEqual(indexes, ["0", "1", "2"])
        by_index = {p["metadata"]["labels"][COMPLETION_INDEX]: p for p in made}
        self.assertEqual(by_index["1"]["spec"]["hostname"], "pi-1")
        self.assertTrue(by_index["1"]["metadata"]["name"].startswith("pi-1-"))
        env = by_index["1"]["spec"]["containers"][0]["env"]
        self.assertEqual(env[0]["name"], "JOB_COMPLETION_INDEX")
        self.finish(by_index["0"], "Succeeded")
        self.finish(by_index["2"], "Succeeded")
        self.assertEqual(self.job()["status"]["completedIndexes"], "0,2")
        self.finish(by_index["1"], "Failed")
        self.clock.advance(11)
        [again] = self.pods()
        self.assertEqual(again["metadata"]["labels"][COMPLETION_INDEX], "1")
        self.finish(again, "Succeeded")
        self.assertEqual(self.job()["status"]["completedIndexes"], "0-2")
        self.assertIsNotNone(self.condition("Complete"))

    def test_deleting_a_pod_counts_it_failed_and_releases_it(self) -> None:
        self.create()
        [pod] = self.pods()
        self.server.delete("", "pods", pod["metadata"]["name"], NS)
        self.assertEqual(self.job()["status"]["failed"], 1)
        self.assertFalse(self.server.exists("", "pods", pod["metadata"]["name"], NS))

    def test_orphaned_pods_lose_the_tracking_finalizer(self) -> None:
        self.create()
        [pod] = self.pods()
        name = pod["metadata"]["name"]
        self.server.delete("batch", "jobs", "pi", NS)
        self.server.delete("", "pods", name, NS)
        self.assertFalse(self.server.exists("", "pods", name, NS))

    def test_intervals_are_written_as_kube_writes_them(self) -> None:
        self.assertEqual(intervals([5, 1, 3, 4, 0]), "0-1,3-5")
        self.assertEqual(parse_intervals("0-1,3-5"), {0, 1, 3, 4, 5})
        self.assertEqual(intervals([]), "")


class TTLAfterFinishedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        informers = self.server.informers
        self.server.start(
            JobController(informers, self.store), TTLAfterFinishedController(informers, self.store)
        )

    def test_a_finished_job_is_deleted_after_its_ttl(self) -> None:
        self.server.run(
            self.store.create(jobs.RESOURCE, NS, job_manifest(ttlSecondsAfterFinished=100))
        )
        [pod] = self.server.run(self.store.list(pods.RESOURCE, NS)).items
        pod["status"] = {"phase": "Succeeded"}
        name = pod["metadata"]["name"]
        self.server.run(self.store.update(pods.RESOURCE, NS, name, pod, subresource="status"))
        self.server.clock.advance(99)
        self.assertTrue(self.server.exists("batch", "jobs", "pi", NS))
        self.server.clock.advance(1.5)
        job = self.server.run(self.store.get(jobs.RESOURCE, NS, "pi"))
        # Foreground: the Job waits, marked, for its dependents to go first.
        self.assertIn("deletionTimestamp", job["metadata"])
