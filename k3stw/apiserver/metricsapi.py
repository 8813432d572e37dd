"""
The resource metrics API, ``metrics.k8s.io/v1beta1``, that ``kubectl top``
reads: NodeMetrics (``nodes``) and PodMetrics (``pods``), get and list.

k3s serves it with its metrics-server add-on; k3stw runs no add-ons yet, so
the API server answers it itself, as metrics-server would: from each node's
kubelet Summary API (``/stats/summary?only_cpu_and_memory=true``), read
through the node proxy (the agent's tunnel, or directly on the server's own
node), scraped on demand and kept for L{CACHE_SECONDS}, all nodes in
parallel, each within L{SCRAPE_TIMEOUT}.  A node that does not answer is left
out of lists, and a get of it is a 404, as with metrics-server.

As metrics-server does, CPU is the growth of the cumulative CPU time
(``usageCoreNanoSeconds``) between two samples divided by the time between
them, which is the ``window`` reported; memory is the last sample's working
set.  The samples are timed by this server's clock as they arrive.  A node
sampled within the last L{MAX_WINDOW} seconds is measured from that sample;
otherwise a second sample is taken L{MIN_WINDOW} second after the first, so
the first ``kubectl top`` after a pause answers (with a 1 s window) rather
than "metrics not available yet".
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.server import Request

from k3stw.apiserver import tables
from k3stw.apiserver.kinds import nodes, pods
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.request import answer, param, wants_table
from k3stw.apiserver.status import StatusError, not_found
from k3stw.apiserver.storage import ObjectStore, Predicate
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.verbs import Target, predicate
from k3stw.logs import Logger
from k3stw.machinery.objects import Object, get_path, metadata, name_of, namespace_of, uid_of
from k3stw.machinery.quantity import Quantity, canonical, parse_quantity
from k3stw.machinery.times import go_duration, rfc3339

GROUP = "metrics.k8s.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Seconds a node's samples are used before it is scraped again (metrics-server scrapes
#: every 15-60 s; on demand, this keeps repeated ``kubectl top`` cheap).
CACHE_SECONDS = 10.0
#: Seconds a node's summary may take to arrive, dial included.
SCRAPE_TIMEOUT = 5.0
#: The longest window measured from an earlier sample; past it, two fresh samples are taken.
MAX_WINDOW = 60.0
#: Seconds between the two samples taken when there is no recent one (the kubelet's own
#: rate needs samples at least this far apart too).
MIN_WINDOW = 1.0
#: The kubelet's summary, reduced to what metrics need.
SUMMARY_PATH = b"/stats/summary?only_cpu_and_memory=true"
#: The largest summary read (a node with many pods writes a few hundred kilobytes).
MAX_SUMMARY_BYTES = 4 * 1024 * 1024

_NAME_COLUMN = tables.Column("Name", format="name", description="Name of the resource")
_USAGE_COLUMNS = (
    _NAME_COLUMN,
    tables.Column("cpu", format="quantity"),
    tables.Column("memory", format="quantity"),
    tables.Column("Window", format="duration"),
)


def _node_cells(obj: tables.Printed, now: object) -> list[Any]:
    usage = obj.get("usage") or {}
    return [tables.name_cell(obj), usage.get("cpu", ""), usage.get("memory", ""), obj["window"]]


def _pod_cells(obj: tables.Printed, now: object) -> list[Any]:
    """A pod's row: its containers' usage summed, as metrics-server's table shows."""
    containers = obj.get("containers") or ()
    cpu = sum((_used(c, "cpu") for c in containers), Fraction(0))
    memory = sum((_used(c, "memory") for c in containers), Fraction(0))
    return [tables.name_cell(obj), _cpu(cpu * 10**9), _memory(memory), obj["window"]]


NODE_METRICS = ResourceType(
    GROUP,
    VERSION,
    "NodeMetrics",
    "nodes",
    "",
    namespaced=False,
    verbs=("get", "list"),
    strategy=Strategy(printer=tables.Printer(_USAGE_COLUMNS, _node_cells)),
)
POD_METRICS = ResourceType(
    GROUP,
    VERSION,
    "PodMetrics",
    "pods",
    "",
    namespaced=True,
    verbs=("get", "list"),
    strategy=Strategy(printer=tables.Printer(_USAGE_COLUMNS, _pod_cells)),
)
#: The resources of the group, for the registry (discovery lists them from there).
RESOURCES = (NODE_METRICS, POD_METRICS)


def is_resource_metrics(resource: ResourceType) -> bool:
    """Whether C{resource} is answered by L{ResourceMetrics}, never stored."""
    return resource in RESOURCES


# Samples and usage, pure


