"""
Each kind's strategy, followed by the object store on every write: a
controller's write meets the same rules as a client's over HTTP.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds import BUILT_IN, crds
from k3stw.apiserver.kinds.custom import resources_of_crd
from k3stw.apiserver.patch import apply_server_side
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.machinery.objects import Object
from tests.support.apiserver import ANY_SCHEMA, MemoryServer


def crd(kind: str = "Widget", plural: str = "widgets") -> Object:
    return {
        "metadata": {"name": f"{plural}.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": ANY_SCHEMA}],
        },
    }


def workload_spec() -> Object:
    """The least a workload's spec must say: a selector and a pod template it selects."""
    return {
        "selector": {"matchLabels": {"app": "a"}},
        "template": {
            "metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        },
    }


class KindDeclarationTests(SynchronousTestCase):
    def test_every_kind_is_declared_once_by_group_and_kind(self) -> None:
        keys = [(r.group, r.kind) for r in BUILT_IN]
        self.assertEqual(len(keys), len(set(keys)))
        self.assertEqual(len({(r.group, r.plural) for r in BUILT_IN}), len(BUILT_IN))

    def test_a_custom_resource_named_like_a_core_kind_follows_its_crd_not_the_core_kind(
        self,
    ) -> None:
        """An ``example.com/v1`` Pod merges its lists atomically, as Kubernetes treats them."""
        [custom] = resources_of_crd(crd("Pod", "pods"))
        live = {
            "apiVersion": "example.com/v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
        }
        created = apply_server_side(
            None, live, "one", False, now="2026-01-01T00:00:00Z", rules=custom.strategy.merge_rules
        )
        applied = {**live, "spec": {"containers": [{"name": "b", "image": "z"}]}}
        merged = apply_server_side(
            created,
            applied,
            "one",
            False,
            now="2026-01-01T00:00:01Z",
            rules=custom.strategy.merge_rules,
        )
        self.assertEqual(merged["spec"]["containers"], [{"name": "b", "image": "z"}])
        self.assertFalse(custom.strategy.strategic_merge)


class StoreFollowsTheStrategyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)

    def test_a_crd_stored_by_anyone_gets_its_finalizer_and_status(self) -> None:
        stored = self.server.run(self.server.store.create(crds.RESOURCE, None, crd()))
        self.assertIn(crds.CLEANUP, stored["metadata"]["finalizers"])
        conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
        self.assertEqual(conditions, {"NamesAccepted": "True", "Established": "True"})
        self.assertEqual(stored["metadata"]["generation"], 1)
        # Written through this store, it is served at once.
        self.assertIsNotNone(self.server.registry.lookup("example.com", "v1", "widgets"))

    def test_an_immutable_secret_refuses_any_writer(self) -> None:
        secrets = self.server.resource("", "secrets")
        self.server.create(
            "",
            "secrets",
            {"metadata": {"name": "s"}, "immutable": True, "data": {"k": "dg=="}},
            "default",
        )

        def change(current: Object) -> Object:
            current["data"] = {"k": "eA=="}
            return current

        error = self.server.fails(
            self.server.store.guaranteed_update(secrets, "default", "s", change)
        )
        self.assertEqual(error.code, 422)
        self.assertIn("field is immutable", error.message)
        self.assertEqual(self.server.get("", "secrets", "s", "default")["data"], {"k": "dg=="})

    def test_a_secrets_string_data_is_written_into_data_and_never_stored(self) -> None:
        created = self.server.create(
            "",
            "secrets",
            {
                "metadata": {"name": "s"},
                "data": {"user": "b2xk", "keep": "aw=="},
                "stringData": {"user": "admin", "password": "pässword"},
            },
            "default",
        )
        self.assertNotIn("stringData", created)
        self.assertEqual(
            created["data"],
            {"user": "YWRtaW4=", "keep": "aw==", "password": "cMOkc3N3b3Jk"},
        )
        self.assertEqual(self.server.get("", "secrets", "s", "default"), created)
        error = self.server.fails(
            self.server.store.create(
                self.server.resource("", "secrets"),
                "default",
                {"metadata": {"name": "bad"}, "stringData": {"n": 1}},
            )
        )
        self.assertEqual(error.code, 422)
        self.assertIn("stringData", error.message)

    def test_defaults_and_generations_apply_to_every_write(self) -> None:
        deployments = self.server.resource("apps", "deployments")
        created = self.server.create(
            "apps", "deployments", {"metadata": {"name": "d"}, "spec": workload_spec()}, "default"
        )
        self.assertEqual(created["spec"]["replicas"], 1)

        def scale(current: Object) -> Object:
            current["spec"]["replicas"] = 3
            return current

        scaled = self.server.run(
            self.server.store.guaranteed_update(deployments, "default", "d", scale)
        )
        self.assertEqual(scaled["metadata"]["generation"], 2)

    def test_an_object_its_strategy_finds_invalid_is_refused_and_not_stored(self) -> None:
        configmaps = self.server.resource("", "configmaps")
        strict: ResourceType = replace(
            configmaps,
            strategy=Strategy(validate=lambda obj: [("data.k", "Invalid value: 1: must be text")]),
        )
        error = self.server.fails(
            self.server.store.create(strict, "default", {"metadata": {"name": "c"}})
        )
        self.assertEqual(error.code, 422)
        self.assertIn("data.k: Invalid value: 1: must be text", error.message)
        self.assertFalse(self.server.exists("", "configmaps", "c", "default"))


