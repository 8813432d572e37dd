"""
CronJobs (batch/v1): kube-apiserver's defaults and the Table kubectl prints;
merge rules from the schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from k3stw.apiserver.catalogue.rules import LazyRules
from k3stw.apiserver.defaulting import child, fill, fill_at
from k3stw.apiserver.kinds.jobs import SELECTOR_COLUMN
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
    ),
)
