"""
What the API server knows about one kind beyond its name: how its objects
are defaulted, prepared, validated, merged, printed and selected, and when a
deleted one is gone.  kube-apiserver calls this a kind's strategy; each
kind's module under L{k3stw.apiserver.kinds} declares one, and the generic
routes, verbs and object store ask it.

Because the object store calls these hooks, a controller's write follows the
same rules as a client's over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from k3stw.apiserver.fielderrors import Cause as Cause
from k3stw.apiserver.fields import DEFAULT_FIELD_TABLE, FieldTable
from k3stw.apiserver.objectmeta import NameRule, dns_subdomain_name
from k3stw.apiserver.patch.rules import METADATA_ONLY_RULES, RuleTable
from k3stw.apiserver.tables import DEFAULT_PRINTER, Printer
from k3stw.machinery.objects import Object, metadata


def no_defaults(obj: Object) -> None:
    """A kind with no defaults."""
    return None


def _prepared(obj: Object, now: str) -> None:
    return None


def _prepared_update(new: Object, old: Object) -> None:
    return None


def _valid(obj: Object) -> list[Cause]:
    return []


def _valid_update(new: Object, old: Object) -> list[Cause]:
    return []


def finalizers_done(obj: Object) -> bool:
    """
    A deleted object is gone once no finalizer holds it and its grace period
    is over (kube's ShouldDeleteDuringUpdate: a pod waits for its kubelet).
    """
    meta = metadata(obj)
    return not meta.get("finalizers") and not meta.get("deletionGracePeriodSeconds")


@dataclass(frozen=True)
class Strategy:
    """
    The rules of one kind.

    :ivar printer: its ``kubectl get`` columns (a server-side Table).
    :ivar fields: the fields a ``fieldSelector`` may name.
    :ivar merge_rules: how strategic merge patch and server-side apply merge
        its fields (list merge keys, atomic structs), by dotted field path.
    :ivar strategic_merge: whether strategic merge patch applies (custom
        resources answer 415, as kube-apiserver's do).
    :ivar counts_generation: ``metadata.generation`` counts changes of ``spec``.
    :ivar default: fills the kind's defaults in, in place, on every write.
    :ivar prepare_create: sets what the server owns on a new object, in place,
        given the time (a CRD's status, a finalizer).
    :ivar prepare_update: sets what the server owns on a changed object, in
        place, given the stored one (a DaemonSet's template generation).
    :ivar names: what is wrong with a name of this kind (DNS-1123 subdomains
        unless it says otherwise).
    :ivar validate: what is wrong with an object about to be stored (its
        metadata has been checked already).
    :ivar validate_update: what is wrong with an update, given the new and the
        stored object (an immutable field changed).
    :ivar finished_deleting: whether an object marked for deletion may go now.
    :ivar terminate: for a kind whose deletion is a process (namespaces), what a
        client's DELETE does instead of deleting: mark the object, given the time.
    :ivar grace_period: for a kind that deletes gracefully (pods), its
        CheckGracefulDelete: the grace period of a DELETE of the object, given
        DeleteOptions' ``gracePeriodSeconds`` (None when not given).
    :ivar returns_deleted_object: a DELETE that removes the object at once
        answers with the object, not a ``Status`` (kube-apiserver's
        ``ReturnDeletedObject``: pods, services, service accounts).
    :ivar schema: a custom resource's ``openAPIV3Schema`` (built-in kinds'
        schemas are the catalogue's).
    :ivar unknown_fields: the paths of the fields an object names that its
        kind does not declare (a custom resource's; the catalogue answers for
        built-in kinds).
    """

    printer: Printer = DEFAULT_PRINTER
    fields: FieldTable = DEFAULT_FIELD_TABLE
    merge_rules: RuleTable = field(default_factory=lambda: METADATA_ONLY_RULES)
    strategic_merge: bool = True
    counts_generation: bool = False
    default: Callable[[Object], None] = no_defaults
    prepare_create: Callable[[Object, str], None] = _prepared
    prepare_update: Callable[[Object, Object], None] = _prepared_update
    names: NameRule = dns_subdomain_name
    validate: Callable[[Object], list[Cause]] = _valid
    validate_update: Callable[[Object, Object], list[Cause]] = _valid_update
    finished_deleting: Callable[[Object], bool] = finalizers_done
    terminate: Callable[[Object, str], Object] | None = None
    grace_period: Callable[[Object, int | None], int] | None = None
    returns_deleted_object: bool = False
    schema: Mapping[str, Any] | None = None
    unknown_fields: Callable[[Object], list[str]] | None = None


#: A built-in kind with nothing special about it (Endpoints, Lease, ...).
DEFAULT_STRATEGY = Strategy()
