"""
kube-controller-manager's horizontal pod autoscaler (``autoscaling/v2``):
every HorizontalPodAutoscaler is looked at every L{SYNC_PERIOD} seconds
(kube's ``--horizontal-pod-autoscaler-sync-period``, its first look too, as
kube's fixed-interval queue does), its target's scale read and written
through the ``scale`` subresource (Deployments, ReplicaSets, StatefulSets,
ReplicationControllers), and its pods' usage read from the resource metrics
API's own source (L{PodMetricsSource}: the server's
L{k3stw.apiserver.metricsapi.ResourceMetrics}, without a request).

What kube's replica calculator does for ``Resource`` and ``ContainerResource``
metrics (``Utilization`` and ``AverageValue`` targets) is done here: the usage
ratio with a 0.1 tolerance, pods without metrics counted at 0 % on a scale-up
and 100 % on a scale-down, pending or not-yet-ready pods (CPU within its
initialization period) left out, then ``min``/``maxReplicas``, the default
rate limit or the ``behavior`` (stabilization windows, ``Pods``/``Percent``
policies per period, ``selectPolicy``), the status and its conditions and
Events in kube's words.  No custom or external metrics API is served, so
``Pods``, ``Object`` and ``External`` metrics fail as kube's fail without
one: ``ScalingActive`` False, ``FailedGetPodsMetric`` (and so on).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import pods as pod_kind
from k3stw.apiserver.registry import Registry, ResourceType
from k3stw.apiserver.scale import scale_of, write_scale
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.machinery.cache import NAMESPACE
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change
from k3stw.machinery.labels import NOTHING, LabelSelector, SelectorError, parse_label_selector
from k3stw.machinery.objects import (
    Object,
    copy_json,
    find_condition,
    get_path,
    is_deleting,
    metadata,
    name_of,
    namespace_of,
    object_key,
    set_condition,
    split_key,
)
from k3stw.machinery.quantity import Quantity, canonical, parse_quantity
from k3stw.machinery.times import parse_go_duration, parse_time, rfc3339
from k3stw.machinery.timing import Backoff

#: ``--horizontal-pod-autoscaler-sync-period``.
SYNC_PERIOD = 15.0
#: ``--horizontal-pod-autoscaler-tolerance``.
TOLERANCE = 0.1
#: ``--horizontal-pod-autoscaler-downscale-stabilization``.
DOWNSCALE_STABILIZATION = 300.0
#: ``--horizontal-pod-autoscaler-cpu-initialization-period``.
CPU_INITIALIZATION_PERIOD = 300.0
#: ``--horizontal-pod-autoscaler-initial-readiness-delay``.
INITIAL_READINESS_DELAY = 30.0
#: ``--concurrent-horizontal-pod-autoscaler-syncs`` (a slow scrape holds up only its own).
WORKERS = 5
#: The Events' source.
COMPONENT = "horizontal-pod-autoscaler"
#: The field manager of the controller's writes.
MANAGER = "kube-controller-manager"

_NO_CUSTOM_API = (
    "unable to fetch metrics from custom metrics API: "
    "no custom metrics API (custom.metrics.k8s.io) registered"
)


class PodMetricsSource(Protocol):
    """Where PodMetrics come from: what ``metrics.k8s.io`` would list for these pods."""

    async def pod_metrics_of(self, listed: list[Object]) -> list[Object]:
        """The PodMetrics (list items) of those of C{listed} that have figures."""


class MetricError(Exception):
    """A metric could not be had or used; the message is kube's."""


@dataclass(frozen=True)
class PodMetric:
    """A pod's usage of one resource, in milli-units, sampled over C{window} up to C{at}."""

    value: int
    at: float
    window: float


def milli(text: object) -> int:
    """A quantity in milli-units, rounded up (kube's MilliValue)."""
    return math.ceil(parse_quantity(text).value * 1000)


def milli_quantity(value: int) -> str:
    """A milli-value as a quantity (kube's NewMilliQuantity, DecimalSI)."""
    return canonical(Quantity(Fraction(value, 1000), "decimal"))


