"""
The kinds kube-apiserver answers and never stores: ``TokenReview``,
``SelfSubjectReview`` and the access reviews.  A client creates one and
reads the answer in the ``status`` of what comes back; nothing is written.

Each is answered by a L{Review}: a function of the requesting user and the
posted object that returns the object with its status filled in.  The server
passes the reviews it answers to L{k3stw.apiserver.routing.KubernetesAPI}.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import NAMESPACE_MISMATCH, StatusError, bad_request
from k3stw.machinery.identity import User
from k3stw.machinery.objects import Object

#: Answers one review: the requesting user and the posted object -> the object, answered.
Review = Callable[[User, Object], Awaitable[Object]]

#: Every create-only resource, by (group, plural).
REVIEW_RESOURCES = frozenset(
    {
        ("authentication.k8s.io", "tokenreviews"),
        ("authentication.k8s.io", "selfsubjectreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
        ("authorization.k8s.io", "selfsubjectaccessreviews"),
        ("authorization.k8s.io", "localsubjectaccessreviews"),
        ("authorization.k8s.io", "selfsubjectrulesreviews"),
    }
)


def is_review(resource: ResourceType) -> bool:
    """Whether C{resource} is answered, never stored."""
    return (resource.group, resource.plural) in REVIEW_RESOURCES


async def answer_review(
    reviews: Mapping[tuple[str, str], Review],
    user: User,
    resource: ResourceType,
    namespace: str | None,
    body: Object,
) -> Object:
    """
    The answered review C{user} posted as C{body} to C{resource}.

    :raises StatusError: 400 for a body of another kind or of another
        namespace than the path's, 501 where no review is given.
    """
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if kind not in (None, resource.kind) or api_version not in (None, resource.group_version):
        raise StatusError(
            400,
            f"the body of the request was of kind {api_version}, Kind={kind}, "
            f"expected {resource.group_version}, Kind={resource.kind}",
        )
    review = reviews.get((resource.group, resource.plural))
    if review is None:
        raise StatusError(501, f"{resource.plural}.{resource.group} are not answered")
    if namespace is not None:
        # A local review's namespace is its path's; its handler reads metadata.namespace.
        metadata = body.setdefault("metadata", {})
        if metadata.setdefault("namespace", namespace) != namespace:
            raise bad_request(NAMESPACE_MISMATCH)
    answered = await review(user, body)
    answered.update(apiVersion=resource.group_version, kind=resource.kind)
    return answered