@dataclass(frozen=True)
class Sample:
    """
    One reading of a node's or a container's figures.

    :ivar at: when it arrived, in this server's clock's seconds.
    :ivar started: the node's or container's start time as the kubelet wrote
        it: another one means a restart, after which the CPU time counts anew.
    :ivar cpu: cumulative CPU time, in core-nanoseconds.
    :ivar memory: the working set, in bytes.
    """

    at: float
    started: str | None
    cpu: int
    memory: int


@dataclass(frozen=True)
class PodSample:
    """A pod's containers' samples, in the kubelet's order."""

    uid: str | None
    containers: dict[str, Sample]


@dataclass(frozen=True)
class Scrape:
    """
    One summary of a node, arrived at C{at}: the node's sample and each
    pod's, by (namespace, name).
    """

    at: float
    node: Sample | None
    pods: dict[tuple[str, str], PodSample] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """CPU (nanocores) and memory (bytes) over C{window} seconds ending at C{at}."""

    at: float
    window: float
    cpu: int
    memory: int


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _sample(figures: Mapping[str, Any], at: float) -> Sample | None:
    """A sample from a summary's node or container stats; None without CPU time or working set."""
    cpu = _count(get_path(figures, "cpu", "usageCoreNanoSeconds"))
    memory = _count(get_path(figures, "memory", "workingSetBytes"))
    if cpu is None or memory is None:
        return None
    started = figures.get("startTime")
    return Sample(at, started if isinstance(started, str) else None, cpu, memory)


def parse_summary(document: object, at: float) -> Scrape:
    """
    The samples in a Summary API document that arrived at C{at}.  A pod is
    kept only if every one of its containers has both figures.

    :raises ValueError: if C{document} is not a summary.
    """
    if not isinstance(document, dict) or not isinstance(document.get("node"), dict):
        raise ValueError("not a stats/v1alpha1 Summary")
    found: dict[tuple[str, str], PodSample] = {}
    for pod in document.get("pods") or ():
        ref = pod.get("podRef") if isinstance(pod, dict) else None
        if not isinstance(ref, dict):
            continue
        containers: dict[str, Sample] = {}
        for container in pod.get("containers") or ():
            name = container.get("name") if isinstance(container, dict) else None
            sample = _sample(container, at) if isinstance(name, str) else None
            if sample is None:
                break
            containers[str(name)] = sample
        else:
            uid = ref.get("uid")
            key = (str(ref.get("namespace", "")), str(ref.get("name", "")))
            found[key] = PodSample(uid if isinstance(uid, str) else None, containers)
    return Scrape(at, _sample(document["node"], at), found)


def usage(previous: Sample, last: Sample) -> Usage | None:
    """
    What was used between two samples (metrics-server's ``resourceUsage``);
    None across a restart or when the CPU time went down.
    """
    window = round(last.at - previous.at, 3)
    if window <= 0 or last.started != previous.started or last.cpu < previous.cpu:
        return None
    return Usage(last.at, window, int((last.cpu - previous.cpu) / window), last.memory)


def _cpu(nanocores: Fraction | int) -> str:
    return canonical(Quantity(Fraction(nanocores) / 10**9, "decimal"))


def _memory(size: Fraction | int) -> str:
    return canonical(Quantity(Fraction(size), "binary"))


def _used(container: Mapping[str, Any], resource: str) -> Fraction:
    return parse_quantity(get_path(container, "usage", resource) or "0").value


def _usage_fields(used: Usage) -> dict[str, Any]:
    return {"cpu": _cpu(used.cpu), "memory": _memory(used.memory)}


def _meta(obj: Object, now: str) -> dict[str, Any]:
    """The metrics' metadata: the object's name, namespace and labels, created now."""
    meta: dict[str, Any] = {"name": name_of(obj)}
    if namespace_of(obj):
        meta["namespace"] = namespace_of(obj)
    meta["creationTimestamp"] = now
    labels = metadata(obj).get("labels")
    if labels:
        meta["labels"] = dict(labels)
    return meta


def node_metrics(node: Object, used: Usage, now: str) -> Object:
    """A NodeMetrics (as a list item: no kind) of C{node}."""
    return {
        "metadata": _meta(node, now),
        "timestamp": rfc3339(used.at),
        "window": go_duration(round(used.window * 10**9)),
        "usage": _usage_fields(used),
    }


