"""
The authentication reviews (L{k3stw.apiserver.reviews}): ``TokenReview``
(who a token authenticates, for which audiences, as the API itself would
authenticate it) and ``SelfSubjectReview`` (who is asking:
``kubectl auth whoami``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from k3stw.apiserver.reviews import Review
from k3stw.apiserver.status import bad_request
from k3stw.apiserver.tokens.authenticator import INVALID_BEARER_TOKEN, ServiceAccountTokens
from k3stw.apiserver.tokens.claims import TokenError
from k3stw.machinery.identity import User, authenticated
from k3stw.machinery.objects import Object

GROUP = "authentication.k8s.io"


def user_info(user: User) -> dict[str, Any]:
    """An ``authentication.k8s.io/v1`` UserInfo, its empty fields left out as kube does."""
    info: dict[str, Any] = {"username": user.name}
    if user.uid:
        info["uid"] = user.uid
    if user.groups:
        info["groups"] = list(user.groups)
    if user.extra:
        info["extra"] = {key: list(values) for key, values in user.extra.items()}
    return info


def token_review(tokens: ServiceAccountTokens) -> Review:
    """Answers TokenReviews with C{tokens}."""

    async def review(asking: User, body: Object) -> Object:
        spec = body.get("spec") or {}
        token = spec.get("token") if isinstance(spec, dict) else None
        if not isinstance(token, str) or not token:
            raise bad_request(f"token is required for TokenReview in {GROUP}/__internal")
        audiences = spec.get("audiences") or []
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise bad_request("spec.audiences must be a list of strings")
        status: dict[str, Any] = {"user": {}}
        try:
            found = await tokens.authenticate(token, audiences)
        except TokenError as e:
            status["error"] = str(e)
        else:
            if found is None:
                status["error"] = INVALID_BEARER_TOKEN
            else:
                status.update(
                    authenticated=True,
                    user=user_info(authenticated(found.user)),
                    audiences=list(found.audiences),
                )
        return {**body, "status": status}

    return review


async def self_subject_review(asking: User, body: Object) -> Object:
    """Answers a SelfSubjectReview: the asking user, as the API authenticated it."""
    return {**body, "status": {"userInfo": user_info(asking)}}


def authentication_reviews(tokens: ServiceAccountTokens) -> Mapping[tuple[str, str], Review]:
    """The reviews of ``authentication.k8s.io``, by (group, plural)."""
    return {
        (GROUP, "tokenreviews"): token_review(tokens),
        (GROUP, "selfsubjectreviews"): self_subject_review,
    }
