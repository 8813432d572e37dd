"""
Service-account tokens through the API in memory: TokenRequest, bearer-token
authentication, TokenReview, SelfSubjectReview, and the legacy token Secrets'
controller, on a Clock.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.tokens.authenticator import CACHE_SECONDS, ServiceAccountTokens
from k3stw.apiserver.tokens.claims import LEEWAY, bound_claims
from k3stw.apiserver.tokens.keys import ServiceAccountKeys, key_id
from k3stw.apiserver.tokens.request import TokenIssuer
from k3stw.apiserver.tokens.reviews import authentication_reviews
from k3stw.controllers.legacytokens import LegacyTokenController
from k3stw.machinery.identity import User
from k3stw.machinery.objects import Object
from k3stw.machinery.times import rfc3339
from k3stw.pki.certs import private_pem
from tests.support.apiserver import START, MemoryAPI, MemoryServer

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCES = (ISSUER, "k3s")
ADMIN = User("system:admin", ("system:masters",))
CA_BUNDLE = b"-----BEGIN CERTIFICATE-----\nthe cluster CA\n-----END CERTIFICATE-----\n"
TOKEN_PATH = "/api/v1/namespaces/default/serviceaccounts/{}/token"
REVIEWS = "/apis/authentication.k8s.io/v1/"


@functools.cache
def rsa_key(which: str) -> rsa.RSAPrivateKey:
    """One RSA key per name, made once for the whole run (making one takes a while)."""
    return rsa.generate_private_key(65537, 2048)


def cluster_keys() -> ServiceAccountKeys:
    return ServiceAccountKeys.from_pem(private_pem(rsa_key("cluster")))


def payload(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def pod(name: str, account: str = "robot", node: str | None = None) -> Object:
    spec: dict[str, Any] = {
        "serviceAccountName": account,
        "containers": [{"name": "main", "image": "busybox"}],
    }
    if node is not None:
        spec["nodeName"] = node
    return {"metadata": {"name": name}, "spec": spec}


class TokenTestCase(SynchronousTestCase):
    """A server in memory with the token machinery, an admin, and service account robot."""

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.keys = cluster_keys()
        self.tokens = ServiceAccountTokens(
            self.keys, self.server.store, self.server.clock, ISSUER, AUDIENCES
        )
        self.api = MemoryAPI(
            self.server,
            {"admin-token": ADMIN},
            authentication_reviews(self.tokens),
            self.tokens,
            TokenIssuer(self.keys, self.server.clock, ISSUER, AUDIENCES),
        )
        self.robot = self.server.create(
            "", "serviceaccounts", {"metadata": {"name": "robot"}}, "default"
        )

    def request_token(self, account: str = "robot", spec: Object | None = None) -> tuple[int, Any]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": spec or {},
        }
        return self.api.request(b"POST", TOKEN_PATH.format(account), body)

    def token(self, account: str = "robot", spec: Object | None = None) -> str:
        code, answered = self.request_token(account, spec)
        self.assertEqual(code, 201, answered)
        token: str = answered["status"]["token"]
        return token

    def who(self, token: str) -> tuple[int, str]:
        """The code and message of a request with C{token}: 403 names the user it authenticated."""
        code, status = self.api.request(
            b"GET", "/api/v1/namespaces/default/configmaps", token=token
        )
        return code, status["message"]

    def review(self, token: str, audiences: list[str] | None = None) -> Any:
        spec: dict[str, Any] = {"token": token}
        if audiences is not None:
            spec["audiences"] = audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        code, answered = self.api.request(b"POST", REVIEWS + "tokenreviews", body)
        self.assertEqual(code, 201, answered)
        return answered["status"]

    def later(self, seconds: float) -> None:
        """Let C{seconds} pass (past the cache of tokens that authenticated, if longer)."""
        self.server.clock.advance(seconds)

    def assertRefused(self, token: str, error: str) -> None:
        self.later(CACHE_SECONDS + 1)
        self.assertEqual(self.who(token), (401, "Unauthorized"))
        self.assertEqual(self.review(token), {"user": {}, "error": error})


ROBOT_FORBIDDEN = (
    403,
    'configmaps is forbidden: User "system:serviceaccount:default:robot" cannot list resource '
    '"configmaps" in API group "" in the namespace "default"',
)


class TokenRequestTests(TokenTestCase):
    def test_token_as_kube_apiserver_issues_it(self) -> None:
        """Claims, header and answer of a TokenRequest with the defaults."""
        code, answered = self.request_token()
        self.assertEqual(code, 201)
        self.assertEqual(answered["kind"], "TokenRequest")
        self.assertEqual(answered["metadata"]["name"], "robot")
        self.assertEqual(
            answered["spec"], {"audiences": list(AUDIENCES), "expirationSeconds": 3600}
        )
        self.assertEqual(answered["status"]["expirationTimestamp"], rfc3339(START + 3600))
        token = answered["status"]["token"]
        header = jwt.get_unverified_header(token)
        self.assertEqual(header, {"alg": "RS256", "kid": key_id(rsa_key("cluster").public_key())})
        claims = payload(token)
        jti = claims.pop("jti")
        self.assertRegex(jti, r"^[0-9a-f-]{36}$")
        self.assertEqual(
            claims,
            {
                "aud": list(AUDIENCES),
                "exp": int(START) + 3600,
                "iat": int(START),
                "nbf": int(START),
                "iss": ISSUER,
                "sub": "system:serviceaccount:default:robot",
                "kubernetes.io": {
                    "namespace": "default",
                    "serviceaccount": {"name": "robot", "uid": self.robot["metadata"]["uid"]},
                },
            },
        )

    def test_too_short(self) -> None:
        code, status = self.request_token(spec={"expirationSeconds": 100})
        self.assertEqual(code, 422)
        self.assertEqual(
            status["message"],
            'TokenRequest.authentication.k8s.io "robot" is invalid: spec.expirationSeconds: '
            "Invalid value: 100: may not specify a duration less than 10 minutes",
        )

    def test_too_long(self) -> None:
        code, status = self.request_token(spec={"expirationSeconds": (1 << 32) + 1})
        self.assertEqual(code, 422)
        self.assertIn("may not specify a duration larger than 2^32 seconds", status["message"])

    def test_unknown_service_account(self) -> None:
        code, status = self.request_token("nobody")
        self.assertEqual((code, status["message"]), (404, 'serviceaccounts "nobody" not found'))

    def test_name_in_body_must_match(self) -> None:
        body = {"metadata": {"name": "other"}, "spec": {}}
        code, status = self.api.request(b"POST", TOKEN_PATH.format("robot"), body)
        self.assertEqual(code, 422)
        self.assertIn(
            'metadata.name: Invalid value: "other": must match the service account name if '
            "specified",
            status["message"],
        )

    def test_bound_to_an_unbindable_kind(self) -> None:
        ref = {"kind": "Deployment", "apiVersion": "apps/v1", "name": "web"}
        code, status = self.request_token(spec={"boundObjectRef": ref})
        self.assertEqual(
            (code, status["message"]),
            (400, "cannot bind token to object of type apps/v1, Kind=Deployment"),
        )

    def test_bound_to_a_missing_pod(self) -> None:
        ref = {"kind": "Pod", "apiVersion": "v1", "name": "ghost"}
        code, status = self.request_token(spec={"boundObjectRef": ref})
        self.assertEqual((code, status["message"]), (404, 'pods "ghost" not found'))

    def test_bound_to_a_pod_of_another_uid(self) -> None:
        self.server.create("", "pods", pod("p"), "default")
        ref = {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "not-its-uid"}
        code, status = self.request_token(spec={"boundObjectRef": ref})
        self.assertEqual(code, 409)
        self.assertEqual(
            status["message"],
            'Operation cannot be fulfilled on Pod "p": the UID in the bound object reference '
            "(not-its-uid) does not match the UID in record. The object might have been "
            "deleted and then recreated",
        )

    def test_bound_to_a_pod_of_another_account(self) -> None:
        self.server.create("", "pods", pod("p", account="default"), "default")
        ref = {"kind": "Pod", "apiVersion": "v1", "name": "p"}
        code, status = self.request_token(spec={"boundObjectRef": ref})
        self.assertEqual(code, 400)
        self.assertEqual(
            status["message"],
            'cannot bind token for serviceaccount "robot" to pod running with serviceaccount '
            '"default"',
        )

    def test_kubelet_token_lasts_a_year_and_warns_after_the_hour(self) -> None:
        """A pod-bound token for 3607 s is issued for a year, as kube-apiserver extends it."""
        self.server.create("", "pods", pod("p"), "default")
        ref = {"kind": "Pod", "apiVersion": "v1", "name": "p"}
        code, answered = self.request_token(spec={"boundObjectRef": ref, "expirationSeconds": 3607})
        self.assertEqual(code, 201)
        self.assertEqual(answered["status"]["expirationTimestamp"], rfc3339(START + 3607))
        claims = payload(answered["status"]["token"])
        self.assertEqual(claims["exp"] - claims["iat"], 365 * 24 * 3600)
        self.assertEqual(claims["kubernetes.io"]["warnafter"], claims["iat"] + 3607)


class AuthenticationTests(TokenTestCase):
    def test_token_authenticates_as_its_service_account(self) -> None:
        """Authenticated (not authorized: only the masters are, on this branch)."""
        self.assertEqual(self.who(self.token()), ROBOT_FORBIDDEN)

    def test_user_as_kube_apiserver_makes_it(self) -> None:
        token = self.token()
        found = self.server.run(self.tokens.authenticate(token))
        assert found is not None
        self.assertEqual(found.audiences, AUDIENCES)
        user = found.user
        self.assertEqual(user.name, "system:serviceaccount:default:robot")
        self.assertEqual(user.groups, ("system:serviceaccounts", "system:serviceaccounts:default"))
        self.assertEqual(user.uid, self.robot["metadata"]["uid"])
        jti = payload(token)["jti"]
        self.assertEqual(
            user.extra, {"authentication.kubernetes.io/credential-id": (f"JTI={jti}",)}
        )

    def test_expired_after_the_leeway(self) -> None:
        token = self.token()
        self.later(3600 + LEEWAY - 1)
        self.assertEqual(self.who(token), ROBOT_FORBIDDEN)
        self.later(2)
        self.assertEqual(self.who(token), (401, "Unauthorized"))
        self.assertEqual(
            self.review(token), {"user": {}, "error": "service account token has expired"}
        )

    def test_not_valid_yet(self) -> None:
        account = self.robot
        claims = bound_claims(ISSUER, account, AUDIENCES, START + 3600, 3600)
        self.assertRefused(self.keys.sign(claims), "service account token is not valid yet")

    def test_other_audience_is_not_the_apis(self) -> None:
        token = self.token(spec={"audiences": ["vault"]})
        self.assertEqual(self.who(token), (401, "Unauthorized"))
        self.assertEqual(
            self.review(token)["error"],
            'token audiences ["vault"] is invalid for the target audiences '
            '["https://kubernetes.default.svc.cluster.local" "k3s"]',
        )
        # Whoever it is for may ask whether it authenticates for them.
        status = self.review(token, ["vault"])
        self.assertEqual((status["authenticated"], status["audiences"]), (True, ["vault"]))

    def test_tampered_token(self) -> None:
        head, body, signature = self.token().split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=="))
        claims["sub"] = "system:serviceaccount:kube-system:admin"
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        self.assertRefused(
            f"{head}.{forged}.{signature}", "no service-account key verifies the signature"
        )

    def test_another_clusters_key(self) -> None:
        other = ServiceAccountKeys.from_pem(private_pem(rsa_key("other cluster")))
        token = other.sign(bound_claims(ISSUER, self.robot, AUDIENCES, START, 3600))
        self.assertRefused(token, "no service-account key verifies the signature")

    def test_key_being_rotated_out_still_verifies(self) -> None:
        """Every key in service.key verifies; the first signs."""
        old = private_pem(rsa_key("cluster"))
        rotated = ServiceAccountKeys.from_pem(private_pem(rsa_key("new")) + old)
        self.tokens.keys = rotated
        self.assertEqual(
            self.who(self.keys.sign(bound_claims(ISSUER, self.robot, AUDIENCES, START, 3600))),
            ROBOT_FORBIDDEN,
        )

    def test_not_a_token_of_this_cluster(self) -> None:
        self.assertEqual(self.who("not-a-jwt"), (401, "Unauthorized"))
        self.assertEqual(self.review("not-a-jwt"), {"user": {}, "error": "invalid bearer token"})

    def test_service_account_deleted(self) -> None:
        token = self.token()
        self.server.delete("", "serviceaccounts", "robot", "default")
        self.assertRefused(token, 'serviceaccounts "robot" not found')

    def test_service_account_replaced(self) -> None:
        token = self.token()
        self.server.delete("", "serviceaccounts", "robot", "default")
        again = self.server.create(
            "", "serviceaccounts", {"metadata": {"name": "robot"}}, "default"
        )
        self.assertRefused(
            token,
            f"service account UID ({again['metadata']['uid']}) does not match claim "
            f"({self.robot['metadata']['uid']})",
        )

    def test_a_working_token_is_trusted_for_ten_seconds(self) -> None:
        """As kube-apiserver's token cache: no reads for a busy client."""
        token = self.token()
        self.assertEqual(self.who(token), ROBOT_FORBIDDEN)
        self.server.delete("", "serviceaccounts", "robot", "default")
        self.later(CACHE_SECONDS - 1)
        self.assertEqual(self.who(token), ROBOT_FORBIDDEN)
        self.later(2)
        self.assertEqual(self.who(token), (401, "Unauthorized"))

    def test_refusals_logged_at_most_once_a_minute(self) -> None:
        with capturedLogs() as events:
            for _ in range(5):
                self.who("not-a-jwt")
            self.later(61)
            self.who("not-a-jwt")
        refusals = [e for e in events if "Unable to authenticate" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in refusals], [1, 5])


