"""
Container probes (liveness, readiness, startup) as the kubelet's prober
runs them, one state per container instance and probe type, advanced by
the pod worker's syncs: nothing is probed before the container runs and its
``initialDelaySeconds`` passed, then every ``periodSeconds``; a result is
published after ``failureThreshold`` failures or ``successThreshold``
successes in a row.  Readiness starts failed, liveness succeeded, startup
unknown; liveness and readiness wait for startup to succeed, and a failed
liveness or startup probe asks the worker to kill the container (it pauses
until a new instance runs).

exec probes go through the runtime's C{ExecSync}; httpGet, tcpSocket and
grpc through a L{Prober} (the network half, so unit tests need no sockets);
a hook's ``sleep`` waits on the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.runtime import CRIError, Runtime

#: The User-Agent of HTTP probes.
USER_AGENT = "kube-probe/1.32"
KINDS = ("startup", "liveness", "readiness")
_TITLES = {"startup": "Startup", "liveness": "Liveness", "readiness": "Readiness"}


class Prober(Protocol):
    """The network half of probing (and of httpGet hooks)."""

    def http_get(
        self, url: str, headers: Mapping[str, str], timeout: float
    ) -> Deferred[tuple[int, bytes]]:
        """GET C{url}: the status code and the start of the body; fails on a network error."""

    def tcp_connect(self, host: str, port: int, timeout: float) -> Deferred[None]:
        """Open (and close) a TCP connection; fails if it cannot."""

    def grpc_check(self, host: str, port: int, service: str, timeout: float) -> Deferred[str]:
        """
        Ask C{grpc.health.v1.Health/Check} about C{service}: the answer's
        status name (C{SERVING}, ...); fails, in kube's words, if it cannot.
        """


@dataclass
class _State:
    container_id: str
    result: bool | None
    due: float
    successes: int = 0
    failures: int = 0
    paused: bool = False


@dataclass(frozen=True)
class Outcome:
    """One probe run: whether it succeeded, and its output (the failure's message)."""

    ok: bool
    output: str = ""


def _port(container: Mapping[str, Any], port: object) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports") or ():
        if declared.get("name") == port:
            return int(declared.get("containerPort", 0))
    return int(str(port)) if str(port).isdigit() else 0


async def run_handler(
    handler: Mapping[str, Any],
    container: Mapping[str, Any],
    container_id: str,
    pod_ip: str,
    runtime: Runtime,
    prober: Prober | None,
    timeout: float,
    clock: IReactorTime,
) -> Outcome:
    """
    Run one probe or hook handler (exec, httpGet, tcpSocket, grpc; sleep)
    against a running container.  A sleep longer than C{timeout} (a preStop
    hook's grace) is given up on at C{timeout}, without failing: the kubelet
    stops waiting for the hook and goes on stopping the container.
    """
    try:
        if "sleep" in handler:
            seconds = float((handler["sleep"] or {}).get("seconds") or 0)
            await deferLater(clock, max(0.0, min(seconds, timeout)), lambda: None)
            return Outcome(True)
        if "exec" in handler:
            command = list((handler["exec"] or {}).get("command") or ())
            answer: api.ExecSyncResponse = await runtime.exec_sync(
                container_id, command, int(timeout)
            )
            output = (answer.stdout + answer.stderr).decode("utf-8", "replace")
            return Outcome(answer.exit_code == 0, output)
        if prober is None:
            return Outcome(False, "this node cannot probe over the network")
        if "httpGet" in handler:
            get = handler["httpGet"] or {}
            host = get.get("host") or pod_ip
            scheme = str(get.get("scheme") or "HTTP").lower()
            path = str(get.get("path") or "/")
            port = _port(container, get.get("port"))
            headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
            for header in get.get("httpHeaders") or ():
                headers[str(header.get("name"))] = str(header.get("value", ""))
            code, _ = await prober.http_get(f"{scheme}://{host}:{port}{path}", headers, timeout)
            if 200 <= code < 400:
                return Outcome(True)
            return Outcome(False, f"HTTP probe failed with statuscode: {code}")
        if "tcpSocket" in handler:
            socket = handler["tcpSocket"] or {}
            host = socket.get("host") or pod_ip
            port = _port(container, socket.get("port"))
            await prober.tcp_connect(host, port, timeout)
            return Outcome(True)
        if "grpc" in handler:
            grpc = handler["grpc"] or {}
            service = str(grpc.get("service") or "")
            port = int(grpc.get("port") or 0)
            serving = await prober.grpc_check(pod_ip, port, service, timeout)
            if serving == "SERVING":
                return Outcome(True)
            return Outcome(False, f'service unhealthy (responded with "{serving}")')
    except CRIError as e:
        return Outcome(False, e.details)
    except Exception as e:  # A network error is the probe's failure, in its own words.
        return Outcome(False, str(e) or type(e).__name__)
    return Outcome(False, "unknown handler")


class PodProbes:
    """The probe states of one pod's containers."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], _State] = {}

    def started(self, name: str, container_id: str, spec: Mapping[str, Any]) -> bool:
        """Whether a running container counts as started (its startup probe, if any, passed)."""
        if not spec.get("startupProbe"):
            return True
        state = self._states.get((name, "startup"))
        return state is not None and state.container_id == container_id and bool(state.result)

    def ready(self, name: str, container_id: str, spec: Mapping[str, Any]) -> bool:
        """Whether a running, started container is ready (its readiness probe, if any, passed)."""
        if not self.started(name, container_id, spec):
            return False
        if not spec.get("readinessProbe"):
            return True
        state = self._states.get((name, "readiness"))
        return state is not None and state.container_id == container_id and bool(state.result)

    def due(
        self, name: str, kind: str, container_id: str, spec: Mapping[str, Any], started_at: float
    ) -> bool:
        """Whether the C{kind} probe of this container instance should run now-ish."""
        probe = spec.get(f"{kind}Probe")
        if not probe:
            return False
        key = (name, kind)
        state = self._states.get(key)
        if state is None or state.container_id != container_id:
            initial = {"readiness": False, "liveness": True, "startup": None}[kind]
            delay = float(probe.get("initialDelaySeconds") or 0)
            state = self._states[key] = _State(container_id, initial, started_at + delay)
        if state.paused:
            return False
        if kind != "startup" and not self.started(name, container_id, spec):
            return False
        return not (kind == "startup" and state.result)

    def next_due(self, name: str, kind: str) -> float:
        return self._states[(name, kind)].due

    def record(
        self, name: str, kind: str, spec: Mapping[str, Any], outcome: Outcome, now: float
    ) -> bool | None:
        """
        Count one result; the newly published result if it changed
        (C{False} for liveness or startup: kill the container).
        """
        probe = spec.get(f"{kind}Probe") or {}
        state = self._states[(name, kind)]
        state.due = now + float(probe.get("periodSeconds") or 10)
        if outcome.ok:
            state.successes, state.failures = state.successes + 1, 0
            wanted = int(probe.get("successThreshold") or 1)
            if state.successes >= wanted and state.result is not True:
                state.result = True
                return True
        else:
            state.failures, state.successes = state.failures + 1, 0
            wanted = int(probe.get("failureThreshold") or 3)
            if state.failures >= wanted and state.result is not False:
                state.result = False
                if kind != "readiness":
                    state.paused = True
                return False
            if state.failures >= wanted and kind != "readiness":
                state.paused = True
                return False
        return None

    def forget(self, name: str) -> None:
        for key in [k for k in self._states if k[0] == name]:
            del self._states[key]


def title(kind: str) -> str:
    return _TITLES[kind]


class NetworkProber:
    """A L{Prober} over the reactor's TCP (HTTPS unverified, as the kubelet probes)."""

    #: How much of a response body a probe reads.
    BODY_LIMIT = 10 * 1024

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def http_get(
        self, url: str, headers: Mapping[str, str], timeout: float
    ) -> Deferred[tuple[int, bytes]]:
        return Deferred.fromCoroutine(self._http_get(url, headers, timeout))

    async def _http_get(
        self, url: str, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes]:
        from twisted.web.client import Agent, readBody
        from twisted.web.http_headers import Headers

        agent = Agent(self.reactor, contextFactory=_Unverified(), connectTimeout=timeout)
        asked = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        response = await agent.request(b"GET", url.encode(), asked).addTimeout(
            timeout, self.reactor
        )
        body = await readBody(response).addTimeout(timeout, self.reactor)
        return response.code, body[: self.BODY_LIMIT]

    def tcp_connect(self, host: str, port: int, timeout: float) -> Deferred[None]:
        return Deferred.fromCoroutine(self._tcp_connect(host, port, timeout))

    async def _tcp_connect(self, host: str, port: int, timeout: float) -> None:
        from twisted.internet.endpoints import HostnameEndpoint
        from twisted.internet.protocol import Factory, Protocol

        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=timeout)
        protocol = await endpoint.connect(Factory.forProtocol(Protocol))
        transport = getattr(protocol, "transport", None)
        if transport is not None:  # Connected is all a TCP probe asks.
            transport.loseConnection()

    def grpc_check(self, host: str, port: int, service: str, timeout: float) -> Deferred[str]:
        return Deferred.fromCoroutine(self._grpc_check(host, port, service, timeout))

    async def _grpc_check(self, host: str, port: int, service: str, timeout: float) -> str:
        # grpc is imported here, on a pod's first gRPC probe, never at start.
        import grpc
        from twisted.internet.defer import TimeoutError

        from k3stw.kubelet.cri.client import deferred_from_future

        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        began = self.reactor.seconds()
        channel = grpc.insecure_channel(address, options=[("grpc.primary_user_agent", USER_AGENT)])
        try:
            # The kubelet dials first, blocking until connected or out of time.
            ready = grpc.channel_ready_future(channel)
            try:
                await deferred_from_future(
                    ready, self.reactor.callFromThread, _as_exception
                ).addTimeout(timeout, self.reactor)
            except TimeoutError:
                raise ProbeFailed(
                    f'timeout: failed to connect service "{address}" within '
                    f"{_go_duration(timeout)}: context deadline exceeded"
                ) from None
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_request,
                response_deserializer=health_status,
            )
            left = max(0.001, timeout - (self.reactor.seconds() - began))
            try:
                answer: str = await deferred_from_future(
                    check.future(service, timeout=left), self.reactor.callFromThread, _as_exception
                )
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
                raise ProbeFailed(grpc_failure(code.name, details or "", timeout)) from None
            return answer
        finally:
            channel.close()


