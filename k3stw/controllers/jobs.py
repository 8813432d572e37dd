"""
kube-controller-manager's job controller and TTL-after-finished controller
(1.32, in part).

A Job's pods are made from its template, owned by it and held by the
``batch.kubernetes.io/job-tracking`` finalizer until the controller has
counted them: a finished pod's uid goes to ``status.uncountedTerminatedPods``
first, then its finalizer is removed, then it moves into ``succeeded`` or
``failed``, so no pod is counted twice or lost between writes.  A pod being
deleted before it succeeded counts as failed (kube's orphan rule).

A Job ends in two steps, as in 1.32: an interim condition
(``SuccessCriteriaMet`` or ``FailureTarget``), its remaining pods deleted,
then ``Complete`` or ``Failed`` once none is left terminating.  Failed pods
are replaced after kube's pod-failure back-off (10 s doubling, at most
10 min); the active deadline and the back-off are waited for with the work
queue's timers, never by polling.

A ``podFailurePolicy`` decides about each failed pod by its first matching
rule: fail the Job at once (``FailJob``), not count it (``Ignore``) or count
it; with ``restartPolicy: OnFailure`` the containers' restarts count against
``backoffLimit`` too.

Not done: successPolicy, backoffLimitPerIndex (so no ``FailIndex``),
slow-start creation batches (pods are created one by one, stopping at the
first refusal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import jobs, pods
from k3stw.apiserver.kinds.pods import is_ready
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.controllers.garbage import FOREGROUND
from k3stw.controllers.ownership import Expectations, new_controller_ref
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler, each_change
from k3stw.machinery.objects import (
    Object,
    copy_json,
    drop_finalizer,
    find_condition,
    get_path,
    is_deleting,
    join_key,
    metadata,
    name_of,
    namespace_of,
    object_key,
    owner_references,
    uid_of,
)
from k3stw.machinery.times import parse_time, rfc3339

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"

#: kube's pod-failure back-off: the first delay, doubled per failure, and its ceiling.
POD_FAILURE_BACKOFF = 10.0
MAX_POD_FAILURE_BACKOFF = 600.0
#: At most this many pods made or deleted in one sync (kube's MaxPodCreateDeletePerSync).
MAX_PODS_PER_SYNC = 500
#: A timer's look comes this long after the moment it waits for (timers are not exact).
_SLACK = 0.1

COMPLETIONS_REACHED = ("CompletionsReached", "Reached expected number of succeeded pods")
BACKOFF_LIMIT_EXCEEDED = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
#: The reason a Job failed by its ``podFailurePolicy`` has.
POD_FAILURE_POLICY = "PodFailurePolicy"
DEADLINE_EXCEEDED = ("DeadlineExceeded", "Job was active longer than specified deadline")


def controller_of(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The ownerReference of C{obj}'s controller, if it is a batch/v1 C{kind}."""
    for owner in owner_references(obj):
        batch = str(owner.get("apiVersion", "")).startswith("batch/")
        if owner.get("controller") and owner.get("kind") == kind and batch:
            return owner
    return None


def is_finished(job: Mapping[str, Any]) -> str | None:
    """``Complete`` or ``Failed`` once the Job has that condition, else None."""
    for kind in ("Complete", "Failed"):
        condition = find_condition(job, kind)
        if condition is not None and condition.get("status") == "True":
            return kind
    return None


def finish_time(job: Mapping[str, Any]) -> float | None:
    """When the Job finished: its terminal condition's lastTransitionTime."""
    kind = is_finished(job)
    condition = find_condition(job, kind) if kind else None
    return parse_time(condition.get("lastTransitionTime")) if condition else None


def intervals(indexes: Iterable[int]) -> str:
    """``1,3-5``: sorted indexes as kube writes ``completedIndexes``."""
    parts: list[str] = []
    ordered = sorted(set(indexes))
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        low, high = ordered[start], ordered[end]
        parts.append(str(low) if low == high else f"{low}-{high}")
        start = end + 1
    return ",".join(parts)


def parse_intervals(text: object) -> set[int]:
    found: set[int] = set()
    for part in str(text or "").split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            found.update(range(int(low), int(high or low) + 1))
    return found


