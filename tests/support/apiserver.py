"""
The API server's object store, informers and registry in memory, on a Clock:
the real rules (defaults, validation, finalizers, watches) with nothing to
wait for, so controllers are unit-tested through what they really use.
"""

from __future__ import annotations

import io
import json
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from k3stw.apiserver.admission import Admission
from k3stw.apiserver.bootstrap import bootstrap
from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import built_in_registry, crds
from k3stw.apiserver.metricsapi import ResourceMetrics
from k3stw.apiserver.rbac import RBAC
from k3stw.apiserver.rbacpolicy import bootstrap_policy
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.reviews import Review
from k3stw.apiserver.routing import KubernetesAPI, TokenAuthenticator
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.apiserver.verbs import TokenRequests
from k3stw.datastore.memory import MemoryDatastore
from k3stw.kubeclient import APIVerbs, KubeAPIError
from k3stw.machinery.identity import User
from k3stw.machinery.objects import Object

T = TypeVar("T")

#: A CRD version's schema that takes any object (kube-apiserver requires one).
ANY_SCHEMA = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}

#: Where the clock of every in-memory server starts (a plausible "now").
START = 1_800_000_000.0


class MemoryServer:
    """
    A server's storage half in memory: the datastore, the object store, the
    registry (following this store's CRD writes), and shared informers.

    Everything the store does completes before its call returns, so L{run}
    hands back results directly; the informers and controllers started with
    L{start} see each write as it happens.
    """

    def __init__(
        self, case: SynchronousTestCase, clock: Clock | None = None, checks: bool = True
    ) -> None:
        """:param checks: whether the store defaults and validates (``--unchecked-api``)."""
        self.case = case
        self.clock = clock or Clock()
        if self.clock.seconds() == 0:
            self.clock.advance(START)
        self.datastore = MemoryDatastore(self.clock)
        self.datastore.startService()
        case.addCleanup(self.datastore.stopService)
        self.store = ObjectStore(self.datastore, self.clock, checks=checks)
        self.registry = built_in_registry()
        self.store.observe(crds.serve_written_crds(self.registry))
        self.informers = ServerInformers(self.store)
        self.store.admission = Admission(self.informers, self.registry)
        self.run(bootstrap(self.store, self.registry))

    def run(self, work: Coroutine[Any, Any, T] | Deferred[T]) -> T:
        """The result of a store or datastore call (or anything that waits on nothing else)."""
        result: T = self.case.successResultOf(ensureDeferred(work))
        return result

    def fails(self, coroutine: Coroutine[Any, Any, object]) -> StatusError:
        """The StatusError a store call raises."""
        failure = self.case.failureResultOf(Deferred.fromCoroutine(coroutine), StatusError)
        error = failure.value
        assert isinstance(error, StatusError)
        return error

    def start(self, *services: Any) -> None:
        """Start the informers and C{services} (controllers), stopping them after the test."""
        for service in (self.informers, *services):
            if not service.running:
                service.startService()
                self.case.addCleanup(service.stopService)

    def resource(self, group: str, plural: str, version: str = "v1") -> ResourceType:
        return self.registry.require(group, version, plural)

    def create(self, group: str, plural: str, obj: Object, namespace: str | None = None) -> Object:
        return self.run(self.store.create(self.resource(group, plural), namespace, obj))

    def get(self, group: str, plural: str, name: str, namespace: str | None = None) -> Object:
        return self.run(self.store.get(self.resource(group, plural), namespace, name))

    def exists(self, group: str, plural: str, name: str, namespace: str | None = None) -> bool:
        return self.run(self._exists(self.resource(group, plural), name, namespace))

    async def _exists(self, resource: ResourceType, name: str, namespace: str | None) -> bool:
        try:
            await self.store.get(resource, namespace, name)
        except StatusError as e:
            if e.code != 404:
                raise
            return False
        return True

    def delete(
        self,
        group: str,
        plural: str,
        name: str,
        namespace: str | None = None,
        finalizers: tuple[str, ...] = (),
        grace_period: int | None = None,
    ) -> tuple[Object, bool]:
        resource = self.resource(group, plural)
        return self.run(
            self.store.delete(resource, namespace, name, None, finalizers, grace_period)
        )

    def confirm_pod_deletions(self) -> list[str]:
        """
        What the nodes' kubelets do once a pod marked for deletion has stopped:
        write its terminal phase (Failed, unless it had finished), then delete
        it with grace period 0.  The names of the pods confirmed.
        """
        pods = self.resource("", "pods")
        confirmed = []
        for pod in self.run(self.store.list(pods, None)).items:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") and meta.get("deletionGracePeriodSeconds"):
                if pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                    pod.setdefault("status", {})["phase"] = "Failed"
                    name, namespace = meta["name"], meta["namespace"]
                    self.run(self.store.update(pods, namespace, name, pod, subresource="status"))
                uid = {"uid": meta["uid"]}
                self.run(self.store.delete(pods, meta["namespace"], meta["name"], uid, (), 0))
                confirmed.append(meta["name"])
        return confirmed


