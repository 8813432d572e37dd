"""
The kubelet's HTTPS API (port 10250), which the servers reach through the
agent's websocket tunnel: ``/healthz``, ``/pods``, ``/stats/summary``,
``/metrics/resource``, ``/metrics/cadvisor`` and, on a node with a container runtime,
``/containerLogs`` and the streams ``/exec``, ``/attach``, ``/portForward``
(L{k3stw.kubelet.streaming}).

Every request is authenticated and authorized first (L{k3stw.kubelet.auth}:
the kubelet's 401 and 403), then routed; ``/stats/summary`` answers the
Summary API of the node and its pods (L{k3stw.kubelet.stats}, the pods' from
L{k3stw.kubelet.podstats}), ``/metrics/resource`` the same figures as
Prometheus text (L{k3stw.kubelet.metrics}).

Wiring: L{KubeletAPIService} is a service to put under the node's agent.  The
Node's ``status.daemonEndpoints.kubeletEndpoint.Port`` must name the port it
serves on, L{KubeletAPIService.endpoint_port} (10250 unless configured
otherwise): the servers read it back to know which loopback port of the node
their tunnel may dial.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from k3stw.kubelet.auth import (
    Authorizer,
    allow_apiserver,
    forbidden_message,
    peer_certificate,
    request_attributes,
    verified_user,
)
from k3stw.kubelet.hostinfo import read_host_usage
from k3stw.kubelet.metrics import CONTENT_TYPE, cadvisor_metrics, resource_metrics
from k3stw.kubelet.stats import CPUUsageRate, build_summary
from k3stw.kubelet.streaming import STREAM_KINDS, StreamError, Streaming, stream_target
from k3stw.logs import Logger
from k3stw.machinery.nodes import KUBELET_PORT
from k3stw.machinery.times import utc
from k3stw.pki.certs import KeyPair, load_pem_certificates
from k3stw.pki.tls import client_certificate_requesting_options
from k3stw.web import QuietSite, finish

#: The pods' stats and the runtime's image filesystem: (now, CPU and memory only) ->
#: (PodStats list, imageFs FsStats or None).
PodStatsSource = Callable[
    [float, bool], Awaitable[tuple[list[dict[str, Any]], dict[str, Any] | None]]
]

if TYPE_CHECKING:
    from k3stw.kubelet.logstream import ContainerLogs

#: Go's ``http.Error`` content type, which every plain-text answer carries.
_TEXT = b"text/plain; charset=utf-8"


# Resources


def _answer(request: IRequest, code: int, body: bytes, content_type: bytes = _TEXT) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    if content_type == _TEXT:
        request.setHeader(b"x-content-type-options", b"nosniff")
    return body


def _json(request: IRequest, document: object) -> bytes:
    return _answer(request, 200, json.dumps(document).encode(), b"application/json")


class _Answer(Resource):
    """A leaf that answers every request with the same status and text."""

    isLeaf = True

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__()
        self.code = code
        self.body = body

    def render(self, request: IRequest) -> bytes:
        return _answer(request, self.code, self.body)


#: Go's ``http.NotFound``, which the kubelet's mux answers for unknown paths.
NOT_FOUND = _Answer(404, b"404 page not found\n")
UNAUTHORIZED = _Answer(401, b"Unauthorized")


class _Directory(Resource):
    """A path segment with fixed children; anything else, itself included, is not found."""

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return NOT_FOUND

    def render(self, request: IRequest) -> bytes:
        return NOT_FOUND.render(request)


class _Endpoint(Resource):
    """
    One route: its C{render_*} methods are the methods it allows; any other
    gets go-restful's 405, and any path below it is not found.
    """

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return NOT_FOUND

    def render(self, request: IRequest) -> bytes | int:
        # Resource's own render_HEAD answers HEAD as GET.
        if not hasattr(self, "render_" + request.method.decode("ascii", "replace")):
            allowed = sorted(name[7:] for name in dir(self) if name.startswith("render_"))
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return _answer(request, 405, b"405: Method Not Allowed")
        return cast(bytes | int, super().render(request))


class _Healthz(_Endpoint):
    def render_GET(self, request: IRequest) -> bytes:
        return _answer(request, 200, b"ok")


class _Pods(_Endpoint):
    def __init__(self, pods: Callable[[], list[dict[str, Any]]] | None) -> None:
        super().__init__()
        self._pods = pods

    def render_GET(self, request: IRequest) -> bytes:
        items = self._pods() if self._pods is not None else []
        return _json(
            request, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        )


#: Builds the Summary API document (C{True}: CPU and memory only).
SummarySource = Callable[[bool], Awaitable[dict[str, Any]]]


class _Summary(_Endpoint):
    """``/stats/summary``: the kubelet's 500 ``Internal Error: ...`` when the runtime fails."""

    _log = Logger()

    def __init__(self, summary: SummarySource) -> None:
        super().__init__()
        self._summary = summary

    path = "/stats/summary"

    def render_GET(self, request: IRequest) -> int:
        Deferred.fromCoroutine(self._respond(request))
        return NOT_DONE_YET

    def _only_cpu_and_memory(self, request: IRequest) -> bool:
        return bool(request.args.get(b"only_cpu_and_memory", []) == [b"true"])

    def _present(self, request: IRequest, document: dict[str, Any]) -> bytes:
        return _json(request, document)

    async def _respond(self, request: IRequest) -> None:
        try:
            body = self._present(request, await self._summary(self._only_cpu_and_memory(request)))
        except Exception as e:
            self._log.failure("HTTP InternalServerError serving {path}", path=self.path)
            body = _answer(request, 500, f"Internal Error: {e}".encode())
        finish(request, body)