def completion_index(pod: Mapping[str, Any]) -> int | None:
    value = (metadata(pod).get("annotations") or {}).get(COMPLETION_INDEX)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def set_condition(
    status: Object, kind: str, value: str, reason: str, message: str, now: str
) -> bool:
    """Set a condition in C{status}; whether anything changed (time moves only with status)."""
    conditions: list[Object] = status.setdefault("conditions", [])
    for condition in conditions:
        if condition.get("type") == kind:
            if (condition.get("status"), condition.get("reason"), condition.get("message")) == (
                value,
                reason,
                message,
            ):
                return False
            if condition.get("status") != value:
                condition["lastTransitionTime"] = now
            condition.update(status=value, reason=reason, message=message, lastProbeTime=now)
            return True
    conditions.append(
        {
            "type": kind,
            "status": value,
            "lastProbeTime": now,
            "lastTransitionTime": now,
            "reason": reason,
            "message": message,
        }
    )
    return True


def _phase(pod: Mapping[str, Any]) -> str:
    return str(get_path(pod, "status", "phase") or "")


def _replaces_only_failed(job: Mapping[str, Any]) -> bool:
    """``podReplacementPolicy: Failed``, or a pod failure policy (kube's onlyReplaceFailedPods)."""
    spec = job.get("spec") or {}
    return spec.get("podReplacementPolicy") == "Failed" or spec.get("podFailurePolicy") is not None


def _counts_failed(pod: Mapping[str, Any], job: Mapping[str, Any]) -> bool:
    """kube's isPodFailed: Failed, or deleted before it succeeded (unless only Failed counts)."""
    if _phase(pod) == "Failed":
        return True
    if _replaces_only_failed(job):
        return False
    return is_deleting(pod) and _phase(pod) != "Succeeded"


def failure_policy_match(job: Mapping[str, Any], pod: Mapping[str, Any]) -> tuple[str | None, bool]:
    """
    What the Job's ``podFailurePolicy`` says of a failed pod
    (``matchPodFailurePolicy``): the Job's failure message if a ``FailJob``
    rule matches, and whether the failure counts towards ``backoffLimit``.
    """
    rules = get_path(job, "spec", "podFailurePolicy", "rules") or ()
    for index, rule in enumerate(rules):
        action = rule.get("action")
        if rule.get("onExitCodes") is not None:
            container = _failed_container(pod, rule["onExitCodes"])
            if container is None:
                continue
            name, code = container
            message = (
                f"Container {name} for pod {namespace_of(pod)}/{name_of(pod)} failed with exit"
                f" code {code} matching {action} rule at index {index}"
            )
        elif rule.get("onPodConditions") is not None:
            condition = _matching_condition(pod, rule["onPodConditions"])
            if condition is None:
                continue
            message = (
                f"Pod {namespace_of(pod)}/{name_of(pod)} has condition {condition} matching"
                f" {action} rule at index {index}"
            )
        else:
            continue
        if action == "Ignore":
            return None, False
        if action == "Count":
            return None, True
        if action == "FailJob":
            return message, True
        # FailIndex needs backoffLimitPerIndex; an unknown action: the next rule decides.
    return None, True


def _failed_container(
    pod: Mapping[str, Any], requirement: Mapping[str, Any]
) -> tuple[str, int] | None:
    """The first container (then init container) that exited non-zero as C{requirement} asks."""
    wanted = requirement.get("containerName")
    values = set(requirement.get("values") or ())
    operator = requirement.get("operator")
    for kind in ("containerStatuses", "initContainerStatuses"):
        for status in get_path(pod, "status", kind) or ():
            code = get_path(status, "state", "terminated", "exitCode")
            if code is None or code == 0 or wanted not in (None, status.get("name")):
                continue
            if (code in values) == (operator == "In") and operator in ("In", "NotIn"):
                return str(status.get("name", "")), int(code)
    return None


def _matching_condition(
    pod: Mapping[str, Any], patterns: Iterable[Mapping[str, Any]]
) -> str | None:
    """The type of the pod's first condition that one of C{patterns} matches."""
    for condition in get_path(pod, "status", "conditions") or ():
        for pattern in patterns:
            status = pattern.get("status") or "True"
            if condition.get("type") == pattern.get("type") and condition.get("status") == status:
                return str(condition.get("type"))
    return None


