"""
The connect subresources of pods and services, relayed as kube-apiserver
relays them:

- ``pods/<name>/log``: a GET of the kubelet's ``/containerLogs/<ns>/<pod>/<container>``,
  its body streamed back (``follow`` streams until either side goes);
- ``pods/<name>/exec|attach|portforward``: the client's upgrade (websocket or
  SPDY/3.1) relayed to the kubelet's ``/exec``, ``/attach``, ``/portForward``
  and spliced once it switches protocols; kubectl's own websockets
  (remotecommand v5, tunnelled port-forward) are answered here and spoken
  to the kubelet as SPDY (L{k3stw.apiserver.streams});
- ``pods/<name>[:port]/proxy/...`` and ``services/<name>[:port]/proxy/...``
  (``https:<name>:<port>`` too): relayed to the pod's IP, or to a ready
  endpoint of the service.

This module reads the options (kube's query parameters, decoded as its
parameter codec decodes them) and finds where a request goes; L{NodeProxy}
carries the bytes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from twisted.web.server import Request

from k3stw.apiserver.nodeproxy import NodeProxy, proxied_target
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError, bad_request, invalid
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.objects import Object
from k3stw.upgrade import is_upgrade

__all__ = [
    "Connect",
    "choose_container",
    "kubelet_target",
    "log_refusal",
    "pod_address",
    "service_address",
    "split_scheme_name_port",
]

#: The connect subresources of each resource relayed here, and the methods each takes.
METHODS = {
    ("pods", "log"): (b"GET",),
    ("pods", "exec"): (b"GET", b"POST"),
    ("pods", "attach"): (b"GET", b"POST"),
    ("pods", "portforward"): (b"GET", b"POST"),
    ("pods", "proxy"): (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE"),
    ("services", "proxy"): (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE"),
}
#: Raw path segments up to ``.../proxy`` (``api/v1/namespaces/<ns>/<plural>/<name>/proxy``).
PROXY_DEPTH = 7
_INT = re.compile(r"[+-]?[0-9]+\Z")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")


@dataclass(frozen=True)
class Connect:
    """A connect request: ``<plural>/<name>/<subresource>`` in C{namespace}."""

    plural: str
    namespace: str
    name: str
    subresource: str


def connect_route(rest: list[str]) -> Connect | None:
    """The connect subresource ``namespaces/<ns>/<plural>/<name>/<sub>[/...]`` names, if any."""
    if len(rest) < 5 or rest[0] != "namespaces":
        return None
    plural, sub = rest[2], rest[4]
    if (plural, sub) not in METHODS or (sub != "proxy" and len(rest) > 5):
        return None
    return Connect(plural, rest[1], rest[3], sub)


# Query parameters, decoded as kube's parameter codec decodes them


def _values(request: Request, name: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in request.args.get(name.encode(), [])]


def _bool(request: Request, name: str) -> bool:
    """Absent, ``0`` or ``false`` (any case) is false; anything else true (Go's query decoding)."""
    values = _values(request, name)
    return bool(values) and values[0] != "0" and values[0].lower() != "false"


def _int(text: str, bits: int = 64) -> int:
    if not _INT.match(text):
        raise bad_request(f'strconv.ParseInt: parsing "{text}": invalid syntax')
    value = int(text)
    if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise bad_request(f'strconv.ParseInt: parsing "{text}": value out of range')
    return value


def _optional_int(request: Request, name: str) -> int | None:
    values = _values(request, name)
    return _int(values[0]) if values else None


def _time(text: str) -> datetime:
    try:
        if _RFC3339.match(text):
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    raise bad_request(
        f'parsing time "{text}" as "2006-01-02T15:04:05Z07:00": cannot parse "{text}" as "2006"'
    )


# Containers and addresses


def _container_names(pod: Object) -> list[str]:
    """Init, regular and ephemeral containers, in kube's VisitContainers order."""
    spec = pod.get("spec") or {}
    return [
        c.get("name", "")
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
    ]


def choose_container(pod: Object, container: str) -> str:
    """
    C{container}, or the pod's only one when empty (kube's validateContainer).

    :raises StatusError: 400 in kube's words.
    """
    name = pod["metadata"]["name"]
    if not container:
        containers = (pod.get("spec") or {}).get("containers") or []
        if len(containers) == 1:
            return str(containers[0].get("name", ""))
        if not containers:
            raise bad_request(f"a container name must be specified for pod {name}")
        listed = " ".join(_container_names(pod))
        raise bad_request(
            f"a container name must be specified for pod {name}, choose one of: [{listed}]"
        )
    if container not in _container_names(pod):
        raise bad_request(f"container {container} is not valid for pod {name}")
    return container


def _segment(text: str) -> str:
    return quote(text, safe="")


def kubelet_target(request: Request, pod: Object, subresource: str) -> bytes:
    """
    The kubelet's path and query for C{subresource} of C{pod}, from the
    request's options (kube's LogLocation, ExecLocation, AttachLocation,
    PortForwardLocation).

    :raises StatusError: options that do not decode (400), or invalid (422);
        a container that is not the pod's (400).
    """
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    where = f"{_segment(namespace)}/{_segment(name)}"
    params: list[tuple[str, str]] = []
    if subresource == "portforward":
        ports = [str(_int(p, 32)) for p in _values(request, "ports")]
        if ports:
            params.append(("port", ",".join(ports)))
        path = f"/portForward/{where}"
    elif subresource == "log":
        params = _log_params(request, name)
        container = choose_container(pod, (_values(request, "container") or [""])[0])
        path = f"/containerLogs/{where}/{_segment(container)}"
    else:
        container = choose_container(pod, (_values(request, "container") or [""])[0])
        for option, param in (("stdin", "input"), ("stdout", "output"), ("stderr", "error")):
            if _bool(request, option):
                params.append((param, "1"))
        if _bool(request, "tty"):
            params.append(("tty", "1"))
        if subresource == "exec":
            params.extend(("command", c) for c in _values(request, "command"))
        path = f"/{subresource}/{where}/{_segment(container)}"
    # Go's url.Values.Encode: keys sorted, values of a key in order.
    query = urlencode(sorted(params, key=lambda p: p[0]))
    return (path + ("?" + query if query else "")).encode("ascii")


def _log_params(request: Request, name: str) -> list[tuple[str, str]]:
    """The kubelet's query for a log request, once valid (kube's ValidatePodLogOptions)."""
    tail = _optional_int(request, "tailLines")
    limit = _optional_int(request, "limitBytes")
    since = _optional_int(request, "sinceSeconds")
    since_text = (_values(request, "sinceTime") or [""])[0]
    since_time = _time(since_text) if since_text and since_text != "null" else None
    errors: list[tuple[str, str]] = []
    if tail is not None and tail < 0:
        errors.append(("tailLines", f"Invalid value: {tail}: must be greater than or equal to 0"))
    if limit is not None and limit < 1:
        errors.append(("limitBytes", f"Invalid value: {limit}: must be greater than 0"))
    if since is not None and since_time is not None:
        errors.append(
            ("", "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified")
        )
    elif since is not None and since < 1:
        errors.append(("sinceSeconds", f"Invalid value: {since}: must be greater than 0"))
    if errors:
        raise invalid("PodLogOptions", name, errors)
    params = [
        (flag, "true") for flag in ("follow", "previous", "timestamps") if _bool(request, flag)
    ]
    if since is not None:
        params.append(("sinceSeconds", str(since)))
    if since_time is not None:
        params.append(("sinceTime", since_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")))
    if tail is not None:
        params.append(("tailLines", str(tail)))
    if limit is not None:
        params.append(("limitBytes", str(limit)))
    return params


def log_refusal(name: str) -> Callable[[int, bytes], StatusError]:
    """
    The Status of a kubelet's non-2xx answer to a log request (kube's
    GenericHttpResponseChecker for ``pods/log``).
    """

    def refused(code: int, body: bytes) -> StatusError:
        text = body.decode("utf-8", "replace")
        if code == 400:
            return bad_request(text)
        details = {"name": name, "kind": "pods/log"}
        if code == 500:
            return StatusError(
                500, f"Internal error occurred: {text}", {"causes": [{"message": text}]}
            )
        if code == 404:
            message = "the server could not find the requested resource"
            return StatusError(404, f"{message} ( pods/log {name})", details)
        if code >= 500:
            message = (
                f"an error on the server ({_go_quote(text)}) "
                "has prevented the request from succeeding"
            )
            return StatusError(code, f"{message} ( pods/log {name})", details, "InternalError")
        message = (
            f"the server responded with the status code {code} but did not return more information"
        )
        return StatusError(code, f"{message} ( pods/log {name})", details, "Unknown")

    return refused


def _go_quote(text: str) -> str:
    """Go's C{%q} of a string, for the printable and the usual escapes."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
    return '"' + "".join(out) + '"'


def split_scheme_name_port(identifier: str, kind: str) -> tuple[str, str, str]:
    """
    ``name``, ``name:port`` or ``scheme:name:port`` (scheme ``http`` or
    ``https``) as C{(scheme, name, port)} (kube's SplitSchemeNamePort).

    :raises StatusError: 400 ``invalid <kind> request "<id>"``.
    """
    parts = identifier.split(":")
    if len(parts) > 3:
        raise bad_request(f'invalid {kind} request "{identifier}"')
    scheme = parts[0] if len(parts) == 3 else ""
    name = parts[-2] if len(parts) == 3 else parts[0]
    port = parts[-1] if len(parts) > 1 else ""
    if not name or scheme not in ("", "http", "https"):
        raise bad_request(f'invalid {kind} request "{identifier}"')
    return scheme, name, port


def _global_unicast(text: str) -> bool:
    """Go's C{net.IP.IsGlobalUnicast}."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (
        ip.is_unspecified
        or ip.is_loopback
        or ip.is_multicast
        or ip.is_link_local
        or ip == ipaddress.IPv4Address("255.255.255.255")
    )


def _numeric_port(port: str, scheme: str) -> int:
    if not port:
        return 443 if scheme == "https" else 80
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StatusError(503, f"error trying to reach service: dial tcp: unknown port tcp/{port}")
    return int(port)


def _pod_ips(pod: Object) -> list[str]:
    status = pod.get("status") or {}
    ips = [entry.get("ip") for entry in status.get("podIPs") or [] if entry.get("ip")]
    return ips or ([status["podIP"]] if status.get("podIP") else [])


def pod_address(pod: Object, scheme: str, port: str) -> tuple[str, int]:
    """
    Where ``pods/<pod>[:port]/proxy`` goes: the pod's first IP, on C{port}
    or its first declared container port (kube's pod ResourceLocation).

    :raises StatusError: 400 ``address not allowed`` for a pod without a
        global unicast IP.
    """
    if not port:
        for container in (pod.get("spec") or {}).get("containers") or []:
            declared = container.get("ports") or []
            if declared:
                port = str(declared[0].get("containerPort", ""))
                break
    ips = _pod_ips(pod)
    if not ips or not _global_unicast(ips[0]):
        raise bad_request("address not allowed")
    return ips[0], _numeric_port(port, scheme)


async def service_address(
    store: ObjectStore,
    pods: ResourceType,
    endpoints: ResourceType,
    services: ResourceType,
    namespace: str,
    identifier: str,
) -> tuple[str, str, int]:
    """
    Where ``services/<id>/proxy`` goes: C{(scheme, ip, port)} of the first
    ready address of the service's Endpoints that serves the port and
    belongs to a pod with that IP (kube's service ResourceLocation; kube
    starts at a random subset and address).

    :raises StatusError: 400 for a malformed id, 404 for a missing Service
        or Endpoints, 503 when no endpoint serves the port.
    """
    scheme, name, port = split_scheme_name_port(identifier, "service")
    if port.isdigit():
        service = await store.get(services, namespace, name)
        declared = (service.get("spec") or {}).get("ports") or []
        named = [p.get("name", "") for p in declared if p.get("port") == int(port)]
        if not named:
            raise StatusError(503, f'no service port {int(port)} found for service "{name}"')
        port = named[0]
    found = await store.get(endpoints, namespace, name)
    subsets = found.get("subsets") or []
    if not subsets:
        raise StatusError(503, f'no endpoints available for service "{name}"')
    for subset in subsets:
        for served in subset.get("ports") or []:
            if served.get("name", "") != port:
                continue
            for address in subset.get("addresses") or []:
                if await _is_pods_address(store, pods, namespace, address):
                    return scheme, address["ip"], int(served.get("port", 0))
    raise StatusError(503, f'no endpoints available for service "{identifier}"')


async def _is_pods_address(
    store: ObjectStore, pods: ResourceType, namespace: str, address: dict[str, Any]
) -> bool:
    """Whether an endpoint address is a pod of C{namespace} with that IP (kube's isValidAddress)."""
    ref = address.get("targetRef") or {}
    if not ref.get("name") or ref.get("namespace") != namespace:
        return False
    try:
        pod = await store.get(pods, namespace, ref["name"])
    except StatusError:
        return False
    return address.get("ip") in _pod_ips(pod)


# Serving


async def relay(
    request: Request,
    connect: Connect,
    store: ObjectStore,
    resources: Callable[[str], ResourceType],
    proxy: NodeProxy,
) -> None:
    """
    Relay an authorized connect request: to the pod's kubelet, to the pod,
    or to one of the service's pods.

    :param resources: the core resource of a plural (``pods``, ``endpoints``, ...).
    """
    if connect.plural == "services":
        scheme, host, number = await service_address(
            store,
            resources("pods"),
            resources("endpoints"),
            resources("services"),
            connect.namespace,
            connect.name,
        )
        target = proxied_target(request, PROXY_DEPTH)
        await proxy.relay_address(request, host, number, scheme == "https", target)
        return
    if connect.subresource == "proxy":
        scheme, name, named_port = split_scheme_name_port(connect.name, "pod")
        pod = await store.get(resources("pods"), connect.namespace, name)
        host, number = pod_address(pod, scheme, named_port)
        target = proxied_target(request, PROXY_DEPTH)
        await proxy.relay_address(request, host, number, scheme == "https", target)
        return
    pod = await store.get(resources("pods"), connect.namespace, connect.name)
    target = kubelet_target(request, pod, connect.subresource)
    node = (pod.get("spec") or {}).get("nodeName")
    if connect.subresource == "log":
        if not node:
            # kube streams nothing for a pod not yet on a node.
            request.setHeader(b"content-type", b"text/plain")
            request.finish()
            return
        await proxy.relay_log(request, node, target, log_refusal(connect.name))
        return
    if not node:
        raise bad_request(f"pod {connect.name} does not have a host assigned")
    if not is_upgrade(request):
        raise bad_request("Upgrade request required")
    # Loaded on the first upgrade: SPDY's dataclasses and tables cost about 250 KB.
    from k3stw.apiserver.streams import serve_websocket, translated

    if translated(request, connect.subresource):
        await serve_websocket(request, proxy, node, target, connect.subresource)
        return
    await proxy.relay_upgrade(request, node, target)
