"""
Service-account tokens against a real ``twistd -n k3s-server``: the real
kubectl (``create token``, ``--token``, ``auth whoami``, a token Secret) and
the Python client with a bearer token.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.postgres import fresh_database_name, shared_postgres
from tests.support.twistd import k3s_server
from tests.test_api_clients import HOST, ServerTestCase

#: How long a token that authenticated stays trusted (kube-apiserver's token cache), and a bit.
CACHE_WAIT = 15.0
SA_USER = "system:serviceaccount:default:default"
TOKEN_SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: default-token
  annotations:
    kubernetes.io/service-account.name: default
type: kubernetes.io/service-account-token
"""


def request_token(api: client.ApiClient, spec: client.V1TokenRequestSpec | None = None) -> str:
    """A token for ``default`` through the Python client (a JSON TokenRequest)."""
    answered = client.CoreV1Api(api).create_namespaced_service_account_token(
        "default",
        "default",
        client.AuthenticationV1TokenRequest(spec=spec or client.V1TokenRequestSpec(audiences=[])),
    )
    assert answered.status is not None and answered.status.token is not None
    token: str = answered.status.token
    return token


class TokenTests(ServerTestCase):
    def setUp(self) -> None:
        self.admin = self.root / "k3s.yaml"
        deadline = time.monotonic() + 30
        while self.kubectl(self.admin, "get", "serviceaccount", "default").returncode != 0:
            self.assertLess(time.monotonic(), deadline, "no default ServiceAccount")
            time.sleep(0.2)

    def ca(self) -> Path:
        return self.root / "data" / "server" / "tls" / "server-ca.crt"

    def token_kubeconfig(self, token: str, name: str) -> Path:
        """A kubeconfig that authenticates with C{token} alone (no client certificate)."""
        server_ca = base64.b64encode(self.ca().read_bytes()).decode()
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "k3s",
                    "cluster": {
                        "server": f"https://{HOST}:{self.port}",
                        "certificate-authority-data": server_ca,
                    },
                }
            ],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "k3s", "user": "sa"}}],
            "current-context": "sa",
        }
        path = self.root / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(document))
        return path

    def create_token(self, *args: str) -> str:
        """``kubectl create token default`` with C{args}."""
        made = self.kubectl(self.admin, "create", "token", "default", *args)
        self.assertEqual(made.returncode, 0, made.stderr)
        token: str = made.stdout.strip()
        return token

    def request_token(self, spec: client.V1TokenRequestSpec | None = None) -> str:
        with self.api() as api:
            return request_token(api, spec)

    def test_create_token_then_use_it(self) -> None:
        """
        ``kubectl create token`` issues a token kubectl then authenticates with: a
        request is forbidden (not unauthorized) naming the service account, until
        RBAC grants it more.
        """
        token = self.create_token("--audience", "k3s", "--duration", "20m")
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        self.assertEqual(claims["aud"], ["k3s"])
        self.assertEqual(claims["exp"] - claims["iat"], 1200)
        self.assertEqual(claims["sub"], SA_USER)
        user = self.token_kubeconfig(token, "create-token")
        denied = self.kubectl(user, "get", "configmaps", "-n", "kube-system")
        self.assertIn(f'configmaps is forbidden: User "{SA_USER}" cannot list', denied.stderr)

    def test_whoami(self) -> None:
        """``kubectl auth whoami`` of a certificate user, and of a token user."""
        admin = self.kubectl(self.admin, "auth", "whoami", "-o", "json")
        self.assertEqual(admin.returncode, 0, admin.stderr)
        info = json.loads(admin.stdout)["status"]["userInfo"]
        self.assertEqual(info["username"], "system:admin")
        self.assertEqual(info["groups"], ["system:masters", "system:authenticated"])
        user = self.token_kubeconfig(self.request_token(), "whoami")
        asked = self.kubectl(user, "auth", "whoami", "-o", "json")
        # Every authenticated user may ask who it is (system:basic-user).
        self.assertEqual(asked.returncode, 0, asked.stderr)
        info = json.loads(asked.stdout)["status"]["userInfo"]
        self.assertEqual(info["username"], SA_USER)
        self.assertIn("system:serviceaccounts:default", info["groups"])

    def test_auth_can_i_of_a_token_before_and_after_a_rolebinding(self) -> None:
        """A service account's token may what RBAC grants the account, no more."""
        made = self.kubectl(self.admin, "create", "serviceaccount", "reader")
        self.assertEqual(made.returncode, 0, made.stderr)
        issued = self.kubectl(self.admin, "create", "token", "reader")
        self.assertEqual(issued.returncode, 0, issued.stderr)
        user = self.token_kubeconfig(issued.stdout.strip(), "can-i")
        matrix = [
            (("list", "configmaps"), "no", "yes"),
            (("get", "secrets"), "no", "no"),
            (("create", "deployments.apps"), "no", "no"),
            (("list", "configmaps", "-n", "kube-system"), "no", "no"),
            (("create", "selfsubjectreviews.authentication.k8s.io"), "yes", "yes"),
        ]

        def can_i(*question: str) -> str:
            return str(self.kubectl(user, "auth", "can-i", *question).stdout.strip())

        self.assertEqual([can_i(*q) for q, _, _ in matrix], [before for _, before, _ in matrix])
        granted = self.kubectl(
            self.admin,
            "create",
            "rolebinding",
            "sa-reads-configmaps",
            "--clusterrole=view",
            "--serviceaccount=default:reader",
        )
        self.assertEqual(granted.returncode, 0, granted.stderr)
        view_has_configmaps = time.monotonic() + 30
        while can_i("list", "configmaps") != "yes":
            # The view role is aggregated by a controller; it may lag the first start.
            self.assertLess(time.monotonic(), view_has_configmaps, "view never allowed configmaps")
            time.sleep(0.2)
        self.assertEqual([can_i(*q) for q, _, _ in matrix], [after for _, _, after in matrix])
        listed = self.kubectl(user, "get", "configmaps")
        self.assertEqual(listed.returncode, 0, listed.stderr)

    def test_self_subject_review_of_the_admin(self) -> None:
        """What ``kubectl auth whoami`` asks, through the Python client (JSON)."""
        with self.api() as api:
            answered = client.AuthenticationV1Api(api).create_self_subject_review(
                client.V1SelfSubjectReview()
            )
        assert answered.status is not None and answered.status.user_info is not None
        info = answered.status.user_info
        self.assertEqual(info.username, "system:admin")
        self.assertEqual(info.groups, ["system:masters", "system:authenticated"])
        assert info.extra is not None
        credential = info.extra["authentication.kubernetes.io/credential-id"][0]
        self.assertRegex(credential, "^X509SHA256=[0-9a-f]{64}$")

    def test_too_short_a_duration(self) -> None:
        refused = self.kubectl(self.admin, "create", "token", "default", "--duration", "100s")
        self.assertIn(
            "spec.expirationSeconds: Invalid value: 100: may not specify a duration less than "
            "10 minutes",
            refused.stderr,
        )

    def test_bound_token_refused_once_its_pod_is_deleted(self) -> None:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "holder"},
            "spec": {
                "serviceAccountName": "default",
                "containers": [{"name": "main", "image": "busybox"}],
                "nodeName": "nowhere",
            },
        }
        made = self.kubectl(self.admin, "create", "-f", "-", stdin=json.dumps(pod))
        self.assertEqual(made.returncode, 0, made.stderr)
        reference = client.V1BoundObjectReference(kind="Pod", api_version="v1", name="holder")
        token = self.request_token(
            client.V1TokenRequestSpec(audiences=[], bound_object_ref=reference)
        )
        user = self.token_kubeconfig(token, "bound")
        self.assertIn("Forbidden", self.kubectl(user, "get", "configmaps").stderr)
        deleted = self.kubectl(self.admin, "delete", "pod", "holder", "--grace-period=0", "--force")
        self.assertEqual(deleted.returncode, 0, deleted.stderr)
        time.sleep(CACHE_WAIT)
        refused = self.kubectl(user, "get", "configmaps")
        self.assertIn("error: You must be logged in to the server (Unauthorized)", refused.stderr)

    def test_token_secret_filled_in(self) -> None:
        """A ``kubernetes.io/service-account-token`` Secret naming ``default`` (as documented)."""
        made = self.kubectl(self.admin, "apply", "-f", "-", stdin=TOKEN_SECRET)
        self.assertEqual(made.returncode, 0, made.stderr)
        deadline = time.monotonic() + 15
        while True:
            got = self.kubectl(self.admin, "get", "secret", "default-token", "-o", "json")
            data = json.loads(got.stdout).get("data") or {}
            if "token" in data:
                break
            self.assertLess(time.monotonic(), deadline, got.stdout)
            time.sleep(0.2)
        self.assertEqual(base64.b64decode(data["ca.crt"]), self.ca().read_bytes())
        self.assertEqual(base64.b64decode(data["namespace"]), b"default")
        user = self.token_kubeconfig(base64.b64decode(data["token"]).decode(), "legacy")
        self.assertIn(f'User "{SA_USER}"', self.kubectl(user, "get", "configmaps").stderr)

    def test_python_client_with_a_bearer_token(self) -> None:
        """The Python client's ``api_key``: authenticated as the service account."""
        token = self.request_token()
        configuration = client.Configuration()
        configuration.host = f"https://{HOST}:{self.port}"
        configuration.ssl_ca_cert = str(self.ca())
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        with client.ApiClient(configuration) as api:
            review = client.AuthenticationV1Api(api)
            try:
                answered = review.create_self_subject_review(client.V1SelfSubjectReview())
            except ApiException as e:
                self.assertEqual(e.status, 403, e.body)
                self.assertIn(f'User \\"{SA_USER}\\"', e.body)
            else:
                assert answered.status is not None and answered.status.user_info is not None
                self.assertEqual(answered.status.user_info.username, SA_USER)
            configuration.api_key = {"authorization": token + "x"}
            with self.assertRaises(ApiException) as refused:
                client.CoreV1Api(api).list_namespaced_config_map("default")
            self.assertEqual(refused.exception.status, 401)


