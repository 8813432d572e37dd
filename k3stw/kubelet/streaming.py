"""
The kubelet's streaming endpoints, as kubelet 1.32 serves them:
``/exec/<ns>/<pod>[/<uid>]/<container>``, ``/attach/...`` (same shapes) and
``/portForward/<ns>/<pod>[/<uid>]``, by GET or POST.

The kubelet never speaks the streams' protocols (SPDY/3.1 or websocket
channels) itself: it reads the options from the query (``input``,
``output``, ``error``, ``tty=1``, ``command`` repeated; ``port`` for a
websocket port-forward), finds the pod it runs and the pod's running
container, asks the runtime (CRI ``Exec``, ``Attach``, ``PortForward``) for
a URL on its streaming server (containerd's, on 127.0.0.1 in the node's
network namespace), and relays the client's upgrade there
(L{k3stw.upgrade}): spliced once the runtime answers ``101``, any other
answer relayed as it came.  Refusals are the kubelet's: 400 for options,
404 ``pod does not exist``, a CRI error as its HTTP status
(``NotFound`` 404, ``ResourceExhausted`` 429, else 500), 500 for an
upgrade that never reached the runtime.

The runtime's labels name a container's pod (``io.kubernetes.pod.*``), so
the running containers are found with one filtered ``ListContainers``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.server import Request

from k3stw.machinery.objects import Object, metadata
from k3stw.upgrade import UpgradeRelay, is_upgrade, request_head

if TYPE_CHECKING:
    from k3stw.kubelet.cri.runtime import CRIError, Runtime

__all__ = [
    "STREAM_KINDS",
    "StreamError",
    "StreamOptions",
    "StreamTarget",
    "Streaming",
    "port_options",
    "stream_options",
    "stream_target",
]

#: Each streaming endpoint and the numbers of path segments it takes after its name.
STREAM_KINDS = {"exec": (3, 4), "attach": (3, 4), "portForward": (2, 3)}
#: How long the runtime's streaming server has to answer the upgrade.
ANSWER_TIMEOUT = 30.0
#: The CRI streaming token's life, which a 429 asks to wait (containerd's cache TTL).
TOKEN_TTL = 60


class StreamError(Exception):
    """
    A refusal, as the kubelet writes it: C{code} and the body C{message}
    (go-restful's C{WriteError} adds nothing to the message; Go's
    C{http.Error} a newline).
    """

    def __init__(self, code: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.headers = tuple(headers)


@dataclass(frozen=True)
class StreamOptions:
    """Which of the process's stdio to stream, and whether it has a TTY."""

    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


@dataclass(frozen=True)
class StreamTarget:
    """What a streaming path names (C{container} empty for a port-forward)."""

    namespace: str
    pod: str
    uid: str
    container: str


def _first(args: Mapping[bytes, list[bytes]], name: bytes) -> bytes:
    values = args.get(name) or [b""]
    return values[0]


def stream_options(args: Mapping[bytes, list[bytes]]) -> StreamOptions:
    """
    The options of an exec or attach, from its query as the kubelet reads
    them (C{=="1"}); a TTY has no separate stderr.

    :raises StreamError: none of the three streams is asked for.
    """
    tty = _first(args, b"tty") == b"1"
    stdin = _first(args, b"input") == b"1"
    stdout = _first(args, b"output") == b"1"
    # A TTY merges stderr into stdout: the kubelet drops it rather than refuse.
    stderr = _first(args, b"error") == b"1" and not tty
    if not (stdin or stdout or stderr):
        raise StreamError(400, "you must specify at least 1 of stdin, stdout, stderr")
    return StreamOptions(stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)


def _is_websocket(request: Request) -> bool:
    upgrade = (request.getHeader(b"upgrade") or b"").lower()
    return is_upgrade(request) and upgrade == b"websocket"


