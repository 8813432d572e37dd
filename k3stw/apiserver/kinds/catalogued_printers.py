"""
The ``kubectl get`` columns of the catalogue's kinds that have no module of
their own, as kube-apiserver 1.32 prints them (``pkg/printers/internalversion``,
and kube-aggregator's table for APIServices): one printer per kind, by group
and kind (L{PRINTERS}), built from small cell functions.  A kind absent here
prints kube-apiserver's default Name and Created At (LimitRange, as in kube).

Column descriptions are the API's swagger documentation of the field each
column shows, taken from the type kube's printer names (some still a beta one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from k3stw.apiserver.kinds.podspec import CONTAINERS_COLUMN, IMAGES_COLUMN, workload_parts
from k3stw.apiserver.kinds.replicasets import replica_cells
from k3stw.apiserver.kinds.services import load_balancer_addresses
from k3stw.apiserver.tables import (
    AGE_COLUMN,
    NAME_COLUMN,
    Column,
    Printed,
    Printer,
    age_cell,
    human_duration,
    integer,
    items,
    mapping,
    mappings,
    name_cell,
    text,
)
from k3stw.machinery.labels import format_label_selector, format_labels
from k3stw.machinery.objects import get_path
from k3stw.machinery.quantity import QuantityError, parse_quantity

Cell = Callable[[Printed, datetime], Any]

# Reading fields


def _quantity(value: Any) -> str:
    """A quantity as ``Quantity.String`` prints it: ``<nil>`` for none, ``0`` for zero."""
    if value is None:
        return "<nil>"
    try:
        return str(parse_quantity(value))
    except QuantityError:
        return text(value)


def _amount(amounts: Any, name: str = "storage") -> str:
    """One quantity of a resource map; a missing one is Go's zero ``Quantity``, ``0``."""
    amount = mapping(amounts).get(name)
    return "0" if amount is None else _quantity(amount)


def _int_or_string(value: Any) -> str:
    return text(value) if isinstance(value, str) else str(integer(value))


def _boolean(value: Any, unset: bool = False) -> bool:
    return value if isinstance(value, bool) else unset


def _or(value: Any, fallback: str) -> str:
    """A string field, C{fallback} when unset (a nil pointer, in kube)."""
    return text(value) if isinstance(value, str) else fallback


def _annotations(obj: Printed) -> Mapping[str, Any]:
    return mapping(get_path(obj, "metadata", "annotations"))


def _terminating(obj: Printed, phase: Any) -> str:
    deleting = get_path(obj, "metadata", "deletionTimestamp") is not None
    return "Terminating" if deleting else text(phase)


# Storage

_ACCESS_MODES = (
    ("ReadWriteOnce", "RWO"),
    ("ReadOnlyMany", "ROX"),
    ("ReadWriteMany", "RWX"),
    ("ReadWriteOncePod", "RWOP"),
)
_BETA_STORAGE_CLASS = "volume.beta.kubernetes.io/storage-class"
_DEFAULT_CLASS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)


def is_default_class(storage_class: Mapping[str, Any]) -> bool:
    """Whether a StorageClass is marked the default one (``(default)`` in its table)."""
    annotations = get_path(storage_class, "metadata", "annotations") or {}
    return any(annotations.get(key) == "true" for key in _DEFAULT_CLASS)


def _access_modes(modes: Any) -> str:
    given = set(m for m in items(modes) if isinstance(m, str))
    return ",".join(short for mode, short in _ACCESS_MODES if mode in given)


def _storage_class(obj: Printed) -> str:
    # The beta annotation, when present, wins over spec.storageClassName.
    annotations = _annotations(obj)
    if _BETA_STORAGE_CLASS in annotations:
        return text(annotations[_BETA_STORAGE_CLASS])
    return text(get_path(obj, "spec", "storageClassName"))


def _pv_cells(pv: Printed, now: datetime) -> list[Any]:
    spec, status = mapping(pv.get("spec")), mapping(pv.get("status"))
    claim = spec.get("claimRef")
    claimed = ""
    if isinstance(claim, Mapping):
        claimed = f"{text(claim.get('namespace'))}/{text(claim.get('name'))}"
    return [
        name_cell(pv),
        _amount(spec.get("capacity")),
        _access_modes(spec.get("accessModes")),
        text(spec.get("persistentVolumeReclaimPolicy")),
        _terminating(pv, status.get("phase")),
        claimed,
        _storage_class(pv),
        _or(spec.get("volumeAttributesClassName"), "<unset>"),
        text(status.get("reason")),
        age_cell(pv, now),
        _or(spec.get("volumeMode"), "<unset>"),
    ]


def _pvc_cells(pvc: Printed, now: datetime) -> list[Any]:
    spec, status = mapping(pvc.get("spec")), mapping(pvc.get("status"))
    volume = text(spec.get("volumeName"))
    # Capacity and access modes are the bound volume's: blank until bound.
    capacity = _amount(status.get("capacity")) if volume else ""
    modes = _access_modes(status.get("accessModes")) if volume else ""
    return [
        name_cell(pvc),
        _terminating(pvc, status.get("phase")),
        volume,
        capacity,
        modes,
        _storage_class(pvc),
        _or(spec.get("volumeAttributesClassName"), "<unset>"),
        age_cell(pvc, now),
        _or(spec.get("volumeMode"), "<unset>"),
    ]


def _storage_class_cells(sc: Printed, now: datetime) -> list[Any]:
    return [
        name_cell(sc) + (" (default)" if is_default_class(sc) else ""),
        text(sc.get("provisioner")),
        _or(sc.get("reclaimPolicy"), "Delete"),
        _or(sc.get("volumeBindingMode"), "Immediate"),
        _boolean(sc.get("allowVolumeExpansion")),
        age_cell(sc, now),
    ]


