"""The create-only reviews: answered through the API, never stored."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from k3stw.machinery.identity import User
from k3stw.machinery.objects import Object
from tests.support.apiserver import MemoryAPI, MemoryServer

# In system:masters until the authorizer lets every user ask its own reviews.
ALICE = User("alice", ("system:masters",))
SELF_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
LOCAL_REVIEWS = "/apis/authorization.k8s.io/v1/namespaces/{}/localsubjectaccessreviews"


async def who_asks(user: User, review: Object) -> Object:
    """A review answering with the asking user's name, as SelfSubjectReview does."""
    return {**review, "status": {"userInfo": {"username": user.name}}}


async def namespace_of(user: User, review: Object) -> Object:
    """A review answering with the namespace it was asked in."""
    return {**review, "status": {"namespace": review["metadata"]["namespace"]}}


class ReviewTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.api = MemoryAPI(
            self.server,
            {"alice-token": ALICE},
            {
                ("authentication.k8s.io", "selfsubjectreviews"): who_asks,
                ("authorization.k8s.io", "localsubjectaccessreviews"): namespace_of,
            },
        )

    def test_answered_for_the_asking_user(self) -> None:
        code, answered = self.api.request(b"POST", SELF_REVIEWS, {"spec": {}})
        self.assertEqual(code, 201)
        self.assertEqual(answered["kind"], "SelfSubjectReview")
        self.assertEqual(answered["apiVersion"], "authentication.k8s.io/v1")
        self.assertEqual(answered["status"], {"userInfo": {"username": "alice"}})

    def test_never_stored(self) -> None:
        self.api.request(b"POST", SELF_REVIEWS, {"metadata": {"name": "kept"}})
        listed = self.server.run(self.server.datastore.list("/registry/"))
        self.assertNotIn(b"kept", b"".join(kv.value for kv in listed.items))

    def test_only_created(self) -> None:
        for method in (b"GET", b"DELETE"):
            code, status = self.api.request(method, SELF_REVIEWS)
            self.assertEqual((code, status["reason"]), (405, "MethodNotAllowed"))

    def test_local_review_takes_the_path_namespace(self) -> None:
        code, answered = self.api.request(b"POST", LOCAL_REVIEWS.format("team"), {"spec": {}})
        self.assertEqual((code, answered["status"]), (201, {"namespace": "team"}))

    def test_local_review_of_another_namespace_refused(self) -> None:
        body = {"metadata": {"namespace": "other"}, "spec": {}}
        code, status = self.api.request(b"POST", LOCAL_REVIEWS.format("team"), body)
        self.assertEqual(code, 400)
        self.assertIn("does not match the namespace sent on the request", status["message"])

    def test_body_of_another_kind_refused(self) -> None:
        body = {"apiVersion": "v1", "kind": "ConfigMap"}
        code, status = self.api.request(b"POST", SELF_REVIEWS, body)
        self.assertEqual(code, 400)
        expected = "expected authentication.k8s.io/v1, Kind=SelfSubjectReview"
        self.assertIn(expected, status["message"])

    def test_review_without_an_answer_is_not_available(self) -> None:
        path = "/apis/authentication.k8s.io/v1/tokenreviews"
        code, status = self.api.request(b"POST", path, {"spec": {"token": "x"}})
        self.assertEqual(code, 501)
        self.assertEqual(status["message"], "tokenreviews.authentication.k8s.io are not answered")

    def test_unknown_bearer_token_unauthorized(self) -> None:
        code, status = self.api.request(b"POST", SELF_REVIEWS, {}, token="nobody")
        self.assertEqual((code, status["message"]), (401, "Unauthorized"))