def _as_exception(error: BaseException) -> Exception:
    return error if isinstance(error, Exception) else Exception(str(error))


#: grpc.health.v1.HealthCheckResponse.ServingStatus, by number.
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def health_request(service: str) -> bytes:
    """A C{grpc.health.v1.HealthCheckRequest} (field 1, the service) in protobuf's encoding."""
    data = service.encode()
    return bytes([0x0A, *_varint(len(data))]) + data if data else b""


def health_status(message: bytes) -> str:
    """The status name of a C{grpc.health.v1.HealthCheckResponse} (its number if unnamed)."""
    status, at = 0, 0
    while at < len(message):
        key, at = _read_varint(message, at)
        wire = key & 7
        if wire == 0:
            value, at = _read_varint(message, at)
            if key >> 3 == 1:
                status = value
        elif wire == 2:
            length, at = _read_varint(message, at)
            at += length
        else:  # fixed 64 or 32 bits: the only other wire types a newer message may carry
            at += 8 if wire == 1 else 4
    return _SERVING_STATUS.get(status, str(status))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated protobuf message")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _go_duration(seconds: float) -> str:
    return f"{seconds:g}s"


def grpc_failure(code: str, details: str, timeout: float) -> str:
    """
    kube's words for a failed health RPC (C{code}: gRPC's status name,
    C{NOT_FOUND}), as its gRPC prober prints them.
    """
    if code == "UNIMPLEMENTED":
        return (
            "error: this server does not implement the grpc health protocol "
            f"(grpc.health.v1.Health): {details}"
        )
    if code == "DEADLINE_EXCEEDED":
        return f"timeout: health rpc did not complete within {_go_duration(timeout)}"
    # Go's codes print in CamelCase, and spell it "Canceled".
    go_code = "".join(word.capitalize() for word in code.split("_")).replace(
        "Cancelled", "Canceled"
    )
    return f"error: health rpc probe failed: rpc error: code = {go_code} desc = {details}"


class ProbeFailed(Exception):
    """A probe that could not get an answer, in kube's words."""


class _Unverified:
    """HTTPS probes check no certificate (Twisted's C{IPolicyForHTTPS})."""

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        from twisted.internet.ssl import CertificateOptions

        return CertificateOptions(verify=False)
