"""
What a service-account token claims, as kube-apiserver 1.32 writes it, and
what a verified token's claims are worth: pure functions of the claims and
the time.

A bound token (TokenRequest) carries ``iss``, ``sub``, ``aud``, ``exp``,
``iat``, ``nbf``, ``jti`` and ``kubernetes.io`` with the namespace, the
service account, and the pod, secret or node it is bound to (a pod's node
too).  A legacy token (a ``kubernetes.io/service-account-token`` Secret's)
carries ``iss: kubernetes/serviceaccount`` and four flat claims, and never
expires.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from k3stw.machinery.identity import CREDENTIAL_ID, User
from k3stw.machinery.objects import Object

LEGACY_ISSUER = "kubernetes/serviceaccount"
#: kube-apiserver's clock leeway (go-jose's default): a minute either way.
LEEWAY = 60
#: What kubelets ask for (an hour and 7 s): such pod-bound tokens are issued for a year,
#: with ``warnafter`` at the hour (``--service-account-extend-token-expiration``).
WARN_ONLY_EXPIRATION = 60 * 60 + 7
EXTENDED_EXPIRATION = 365 * 24 * 60 * 60

USERNAME_PREFIX = "system:serviceaccount:"
GROUP = "system:serviceaccounts"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
NODE_NAME = "authentication.kubernetes.io/node-name"
NODE_UID = "authentication.kubernetes.io/node-uid"

_LEGACY = "kubernetes.io/serviceaccount/"
LEGACY_NAMESPACE = _LEGACY + "namespace"
LEGACY_SECRET = _LEGACY + "secret.name"
LEGACY_NAME = _LEGACY + "service-account.name"
LEGACY_UID = _LEGACY + "service-account.uid"


class TokenError(Exception):
    """A token of this cluster that does not authenticate, in kube-apiserver's words."""


@dataclass(frozen=True)
class Ref:
    """An object a token names: its name and uid."""

    name: str
    uid: str

    @classmethod
    def of(cls, obj: Object) -> Ref:
        metadata = obj["metadata"]
        return cls(metadata["name"], metadata.get("uid", ""))

    @classmethod
    def read(cls, claim: Any) -> Ref | None:
        if not isinstance(claim, dict):
            return None
        return cls(str(claim.get("name") or ""), str(claim.get("uid") or ""))

    def claim(self) -> dict[str, str]:
        return {"name": self.name, "uid": self.uid}


def username(namespace: str, name: str) -> str:
    return f"{USERNAME_PREFIX}{namespace}:{name}"


def bound_claims(
    issuer: str,
    service_account: Object,
    audiences: Sequence[str],
    now: float,
    expiration_seconds: int,
    warn_after_seconds: int = 0,
    pod: Object | None = None,
    secret: Object | None = None,
    node: Object | None = None,
) -> dict[str, Any]:
    """
    The claims of a token C{service_account} requested at C{now}, bound to
    C{pod} (and the C{node} it runs on), C{secret}, or C{node} alone.
    """
    issued = int(now)
    account = Ref.of(service_account)
    namespace = service_account["metadata"]["namespace"]
    private: dict[str, Any] = {"namespace": namespace, "serviceaccount": account.claim()}
    if pod is not None:
        private["pod"] = Ref.of(pod).claim()
    if secret is not None:
        private["secret"] = Ref.of(secret).claim()
    if node is not None:
        private["node"] = Ref.of(node).claim()
    if warn_after_seconds:
        private["warnafter"] = issued + warn_after_seconds
    return {
        "aud": list(audiences),
        "exp": issued + expiration_seconds,
        "iat": issued,
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": private,
        "nbf": issued,
        "sub": username(namespace, account.name),
    }


def legacy_claims(service_account: Object, secret: Object) -> dict[str, Any]:
    """The claims of the token a ``kubernetes.io/service-account-token`` Secret holds."""
    account = Ref.of(service_account)
    namespace = service_account["metadata"]["namespace"]
    return {
        "iss": LEGACY_ISSUER,
        LEGACY_NAMESPACE: namespace,
        LEGACY_SECRET: secret["metadata"]["name"],
        LEGACY_NAME: account.name,
        LEGACY_UID: account.uid,
        "sub": username(namespace, account.name),
    }


