"""
RBAC in memory: the authorizer over the shared informers, the bootstrap
policy, ClusterRole aggregation, escalation prevention, the access reviews
and impersonation, asked through the HTTP API as kubectl asks.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.auth import Attributes
from k3stw.apiserver.protobuf import decode_body
from k3stw.apiserver.rbacpolicy import bootstrap_policy, policy, reconciled
from k3stw.apiserver.rbacrules import Rule, compact, compact_string, uncovered
from k3stw.controllers.clusterroleaggregation import ClusterRoleAggregation
from k3stw.machinery.identity import User
from tests.support.apiserver import MemoryAPI, MemoryServer

RBAC = "/apis/rbac.authorization.k8s.io/v1"
AUTHZ = "/apis/authorization.k8s.io/v1"
ADMIN = User("system:admin", ("system:masters",))
BOB = User("bob", ())
ANN = User("ann", ("dev",))
ROBOT = User("system:serviceaccount:team:robot", ("system:serviceaccounts",))
NODE = User("system:node:n1", ("system:nodes",))


def rule(
    verbs: list[str], resources: list[str], groups: list[str] | None = None, **more: Any
) -> dict[str, Any]:
    return {
        "apiGroups": [""] if groups is None else groups,
        "resources": resources,
        "verbs": verbs,
        **more,
    }


def role_binding(
    name: str, role: str, subject: dict[str, str], kind: str = "ClusterRole"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [subject],
    }


class RuleTests(SynchronousTestCase):
    """A rule allows exactly what kube's ``RuleAllows`` does."""

    def allows(self, raw: dict[str, Any], *request: Any) -> bool:
        return Rule.of(raw).allows_resource(*request)

    def test_verbs_groups_resources_and_stars(self) -> None:
        self.assertTrue(self.allows(rule(["get"], ["pods"]), "get", "", "pods", None, None))
        self.assertFalse(self.allows(rule(["get"], ["pods"]), "list", "", "pods", None, None))
        self.assertFalse(self.allows(rule(["get"], ["pods"]), "get", "apps", "pods", None, None))
        star = rule(["*"], ["*"], ["*"])
        self.assertTrue(
            self.allows(star, "escalate", "rbac.authorization.k8s.io", "roles", None, "x")
        )

    def test_subresources(self) -> None:
        """``pods`` does not cover ``pods/log``; ``pods/log`` and ``*/scale`` name theirs."""
        self.assertFalse(self.allows(rule(["get"], ["pods"]), "get", "", "pods", "log", "p"))
        self.assertTrue(self.allows(rule(["get"], ["pods/log"]), "get", "", "pods", "log", "p"))
        scale = rule(["update"], ["*/scale"], ["apps"])
        self.assertTrue(self.allows(scale, "update", "apps", "deployments", "scale", "d"))
        self.assertFalse(self.allows(scale, "update", "apps", "deployments", None, "d"))

    def test_resource_names(self) -> None:
        """Named rules allow those objects only, never a list."""
        named = rule(["get", "list"], ["configmaps"], resourceNames=["one"])
        self.assertTrue(self.allows(named, "get", "", "configmaps", None, "one"))
        self.assertFalse(self.allows(named, "get", "", "configmaps", None, "two"))
        self.assertFalse(self.allows(named, "list", "", "configmaps", None, None))

    def test_non_resource_urls(self) -> None:
        urls = Rule.of({"nonResourceURLs": ["/healthz", "/apis/*"], "verbs": ["get"]})
        self.assertTrue(urls.allows_path("get", "/healthz"))
        self.assertTrue(urls.allows_path("get", "/apis/apps/v1"))
        self.assertFalse(urls.allows_path("get", "/healthz/etcd"))
        self.assertFalse(urls.allows_path("post", "/healthz"))

    def test_covering_and_kube_compact_words(self) -> None:
        owned = [Rule.of(rule(["get", "list"], ["pods", "*/scale"]))]
        wanted = [
            rule(["get"], ["pods", "deployments/scale"]),
            rule(["get", "delete"], ["secrets"]),
        ]
        missing = compact(uncovered(owned, wanted))
        self.assertEqual(
            [compact_string(r) for r in missing],
            ['{APIGroups:[""], Resources:["secrets"], Verbs:["get" "delete"]}'],
        )