class SharedServiceKeyTests(SynchronousTestCase):
    """Two servers on one PostgreSQL share service.key: either verifies the other's tokens."""

    def test_token_of_one_server_authenticates_on_the_other(self) -> None:
        endpoint = shared_postgres().endpoint(fresh_database_name("tokens"))
        root = Path(self.mktemp()).absolute()
        kubeconfigs = []
        for name, host in (("one", "127.0.0.28"), ("two", "127.0.0.29")):
            port = free_port(host)
            server = k3s_server(
                self, root / name, host, port, "--disable-agent", "--datastore-endpoint",
                endpoint, "--token", "shared-token-secret",
            ).start()  # fmt: skip
            server.wait_for_answer(host, port)
            server.wait_for_output("k3s is up and running")
            kubeconfigs.append(str(root / name / "k3s.yaml"))
        keys = {
            (root / name / "data/server/tls/service.key").read_bytes() for name in ("one", "two")
        }
        self.assertEqual(len(keys), 1)
        with config.new_client_from_config(config_file=kubeconfigs[0]) as api:
            deadline = time.monotonic() + 30
            while True:
                try:
                    token = request_token(api)
                    break
                except ApiException as e:
                    # The default ServiceAccount comes with the first server's controllers.
                    self.assertEqual(e.status, 404, e.body)
                    self.assertLess(time.monotonic(), deadline)
                    time.sleep(0.2)
        with config.new_client_from_config(config_file=kubeconfigs[1]) as api:
            review = client.AuthenticationV1Api(api).create_token_review(
                client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
            )
        assert review.status is not None and review.status.user is not None
        self.assertTrue(review.status.authenticated)
        self.assertEqual(review.status.user.username, SA_USER)