def restarts_exceed_backoff(job: Mapping[str, Any], pods_: Iterable[Mapping[str, Any]]) -> bool:
    """
    ``pastBackoffLimitOnFailure``: with ``restartPolicy: OnFailure``, the
    restarts of the running and pending pods' containers reach ``backoffLimit``.
    """
    if get_path(job, "spec", "template", "spec", "restartPolicy") != "OnFailure":
        return False
    restarts = sum(
        int(status.get("restartCount") or 0)
        for pod in pods_
        if _phase(pod) in ("Running", "Pending")
        for kind in ("initContainerStatuses", "containerStatuses")
        for status in get_path(pod, "status", kind) or ()
    )
    limit = int(get_path(job, "spec", "backoffLimit") or 0)
    return restarts > 0 if limit == 0 else restarts >= limit


def _has_tracking(pod: Mapping[str, Any]) -> bool:
    return TRACKING_FINALIZER in (metadata(pod).get("finalizers") or ())


@dataclass
class _Backoff:
    failures: int
    last: float


def build_pod(job: Mapping[str, Any], index: int | None) -> Object:
    """A pod from the Job's template, owned by it, tracked (and indexed, if C{index})."""
    template = copy_json(get_path(job, "spec", "template") or {})
    meta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    name = name_of(job)
    labels = dict(meta.get("labels") or {})
    annotations = dict(meta.get("annotations") or {})
    generate = f"{name}-"
    if index is not None:
        labels[COMPLETION_INDEX] = annotations[COMPLETION_INDEX] = str(index)
        generate = f"{name}-{index}-"
        if not spec.get("hostname"):
            spec["hostname"] = f"{name}-{index}"
        variable = {
            "name": COMPLETION_INDEX_ENV,
            "valueFrom": {
                "fieldRef": {
                    "apiVersion": "v1",
                    "fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']",
                }
            },
        }
        for kind in ("initContainers", "containers"):
            for container in spec.get(kind) or ():
                container["env"] = [
                    e for e in container.get("env") or () if e.get("name") != COMPLETION_INDEX_ENV
                ] + [dict(variable)]
    pod_meta: Object = {
        "generateName": generate,
        "labels": labels,
        "finalizers": [*(meta.get("finalizers") or ()), TRACKING_FINALIZER],
        "ownerReferences": [new_controller_ref(job)],
    }
    if annotations:
        pod_meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}


