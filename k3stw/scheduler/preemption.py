"""
kube-scheduler's DefaultPreemption (its PostFilter), as pure functions over
the scheduler's L{NodeState}s: whether a pod that fits nowhere may preempt,
which lower-priority pods each node would have to give up for it (the
fewest, sparing PodDisruptionBudgets where it can), the node whose victims
cost least, and the ``preemption:`` tail of the ``FailedScheduling`` message.

The scheduler (L{k3stw.scheduler.scheduler}) carries the verdict out: it
marks each victim ``DisruptionTarget`` and deletes it, and nominates the
node for the preemptor, whose requests that node then keeps for it against
pods of lower priority.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from k3stw.apiserver.eviction import budget_selects
from k3stw.machinery.objects import (
    Object,
    find_condition,
    get_path,
    is_deleting,
    metadata,
    name_of,
    object_key,
)
from k3stw.machinery.times import parse_time
from k3stw.scheduler.framework import (
    NEVER_PREEMPTS,
    NO_VICTIMS,
    NOT_HELPFUL,
    NodeState,
    PodFacts,
    Rejection,
    histogram,
)

#: The preemptor may not preempt again while a victim on its nominated node is still going.
TERMINATING_VICTIM = "not eligible due to a terminating pod on the nominated node."
#: The condition a victim gets before it is deleted (kube's DisruptionTarget).
DISRUPTION_TARGET = "DisruptionTarget"
PREEMPTION_BY_SCHEDULER = "PreemptionByScheduler"

Filter = Callable[[PodFacts, NodeState], Rejection | None]
Lookup = Callable[[str], Object | None]


def priority_of(pod: Object) -> int:
    return int(get_path(pod, "spec", "priority") or 0)


def _start_time(pod: Object) -> float:
    """When the pod started; one not started yet counts as the latest (kube takes now)."""
    started = parse_time(get_path(pod, "status", "startTime"))
    return math.inf if started is None else started


def importance(pod: Object) -> tuple[int, float]:
    """A sort key putting kube's ``MoreImportantPod`` first: higher priority, then older."""
    return (-priority_of(pod), _start_time(pod))


def copy_state(
    state: NodeState, drop: Iterable[str] = (), add: Iterable[PodFacts] = ()
) -> NodeState:
    """A copy of C{state} without the pods C{drop} names and with those C{add} gives."""
    dropped = set(drop)
    copy = NodeState(state.name)
    copy.set_node(state.node)
    for pod in state.pods.values():
        if pod.key not in dropped:
            copy.add_pod(pod)
    for pod in add:
        copy.add_pod(pod)
    return copy


def not_eligible(
    pod: Object, facts: PodFacts, nominated: NodeState | None, lookup: Lookup
) -> str | None:
    """
    Why the pod may not preempt (kube's ``PodEligibleToPreemptOthers``), or
    None: ``preemptionPolicy: Never``, or a lower-priority pod still
    terminating by preemption on the node it was nominated to (its
    preemption is under way).
    """
    if facts.preemption_policy == "Never":
        return NEVER_PREEMPTS
    if nominated is not None:
        for key in nominated.pods:
            other = lookup(key)
            if (
                other is not None
                and priority_of(other) < facts.priority
                and terminating_by_preemption(other)
            ):
                return TERMINATING_VICTIM
    return None


def terminating_by_preemption(pod: Object) -> bool:
    """Deleting, and marked ``DisruptionTarget`` by a scheduler's preemption."""
    if not is_deleting(pod):
        return False
    condition = find_condition(pod, DISRUPTION_TARGET) or {}
    return condition.get("status") == "True" and condition.get("reason") == PREEMPTION_BY_SCHEDULER


def _selects(budget: Object, pod: Object) -> bool:
    """Whether a budget covers the pod for preemption (an empty selector covers none here)."""
    selector = get_path(budget, "spec", "selector")
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return False
    return metadata(budget).get("namespace") == metadata(pod).get("namespace") and budget_selects(
        budget, pod
    )


def split_by_budgets(
    pods: Sequence[Object], budgets: Sequence[Object]
) -> tuple[list[Object], list[Object]]:
    """
    The pods whose removal would take some budget below zero disruptions
    allowed (counting the pods before them), and the others, in order.
    """
    allowed = [int(get_path(b, "status", "disruptionsAllowed") or 0) for b in budgets]
    violating: list[Object] = []
    sparing: list[Object] = []
    for pod in pods:
        violates = False
        if metadata(pod).get("labels"):
            for index, budget in enumerate(budgets):
                disrupted = get_path(budget, "status", "disruptedPods") or {}
                if not _selects(budget, pod) or name_of(pod) in disrupted:
                    continue
                allowed[index] -= 1
                if allowed[index] < 0:
                    violates = True
        (violating if violates else sparing).append(pod)
    return violating, sparing