@dataclass(frozen=True)
class Claimed:
    """
    Who a verified token names and what it is bound to; still to be checked
    against the objects it names (L{k3stw.apiserver.tokens.authenticator}).
    """

    namespace: str
    service_account: Ref
    audiences: tuple[str, ...]
    pod: Ref | None = None
    secret: Ref | None = None
    node: Ref | None = None
    #: A legacy token's Secret, which must still hold the very token.
    legacy_secret: str | None = None
    jti: str = ""

    def user(self) -> User:
        """The user the token authenticates, with kube-apiserver's groups and extra."""
        extra: dict[str, tuple[str, ...]] = {}
        if self.pod is not None:
            extra[POD_NAME] = (self.pod.name,)
            extra[POD_UID] = (self.pod.uid,)
        if self.jti:
            extra[CREDENTIAL_ID] = (f"JTI={self.jti}",)
        if self.node is not None and self.node.name:
            extra[NODE_NAME] = (self.node.name,)
            if self.node.uid:
                extra[NODE_UID] = (self.node.uid,)
        return User(
            username(self.namespace, self.service_account.name),
            (GROUP, f"{GROUP}:{self.namespace}"),
            self.service_account.uid,
            extra,
        )


def check_times(claims: dict[str, Any], now: float) -> None:
    """
    That a bound token's times hold at C{now}, give or take L{LEEWAY}.

    :raises TokenError: expired, not yet valid, or issued in the future.
    """
    times = {key: claims.get(key) for key in ("exp", "nbf", "iat")}
    if any(value is not None and not isinstance(value, int | float) for value in times.values()):
        raise TokenError("service account token claims could not be validated")
    expiry, not_before, issued = times["exp"], times["nbf"], times["iat"]
    if not_before is not None and now + LEEWAY < not_before:
        raise TokenError("service account token is not valid yet")
    if expiry is not None and now - LEEWAY > expiry:
        raise TokenError("service account token has expired")
    if issued is not None and now + LEEWAY < issued:
        raise TokenError(
            "service account token claims could not be validated due to unexpected validation error"
        )


def read_bound(claims: dict[str, Any]) -> Claimed:
    """
    What a verified bound token claims.

    :raises TokenError: it names no namespace or service account.
    """
    private = claims.get("kubernetes.io")
    account = Ref.read(private.get("serviceaccount")) if isinstance(private, dict) else None
    if not isinstance(private, dict) or account is None or not private.get("namespace"):
        raise TokenError("service account token claims could not be validated")
    audience = claims.get("aud")
    audiences = (audience,) if isinstance(audience, str) else tuple(audience or ())
    return Claimed(
        str(private["namespace"]),
        account,
        tuple(str(a) for a in audiences),
        pod=Ref.read(private.get("pod")),
        secret=Ref.read(private.get("secret")),
        node=Ref.read(private.get("node")),
        jti=str(claims.get("jti") or ""),
    )


def read_legacy(claims: dict[str, Any]) -> Claimed:
    """
    What a verified legacy token claims (it has no audience and never expires).

    :raises TokenError: a claim is missing or the subject does not match them.
    """
    for claim, name in (
        ("sub", "sub"),
        (LEGACY_NAMESPACE, "namespace"),
        (LEGACY_SECRET, "secretName"),
        (LEGACY_NAME, "serviceAccountName"),
        (LEGACY_UID, "serviceAccountUID"),
    ):
        if not isinstance(claims.get(claim), str) or not claims[claim]:
            raise TokenError(f"{name} claim is missing")
    namespace, name = claims[LEGACY_NAMESPACE], claims[LEGACY_NAME]
    if claims["sub"] != username(namespace, name):
        raise TokenError("sub claim is invalid")
    return Claimed(
        namespace, Ref(name, claims[LEGACY_UID]), (), legacy_secret=claims[LEGACY_SECRET]
    )