class _CadvisorMetrics(_Summary):
    """``/metrics/cadvisor``: the whole summary under cAdvisor's names (L{cadvisor_metrics})."""

    path = "/metrics/cadvisor"

    def _only_cpu_and_memory(self, request: IRequest) -> bool:
        return False

    def _present(self, request: IRequest, document: dict[str, Any]) -> bytes:
        return _answer(request, 200, cadvisor_metrics(document), CONTENT_TYPE)


class _ResourceMetrics(_Endpoint):
    """
    ``/metrics/resource``: the CPU-and-memory summary as Prometheus text;
    when it fails, ``resource_scrape_error 1``, as the kubelet's collector.
    """

    _log = Logger()

    def __init__(self, summary: SummarySource) -> None:
        super().__init__()
        self._summary = summary

    def render_GET(self, request: IRequest) -> int:
        Deferred.fromCoroutine(self._respond(request))
        return NOT_DONE_YET

    async def _respond(self, request: IRequest) -> None:
        document = None
        try:
            document = await self._summary(True)
        except Exception:
            self._log.failure("Error getting summary for resourceMetric prometheus endpoint")
        finish(request, _answer(request, 200, resource_metrics(document), CONTENT_TYPE))


class _ContainerLogs(_Endpoint):
    """``/containerLogs/<namespace>/<pod>/<container>`` (L{k3stw.kubelet.logstream})."""

    isLeaf = True

    def __init__(self, logs: ContainerLogs) -> None:
        super().__init__()
        self._logs = logs

    def render_GET(self, request: IRequest) -> bytes | int:
        if len(request.postpath) != 3:
            return NOT_FOUND.render(request)
        namespace, pod, container = (
            unquote(p.decode("utf-8", "replace")) for p in request.postpath
        )
        return cast(
            bytes | int, self._logs.render(cast(Request, request), namespace, pod, container)
        )


class _Stream(_Endpoint):
    """``/exec``, ``/attach`` and ``/portForward`` (L{k3stw.kubelet.streaming})."""

    isLeaf = True
    _log = Logger()

    def __init__(self, kind: str, streaming: Streaming | None) -> None:
        super().__init__()
        self.kind = kind
        self.streaming = streaming

    def render(self, request: IRequest) -> bytes | int:
        if stream_target(self.kind, request.postpath or []) is None:
            return NOT_FOUND.render(request)
        return super().render(request)

    def render_GET(self, request: Request) -> bytes | int:
        target = stream_target(self.kind, request.postpath or [])
        assert target is not None
        if self.streaming is None:
            return _NotImplementedYet().render(request)
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        serving = Deferred.fromCoroutine(self.streaming.serve(request, self.kind, target))
        serving.addErrback(self._refused, request, gone)
        return NOT_DONE_YET

    render_POST = render_GET

    def _refused(self, failure: Failure, request: Request, gone: list[Failure]) -> None:
        if gone:
            return
        error = failure.value
        if isinstance(error, StreamError):
            code, body = error.code, error.message.encode()
            for name, value in error.headers:
                request.setHeader(name, value)
        else:
            self._log.failure("Error serving {path}", failure, path=request.path)
            code, body = 500, b"Internal Server Error\n"
        body = _answer(request, code, body)
        # As Go's server sends a short answer: whole, with its length.
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


