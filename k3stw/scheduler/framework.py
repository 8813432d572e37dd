"""
kube-scheduler's default profile as pure functions over precomputed facts:
what a pod asks for (L{PodFacts}), what a node holds (L{NodeState}), the
filters (in kube's order, each node stopping at the first that rejects it),
the scores, and the ``FailedScheduling`` message (``FitError``).

Facts are computed once, when the informers hear of an object, so that a
filter is a few comparisons per node and never a walk over pods.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from k3stw.machinery.labels import Operator, Requirement
from k3stw.machinery.objects import Object, find_condition, get_path, metadata, object_key
from k3stw.machinery.quantity import QuantityError, parse_quantity

SCHEDULER_NAME = "default-scheduler"
MAX_NODE_SCORE = 100
#: What a container without requests counts as when scoring (kube's ``GetNonzeroRequests``).
DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 1024 * 1024
HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"

# The filters' reasons, in kube-scheduler 1.32's words.
UNSCHEDULABLE = "node(s) were unschedulable"
NODE_NAME = "node(s) didn't match the requested node name"
AFFINITY = "node(s) didn't match Pod's node affinity/selector"
PORTS = "node(s) didn't have free ports for the requested pod ports"
TOO_MANY_PODS = "Too many pods"
NO_NODES = "no nodes available to schedule pods"
NOT_HELPFUL = "Preemption is not helpful for scheduling"
NO_VICTIMS = "No preemption victims found for incoming pod"
NEVER_PREEMPTS = "not eligible due to preemptionPolicy=Never."

#: Score weights of the default profile.
WEIGHTS = {
    "TaintToleration": 3,
    "NodeAffinity": 2,
    "NodeResourcesFit": 1,
    "PodTopologySpread": 2,
    "NodeResourcesBalancedAllocation": 1,
}
#: The system default spreading (PodTopologySpread ``defaultingType: System``): (key, maxSkew).
SYSTEM_SPREAD = ((HOSTNAME, 3), (ZONE, 5))

Taint = tuple[str, str, str]
Port = tuple[str, str, int]


def _amount(name: str, value: object) -> int:
    """A request in the scheduler's units: cpu in millicores, the rest whole (rounded up)."""
    try:
        quantity = parse_quantity(value).value
    except QuantityError:
        return 0
    return math.ceil(quantity * 1000 if name == "cpu" else quantity)


def _requests(container: Mapping[str, Any]) -> dict[str, int]:
    requests = get_path(container, "resources", "requests") or {}
    return {name: _amount(name, value) for name, value in requests.items()}


def _add(total: dict[str, int], more: Mapping[str, int]) -> None:
    for name, value in more.items():
        total[name] = total.get(name, 0) + value


def pod_requests(spec: Mapping[str, Any], nonzero: bool = False) -> dict[str, int]:
    """
    What a pod asks of a node (kube's ``PodRequests``): its containers' sum,
    at least each init container's (sidecars, ``restartPolicy: Always``,
    count with the containers), plus overhead.

    :param nonzero: count a container's missing cpu and memory requests as
        100m and 200Mi, as scoring does.
    """

    def of(container: Mapping[str, Any]) -> dict[str, int]:
        found = _requests(container)
        if nonzero:
            found["cpu"] = found.get("cpu") or DEFAULT_MILLI_CPU
            found["memory"] = found.get("memory") or DEFAULT_MEMORY
        return found

    total: dict[str, int] = {}
    for container in spec.get("containers") or ():
        _add(total, of(container))
    sidecars: dict[str, int] = {}
    init: dict[str, int] = {}
    for container in spec.get("initContainers") or ():
        wanted = of(container)
        if container.get("restartPolicy") == "Always":
            _add(total, wanted)
            _add(sidecars, wanted)
            wanted = dict(sidecars)
        else:
            _add(wanted, sidecars)
        for name, value in wanted.items():
            init[name] = max(init.get(name, 0), value)
    for name, value in init.items():
        total[name] = max(total.get(name, 0), value)
    overhead = spec.get("overhead") or {}
    _add(total, {name: _amount(name, value) for name, value in overhead.items()})
    return total


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: str
    value: str
    effect: str

    def tolerates(self, taint: Taint) -> bool:
        key, value, effect = taint
        if self.effect and self.effect != effect:
            return False
        if self.key and self.key != key:
            return False
        if self.operator == "Exists":
            return True
        return self.value == value