class APITestCase(SynchronousTestCase):
    """A memory API with RBAC on, the bootstrap policy written, aggregation running."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        users = {"admin": ADMIN, "bob": BOB, "ann": ANN, "robot": ROBOT, "node": NODE}
        self.api = MemoryAPI(self.server, users, rbac=True)
        self.aggregation = ClusterRoleAggregation(self.server.informers, self.server.store)
        self.server.start(self.aggregation)

    def ask(
        self, method: bytes, path: str, body: object = None, as_: str = "admin", **headers: str
    ) -> tuple[int, Any]:
        return self.api.request(method, path, body, token=as_, headers=headers or None)

    def patch(self, path: str, body: object, media: str, as_: str = "admin") -> tuple[int, Any]:
        return self.api.request(b"PATCH", path, body, token=as_, headers={"content-type": media})

    def bind(
        self,
        name: str,
        role: str,
        subject: dict[str, str],
        namespace: str | None = "default",
        kind: str = "ClusterRole",
    ) -> None:
        path = (
            f"{RBAC}/namespaces/{namespace}/rolebindings"
            if namespace
            else f"{RBAC}/clusterrolebindings"
        )
        code, answer = self.ask(b"POST", path, role_binding(name, role, subject, kind))
        self.assertEqual(code, 201, answer)

    def can(
        self, user: str, verb: str, resource: str, namespace: str = "", group: str = "", **more: str
    ) -> dict[str, Any]:
        attributes = {
            "verb": verb,
            "resource": resource,
            "group": group,
            "namespace": namespace,
            **more,
        }
        body = {"spec": {"resourceAttributes": attributes}}
        code, answer = self.ask(b"POST", f"{AUTHZ}/selfsubjectaccessreviews", body, as_=user)
        self.assertEqual(code, 201, answer)
        status: dict[str, Any] = answer["status"]
        return status


class AuthorizerTests(APITestCase):
    def test_unbound_user_refused_in_kube_words(self) -> None:
        code, status = self.ask(b"GET", "/api/v1/namespaces/default/pods", as_="bob")
        self.assertEqual(code, 403)
        self.assertEqual(
            status["message"],
            'pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the '
            'namespace "default"',
        )

    def test_rolebinding_grants_in_its_namespace_only(self) -> None:
        self.bind("bob-view", "view", {"kind": "User", "name": "bob"})
        self.assertEqual(self.ask(b"GET", "/api/v1/namespaces/default/pods", as_="bob")[0], 200)
        self.assertEqual(self.ask(b"GET", "/api/v1/namespaces/kube-system/pods", as_="bob")[0], 403)
        self.assertEqual(self.ask(b"GET", "/api/v1/pods", as_="bob")[0], 403)
        # view reads no secrets: aggregation gave it exactly the aggregate-to-view rules.
        self.assertEqual(self.ask(b"GET", "/api/v1/namespaces/default/secrets", as_="bob")[0], 403)

    def test_groups_and_service_accounts_as_subjects(self) -> None:
        self.bind("dev-edit", "edit", {"kind": "Group", "name": "dev"}, namespace=None)
        # A ServiceAccount subject without a namespace is of the binding's: default:robot.
        self.bind("robot", "view", {"kind": "ServiceAccount", "name": "robot"})
        self.assertTrue(self.can("ann", "create", "deployments", "x", group="apps")["allowed"])
        self.assertFalse(self.can("robot", "list", "pods", "default")["allowed"])
        self.bind(
            "robot2", "view", {"kind": "ServiceAccount", "name": "robot", "namespace": "team"}
        )
        self.assertTrue(self.can("robot", "list", "pods", "default")["allowed"])

    def test_reason_names_the_binding(self) -> None:
        self.bind("bob-view", "view", {"kind": "User", "name": "bob"})
        status = self.can("bob", "get", "pods", "default")
        self.assertEqual(
            status["reason"],
            'RBAC: allowed by RoleBinding "bob-view/default" of ClusterRole "view" to User "bob"',
        )

    def test_missing_role_named_in_the_refusal(self) -> None:
        self.bind("ghost", "no-such-role", {"kind": "User", "name": "bob"})
        code, status = self.ask(b"GET", "/api/v1/namespaces/default/pods", as_="bob")
        self.assertEqual(code, 403)
        self.assertTrue(
            status["message"].endswith(
                ': RBAC: clusterrole.rbac.authorization.k8s.io "no-such-role" not found'
            )
        )

    def test_changes_take_effect_at_once(self) -> None:
        """The cache of grants follows every binding change."""
        self.assertFalse(self.can("bob", "list", "pods", "default")["allowed"])
        self.bind("bob-view", "view", {"kind": "User", "name": "bob"})
        self.assertTrue(self.can("bob", "list", "pods", "default")["allowed"])
        self.ask(b"DELETE", f"{RBAC}/namespaces/default/rolebindings/bob-view")
        self.assertFalse(self.can("bob", "list", "pods", "default")["allowed"])

    def test_non_resource_urls_by_role(self) -> None:
        """Everyone may discover and check health; /metrics is system:monitoring's."""
        for path in ("/version", "/api", "/apis", "/api/v1", "/apis/apps/v1", "/openapi/v3"):
            self.assertEqual(self.ask(b"GET", path, as_="bob")[0], 200, path)
        code, status = self.ask(b"GET", "/metrics", as_="bob")
        self.assertEqual(
            (code, status["message"]), (403, 'forbidden: User "bob" cannot get path "/metrics"')
        )
        self.assertEqual(self.ask(b"DELETE", "/version", as_="bob")[0], 403)
        for user, path, allowed in (
            ("bob", "/healthz", True),
            ("bob", "/readyz", True),
            ("bob", "/livez/etcd", False),
            ("prometheus", "/metrics", True),
            ("prometheus", "/livez/etcd", True),
        ):
            groups = ["system:authenticated"]
            if user == "prometheus":
                groups.append("system:monitoring")
            attributes = {"verb": "get", "path": path}
            body = {"spec": {"user": user, "groups": groups, "nonResourceAttributes": attributes}}
            _, answer = self.ask(b"POST", f"{AUTHZ}/subjectaccessreviews", body)
            self.assertEqual(answer["status"]["allowed"], allowed, (user, path))

    def test_nodes_keep_the_node_authorizer(self) -> None:
        self.assertEqual(self.ask(b"GET", "/api/v1/nodes", as_="node")[0], 200)
        self.assertEqual(self.ask(b"GET", "/api/v1/namespaces/default/secrets", as_="node")[0], 403)

    def test_decisions_per_second(self) -> None:
        """A decision is a cache lookup: far more than the API serves."""
        rbac = self.api.rbac
        assert rbac is not None
        self.bind("bob-edit", "edit", {"kind": "User", "name": "bob"})
        user = User("bob", ("system:authenticated",))
        attributes = [Attributes("get", "", "pods", "default", f"p{i % 50}") for i in range(1000)]
        started = time.perf_counter()
        for a in attributes * 20:
            rbac.decide(user, a)
        cached = 20_000 / (time.perf_counter() - started)
        started = time.perf_counter()
        for i in range(2000):
            rbac.grants(user).decisions.clear()
            rbac.decide(user, Attributes("update", "apps", "deployments", "default", f"d{i}"))
        uncached = 2000 / (time.perf_counter() - started)
        print(f"\nRBAC decisions per second: {cached:,.0f} cached, {uncached:,.0f} evaluated")
        self.assertGreater(uncached, 10_000)


