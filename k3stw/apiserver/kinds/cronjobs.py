"""
CronJobs (batch/v1): kube-apiserver's defaults and the Table kubectl prints;
merge rules from the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
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