def _csi_driver_cells(driver: Printed, now: datetime) -> list[Any]:
    spec = mapping(driver.get("spec"))
    requests = mappings(spec.get("tokenRequests"))
    modes = ",".join(text(mode) for mode in items(spec.get("volumeLifecycleModes")))
    return [
        name_cell(driver),
        _boolean(spec.get("attachRequired"), unset=True),
        _boolean(spec.get("podInfoOnMount")),
        _boolean(spec.get("storageCapacity")),
        # An empty list is stored as none, as protobuf does.
        ",".join(text(r.get("audience")) for r in requests) if requests else "<unset>",
        _boolean(spec.get("requiresRepublish")),
        modes or "<none>",
        age_cell(driver, now),
    ]


def _volume_attachment_cells(attachment: Printed, now: datetime) -> list[Any]:
    spec = mapping(attachment.get("spec"))
    return [
        name_cell(attachment),
        text(spec.get("attacher")),
        text(get_path(spec, "source", "persistentVolumeName")),
        text(spec.get("nodeName")),
        _boolean(get_path(attachment, "status", "attached")),
        age_cell(attachment, now),
    ]


def _capacity_cells(capacity: Printed, now: datetime) -> list[Any]:
    amount = capacity.get("capacity")
    return [
        name_cell(capacity),
        text(capacity.get("storageClassName")),
        "<unset>" if amount is None else _quantity(amount),
    ]


# Networking


def _ingress_hosts(rules: list[Mapping[str, Any]]) -> str:
    hosts: list[str] = []
    more = False
    for rule in rules:
        if len(hosts) == 3:
            more = True
            break
        if text(rule.get("host")):
            hosts.append(text(rule.get("host")))
    if not hosts:
        return "*"
    # kube counts the rules beyond the third, hosts or not.
    return ",".join(hosts) + (f" + {len(rules) - 3} more..." if more else "")


def _ingress_cells(ingress: Printed, now: datetime) -> list[Any]:
    spec = mapping(ingress.get("spec"))
    return [
        name_cell(ingress),
        _or(spec.get("ingressClassName"), "<none>"),
        _ingress_hosts(mappings(spec.get("rules"))),
        load_balancer_addresses(ingress),
        "80, 443" if items(spec.get("tls")) else "80",
        age_cell(ingress, now),
    ]


def _ingress_class_cells(ingress_class: Printed, now: datetime) -> list[Any]:
    spec = mapping(ingress_class.get("spec"))
    parameters = spec.get("parameters")
    shown = "<none>"
    if isinstance(parameters, Mapping):
        group = parameters.get("apiGroup")
        shown = text(parameters.get("kind")) + (f".{group}" if isinstance(group, str) else "")
        shown += "/" + text(parameters.get("name"))
    return [
        name_cell(ingress_class),
        text(spec.get("controller")),
        shown,
        age_cell(ingress_class, now),
    ]


def _selector(value: Any) -> str:
    return format_label_selector(value if isinstance(value, Mapping) else None)


# Workloads and policy


def _pod_template_cells(template: Printed, now: datetime) -> list[Any]:
    # A PodTemplate holds its template where a workload's spec does.
    _, _, names, images = workload_parts({"spec": template})
    labels = mapping(get_path(template, "template", "metadata", "labels"))
    return [name_cell(template), names, images, format_labels(labels)]


def _controller_revision_cells(revision: Printed, now: datetime) -> list[Any]:
    owners = mappings(get_path(revision, "metadata", "ownerReferences"))
    owner = next((o for o in owners if o.get("controller") is True), None)
    controller = "<none>"
    if owner is not None:
        api_version, kind = text(owner.get("apiVersion")), text(owner.get("kind"))
        group = api_version.split("/", 1)[0] if "/" in api_version else ""
        qualified = f"{kind}.{group}" if group else kind
        name = text(owner.get("name"))
        controller = f"{qualified.lower()}/{name}" if qualified else name
    return [
        name_cell(revision),
        controller,
        integer(revision.get("revision")),
        age_cell(revision, now),
    ]


def _pdb_cells(pdb: Printed, now: datetime) -> list[Any]:
    spec = mapping(pdb.get("spec"))
    minimum, maximum = spec.get("minAvailable"), spec.get("maxUnavailable")
    return [
        name_cell(pdb),
        "N/A" if minimum is None else _int_or_string(minimum),
        "N/A" if maximum is None else _int_or_string(maximum),
        integer(get_path(pdb, "status", "disruptionsAllowed")),
        age_cell(pdb, now),
    ]


def _quota_cells(quota: Printed, now: datetime) -> list[Any]:
    hard = mapping(get_path(quota, "status", "hard"))
    used = mapping(get_path(quota, "status", "used"))
    requests: list[str] = []
    limits: list[str] = []
    for resource in sorted(hard):
        shown = f"{resource}: {_amount(used, resource)}/{_amount(hard, resource)}"
        (limits if resource.startswith("limits.") else requests).append(shown)
    return [name_cell(quota), ", ".join(requests), ", ".join(limits), age_cell(quota, now)]


def _priority_class_cells(pc: Printed, now: datetime) -> list[Any]:
    return [
        name_cell(pc),
        integer(pc.get("value")),
        _boolean(pc.get("globalDefault")),
        age_cell(pc, now),
        text(pc.get("preemptionPolicy")),
    ]


# HorizontalPodAutoscalers (autoscaling/v2)