class AggregationTests(APITestCase):
    def test_bootstrap_roles_aggregate(self) -> None:
        """admin gathers edit gathers view, as kube's roles do."""
        _, view = self.ask(b"GET", f"{RBAC}/clusterroles/view")
        _, edit = self.ask(b"GET", f"{RBAC}/clusterroles/edit")
        _, admin = self.ask(b"GET", f"{RBAC}/clusterroles/admin")
        self.assertTrue(view["rules"])
        self.assertTrue(all(r in edit["rules"] for r in view["rules"]))
        self.assertTrue(all(r in admin["rules"] for r in edit["rules"]))
        self.assertIn(
            rule(["create"], ["localsubjectaccessreviews"], ["authorization.k8s.io"]),
            admin["rules"],
        )

    def test_new_role_joins_and_leaves(self) -> None:
        crontabs = rule(["get"], ["crontabs"], ["stable.example.com"])
        role = {
            "metadata": {
                "name": "crontab-view",
                "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"},
            },
            "rules": [crontabs],
        }
        self.assertEqual(self.ask(b"POST", f"{RBAC}/clusterroles", role)[0], 201)
        for name in ("view", "edit", "admin"):
            self.assertIn(
                crontabs, self.ask(b"GET", f"{RBAC}/clusterroles/{name}")[1]["rules"], name
            )
        self.ask(b"DELETE", f"{RBAC}/clusterroles/crontab-view")
        self.assertNotIn(crontabs, self.ask(b"GET", f"{RBAC}/clusterroles/admin")[1]["rules"])