def pod_usage(items: Sequence[Object], resource: str, container: str = "") -> dict[str, PodMetric]:
    """
    Each pod's usage of C{resource} from PodMetrics, by pod name: the sum over
    its containers (a pod missing a container's figure is left out), or
    C{container}'s alone (kube's metrics client).

    :raises MetricError: if there are none, or a pod lacks C{container}.
    """
    if not items:
        raise MetricError("no metrics returned from resource metrics API")
    found: dict[str, PodMetric] = {}
    for item in items:
        at = parse_time(item.get("timestamp")) or 0.0
        window = parse_go_duration(item.get("window"))
        containers = item.get("containers") or []
        if container:
            mine = [c for c in containers if c.get("name") == container]
            if not mine:
                raise MetricError(
                    f"failed to get container metrics: container {container} not present "
                    f"in metrics for pod {namespace_of(item)}/{name_of(item)}"
                )
            used = get_path(mine[0], "usage", resource)
            if used is not None:
                found[name_of(item)] = PodMetric(milli(used), at, window)
            continue
        values = [get_path(c, "usage", resource) for c in containers]
        if values and all(value is not None for value in values):
            found[name_of(item)] = PodMetric(sum(milli(v) for v in values), at, window)
    return found


@dataclass
class PodGroups:
    """The pods a calculation counts (kube's groupPods)."""

    ready: int = 0
    unready: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)


def group_pods(
    listed: Sequence[Object],
    metrics: Mapping[str, PodMetric],
    resource: str,
    now: float,
    cpu_initialization_period: float = CPU_INITIALIZATION_PERIOD,
    initial_readiness_delay: float = INITIAL_READINESS_DELAY,
) -> PodGroups:
    """
    Sort pods: deleted or failed ones are ignored, pending ones unready,
    those without metrics missing; for CPU, a pod is unready if it is not
    Ready, or, within its initialization period, if its sample began before
    it last turned Ready, or, after it, if it has never been Ready.
    """
    groups = PodGroups()
    for pod in listed:
        name = name_of(pod)
        phase = get_path(pod, "status", "phase")
        if is_deleting(pod) or phase == "Failed":
            groups.ignored.add(name)
            continue
        if phase == "Pending":
            groups.unready.add(name)
            continue
        metric = metrics.get(name)
        if metric is None:
            groups.missing.add(name)
            continue
        if resource == "cpu":
            condition = find_condition(pod, "Ready")
            started = parse_time(get_path(pod, "status", "startTime"))
            if condition is None or started is None:
                unready = True
            else:
                changed = parse_time(condition.get("lastTransitionTime")) or 0.0
                ready = condition.get("status")
                if started + cpu_initialization_period > now:
                    unready = ready == "False" or metric.at < changed + metric.window
                else:
                    unready = ready == "False" and started + initial_readiness_delay > changed
            if unready:
                groups.unready.add(name)
                continue
        groups.ready += 1
    return groups


def pod_requests(listed: Sequence[Object], resource: str, container: str = "") -> dict[str, int]:
    """
    Each pod's request of C{resource} in milli-units: its containers' (and
    sidecars') summed, or C{container}'s.

    :raises MetricError: if a container has no request, or no C{container}.
    """
    requests: dict[str, int] = {}
    for pod in listed:
        spec = pod.get("spec") or {}
        containers = list(spec.get("containers") or [])
        containers += [
            c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"
        ]
        total = 0
        found = False
        for c in containers:
            if container and c.get("name") != container:
                continue
            request = get_path(c, "resources", "requests", resource)
            if request is None:
                raise MetricError(
                    f"missing request for {resource} in container {c.get('name')} "
                    f"of Pod {name_of(pod)}"
                )
            total += milli(request)
            found = True
            if container:
                break
        if container and not found:
            raise MetricError(f"container {container} not found in Pod {name_of(pod)}")
        requests[name_of(pod)] = total
    return requests


def utilization_ratio(
    metrics: Mapping[str, PodMetric], requests: Mapping[str, int], target: int
) -> tuple[float, int, int]:
    """The usage ratio, the utilization (percent of requests) and the average usage."""
    used = requested = entries = 0
    for name, metric in metrics.items():
        if name not in requests:
            continue
        used += metric.value
        requested += requests[name]
        entries += 1
    if requested == 0:
        raise MetricError("no metrics returned matched known pods")
    utilization = used * 100 // requested
    return utilization / target, utilization, used // entries


def usage_ratio(metrics: Mapping[str, PodMetric], target: int) -> tuple[float, int]:
    """The usage ratio and the average usage of plain values."""
    average = sum(metric.value for metric in metrics.values()) // len(metrics)
    return average / target, average


def _within(ratio: float, tolerance: float) -> bool:
    return abs(1.0 - ratio) <= tolerance


@dataclass(frozen=True)
class Proposal:
    """A replica count a metric proposes, with the figures reported in the status."""

    replicas: int
    utilization: int | None
    average: int