def tolerations_of(spec: Mapping[str, Any]) -> tuple[Toleration, ...]:
    return tuple(
        Toleration(
            str(t.get("key") or ""),
            str(t.get("operator") or "Equal"),
            str(t.get("value") or ""),
            str(t.get("effect") or ""),
        )
        for t in spec.get("tolerations") or ()
        if isinstance(t, dict)
    )


def _host_ports(spec: Mapping[str, Any]) -> frozenset[Port]:
    ports = set()
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or ():
            for port in container.get("ports") or ():
                host_port = port.get("hostPort") or 0
                if host_port > 0:
                    protocol = str(port.get("protocol") or "TCP")
                    ports.add((str(port.get("hostIP") or "0.0.0.0"), protocol, int(host_port)))
    return frozenset(ports)


def _controller_uid(obj: Object) -> str:
    for ref in metadata(obj).get("ownerReferences") or ():
        if ref.get("controller"):
            return str(ref.get("uid") or "")
    return ""


@dataclass(frozen=True)
class PodFacts:
    """What the scheduler needs of a pod, worked out once."""

    key: str
    namespace: str
    requests: Mapping[str, int]
    nonzero_cpu: int
    nonzero_memory: int
    ports: frozenset[Port]
    tolerations: tuple[Toleration, ...]
    node_selector: Mapping[str, str]
    affinity: Mapping[str, Any]
    owner: str
    priority: int
    preemption_policy: str

    @classmethod
    def of(cls, pod: Object) -> PodFacts:
        spec = pod.get("spec") or {}
        nonzero = pod_requests(spec, nonzero=True)
        return cls(
            key=object_key(pod),
            namespace=str(metadata(pod).get("namespace") or ""),
            requests=pod_requests(spec),
            nonzero_cpu=nonzero.get("cpu", 0),
            nonzero_memory=nonzero.get("memory", 0),
            ports=_host_ports(spec),
            tolerations=tolerations_of(spec),
            node_selector=spec.get("nodeSelector") or {},
            affinity=get_path(spec, "affinity", "nodeAffinity") or {},
            owner=_controller_uid(pod),
            priority=int(spec.get("priority") or 0),
            preemption_policy=str(spec.get("preemptionPolicy") or "PreemptLowerPriority"),
        )

    def tolerates(self, taint: Taint) -> bool:
        return any(toleration.tolerates(taint) for toleration in self.tolerations)


def _resources(amounts: Mapping[str, Any]) -> dict[str, int]:
    return {name: _amount(name, value) for name, value in amounts.items()}


def node_taints(node: Object) -> tuple[Taint, ...]:
    """
    The node's taints, and those kube's node lifecycle controller would add
    for its Ready condition (``not-ready`` when False, ``unreachable`` when
    Unknown), which k3stw's does not write for a node that still reports.
    """
    taints = [
        (str(t.get("key") or ""), str(t.get("value") or ""), str(t.get("effect") or ""))
        for t in get_path(node, "spec", "taints") or ()
    ]
    ready = (find_condition(node, "Ready") or {}).get("status")
    implied = {"False": NOT_READY_TAINT, "Unknown": UNREACHABLE_TAINT}.get(str(ready))
    if implied and not any(key == implied and effect == "NoSchedule" for key, _, effect in taints):
        taints.append((implied, "", "NoSchedule"))
    return tuple(taints)


