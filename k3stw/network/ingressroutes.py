"""
The Ingress controller's routing, as pure functions of what its informers
hold: which Ingresses are its own, the route table their rules make, the
ready endpoints behind a Service port, and the round robin over them.

Matching follows the Ingress spec: a request's host is looked up among the
rules naming it exactly, then those of its ``*.`` wildcard (one label deep),
then those naming no host; in each, the longest matching path wins, Exact
before Prefix at the same length.  Prefix paths match element by element
(``/foo`` matches ``/foo`` and ``/foo/bar``, not ``/foobar``; a trailing
slash is ignored); ImplementationSpecific is a Prefix, as Traefik treats it.
Nothing matching, the oldest Ingress's ``spec.defaultBackend`` answers;
without one, 404.  Of two Ingresses naming the same host, path and type, the
older wins (by creation, then namespace and name), as of two default
backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from k3stw.machinery.objects import Object, get_path, metadata, name_of, namespace_of

#: k3s's bundled IngressClass and the controller it names (Traefik's chart defaults).
CLASS_NAME = "traefik"
CONTROLLER = "traefik.io/ingress-controller"
#: The annotation an Ingress without ``spec.ingressClassName`` may name its class with.
CLASS_ANNOTATION = "kubernetes.io/ingress.class"
SERVICE_NAME = "kubernetes.io/service-name"
TLS_TYPE = "kubernetes.io/tls"

#: How many (host, path) lookups a route table remembers.
FOUND_KEPT = 4096
#: A backend endpoint: (address, port).
Address = tuple[str, int]


def our_classes(ingress_classes: Iterable[Object]) -> frozenset[str]:
    """The names of the IngressClasses that name this controller."""
    return frozenset(
        name_of(c) for c in ingress_classes if get_path(c, "spec", "controller") == CONTROLLER
    )


def is_ours(ingress: Object, classes: frozenset[str]) -> bool:
    """
    Whether the controller serves C{ingress}: its class is one of C{classes},
    or it names none (neither field nor annotation, or the annotation says ``traefik``).
    """
    name = get_path(ingress, "spec", "ingressClassName")
    if name:
        return name in classes
    annotated = (metadata(ingress).get("annotations") or {}).get(CLASS_ANNOTATION)
    return not annotated or annotated == CLASS_NAME


@dataclass(frozen=True)
class Backend:
    """A Service port in an Ingress's namespace (by number, or by name)."""

    namespace: str
    service: str
    port: int | str

    @cached_property
    def key(self) -> str:
        return f"{self.namespace}/{self.service}:{self.port}"

    @classmethod
    def of(cls, namespace: str, backend: object) -> Backend | None:
        """The Service backend of an Ingress backend object (None for a resource backend)."""
        if not isinstance(backend, Mapping):
            return None
        service = backend.get("service")
        if not isinstance(service, Mapping) or not service.get("name"):
            return None
        port = service.get("port") or {}
        number = port.get("number")
        return cls(
            namespace, str(service["name"]), int(number) if number else str(port.get("name") or "")
        )


@dataclass(frozen=True)
class Route:
    """Where a matched request goes: the Ingress (``ns/name``) and its backend."""

    ingress: str
    backend: Backend


def _segments(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split("/") if part)


@dataclass(frozen=True)
class PathRule:
    """One path of a rule: Exact or Prefix (ImplementationSpecific is a Prefix)."""

    exact: bool
    path: str
    route: Route
    segments: tuple[str, ...] = ()

    def matches(self, path: str, segments: tuple[str, ...]) -> bool:
        if self.exact:
            return path == self.path
        return segments[: len(self.segments)] == self.segments

    @property
    def priority(self) -> tuple[int, bool]:
        """Longer first; Exact before Prefix at the same length."""
        return (len(self.path.rstrip("/")), self.exact)


def _creation(ingress: Object) -> tuple[str, str, str]:
    return (
        str(metadata(ingress).get("creationTimestamp") or ""),
        namespace_of(ingress),
        name_of(ingress),
    )


