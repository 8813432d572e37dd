"""
Namespaces (core/v1): defaults, the finalizer that holds a deleted one, the
Table kubectl prints and the fields a selector may name.
"""

from __future__ import annotations

from k3stw.apiserver.defaulting import child, fill
from k3stw.apiserver.fields import (
    NAME,
    FieldTable,
    field_path,
)
from k3stw.apiserver.objectmeta import dns_label_name
from k3stw.apiserver.patch.rules import (
    METADATA_ONLY_RULES,
    STATUS_CONDITIONS_RULES,
)
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Strategy, finalizers_done
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printer,
    age_cell,
    name_cell,
    text,
)
from k3stw.machinery.objects import Object, get_path

PRINTER = Printer(
    (NAME_COLUMN, Column("Status", description="The status of the namespace"), AGE_COLUMN),
    lambda obj, now: [name_cell(obj), text(get_path(obj, "status", "phase")), age_cell(obj, now)],
)


FIELDS = FieldTable({"metadata.name": NAME, "status.phase": field_path("status", "phase")})

#: The finalizer a namespace holds until its contents are gone.
FINALIZER = "kubernetes"


#: The label kube-apiserver gives every namespace: its name, always.
NAME_LABEL = "kubernetes.io/metadata.name"


def _default(namespace: Object) -> None:
    name = get_path(namespace, "metadata", "name")
    labels = child(child(namespace, "metadata"), "labels")
    if name and labels is not None:
        labels[NAME_LABEL] = name
    fill(child(namespace, "status"), phase="Active")


def _prepare_create(namespace: Object, now: str) -> None:
    """A new namespace holds the finalizer, besides any it was given; once cleared, it stays so."""
    finalizers = namespace.setdefault("spec", {}).setdefault("finalizers", [])
    if FINALIZER not in finalizers:
        finalizers.append(FINALIZER)


def _finished_deleting(namespace: Object) -> bool:
    """A namespace also waits on ``spec.finalizers``, which the namespace controller clears."""
    return finalizers_done(namespace) and not get_path(namespace, "spec", "finalizers")


def _terminate(namespace: Object, now: str) -> Object:
    """A DELETE starts termination: the namespace controller empties it, then it goes."""
    namespace["metadata"].setdefault("deletionTimestamp", now)
    namespace.setdefault("status", {})["phase"] = "Terminating"
    return namespace


RESOURCE = ResourceType(
    "",
    "v1",
    "Namespace",
    "namespaces",
    "namespace",
    namespaced=False,
    short_names=("ns",),
    subresources=("status", "finalize"),
    strategy=Strategy(
        printer=PRINTER,
        fields=FIELDS,
        merge_rules={**METADATA_ONLY_RULES, **STATUS_CONDITIONS_RULES},
        default=_default,
        prepare_create=_prepare_create,
        names=dns_label_name,
        finished_deleting=_finished_deleting,
        terminate=_terminate,
    ),
)