class EscalationTests(APITestCase):
    def setUp(self) -> None:
        super().setUp()
        # bob administers the default namespace: he may write roles and bindings there.
        self.bind("bob-admin", "admin", {"kind": "User", "name": "bob"})

    def test_role_granting_what_the_writer_lacks_refused(self) -> None:
        role = {"metadata": {"name": "nodes"}, "rules": [rule(["get", "list"], ["nodes"])]}
        code, status = self.ask(b"POST", f"{RBAC}/namespaces/default/roles", role, as_="bob")
        self.assertEqual(code, 403)
        self.assertEqual(
            status["message"],
            'roles.rbac.authorization.k8s.io "nodes" is forbidden: user "bob" '
            '(groups=["system:authenticated"]) is attempting to grant RBAC permissions not '
            'currently held:\n{APIGroups:[""], Resources:["nodes"], Verbs:["get" "list"]}',
        )

    def test_role_within_the_writers_rights_allowed(self) -> None:
        role = {"metadata": {"name": "pods"}, "rules": [rule(["get", "list"], ["pods"])]}
        self.assertEqual(
            self.ask(b"POST", f"{RBAC}/namespaces/default/roles", role, as_="bob")[0], 201
        )

    def test_escalate_verb_allows(self) -> None:
        self.bind("bob-escalate", "escalator", {"kind": "User", "name": "bob"})
        escalator = {
            "metadata": {"name": "escalator"},
            "rules": [rule(["escalate"], ["roles"], ["rbac.authorization.k8s.io"])],
        }
        self.assertEqual(self.ask(b"POST", f"{RBAC}/clusterroles", escalator)[0], 201)
        role = {"metadata": {"name": "nodes"}, "rules": [rule(["get"], ["nodes"])]}
        self.assertEqual(
            self.ask(b"POST", f"{RBAC}/namespaces/default/roles", role, as_="bob")[0], 201
        )

    def test_binding_a_role_beyond_the_writers_rights_refused(self) -> None:
        binding = role_binding("ann-admin", "cluster-admin", {"kind": "User", "name": "ann"})
        code, status = self.ask(
            b"POST", f"{RBAC}/namespaces/default/rolebindings", binding, as_="bob"
        )
        self.assertEqual(code, 403)
        self.assertIn(
            'rolebindings.rbac.authorization.k8s.io "ann-admin" is forbidden: user "bob"',
            status["message"],
        )
        binding = role_binding("ann-admin", "view", {"kind": "User", "name": "ann"})
        self.assertEqual(
            self.ask(b"POST", f"{RBAC}/namespaces/default/rolebindings", binding, as_="bob")[0], 201
        )

    def test_bind_verb_allows(self) -> None:
        binder = {
            "metadata": {"name": "binder"},
            "rules": [
                rule(
                    ["bind"],
                    ["clusterroles"],
                    ["rbac.authorization.k8s.io"],
                    resourceNames=["cluster-admin"],
                )
            ],
        }
        self.assertEqual(self.ask(b"POST", f"{RBAC}/clusterroles", binder)[0], 201)
        self.bind("bob-binder", "binder", {"kind": "User", "name": "bob"})
        binding = role_binding("ann-admin", "cluster-admin", {"kind": "User", "name": "ann"})
        self.assertEqual(
            self.ask(b"POST", f"{RBAC}/namespaces/default/rolebindings", binding, as_="bob")[0], 201
        )

    def test_escalation_checked_on_patch(self) -> None:
        role = {"metadata": {"name": "pods"}, "rules": [rule(["get"], ["pods"])]}
        self.ask(b"POST", f"{RBAC}/namespaces/default/roles", role, as_="bob")
        patch = [{"op": "add", "path": "/rules/-", "value": rule(["get"], ["nodes"])}]
        path = f"{RBAC}/namespaces/default/roles/pods"
        code, _ = self.patch(path, patch, "application/json-patch+json", as_="bob")
        self.assertEqual(code, 403)

    def test_aggregation_rule_needs_cluster_admin(self) -> None:
        self.bind("bob-cr", "cr-writer", {"kind": "User", "name": "bob"}, namespace=None)
        writer = {
            "metadata": {"name": "cr-writer"},
            "rules": [rule(["create"], ["clusterroles"], ["rbac.authorization.k8s.io"])],
        }
        self.ask(b"POST", f"{RBAC}/clusterroles", writer)
        role = {
            "metadata": {"name": "gather"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]},
        }
        code, status = self.ask(b"POST", f"{RBAC}/clusterroles", role, as_="bob")
        self.assertEqual(code, 403)
        self.assertTrue(
            status["message"].endswith(
                "must have cluster-admin privileges to use the aggregationRule"
            )
        )

    def test_role_ref_immutable(self) -> None:
        self.bind("b", "view", {"kind": "User", "name": "ann"})
        patch = {"roleRef": {"name": "edit"}}
        path = f"{RBAC}/namespaces/default/rolebindings/b"
        code, status = self.patch(path, patch, "application/merge-patch+json")
        self.assertEqual(code, 422)
        self.assertIn(
            'roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", '
            'Kind:"ClusterRole", Name:"edit"}: cannot change roleRef',
            status["message"],
        )