@dataclass
class NodeState:
    """
    A node as the scheduler sees it: the Node (if it has been seen), and the
    requests, host ports and owners of the pods bound or assumed to it,
    summed as they come and go.
    """

    name: str
    node: Object | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    allocatable: Mapping[str, int] = field(default_factory=dict)
    pods: dict[str, PodFacts] = field(default_factory=dict)
    requested: dict[str, int] = field(default_factory=dict)
    nonzero_cpu: int = 0
    nonzero_memory: int = 0
    ports: Counter[Port] = field(default_factory=Counter)
    owners: Counter[str] = field(default_factory=Counter)

    def set_node(self, node: Object | None) -> None:
        self.node = node
        if node is None:
            return
        self.labels = metadata(node).get("labels") or {}
        self.taints = node_taints(node)
        self.unschedulable = bool(get_path(node, "spec", "unschedulable"))
        self.allocatable = _resources(get_path(node, "status", "allocatable") or {})

    def add_pod(self, pod: PodFacts) -> None:
        self.remove_pod(pod.key)
        self.pods[pod.key] = pod
        self._count(pod, 1)

    def remove_pod(self, key: str) -> None:
        pod = self.pods.pop(key, None)
        if pod is not None:
            self._count(pod, -1)

    def _count(self, pod: PodFacts, sign: int) -> None:
        for name, value in pod.requests.items():
            self.requested[name] = self.requested.get(name, 0) + sign * value
        self.nonzero_cpu += sign * pod.nonzero_cpu
        self.nonzero_memory += sign * pod.nonzero_memory
        for port in pod.ports:
            self.ports[port] += sign
        if pod.owner:
            self.owners[pod.owner] += sign


@dataclass(frozen=True)
class Rejection:
    """Why a filter turned a node down; C{resolvable} if removing pods could help."""

    reasons: tuple[str, ...]
    resolvable: bool


# Filters: None when the node passes.


def node_unschedulable(pod: PodFacts, node: NodeState) -> Rejection | None:
    if node.unschedulable and not pod.tolerates((UNSCHEDULABLE_TAINT, "", "NoSchedule")):
        return Rejection((UNSCHEDULABLE,), False)
    return None


def taint_toleration(pod: PodFacts, node: NodeState) -> Rejection | None:
    for taint in node.taints:
        if taint[2] in ("NoSchedule", "NoExecute") and not pod.tolerates(taint):
            return Rejection((f"node(s) had untolerated taint {{{taint[0]}: {taint[1]}}}",), False)
    return None


def _node_requirement(expression: Mapping[str, Any]) -> Requirement | None:
    operator = {
        "In": Operator.IN,
        "NotIn": Operator.NOT_IN,
        "Exists": Operator.EXISTS,
        "DoesNotExist": Operator.DOES_NOT_EXIST,
        "Gt": Operator.GREATER_THAN,
        "Lt": Operator.LESS_THAN,
    }.get(str(expression.get("operator")))
    if operator is None:
        return None
    values = tuple(str(v) for v in expression.get("values") or ())
    return Requirement(str(expression.get("key") or ""), operator, values)


def term_matches(term: Mapping[str, Any], node: NodeState) -> bool:
    """A NodeSelectorTerm: all its expressions and fields hold; an empty term matches nothing."""
    expressions = term.get("matchExpressions") or ()
    fields = term.get("matchFields") or ()
    if not expressions and not fields:
        return False
    for expression in expressions:
        requirement = _node_requirement(expression)
        if requirement is None or not requirement.matches(node.labels):
            return False
    for expression in fields:
        requirement = _node_requirement(expression)
        if expression.get("key") != "metadata.name" or requirement is None:
            return False
        if not requirement.matches({"metadata.name": node.name}):
            return False
    return True


