"""
kube-controller-manager's CronJob controller (v2, 1.32, in part): a Job for
each schedule time, named ``<cronjob>-<minutes since the epoch>`` so that a
second try at the same time finds it made; the concurrency policy; the
starting deadline; the history limits; and the status (``active``,
``lastScheduleTime``, ``lastSuccessfulTime``).

A CronJob is looked at when it or one of its Jobs changes, and again at its
next schedule time through the work queue's timer: nothing polls.

Not done: ``@every`` schedules (refused by the controller with an event).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import cronjobs, jobs
from k3stw.apiserver.kinds.cronjobs import Schedule, ScheduleError
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.controllers.events import NORMAL, WARNING, EventRecorder
from k3stw.controllers.jobs import by_controller, controller_of, is_finished
from k3stw.controllers.ownership import new_controller_ref
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change
from k3stw.machinery.objects import (
    Object,
    copy_json,
    get_path,
    is_deleting,
    join_key,
    metadata,
    name_of,
    namespace_of,
    uid_of,
)
from k3stw.machinery.times import parse_time, rfc3339

SCHEDULED_TIMESTAMP = "batch.kubernetes.io/cronjob-scheduled-timestamp"
#: More missed start times than this is worth a warning (kube's tooManyMissed).
TOO_MANY_MISSED = 100
#: The look at a schedule time comes this long after it (kube's nextScheduleDelta).
_SLACK = 0.1


def job_name(cronjob: Mapping[str, Any], scheduled: datetime) -> str:
    """``<cronjob>-<minutes since the epoch>``: one name per schedule time."""
    return f"{name_of(cronjob)}-{int(scheduled.timestamp()) // 60}"


def zone_of(cronjob: Mapping[str, Any]) -> tzinfo:
    """The CronJob's ``timeZone`` (UTC, the controller's own, without one)."""
    name = get_path(cronjob, "spec", "timeZone")
    return ZoneInfo(name) if name else UTC


def rfc3339_in_zone(moment: datetime) -> str:
    """Go's RFC3339 of a zoned time: ``Z`` for UTC, else the offset."""
    text = moment.replace(microsecond=0).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def most_recent(
    schedule: Schedule, earliest: datetime, now: datetime
) -> tuple[datetime | None, int]:
    """
    The last schedule time in (C{earliest}, C{now}], and how many there were
    (counted as kube counts them: by the gap between the first two).
    """
    first = schedule.next_after(earliest)
    if first is None or first > now:
        return None, 0
    second = schedule.next_after(first)
    if second is None or second > now:
        return first, 1
    gap = max(1, round((second - first).total_seconds()))
    missed = int((now - first).total_seconds()) // gap + 1
    recent = datetime.fromtimestamp(first.timestamp() + (missed - 1) * gap, now.tzinfo)
    # An uneven schedule: the arithmetic may fall short (or between times); walk on.
    latest = schedule.next_after(recent - timedelta(minutes=1))
    while latest is not None and latest <= now:
        recent = latest
        latest = schedule.next_after(latest)
    return recent, missed