def port_options(request: Request) -> list[int]:
    """
    The ports of a port-forward: none for SPDY (each stream names its own),
    the ``port`` query (repeated or comma-separated) for a websocket.

    :raises StreamError: a websocket request without valid ports.
    """
    if not _is_websocket(request):
        return []
    values = [v.decode("utf-8", "replace") for v in request.args.get(b"port", [])]
    if not values:
        raise StreamError(400, 'query parameter "port" is required')
    ports = []
    for value in values:
        if not value:
            raise StreamError(400, 'query parameter "port" cannot be empty')
        for text in value.split(","):
            if not text.isascii() or not text.isdigit() or int(text) > 65535:
                raise StreamError(
                    400,
                    f'unable to parse "{value}" as a port: strconv.ParseUint: '
                    f'parsing "{text}": '
                    + ("value out of range" if text.isdigit() else "invalid syntax"),
                )
            if int(text) < 1:
                raise StreamError(400, f'port "{value}" must be > 0')
            ports.append(int(text))
    return ports


def stream_target(kind: str, segments: Sequence[bytes]) -> StreamTarget | None:
    """What the path segments after C{kind} name; None: no route has that shape."""
    if len(segments) not in STREAM_KINDS[kind] or not all(segments):
        return None
    names = [s.decode("utf-8", "replace") for s in segments]
    if kind == "portForward":
        return StreamTarget(names[0], names[1], names[2] if len(names) == 3 else "", "")
    uid = names[2] if len(names) == 4 else ""
    return StreamTarget(names[0], names[1], uid, names[-1])


def _cri_refusal(error: CRIError) -> StreamError:
    """A CRI error as the kubelet writes it (its gRPC status decides the HTTP one)."""
    from k3stw.kubelet.cri.runtime import go_code

    text = f"rpc error: code = {go_code(error.code)} desc = {error.details}"
    if error.code == "NOT_FOUND":
        return StreamError(404, text)
    if error.code == "RESOURCE_EXHAUSTED":
        # Only a flood of streams exhausts the tokens: wait for them all to expire.
        return StreamError(429, text, [(b"retry-after", b"%d" % TOKEN_TTL)])
    return StreamError(500, text)


def _full_name(namespace: str, name: str) -> str:
    return f"{name}_{namespace}"


def _container_spec(pod: Object, name: str) -> Object | None:
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for container in spec.get(key) or []:
            if container.get("name") == name:
                return dict(container)
    return None


