"""
The access reviews (authorization.k8s.io/v1), answered by the server's
authorizer: ``SubjectAccessReview`` (may this user?), its namespaced
``LocalSubjectAccessReview``, ``SelfSubjectAccessReview`` (may I?, what
``kubectl auth can-i`` asks) and ``SelfSubjectRulesReview`` (what may I do
here?, ``kubectl auth can-i --list``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from k3stw.apiserver.auth import Attributes, Authorizer
from k3stw.apiserver.reviews import Review
from k3stw.apiserver.status import bad_request, invalid
from k3stw.machinery.identity import MASTERS, User
from k3stw.machinery.objects import Object

GROUP = "authorization.k8s.io"
NODE_RULES_ERROR = "node authorizer does not support user rule resolution"


def _attributes(spec: Mapping[str, Any]) -> Attributes:
    resource = spec.get("resourceAttributes")
    if isinstance(resource, dict):
        return Attributes(
            str(resource.get("verb", "")),
            str(resource.get("group", "")),
            str(resource.get("resource", "")),
            resource.get("namespace") or None,
            resource.get("name") or None,
            resource.get("subresource") or None,
        )
    path = spec.get("nonResourceAttributes") or {}
    return Attributes.for_path(str(path.get("verb", "")), str(path.get("path", "")))


def _check_attributes(kind: str, spec: Mapping[str, Any], local_namespace: str | None) -> None:
    """kube's ``ValidateSubjectAccessReviewSpec`` (the attributes part), in its words."""
    causes = []
    has_resource, has_path = "resourceAttributes" in spec, "nonResourceAttributes" in spec
    if has_resource and has_path:
        causes.append(
            (
                "spec.nonResourceAttributes",
                'Invalid value: "null": cannot be specified in combination with resourceAttributes',
            )
        )
    elif not has_resource and not has_path:
        causes.append(
            (
                "spec.resourceAttributes",
                'Invalid value: "null": exactly one of nonResourceAttributes or '
                "resourceAttributes must be specified",
            )
        )
    if local_namespace is not None:
        if has_path:
            causes.append(
                (
                    "spec.nonResourceAttributes",
                    'Invalid value: "null": disallowed on this kind of request',
                )
            )
        given = (spec.get("resourceAttributes") or {}).get("namespace", "")
        if has_resource and given != local_namespace:
            causes.append(
                (
                    "spec.resourceAttributes.namespace",
                    f'Invalid value: "{given}": must match metadata.namespace',
                )
            )
    if causes:
        raise invalid(f"{kind}.{GROUP}", "", causes)


def _subject(kind: str, spec: Mapping[str, Any]) -> User:
    user, groups = str(spec.get("user") or ""), spec.get("groups") or []
    if not user and not groups:
        raise invalid(
            f"{kind}.{GROUP}",
            "",
            [("spec.user", 'Invalid value: "": at least one of user or group must be specified')],
        )
    return User(user, tuple(str(group) for group in groups))


def access_reviews(authorizer: Authorizer) -> dict[tuple[str, str], Review]:
    """The four reviews, answered by C{authorizer}, by (group, plural)."""

    async def answer(user: User, review: Object, kind: str, local: str | None) -> Object:
        spec = review.get("spec") or {}
        _check_attributes(kind, spec, local)
        decision = await authorizer.decide(user, _attributes(spec))
        status: dict[str, Any] = {"allowed": decision.allowed}
        if decision.reason:
            status["reason"] = decision.reason
        return {**review, "status": status}

    async def subject(requester: User, review: Object) -> Object:
        spec = review.get("spec") or {}
        return await answer(
            _subject("SubjectAccessReview", spec), review, "SubjectAccessReview", None
        )

    async def local(requester: User, review: Object) -> Object:
        spec = review.get("spec") or {}
        namespace = str(review["metadata"]["namespace"])
        kind = "LocalSubjectAccessReview"
        return await answer(_subject(kind, spec), review, kind, namespace)

    async def self_access(requester: User, review: Object) -> Object:
        spec = review.get("spec") or {}
        # The review is about the asker, whatever the body says.
        spec = {
            k: v for k, v in spec.items() if k in ("resourceAttributes", "nonResourceAttributes")
        }
        return await answer(requester, {**review, "spec": spec}, "SelfSubjectAccessReview", None)

    async def self_rules(requester: User, review: Object) -> Object:
        namespace = str((review.get("spec") or {}).get("namespace") or "")
        if not namespace:
            raise bad_request("no namespace on request")
        return {**review, "status": rules_review(authorizer, requester, namespace)}

    return {
        (GROUP, "subjectaccessreviews"): subject,
        (GROUP, "localsubjectaccessreviews"): local,
        (GROUP, "selfsubjectaccessreviews"): self_access,
        (GROUP, "selfsubjectrulesreviews"): self_rules,
    }


def rules_review(authorizer: Authorizer, user: User, namespace: str) -> dict[str, Any]:
    """A ``SubjectRulesReviewStatus``: what C{user} may do in C{namespace}, as RBAC lists it."""
    resource_rules: list[dict[str, Any]] = []
    non_resource_rules: list[dict[str, Any]] = []
    errors: list[str] = []
    incomplete = False
    if MASTERS in user.groups:
        resource_rules.append({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})
        non_resource_rules.append({"verbs": ["*"], "nonResourceURLs": ["*"]})
    if user.node_name is not None:
        incomplete = True
        errors.append(NODE_RULES_ERROR)
    if authorizer.rbac is not None:
        rules, rbac_errors = authorizer.rbac.rules_for(user, namespace)
        errors += rbac_errors
        for rule in rules:
            raw = rule.raw
            if raw.get("resources"):
                resource_rules.append(
                    {
                        key: list(raw[key])
                        for key in ("verbs", "apiGroups", "resources", "resourceNames")
                        if raw.get(key) or key == "verbs"
                    }
                )
            if raw.get("nonResourceURLs"):
                non_resource_rules.append(
                    {
                        "verbs": list(raw.get("verbs") or []),
                        "nonResourceURLs": list(raw["nonResourceURLs"]),
                    }
                )
    status: dict[str, Any] = {
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": incomplete,
    }
    if errors:
        status["evaluationError"] = ", ".join(errors)
    return status
