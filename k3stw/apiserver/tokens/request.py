"""
``serviceaccounts/<name>/token`` (TokenRequest, ``kubectl create token``):
a token for the service account, for the audiences asked (the API's by
default), for ``expirationSeconds`` (an hour by default, ten minutes at
least), optionally bound to a Pod, Secret or Node that must exist (and have
the uid given), so that the token dies with it.  Nothing is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.kinds import nodes, pods, secrets, serviceaccounts
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError, bad_request, invalid
from k3stw.apiserver.storage import ObjectStore
from k3stw.apiserver.tokens.claims import (
    EXTENDED_EXPIRATION,
    WARN_ONLY_EXPIRATION,
    bound_claims,
)
from k3stw.apiserver.tokens.keys import ServiceAccountKeys
from k3stw.machinery.objects import Object
from k3stw.machinery.times import rfc3339

KIND = "TokenRequest"
API_VERSION = "authentication.k8s.io/v1"
#: What ``expirationSeconds`` defaults to, and its bounds.
DEFAULT_EXPIRATION = 60 * 60
MIN_EXPIRATION = 10 * 60
MAX_EXPIRATION = 1 << 32
#: The objects a token may be bound to, by kind (all core/v1).
BINDABLE: dict[str, ResourceType] = {
    "Pod": pods.RESOURCE,
    "Secret": secrets.RESOURCE,
    "Node": nodes.RESOURCE,
}


class TokenIssuer:
    """Answers TokenRequests with tokens signed by the cluster's service-account key."""

    def __init__(
        self,
        keys: ServiceAccountKeys,
        clock: IReactorTime,
        issuer: str,
        audiences: Sequence[str],
        extend_expiration: bool = True,
    ) -> None:
        """
        :param audiences: the API's, given to tokens that ask for none.
        :param extend_expiration: issue kubelets' pod-bound hour-long tokens for a
            year, warning after the hour (``--service-account-extend-token-expiration``).
        """
        self.keys = keys
        self.clock = clock
        self.issuer = issuer
        self.audiences = tuple(audiences)
        self.extend_expiration = extend_expiration

    async def __call__(self, store: ObjectStore, namespace: str, name: str, body: Any) -> Object:
        """The answered TokenRequest C{body} for service account C{name} (201)."""
        request = _checked(body, namespace, name)
        spec = request["spec"]
        account = await store.get(serviceaccounts.RESOURCE, namespace, name)
        request["metadata"]["creationTimestamp"] = rfc3339(self.clock.seconds())
        spec["audiences"] = spec.get("audiences") or list(self.audiences)
        bound: dict[str, Object] = {}
        reference = spec.get("boundObjectRef")
        if reference is not None:
            bound = await _bound_objects(store, namespace, name, reference)
        expiration = spec["expirationSeconds"]
        warn_after = 0
        if (
            self.extend_expiration
            and "pod" in bound
            and expiration == WARN_ONLY_EXPIRATION
            and set(spec["audiences"]) <= set(self.audiences)
        ):
            warn_after, expiration = expiration, EXTENDED_EXPIRATION
        now = self.clock.seconds()
        claims = bound_claims(
            self.issuer,
            account,
            spec["audiences"],
            now,
            expiration,
            warn_after,
            pod=bound.get("pod"),
            secret=bound.get("secret"),
            node=bound.get("node"),
        )
        request["status"] = {
            "token": self.keys.sign(claims),
            # The time asked for, even where the token itself lasts longer (kube does so).
            "expirationTimestamp": rfc3339(int(now) + spec["expirationSeconds"]),
        }
        return request


async def restrict_node_token(
    store: ObjectStore, node: str, namespace: str, account: str, body: Any
) -> None:
    """
    NodeRestriction for a kubelet's TokenRequest: the token must be bound to a
    pod (by name and uid) that is scheduled on the asking node.

    :raises StatusError: 403 in kube's words, or the pod's 404.
    """

    def forbidden(reason: str) -> StatusError:
        return StatusError(
            403,
            f'serviceaccounts "{account}" is forbidden: {reason}',
            {"name": account, "kind": "serviceaccounts"},
        )

    spec = body.get("spec") if isinstance(body, dict) else None
    reference = spec.get("boundObjectRef") if isinstance(spec, dict) else None
    if (
        not isinstance(reference, dict)
        or reference.get("apiVersion") != "v1"
        or reference.get("kind") != "Pod"
        or not reference.get("name")
    ):
        raise forbidden("node requested token not bound to a pod")
    uid = reference.get("uid")
    if not uid:
        raise forbidden("node requested token with a pod binding without a uid")
    pod = await store.get(pods.RESOURCE, namespace, str(reference["name"]))
    if pod["metadata"].get("uid") != uid:
        raise forbidden(
            f"the UID in the bound object reference ({uid}) does not match the UID in record. "
            "The object might have been deleted and then recreated"
        )
    if (pod.get("spec") or {}).get("nodeName") != node:
        raise forbidden("node requested token bound to a pod scheduled on a different node")