class MemoryAPI:
    """
    The HTTP API of a L{MemoryServer}, asked through in-memory requests.

    Users authenticate with bearer tokens from a static table (kube-apiserver's
    ``--token-auth-file``), so a test may ask as anyone; a token not in it goes
    to C{tokens} (the service-account authenticator, say), if given.  With
    C{rbac}, the bootstrap policy is written and RBAC authorizes, on the
    server's running informers, as on a real server.
    """

    def __init__(
        self,
        server: MemoryServer,
        users: dict[str, User],
        reviews: Mapping[tuple[str, str], Review] | None = None,
        tokens: TokenAuthenticator | None = None,
        token_requests: TokenRequests | None = None,
        rbac: bool = False,
        registry: Registry | None = None,
        resource_metrics: ResourceMetrics | None = None,
    ) -> None:
        """
        :param registry: what is served, if not the server's registry.
        :param resource_metrics: answers ``metrics.k8s.io``.
        """
        self.server = server
        self.users = users
        self.tokens = tokens
        self.rbac = RBAC(server.informers) if rbac else None
        if rbac:
            server.run(bootstrap_policy(server.store))
            server.start()
        self.api = KubernetesAPI(
            server.store,
            registry or server.registry,
            server.clock,
            "127.0.0.1:6443",
            tokens=self._user_of,
            reviews=reviews,
            token_requests=token_requests,
            rbac=self.rbac,
            bound_pods=server.informers.for_resource(server.resource("", "pods")),
            checks=server.store.checks,
            resource_metrics=resource_metrics,
        )

    async def _user_of(self, token: str) -> User | None:
        user = self.users.get(token)
        if user is None and self.tokens is not None:
            return await self.tokens(token)
        return user

    def request(
        self,
        method: bytes,
        path: str,
        body: object = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """The code and decoded JSON answer of one request (as the first user by default)."""
        made = self.send(method, path, body, token, headers)
        self.server.case.assertTrue(made.finished, f"{method!r} {path} did not finish")
        text = b"".join(made.written)
        return made.responseCode or 200, json.loads(text) if text else None

    def send(
        self,
        method: bytes,
        path: str,
        body: object = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> APIDummyRequest:
        """One request, started: answered already, or once what it waits for happens."""
        base, _, query = path.partition("?")
        made = APIDummyRequest(base.lstrip("/").encode().split(b"/"))
        made.method = method
        made.channel = DummyChannel()
        made.path = base.encode()
        made.args = {k.encode(): [v.encode() for v in vs] for k, vs in parse_qs(query).items()}
        made.content = io.BytesIO(b"" if body is None else json.dumps(body).encode())
        all_headers = {
            "authorization": f"Bearer {token or next(iter(self.users))}",
            "content-type": "application/json",
            **(headers or {}),
        }
        for name, value in all_headers.items():
            made.requestHeaders.setRawHeaders(name.encode(), [value.encode()])
        self.api.render(cast(Request, made))
        return made


class APIDummyRequest(DummyRequest):
    """A L{DummyRequest} with a body and a response code, as the API reads them."""

    content: io.BytesIO
    channel: DummyChannel
    path: bytes

    @property
    def code(self) -> int:
        return self.responseCode or 200


class MemoryClient(APIVerbs):
    """
    A component's API client (L{k3stw.kubeclient.KubeClient}'s calls, not its
    watches) over a L{MemoryAPI}, as the user of C{token}: the kubelet's
    requests meet the real routes, authorizers and admission.
    """

    def __init__(self, api: MemoryAPI, token: str) -> None:
        self.api = api
        self.token = token
        self.server_url = "https://127.0.0.1:6443"
        #: Every call as ``(method, path)``, in order.
        self.requests: list[tuple[str, str]] = []

    async def call(
        self,
        method: str,
        path: str,
        body: Object | list[Any] | None = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> Object:
        self.requests.append((method, path))
        query = ("?" + "&".join(f"{k}={v}" for k, v in params.items())) if params else ""
        made = self.api.send(
            method.encode(), path + query, body, self.token, {"content-type": content_type}
        )
        if not made.finished:
            await made.notifyFinish()
        text = b"".join(made.written)
        document: Object = json.loads(text) if text else {}
        if not 200 <= made.code < 300:
            raise KubeAPIError(method, path, made.code, document)
        return document