def pod_metrics(pod: Object, previous: PodSample, last: PodSample, now: str) -> Object | None:
    """
    A PodMetrics (as a list item) of C{pod}, or None unless every container
    was in both samples (as metrics-server leaves such a pod out).
    """
    containers = []
    earliest: Usage | None = None
    for name, sample in last.containers.items():
        before = previous.containers.get(name)
        if before is None:
            return None
        used = usage(before, sample)
        if used is None:
            continue
        containers.append({"name": name, "usage": _usage_fields(used)})
        if earliest is None or used.at < earliest.at:
            earliest = used
    if earliest is None:
        return None
    return {
        "metadata": _meta(pod, now),
        "timestamp": rfc3339(earliest.at),
        "window": go_duration(round(earliest.window * 10**9)),
        "containers": containers,
    }


# Scraping


#: Reads a path of a node's kubelet: (node, path, most bytes) -> the body.
Fetch = Callable[[str, bytes, int], Awaitable[bytes]]


@dataclass
class _NodeScrapes:
    """A node's last two scrapes, when it was last scraped, and who waits for the one under way."""

    previous: Scrape | None = None
    last: Scrape | None = None
    checked: float | None = None
    waiting: list[Deferred[None]] | None = None


class SummaryScraper:
    """
    Each node's last two summaries, scraped when asked for once older than
    C{cache_seconds}: one scrape of a node at a time, every node at once.

    :param fetch: reads a path of a node's kubelet (L{NodeProxy.fetch}).
    """

    _log = Logger()

    def __init__(
        self,
        fetch: Fetch,
        clock: IReactorTime,
        cache_seconds: float = CACHE_SECONDS,
        timeout: float = SCRAPE_TIMEOUT,
    ) -> None:
        self.fetch = fetch
        self.clock = clock
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._nodes: dict[str, _NodeScrapes] = {}

    async def scrapes(self, node_names: Iterable[str]) -> dict[str, tuple[Scrape, Scrape]]:
        """
        The previous and the last scrape of each of C{node_names}, fresh,
        read in parallel; a node without both (it did not answer) is missing.
        """
        names = list(dict.fromkeys(node_names))
        self._forget_old()
        await gatherResults([self._fresh(name) for name in names])
        found = {}
        for name in names:
            scrapes = self._nodes.get(name)
            if scrapes is not None and scrapes.previous and scrapes.last:
                found[name] = (scrapes.previous, scrapes.last)
        return found

    def _forget_old(self) -> None:
        """Drop the nodes no window would be measured from any more (deleted ones among them)."""
        now = self.clock.seconds()
        for name, scrapes in list(self._nodes.items()):
            if scrapes.waiting is None and now - (scrapes.checked or 0.0) > MAX_WINDOW:
                del self._nodes[name]

    def _fresh(self, name: str) -> Deferred[None]:
        """Fires once node C{name}'s scrapes are fresh (whether or not it answered)."""
        scrapes = self._nodes.setdefault(name, _NodeScrapes())
        if scrapes.waiting is not None:
            waiter: Deferred[None] = Deferred()
            scrapes.waiting.append(waiter)
            return waiter
        checked = scrapes.checked
        if checked is not None and self.clock.seconds() - checked < self.cache_seconds:
            return succeed(None)
        scrapes.waiting = []
        return Deferred.fromCoroutine(self._scrape(name, scrapes))

    async def _scrape(self, name: str, scrapes: _NodeScrapes) -> None:
        try:
            before = scrapes.last
            first = await self._read(name)
            if first is None:
                scrapes.previous = scrapes.last = None
            elif before is not None and first.at - before.at <= MAX_WINDOW:
                scrapes.previous, scrapes.last = before, first
            else:
                # Nothing recent to measure from: a second sample, a moment later.
                await deferLater(self.clock, MIN_WINDOW, lambda: None)
                second = await self._read(name)
                scrapes.previous, scrapes.last = (first, second) if second else (None, first)
        finally:
            scrapes.checked = self.clock.seconds()
            waiting, scrapes.waiting = scrapes.waiting or [], None
            for waiter in waiting:
                waiter.callback(None)

    async def _read(self, name: str) -> Scrape | None:
        """One summary of node C{name}, or None (logged) if none comes in time."""
        reading: Deferred[bytes] = Deferred.fromCoroutine(_fetched(self.fetch, name))
        reading.addTimeout(self.timeout, self.clock)
        try:
            body = await reading
            return parse_summary(json.loads(body), self.clock.seconds())
        except Exception as e:
            why = e.message if isinstance(e, StatusError) else str(e) or type(e).__name__
            self._log.warn("metrics: no summary from node {node}: {why}", node=name, why=why)
            return None


async def _fetched(fetch: Fetch, name: str) -> bytes:
    return await fetch(name, SUMMARY_PATH, MAX_SUMMARY_BYTES)


# Answering