def _checked(body: Any, namespace: str, name: str) -> Object:
    """C{body} as a TokenRequest with its defaults, or kube-apiserver's refusal."""
    if not isinstance(body, dict):
        raise bad_request("the body of the request must be a TokenRequest")
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if kind not in (None, KIND) or api_version not in (None, API_VERSION):
        raise bad_request(
            f"the body of the request was of kind {api_version}, Kind={kind}, "
            f"expected {API_VERSION}, Kind={KIND}"
        )
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    if not isinstance(metadata, dict) or not isinstance(spec, dict):
        raise bad_request("metadata and spec must be objects")
    causes: list[tuple[str, str]] = []
    given_name, given_namespace = metadata.get("name"), metadata.get("namespace")
    if given_name and given_name != name:
        causes.append(
            (
                "metadata.name",
                f'Invalid value: "{given_name}": must match the service account name if specified',
            )
        )
    if given_namespace and given_namespace != namespace:
        causes.append(
            (
                "metadata.namespace",
                f'Invalid value: "{given_namespace}": must match the service account '
                "namespace if specified",
            )
        )
    audiences = spec.get("audiences")
    if audiences is not None and (
        not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences)
    ):
        causes.append(
            ("spec.audiences", "Invalid value: spec.audiences in body must be of type array")
        )
    expiration = spec.setdefault("expirationSeconds", DEFAULT_EXPIRATION)
    if not isinstance(expiration, int) or isinstance(expiration, bool):
        causes.append(
            (
                "spec.expirationSeconds",
                f'Invalid value: "{type(expiration).__name__}": spec.expirationSeconds in body '
                "must be of type integer",
            )
        )
    elif expiration < MIN_EXPIRATION:
        causes.append(
            (
                "spec.expirationSeconds",
                f"Invalid value: {expiration}: may not specify a duration less than 10 minutes",
            )
        )
    elif expiration > MAX_EXPIRATION:
        causes.append(
            (
                "spec.expirationSeconds",
                f"Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds",
            )
        )
    reference = spec.get("boundObjectRef")
    if reference is not None and (
        not isinstance(reference, dict) or not isinstance(reference.get("name"), str)
    ):
        causes.append(("spec.boundObjectRef.name", "Required value"))
    if causes:
        raise invalid(f"{KIND}.authentication.k8s.io", name, causes)
    return {
        "kind": KIND,
        "apiVersion": API_VERSION,
        "metadata": {**metadata, "name": name, "namespace": namespace},
        "spec": spec,
    }


async def _bound_objects(
    store: ObjectStore, namespace: str, account: str, reference: Object
) -> dict[str, Object]:
    """
    What the token is bound to, by claim (``pod`` and its ``node``, ``secret``,
    or ``node``): the objects must exist, with the uid the reference gives.
    """
    kind, api_version = reference.get("kind") or "", reference.get("apiVersion") or ""
    group, _, version = api_version.rpartition("/")
    resource = BINDABLE.get(kind) if not group else None
    if resource is None:
        prefix = f"{group}/{version}" if group else f"/{version}"
        raise bad_request(f"cannot bind token to object of type {prefix}, Kind={kind}")
    name = reference["name"]
    obj = await store.get(resource, namespace if resource.namespaced else None, name)
    uid = obj["metadata"].get("uid", "")
    given = reference.get("uid")
    if given and given != uid:
        raise StatusError(
            409,
            f'Operation cannot be fulfilled on {kind} "{name}": the UID in the bound object '
            f"reference ({given}) does not match the UID in record. The object might have "
            "been deleted and then recreated",
            {"name": name, "kind": kind},
            reason="Conflict",
        )
    if kind != "Pod":
        return {kind.lower(): obj}
    spec = obj.get("spec") or {}
    runs_as = spec.get("serviceAccountName") or "default"
    if runs_as != account:
        raise bad_request(
            f'cannot bind token for serviceaccount "{account}" to pod running with '
            f'serviceaccount "{runs_as}"'
        )
    bound = {"pod": obj}
    node_name = spec.get("nodeName")
    if node_name:
        try:
            bound["node"] = await store.get(nodes.RESOURCE, None, node_name)
        except StatusError as e:
            # A pod's node that is gone is left out of the claims, as kube does.
            if e.code != 404:
                raise
    return bound
