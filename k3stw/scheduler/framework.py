"""
kube-scheduler's default profile as pure functions over precomputed facts:
what a pod asks for (L{PodFacts}), what a node holds (L{NodeState}), the
filters (in kube's order, each node stopping at the first that rejects it),
the scores, and the ``FailedScheduling`` message (``FitError``).

Facts are computed once, when the informers hear of an object, so that a
filter is a few comparisons per node and never a walk over pods.  What
looks at other pods (inter-pod affinity, topology spread) works over each
node's pods grouped by namespace and labels (L{LabelGroup}) and by their
own affinity terms (L{PodTerms}), counted once per scheduling cycle
(L{Cycle}, kube's PreFilter and PreScore state), so a pod's cost grows
with the nodes and their distinct groups, not with every pod.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from k3stw.machinery.labels import (
    NOTHING,
    LabelSelector,
    LabelSelectorError,
    Operator,
    Requirement,
    label_selector_from_spec,
)
from k3stw.machinery.nodeaffinity import NodeSelectorTerm, RequiredNodeAffinity
from k3stw.machinery.objects import (
    Object,
    find_condition,
    get_path,
    is_deleting,
    metadata,
    object_key,
)
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
SPREAD = "node(s) didn't match pod topology spread constraints"
SPREAD_LABEL = SPREAD + " (missing required label)"
POD_AFFINITY = "node(s) didn't match pod affinity rules"
POD_ANTI_AFFINITY = "node(s) didn't match pod anti-affinity rules"
EXISTING_ANTI_AFFINITY = "node(s) didn't satisfy existing pods anti-affinity rules"
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
    "InterPodAffinity": 2,
}
#: What an existing pod's required affinity term adds to a matching pod's score
#: (InterPodAffinity's ``hardPodAffinityWeight``).
HARD_POD_AFFINITY_WEIGHT = 1
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


NamespaceLabels = Callable[[str], Mapping[str, str]]


def no_namespace_labels(namespace: str) -> Mapping[str, str]:
    """For callers that know no Namespace: every namespace unlabelled."""
    return {}


_T = TypeVar("_T")
_interned: weakref.WeakValueDictionary[object, Any] = weakref.WeakValueDictionary()


def _intern(value: _T) -> _T:
    """The one live copy of C{value}, so that equal facts meet as the same key (fast lookups)."""
    found: _T = _interned.setdefault(value, value)
    return found


@dataclass(frozen=True)
class LabelGroup:
    """Pods alike to a label selector: one namespace, one set of labels, terminating or not."""

    namespace: str
    items: frozenset[tuple[str, str]]
    terminating: bool
    labels: Mapping[str, str] = field(compare=False)


def _selector(
    spec: Mapping[str, Any] | None,
    labels: Mapping[str, str],
    same: Sequence[str] = (),
    different: Sequence[str] = (),
) -> LabelSelector:
    """
    A ``labelSelector`` with ``matchLabelKeys`` (the pod's value, In) and
    ``mismatchLabelKeys`` (NotIn) added for the keys the pod has; one that
    does not parse (the apiserver refuses those) selects nothing.
    """
    try:
        selector = label_selector_from_spec(spec)
    except LabelSelectorError:
        return NOTHING
    extra = [Requirement(key, Operator.IN, (labels[key],)) for key in same if key in labels]
    extra += [
        Requirement(key, Operator.NOT_IN, (labels[key],)) for key in different if key in labels
    ]
    if not extra or selector.nothing:
        return selector
    return LabelSelector(tuple(sorted((*selector.requirements, *extra), key=lambda r: r.key)))


@dataclass(frozen=True)
class PodAffinityTerm:
    """
    A parsed ``PodAffinityTerm`` (kube's ``framework.AffinityTerm``): the
    pods it selects and the topology it speaks of; C{weight} for a preferred one.
    """

    selector: LabelSelector
    namespaces: frozenset[str]
    namespace_selector: LabelSelector
    topology_key: str
    weight: int = 0

    @classmethod
    def of(
        cls, term: Mapping[str, Any], namespace: str, labels: Mapping[str, str], weight: int = 0
    ) -> PodAffinityTerm:
        namespaces = frozenset(str(n) for n in term.get("namespaces") or ())
        namespace_spec = term.get("namespaceSelector")
        if not namespaces and namespace_spec is None:
            namespaces = frozenset((namespace,))
        return cls(
            _selector(
                term.get("labelSelector"),
                labels,
                term.get("matchLabelKeys") or (),
                term.get("mismatchLabelKeys") or (),
            ),
            namespaces,
            _selector(namespace_spec, {}),
            str(term.get("topologyKey") or ""),
            weight,
        )

    def matches(
        self, namespace: str, labels: Mapping[str, str], namespace_labels: NamespaceLabels
    ) -> bool:
        """Whether a pod in C{namespace} with C{labels} is one this term selects."""
        if namespace not in self.namespaces and (
            self.namespace_selector.nothing
            or not self.namespace_selector.matches(namespace_labels(namespace))
        ):
            return False
        return self.selector.matches(labels)


@dataclass(frozen=True)
class PodTerms:
    """A pod's inter-pod affinity, parsed: what it asks of others and what others ask of it."""

    required_affinity: tuple[PodAffinityTerm, ...]
    required_anti: tuple[PodAffinityTerm, ...]
    preferred_affinity: tuple[PodAffinityTerm, ...]
    preferred_anti: tuple[PodAffinityTerm, ...]

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash(
            (
                self.required_affinity,
                self.required_anti,
                self.preferred_affinity,
                self.preferred_anti,
            )
        )

    @classmethod
    def of(cls, pod: Object) -> PodTerms | None:
        affinity = get_path(pod, "spec", "affinity") or {}
        if not affinity.get("podAffinity") and not affinity.get("podAntiAffinity"):
            return None
        namespace = str(metadata(pod).get("namespace") or "")
        labels = metadata(pod).get("labels") or {}

        def required(kind: str) -> tuple[PodAffinityTerm, ...]:
            terms = get_path(affinity, kind, "requiredDuringSchedulingIgnoredDuringExecution")
            return tuple(PodAffinityTerm.of(t, namespace, labels) for t in terms or ())

        def preferred(kind: str) -> tuple[PodAffinityTerm, ...]:
            terms = get_path(affinity, kind, "preferredDuringSchedulingIgnoredDuringExecution")
            return tuple(
                PodAffinityTerm.of(
                    t.get("podAffinityTerm") or {}, namespace, labels, int(t.get("weight") or 0)
                )
                for t in terms or ()
            )

        found = cls(
            required("podAffinity"),
            required("podAntiAffinity"),
            preferred("podAffinity"),
            preferred("podAntiAffinity"),
        )
        empty = not (
            found.required_affinity
            or found.required_anti
            or found.preferred_affinity
            or found.preferred_anti
        )
        return None if empty else _intern(found)


@dataclass(frozen=True)
class SpreadConstraint:
    """
    A parsed ``topologySpreadConstraint``; C{owner} set for the system
    default spreading, which counts the pods of the same controller.
    """

    max_skew: int
    topology_key: str
    hard: bool
    selector: LabelSelector
    min_domains: int = 1
    honor_affinity: bool = True
    honor_taints: bool = False
    owner: str = ""

    @classmethod
    def of(cls, constraint: Mapping[str, Any], labels: Mapping[str, str]) -> SpreadConstraint:
        return cls(
            max_skew=int(constraint.get("maxSkew") or 0),
            topology_key=str(constraint.get("topologyKey") or ""),
            hard=constraint.get("whenUnsatisfiable") != "ScheduleAnyway",
            selector=_selector(
                constraint.get("labelSelector"), labels, constraint.get("matchLabelKeys") or ()
            ),
            min_domains=int(constraint.get("minDomains") or 1),
            honor_affinity=constraint.get("nodeAffinityPolicy") != "Ignore",
            honor_taints=constraint.get("nodeTaintsPolicy") == "Honor",
        )


def default_spreading(owner: str) -> tuple[SpreadConstraint, ...]:
    """PodTopologySpread's system defaults (``defaultingType: System``) over one owner's pods."""
    return tuple(
        SpreadConstraint(skew, key, False, NOTHING, owner=owner) for key, skew in SYSTEM_SPREAD
    )


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
    required_node: RequiredNodeAffinity
    preferred_node: tuple[tuple[int, NodeSelectorTerm], ...]
    owner: str
    priority: int
    preemption_policy: str
    labels: Mapping[str, str]
    group: LabelGroup
    terms: PodTerms | None
    spread: tuple[SpreadConstraint, ...]

    @classmethod
    def of(cls, pod: Object) -> PodFacts:
        spec = pod.get("spec") or {}
        nonzero = pod_requests(spec, nonzero=True)
        namespace = str(metadata(pod).get("namespace") or "")
        labels = metadata(pod).get("labels") or {}
        preferred = get_path(
            spec, "affinity", "nodeAffinity", "preferredDuringSchedulingIgnoredDuringExecution"
        )
        return cls(
            key=object_key(pod),
            namespace=namespace,
            requests=pod_requests(spec),
            nonzero_cpu=nonzero.get("cpu", 0),
            nonzero_memory=nonzero.get("memory", 0),
            ports=_host_ports(spec),
            tolerations=tolerations_of(spec),
            required_node=RequiredNodeAffinity.of(spec),
            preferred_node=tuple(
                (int(t.get("weight") or 0), NodeSelectorTerm.of(t.get("preference") or {}))
                for t in preferred or ()
            ),
            owner=_controller_uid(pod),
            priority=int(spec.get("priority") or 0),
            preemption_policy=str(spec.get("preemptionPolicy") or "PreemptLowerPriority"),
            labels=labels,
            group=_intern(
                LabelGroup(namespace, frozenset(labels.items()), is_deleting(pod), labels)
            ),
            terms=PodTerms.of(pod),
            spread=tuple(
                SpreadConstraint.of(c, labels) for c in spec.get("topologySpreadConstraints") or ()
            ),
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
    requests, host ports, owners, label groups and affinity terms of the
    pods bound or assumed to it, summed as they come and go.
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
    groups: Counter[LabelGroup] = field(default_factory=Counter)
    terms: Counter[PodTerms] = field(default_factory=Counter)

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
        _tally(self.groups, pod.group, sign)
        if pod.terms is not None:
            _tally(self.terms, pod.terms, sign)


def _tally(counter: Counter[Any], key: object, sign: int) -> None:
    """Count C{key} up or down, dropping it at zero (the cycle walks only what is there)."""
    left = counter[key] + sign
    if left:
        counter[key] = left
    else:
        del counter[key]


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


def node_affinity(pod: PodFacts, node: NodeState) -> Rejection | None:
    if pod.required_node.anywhere or pod.required_node.matches(node.labels, node.name):
        return None
    return Rejection((AFFINITY,), False)


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


#: The default profile's filters that look at the node alone, in its order.
FILTERS = (node_unschedulable, taint_toleration, node_affinity, node_ports, node_resources_fit)

Pair = tuple[str, str]
#: A filter of the pod's own (the pod's volumes): None when the node passes.
Filter = Callable[[NodeState], Rejection | None]


class Cycle:
    """
    One pod's scheduling cycle over every node (kube's CycleState): what
    PodTopologySpread and InterPodAffinity count across the nodes before
    filtering and scoring, worked out on first use and only if the pod or
    the pods already placed ask for it.

    :param nodes: every node with its Node (the domains are counted over all of them).
    :param namespace_labels: a namespace's labels, for terms with a ``namespaceSelector``.
    :param volumes: the VolumeBinding filter of the pod's claims (L{k3stw.scheduler.volumebinding}).
    """

    def __init__(
        self,
        pod: PodFacts,
        nodes: Sequence[NodeState],
        namespace_labels: NamespaceLabels = no_namespace_labels,
        volumes: Filter | None = None,
    ) -> None:
        self.pod = pod
        self.nodes = nodes
        self._namespace_labels = namespace_labels
        self.volumes = volumes
        self._labels_of: dict[str, Mapping[str, str]] = {}
        self._hard_spread: list[tuple[str, dict[str, int], int]] | None = None
        self._affinity: tuple[Counter[Pair], Counter[Pair], Counter[Pair]] | None = None
        self._anywhere = pod.required_node.anywhere
        #: Whether the pod or a placed pod has inter-pod affinity terms at all.
        self._affinities = pod.terms is not None or any(n.terms for n in nodes)

    def with_node(self, state: NodeState) -> Cycle:
        """
        This cycle with C{state} in place of the node of its name, counted
        afresh: what the filters say once pods leave or join that node (as
        preemption asks of a node without its victims).
        """
        nodes = [state if node.name == state.name else node for node in self.nodes]
        return Cycle(self.pod, nodes, self._namespace_labels, self.volumes)

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        found = self._labels_of.get(namespace)
        if found is None:
            found = self._labels_of[namespace] = self._namespace_labels(namespace)
        return found

    def filter(self, node: NodeState) -> Rejection | None:
        """The first filter's rejection of C{node}, or None if it fits."""
        for check in FILTERS:
            rejected = check(self.pod, node)
            if rejected is not None:
                return rejected
        if self.volumes is not None:
            rejected = self.volumes(node)
            if rejected is not None:
                return rejected
        if self.pod.spread:
            rejected = self.topology_spread(node)
            if rejected is not None:
                return rejected
        return self.inter_pod_affinity(node) if self._affinities else None

    # PodTopologySpread.

    def _included(self, constraint: SpreadConstraint, node: NodeState) -> bool:
        """Whether C{node}'s pods count (``nodeAffinityPolicy``, ``nodeTaintsPolicy``)."""
        if (
            constraint.honor_affinity
            and not self._anywhere
            and not self.pod.required_node.matches(node.labels, node.name)
        ):
            return False
        return not constraint.honor_taints or taint_toleration(self.pod, node) is None

    def _counter(self, constraint: SpreadConstraint) -> Callable[[NodeState], int]:
        """
        How many pods on a node C{constraint} counts (``countPodsMatchSelector``:
        of the pod's namespace, not terminating), each label group judged once.
        """
        owner, selector, namespace = constraint.owner, constraint.selector, self.pod.namespace
        if owner:
            return lambda node: node.owners[owner]
        verdicts: dict[LabelGroup, bool] = {}

        def count(node: NodeState) -> int:
            total = 0
            for group, pods in node.groups.items():
                selected = verdicts.get(group)
                if selected is None:
                    selected = verdicts[group] = (
                        not selector.empty
                        and group.namespace == namespace
                        and not group.terminating
                        and selector.matches(group.labels)
                    )
                if selected:
                    total += pods
            return total

        return count

    def _domains(
        self,
        constraints: Sequence[SpreadConstraint],
        counts: Sequence[dict[str, int]],
        required: Sequence[str],
        known_only: bool,
    ) -> None:
        """
        Add each node's matching pods to its domain of each constraint (to
        the domains already in C{counts} if C{known_only}), skipping nodes
        without every C{required} key and those the policies leave out.
        """
        nodes = self.nodes
        if required:
            nodes = [n for n in nodes if all(key in n.labels for key in required)]
        for constraint, domains in zip(constraints, counts, strict=True):
            key, count = constraint.topology_key, self._counter(constraint)
            policies = constraint.honor_taints or (constraint.honor_affinity and not self._anywhere)
            for node in nodes:
                value = node.labels.get(key, "")
                if known_only and value not in domains:
                    continue
                if policies and not self._included(constraint, node):
                    continue
                domains[value] = domains.get(value, 0) + count(node)

    def topology_spread(self, node: NodeState) -> Rejection | None:
        """PodTopologySpread's filter: the pod's DoNotSchedule constraints."""
        if not self.pod.spread:
            return None
        if self._hard_spread is None:
            hard = [c for c in self.pod.spread if c.hard]
            counts: list[dict[str, int]] = [{} for _ in hard]
            self._domains(hard, counts, [c.topology_key for c in hard], False)
            # A domain may hold at most max skew + the global minimum pods
            # (less the pod itself if it matches); with fewer domains than
            # minDomains the minimum is 0.
            self._hard_spread = [
                (
                    c.topology_key,
                    found,
                    c.max_skew
                    + (min(found.values()) if len(found) >= c.min_domains else 0)
                    - (1 if c.selector.matches(self.pod.labels) else 0),
                )
                for c, found in zip(hard, counts, strict=True)
            ]
        for key, domains, most in self._hard_spread:
            value = node.labels.get(key)
            if value is None:
                return Rejection((SPREAD_LABEL,), False)
            if domains.get(value, 0) > most:
                return Rejection((SPREAD,), True)
        return None

    def spread_scores(self, feasible: Sequence[NodeState]) -> list[int]:
        """
        PodTopologySpread's scores: for each ScheduleAnyway constraint (the
        system defaults when the pod names none), fewer matching pods in a
        node's domain scores higher, the domains weighted by their number.
        """
        pod = self.pod
        if pod.spread:
            constraints = [c for c in pod.spread if not c.hard]
        else:
            constraints = list(default_spreading(pod.owner)) if pod.owner else []
        if not constraints:
            return [0 for _ in feasible]
        # Only a pod's own constraints need every key on a node: a node with
        # no zone still gets the defaults' hostname spreading.
        keys = [c.topology_key for c in constraints]
        required = keys if pod.spread else []
        ignored = [any(k not in n.labels for k in required) for n in feasible]
        counts: list[dict[str, int]] = [{} for _ in constraints]
        for index, key in enumerate(keys):
            if key != HOSTNAME:
                for state, skip in zip(feasible, ignored, strict=True):
                    if not skip:
                        counts[index].setdefault(state.labels.get(key, ""), 0)
        hosts = len(feasible) - sum(ignored)
        weights = [
            math.log((hosts if key == HOSTNAME else len(counts[i])) + 2)
            for i, key in enumerate(keys)
        ]
        # Per-node counts (hostname) are taken when scoring each node.
        zoned = [i for i, key in enumerate(keys) if key != HOSTNAME]
        self._domains([constraints[i] for i in zoned], [counts[i] for i in zoned], required, True)
        sums = [0.0 for _ in feasible]
        for constraint, domains, weight in zip(constraints, counts, weights, strict=True):
            key, base = constraint.topology_key, constraint.max_skew - 1
            count = self._counter(constraint)
            for index, state in enumerate(feasible):
                value = state.labels.get(key)
                if value is None or ignored[index]:
                    continue
                if key == HOSTNAME:
                    sums[index] += count(state) * weight + base
                else:
                    sums[index] += domains[value] * weight + base
        raw = [math.floor(score + 0.5) for score in sums]
        kept = [score for score, skip in zip(raw, ignored, strict=True) if not skip]
        low, high = min(kept, default=0), max(kept, default=0)
        return [
            0
            if skip
            else MAX_NODE_SCORE
            if high == 0
            else MAX_NODE_SCORE * (high + low - score) // high
            for score, skip in zip(raw, ignored, strict=True)
        ]

    # InterPodAffinity.

    def _affinity_counts(self) -> tuple[Counter[Pair], Counter[Pair], Counter[Pair]]:
        """
        The domains holding pods whose required anti-affinity selects this
        pod, and those holding pods this pod's required affinity (all its
        terms) and anti-affinity (any term) select.
        """
        if self._affinity is not None:
            return self._affinity
        pod = self.pod
        existing: Counter[Pair] = Counter()
        affinity: Counter[Pair] = Counter()
        anti: Counter[Pair] = Counter()
        own = self.namespace_labels(pod.namespace)
        # Which topology keys each term set and each group speaks for, worked out once.
        against: dict[PodTerms, list[str]] = {}
        for node in self.nodes:
            for terms, count in node.terms.items():
                keys = against.get(terms)
                if keys is None:
                    keys = against[terms] = [
                        t.topology_key
                        for t in terms.required_anti
                        if t.matches(pod.namespace, pod.labels, lambda _: own)
                    ]
                _count_domains(existing, keys, node.labels, count)
        if pod.terms is not None and (pod.terms.required_affinity or pod.terms.required_anti):
            wanted, unwanted = pod.terms.required_affinity, pod.terms.required_anti
            lookup = self.namespace_labels
            selected: dict[LabelGroup, tuple[list[str], list[str]]] = {}
            for node in self.nodes:
                for group, count in node.groups.items():
                    found = selected.get(group)
                    if found is None:
                        ns, labels = group.namespace, group.labels
                        found = selected[group] = (
                            [t.topology_key for t in wanted]
                            if wanted and all(t.matches(ns, labels, lookup) for t in wanted)
                            else [],
                            [t.topology_key for t in unwanted if t.matches(ns, labels, lookup)],
                        )
                    _count_domains(affinity, found[0], node.labels, count)
                    _count_domains(anti, found[1], node.labels, count)
        self._affinity = (existing, affinity, anti)
        return self._affinity

    def inter_pod_affinity(self, node: NodeState) -> Rejection | None:
        """InterPodAffinity's filter, its checks in kube's order."""
        if not self._affinities:
            return None
        terms = self.pod.terms
        existing, affinity, anti = self._affinity_counts()
        labels = node.labels
        if terms is not None and terms.required_affinity:
            found = True
            for term in terms.required_affinity:
                value = labels.get(term.topology_key)
                if value is None:
                    return Rejection((POD_AFFINITY,), False)
                if affinity[term.topology_key, value] <= 0:
                    found = False
            # The first of a group of pods with affinity to each other may go
            # anywhere its terms' topologies exist, if it matches them itself.
            if not found and (affinity or not self._matches_itself(terms.required_affinity)):
                return Rejection((POD_AFFINITY,), False)
        if terms is not None:
            for term in terms.required_anti:
                value = labels.get(term.topology_key)
                if value is not None and anti[term.topology_key, value] > 0:
                    return Rejection((POD_ANTI_AFFINITY,), True)
        if existing and any(existing[pair] > 0 for pair in labels.items()):
            return Rejection((EXISTING_ANTI_AFFINITY,), True)
        return None

    def _matches_itself(self, terms: Sequence[PodAffinityTerm]) -> bool:
        pod = self.pod
        return all(t.matches(pod.namespace, pod.labels, self.namespace_labels) for t in terms)

    def affinity_scores(self, feasible: Sequence[NodeState]) -> list[int]:
        """
        InterPodAffinity's scores: the weights of this pod's preferred terms
        that pods in a node's domains match (less for anti-affinity), and of
        the placed pods' terms this pod matches, scaled from lowest to highest.
        """
        if not self._affinities:
            return [0 for _ in feasible]
        pod = self.pod
        lookup = self.namespace_labels
        preferred: list[tuple[PodAffinityTerm, int]] = []
        if pod.terms is not None:
            preferred = [(t, t.weight) for t in pod.terms.preferred_affinity]
            preferred += [(t, -t.weight) for t in pod.terms.preferred_anti]
        own = self.namespace_labels(pod.namespace)
        # What each group of pods, and each placed pod's terms, add per domain, worked out once.
        by_group: dict[LabelGroup, list[tuple[str, int]]] = {}
        by_terms: dict[PodTerms, list[tuple[str, int]]] = {}
        totals: dict[str, Counter[str]] = {}
        for node in self.nodes:
            labels = node.labels
            weighed: list[tuple[list[tuple[str, int]], int]] = []
            if preferred:
                for group, count in node.groups.items():
                    found = by_group.get(group)
                    if found is None:
                        found = by_group[group] = [
                            (term.topology_key, weight)
                            for term, weight in preferred
                            if term.matches(group.namespace, group.labels, lookup)
                        ]
                    weighed.append((found, count))
            for terms, count in node.terms.items():
                found = by_terms.get(terms)
                if found is None:
                    found = by_terms[terms] = [
                        (term.topology_key, weight)
                        for kind, weight_of in (
                            (terms.required_affinity, _hard_weight),
                            (terms.preferred_affinity, _weight),
                            (terms.preferred_anti, _negative_weight),
                        )
                        for term in kind
                        if term.matches(pod.namespace, pod.labels, lambda _: own)
                        for weight in (weight_of(term),)
                    ]
                weighed.append((found, count))
            for found, count in weighed:
                for key, weight in found:
                    if key in labels:
                        totals.setdefault(key, Counter())[labels[key]] += weight * count
        if not totals:
            return [0 for _ in feasible]
        raw = [
            sum(values[node.labels[key]] for key, values in totals.items() if key in node.labels)
            for node in feasible
        ]
        low, high = min(raw), max(raw)
        if high == low:
            return [0 for _ in feasible]
        return [int(MAX_NODE_SCORE * (score - low) / (high - low)) for score in raw]

    # Picking the node.

    def total_scores(self, feasible: Sequence[NodeState]) -> list[int]:
        """Each feasible node's weighted sum of the default profile's scores."""
        pod = self.pod
        taints = normalize([intolerable_preferences(pod, n) for n in feasible], reverse=True)
        affinity = normalize([preferred_affinity(pod, n) for n in feasible])
        spread = self.spread_scores(feasible)
        pods = self.affinity_scores(feasible)
        return [
            WEIGHTS["TaintToleration"] * taints[i]
            + WEIGHTS["NodeAffinity"] * affinity[i]
            + WEIGHTS["NodeResourcesFit"] * least_allocated(pod, node)
            + WEIGHTS["PodTopologySpread"] * spread[i]
            + WEIGHTS["NodeResourcesBalancedAllocation"] * balanced_allocation(pod, node)
            + WEIGHTS["InterPodAffinity"] * pods[i]
            for i, node in enumerate(feasible)
        ]

    def select_host(self, feasible: Sequence[NodeState]) -> NodeState:
        """The best-scoring node; of equals, the first by name (kube picks among them at random)."""
        if len(feasible) == 1:
            return feasible[0]
        scores = self.total_scores(feasible)
        best = max(scores)
        return min((n for n, s in zip(feasible, scores, strict=True) if s == best), key=_name)


def _count_domains(
    counts: Counter[Pair], keys: Sequence[str], labels: Mapping[str, str], count: int
) -> None:
    """Count C{count} pods in the node's domain of each of C{keys} (those it has)."""
    for key in keys:
        if key in labels:
            counts[key, labels[key]] += count


def _hard_weight(term: PodAffinityTerm) -> int:
    return HARD_POD_AFFINITY_WEIGHT


def _weight(term: PodAffinityTerm) -> int:
    return term.weight


def _negative_weight(term: PodAffinityTerm) -> int:
    return -term.weight


def run_filters(pod: PodFacts, node: NodeState, cycle: Cycle | None = None) -> Rejection | None:
    """The first filter's rejection of C{node}, or None (C{cycle}: the cycle over all nodes)."""
    return (cycle or Cycle(pod, (node,))).filter(node)


def select_host(
    pod: PodFacts, feasible: Sequence[NodeState], cycle: Cycle | None = None
) -> NodeState:
    """The best-scoring of the C{feasible} nodes (C{cycle}: over all nodes, else just those)."""
    return (cycle or Cycle(pod, feasible)).select_host(feasible)


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
    return sum(
        weight for weight, term in pod.preferred_node if term.matches(node.labels, node.name)
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