class _NotImplementedYet(Resource):
    """
    The endpoints that need what the node does not have (``/run``; the logs
    and streams on a node without a runtime) answer 501, rather than a fake
    success.
    """

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        return _answer(request, 501, b"not implemented: this node has no container runtime yet\n")


class KubeletAPIResource(Resource):
    """
    The root of the API: authenticates and authorizes each request before
    routing it, so that even an unknown path is refused to a stranger.

    :param clock: the time against which certificates' validity is checked.
    :param client_ca: the PEM bundle of CAs whose client certificates authenticate.
    :param routes: the resource tree of the endpoints.
    :param authorizer: who may do what (L{allow_apiserver} by default).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        client_ca: bytes,
        routes: IResource,
        authorizer: Authorizer = allow_apiserver,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.client_cas = load_pem_certificates(client_ca)
        self.routes = routes
        self.authorizer = authorizer

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        certificate = peer_certificate(request)
        now = utc(self.clock.seconds())
        user = verified_user(certificate, self.client_cas, now) if certificate else None
        if user is None:
            return UNAUTHORIZED
        attributes = request_attributes(request.method, request.path)
        if not self.authorizer(user, attributes):
            self._log.info(
                "Forbidden: user {user} {verb} {path}",
                user=user.name,
                verb=attributes.verb,
                path=attributes.path,
            )
            return _Answer(403, forbidden_message(user, attributes).encode())
        child: IResource = self.routes.getChildWithDefault(path, request)
        return child


def kubelet_routes(
    pods: Callable[[], list[dict[str, Any]]] | None,
    summary: SummarySource,
    container_logs: ContainerLogs | None = None,
    streaming: Streaming | None = None,
) -> Resource:
    """
    The endpoints' tree, before authentication (no C{container_logs} or
    C{streaming}: a node without a container runtime, whose logs and
    streams answer 501).
    """
    root = _Directory()
    root.putChild(b"healthz", _Healthz())
    root.putChild(b"pods", _Pods(pods))
    stats = _Directory()
    stats.putChild(b"summary", _Summary(summary))
    root.putChild(b"stats", stats)
    metrics = _Directory()
    metrics.putChild(b"resource", _ResourceMetrics(summary))
    metrics.putChild(b"cadvisor", _CadvisorMetrics(summary))
    root.putChild(b"metrics", metrics)
    for kind in STREAM_KINDS:
        root.putChild(kind.encode(), _Stream(kind, streaming))
    logs = _ContainerLogs(container_logs) if container_logs else _NotImplementedYet()
    root.putChild(b"containerLogs", logs)
    root.putChild(b"run", _NotImplementedYet())
    return root


# The service


@implementer(IStreamServerEndpoint)
class _RecordingEndpoint:
    """An endpoint that remembers the port it listens on, for L{KubeletAPIService}."""

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self._endpoint = endpoint
        self.port: IListeningPort | None = None
        self.failure: Failure | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        listening = self._endpoint.listen(protocolFactory)
        listening.addBoth(self._settle)
        return listening

    def _settle(self, result: IListeningPort | Failure) -> IListeningPort | Failure:
        if isinstance(result, Failure):
            self.failure = result
        else:
            self.port = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)
        return result

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the port, or fails as listening failed, once either happened."""
        waiter: Deferred[IListeningPort] = Deferred()
        settled = self.port or self.failure
        if settled is None:
            self._waiters.append(waiter)
        else:
            waiter.callback(settled)
        return waiter