class BoundTokenTests(TokenTestCase):
    def bound(self, kind: str, name: str) -> str:
        return self.token(spec={"boundObjectRef": {"kind": kind, "apiVersion": "v1", "name": name}})

    def test_pod_bound_token_names_its_pod_and_node(self) -> None:
        node = self.server.create("", "nodes", {"metadata": {"name": "n1"}})
        p = self.server.create("", "pods", pod("p", node="n1"), "default")
        token = self.bound("Pod", "p")
        private = payload(token)["kubernetes.io"]
        self.assertEqual(private["pod"], {"name": "p", "uid": p["metadata"]["uid"]})
        self.assertEqual(private["node"], {"name": "n1", "uid": node["metadata"]["uid"]})
        status = self.review(token)
        self.assertEqual(
            {k: v for k, v in status["user"]["extra"].items() if "credential" not in k},
            {
                "authentication.kubernetes.io/pod-name": ["p"],
                "authentication.kubernetes.io/pod-uid": [p["metadata"]["uid"]],
                "authentication.kubernetes.io/node-name": ["n1"],
                "authentication.kubernetes.io/node-uid": [node["metadata"]["uid"]],
            },
        )

    def test_refused_once_its_pod_is_deleted(self) -> None:
        self.server.create("", "pods", pod("p"), "default")
        token = self.bound("Pod", "p")
        self.assertEqual(self.who(token), ROBOT_FORBIDDEN)
        self.server.delete("", "pods", "p", "default")
        self.assertRefused(token, "service account token has been invalidated")

    def test_refused_once_its_pod_is_replaced(self) -> None:
        first = self.server.create("", "pods", pod("p"), "default")
        token = self.bound("Pod", "p")
        self.server.delete("", "pods", "p", "default")
        second = self.server.create("", "pods", pod("p"), "default")
        self.assertRefused(
            token,
            f"pod UID ({second['metadata']['uid']}) does not match service account pod ref "
            f"claim ({first['metadata']['uid']})",
        )

    def test_refused_once_its_secret_is_deleted(self) -> None:
        self.server.create("", "secrets", {"metadata": {"name": "s"}}, "default")
        token = self.bound("Secret", "s")
        self.assertEqual(self.who(token), ROBOT_FORBIDDEN)
        self.server.delete("", "secrets", "s", "default")
        self.assertRefused(token, "service account token has been invalidated")

    def test_refused_once_its_node_is_deleted(self) -> None:
        self.server.create("", "nodes", {"metadata": {"name": "n1"}})
        token = self.bound("Node", "n1")
        self.assertEqual(self.who(token), ROBOT_FORBIDDEN)
        self.server.delete("", "nodes", "n1")
        self.assertRefused(token, "service account token has been invalidated")