def node_affinity(pod: PodFacts, node: NodeState) -> Rejection | None:
    labels = node.labels
    selected = all(labels.get(key) == value for key, value in pod.node_selector.items())
    required = pod.affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if selected and required is not None:
        selected = any(term_matches(t, node) for t in required.get("nodeSelectorTerms") or ())
    return None if selected else Rejection((AFFINITY,), False)


def node_ports(pod: PodFacts, node: NodeState) -> Rejection | None:
    if not pod.ports or not node.ports:
        return None
    for ip, protocol, port in pod.ports:
        for (used_ip, used_protocol, used_port), count in node.ports.items():
            if count <= 0 or used_port != port or used_protocol != protocol:
                continue
            if ip == used_ip or "0.0.0.0" in (ip, used_ip):
                return Rejection((PORTS,), True)
    return None


def node_resources_fit(pod: PodFacts, node: NodeState) -> Rejection | None:
    reasons = []
    if len(node.pods) + 1 > node.allocatable.get("pods", 0):
        reasons.append(TOO_MANY_PODS)
    for name, wanted in pod.requests.items():
        if wanted <= 0:
            continue
        if wanted > node.allocatable.get(name, 0) - node.requested.get(name, 0):
            reasons.append(f"Insufficient {name}")
    return Rejection(tuple(reasons), True) if reasons else None


#: The default profile's filters, in its order.
FILTERS = (node_unschedulable, taint_toleration, node_affinity, node_ports, node_resources_fit)


def run_filters(pod: PodFacts, node: NodeState) -> Rejection | None:
    """The first filter's rejection of C{node}, or None if it fits."""
    for check in FILTERS:
        rejected = check(pod, node)
        if rejected is not None:
            return rejected
    return None


# Scores, each 0..MAX_NODE_SCORE per node after normalising.


def least_allocated(pod: PodFacts, node: NodeState) -> int:
    """NodeResourcesFit's LeastAllocated over cpu and memory (weights 1), on non-zero requests."""
    total = 0
    for allocatable, requested in (
        (node.allocatable.get("cpu", 0), node.nonzero_cpu + pod.nonzero_cpu),
        (node.allocatable.get("memory", 0), node.nonzero_memory + pod.nonzero_memory),
    ):
        if allocatable > 0 and requested <= allocatable:
            total += (allocatable - requested) * MAX_NODE_SCORE // allocatable
    return total // 2


def balanced_allocation(pod: PodFacts, node: NodeState) -> int:
    """NodeResourcesBalancedAllocation: how close the cpu and memory fractions are."""
    fractions = []
    for name in ("cpu", "memory"):
        allocatable = node.allocatable.get(name, 0)
        if allocatable <= 0:
            continue
        requested = node.requested.get(name, 0) + pod.requests.get(name, 0)
        fractions.append(min(requested / allocatable, 1.0))
    deviation = abs(fractions[0] - fractions[1]) / 2 if len(fractions) == 2 else 0.0
    return int((1 - deviation) * MAX_NODE_SCORE)


def preferred_affinity(pod: PodFacts, node: NodeState) -> int:
    """NodeAffinity's raw score: the weights of the preferred terms the node matches."""
    terms = pod.affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or ()
    return sum(
        int(term.get("weight") or 0)
        for term in terms
        if term_matches(term.get("preference") or {}, node)
    )


def intolerable_preferences(pod: PodFacts, node: NodeState) -> int:
    """TaintToleration's raw score: PreferNoSchedule taints the pod does not tolerate."""
    wanted = [t for t in pod.tolerations if t.effect in ("", "PreferNoSchedule")]
    return sum(
        1
        for taint in node.taints
        if taint[2] == "PreferNoSchedule" and not any(t.tolerates(taint) for t in wanted)
    )