class ReviewTests(APITestCase):
    def test_subject_access_review(self) -> None:
        self.bind("bob-view", "view", {"kind": "User", "name": "bob"})
        body = {
            "spec": {
                "user": "bob",
                "resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "default"},
            }
        }
        code, answer = self.ask(b"POST", f"{AUTHZ}/subjectaccessreviews", body)
        self.assertEqual((code, answer["status"]["allowed"]), (201, True))
        code, _ = self.ask(b"POST", f"{AUTHZ}/subjectaccessreviews", body, as_="bob")
        self.assertEqual(code, 403)  # only who may create subjectaccessreviews

    def test_review_without_attributes_invalid(self) -> None:
        code, status = self.ask(b"POST", f"{AUTHZ}/subjectaccessreviews", {"spec": {"user": "bob"}})
        self.assertEqual(code, 422)
        self.assertIn(
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            status["message"],
        )

    def test_local_review_namespace_must_match(self) -> None:
        body = {
            "spec": {
                "user": "bob",
                "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "other"},
            }
        }
        code, status = self.ask(
            b"POST", f"{AUTHZ}/namespaces/default/localsubjectaccessreviews", body
        )
        self.assertEqual(code, 422)
        self.assertIn('Invalid value: "other": must match metadata.namespace', status["message"])

    def test_non_resource_self_review(self) -> None:
        body = {"spec": {"nonResourceAttributes": {"verb": "get", "path": "/metrics"}}}
        _, answer = self.ask(b"POST", f"{AUTHZ}/selfsubjectaccessreviews", body, as_="bob")
        self.assertFalse(answer["status"]["allowed"])

    def test_rules_review_lists_what_the_user_may(self) -> None:
        self.bind("bob-pods", "pod-reader", {"kind": "User", "name": "bob"}, kind="Role")
        role = {
            "metadata": {"name": "pod-reader"},
            "rules": [rule(["get"], ["pods"], resourceNames=["web"])],
        }
        self.ask(b"POST", f"{RBAC}/namespaces/default/roles", role)
        body = {"spec": {"namespace": "default"}}
        _, answer = self.ask(b"POST", f"{AUTHZ}/selfsubjectrulesreviews", body, as_="bob")
        status = answer["status"]
        self.assertIn(rule(["get"], ["pods"], resourceNames=["web"]), status["resourceRules"])
        self.assertIn(
            {
                "verbs": ["get"],
                "nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"],
            },
            status["nonResourceRules"],
        )
        self.assertFalse(status["incomplete"])