class ResourceMetrics:
    """
    Answers get and list of NodeMetrics and PodMetrics (requests routed and
    authorized already) from the Nodes and Pods in C{store} and their nodes'
    summaries.
    """

    def __init__(self, store: ObjectStore, scraper: SummaryScraper, clock: IReactorTime) -> None:
        self.store = store
        self.scraper = scraper
        self.clock = clock

    async def serve(self, request: Request, verb: str, target: Target) -> None:
        """Answer C{request}, a C{verb} (get or list) of C{target}."""
        resource = target.resource
        if verb == "get":
            assert target.name is not None
            if resource is NODE_METRICS:
                found = await self.node(target.name)
            else:
                found = await self.pod(target.namespace or "", target.name)
            items = [found]
        else:
            assert verb == "list", verb
            selected = predicate(request, resource)
            if resource is NODE_METRICS:
                items = await self.nodes(selected)
            else:
                items = await self.pods(target.namespace, selected)
        if wants_table(request):
            printer = resource.strategy.printer
            include = param(request, "includeObject")
            answer(
                request, 200, tables.table(printer, items, self.clock.seconds(), "", "", include)
            )
        elif verb == "get":
            answer(request, 200, {"kind": resource.kind, "apiVersion": API_VERSION, **items[0]})
        else:
            listed = {"kind": f"{resource.kind}List", "apiVersion": API_VERSION, "metadata": {}}
            answer(request, 200, {**listed, "items": items})

    async def node(self, name: str) -> Object:
        """
        The NodeMetrics of Node C{name}.

        :raises StatusError: 404 in metrics-server's words: no such Node
            (its node lister's), or no figures for it.
        """
        try:
            node = await self.store.get(nodes.RESOURCE, None, name)
        except StatusError as e:
            if e.code == 404:
                raise not_found("node", "", name) from None
            raise
        found = await self._node_metrics([node])
        if not found:
            raise not_found("nodemetrics", GROUP, name)
        return found[0]

    async def nodes(self, selected: Predicate | None) -> list[Object]:
        """The NodeMetrics of the Nodes C{selected}, by name; those without figures left out."""
        return await self._node_metrics(
            (await self.store.list(nodes.RESOURCE, None, selected)).items
        )

    async def pod(self, namespace: str, name: str) -> Object:
        """
        The PodMetrics of Pod C{namespace}/C{name}.

        :raises StatusError: 404: no such Pod, or no figures for it.
        """
        pod = await self.store.get(pods.RESOURCE, namespace, name)
        found = await self.pod_metrics_of([pod])
        if not found:
            raise not_found("podmetrics", GROUP, f"{namespace}/{name}")
        return found[0]

    async def pods(self, namespace: str | None, selected: Predicate | None) -> list[Object]:
        """The PodMetrics of the Pods C{selected} (of every namespace without C{namespace})."""
        return await self.pod_metrics_of(
            (await self.store.list(pods.RESOURCE, namespace, selected)).items
        )

    async def _node_metrics(self, listed: list[Object]) -> list[Object]:
        scrapes = await self.scraper.scrapes(name_of(node) for node in listed)
        now = rfc3339(self.clock.seconds())
        found = []
        for node in sorted(listed, key=name_of):
            previous, last = scrapes.get(name_of(node), (None, None))
            if previous is None or last is None or previous.node is None or last.node is None:
                continue
            used = usage(previous.node, last.node)
            if used is not None:
                found.append(node_metrics(node, used, now))
        return found

    async def pod_metrics_of(self, listed: list[Object]) -> list[Object]:
        """The PodMetrics of those of C{listed} that have figures (the autoscaler asks too)."""

        def node_of(pod: Object) -> str:
            return str(get_path(pod, "spec", "nodeName") or "")

        scheduled = [pod for pod in listed if node_of(pod)]
        scrapes = await self.scraper.scrapes(node_of(pod) for pod in scheduled)
        now = rfc3339(self.clock.seconds())
        found = []
        for pod in sorted(scheduled, key=lambda pod: (namespace_of(pod), name_of(pod))):
            previous, last = scrapes.get(node_of(pod), (None, None))
            if previous is None or last is None:
                continue
            key = (namespace_of(pod), name_of(pod))
            earlier, later = previous.pods.get(key), last.pods.get(key)
            if earlier is None or later is None or not _same_pod(pod, earlier, later):
                continue
            metrics = pod_metrics(pod, earlier, later, now)
            if metrics is not None:
                found.append(metrics)
        return found


def _same_pod(pod: Object, *samples: PodSample) -> bool:
    """Whether the samples are of C{pod}, not of an earlier pod of its name."""
    uid = uid_of(pod)
    return all(not uid or sample.uid in (None, uid) for sample in samples)