class CronJobController(Controller):
    """Starts each CronJob's Jobs at its schedule times."""

    label = "cronjob controller"
    expected = TRANSIENT

    def __init__(self, informers: ServerInformers, store: ObjectStore, host: str = "") -> None:
        self.cronjobs = informers.for_resource(cronjobs.RESOURCE)
        self.jobs = informers.for_resource(jobs.RESOURCE)
        self.jobs.add_index(_CRONJOB, _by_cronjob)
        super().__init__(store.clock, [self.cronjobs, self.jobs])
        self.store = store
        self.recorder = EventRecorder(store, store.clock, "cronjob-controller", host)
        self.add_handler(self.cronjobs, self.enqueue_handler())
        self.add_handler(self.jobs, each_change(self._job_changed))

    def _job_changed(self, job: Object) -> None:
        for key in _by_cronjob(job):
            self.enqueue(key)

    async def sync(self, key: str) -> None:
        cronjob = self.cronjobs.get(key)
        if cronjob is None:
            return
        owned = [
            job
            for job in self.jobs.cache.by_index(_CRONJOB, key)
            if get_path(controller_of(job, "CronJob"), "uid") == uid_of(cronjob)
        ]
        status = copy_json(cronjob.get("status") or {})
        self._reconcile_active(cronjob, status, owned)
        if not is_deleting(cronjob):
            await self._schedule(cronjob, status, owned)
            await self._clean_history(cronjob, owned)
        if status != (cronjob.get("status") or {}):
            await self._write_status(cronjob, status)

    def _reconcile_active(self, cronjob: Object, status: Object, owned: list[Object]) -> None:
        """Finished or vanished Jobs leave ``active``; running ones of ours join it."""
        by_uid = {uid_of(job): job for job in owned}
        active: list[Object] = []
        for reference in status.get("active") or ():
            job = by_uid.get(str(reference.get("uid", "")))
            finished = is_finished(job) if job is not None else None
            if job is None:
                continue
            if finished:
                self.recorder.emit(
                    cronjob,
                    NORMAL,
                    "SawCompletedJob",
                    f"Saw completed job: {name_of(job)}, condition: {finished}",
                )
                continue
            active.append(reference)
        listed = {str(reference.get("uid", "")) for reference in active}
        for job in owned:
            if not is_finished(job) and not is_deleting(job) and uid_of(job) not in listed:
                active.append(_reference(job))
        for job in owned:
            if is_finished(job) == "Complete":
                done = get_path(job, "status", "completionTime")
                last = status.get("lastSuccessfulTime")
                if done and (parse_time(done) or 0) > (parse_time(last) or 0):
                    status["lastSuccessfulTime"] = done
        if active:
            status["active"] = active
        else:
            status.pop("active", None)

    async def _schedule(self, cronjob: Object, status: Object, owned: list[Object]) -> None:
        """Start the Job due now, if any; look again at the next schedule time."""
        spec = cronjob.get("spec") or {}
        key = join_key(namespace_of(cronjob), name_of(cronjob))
        try:
            zone = zone_of(cronjob)
        except (ZoneInfoNotFoundError, ValueError):
            self.recorder.emit(
                cronjob, WARNING, "UnknownTimeZone", f"invalid timeZone: {spec.get('timeZone')!r}"
            )
            return
        try:
            schedule = Schedule.parse(str(spec.get("schedule", "")))
        except ScheduleError as e:
            self.recorder.emit(
                cronjob, WARNING, "UnparseableSchedule", f"unparseable schedule: {e}"
            )
            return
        if spec.get("suspend"):
            return
        now = datetime.fromtimestamp(self.clock.seconds(), zone)
        earliest = parse_time(status.get("lastScheduleTime")) or parse_time(
            metadata(cronjob).get("creationTimestamp")
        )
        start = datetime.fromtimestamp(earliest or self.clock.seconds(), zone)
        deadline = spec.get("startingDeadlineSeconds")
        if deadline is not None:
            start = max(start, now - timedelta(seconds=int(deadline)))
        scheduled, missed = most_recent(schedule, start, now)
        upcoming = schedule.next_after(now)
        if upcoming is not None:
            self.queue.add_after(key, (upcoming - now).total_seconds() + _SLACK)
        if scheduled is None:
            return
        if missed > TOO_MANY_MISSED:
            self.recorder.emit(
                cronjob,
                WARNING,
                "TooManyMissedTimes",
                f"too many missed start times: {missed}. Set or decrease "
                ".spec.startingDeadlineSeconds or check clock skew",
            )
        if deadline is not None and scheduled + timedelta(seconds=int(deadline)) < now:
            stamp = format_datetime(scheduled.astimezone(UTC))
            self.recorder.emit(
                cronjob, WARNING, "MissSchedule", f"Missed scheduled time to start a job: {stamp}"
            )
            return
        name = job_name(cronjob, scheduled)
        if any(name_of(job) == name for job in owned):
            return  # made already
        active = status.get("active") or []
        policy = spec.get("concurrencyPolicy")
        if policy == "Forbid" and active:
            self.recorder.emit(
                cronjob,
                NORMAL,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy "
                "is Forbid",
            )
            return
        if policy == "Replace":
            for reference in active:
                await self._delete(cronjob, str(reference.get("name", "")))
            status.pop("active", None)
        job = await self._create(cronjob, name, scheduled)
        if job is not None:
            status["active"] = [*(status.get("active") or ()), _reference(job)]
        status["lastScheduleTime"] = rfc3339(scheduled.timestamp())

    async def _create(self, cronjob: Object, name: str, scheduled: datetime) -> Object | None:
        template = get_path(cronjob, "spec", "jobTemplate") or {}
        meta = template.get("metadata") or {}
        annotations = {**(meta.get("annotations") or {})}
        annotations[SCHEDULED_TIMESTAMP] = rfc3339_in_zone(scheduled)
        job: Object = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "labels": dict(meta.get("labels") or {}),
                "annotations": annotations,
                "ownerReferences": [new_controller_ref(cronjob)],
            },
            "spec": copy_json(template.get("spec") or {}),
        }
        try:
            made = await self.store.create(jobs.RESOURCE, namespace_of(cronjob), job)
        except StatusError as e:
            if e.code == 409:
                return None  # made already: this schedule time is taken care of
            self.recorder.emit(cronjob, WARNING, "FailedCreate", f"Error creating job: {e.message}")
            raise
        self.recorder.emit(cronjob, NORMAL, "SuccessfulCreate", f"Created job {name}")
        return made

    async def _delete(self, cronjob: Object, name: str) -> None:
        """Delete a Job, its pods after it (background propagation)."""
        try:
            await self.store.delete(jobs.RESOURCE, namespace_of(cronjob), name)
        except StatusError as e:
            if e.code != 404:
                raise
            return
        self.recorder.emit(cronjob, NORMAL, "SuccessfulDelete", f"Deleted job {name}")

    async def _clean_history(self, cronjob: Object, owned: list[Object]) -> None:
        """Finished Jobs beyond the history limits go, the earliest started first."""
        spec = cronjob.get("spec") or {}
        for outcome, field in (
            ("Complete", "successfulJobsHistoryLimit"),
            ("Failed", "failedJobsHistoryLimit"),
        ):
            limit = spec.get(field)
            if limit is None:
                continue
            finished = [j for j in owned if is_finished(j) == outcome and not is_deleting(j)]
            finished.sort(key=_started)
            for job in finished[: max(0, len(finished) - int(limit))]:
                await self._delete(cronjob, name_of(job))

    async def _write_status(self, cronjob: Object, status: Object) -> None:
        def replace(current: Object) -> Object:
            current["status"] = status
            return current

        try:
            await self.store.guaranteed_update(
                cronjobs.RESOURCE,
                namespace_of(cronjob),
                name_of(cronjob),
                replace,
                subresource="status",
            )
        except StatusError as e:
            if e.code != 404:
                raise


def _started(job: Object) -> tuple[int, float, str]:
    """Jobs without a start time sort last; names break ties."""
    started = parse_time(get_path(job, "status", "startTime"))
    return (started is None, started or 0.0, name_of(job))


def _reference(job: Object) -> Object:
    meta = metadata(job)
    return {
        "kind": "Job",
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "apiVersion": "batch/v1",
        "resourceVersion": meta.get("resourceVersion", ""),
    }


#: The Jobs index by the ``namespace/name`` of the CronJob that controls them.
_CRONJOB = "cronjob"


_by_cronjob = by_controller("CronJob")