class ImpersonationTests(APITestCase):
    def test_admin_acts_as_bob(self) -> None:
        code, status = self.ask(
            b"GET", "/api/v1/namespaces/default/pods", **{"Impersonate-User": "bob"}
        )
        self.assertEqual(code, 403)
        self.assertIn('User "bob" cannot list', status["message"])

    def test_groups_are_impersonated_too(self) -> None:
        self.bind("dev-view", "view", {"kind": "Group", "name": "dev"})
        headers = {"Impersonate-User": "bob", "Impersonate-Group": "dev"}
        self.assertEqual(self.ask(b"GET", "/api/v1/namespaces/default/pods", **headers)[0], 200)

    def test_impersonating_needs_the_verb(self) -> None:
        code, status = self.ask(
            b"GET", "/api/v1/pods", as_="bob", **{"Impersonate-User": "system:admin"}
        )
        self.assertEqual(code, 403)
        self.assertEqual(
            status["message"],
            'users "system:admin" is forbidden: User "bob" cannot impersonate resource "users" '
            'in API group "" at the cluster scope',
        )
        code, status = self.ask(
            b"GET",
            "/api/v1/pods",
            as_="bob",
            **{"Impersonate-User": "system:serviceaccount:team:robot"},
        )
        self.assertIn('serviceaccounts "robot" is forbidden', status["message"])
        self.assertIn('in the namespace "team"', status["message"])

    def test_uid_and_extras_are_authorized(self) -> None:
        impersonator = {
            "metadata": {"name": "impersonator"},
            "rules": [rule(["impersonate"], ["users"])],
        }
        self.ask(b"POST", f"{RBAC}/clusterroles", impersonator)
        self.bind("bob-imp", "impersonator", {"kind": "User", "name": "bob"}, namespace=None)
        headers = {"Impersonate-User": "ann", "Impersonate-Uid": "1234"}
        code, status = self.ask(b"GET", "/version", as_="bob", **headers)
        self.assertEqual(code, 403)
        self.assertIn('uids.authentication.k8s.io "1234" is forbidden', status["message"])
        self.assertIn('in API group "authentication.k8s.io"', status["message"])
        self.assertEqual(
            self.ask(b"GET", "/version", as_="bob", **{"Impersonate-User": "ann"})[0], 200
        )

    def test_group_without_user_refused(self) -> None:
        code, status = self.ask(b"GET", "/version", **{"Impersonate-Group": "dev"})
        self.assertEqual(code, 500)
        self.assertIn("without impersonating a user", status["message"])