@dataclass(frozen=True)
class Candidate:
    """A node the preemptor would fit once its victims (most important first) are gone."""

    node: str
    victims: tuple[Object, ...]
    budget_violations: int


def select_victims(
    facts: PodFacts,
    state: NodeState,
    lookup: Lookup,
    budgets: Sequence[Object],
    fits: Filter,
) -> Candidate | Rejection:
    """
    The fewest lower-priority pods whose removal lets the pod onto the node
    (kube's ``SelectVictimsOnNode``): remove them all, then give back as many
    as still leave room, the most important first, those a budget protects
    before the rest; or why removing them cannot help.
    """
    lower = [
        pod
        for key, pod_facts in state.pods.items()
        if pod_facts.priority < facts.priority and (pod := lookup(key)) is not None
    ]
    if not lower:
        return Rejection((NO_VICTIMS,), False)
    lower.sort(key=importance)
    trial = copy_state(state, drop=(object_key(pod) for pod in lower))
    rejected = fits(facts, trial)
    if rejected is not None:
        return rejected
    violating, sparing = split_by_budgets(lower, budgets)
    victims: list[Object] = []
    violations = 0
    for group, violates in ((violating, True), (sparing, False)):
        for pod in group:
            key = object_key(pod)
            trial.add_pod(state.pods[key])
            if fits(facts, trial) is not None:
                trial.remove_pod(key)
                victims.append(pod)
                violations += violates
    if not victims:  # it fits as it is: nothing for preemption to do here
        return Rejection((), False)
    victims.sort(key=importance)
    return Candidate(state.name, tuple(victims), violations)


def pick_candidate(candidates: Sequence[Candidate]) -> Candidate:
    """
    kube's ``pickOneNodeForPreemption``: fewest budget violations, then the
    lowest highest-priority victim, the smallest sum of priorities, the
    fewest victims, the latest earliest start; then the first.
    """

    def costs(candidate: Candidate) -> tuple[float, ...]:
        victims = candidate.victims
        return (
            candidate.budget_violations,
            priority_of(victims[0]),
            sum(priority_of(v) + 2**31 for v in victims),
            len(victims),
            -min(_start_time(v) for v in victims),
        )

    return min(candidates, key=costs)


@dataclass(frozen=True)
class Verdict:
    """
    What preemption found: the chosen candidate, or none and the message
    tail (``preemption: ...``) that says why; C{eligible} if the pod may
    preempt at all.
    """

    candidate: Candidate | None
    message: str
    eligible: bool = True


def preempt(
    pod: Object,
    facts: PodFacts,
    rejections: Mapping[str, Rejection],
    states: Mapping[str, NodeState],
    lookup: Lookup,
    budgets: Sequence[Object],
    fits: Filter,
) -> Verdict:
    """
    The PostFilter's dry run over the nodes that turned the pod down
    (C{rejections}, by node): the best candidate, or kube's reasons.
    """
    nominated = states.get(str(get_path(pod, "status", "nominatedNodeName") or ""))
    if nominated is not None and not rejections.get(nominated.name, Rejection((), True)).resolvable:
        nominated = None
    reason = not_eligible(pod, facts, nominated, lookup)
    if reason is not None:
        return Verdict(None, f"preemption: {reason}", eligible=False)
    candidates: list[Candidate] = []
    verdicts: list[str] = []
    for name in sorted(rejections):
        rejection = rejections[name]
        if not rejection.resolvable:
            verdicts.append(NOT_HELPFUL)
            continue
        found = select_victims(facts, states[name], lookup, budgets, fits)
        if isinstance(found, Candidate):
            candidates.append(found)
        else:
            verdicts.extend(found.reasons)
    if candidates:
        return Verdict(pick_candidate(candidates), "")
    return Verdict(None, f"preemption: {histogram(verdicts, len(rejections))}")


def victim_condition() -> Object:
    """The ``DisruptionTarget`` condition the scheduler puts on a victim before deleting it."""
    return {
        "type": DISRUPTION_TARGET,
        "status": "True",
        "reason": PREEMPTION_BY_SCHEDULER,
        "message": "default-scheduler: preempting to accommodate a higher priority pod",
    }