class JobController(Controller):
    """Runs each Job's pods to its completions, within its back-off limit and deadline."""

    label = "job controller"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore, host: str = "") -> None:
        self.jobs = informers.for_resource(jobs.RESOURCE)
        self.pods = informers.for_resource(pods.RESOURCE)
        self.pods.add_index(_JOB, _by_job)
        super().__init__(store.clock, [self.jobs, self.pods])
        self.store = store
        self.recorder = EventRecorder(store, store.clock, "job-controller", host)
        self.expectations = Expectations(self.clock)
        self._backoff: dict[str, _Backoff] = {}
        #: The resourceVersion of each Job's last status write: an older cached Job is stale.
        self._written: dict[str, int] = {}
        #: Uids of pods whose finalizer was removed but whose cached copy still has it.
        self.releasing: set[str] = set()
        self.add_handler(self.jobs, self.enqueue_handler())
        self.add_handler(
            self.pods,
            EventHandler(
                on_add=self._pod_added,
                on_update=lambda old, new: self._pod_changed(new),
                on_delete=self._pod_deleted,
            ),
        )

    # What the cache shows

    def _pod_added(self, pod: Object) -> None:
        self._observed(pod, "created")
        self._pod_changed(pod)

    def _pod_changed(self, pod: Object) -> None:
        if not _has_tracking(pod):
            self.releasing.discard(uid_of(pod))
        if is_deleting(pod):
            self._observed(pod, "deleted")
        for key in _by_job(pod):
            self.enqueue(key)

    def _pod_deleted(self, pod: Object) -> None:
        self.releasing.discard(uid_of(pod))
        self._observed(pod, "deleted")
        for key in _by_job(pod):
            self.enqueue(key)

    def _observed(self, pod: Object, what: str) -> None:
        for key in _by_job(pod):
            if what == "created":
                self.expectations.creation_observed(key)
            else:
                self.expectations.deletion_observed(key, object_key(pod))

    def new_term(self) -> None:
        self.expectations.clear()
        self._backoff.clear()
        self._written.clear()

    # The work

    async def sync(self, key: str) -> None:
        job = self.jobs.get(key)
        candidates = self.pods.cache.by_index(_JOB, key)
        if job is None or is_deleting(job):
            self.expectations.forget(key)
            self._written.pop(key, None)
            self._backoff.pop(key, None)
            await self._release(p for p in candidates if _has_tracking(p))
            return
        owned = [p for p in candidates if get_path(controller_of(p, "Job"), "uid") == uid_of(job)]
        # Pods of an earlier Job of this name: never counted, so let them go.
        await self._release(p for p in candidates if p not in owned and _has_tracking(p))
        if _version(job) < self._written.get(key, 0) or not self.expectations.satisfied(key):
            return  # the cache has yet to show this controller's own writes
        self._written.pop(key, None)
        await _JobSync(self, key, job, owned).run()

    async def _release(self, pods_: Iterable[Object]) -> None:
        """Remove the tracking finalizer from C{pods_}."""

        def release(pod: Object) -> Object:
            return drop_finalizer(pod, TRACKING_FINALIZER)

        for pod in list(pods_):
            if uid_of(pod) in self.releasing:
                continue
            self.releasing.add(uid_of(pod))
            try:
                await self.store.guaranteed_update(
                    pods.RESOURCE, namespace_of(pod), name_of(pod), release
                )
            except StatusError as e:
                self.releasing.discard(uid_of(pod))
                if e.code != 404:
                    raise

    def wrote_status(self, key: str, job: Object) -> None:
        self._written[key] = _version(job)

    def backoff_remaining(self, key: str) -> float:
        """How long before a failed pod of the Job may be replaced."""
        record = self._backoff.get(key)
        if record is None or record.failures == 0:
            return 0.0
        delay = min(
            POD_FAILURE_BACKOFF * float(2 ** (record.failures - 1)), MAX_POD_FAILURE_BACKOFF
        )
        return max(0.0, record.last + delay - float(self.clock.seconds()))

    def note_outcomes(self, key: str, succeeded: int, failed: int) -> None:
        """A success resets the pod-failure back-off; each failure lengthens it."""
        if succeeded:
            self._backoff.pop(key, None)
        if failed:
            record = self._backoff.setdefault(key, _Backoff(0, 0.0))
            record.failures += failed
            record.last = self.clock.seconds()


#: The pods index by the ``namespace/name`` of the Job that controls them.
_JOB = "job"


def _version(obj: Object) -> int:
    version = str(metadata(obj).get("resourceVersion") or "0")
    return int(version) if version.isdigit() else 0


def by_controller(kind: str) -> Callable[[Object], Iterable[str]]:
    """An index function: the ``namespace/name`` of the batch C{kind} that controls an object."""

    def index(obj: Object) -> Iterable[str]:
        owner = controller_of(obj, kind)
        return (join_key(namespace_of(obj), str(owner.get("name", ""))),) if owner else ()

    return index


_by_job = by_controller("Job")


