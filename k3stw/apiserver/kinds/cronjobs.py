"""
CronJobs (batch/v1): kube-apiserver's defaults and the Table kubectl prints;
merge rules from the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from k3stw.apiserver.catalogue.rules import LazyRules
from k3stw.apiserver.defaulting import child, fill, fill_at
from k3stw.apiserver.fielderrors import Cause, invalid, nonnegative_causes, not_supported
from k3stw.apiserver.kinds.jobs import SELECTOR_COLUMN, job_spec_causes
from k3stw.apiserver.kinds.podspec import (
    CONTAINERS_COLUMN,
    IMAGES_COLUMN,
    default_template,
    selector_text,
)
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printed,
    Printer,
    age_cell,
    items,
    mapping,
    mappings,
    name_cell,
    since,
    text,
)
from k3stw.machinery.objects import Object, get_path


def _cells(obj: Printed, now: datetime) -> list[Any]:
    spec, status = mapping(obj.get("spec")), mapping(obj.get("status"))
    job_spec = mapping(get_path(spec, "jobTemplate", "spec"))
    containers = mappings(get_path(job_spec, "template", "spec", "containers"))
    last = status.get("lastScheduleTime")
    return [
        name_cell(obj),
        text(spec.get("schedule")),
        text(spec.get("timeZone")) or "<none>",
        "True" if spec.get("suspend") else "False",
        len(items(status.get("active"))),
        since(last, now) if last else "<none>",
        age_cell(obj, now),
        ",".join(text(c.get("name")) for c in containers),
        ",".join(text(c.get("image")) for c in containers),
        selector_text(job_spec.get("selector")),
    ]


PRINTER = Printer(
    (
        NAME_COLUMN,
        Column("Schedule", description="The schedule in Cron format."),
        Column("Timezone", description="The time zone name for the given schedule."),
        Column("Suspend", type="boolean", description="Whether to suspend subsequent executions."),
        Column(
            "Active", type="integer", description="A list of pointers to currently running jobs."
        ),
        Column(
            "Last Schedule",
            description="Information when was the last time the job was successfully scheduled.",
        ),
        AGE_COLUMN,
        CONTAINERS_COLUMN,
        IMAGES_COLUMN,
        SELECTOR_COLUMN,
    ),
    _cells,
)


def _default(cronjob: Object) -> None:
    spec = child(cronjob, "spec")
    fill(
        spec,
        concurrencyPolicy="Allow",
        suspend=False,
        successfulJobsHistoryLimit=3,
        failedJobsHistoryLimit=1,
    )
    # Only the pod template: kube defaults a Job's spec on the Job, not in a template.
    job_spec = child(child(spec, "jobTemplate"), "spec")
    fill_at(job_spec, "podFailurePolicy.rules[].onPodConditions[]", status="True")
    default_template(job_spec)
    child(cronjob, "status")


#: The descriptors a schedule may be instead of five fields.
DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
#: Each field of a schedule: its bounds and the names it may use.
_FIELDS: tuple[tuple[int, int, dict[str, int]], ...] = (
    (0, 59, {}),
    (0, 23, {}),
    (1, 31, {}),
    (
        1,
        12,
        {
            m: i + 1
            for i, m in enumerate(
                ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
            )
        },
    ),
    (0, 6, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}),
)
CONCURRENCY_POLICIES = ("Allow", "Forbid", "Replace")


class ScheduleError(ValueError):
    """A schedule the cron parser kube-apiserver uses refuses; the message is its."""


def _number(text: str, names: dict[str, int]) -> int:
    if text.lower() in names:
        return names[text.lower()]
    try:
        value = int(text, 10) if text.lstrip("+-").isdigit() else int("x")
    except ValueError:
        raise ScheduleError(
            f'failed to parse int from {text}: strconv.Atoi: parsing "{text}": invalid syntax'
        ) from None
    if value < 0:
        raise ScheduleError(f"negative number ({value}) not allowed: {text}")
    return value


def _check_range(expression: str, low: int, high: int, names: dict[str, int]) -> None:
    parts = expression.split("/")
    bounds = parts[0].split("-")
    if len(bounds) > 2:
        raise ScheduleError(f"too many hyphens: {expression}")
    if bounds[0] in ("*", "?"):
        start, end = low, high
    else:
        start = _number(bounds[0], names)
        end = _number(bounds[1], names) if len(bounds) == 2 else start
    if len(parts) > 2:
        raise ScheduleError(f"too many slashes: {expression}")
    if len(parts) == 2 and _number(parts[1], {}) <= 0:
        raise ScheduleError(f"step of range should be a positive number: {expression}")
    if start < low:
        raise ScheduleError(f"beginning of range ({start}) below minimum ({low}): {expression}")
    if end > high:
        raise ScheduleError(f"end of range ({end}) above maximum ({high}): {expression}")
    if start > end:
        raise ScheduleError(
            f"beginning of range ({start}) beyond end of range ({end}): {expression}"
        )


def check_schedule(schedule: str) -> None:
    """
    Parse a schedule as kube-apiserver's cron parser does (``cron.ParseStandard``):
    five fields, or a descriptor.

    :raises ScheduleError: in that parser's words.
    """
    text = schedule.strip()
    if not text:
        raise ScheduleError("empty spec string")
    if text.startswith("@"):
        if text in DESCRIPTORS or text.startswith("@every "):
            return
        raise ScheduleError(f"unrecognized descriptor: {text}")
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(f"expected exactly 5 fields, found {len(fields)}: [{' '.join(fields)}]")
    for field, (low, high, names) in zip(fields, _FIELDS, strict=True):
        for expression in field.split(","):
            _check_range(expression, low, high, names)


#: What each descriptor stands for, in five fields.
_DESCRIBED = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: How far ahead a schedule is searched (cron's own limit: five years).
_SEARCH_DAYS = 366 * 5


def _field_values(field: str, low: int, high: int, names: dict[str, int]) -> tuple[set[int], bool]:
    """The values a checked field allows, and whether it is a bare star (cron's starBit)."""
    values: set[int] = set()
    star = False
    for expression in field.split(","):
        parts = expression.split("/")
        bounds = parts[0].split("-")
        step = _number(parts[1], {}) if len(parts) == 2 else 1
        if bounds[0] in ("*", "?"):
            start, end = low, high
            star = star or step == 1
        else:
            start = _number(bounds[0], names)
            # "N/step" runs from N to the field's end.
            end = _number(bounds[1], names) if len(bounds) == 2 else (high if step > 1 else start)
        values.update(range(start, end + 1, step))
    return values, star


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: the minutes, hours, days, months and weekdays it fires on."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    #: Either day field a bare star: a day must match both, else either (cron's rule).
    both_days: bool

    @classmethod
    def parse(cls, schedule: str) -> Schedule:
        """
        :raises ScheduleError: for what L{check_schedule} refuses, and ``@every``
            (a constant delay, not served here).
        """
        check_schedule(schedule)
        text = _DESCRIBED.get(schedule.strip(), schedule.strip())
        if text.startswith("@"):
            raise ScheduleError(f"unsupported descriptor: {text}")
        parsed = [
            _field_values(field, low, high, names)
            for field, (low, high, names) in zip(text.split(), _FIELDS, strict=True)
        ]
        (minutes, _), (hours, _), (days, day_star), (months, _), (weekdays, weekday_star) = parsed
        return cls(
            frozenset(minutes),
            frozenset(hours),
            frozenset(days),
            frozenset(months),
            frozenset(weekdays),
            day_star or weekday_star,
        )

    def _day_matches(self, day: date) -> bool:
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        return (in_month and in_week) if self.both_days else (in_month or in_week)

    def next_after(self, when: datetime) -> datetime | None:
        """The first time after C{when} (aware) that the schedule fires, in C{when}'s zone."""
        zone = when.tzinfo
        start = when.replace(second=0, microsecond=0, tzinfo=None) + timedelta(minutes=1)
        for offset in range(_SEARCH_DAYS):
            day = start.date() + timedelta(days=offset)
            if day.month not in self.months or not self._day_matches(day):
                continue
            for hour in sorted(self.hours):
                for minute in sorted(self.minutes):
                    wall = datetime(day.year, day.month, day.day, hour, minute)
                    if wall < start:
                        continue
                    found = wall.replace(tzinfo=zone)
                    if found > when:
                        return found
        return None


def validate_cronjob(cronjob: Object) -> list[Cause]:
    """A CronJob: a name that leaves room for its Jobs', a schedule, a valid Job template."""
    causes: list[Cause] = []
    name = get_path(cronjob, "metadata", "name")
    if isinstance(name, str) and len(name) > 52:
        causes.append(invalid("metadata.name", name, "must be no more than 52 characters"))
    spec = cronjob.get("spec")
    if not isinstance(spec, Mapping):
        return causes
    schedule = spec.get("schedule")
    if isinstance(schedule, str):
        try:
            check_schedule(schedule)
        except ScheduleError as e:
            causes.append(invalid("spec.schedule", schedule, str(e)))
        if "TZ" in schedule:
            detail = "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
            causes.append(invalid("spec.schedule", schedule, detail))
    policy = spec.get("concurrencyPolicy")
    if policy is not None and policy not in CONCURRENCY_POLICIES:
        causes.append(not_supported("spec.concurrencyPolicy", policy, CONCURRENCY_POLICIES))
    for field in (
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ):
        causes += nonnegative_causes(f"spec.{field}", spec.get(field))
    return causes + job_spec_causes(get_path(spec, "jobTemplate", "spec"), "spec.jobTemplate.spec")


RESOURCE = ResourceType(
    "batch",
    "v1",
    "CronJob",
    "cronjobs",
    "cronjob",
    namespaced=True,
    short_names=("cj",),
    categories=("all",),
    subresources=("status",),
    strategy=Strategy(
        printer=PRINTER,
        merge_rules=LazyRules("batch", "v1", "CronJob"),
        counts_generation=True,
        default=_default,
        validate=validate_cronjob,
    ),
)
