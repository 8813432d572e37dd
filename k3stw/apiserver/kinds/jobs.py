"""
Jobs (batch/v1): kube-apiserver's defaults, the selector and labels it
generates from the Job's uid, and the Table kubectl prints; merge rules from
the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from k3stw.apiserver.catalogue.rules import LazyRules
from k3stw.apiserver.defaulting import child, fill, fill_at
from k3stw.apiserver.fielderrors import IMMUTABLE, Cause, nonnegative_causes, required
from k3stw.apiserver.kinds.podspec import (
    CONTAINERS_COLUMN,
    IMAGES_COLUMN,
    default_template,
    immutable_selector_causes,
    pod_spec_causes,
    selector_text,
    workload_parts,
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
    human_duration,
    integer,
    mappings,
    name_cell,
)
from k3stw.machinery.objects import Object, get_path
from k3stw.machinery.times import parse_datetime

#: The labels kube-apiserver gives a Job's pods, and its selector's key.
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"


def job_status(status: Printed) -> str:
    """The STATUS column: the first terminal or suspending condition that holds, else Running."""
    conditions = mappings(status.get("conditions"))
    holding = {c.get("type") for c in conditions if c.get("status") == "True"}
    for kind in ("Failed", "Complete", "Suspended", "FailureTarget", "SuccessCriteriaMet"):
        if kind in holding:
            return kind
    return "Running"


def _cells(obj: Printed, now: datetime) -> list[Any]:
    spec, status, names, images = workload_parts(obj)
    succeeded = integer(status.get("succeeded"))
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{integer(spec.get('completions'))}"
    else:
        completions = f"{succeeded}/1 of {integer(spec.get('parallelism'))}"
    started = parse_datetime(status.get("startTime"))
    finished = parse_datetime(status.get("completionTime")) or now
    duration = human_duration(finished - started) if started else ""
    return [
        name_cell(obj),
        job_status(status),
        completions,
        duration,
        age_cell(obj, now),
        names,
        images,
        selector_text(spec.get("selector")),
    ]


#: The Selector column of Jobs and CronJobs (shown with -o wide).
SELECTOR_COLUMN = Column(
    "Selector",
    priority=1,
    description="A label query over pods that should match the pod count.",
)

PRINTER = Printer(
    (
        NAME_COLUMN,
        Column("Status", description="Status of the job."),
        Column(
            "Completions",
            description="The desired number of successfully finished pods the job should be "
            "run with.",
        ),
        Column("Duration", description="Time required to complete the job."),
        AGE_COLUMN,
        CONTAINERS_COLUMN,
        IMAGES_COLUMN,
        SELECTOR_COLUMN,
    ),
    _cells,
)


#: A Job's backoffLimit when it has a per-index one (Go's MaxInt32: no limit).
NO_BACKOFF_LIMIT = 2**31 - 1


def default_job_spec(spec: Any) -> None:
    """kube-apiserver's defaults of a JobSpec, in place (a Job's or a CronJob's template's)."""
    if not isinstance(spec, dict):
        return
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    per_index = spec.get("backoffLimitPerIndex") is not None
    fill(
        spec,
        parallelism=1,
        backoffLimit=NO_BACKOFF_LIMIT if per_index else 6,
        completionMode="NonIndexed",
        suspend=False,
        podReplacementPolicy="Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed",
    )
    fill_at(spec, "podFailurePolicy.rules[].onPodConditions[]", status="True")
    default_template(spec)


def _default(job: Object) -> None:
    spec = child(job, "spec")
    default_job_spec(spec)
    # A Job without labels takes its pod template's (kube's SetDefaults_Job).
    labels = get_path(spec, "template", "metadata", "labels")
    metadata = child(job, "metadata")
    if labels and metadata is not None and not metadata.get("labels"):
        metadata["labels"] = dict(labels)
    child(job, "status")


def _prepare_create(job: Object, now: str) -> None:
    """Unless ``manualSelector``, the selector and pod labels come from the Job's uid."""
    spec = job.setdefault("spec", {})
    if spec.get("manualSelector"):
        return
    metadata = job["metadata"]
    uid, name = metadata.get("uid", ""), metadata.get("name", "")
    spec["selector"] = {"matchLabels": {CONTROLLER_UID: uid}}
    template = spec.setdefault("template", {})
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    labels.update({CONTROLLER_UID: uid, JOB_NAME: name, "controller-uid": uid, "job-name": name})


#: The restart policies a Job's pods may have, in kube-apiserver's words.
JOB_RESTART = 'valid values: "OnFailure", "Never"'


def job_spec_causes(spec: Any, path: str) -> list[Cause]:
    """A JobSpec at C{path}: counts not negative, a pod template whose pods end."""
    if not isinstance(spec, Mapping):
        return []
    causes: list[Cause] = []
    for field in ("parallelism", "completions", "activeDeadlineSeconds", "backoffLimit"):
        causes += nonnegative_causes(f"{path}.{field}", spec.get(field))
    template = get_path(spec, "template", "spec")
    causes += pod_spec_causes(template, f"{path}.template.spec")
    if get_path(template, "restartPolicy") not in ("OnFailure", "Never"):
        causes.append(required(f"{path}.template.spec.restartPolicy", JOB_RESTART))
    return causes


def validate_job(job: Object) -> list[Cause]:
    """A Job's spec (its selector is generated, or matches the template if manual)."""
    return job_spec_causes(job.get("spec"), "spec")


def validate_job_update(new: Object, old: Object) -> list[Cause]:
    """A Job's selector and pod template never change (a suspended Job's scheduling aside)."""
    causes = immutable_selector_causes(new, old)
    before, after = get_path(old, "spec", "template"), get_path(new, "spec", "template")
    if before != after and not _scheduling_only(before, after, get_path(new, "spec", "suspend")):
        causes.append(("spec.template", f"Invalid value: core.PodTemplateSpec{{...}}: {IMMUTABLE}"))
    return causes


def _scheduling_only(before: Any, after: Any, suspended: Any) -> bool:
    """What a suspended Job's template may change: its scheduling and metadata."""
    if not suspended or not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return False
    mutable = ("nodeSelector", "tolerations", "affinity", "schedulingGates")

    def fixed(template: Mapping[str, Any]) -> Any:
        spec = template.get("spec")
        return (
            {k: v for k, v in spec.items() if k not in mutable}
            if isinstance(spec, Mapping)
            else spec
        )

    return bool(fixed(before) == fixed(after))


RESOURCE = ResourceType(
    "batch",
    "v1",
    "Job",
    "jobs",
    "job",
    namespaced=True,
    categories=("all",),
    subresources=("status",),
    strategy=Strategy(
        printer=PRINTER,
        merge_rules=LazyRules("batch", "v1", "Job"),
        counts_generation=True,
        default=_default,
        prepare_create=_prepare_create,
        validate=validate_job,
        validate_update=validate_job_update,
    ),
)