def propose(
    current: int,
    target: int,
    utilization: bool,
    metrics: dict[str, PodMetric],
    listed: Sequence[Object],
    resource: str,
    container: str,
    now: float,
    tolerance: float = TOLERANCE,
) -> Proposal:
    """
    The replicas C{metrics} call for, for a C{utilization} target (a
    percentage) or an average value one (milli-units): kube's
    GetResourceReplicas and GetRawResourceReplicas.
    """
    if not listed:
        raise MetricError("no pods returned by selector while calculating replica count")
    groups = group_pods(listed, metrics, resource, now)
    for name in groups.ignored | groups.unready:
        metrics.pop(name, None)
    if not metrics:
        raise MetricError("did not receive metrics for targeted pods (pods might be unready)")
    requests: dict[str, int] = {}
    if utilization:
        requests = pod_requests(listed, resource, container)

    def ratio_of(counted: Mapping[str, PodMetric]) -> tuple[float, int | None, int]:
        if utilization:
            return utilization_ratio(counted, requests, target)
        ratio, average = usage_ratio(counted, target)
        return ratio, None, average

    ratio, percent, average = ratio_of(metrics)
    scale_up_with_unready = bool(groups.unready) and ratio > 1.0
    if not scale_up_with_unready and not groups.missing:
        if _within(ratio, tolerance):
            return Proposal(current, percent, average)
        return Proposal(math.ceil(ratio * groups.ready), percent, average)
    if groups.missing:
        if ratio < 1.0:
            for name in groups.missing:
                # Missing pods count as using all of their request (or the target, if above),
                # or exactly the target of a plain value.
                fallback = requests.get(name, 0) * max(100, target) // 100
                metrics[name] = PodMetric(fallback if utilization else target, 0.0, 0.0)
        elif ratio > 1.0:
            for name in groups.missing:
                metrics[name] = PodMetric(0, 0.0, 0.0)
    if scale_up_with_unready:
        for name in groups.unready:
            metrics[name] = PodMetric(0, 0.0, 0.0)
    new_ratio, _, _ = ratio_of(metrics)
    if (
        _within(new_ratio, tolerance)
        or (ratio < 1.0 and new_ratio > 1.0)
        or (ratio > 1.0 and new_ratio < 1.0)
    ):
        return Proposal(current, percent, average)
    replicas = math.ceil(new_ratio * len(metrics))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return Proposal(current, percent, average)
    return Proposal(replicas, percent, average)


# Behaviour: stabilization and rate limits, on each autoscaler's remembered history


@dataclass
class _Recommendation:
    replicas: int
    at: float


@dataclass
class _ScaleEvent:
    change: int
    at: float
    outdated: bool = False


@dataclass
class History:
    """An autoscaler's recent recommendations and scale events (kept in memory, as kube's)."""

    recommendations: list[_Recommendation] = field(default_factory=list)
    ups: list[_ScaleEvent] = field(default_factory=list)
    downs: list[_ScaleEvent] = field(default_factory=list)

    def record(self, replicas: int, now: float, old: int | None) -> None:
        entry = _Recommendation(replicas, now)
        if old is None:
            self.recommendations.append(entry)
        else:
            self.recommendations[old] = entry


def _changed_within(period: float, events: list[_ScaleEvent], now: float) -> int:
    return sum(event.change for event in events if event.at > now - period)


def _rules(rules: Mapping[str, Any] | None, up: bool) -> Mapping[str, Any]:
    """A direction's scaling rules, with the API's defaults where the HPA has none."""
    if rules:
        return rules
    if up:
        return {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15},
            ],
        }
    return {
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
    }


def policy_limit(
    current: int, history: History, rules: Mapping[str, Any], now: float, up: bool
) -> int:
    """
    The most replicas the scale-up policies allow now (C{up}), or the fewest
    the scale-down ones do: each policy counts from the replicas at the start
    of its period, and ``selectPolicy`` picks the biggest change or the smallest.
    """
    select = rules.get("selectPolicy") or "Max"
    if select == "Disabled":
        return current
    proposals = []
    for policy in rules.get("policies") or []:
        period = float(policy.get("periodSeconds") or 0)
        start = (
            current
            - _changed_within(period, history.ups, now)
            + _changed_within(period, history.downs, now)
        )
        value = int(policy.get("value") or 0)
        if policy.get("type") == "Pods":
            proposals.append(start + value if up else start - value)
        elif up:
            proposals.append(math.ceil(start * (1 + value / 100)))
        else:
            proposals.append(int(start * (1 - value / 100)))
    biggest_change = (select != "Min") == up
    if not proposals:
        return -(2**31) if biggest_change else 2**31 - 1
    return max(proposals) if biggest_change else min(proposals)