class ReviewTests(TokenTestCase):
    def test_token_review_of_a_good_token(self) -> None:
        status = self.review(self.token())
        self.assertEqual(status["authenticated"], True)
        self.assertEqual(status["audiences"], list(AUDIENCES))
        user = status["user"]
        self.assertEqual(user["username"], "system:serviceaccount:default:robot")
        self.assertEqual(user["uid"], self.robot["metadata"]["uid"])
        self.assertEqual(
            user["groups"],
            ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"],
        )

    def test_token_review_without_a_token(self) -> None:
        code, status = self.api.request(b"POST", REVIEWS + "tokenreviews", {"spec": {}})
        self.assertEqual(
            (code, status["message"]),
            (400, "token is required for TokenReview in authentication.k8s.io/__internal"),
        )

    def test_self_subject_review(self) -> None:
        """kubectl auth whoami: the asking user, in system:authenticated."""
        code, answered = self.api.request(b"POST", REVIEWS + "selfsubjectreviews", {})
        self.assertEqual(code, 201)
        self.assertEqual(
            answered["status"],
            {
                "userInfo": {
                    "username": "system:admin",
                    "groups": ["system:masters", "system:authenticated"],
                }
            },
        )


class LegacyTokenTests(TokenTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server.start(
            LegacyTokenController(self.server.informers, self.server.store, self.keys, CA_BUNDLE)
        )

    def secret(self, name: str = "robot-token", account: str = "robot") -> Object:
        """A token Secret for C{account}, as the controller left it (if it did)."""
        obj = {
            "metadata": {
                "name": name,
                "annotations": {"kubernetes.io/service-account.name": account},
            },
            "type": "kubernetes.io/service-account-token",
        }
        created = self.server.create("", "secrets", obj, "default")
        if not self.server.exists("", "secrets", name, "default"):
            return created
        return self.server.get("", "secrets", name, "default")

    def legacy_token(self) -> str:
        return base64.b64decode(self.secret()["data"]["token"]).decode()

    def test_secret_filled_in(self) -> None:
        secret = self.secret()
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        self.assertEqual(data["ca.crt"], CA_BUNDLE)
        self.assertEqual(data["namespace"], b"default")
        annotations = secret["metadata"]["annotations"]
        self.assertEqual(
            annotations["kubernetes.io/service-account.uid"], self.robot["metadata"]["uid"]
        )
        self.assertEqual(
            payload(data["token"].decode()),
            {
                "iss": "kubernetes/serviceaccount",
                "kubernetes.io/serviceaccount/namespace": "default",
                "kubernetes.io/serviceaccount/secret.name": "robot-token",
                "kubernetes.io/serviceaccount/service-account.name": "robot",
                "kubernetes.io/serviceaccount/service-account.uid": self.robot["metadata"]["uid"],
                "sub": "system:serviceaccount:default:robot",
            },
        )

    def test_legacy_token_authenticates_and_is_marked_used(self) -> None:
        token = self.legacy_token()
        self.assertEqual(self.who(token), ROBOT_FORBIDDEN)
        labels = self.server.get("", "secrets", "robot-token", "default")["metadata"]["labels"]
        self.assertEqual(labels, {"kubernetes.io/legacy-token-last-used": "2027-01-15"})
        status = self.review(token)
        self.assertEqual(status["user"]["uid"], self.robot["metadata"]["uid"])
        self.assertNotIn("extra", status["user"])

    def test_refused_once_its_secret_is_deleted(self) -> None:
        token = self.legacy_token()
        self.server.delete("", "secrets", "robot-token", "default")
        self.assertRefused(token, "Token has been invalidated")

    def test_refused_when_the_secret_holds_another_token(self) -> None:
        token = self.legacy_token()

        def swap(secret: Object) -> Object:
            secret["data"]["token"] = base64.b64encode(b"another").decode()
            return secret

        resource = self.server.resource("", "secrets")
        self.server.run(
            self.server.store.guaranteed_update(resource, "default", "robot-token", swap)
        )
        self.assertRefused(token, "Token does not match server's copy")

    def test_secret_of_a_missing_account_is_deleted(self) -> None:
        self.secret("lost-token", account="nobody")
        self.assertFalse(self.server.exists("", "secrets", "lost-token", "default"))

    def test_secret_naming_no_account_is_left_alone(self) -> None:
        obj = {"metadata": {"name": "unnamed"}, "type": "kubernetes.io/service-account-token"}
        self.server.create("", "secrets", obj, "default")
        self.assertNotIn("data", self.server.get("", "secrets", "unnamed", "default"))

    def test_secret_goes_with_its_account(self) -> None:
        self.secret()
        self.server.delete("", "serviceaccounts", "robot", "default")
        self.assertFalse(self.server.exists("", "secrets", "robot-token", "default"))


class KeyTests(SynchronousTestCase):
    def test_key_id_is_kubes(self) -> None:
        """base64url(SHA-256(DER SubjectPublicKeyInfo)), unpadded: 43 characters."""
        self.assertRegex(key_id(rsa_key("cluster").public_key()), r"^[A-Za-z0-9_-]{43}$")

    def test_only_rsa_keys(self) -> None:
        ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        self.assertRaises(ValueError, ServiceAccountKeys.from_pem, ec_pem)
        public_only = (
            rsa_key("cluster")
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.assertRaises(ValueError, ServiceAccountKeys.from_pem, public_only)