class KubeletAPIService(StreamServerEndpointService):
    """
    The kubelet's HTTPS API on ``bind_host:port``, served with the node's
    kubelet serving certificate.

    :param reactor: an ``IReactorSSL`` and ``IReactorTime``.
    :param node_name: the Node this kubelet is.
    :param serving: the kubelet serving certificate and key.
    :param client_ca: the PEM bundle of the client CA (the apiserver's
        client certificate for kubelets is signed by it).
    :param port: the port (0 picks a free one; see L{endpoint_port}).
    :param bind_host: the address to listen on; loopback, since the servers
        come through the tunnel, which dials the node's loopback.
    :param data_dir: the filesystem whose use ``/stats/summary`` reports.
    :param pods: the pods the node runs, as API objects (None: none).
    :param pod_stats: the pods' stats and the runtime's image filesystem
        (L{k3stw.kubelet.podstats.PodStatsProvider.collect}; None: no runtime, no pods).
    :param proc: where ``/proc`` is (tests point it at fixture files).
    :param authorizer: who may use the API (L{allow_apiserver} by default).
    :param container_logs: serves ``/containerLogs`` (None: 501).
    :param streaming: where exec, attach and port-forward go (None: 501).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        node_name: str,
        serving: KeyPair,
        client_ca: bytes,
        port: int = KUBELET_PORT,
        bind_host: str = "127.0.0.1",
        data_dir: Path,
        pods: Callable[[], list[dict[str, Any]]] | None = None,
        pod_stats: PodStatsSource | None = None,
        proc: Path = Path("/proc"),
        authorizer: Authorizer = allow_apiserver,
        container_logs: ContainerLogs | None = None,
        streaming: Streaming | None = None,
    ) -> None:
        self.reactor = reactor
        self.node_name = node_name
        self.port = port
        self.bind_host = bind_host
        self.data_dir = data_dir
        self.proc = proc
        self.pod_stats = pod_stats
        self.cpu_rate = CPUUsageRate()
        self.routes = kubelet_routes(pods, self.summary, container_logs, streaming)
        site = QuietSite(KubeletAPIResource(reactor, client_ca, self.routes, authorizer))
        self._endpoint = _RecordingEndpoint(
            SSL4ServerEndpoint(
                reactor,
                port,
                client_certificate_requesting_options(serving, client_ca),
                interface=bind_host,
            )
        )
        super().__init__(self._endpoint, site)
        self.setName("kubelet-api")

    def add_metrics_page(self, name: str, page: IResource) -> None:
        """Serve C{page} at ``/metrics/<name>``: a node component's own metrics."""
        self.routes.children[b"metrics"].putChild(name.encode("ascii"), page)

    @property
    def endpoint_port(self) -> int:
        """The port served on: the bound one once listening, else the configured one."""
        listening = self._endpoint.port
        if listening is None:
            return self.port
        return cast(IPv4Address | IPv6Address, listening.getHost()).port

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once the API accepts connections."""
        return self._endpoint.when_listening()

    def startService(self) -> None:
        # The first sample, so that the first summary can already give a rate.
        self.node_summary(only_cpu_and_memory=True)
        super().startService()
        self.when_listening().addCallbacks(self._listened, lambda _: None)

    def _listened(self, port: IListeningPort) -> None:
        self._log.info(
            "Kubelet API for node {node} listening on {host}:{port}",
            node=self.node_name,
            host=self.bind_host,
            port=self.endpoint_port,
        )

    def node_summary(
        self,
        only_cpu_and_memory: bool = False,
        pods: list[dict[str, Any]] | None = None,
        image_fs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The Summary API document of the host read now, with C{pods}' stats."""
        usage = read_host_usage(self.data_dir, self.proc)
        now = self.reactor.seconds()
        rate = (
            self.cpu_rate.observe(now, usage.cpu.usage_core_nanoseconds)
            if usage.cpu is not None
            else None
        )
        return build_summary(
            self.node_name,
            usage,
            now,
            rate,
            only_cpu_and_memory=only_cpu_and_memory,
            pods=pods,
            image_fs=image_fs,
        )

    async def summary(self, only_cpu_and_memory: bool = False) -> dict[str, Any]:
        """
        The Summary API document: the host and, from the runtime, its pods.

        :raises Exception: the runtime's failure, as the kubelet's
            ``failed to list pod stats: ...``.
        """
        pods: list[dict[str, Any]] | None = None
        image_fs = None
        if self.pod_stats is not None:
            try:
                pods, image_fs = await self.pod_stats(self.reactor.seconds(), only_cpu_and_memory)
            except Exception as e:
                raise RuntimeError(f"failed to list pod stats: {e}") from e
        return self.node_summary(only_cpu_and_memory, pods, image_fs)