def _percent(value: Any) -> str | None:
    return f"{integer(value)}%" if value is not None else None


def _hpa_metric(spec: Mapping[str, Any], status: Mapping[str, Any] | None) -> str:
    """One metric's ``current/target``, as ``formatHPAMetrics`` writes it."""
    kind = spec.get("type")
    field = {
        "External": "external",
        "Pods": "pods",
        "Object": "object",
        "Resource": "resource",
        "ContainerResource": "containerResource",
    }.get(text(kind))
    if field is None:
        return "<unknown type>"
    source = mapping(spec.get(field))
    target = mapping(source.get("target"))
    # The status at the same index, if it has this source (kube does not match types).
    reported = status.get(field) if status is not None else None
    current = mapping(mapping(reported).get("current"))
    if kind == "Pods":
        shown = "<unknown>" if reported is None else _quantity(current.get("averageValue"))
        return f"{shown}/{_quantity(target.get('averageValue'))}"
    if kind in ("External", "Object"):
        if target.get("averageValue") is not None:
            value = current.get("averageValue") if reported is not None else None
            shown = "<unknown>" if value is None else _quantity(value)
            return f"{shown}/{_quantity(target['averageValue'])} (avg)"
        shown = "<unknown>" if reported is None else _quantity(current.get("value"))
        return f"{shown}/{_quantity(target.get('value'))}"
    name = text(source.get("name"))
    if target.get("averageValue") is not None:
        shown = "<unknown>" if reported is None else _quantity(current.get("averageValue"))
        return f"{name}: {shown}/{_quantity(target['averageValue'])}"
    utilization = _percent(current.get("averageUtilization")) if reported is not None else None
    wanted = _percent(target.get("averageUtilization")) or "<auto>"
    return f"{name}: {utilization or '<unknown>'}/{wanted}"


def _hpa_targets(hpa: Printed) -> str:
    specs = mappings(get_path(hpa, "spec", "metrics"))
    if not specs:
        return "<none>"
    statuses = items(get_path(hpa, "status", "currentMetrics"))
    shown = []
    for index, spec in enumerate(specs):
        status = statuses[index] if index < len(statuses) else None
        shown.append(_hpa_metric(spec, status if isinstance(status, Mapping) else None))
    if len(shown) > 2:
        return ", ".join(shown[:2]) + f" + {len(shown) - 2} more..."
    return ", ".join(shown)


def _hpa_cells(hpa: Printed, now: datetime) -> list[Any]:
    spec = mapping(hpa.get("spec"))
    target = mapping(spec.get("scaleTargetRef"))
    minimum = spec.get("minReplicas")
    return [
        name_cell(hpa),
        f"{text(target.get('kind'))}/{text(target.get('name'))}",
        _hpa_targets(hpa),
        "<unset>" if minimum is None else str(integer(minimum)),
        integer(spec.get("maxReplicas")),
        integer(get_path(hpa, "status", "currentReplicas")),
        age_cell(hpa, now),
    ]


# Certificates, admission, API services and flow control


def _csr_condition(csr: Printed) -> str:
    kinds = {text(c.get("type")) for c in mappings(get_path(csr, "status", "conditions"))}
    if "Denied" in kinds:
        shown = "Denied"
    elif "Approved" in kinds:
        shown = "Approved"
    else:
        shown = "Pending"
    if "Failed" in kinds:
        shown += ",Failed"
    if get_path(csr, "status", "certificate"):
        shown += ",Issued"
    return shown


def _csr_cells(csr: Printed, now: datetime) -> list[Any]:
    spec = mapping(csr.get("spec"))
    seconds = spec.get("expirationSeconds")
    return [
        name_cell(csr),
        age_cell(csr, now),
        text(spec.get("signerName")) or "<none>",
        text(spec.get("username")),
        "<none>" if seconds is None else human_duration(timedelta(seconds=integer(seconds))),
        _csr_condition(csr),
    ]


def _counted(*path: str) -> Cell:
    """A row's count of the list at C{path}."""
    return lambda obj, now: len(items(get_path(obj, *path)))


def _param_kind(policy: Printed) -> str:
    kind = get_path(policy, "spec", "paramKind")
    if not isinstance(kind, Mapping):
        return "<unset>"
    return f"{text(kind.get('apiVersion'))}/{text(kind.get('kind'))}"


def _go_selector(selector: Mapping[str, Any]) -> str:
    """A ``*metav1.LabelSelector`` as its generated ``String`` method writes it."""
    labels = mapping(selector.get("matchLabels"))
    shown_labels = "".join(f"{key}: {labels[key]}," for key in sorted(labels))
    expressions = "".join(
        f"LabelSelectorRequirement{{Key:{text(e.get('key'))},Operator:{text(e.get('operator'))},"
        f"Values:[{' '.join(text(v) for v in items(e.get('values')))}],}},"
        for e in mappings(selector.get("matchExpressions"))
    )
    return (
        f"&LabelSelector{{MatchLabels:map[string]string{{{shown_labels}}},"
        f"MatchExpressions:[]LabelSelectorRequirement{{{expressions}}},}}"
    )


def _param_ref(binding: Printed) -> str:
    ref = get_path(binding, "spec", "paramRef")
    if not isinstance(ref, Mapping):
        return "<unset>"
    name, namespace = text(ref.get("name")), text(ref.get("namespace"))
    if name:
        # A cluster-scoped parameter cannot be told apart here: no namespace is "*".
        return f"{namespace or '*'}/{name}"
    selector = ref.get("selector")
    return _go_selector(selector) if isinstance(selector, Mapping) else "<unset>"