@dataclass
class RouteTable:
    """The routes of a set of Ingresses, by host (see the module docstring)."""

    hosts: dict[str, list[PathRule]] = field(default_factory=dict)
    wildcards: dict[str, list[PathRule]] = field(default_factory=dict)
    any_host: list[PathRule] = field(default_factory=list)
    default: Route | None = None
    #: TLS Secrets (``ns/name``) by host; wildcard hosts keep their ``*.``.
    certificates: dict[str, str] = field(default_factory=dict)
    #: Routes found, by host and path: most requests ask for what others did.
    _found: dict[tuple[str, str], Route | None] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, ingresses: Iterable[Object]) -> RouteTable:
        """The table of C{ingresses} (already filtered to this controller's)."""
        table = cls()
        seen: set[tuple[str, bool, str]] = set()
        for ingress in sorted(ingresses, key=_creation):
            namespace = namespace_of(ingress)
            key = f"{namespace}/{name_of(ingress)}"
            spec = ingress.get("spec") or {}
            default = Backend.of(namespace, spec.get("defaultBackend"))
            if default is not None and table.default is None:
                table.default = Route(key, default)
            for tls in spec.get("tls") or ():
                secret = tls.get("secretName")
                for host in tls.get("hosts") or ():
                    if secret:
                        table.certificates.setdefault(str(host).lower(), f"{namespace}/{secret}")
            for rule in spec.get("rules") or ():
                host = str(rule.get("host") or "").lower()
                for entry in get_path(rule, "http", "paths") or ():
                    backend = Backend.of(namespace, entry.get("backend"))
                    if backend is None:
                        continue
                    exact = entry.get("pathType") == "Exact"
                    path = str(entry.get("path") or "/")
                    if (host, exact, path) in seen:
                        continue
                    seen.add((host, exact, path))
                    table._add(host, PathRule(exact, path, Route(key, backend), _segments(path)))
        for rules in (*table.hosts.values(), *table.wildcards.values(), table.any_host):
            rules.sort(key=lambda r: r.priority, reverse=True)
        return table

    def _add(self, host: str, rule: PathRule) -> None:
        if not host:
            self.any_host.append(rule)
        elif host.startswith("*."):
            self.wildcards.setdefault(host[1:], []).append(rule)
        else:
            self.hosts.setdefault(host, []).append(rule)

    def match(self, host: str, path: str) -> Route | None:
        """The route of a request for C{host} (a port allowed) and C{path} (a query allowed)."""
        path = path.partition("?")[0]
        key = (host, path)
        if key in self._found:
            return self._found[key]
        if len(self._found) >= FOUND_KEPT:
            self._found.clear()
        found = self._found[key] = self._match(_bare_host(host), path or "/")
        return found

    def _match(self, host: str, path: str) -> Route | None:
        segments = _segments(path)
        dot = host.find(".")
        candidates: Sequence[Sequence[PathRule]] = (
            self.hosts.get(host, ()),
            self.wildcards.get(host[dot:], ()) if dot > 0 else (),
            self.any_host,
        )
        for rules in candidates:
            for rule in rules:
                if rule.matches(path, segments):
                    return rule.route
        return self.default

    def certificate(self, server_name: str) -> str | None:
        """The TLS Secret (``ns/name``) for an SNI name: its exact host's, else its wildcard's."""
        name = server_name.lower()
        dot = name.find(".")
        return self.certificates.get(name) or (
            self.certificates.get("*" + name[dot:]) if dot > 0 else None
        )


def _bare_host(host: str) -> str:
    host = host.lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def service_port(service: Object, port: int | str) -> Object | None:
    """The Service port a backend names, by number or by name."""
    for entry in get_path(service, "spec", "ports") or ():
        if (isinstance(port, int) and entry.get("port") == port) or (
            isinstance(port, str) and port and entry.get("name") == port
        ):
            return dict(entry)
    return None


def ready_endpoints(service_port_name: str, slices: Iterable[Object]) -> list[Address]:
    """
    The ready endpoints of a Service's port (by its name, ``""`` if unnamed)
    in its EndpointSlices, as (address, port), in a stable order.
    """
    found: set[Address] = set()
    for endpoint_slice in slices:
        number = None
        for entry in endpoint_slice.get("ports") or ():
            if str(entry.get("name") or "") == service_port_name and entry.get("port"):
                number = int(entry["port"])
        if number is None:
            continue
        for endpoint in endpoint_slice.get("endpoints") or ():
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            addresses = endpoint.get("addresses") or ()
            if addresses:
                found.add((str(addresses[0]), number))
    return sorted(found)


def endpoints_of(
    backend: Backend,
    service: Callable[[str], Object | None],
    slices: Callable[[str, str], Iterable[Object]],
) -> list[Address] | None:
    """
    The ready endpoints behind C{backend}; None if its Service or port does
    not exist (a 404, as Traefik), an empty list if nothing is ready (a 503).

    :param service: the Service of a key (``ns/name``).
    :param slices: the EndpointSlices of a namespace and Service name.
    """
    found = service(f"{backend.namespace}/{backend.service}")
    if found is None or get_path(found, "spec", "type") == "ExternalName":
        return None
    port = service_port(found, backend.port)
    if port is None:
        return None
    return ready_endpoints(str(port.get("name") or ""), slices(backend.namespace, backend.service))


class RoundRobin:
    """Each backend's endpoints in turn; the turn survives endpoint changes."""

    def __init__(self) -> None:
        self._turns: dict[str, int] = {}

    def pick(self, backend: Backend, endpoints: Sequence[Address]) -> Address:
        turn = self._turns.get(backend.key, 0)
        self._turns[backend.key] = turn + 1
        return endpoints[turn % len(endpoints)]