class BootstrapPolicyTests(SynchronousTestCase):
    def test_kube_roles_are_there(self) -> None:
        names = {(o["kind"], o["metadata"]["name"]) for o in policy()}
        for expected in (
            ("ClusterRole", "cluster-admin"),
            ("ClusterRole", "system:discovery"),
            ("ClusterRole", "system:node"),
            ("ClusterRoleBinding", "system:public-info-viewer"),
            ("Role", "extension-apiserver-authentication-reader"),
            ("ClusterRole", "system:k3s-controller"),
            ("ClusterRole", "system:controller:deployment-controller"),
            ("ClusterRoleBinding", "system:controller:namespace-controller"),
        ):
            self.assertIn(expected, names)

    def test_data_is_the_generators_output(self) -> None:
        """The shipped policy is exactly what tools/generate_rbac_policy.py writes."""
        import importlib.util
        from pathlib import Path

        root = Path(__file__).parent.parent
        spec = importlib.util.spec_from_file_location("gen", root / "tools/generate_rbac_policy.py")
        assert spec is not None and spec.loader is not None
        generator = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(generator)
        shipped = (root / "k3stw/apiserver/rbacpolicy.json.gz").read_bytes()
        self.assertEqual(generator.policy(root / "tools/rbacpolicy"), shipped)

    def test_reconcile_adds_never_removes(self) -> None:
        server = MemoryServer(self)
        server.run(bootstrap_policy(server.store))
        view = server.get("rbac.authorization.k8s.io", "clusterroles", "system:aggregate-to-view")
        extra = rule(["get"], ["crontabs"], ["stable.example.com"])
        view["rules"] = [extra, *view["rules"][1:]]  # a user's addition, and a lost rule
        server.run(
            server.store.update(
                server.resource("rbac.authorization.k8s.io", "clusterroles"),
                None,
                "system:aggregate-to-view",
                view,
            )
        )
        server.run(bootstrap_policy(server.store))
        after = server.get("rbac.authorization.k8s.io", "clusterroles", "system:aggregate-to-view")
        self.assertIn(extra, after["rules"])
        self.assertFalse(uncovered([Rule.of(r) for r in after["rules"]], view["rules"]))
        expected = next(o for o in policy() if o["metadata"]["name"] == "system:aggregate-to-view")
        self.assertIsNone(reconciled(after, expected))

    def test_autoupdate_false_left_alone(self) -> None:
        existing = {
            "metadata": {
                "name": "view",
                "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "false"},
            },
            "rules": [],
        }
        expected = next(o for o in policy() if o["metadata"]["name"] == "system:basic-user")
        merged = reconciled(existing, expected)
        assert merged is not None
        self.assertEqual(
            merged["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
            "false",
        )


#: kube 1.32's kube-controller-manager roles (its bootstrappolicy testdata,
#: controller-roles.yaml, with the default feature gates).
CONTROLLERS = (
    "attachdetach-controller",
    "certificate-controller",
    "clusterrole-aggregation-controller",
    "cronjob-controller",
    "daemon-set-controller",
    "deployment-controller",
    "disruption-controller",
    "endpoint-controller",
    "endpointslice-controller",
    "endpointslicemirroring-controller",
    "ephemeral-volume-controller",
    "expand-controller",
    "generic-garbage-collector",
    "horizontal-pod-autoscaler",
    "job-controller",
    "legacy-service-account-token-cleaner",
    "namespace-controller",
    "node-controller",
    "persistent-volume-binder",
    "pod-garbage-collector",
    "pv-protection-controller",
    "pvc-protection-controller",
    "replicaset-controller",
    "replication-controller",
    "resourcequota-controller",
    "root-ca-cert-publisher",
    "route-controller",
    "service-account-controller",
    "service-controller",
    "statefulset-controller",
    "ttl-after-finished-controller",
    "ttl-controller",
    "validatingadmissionpolicy-status-controller",
)


class ControllerRolesTests(APITestCase):
    """kube-controller-manager's ``system:controller:*`` roles, each bound to its ServiceAccount."""

    def names(self, path: str) -> list[str]:
        code, answer = self.ask(b"GET", path)
        self.assertEqual(code, 200, answer)
        return [item["metadata"]["name"] for item in answer["items"]]

    def test_deployment_controller_role_is_kubes(self) -> None:
        path = f"{RBAC}/clusterroles/system:controller:deployment-controller"
        code, role = self.ask(b"GET", path)
        self.assertEqual(code, 200, role)
        events = rule(["create", "patch", "update"], ["events"], ["", "events.k8s.io"])
        apps = ["apps", "extensions"]
        self.assertEqual(
            role["rules"],
            [
                rule(["get", "list", "update", "watch"], ["deployments"], apps),
                rule(["update"], ["deployments/status"], apps),
                rule(["update"], ["deployments/finalizers"], apps),
                rule(
                    ["create", "delete", "get", "list", "patch", "update", "watch"],
                    ["replicasets"],
                    apps,
                ),
                rule(["get", "list", "update", "watch"], ["pods"]),
                events,
            ],
        )
        self.assertEqual(
            role["metadata"]["labels"], {"kubernetes.io/bootstrapping": "rbac-defaults"}
        )
        self.assertEqual(
            role["metadata"]["annotations"], {"rbac.authorization.kubernetes.io/autoupdate": "true"}
        )

    def test_each_role_is_bound_to_its_service_account(self) -> None:
        code, answer = self.ask(b"GET", f"{RBAC}/clusterrolebindings")
        self.assertEqual(code, 200, answer)
        bindings = {item["metadata"]["name"]: item for item in answer["items"]}
        for controller in CONTROLLERS:
            binding = bindings[f"system:controller:{controller}"]
            self.assertEqual(
                binding["roleRef"],
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"system:controller:{controller}",
                },
            )
            self.assertEqual(
                binding["subjects"],
                [{"kind": "ServiceAccount", "name": controller, "namespace": "kube-system"}],
            )

    def test_controller_service_account_may_do_its_work_only(self) -> None:
        """The binding authorizes kube-system/deployment-controller as kube's role does."""
        groups = ["system:serviceaccounts", "system:serviceaccounts:kube-system"]
        user = "system:serviceaccount:kube-system:deployment-controller"
        for verb, resource, subresource, allowed in (
            ("update", "deployments", "status", True),
            ("create", "replicasets", "", True),
            ("delete", "deployments", "", False),
            ("get", "secrets", "", False),
        ):
            attributes = {
                "verb": verb,
                "group": "apps" if resource != "secrets" else "",
                "resource": resource,
                "subresource": subresource,
                "namespace": "default",
            }
            body = {"spec": {"user": user, "groups": groups, "resourceAttributes": attributes}}
            code, answer = self.ask(b"POST", f"{AUTHZ}/subjectaccessreviews", body)
            self.assertEqual((code, answer["status"]["allowed"]), (201, allowed), attributes)

    def test_controller_roles_are_kube_132s(self) -> None:
        """Those of 1.32's default feature gates: no DRA, ServiceCIDR or SELinux warning roles."""
        names = self.names(f"{RBAC}/clusterroles")
        controllers = sorted(n for n in names if n.startswith("system:controller:"))
        self.assertEqual(controllers, [f"system:controller:{c}" for c in CONTROLLERS])

    def test_counts_are_kube_132s_and_k3s(self) -> None:
        """
        ``kubectl get clusterroles`` lists kube 1.32's 64 bootstrap ClusterRoles
        (31 in cluster-roles.yaml, 33 in controller-roles.yaml) and k3s's
        ``system:k3s-controller``, metrics-server's
        ``system:aggregated-metrics-reader`` and k3stw's Ingress controller's
        ``k3stw:ingress-controller``; the bindings are kube's 45 (12 and 33),
        k3s's 2 and the Ingress controller's; the Roles and RoleBindings kube's 7 each.
        """
        self.assertEqual(len(self.names(f"{RBAC}/clusterroles")), 67)
        self.assertEqual(len(self.names(f"{RBAC}/clusterrolebindings")), 48)
        self.assertEqual(len(self.names(f"{RBAC}/roles")), 7)
        self.assertEqual(len(self.names(f"{RBAC}/rolebindings")), 7)


class ProtobufReviewTests(SynchronousTestCase):
    def test_kubectl_auth_can_i_body(self) -> None:
        """The protobuf SelfSubjectAccessReview kubectl 1.32 sends for ``auth can-i list pods``."""
        sent = bytes.fromhex(
            "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f763112"
            "1753656c665375626a6563744163636573735265766965771"
            "23d0a100a0012001a0022002a00320038004200121f0a1d0a0764656661756c74"
            "12046c6973741a0022002a04706f647332003a001a080800120"
            "01a0020001a002200"
        )
        self.assertEqual(
            decode_body(sent),
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {
                    "resourceAttributes": {
                        "namespace": "default",
                        "verb": "list",
                        "resource": "pods",
                    }
                },
            },
        )