class _JobSync:
    """One sync of one Job: count, decide, act, write status."""

    def __init__(self, controller: JobController, key: str, job: Object, owned: list[Object]):
        self.controller = controller
        self.store = controller.store
        self.key = key
        self.job = job
        # Pods already let go of but shown by a stale cache are as good as gone.
        self.pods = [p for p in owned if uid_of(p) not in controller.releasing]
        self.spec: Mapping[str, Any] = job.get("spec") or {}
        self.status: Object = copy_json(job.get("status") or {})
        self.now = controller.clock.seconds()
        self.stamp = rfc3339(self.now)
        self.indexed = self.spec.get("completionMode") == "Indexed"
        self.completed = parse_intervals(self.status.get("completedIndexes"))
        self.indexes = {uid_of(p): completion_index(p) for p in owned}
        #: Pods this sync deleted that wait for finalizers (terminating).
        self._deleted: list[Object] = []

    async def run(self) -> None:
        uncounted = self.status.setdefault("uncountedTerminatedPods", {})
        self._fold_counted(uncounted)
        if is_finished(self.job):
            await self.controller._release(p for p in self.pods if _has_tracking(p))
            await self._write_status()
            return
        by_uid = {uid_of(p): p for p in self.pods}
        counted = set(uncounted.get("succeeded") or ()) | set(uncounted.get("failed") or ())
        finishing = self._interim() or self._failed_by_policy(counted)
        new_succeeded: list[Object] = []
        new_failed: list[Object] = []
        ignored: list[Object] = []
        for pod in self.pods:
            if not _has_tracking(pod) or uid_of(pod) in counted:
                continue
            if _phase(pod) == "Succeeded":
                new_succeeded.append(pod)
            elif _counts_failed(pod, self.job) or (finishing and is_deleting(pod)):
                _, counts = failure_policy_match(self.job, pod)
                (new_failed if counts else ignored).append(pod)
        self.controller.note_outcomes(self.key, len(new_succeeded), len(new_failed))
        if ignored:
            await self.controller._release(ignored)
            self.pods = [p for p in self.pods if p not in ignored]
        if new_succeeded or new_failed:
            # The protocol: uids recorded, then finalizers gone, then counted.
            for name, found in (("succeeded", new_succeeded), ("failed", new_failed)):
                if found:
                    uncounted[name] = [*(uncounted.get(name) or ()), *map(uid_of, found)]
            await self._write_status()
            await self.controller._release([*new_succeeded, *new_failed])
            gone = {uid_of(p) for p in (*new_succeeded, *new_failed)}
            self.pods = [p for p in self.pods if uid_of(p) not in gone]
            by_uid = {uid_of(p): p for p in self.pods}
            self._fold_counted(uncounted, by_uid)
        active = [p for p in self.pods if not is_deleting(p) and _phase(p) not in _TERMINAL]
        terminating = [p for p in self.pods if is_deleting(p) and _phase(p) not in _TERMINAL]
        self._start_time()
        if finishing is None:
            finishing = self._decide(active)
        if finishing is not None:
            await self._delete(active)
            active = []
        else:
            active = await self._manage(active, terminating)
        self.status["active"] = len(active)
        self.status["ready"] = sum(1 for p in active if is_ready(p))
        self.status["terminating"] = len(terminating) + len(self._deleted)
        if finishing is not None and not self.status["terminating"]:
            self._finish(finishing)
        await self._write_status()
        self._requeue()

    def _fold_counted(self, uncounted: Object, by_uid: Mapping[str, Object] | None = None) -> None:
        """Count the recorded uids whose pods have let go of the finalizer (or are gone)."""
        if by_uid is None:
            by_uid = {uid_of(p): p for p in self.pods}
        indexes = self.indexes
        for name in ("succeeded", "failed"):
            remaining = []
            for uid in uncounted.get(name) or ():
                pod = by_uid.get(uid)
                if pod is not None and _has_tracking(pod):
                    remaining.append(uid)
                    continue
                self.status[name] = int(self.status.get(name) or 0) + 1
                if name == "succeeded" and self.indexed and indexes.get(uid) is not None:
                    self.completed.add(int(indexes[uid] or 0))
            uncounted[name] = remaining
        for name in ("succeeded", "failed"):
            if not uncounted.get(name):
                uncounted.pop(name, None)
        if self.indexed:
            self.status["completedIndexes"] = intervals(self.completed)
            self.status["succeeded"] = len(self.completed)

    def _interim(self) -> tuple[str, str, str] | None:
        """The terminal outcome already decided (an interim condition holds)."""
        for interim, final in (("SuccessCriteriaMet", "Complete"), ("FailureTarget", "Failed")):
            condition = find_condition(self.job, interim)
            if condition is not None and condition.get("status") == "True":
                return final, str(condition.get("reason", "")), str(condition.get("message", ""))
        return None

    def _failed_by_policy(self, counted: set[str]) -> tuple[str, str, str] | None:
        """A ``FailJob`` rule matched a failed pod: the interim condition says so."""
        for pod in self.pods:
            if not _has_tracking(pod) or uid_of(pod) in counted:
                continue
            if not _counts_failed(pod, self.job):
                continue
            message, _ = failure_policy_match(self.job, pod)
            if message is not None:
                outcome = ("Failed", POD_FAILURE_POLICY, message)
                set_condition(self.status, "FailureTarget", "True", *outcome[1:], self.stamp)
                return outcome
        return None

    def _start_time(self) -> None:
        if self.spec.get("suspend"):
            return
        if not self.status.get("startTime"):
            self.status["startTime"] = self.stamp

    def _succeeded(self) -> int:
        return int(self.status.get("succeeded") or 0)

    def _decide(self, active: list[Object]) -> tuple[str, str, str] | None:
        """Whether the Job has now succeeded or failed; writes the interim condition."""
        completions = self.spec.get("completions")
        uncounted = self.status.get("uncountedTerminatedPods") or {}
        if uncounted.get("succeeded") or uncounted.get("failed"):
            return None  # decided once everything is counted
        if completions is None:
            done = self._succeeded() > 0 and not active
        else:
            done = self._succeeded() >= int(completions)
        outcome: tuple[str, str, str] | None = None
        if done:
            outcome = ("Complete", *COMPLETIONS_REACHED)
            interim = "SuccessCriteriaMet"
        elif int(self.status.get("failed") or 0) > int(
            self.spec.get("backoffLimit") or 0
        ) or restarts_exceed_backoff(self.job, self.pods):
            outcome = ("Failed", *BACKOFF_LIMIT_EXCEEDED)
            interim = "FailureTarget"
        elif self._past_deadline():
            outcome = ("Failed", *DEADLINE_EXCEEDED)
            interim = "FailureTarget"
        if outcome is not None:
            set_condition(self.status, interim, "True", outcome[1], outcome[2], self.stamp)
        return outcome

    def _deadline(self) -> float | None:
        seconds = self.spec.get("activeDeadlineSeconds")
        started = parse_time(self.status.get("startTime"))
        if seconds is None or started is None or self.spec.get("suspend"):
            return None
        return started + int(seconds)

    def _past_deadline(self) -> bool:
        deadline = self._deadline()
        return deadline is not None and self.now >= deadline

    def _finish(self, outcome: tuple[str, str, str]) -> None:
        kind, reason, message = outcome
        if set_condition(self.status, kind, "True", reason, message, self.stamp):
            if kind == "Complete":
                self.status["completionTime"] = self.stamp
                self.controller.recorder.emit(self.job, NORMAL, "Completed", "Job completed")
            else:
                self.controller.recorder.emit(self.job, WARNING, reason, message)

    async def _manage(self, active: list[Object], terminating: list[Object]) -> list[Object]:
        """
        Suspend, resume, or make the active pods what they should be; the active
        pods left.  With ``podReplacementPolicy: Failed`` a terminating pod is
        replaced only once it is gone.
        """
        if self.spec.get("suspend"):
            await self._delete(active)
            if set_condition(
                self.status, "Suspended", "True", "JobSuspended", "Job suspended", self.stamp
            ):
                self.controller.recorder.emit(self.job, NORMAL, "Suspended", "Job suspended")
            return []
        suspended = find_condition({"status": self.status}, "Suspended")
        if suspended is not None and suspended.get("status") == "True":
            set_condition(
                self.status, "Suspended", "False", "JobResumed", "Job resumed", self.stamp
            )
            self.status["startTime"] = self.stamp  # the deadline counts afresh
            self.controller.recorder.emit(self.job, NORMAL, "Resumed", "Job resumed")
        parallelism = int(self.spec.get("parallelism") or 0)
        completions = self.spec.get("completions")
        waited = terminating if _replaces_only_failed(self.job) else []
        if self.indexed:
            return await self._manage_indexed(active, waited, parallelism, int(completions or 0))
        if completions is None:
            wanted = 0 if self._succeeded() > 0 else parallelism
        else:
            wanted = max(0, min(parallelism, int(completions) - self._succeeded()))
        if len(active) > wanted:
            # The newest go first (kube prefers the least far along).
            ranked = sorted(
                active, key=lambda p: (is_ready(p), metadata(p).get("creationTimestamp", ""))
            )
            excess = ranked[: len(active) - wanted]
            await self._delete(excess)
            return [p for p in active if p not in excess]
        missing = min(wanted - len(waited) - len(active), MAX_PODS_PER_SYNC)
        if missing > 0:
            active = active + await self._create([None] * missing)
        return active

    async def _manage_indexed(
        self, active: list[Object], waited: list[Object], parallelism: int, completions: int
    ) -> list[Object]:
        running: dict[int, Object] = {}
        excess = []
        for pod in active:
            index = completion_index(pod)
            if index is None or index >= completions or index in self.completed or index in running:
                excess.append(pod)
            else:
                running[index] = pod
        await self._delete(excess)
        kept = list(running.values())
        room = max(0, parallelism - len(kept) - len(waited))
        taken = set(running) | {completion_index(p) for p in waited}
        pending = [i for i in range(completions) if i not in self.completed and i not in taken]
        return kept + await self._create(pending[: min(room, MAX_PODS_PER_SYNC)])

    async def _create(self, indexes: Sequence[int | None]) -> list[Object]:
        if not indexes:
            return []
        if (wait := self.controller.backoff_remaining(self.key)) > 0:
            self.controller.queue.add_after(self.key, wait + _SLACK)
            return []
        made = []
        for index in indexes:
            self.controller.expectations.expect(self.key, creations=1)
            try:
                pod = await self.store.create(
                    pods.RESOURCE, namespace_of(self.job), build_pod(self.job, index)
                )
            except BaseException:
                self.controller.expectations.creation_observed(self.key)
                raise
            made.append(pod)
            self.controller.recorder.emit(
                self.job, NORMAL, "SuccessfulCreate", f"Created pod: {name_of(pod)}"
            )
        return made

    async def _delete(self, victims: list[Object]) -> None:
        for pod in victims:
            self.controller.expectations.expect(self.key, deletions=[object_key(pod)])
            try:
                _, gone = await self.store.delete(
                    pods.RESOURCE, namespace_of(pod), name_of(pod), {"uid": uid_of(pod)}
                )
            except StatusError as e:
                self.controller.expectations.deletion_observed(self.key, object_key(pod))
                if e.code not in (404, 409):
                    raise
                continue
            if not gone:
                self._deleted.append(pod)
            self.controller.recorder.emit(
                self.job, NORMAL, "SuccessfulDelete", f"Deleted pod: {name_of(pod)}"
            )

    async def _write_status(self) -> None:
        if self.status == (self.job.get("status") or {}):
            return
        status = copy_json(self.status)

        def replace(job: Object) -> Object:
            job["status"] = status
            return job

        self.job = await self.store.guaranteed_update(
            jobs.RESOURCE, namespace_of(self.job), name_of(self.job), replace, subresource="status"
        )
        self.controller.wrote_status(self.key, self.job)

    def _requeue(self) -> None:
        deadline = self._deadline()
        if deadline is not None and not is_finished(self.job) and self.now < deadline:
            self.controller.queue.add_after(self.key, deadline - self.now + _SLACK)


_TERMINAL = ("Succeeded", "Failed")


class TTLAfterFinishedController(Controller):
    """Deletes finished Jobs ``ttlSecondsAfterFinished`` after they finished."""

    label = "ttl-after-finished controller"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore) -> None:
        self.jobs = informers.for_resource(jobs.RESOURCE)
        super().__init__(store.clock, [self.jobs])
        self.store = store
        self.add_handler(
            self.jobs, each_change(lambda job: self.enqueue(_key(job)), deletions=False)
        )

    async def sync(self, key: str) -> None:
        job = self.jobs.get(key)
        if job is None or is_deleting(job):
            return
        ttl = get_path(job, "spec", "ttlSecondsAfterFinished")
        finished = finish_time(job)
        if ttl is None or finished is None:
            return
        remaining = finished + int(ttl) - self.clock.seconds()
        if remaining > 0:
            self.queue.add_after(key, remaining + _SLACK)
            return
        try:
            await self.store.delete(
                jobs.RESOURCE, namespace_of(job), name_of(job), {"uid": uid_of(job)}, [FOREGROUND]
            )
        except StatusError as e:
            if e.code not in (404, 409):
                raise


def _key(obj: Object) -> str:
    return join_key(namespace_of(obj), name_of(obj))