_WITHIN_RANGE = ("DesiredWithinRange", "the desired count is within the acceptable range")
_TOO_MANY = ("TooManyReplicas", "the desired replica count is more than the maximum replica count")
_TOO_FEW = ("TooFewReplicas", "the desired replica count is less than the minimum replica count")
_UP_LIMIT = (
    "ScaleUpLimit",
    "the desired replica count is increasing faster than the maximum scale rate",
)
_DOWN_LIMIT = (
    "ScaleDownLimit",
    "the desired replica count is decreasing faster than the maximum scale rate",
)
_READY = ("ReadyForNewScale", "recommended size matches current size")
_DOWN_STABILIZED = (
    "ScaleDownStabilized",
    "recent recommendations were higher than current one, applying the highest recent "
    "recommendation",
)
_UP_STABILIZED = (
    "ScaleUpStabilized",
    "recent recommendations were lower than current one, applying the lowest recent recommendation",
)


def limit_by_rules(
    current: int, desired: int, least: int, most: int
) -> tuple[int, tuple[str, str]]:
    """Without a behavior: within min/max, and at most double (at least 4) at once."""
    up_limit = int(max(2.0 * current, 4.0))
    limit, why = (up_limit, _UP_LIMIT) if most > up_limit else (most, _TOO_MANY)
    if desired < least:
        return least, _TOO_FEW
    if desired > limit:
        return limit, why
    return desired, _WITHIN_RANGE


def limit_by_behavior(
    current: int,
    desired: int,
    least: int,
    most: int,
    history: History,
    behavior: Mapping[str, Any],
    now: float,
) -> tuple[int, tuple[str, str]]:
    """Within min/max and what the behavior's policies allow now."""
    if desired > current:
        up = max(
            policy_limit(current, history, _rules(behavior.get("scaleUp"), True), now, True),
            current,
        )
        limit, why = (up, _UP_LIMIT) if most > up else (most, _TOO_MANY)
        if desired > limit:
            return limit, why
    elif desired < current:
        rules = _rules(behavior.get("scaleDown"), False)
        down = min(policy_limit(current, history, rules, now, False), current)
        limit, why = (down, _DOWN_LIMIT) if least < down else (least, _TOO_FEW)
        if desired < limit:
            return limit, why
    return desired, _WITHIN_RANGE


def stabilize(history: History, desired: int, window: float, now: float) -> int:
    """Without a behavior: the highest recommendation within the scale-down window."""
    highest, old = desired, None
    for i, rec in enumerate(history.recommendations):
        if rec.at < now - window:
            old = i
        elif rec.replicas > highest:
            highest = rec.replicas
    history.record(desired, now, old)
    return highest


def stabilize_with_behavior(
    history: History, current: int, desired: int, up_window: float, down_window: float, now: float
) -> tuple[int, tuple[str, str]]:
    """
    The recommendation held between the lowest within the scale-up window
    and the highest within the scale-down window.
    """
    up = down = desired
    old = None
    for i, rec in enumerate(history.recommendations):
        if rec.at > now - up_window:
            up = min(rec.replicas, up)
        if rec.at > now - down_window:
            down = max(rec.replicas, down)
        if rec.at < now - up_window and rec.at < now - down_window:
            old = i
    recommendation = min(max(current, up), down)
    history.record(desired, now, old)
    return recommendation, _UP_STABILIZED if desired >= current else _DOWN_STABILIZED


def _longest_period(rules: Mapping[str, Any]) -> float:
    return float(max((p.get("periodSeconds") or 0 for p in rules.get("policies") or []), default=0))


def store_scale_event(
    history: History, behavior: Mapping[str, Any], before: int, after: int, now: float
) -> None:
    """Remember a rescale, reusing an entry older than the direction's longest policy period."""
    up = after > before
    events = history.ups if up else history.downs
    period = _longest_period(_rules(behavior.get("scaleUp" if up else "scaleDown"), up))
    old = None
    for i, event in enumerate(events):
        if event.at < now - period:
            event.outdated = True
        if event.outdated:
            old = i
    entry = _ScaleEvent(abs(after - before), now)
    if old is None:
        events.append(entry)
    else:
        events[old] = entry


# The controller