def _api_service_cells(service: Printed, now: datetime) -> list[Any]:
    reference = get_path(service, "spec", "service")
    hosted = "Local"
    if isinstance(reference, Mapping):
        hosted = f"{text(reference.get('namespace'))}/{text(reference.get('name'))}"
    conditions = mappings(get_path(service, "status", "conditions"))
    available = next((c for c in conditions if c.get("type") == "Available"), None)
    shown = "Unknown"
    if available is not None:
        status, reason = text(available.get("status")), text(available.get("reason"))
        shown = f"{status} ({reason})" if status != "True" and reason else status
    return [name_cell(service), hosted, shown, age_cell(service, now)]


def _flow_schema_cells(schema: Printed, now: datetime) -> list[Any]:
    spec = mapping(schema.get("spec"))
    method = spec.get("distinguisherMethod")
    conditions = mappings(get_path(schema, "status", "conditions"))
    dangling = next((c for c in conditions if c.get("type") == "Dangling"), None)
    return [
        name_cell(schema),
        text(get_path(spec, "priorityLevelConfiguration", "name")),
        integer(spec.get("matchingPrecedence")),
        text(mapping(method).get("type")) if isinstance(method, Mapping) else "<none>",
        age_cell(schema, now),
        "?" if dangling is None else text(dangling.get("status")),
    ]


def _priority_level_cells(level: Printed, now: datetime) -> list[Any]:
    spec = mapping(level.get("spec"))
    limited = spec.get("limited")
    shares: Any = "<none>"
    queuing: list[Any] = ["<none>", "<none>", "<none>"]
    if isinstance(limited, Mapping):
        shares = integer(limited.get("nominalConcurrencyShares"))
        queues = get_path(limited, "limitResponse", "queuing")
        if isinstance(queues, Mapping):
            queuing = [integer(queues.get(k)) for k in ("queues", "handSize", "queueLengthLimit")]
    return [name_cell(level), text(spec.get("type")), shares, *queuing, age_cell(level, now)]


# Printers


def _printer(columns: tuple[Column, ...], *cells: Cell) -> Printer:
    """A printer whose cells are C{cells} applied in turn."""
    return Printer(columns, lambda obj, now: [cell(obj, now) for cell in cells])


def _name(obj: Printed, now: datetime) -> str:
    return name_cell(obj)


def _text(*path: str) -> Cell:
    return lambda obj, now: text(get_path(obj, *path))


_WEBHOOKS = Column(
    "Webhooks",
    "integer",
    description="Webhooks indicates the number of webhooks registered in this configuration",
)
_WEBHOOK_PRINTER = _printer(
    (NAME_COLUMN, _WEBHOOKS, AGE_COLUMN), _name, _counted("webhooks"), age_cell
)
_PARAM_KIND = Column(
    "ParamKind",
    description="ParamKind specifies the kind of resources used to parameterize this policy",
)

# PodTemplates show their containers without -o wide.
_CONTAINERS = Column("Containers", description=CONTAINERS_COLUMN.description)
_IMAGES = Column("Images", description=IMAGES_COLUMN.description)

_NETWORK_POLICY_SELECTOR = (
    "Selects the pods to which this NetworkPolicy object applies. The array of ingress rules "
    "is applied to any pods selected by this field. Multiple network policies can select the "
    "same set of pods. In this case, the ingress rules for each are combined additively. This "
    "field is NOT optional and follows standard label selector semantics. An empty podSelector "
    "matches all pods in this namespace."
)
_HPA_METRICS = (
    "metrics contains the specifications for which to use to calculate the desired replica "
    "count (the maximum replica count across all metrics will be used).  The desired replica "
    "count is calculated multiplying the ratio between the target value and the current value "
    "by the current number of pods.  Ergo, metrics used must decrease as the pod count is "
    "increased, and vice-versa.  See the individual metric source types for more information "
    "about how each type of metric must respond."
)
_HPA_MIN_REPLICAS = (
    "minReplicas is the lower limit for the number of replicas to which the autoscaler can "
    "scale down.  It defaults to 1 pod.  minReplicas is allowed to be 0 if the alpha feature "
    "gate HPAScaleToZero is enabled and at least one Object or External metric is configured.  "
    "Scaling is active as long as at least one metric value is available."
)
_CSR_SIGNER = (
    "Requested signer for the request. It is a qualified name in the form: "
    "`scope-hostname.io/name`. If empty, it will be defaulted:\n"
    " 1. If it's a kubelet client certificate, it is assigned\n"
    '    "kubernetes.io/kube-apiserver-client-kubelet".\n'
    " 2. If it's a kubelet serving certificate, it is assigned\n"
    '    "kubernetes.io/kubelet-serving".\n'
    ' 3. Otherwise, it is assigned "kubernetes.io/legacy-unknown".\n'
    "Distribution of trust for signers happens out of band. You can select on this field "
    "using `spec.signerName`."
)
_CSR_DURATION = (
    "expirationSeconds is the requested duration of validity of the issued certificate. The "
    "certificate signer may issue a certificate with a different validity duration so a client "
    "must check the delta between the notBefore and and notAfter fields in the issued "
    "certificate to determine the actual duration.\n\nThe v1.22+ in-tree implementations of "
    "the well-known Kubernetes signers will honor this field as long as the requested duration "
    "is not greater than the maximum duration they will honor per the "
    "--cluster-signing-duration CLI flag to the Kubernetes controller manager.\n\nCertificate "
    "signers may not honor this field for various reasons:\n\n  1. Old signer that is unaware "
    "of the field (such as the in-tree\n     implementations prior to v1.22)\n  2. Signer whose "
    "configured maximum is shorter than the requested duration\n  3. Signer whose configured "
    "minimum is longer than the requested duration\n\nThe minimum valid value for "
    "expirationSeconds is 600, i.e. 10 minutes."
)
_PARAM_REF = Column(
    "ParamRef",
    description="ParamRef indicates the param resource which sets the configration param",
)
_POLICY_NAME = Column(
    "PolicyName",
    description="PolicyName indicates the policy definition which the policy binding binded to",
)