class WorkloadDefaultsTests(SynchronousTestCase):
    """What kube-apiserver 1.32 stores for a bare workload: the defaults users read back."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)

    def template(self) -> Object:
        return {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}

    def test_deployment(self) -> None:
        spec = self.server.create(
            "apps", "deployments", {"metadata": {"name": "d"}, "spec": workload_spec()}, "default"
        )["spec"]
        self.assertEqual(
            spec["strategy"],
            {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
            },
        )
        self.assertEqual((spec["progressDeadlineSeconds"], spec["revisionHistoryLimit"]), (600, 10))

    def test_daemonset(self) -> None:
        spec = self.server.create(
            "apps", "daemonsets", {"metadata": {"name": "ds"}, "spec": workload_spec()}, "default"
        )["spec"]
        self.assertEqual(
            spec["updateStrategy"],
            {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
        )

    def test_statefulset(self) -> None:
        spec = self.server.create(
            "apps",
            "statefulsets",
            {
                "metadata": {"name": "db"},
                "spec": {**workload_spec(), "volumeClaimTemplates": [{"spec": {}}]},
            },
            "default",
        )["spec"]
        self.assertEqual(spec["replicas"], 1)
        self.assertEqual(spec["podManagementPolicy"], "OrderedReady")
        self.assertEqual(
            spec["updateStrategy"], {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
        )
        self.assertEqual(
            spec["persistentVolumeClaimRetentionPolicy"],
            {"whenDeleted": "Retain", "whenScaled": "Retain"},
        )
        self.assertEqual(spec["volumeClaimTemplates"][0]["spec"]["volumeMode"], "Filesystem")
        self.assertEqual(spec["template"]["spec"]["dnsPolicy"], "ClusterFirst")

    def test_job_with_its_generated_selector(self) -> None:
        job = self.server.create(
            "batch", "jobs", {"metadata": {"name": "once"}, "spec": {"template": self.template()}},
            "default",
        )  # fmt: skip
        spec, uid = job["spec"], job["metadata"]["uid"]
        self.assertEqual(
            {k: spec[k] for k in ("completions", "parallelism", "backoffLimit", "completionMode")},
            {"completions": 1, "parallelism": 1, "backoffLimit": 6, "completionMode": "NonIndexed"},
        )
        self.assertEqual(
            (spec["suspend"], spec["podReplacementPolicy"]), (False, "TerminatingOrFailed")
        )
        self.assertEqual(
            spec["selector"], {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        )
        self.assertEqual(
            spec["template"]["metadata"]["labels"],
            {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": "once",
                "controller-uid": uid,
                "job-name": "once",
            },
        )
        self.assertEqual(spec["template"]["spec"]["terminationGracePeriodSeconds"], 30)

    def test_cronjob(self) -> None:
        spec = self.server.create(
            "batch",
            "cronjobs",
            {
                "metadata": {"name": "nightly"},
                "spec": {
                    "schedule": "0 3 * * *",
                    "jobTemplate": {"spec": {"template": self.template()}},
                },
            },
            "default",
        )["spec"]
        self.assertEqual(
            {k: spec[k] for k in ("concurrencyPolicy", "suspend")},
            {"concurrencyPolicy": "Allow", "suspend": False},
        )
        self.assertEqual(
            (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]), (3, 1)
        )
        template_spec = spec["jobTemplate"]["spec"]["template"]["spec"]
        self.assertEqual(template_spec["schedulerName"], "default-scheduler")


class WorkloadRulesTests(SynchronousTestCase):
    """The rules kube-apiserver enforces on workloads that users hit most, in its words."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)

    def refused(self, plural: str, spec: Object) -> str:
        error = self.server.fails(
            self.server.store.create(
                self.server.resource("apps", plural),
                "default",
                {"metadata": {"name": "w"}, "spec": spec},
            )
        )
        self.assertEqual(error.code, 422)
        return error.message

    def test_a_selector_is_required(self) -> None:
        spec = workload_spec()
        del spec["selector"]
        self.assertIn("spec.selector: Required value", self.refused("deployments", spec))

    def test_the_template_must_carry_the_selected_labels(self) -> None:
        spec = workload_spec()
        spec["template"]["metadata"]["labels"] = {"app": "other", "tier": "web"}
        self.assertIn(
            'spec.template.metadata.labels: Invalid value: map[string]string{"app":"other", '
            '"tier":"web"}: `selector` does not match template `labels`',
            self.refused("statefulsets", spec),
        )

    def test_containers_are_required_and_named_once(self) -> None:
        spec = workload_spec()
        spec["template"]["spec"]["containers"].append({"name": "c", "image": "j"})
        self.assertIn(
            'spec.template.spec.containers[1].name: Duplicate value: "c"',
            self.refused("daemonsets", spec),
        )
        spec["template"]["spec"]["containers"] = []
        self.assertIn(
            "spec.template.spec.containers: Required value", self.refused("replicasets", spec)
        )

    def test_the_selector_is_immutable(self) -> None:
        self.server.create(
            "apps", "deployments", {"metadata": {"name": "d"}, "spec": workload_spec()}, "default"
        )

        def reselect(current: Object) -> Object:
            current["spec"]["selector"] = {"matchLabels": {"app": "b"}}
            current["spec"]["template"]["metadata"]["labels"] = {"app": "b"}
            return current

        error = self.server.fails(
            self.server.store.guaranteed_update(
                self.server.resource("apps", "deployments"), "default", "d", reselect
            )
        )
        self.assertIn("spec.selector: Invalid value", error.message)
        self.assertIn("field is immutable", error.message)