class _Failed(Exception):
    """A metric failed: the ScalingActive condition kube sets, and the error it reports."""

    def __init__(self, reason: str, condition_message: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.condition_message = condition_message


@dataclass
class _Computed:
    replicas: int
    metric: str
    statuses: list[Object]
    error: str | None


class HorizontalController(Controller):
    """Scales each HorizontalPodAutoscaler's target to what its metrics ask for."""

    label = "horizontal pod autoscaler"
    expected = TRANSIENT

    def __init__(
        self,
        informers: ServerInformers,
        store: ObjectStore,
        registry: Registry,
        metrics: PodMetricsSource,
        sync_period: float = SYNC_PERIOD,
        downscale_stabilization: float = DOWNSCALE_STABILIZATION,
    ) -> None:
        self.resource = registry.require("autoscaling", "v2", "horizontalpodautoscalers")
        self.hpa_informer = informers.for_resource(self.resource)
        self.pod_informer = informers.for_resource(pod_kind.RESOURCE)
        # kube's fixed-interval queue: every add, and every retry, waits a sync period.
        super().__init__(
            store.clock,
            [self.hpa_informer, self.pod_informer],
            workers=WORKERS,
            backoff=Backoff(sync_period, sync_period, factor=1.0),
        )
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.sync_period = sync_period
        self.downscale_stabilization = downscale_stabilization
        self.recorder = EventRecorder(store, store.clock, COMPONENT, "")
        self._history: dict[str, History] = {}
        #: Each autoscaler's pods' selector, to find pods two of them would scale.
        self._selectors: dict[str, LabelSelector] = {}
        self.add_handler(
            self.hpa_informer,
            each_change(self._hpa_changed, deleted=self._hpa_deleted),
        )

    def _hpa_changed(self, hpa: Object) -> None:
        key = object_key(hpa)
        self.queue.add_after(key, self.sync_period)
        self._selectors.setdefault(key, NOTHING)

    def _hpa_deleted(self, hpa: Object) -> None:
        key = object_key(hpa)
        self.queue.forget(key)
        self._selectors.pop(key, None)

    def new_term(self) -> None:
        # A new leader starts its recommendations afresh, as a restarted kube-controller-manager.
        self._history.clear()
        self._selectors.clear()

    async def sync(self, key: str) -> None:
        shared = self.hpa_informer.get(key)
        if shared is None:
            self._history.pop(key, None)
            return
        # Again after a sync period, whatever happens now.
        self.queue.add_after(key, self.sync_period)
        await self._reconcile(copy_json(shared), key)

    def _event(self, hpa: Object, kind: str, reason: str, message: str) -> None:
        self.recorder.emit(hpa, kind, reason, message)

    def _condition(self, hpa: Object, kind: str, status: bool, reason: str, message: str) -> None:
        wanted = {
            "type": kind,
            "status": "True" if status else "False",
            "reason": reason,
            "message": message,
        }
        set_condition(hpa.setdefault("status", {}), wanted, rfc3339(self.clock.seconds()))

    async def _reconcile(self, hpa: Object, key: str) -> None:
        original = copy_json(hpa.get("status") or {})
        spec = hpa.get("spec") or {}
        namespace = namespace_of(hpa)
        try:
            target, scale = await self._scale(hpa)
        except MetricError as e:
            self._event(hpa, WARNING, "FailedGetScale", str(e))
            self._condition(
                hpa,
                "AbleToScale",
                False,
                "FailedGetScale",
                f"the HPA controller was unable to get the target's current scale: {e}",
            )
            await self._write_status(hpa, original)
            return
        self._condition(
            hpa,
            "AbleToScale",
            True,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        )
        current = int(get_path(scale, "spec", "replicas") or 0)
        history = self._history.setdefault(key, History())
        if not history.recommendations:
            history.recommendations.append(_Recommendation(current, self.clock.seconds()))
        least = spec.get("minReplicas")
        least = 1 if least is None else int(least)
        most = int(spec.get("maxReplicas") or 0)
        statuses: list[Object] = []
        desired, reason, rescale = 0, "", True
        if current == 0 and least != 0:
            rescale = False
            self._condition(
                hpa,
                "ScalingActive",
                False,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            )
        elif current > most:
            reason, desired = "Current number of replicas above Spec.MaxReplicas", most
        elif current < least:
            reason, desired = "Current number of replicas below Spec.MinReplicas", least
        else:
            computed = await self._compute(hpa, scale, spec.get("metrics") or [])
            statuses = computed.statuses
            if computed.replicas == -1:
                self._set_status(hpa, current, None, statuses, False)
                await self._write_status(hpa, original)
                self._event(hpa, WARNING, "FailedComputeMetricsReplicas", computed.error or "")
                return
            desired = max(computed.replicas, 0)
            if desired > current:
                reason = f"{computed.metric} above target"
            elif desired < current:
                reason = "All metrics below target"
            behavior = spec.get("behavior")
            if behavior is None:
                desired = self._normalize(hpa, history, current, desired, least, most)
            else:
                desired = self._normalize_with_behavior(
                    hpa, history, behavior, current, desired, least, most
                )
            rescale = desired != current
        if rescale:
            try:
                await write_scale(
                    self.store,
                    target,
                    namespace,
                    str(get_path(spec, "scaleTargetRef", "name")),
                    {**scale, "spec": {"replicas": desired}},
                    MANAGER,
                )
            except StatusError as e:
                self._event(
                    hpa,
                    WARNING,
                    "FailedRescale",
                    f"New size: {desired}; reason: {reason}; error: {e.message}",
                )
                self._condition(
                    hpa,
                    "AbleToScale",
                    False,
                    "FailedUpdateScale",
                    f"the HPA controller was unable to update the target scale: {e.message}",
                )
                self._set_status(hpa, current, None, statuses, False)
                await self._write_status(hpa, original)
                return
            self._condition(
                hpa,
                "AbleToScale",
                True,
                "SucceededRescale",
                f"the HPA controller was able to update the target scale to {desired}",
            )
            self._event(hpa, NORMAL, "SuccessfulRescale", f"New size: {desired}; reason: {reason}")
            behavior = spec.get("behavior")
            if behavior is not None:
                store_scale_event(history, behavior, current, desired, self.clock.seconds())
            self._log.info(
                "Rescaled {hpa} from {current} to {desired}: {reason}",
                hpa=key,
                current=current,
                desired=desired,
                reason=reason,
            )
        else:
            desired = current
        self._set_status(hpa, current, desired, statuses, rescale)
        await self._write_status(hpa, original)

    async def _scale(self, hpa: Object) -> tuple[ResourceType, Object]:
        """The target's resource and Scale, or a MetricError in kube's words."""
        ref = get_path(hpa, "spec", "scaleTargetRef") or {}
        api_version, kind = str(ref.get("apiVersion") or ""), str(ref.get("kind") or "")
        if api_version.count("/") > 1:
            raise MetricError(f"unexpected GroupVersion string: {api_version}")
        group = api_version.rpartition("/")[0]
        resource = self.registry.by_kind(group, kind)
        if resource is None:
            raise MetricError(f'no matches for kind "{kind}" in group "{group}"')
        if "scale" not in resource.subresources:
            raise MetricError("the server could not find the requested resource")
        try:
            found = await self.store.get(resource, namespace_of(hpa), str(ref.get("name")))
        except StatusError as e:
            if e.code != 404:
                raise
            raise MetricError(e.message) from None
        return resource, scale_of(found)

    def _selector(self, hpa: Object, text: str) -> tuple[LabelSelector, list[Object]]:
        """The target's pods' selector and pods (kube's validateAndParseSelector)."""
        if not text:
            self._event(hpa, WARNING, "SelectorRequired", "selector is required")
            raise _Failed(
                "InvalidSelector",
                "the HPA target's scale is missing a selector",
                "selector is required",
            )
        try:
            selector = parse_label_selector(text)
        except SelectorError as e:
            message = (
                f"couldn't convert selector into a corresponding internal selector object: {e}"
            )
            self._event(hpa, WARNING, "InvalidSelector", message)
            raise _Failed("InvalidSelector", message, message) from None
        key = object_key(hpa)
        if key in self._selectors:
            self._selectors[key] = selector
        namespace = namespace_of(hpa)
        selected = [
            pod
            for pod in self.pod_informer.cache.by_index(NAMESPACE, namespace)
            if selector.matches(metadata(pod).get("labels") or {})
        ]
        others = sorted(
            split_key(other)[1]
            for other, theirs in self._selectors.items()
            if other != key
            and split_key(other)[0] == namespace
            and any(theirs.matches(metadata(pod).get("labels") or {}) for pod in selected)
        )
        if others:
            names = " ".join(f"{namespace}/{name}" for name in sorted([name_of(hpa), *others]))
            message = f"pods by selector {text} are controlled by multiple HPAs: [{names}]"
            self._event(hpa, WARNING, "AmbiguousSelector", message)
            raise _Failed("AmbiguousSelector", message, message)
        return selector, selected

    async def _compute(self, hpa: Object, scale: Object, specs: list[Object]) -> _Computed:
        """The replicas the metrics ask for (the most of those that could be had), or -1."""
        try:
            _, selected = self._selector(hpa, str(get_path(scale, "status", "selector") or ""))
        except _Failed as e:
            self._condition(hpa, "ScalingActive", False, e.reason, e.condition_message)
            return _Computed(-1, "", [], str(e))
        spec_replicas = int(get_path(scale, "spec", "replicas") or 0)
        replicas, metric = 0, ""
        statuses: list[Object] = []
        invalid = 0
        first: _Failed | None = None
        first_error = ""
        for spec in specs:
            try:
                proposal, name, status = await self._compute_one(hpa, spec, spec_replicas, selected)
            except _Failed as e:
                statuses.append({"type": ""})
                if invalid == 0:
                    first, first_error = e, str(e)
                invalid += 1
                continue
            statuses.append(status)
            if replicas == 0 or proposal > replicas:
                replicas, metric = proposal, name
        error = None
        if first is not None:
            error = (
                f"invalid metrics ({invalid} invalid out of {len(specs)}), "
                f"first error is: {first_error}"
            )
        if first is not None and (invalid >= len(specs) or replicas < spec_replicas):
            self._condition(hpa, "ScalingActive", False, first.reason, first.condition_message)
            return _Computed(-1, "", statuses, error)
        if invalid >= len(specs):
            # No metrics at all: nothing proposed.
            return _Computed(-1, "", statuses, error)
        self._condition(
            hpa,
            "ScalingActive",
            True,
            "ValidMetricFound",
            f"the HPA was able to successfully calculate a replica count from {metric}",
        )
        if error is not None:
            self._log.warn("{hpa}: {error}", hpa=object_key(hpa), error=error)
        return _Computed(replicas, metric, statuses, error)

    def _unable(self, hpa: Object, reason: str, error: str, wrapped: str) -> _Failed:
        """kube's getUnableComputeReplicaCountCondition: an Event, and the condition to set."""
        self._event(hpa, WARNING, reason, error)
        return _Failed(reason, f"the HPA was unable to compute the replica count: {error}", wrapped)

    async def _compute_one(
        self, hpa: Object, spec: Object, current: int, selected: list[Object]
    ) -> tuple[int, str, Object]:
        """One metric's proposal, its name for the conditions, and its status."""
        kind = spec.get("type")
        if kind == "Resource" or kind == "ContainerResource":
            return await self._resource(hpa, spec, current, selected)
        if kind == "Pods":
            name = get_path(spec, "pods", "metric", "name")
            error = f"unable to get metric {name}: {_NO_CUSTOM_API}"
            raise self._unable(
                hpa, "FailedGetPodsMetric", error, f"failed to get pods metric value: {error}"
            )
        if kind == "Object":
            name = get_path(spec, "object", "metric", "name")
            described = get_path(spec, "object", "describedObject") or {}
            error = (
                f"unable to get metric {name}: {described.get('kind')} on {namespace_of(hpa)} "
                f"{described.get('name')}/{_NO_CUSTOM_API}"
            )
            raise self._unable(
                hpa, "FailedGetObjectMetric", error, f"failed to get object metric value: {error}"
            )
        if kind == "External":
            name = get_path(spec, "external", "metric", "name")
            error = (
                f"unable to get external metric {namespace_of(hpa)}/{name}/nil: unable to fetch "
                f"metrics from external metrics API: the server could not find the requested "
                f"resource (get {name}.external.metrics.k8s.io)"
            )
            raise self._unable(
                hpa,
                "FailedGetExternalMetric",
                error,
                f"failed to get {name} external metric value: {error}",
            )
        error = f'unknown metric source type "{kind}"'
        raise self._unable(hpa, "InvalidMetricSourceType", error, error)

    async def _resource(
        self, hpa: Object, spec: Object, current: int, selected: list[Object]
    ) -> tuple[int, str, Object]:
        kind = str(spec["type"])
        field_name = "resource" if kind == "Resource" else "containerResource"
        source = spec.get(field_name) or {}
        resource = str(source.get("name") or "")
        container = str(source.get("container") or "") if kind == "ContainerResource" else ""
        target = source.get("target") or {}
        if kind == "Resource":
            reason, wrap = (
                "FailedGetResourceMetric",
                f"failed to get {resource} resource metric value",
            )
        else:
            reason, wrap = (
                "FailedGetContainerResourceMetric",
                f"failed to get {container} container metric value",
            )
        if target.get("averageValue") is not None:
            what = "usage"
            wanted = milli(target["averageValue"])
            utilization = False
        elif target.get("averageUtilization") is None:
            error = (
                "invalid resource metric source: neither an average utilization target "
                "nor an average value (usage) target was set"
            )
            raise self._unable(hpa, reason, error, f"{wrap}: {error}")
        else:
            what = "utilization"
            wanted = int(target["averageUtilization"])
            utilization = True
        try:
            metrics = await self._pod_usage(selected, resource, container)
            proposal = propose(
                current,
                wanted,
                utilization,
                metrics,
                selected,
                resource,
                container,
                self.clock.seconds(),
            )
        except MetricError as e:
            error = f"failed to get {resource} {what}: {e}"
            raise self._unable(hpa, reason, error, f"{wrap}: {error}") from None
        current_value: Object = {"averageValue": milli_quantity(proposal.average)}
        if utilization:
            current_value = {"averageUtilization": proposal.utilization, **current_value}
            metric = (
                f"{resource} resource utilization (percentage of request)"
                if kind == "Resource"
                else f"{resource} container resource utilization (percentage of request)"
            )
        else:
            metric = f"{resource} resource"
        status_source: Object = {"name": resource, "current": current_value}
        if container:
            status_source = {"name": resource, "container": container, "current": current_value}
        return proposal.replicas, metric, {"type": kind, field_name: status_source}

    async def _pod_usage(
        self, selected: list[Object], resource: str, container: str
    ) -> dict[str, PodMetric]:
        try:
            items = await self.metrics.pod_metrics_of(list(selected))
        except StatusError as e:
            raise MetricError(
                f"unable to get metrics for resource {resource}: unable to fetch metrics "
                f"from resource metrics API: {e.message}"
            ) from None
        try:
            return pod_usage(items, resource, container)
        except MetricError as e:
            raise MetricError(f"unable to get metrics for resource {resource}: {e}") from None

    def _normalize(
        self, hpa: Object, history: History, current: int, desired: int, least: int, most: int
    ) -> int:
        now = self.clock.seconds()
        stabilized = stabilize(history, desired, self.downscale_stabilization, now)
        limited, why = limit_by_rules(current, stabilized, least, most)
        return self._normalized(hpa, desired, stabilized, _DOWN_STABILIZED, limited, why)

    def _normalized(
        self,
        hpa: Object,
        desired: int,
        stabilized: int,
        stabilized_why: tuple[str, str],
        limited: int,
        limited_why: tuple[str, str],
    ) -> int:
        """The conditions of a recommendation stabilized, then limited; the replicas wanted."""
        reason, message = stabilized_why if stabilized != desired else _READY
        self._condition(hpa, "AbleToScale", True, reason, message)
        self._condition(hpa, "ScalingLimited", limited != stabilized, *limited_why)
        return limited

    def _normalize_with_behavior(
        self,
        hpa: Object,
        history: History,
        behavior: Mapping[str, Any],
        current: int,
        desired: int,
        least: int,
        most: int,
    ) -> int:
        now = self.clock.seconds()
        up = _rules(behavior.get("scaleUp"), True)
        down = _rules(behavior.get("scaleDown"), False)
        up_window = float(up.get("stabilizationWindowSeconds") or 0)
        down_window = down.get("stabilizationWindowSeconds")
        down_window = self.downscale_stabilization if down_window is None else float(down_window)
        stabilized, stabilized_why = stabilize_with_behavior(
            history, current, desired, up_window, down_window, now
        )
        limited, why = limit_by_behavior(current, stabilized, least, most, history, behavior, now)
        return self._normalized(hpa, desired, stabilized, stabilized_why, limited, why)

    def _set_status(
        self,
        hpa: Object,
        current: int,
        desired: int | None,
        statuses: list[Object],
        rescale: bool,
    ) -> None:
        """kube's setStatus: the status made anew from the counts, metrics and conditions."""
        old = hpa.get("status") or {}
        status: Object = {}
        if current:
            status["currentReplicas"] = current
        status["desiredReplicas"] = old.get("desiredReplicas", 0) if desired is None else desired
        if rescale:
            status["lastScaleTime"] = rfc3339(self.clock.seconds())
        elif old.get("lastScaleTime"):
            status["lastScaleTime"] = old["lastScaleTime"]
        if statuses:
            status["currentMetrics"] = statuses
        if old.get("conditions"):
            status["conditions"] = old["conditions"]
        hpa["status"] = status

    async def _write_status(self, hpa: Object, original: Object) -> None:
        status = hpa.get("status") or {}
        if status == original:
            return
        namespace, name = namespace_of(hpa), name_of(hpa)

        def replace(stored: Object) -> Object:
            stored["status"] = status
            return stored

        try:
            await self.store.guaranteed_update(
                self.resource, namespace, name, replace, MANAGER, subresource="status"
            )
        except StatusError as e:
            if e.code == 404:
                return
            self._event(hpa, WARNING, "FailedUpdateStatus", e.message)
            raise
