"""
``/metrics`` of the API server, with kube-apiserver's names and labels, so
dashboards and alerts written for it read k3stw too:
``apiserver_request_total``, ``apiserver_request_duration_seconds``,
``apiserver_watch_events_total`` and ``apiserver_storage_objects`` (counted
once a minute, as kube-apiserver counts them).

The text format is written here: prometheus_client would add megabytes to
every server's memory for four families.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.datastore.interface import IDatastore

#: kube-apiserver's request duration buckets, in seconds.
DURATION_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20,
    30, 45, 60,
)  # fmt: skip
#: How often the stored objects are counted.
STORAGE_COUNT_INTERVAL = 60.0
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: The verb label of each API verb (kube-apiserver's, upper case).
VERB_LABELS = {
    "get": "GET",
    "list": "LIST",
    "watch": "WATCH",
    "create": "POST",
    "update": "PUT",
    "patch": "PATCH",
    "apply": "APPLY",
    "delete": "DELETE",
    "deletecollection": "DELETECOLLECTION",
    "connect": "CONNECT",
}


@dataclass(frozen=True)
class RequestLabels:
    """What a request was about, as kube-apiserver labels it."""

    verb: str
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    scope: str = ""
    dry_run: str = ""

    @classmethod
    def of(
        cls,
        verb: str,
        resource: ResourceType,
        namespace: str | None,
        name: str | None,
        subresource: str | None,
        dry_run: bool = False,
    ) -> RequestLabels:
        scope = "resource" if name else "namespace" if namespace else "cluster"
        return cls(
            VERB_LABELS.get(verb, verb.upper()),
            resource.group,
            resource.version,
            resource.plural,
            subresource or "",
            scope,
            "All" if dry_run else "",
        )


class Family:
    """One metric family: its samples by label values, written in Prometheus's text format."""

    def __init__(self, name: str, kind: str, help: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, values: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[values] = self.values.get(values, 0.0) + amount

    def set(self, values: tuple[str, ...], value: float) -> None:
        self.values[values] = value

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for values, value in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.labels, values)} {_number(value)}")
        return out


@dataclass
class _Observed:
    #: Per bucket, the observations at or below its bound (cumulative, as exposed).
    buckets: list[int]
    total: float = 0.0
    count: int = 0


class HistogramFamily(Family):
    """A histogram: per label values, the count in each bucket, the sum and the count."""

    def __init__(
        self, name: str, help: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> None:
        super().__init__(name, "histogram", help, labels)
        self.buckets = buckets
        self.observed: dict[tuple[str, ...], _Observed] = {}

    def observe(self, values: tuple[str, ...], amount: float) -> None:
        observed = self.observed.get(values)
        if observed is None:
            observed = self.observed[values] = _Observed([0] * len(self.buckets))
        for index in range(bisect.bisect_left(self.buckets, amount), len(self.buckets)):
            observed.buckets[index] += 1
        observed.total += amount
        observed.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for values, observed in sorted(self.observed.items()):
            for bound, count in zip(self.buckets, observed.buckets, strict=True):
                bucket = _labels(self.labels, values, _number(bound))
                out.append(f"{self.name}_bucket{bucket} {count}")
            every = _labels(self.labels, values, "+Inf")
            out.append(f"{self.name}_bucket{every} {observed.count}")
            out.append(f"{self.name}_sum{_labels(self.labels, values)} {_number(observed.total)}")
            out.append(f"{self.name}_count{_labels(self.labels, values)} {observed.count}")
        return out


def _labels(names: tuple[str, ...], values: tuple[str, ...], le: str | None = None) -> str:
    """
    ``{name="value",...}``, names in order as Prometheus's Go client writes
    them, a histogram bucket's bound (C{le}) last.
    """
    pairs = sorted(zip(names, values, strict=True))
    if le is not None:
        pairs.append(("le", le))
    escaped = (
        (name, value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"'))
        for name, value in pairs
    )
    return "{" + ",".join(f'{name}="{value}"' for name, value in escaped) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class APIMetrics:
    """The API server's metrics."""

    def __init__(self) -> None:
        labels = ("verb", "dry_run", "group", "version", "resource", "subresource", "scope")
        self.requests = Family(
            "apiserver_request_total",
            "counter",
            "Counter of apiserver requests broken out for each verb, dry run value, group, "
            "version, resource, scope, component, and HTTP response code.",
            (*labels, "component", "code"),
        )
        self.durations = HistogramFamily(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, dry run value, group, "
            "version, resource, subresource, scope and component.",
            (*labels, "component"),
            DURATION_BUCKETS,
        )
        self.watch_events = Family(
            "apiserver_watch_events_total",
            "counter",
            "Number of events sent in watch clients",
            ("group", "version", "kind"),
        )
        self.storage_objects = Family(
            "apiserver_storage_objects",
            "gauge",
            "Number of stored objects at the time of last check split by kind.",
            ("resource",),
        )

    def observe(self, labels: RequestLabels, code: int, seconds: float) -> None:
        """One finished request (a watch's duration is not a latency: not timed)."""
        values = (
            labels.verb,
            labels.dry_run,
            labels.group,
            labels.version,
            labels.resource,
            labels.subresource,
            labels.scope,
            "apiserver",
        )
        self.requests.add((*values, str(code)))
        if labels.verb not in ("WATCH", "CONNECT"):
            self.durations.observe(values, seconds)

    def watch_event(self, resource: ResourceType) -> None:
        self.watch_events.add((resource.group, resource.version, resource.kind))

    async def count_storage(self, datastore: IDatastore, resources: Iterable[ResourceType]) -> None:
        """Count each resource's stored objects (one datastore count per resource)."""
        for resource in resources:
            counted = await datastore.count(resource.storage_prefix())
            name = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
            self.storage_objects.set((name,), counted)

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        families = (self.requests, self.durations, self.watch_events, self.storage_objects)
        return "\n".join(line for family in families for line in family.lines()).encode() + b"\n"


def served_resources(registry: Registry) -> list[ResourceType]:
    """Each stored resource once (its preferred version)."""
    seen: dict[str, ResourceType] = {}
    for resource in registry:
        seen.setdefault(resource.storage_prefix(), resource)
    return list(seen.values())