class Streaming:
    """
    Where the node's streams go, and the relay there.

    :param reactor: TCP (the runtime's streaming server) and time.
    :param pod: the pod bound to the node of that namespace and name, if any.
    :param runtime: the node's runtime, once it answers (None: none).
    :param dial: an endpoint to the streaming server's host and port (tests
        pass in-memory ones).
    """

    def __init__(
        self,
        reactor: Any,
        pod: Callable[[str, str], Object | None],
        runtime: Callable[[], Runtime | None],
        dial: Callable[[str, int], IStreamClientEndpoint] | None = None,
    ) -> None:
        self.reactor = reactor
        self._pod = pod
        self._runtime = runtime
        self._dial = dial or (
            lambda host, port: TCP4ClientEndpoint(reactor, host, port, timeout=30)
        )

    async def serve(self, request: Request, kind: str, target: StreamTarget) -> None:
        """
        Answer a streaming C{request}: the runtime's URL found, then the
        upgrade relayed there.  Returns once the runtime answered.

        :raises StreamError: a refusal, before anything was written.
        """
        from k3stw.kubelet.cri.runtime import CRIError

        if kind == "portForward":
            ports = port_options(request)
        else:
            options = stream_options(request.args)
        pod = self._pod(target.namespace, target.pod)
        if pod is None:
            raise StreamError(404, "pod does not exist")
        runtime = self._runtime()
        if runtime is None:
            raise StreamError(501, "not implemented: this node has no container runtime\n")
        try:
            if kind == "portForward":
                url = await self._port_forward(runtime, pod, target, ports)
            elif kind == "exec":
                url = await self._exec(runtime, target, request.args, options)
            else:
                url = await self._attach(runtime, pod, target, options)
        except CRIError as e:
            raise _cri_refusal(e) from None
        await self.relay(request, url)

    async def _running(self, runtime: Runtime, target: StreamTarget, uid: str) -> list[Any]:
        """The running containers of the pod C{target} names (of UID C{uid} when given)."""
        from k3stw.kubelet.cri import api_pb2 as api
        from k3stw.kubelet.pods.spec import POD_NAME, POD_NAMESPACE, POD_UID

        labels = {POD_NAME: target.pod, POD_NAMESPACE: target.namespace}
        if uid:
            labels[POD_UID] = uid
        found = await runtime.list_containers(
            api.ContainerFilter(
                state=api.ContainerStateValue(state=api.CONTAINER_RUNNING), label_selector=labels
            )
        )
        return list(found)

    async def _container_id(self, runtime: Runtime, target: StreamTarget) -> str | None:
        from k3stw.kubelet.pods.spec import CONTAINER_NAME

        for container in await self._running(runtime, target, target.uid):
            name = container.labels.get(CONTAINER_NAME) or container.metadata.name
            if name == target.container:
                return str(container.id)
        return None

    async def _exec(
        self,
        runtime: Runtime,
        target: StreamTarget,
        args: Mapping[bytes, list[bytes]],
        options: StreamOptions,
    ) -> str:
        container_id = await self._container_id(runtime, target)
        if container_id is None:
            raise StreamError(500, f'container not found ("{target.container}")')
        command = [c.decode("utf-8", "replace") for c in args.get(b"command", [])]
        return await runtime.exec(
            container_id,
            command,
            tty=options.tty,
            stdin=options.stdin,
            stdout=options.stdout,
            stderr=options.stderr,
        )

    async def _attach(
        self, runtime: Runtime, pod: Object, target: StreamTarget, options: StreamOptions
    ) -> str:
        full_name = _full_name(target.namespace, target.pod)
        missing = f"container {target.container} not found in pod {full_name}"
        container_id = await self._container_id(runtime, target)
        if container_id is None:
            raise StreamError(500, missing)
        if target.uid and metadata(pod).get("uid") != target.uid:
            raise StreamError(500, f"pod {full_name} not found")
        spec = _container_spec(pod, target.container)
        if spec is None:
            raise StreamError(500, missing)
        # Whether the process has a TTY was settled when it started: the spec says, not the query.
        return await runtime.attach(
            container_id,
            tty=bool(spec.get("tty")),
            stdin=options.stdin,
            stdout=options.stdout,
            stderr=options.stderr,
        )

    async def _port_forward(
        self, runtime: Runtime, pod: Object, target: StreamTarget, ports: list[int]
    ) -> str:
        from k3stw.kubelet.cri import api_pb2 as api
        from k3stw.kubelet.pods.spec import POD_UID

        uid = str(metadata(pod).get("uid", ""))
        if target.uid and uid != target.uid:
            raise StreamError(404, "pod not found")
        sandboxes = await runtime.list_pod_sandboxes(
            api.PodSandboxFilter(label_selector={POD_UID: uid})
        )
        ready = [s for s in sandboxes if s.state == api.SANDBOX_READY]
        if not ready and not await self._running(runtime, target, uid):
            # The runtime's running pods: a ready sandbox or a running container.
            raise StreamError(500, f'pod not found ("{_full_name(target.namespace, target.pod)}")')
        if not sandboxes:
            raise StreamError(
                500, f"failed to find sandboxID for pod {target.pod}_{target.namespace}({uid})"
            )
        newest = max(sandboxes, key=lambda s: s.created_at)
        return await runtime.port_forward(newest.id, ports)

    async def relay(self, request: Request, url: str) -> None:
        """
        Relay C{request}'s upgrade to C{url} on the runtime's streaming
        server; returns once it answered (the answer is relayed by then).

        :raises StreamError: not an upgrade, or the server did not answer.
        """
        if not is_upgrade(request):
            raise StreamError(500, "Upgrade request required\n")
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        content = request.content.read() if request.content is not None else b""
        relay = UpgradeRelay(
            request,
            request_head(request, parts.netloc.encode(), target.encode(), content),
            content,
        )
        relay.timeout(ANSWER_TIMEOUT, self.reactor)
        connecting = connectProtocol(self._dial(host, port), relay)

        def client_gone(failure: Failure) -> None:
            relay.client_gone(failure)
            connecting.cancel()

        def not_connected(failure: Failure) -> None:
            if not relay.answered.called:
                relay.answered.errback(failure)

        request.notifyFinish().addErrback(client_gone)
        connecting.addErrback(not_connected)
        try:
            await relay.answered
        except Exception as e:
            if relay.gone:
                return
            if isinstance(e, ConnectionRefusedError):
                raise StreamError(
                    500, f"dial tcp {host}:{port}: connect: connection refused\n"
                ) from None
            raise StreamError(500, f"{e or type(e).__name__}\n") from None