_PV_DOCS = "https://kubernetes.io/docs/concepts/storage/persistent-volumes"
_RC_DOCS = "https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller"

#: Each catalogued kind's printer, by group and kind.
PRINTERS: dict[tuple[str, str], Printer] = {
    ("", "PersistentVolume"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Capacity",
                description="capacity is the description of the persistent volume's resources "
                f"and capacity. More info: {_PV_DOCS}#capacity",
            ),
            Column(
                "Access Modes",
                description="accessModes contains all ways the volume can be mounted. More "
                f"info: {_PV_DOCS}#access-modes",
            ),
            Column(
                "Reclaim Policy",
                description="persistentVolumeReclaimPolicy defines what happens to a persistent "
                "volume when released from its claim. Valid options are Retain (default for "
                "manually created PersistentVolumes), Delete (default for dynamically "
                "provisioned PersistentVolumes), and Recycle (deprecated). Recycle must be "
                "supported by the volume plugin underlying this PersistentVolume. More info: "
                f"{_PV_DOCS}#reclaiming",
            ),
            Column(
                "Status",
                description="phase indicates if a volume is available, bound to a claim, or "
                f"released by a claim. More info: {_PV_DOCS}#phase",
            ),
            Column(
                "Claim",
                description="claimRef is part of a bi-directional binding between "
                "PersistentVolume and PersistentVolumeClaim. Expected to be non-nil when bound. "
                "claim.VolumeName is the authoritative bind between PV and PVC. More info: "
                f"{_PV_DOCS}#binding",
            ),
            Column("StorageClass", description="StorageClass of the pv"),
            Column("VolumeAttributesClass", description="VolumeAttributesClass of the pv"),
            Column(
                "Reason",
                description="reason is a brief CamelCase string that describes any failure and "
                "is meant for machine parsing and tidy display in the CLI.",
            ),
            AGE_COLUMN,
            Column(
                "VolumeMode",
                priority=1,
                description="volumeMode defines if a volume is intended to be used with a "
                "formatted filesystem or to remain in raw block state. Value of Filesystem is "
                "implied when not included in spec.",
            ),
        ),
        _pv_cells,
    ),
    ("", "PersistentVolumeClaim"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Status", description="phase represents the current phase of PersistentVolumeClaim."
            ),
            Column(
                "Volume",
                description="volumeName is the binding reference to the PersistentVolume backing "
                "this claim.",
            ),
            Column(
                "Capacity",
                description="capacity represents the actual resources of the underlying volume.",
            ),
            Column(
                "Access Modes",
                description="accessModes contains the actual access modes the volume backing the "
                f"PVC has. More info: {_PV_DOCS}#access-modes-1",
            ),
            Column("StorageClass", description="StorageClass of the pvc"),
            Column("VolumeAttributesClass", description="VolumeAttributesClass of the pvc"),
            AGE_COLUMN,
            Column(
                "VolumeMode",
                priority=1,
                description="volumeMode defines what type of volume is required by the claim. "
                "Value of Filesystem is implied when not included in claim spec.",
            ),
        ),
        _pvc_cells,
    ),
    ("", "PodTemplate"): Printer(
        (
            NAME_COLUMN,
            _CONTAINERS,
            _IMAGES,
            Column("Pod Labels", description="The labels for the pod template."),
        ),
        _pod_template_cells,
    ),
    ("", "ReplicationController"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Desired",
                "integer",
                description="Replicas is the number of desired replicas. This is a pointer to "
                "distinguish between explicit zero and unspecified. Defaults to 1. More info: "
                f"{_RC_DOCS}#what-is-a-replicationcontroller",
            ),
            Column(
                "Current",
                "integer",
                description="Replicas is the most recently observed number of replicas. More "
                f"info: {_RC_DOCS}#what-is-a-replicationcontroller",
            ),
            Column(
                "Ready",
                "integer",
                description="The number of ready replicas for this replication controller.",
            ),
            AGE_COLUMN,
            CONTAINERS_COLUMN,
            IMAGES_COLUMN,
            Column(
                "Selector",
                priority=1,
                description="Selector is a label query over pods that should match the Replicas "
                "count. If Selector is empty, it is defaulted to the labels present on the Pod "
                "template. Label keys and values that must match in order to be controlled by "
                "this replication controller, if empty defaulted to labels on Pod template. "
                "More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/"
                "labels/#label-selectors",
            ),
        ),
        replica_cells(lambda selector: format_labels(mapping(selector))),
    ),
    ("", "ResourceQuota"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Request",
                description="Request represents a minimum amount of cpu/memory that a container "
                "may consume.",
            ),
            Column(
                "Limit",
                description="Limits control the maximum amount of cpu/memory that a container may "
                "use independent of contention on the node.",
            ),
            AGE_COLUMN,
        ),
        _quota_cells,
    ),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): _WEBHOOK_PRINTER,
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): _WEBHOOK_PRINTER,
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"): _printer(
        (
            NAME_COLUMN,
            Column(
                "Validations",
                "integer",
                description="Validations indicates the number of validation rules defined in "
                "this configuration",
            ),
            _PARAM_KIND,
            AGE_COLUMN,
        ),
        _name,
        _counted("spec", "validations"),
        lambda obj, now: _param_kind(obj),
        age_cell,
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"): _printer(
        (NAME_COLUMN, _POLICY_NAME, _PARAM_REF, AGE_COLUMN),
        _name,
        _text("spec", "policyName"),
        lambda obj, now: _param_ref(obj),
        age_cell,
    ),
    ("apiregistration.k8s.io", "APIService"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Service", description="The reference to the service that hosts this API endpoint."
            ),
            Column("Available", description="Whether this service is available."),
            AGE_COLUMN,
        ),
        _api_service_cells,
    ),
    ("apps", "ControllerRevision"): Printer(
        (
            NAME_COLUMN,
            Column("Controller", description="Controller of the object"),
            Column(
                "Revision",
                description="Revision indicates the revision of the state represented by Data.",
            ),
            AGE_COLUMN,
        ),
        _controller_revision_cells,
    ),
    ("autoscaling", "HorizontalPodAutoscaler"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Reference",
                description="scaleTargetRef points to the target resource to scale, and is used "
                "to the pods for which metrics should be collected, as well as to actually change "
                "the replica count.",
            ),
            Column("Targets", description=_HPA_METRICS),
            Column("MinPods", description=_HPA_MIN_REPLICAS),
            Column(
                "MaxPods",
                description="maxReplicas is the upper limit for the number of replicas to which "
                "the autoscaler can scale up. It cannot be less that minReplicas.",
            ),
            Column(
                "Replicas",
                description="currentReplicas is current number of replicas of pods managed by "
                "this autoscaler, as last seen by the autoscaler.",
            ),
            AGE_COLUMN,
        ),
        _hpa_cells,
    ),
    ("certificates.k8s.io", "CertificateSigningRequest"): Printer(
        (
            NAME_COLUMN,
            AGE_COLUMN,
            Column("SignerName", description=_CSR_SIGNER),
            Column("Requestor", description="Base64-encoded PKCS#10 CSR data"),
            Column("RequestedDuration", description=_CSR_DURATION),
            Column(
                "Condition",
                description="Conditions applied to the request, such as approval or denial.",
            ),
        ),
        _csr_cells,
    ),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"): Printer(
        (
            NAME_COLUMN,
            Column(
                "PriorityLevel",
                description="`name` is the name of the priority level configuration being "
                "referenced Required.",
            ),
            Column(
                "MatchingPrecedence",
                description="`matchingPrecedence` is used to choose among the FlowSchemas that "
                "match a given request. The chosen FlowSchema is among those with the numerically "
                "lowest (which we take to be logically highest) MatchingPrecedence.  Each "
                "MatchingPrecedence value must be ranged in [1,10000]. Note that if the "
                "precedence is not specified, it will be set to 1000 as default.",
            ),
            Column(
                "DistinguisherMethod",
                description="`distinguisherMethod` defines how to compute the flow distinguisher "
                "for requests that match this schema. `nil` specifies that the distinguisher is "
                "disabled and thus will always be the empty string.",
            ),
            AGE_COLUMN,
            Column(
                "MissingPL",
                description="references a broken or non-existent PriorityLevelConfiguration",
            ),
        ),
        _flow_schema_cells,
    ),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Type",
                description="`type` indicates whether this priority level is subject to "
                'limitation on request execution.  A value of `"Exempt"` means that requests '
                "of this priority level are not subject to a limit (and thus are never queued) "
                "and do not detract from the capacity made available to other priority levels.  "
                'A value of `"Limited"` means that (a) requests of this priority level _are_ '
                "subject to limits and (b) some of the server's limited capacity is made "
                "available exclusively to this priority level. Required.",
            ),
            Column(
                "NominalConcurrencyShares",
                description="`nominalConcurrencyShares` (NCS) contributes to the computation of "
                "the NominalConcurrencyLimit (NominalCL) of this level. This is the number of "
                "execution seats available at this priority level. This is used both for requests "
                "dispatched from this priority level as well as requests dispatched from other "
                "priority levels borrowing seats from this level. The server's concurrency limit "
                "(ServerCL) is divided among the Limited priority levels in proportion to their "
                "NCS values:\n\nNominalCL(i)  = ceil( ServerCL * NCS(i) / sum_ncs ) sum_ncs = "
                "sum[priority level k] NCS(k)\n\nBigger numbers mean a larger nominal concurrency "
                "limit, at the expense of every other priority level.\n\nIf not specified, this "
                "field defaults to a value of 30.\n\nSetting this field to zero supports the "
                'construction of a "jail" for this priority level that is used to hold some '
                "request(s)",
            ),
            Column(
                "Queues",
                description="`queues` is the number of queues for this priority level. The queues "
                "exist independently at each apiserver. The value must be positive.  Setting it "
                "to 1 effectively precludes shufflesharding and thus makes the distinguisher "
                "method of associated flow schemas irrelevant.  This field has a default value "
                "of 64.",
            ),
            Column(
                "HandSize",
                description="`handSize` is a small positive number that configures the shuffle "
                "sharding of requests into queues.  When enqueuing a request at this priority "
                "level the request's flow identifier (a string pair) is hashed and the hash "
                "value is used to shuffle the list of queues and deal a hand of the size "
                "specified here.  The request is put into one of the shortest queues in that "
                "hand. `handSize` must be no larger than `queues`, and should be significantly "
                "smaller (so that a few heavy flows do not saturate most of the queues).  See "
                "the user-facing documentation for more extensive guidance on setting this "
                "field.  This field has a default value of 8.",
            ),
            Column(
                "QueueLengthLimit",
                description="`queueLengthLimit` is the maximum number of requests allowed to be "
                "waiting in a given queue of this priority level at a time; excess requests are "
                "rejected.  This value must be positive.  If not specified, it will be defaulted "
                "to 50.",
            ),
            AGE_COLUMN,
        ),
        _priority_level_cells,
    ),
    ("networking.k8s.io", "Ingress"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Class",
                description="The name of the IngressClass resource that should be used for "
                "additional configuration",
            ),
            Column(
                "Hosts",
                description="Hosts that incoming requests are matched against before the ingress "
                "rule",
            ),
            Column(
                "Address",
                description="Address is a list containing ingress points for the load-balancer",
            ),
            Column("Ports", description="Ports of TLS configurations that open"),
            AGE_COLUMN,
        ),
        _ingress_cells,
    ),
    ("networking.k8s.io", "IngressClass"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Controller", description="Controller that is responsible for handling this class"
            ),
            Column(
                "Parameters", description="A reference to a resource with additional parameters"
            ),
            AGE_COLUMN,
        ),
        _ingress_class_cells,
    ),
    ("networking.k8s.io", "NetworkPolicy"): _printer(
        (NAME_COLUMN, Column("Pod-Selector", description=_NETWORK_POLICY_SELECTOR), AGE_COLUMN),
        _name,
        lambda obj, now: _selector(get_path(obj, "spec", "podSelector")),
        age_cell,
    ),
    ("node.k8s.io", "RuntimeClass"): _printer(
        # kube describes Handler with ObjectMeta's (absent) "handler" doc: none.
        (NAME_COLUMN, Column("Handler"), AGE_COLUMN),
        _name,
        _text("handler"),
        age_cell,
    ),
    ("policy", "PodDisruptionBudget"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Min Available", description="The minimum number of pods that must be available."
            ),
            Column(
                "Max Unavailable", description="The maximum number of pods that may be unavailable."
            ),
            Column(
                "Allowed Disruptions",
                "integer",
                description="Calculated number of pods that may be disrupted at this time.",
            ),
            AGE_COLUMN,
        ),
        _pdb_cells,
    ),
    ("scheduling.k8s.io", "PriorityClass"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Value",
                "integer",
                description="value represents the integer value of this priority class. This is "
                "the actual priority that pods receive when they have the name of this class in "
                "their pod spec.",
            ),
            Column(
                "Global-Default",
                "boolean",
                description="globalDefault specifies whether this PriorityClass should be "
                "considered as the default priority for pods that do not have any priority "
                "class. Only one PriorityClass can be marked as `globalDefault`. However, if "
                "more than one PriorityClasses exists with their `globalDefault` field set to "
                "true, the smallest value of such global default PriorityClasses will be used "
                "as the default priority.",
            ),
            AGE_COLUMN,
            Column(
                "PreemptionPolicy",
                description="preemptionPolicy is the Policy for preempting pods with lower "
                "priority. One of Never, PreemptLowerPriority. Defaults to PreemptLowerPriority "
                "if unset.",
            ),
        ),
        _priority_class_cells,
    ),
    ("storage.k8s.io", "StorageClass"): Printer(
        (
            NAME_COLUMN,
            Column("Provisioner", description="provisioner indicates the type of the provisioner."),
            Column(
                "ReclaimPolicy",
                description="reclaimPolicy controls the reclaimPolicy for dynamically provisioned "
                "PersistentVolumes of this storage class. Defaults to Delete.",
            ),
            Column(
                "VolumeBindingMode",
                description="volumeBindingMode indicates how PersistentVolumeClaims should be "
                "provisioned and bound.  When unset, VolumeBindingImmediate is used. This field "
                "is only honored by servers that enable the VolumeScheduling feature.",
            ),
            Column(
                "AllowVolumeExpansion",
                description="allowVolumeExpansion shows whether the storage class allow volume "
                "expand.",
            ),
            AGE_COLUMN,
        ),
        _storage_class_cells,
    ),
    ("storage.k8s.io", "CSIDriver"): Printer(
        (
            NAME_COLUMN,
            Column(
                "AttachRequired",
                "boolean",
                description="attachRequired indicates this CSI volume driver requires an attach "
                "operation (because it implements the CSI ControllerPublishVolume() method), and "
                "that the Kubernetes attach detach controller should call the attach volume "
                "interface which checks the volumeattachment status and waits until the volume "
                "is attached before proceeding to mounting. The CSI external-attacher coordinates "
                "with CSI volume driver and updates the volumeattachment status when the attach "
                "operation is complete. If the CSIDriverRegistry feature gate is enabled and the "
                "value is specified to false, the attach operation will be skipped. Otherwise the "
                "attach operation will be called.\n\nThis field is immutable.",
            ),
            Column(
                "PodInfoOnMount",
                "boolean",
                description="podInfoOnMount indicates this CSI volume driver requires additional "
                "pod information (like podName, podUID, etc.) during mount operations, if set to "
                "true. If set to false, pod information will not be passed on mount. Default is "
                "false.\n\nThe CSI driver specifies podInfoOnMount as part of driver deployment. "
                "If true, Kubelet will pass pod information as VolumeContext in the CSI "
                "NodePublishVolume() calls. The CSI driver is responsible for parsing and "
                "validating the information passed in as VolumeContext.\n\nThe following "
                "VolumeContext will be passed if podInfoOnMount is set to true. This list might "
                'grow, but the prefix will be used. "csi.storage.k8s.io/pod.name": pod.Name '
                '"csi.storage.k8s.io/pod.namespace": pod.Namespace '
                '"csi.storage.k8s.io/pod.uid": string(pod.UID) "csi.storage.k8s.io/ephemeral": '
                '"true" if the volume is an ephemeral inline volume\n'
                "                                defined by a CSIVolumeSource, otherwise "
                '"false"\n\n"csi.storage.k8s.io/ephemeral" is a new feature in Kubernetes 1.16. '
                'It is only required for drivers which support both the "Persistent" and '
                '"Ephemeral" VolumeLifecycleMode. Other drivers can leave pod info disabled '
                "and/or ignore this field. As Kubernetes 1.15 doesn't support this field, drivers "
                "can only support one mode when deployed on such a cluster and the deployment "
                "determines which mode that is, for example via a command line parameter of the "
                "driver.\n\nThis field was immutable in Kubernetes < 1.29 and now is mutable.",
            ),
            Column(
                "StorageCapacity",
                "boolean",
                description="storageCapacity indicates that the CSI volume driver wants pod "
                "scheduling to consider the storage capacity that the driver deployment will "
                "report by creating CSIStorageCapacity objects with capacity information, if set "
                "to true.\n\nThe check can be enabled immediately when deploying a driver. In "
                "that case, provisioning new volumes with late binding will pause until the "
                "driver deployment has published some suitable CSIStorageCapacity object.\n\n"
                "Alternatively, the driver can be deployed with the field unset or false and it "
                "can be flipped later when storage capacity information has been published.\n\n"
                "This field was immutable in Kubernetes <= 1.22 and now is mutable.",
            ),
            Column(
                "TokenRequests",
                description="tokenRequests indicates the CSI driver needs pods' service account "
                "tokens it is mounting volume for to do necessary authentication. Kubelet will "
                "pass the tokens in VolumeContext in the CSI NodePublishVolume calls. The CSI "
                "driver should parse and validate the following VolumeContext: "
                '"csi.storage.k8s.io/serviceAccount.tokens": {\n  "<audience>": {\n    '
                '"token": <token>,\n    "expirationTimestamp": <expiration timestamp in '
                "RFC3339>,\n  },\n  ...\n}\n\nNote: Audience in each TokenRequest should be "
                "different and at most one token is empty string. To receive a new token after "
                "expiry, RequiresRepublish can be used to trigger NodePublishVolume periodically.",
            ),
            Column(
                "RequiresRepublish",
                "boolean",
                description="requiresRepublish indicates the CSI driver wants `NodePublishVolume` "
                "being periodically called to reflect any possible change in the mounted volume. "
                "This field defaults to false.\n\nNote: After a successful initial "
                "NodePublishVolume call, subsequent calls to NodePublishVolume should only update "
                "the contents of the volume. New mount points will not be seen by a running "
                "container.",
            ),
            Column(
                "Modes",
                description="volumeLifecycleModes defines what kind of volumes this CSI volume "
                'driver supports. The default if the list is empty is "Persistent", which is the '
                "usage defined by the CSI specification and implemented in Kubernetes via the "
                'usual PV/PVC mechanism.\n\nThe other mode is "Ephemeral". In this mode, volumes '
                "are defined inline inside the pod spec with CSIVolumeSource and their lifecycle "
                "is tied to the lifecycle of that pod. A driver has to be aware of this because "
                "it is only going to get a NodePublishVolume call for such a volume.\n\nFor more "
                "information about implementing this mode, see "
                "https://kubernetes-csi.github.io/docs/ephemeral-local-volumes.html A driver can "
                "support one or more of these modes and more modes may be added in the future."
                "\n\nThis field is beta. This field is immutable.",
            ),
            AGE_COLUMN,
        ),
        _csi_driver_cells,
    ),
    ("storage.k8s.io", "CSINode"): _printer(
        (
            NAME_COLUMN,
            Column(
                "Drivers",
                "integer",
                description="Drivers indicates the number of CSI drivers registered on the node",
            ),
            AGE_COLUMN,
        ),
        _name,
        _counted("spec", "drivers"),
        age_cell,
    ),
    ("storage.k8s.io", "CSIStorageCapacity"): Printer(
        (
            NAME_COLUMN,
            Column(
                "StorageClassName",
                description="storageClassName represents the name of the StorageClass that the "
                "reported capacity applies to. It must meet the same requirements as the name of "
                "a StorageClass object (non-empty, DNS subdomain). If that object no longer "
                "exists, the CSIStorageCapacity object is obsolete and should be removed by its "
                "creator. This field is immutable.",
            ),
            Column(
                "Capacity",
                description="capacity is the value reported by the CSI driver in its "
                "GetCapacityResponse for a GetCapacityRequest with topology and parameters that "
                "match the previous fields.\n\nThe semantic is currently (CSI spec 1.2) defined "
                "as: The available capacity, in bytes, of the storage that can be used to "
                "provision volumes. If not set, that information is currently unavailable.",
            ),
        ),
        _capacity_cells,
    ),
    ("storage.k8s.io", "VolumeAttachment"): Printer(
        (
            NAME_COLUMN,
            Column(
                "Attacher",
                format="name",
                description="attacher indicates the name of the volume driver that MUST handle "
                "this request. This is the name returned by GetPluginName().",
            ),
            Column(
                "PV",
                description="persistentVolumeName represents the name of the persistent volume "
                "to attach.",
            ),
            Column(
                "Node",
                description="nodeName represents the node that the volume should be attached to.",
            ),
            Column(
                "Attached",
                "boolean",
                description="attached indicates the volume is successfully attached. This field "
                "must only be set by the entity completing the attach operation, i.e. the "
                "external-attacher.",
            ),
            AGE_COLUMN,
        ),
        _volume_attachment_cells,
    ),
}