def normalize(scores: list[int], reverse: bool = False) -> list[int]:
    """kube's ``DefaultNormalizeScore``: scale to 0..100 by the highest (and flip if reverse)."""
    highest = max(scores, default=0)
    if highest == 0:
        return [MAX_NODE_SCORE if reverse else 0 for _ in scores]
    scaled = [MAX_NODE_SCORE * score // highest for score in scores]
    return [MAX_NODE_SCORE - score for score in scaled] if reverse else scaled


def spread_scores(pod: PodFacts, nodes: Sequence[NodeState]) -> list[int]:
    """
    PodTopologySpread's system defaults (ScheduleAnyway, by hostname and
    zone) over the pods of the same controller: fewer of them in a node's
    domains scores higher.
    """
    if not pod.owner:
        return [0 for _ in nodes]
    raw: list[float] = [0.0 for _ in nodes]
    for key, max_skew in SYSTEM_SPREAD:
        counts: Counter[str] = Counter()
        if key == HOSTNAME:
            domains = len(nodes)
        else:
            domains = len({n.labels[key] for n in nodes if key in n.labels})
            if not domains:
                continue
            for state in nodes:
                if key in state.labels:
                    counts[state.labels[key]] += state.owners[pod.owner]
        weight = math.log(domains + 2)
        for index, state in enumerate(nodes):
            if key == HOSTNAME:
                count = state.owners[pod.owner]
            elif key in state.labels:
                count = counts[state.labels[key]]
            else:
                continue
            raw[index] += count * weight + (max_skew - 1)
    low, high = min(raw, default=0.0), max(raw, default=0.0)
    if high == 0:
        return [MAX_NODE_SCORE for _ in nodes]
    return [int(MAX_NODE_SCORE * (high + low - score) / high) for score in raw]


def total_scores(pod: PodFacts, nodes: Sequence[NodeState]) -> list[int]:
    """Each feasible node's weighted sum of the default profile's scores."""
    taints = normalize([intolerable_preferences(pod, n) for n in nodes], reverse=True)
    affinity = normalize([preferred_affinity(pod, n) for n in nodes])
    spread = spread_scores(pod, nodes)
    return [
        WEIGHTS["TaintToleration"] * taints[i]
        + WEIGHTS["NodeAffinity"] * affinity[i]
        + WEIGHTS["NodeResourcesFit"] * least_allocated(pod, node)
        + WEIGHTS["PodTopologySpread"] * spread[i]
        + WEIGHTS["NodeResourcesBalancedAllocation"] * balanced_allocation(pod, node)
        for i, node in enumerate(nodes)
    ]


def select_host(pod: PodFacts, feasible: Sequence[NodeState]) -> NodeState:
    """The best-scoring node; of equals, the first by name (kube picks among them at random)."""
    if len(feasible) == 1:
        return feasible[0]
    scores = total_scores(pod, feasible)
    best = max(scores)
    return min((n for n, s in zip(feasible, scores, strict=True) if s == best), key=_name)


def _name(node: NodeState) -> str:
    return node.name


def histogram(reasons: Iterable[str], nodes: int) -> str:
    """``0/N nodes are available: <count> <reason>, ...`` with the entries sorted as kube sorts."""
    counts = Counter(reasons)
    entries = sorted(f"{count} {reason}" for reason, count in counts.items())
    return f"0/{nodes} nodes are available: {', '.join(entries)}."


def fit_error(pod: PodFacts, rejections: Sequence[Rejection], preemption: str | None = None) -> str:
    """
    The ``FailedScheduling`` message: the filters' histogram, then what
    preemption found (C{preemption}, L{k3stw.scheduler.preemption}'s tail;
    when not given, what it finds with no lower-priority pods anywhere).
    """
    message = histogram((r for rejection in rejections for r in rejection.reasons), len(rejections))
    if preemption is not None:
        return f"{message} {preemption}" if preemption else message
    if pod.preemption_policy == "Never":
        return f"{message} preemption: {NEVER_PREEMPTS}"
    verdicts = (NO_VICTIMS if rejection.resolvable else NOT_HELPFUL for rejection in rejections)
    return f"{message} preemption: {histogram(verdicts, len(rejections))}"
