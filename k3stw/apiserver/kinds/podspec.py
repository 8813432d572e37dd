"""
What the kinds that carry a pod spec share: its defaults, and the columns
and selector cells of the workload printers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from k3stw.apiserver.defaulting import child, each, fill, fill_at, unset
from k3stw.apiserver.fielderrors import (
    IMMUTABLE,
    NEGATIVE,
    PROTOCOLS,
    forbidden,
    invalid,
    items_at,
    label_causes,
    not_found,
    not_supported,
    once,
    port_name_errors,
    port_number_causes,
    required,
)
from k3stw.apiserver.patch.rules import RuleTable
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.strategy import Cause, Strategy
from k3stw.apiserver.tables import (
    Column,
    Printed,
    Printer,
    mapping,
    mappings,
    text,
)
from k3stw.machinery.labels import (
    LabelSelectorError,
    format_label_selector,
    go_quote,
    label_selector_from_spec,
    spec_matches,
)
from k3stw.machinery.objects import Object, get_path
from k3stw.machinery.quantity import Quantity, QuantityError, parse_quantity

#: The workload printers' ``-o wide`` columns.
CONTAINERS_COLUMN = Column(
    "Containers", priority=1, description="Names of each container in the template."
)
IMAGES_COLUMN = Column(
    "Images", priority=1, description="Images referenced by each container in the template."
)


def workload_parts(obj: Printed) -> tuple[Mapping[str, Any], Mapping[str, Any], str, str]:
    """A workload's spec and status, and its template's container names and images."""
    spec = mapping(obj.get("spec"))
    containers = mappings(get_path(spec, "template", "spec", "containers"))
    return (
        spec,
        mapping(obj.get("status")),
        ",".join(text(c.get("name")) for c in containers),
        ",".join(text(c.get("image")) for c in containers),
    )


def selector_text(spec: Any) -> str:
    # The Deployment printer shows the bare selector string, "" when empty.
    try:
        return str(label_selector_from_spec(spec if isinstance(spec, Mapping) else None))
    except LabelSelectorError:
        return "<invalid>"


def format_selector(spec: Any) -> str:
    return format_label_selector(spec if isinstance(spec, Mapping) else None)


def default_ports(ports: Any) -> None:
    """A port's protocol is TCP unless it says otherwise."""
    for port in ports if isinstance(ports, list) else ():
        fill(port, protocol="TCP")


def pull_policy(image: str) -> str:
    """An image's pull policy by its tag: Always for ``latest`` (or none and no digest)."""
    name, at, _ = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.partition(":")[2] or ("" if at else "latest")
    return "Always" if tag == "latest" else "IfNotPresent"


#: A probe's thresholds; 0 counts as unset (plain integers in Go).
_PROBE_DEFAULTS = {
    "timeoutSeconds": 1,
    "periodSeconds": 10,
    "successThreshold": 1,
    "failureThreshold": 3,
}


def _default_handler(handler: Any) -> None:
    fill(get_path(handler, "httpGet"), path="/", scheme="HTTP")


def _default_container(container: Object) -> None:
    default_ports(container.get("ports"))
    fill(
        container,
        imagePullPolicy=pull_policy(str(container.get("image") or "")),
        terminationMessagePath="/dev/termination-log",
        terminationMessagePolicy="File",
        resources={},
    )
    for key in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container.get(key)
        if isinstance(probe, dict):
            for name, value in _PROBE_DEFAULTS.items():
                if not probe.get(name):
                    probe[name] = value
            _default_handler(probe)
    for key in ("postStart", "preStop"):
        _default_handler(get_path(container, "lifecycle", key))
    fill_at(container, "env[].valueFrom.fieldRef", apiVersion="v1")


#: A volume's sources that carry a file mode, defaulted to 0644.
_MODE_SOURCES = ("secret", "configMap", "downwardAPI", "projected")


def _default_volume(volume: Object) -> None:
    if all(unset(value) for key, value in volume.items() if key != "name"):
        volume["emptyDir"] = {}
    for key in _MODE_SOURCES:
        fill(volume.get(key), defaultMode=420)
    fill(volume.get("hostPath"), type="")
    fill_at(volume, "downwardAPI.items[].fieldRef", apiVersion="v1")
    fill_at(volume, "projected.sources[].serviceAccountToken", expirationSeconds=3600)
    fill_at(volume, "projected.sources[].downwardAPI.items[].fieldRef", apiVersion="v1")
    default_claim_spec(get_path(volume, "ephemeral", "volumeClaimTemplate", "spec"))


def default_claim_spec(spec: Any) -> None:
    """A PersistentVolumeClaimSpec's defaults, wherever one is (a claim, a template)."""
    fill(spec, volumeMode="Filesystem")


def default_pod_spec(spec: Any) -> None:
    """
    The defaults of a ``PodSpec``, in place: a pod's, or a workload's
    template's (what only pods get is L{k3stw.apiserver.kinds.pods}').
    """
    if not isinstance(spec, dict):
        return
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for container in each(spec, key + "[]"):
            _default_container(container)
    for volume in each(spec, "volumes[]"):
        _default_volume(volume)
    fill(
        spec,
        dnsPolicy="ClusterFirst",
        restartPolicy="Always",
        securityContext={},
        terminationGracePeriodSeconds=30,
        schedulerName="default-scheduler",
    )
    # The deprecated serviceAccount mirrors serviceAccountName (kube's conversion).
    account = spec.get("serviceAccountName") or spec.get("serviceAccount")
    if account:
        spec["serviceAccountName"] = spec["serviceAccount"] = account


def default_template(owner: Any) -> None:
    """The pod template's defaults of an object's spec (a workload's, a PodTemplate's)."""
    template = child(owner, "template")
    if template is not None:
        default_pod_spec(child(template, "spec"))


def _go_labels(labels: Mapping[str, Any]) -> str:
    """A label map as Go's ``%#v`` prints it in kube-apiserver's messages."""
    pairs = ", ".join(f"{go_quote(k)}:{go_quote(str(v))}" for k, v in sorted(labels.items()))
    return "map[string]string{" + pairs + "}"


def validate_workload(obj: Object) -> list[Cause]:
    """
    The rules kube-apiserver enforces on every workload that users hit most:
    a selector, which its pod template's labels match, a valid pod spec that
    restarts its containers ``Always``.
    """
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return [("spec.selector", "Required value")]
    selector = spec.get("selector")
    if selector is None:
        return [("spec.selector", "Required value")]
    labels = get_path(spec, "template", "metadata", "labels") or {}
    causes: list[Cause] = []
    try:
        matches = spec_matches(selector, labels)
    except LabelSelectorError as e:
        return [("spec.selector", f"Invalid value: {e}")]
    if not matches:
        causes.append(
            (
                "spec.template.metadata.labels",
                f"Invalid value: {_go_labels(labels)}: `selector` does not match template `labels`",
            )
        )
    template = get_path(spec, "template", "spec")
    claims = {
        name
        for claim in mappings(spec.get("volumeClaimTemplates"))
        if isinstance(name := get_path(claim, "metadata", "name"), str)
    }
    causes += pod_spec_causes(template, "spec.template.spec", claims=claims)
    return causes + template_restart_causes(template, "spec.template.spec", ("Always",))


def immutable_selector(new: Object, old: Object) -> list[Cause]:
    """An apps/v1 workload's selector never changes once created."""
    return immutable_selector_causes(new, old)


def default_rolling_update(spec: Object, field: str, **rolling: Any) -> None:
    """A workload's update strategy, RollingUpdate unless it says otherwise, with C{rolling}."""
    strategy = child(spec, field)
    fill(strategy, type="RollingUpdate")
    if strategy is not None and strategy["type"] == "RollingUpdate":
        fill(child(strategy, "rollingUpdate"), **rolling)


def workload(
    kind: str,
    short_name: str,
    printer: Printer,
    rules: RuleTable,
    replicas: bool = True,
    defaults: Callable[[Object], None] | None = None,
    validate: Callable[[Object], list[Cause]] | None = None,
    prepare_create: Callable[[Object, str], None] | None = None,
    prepare_update: Callable[[Object, Object], None] | None = None,
) -> ResourceType:
    """
    An apps/v1 workload: namespaced, in ``all``, a status subresource (and
    ``scale`` with C{replicas}), generations counted, a pod template (and
    C{replicas}) defaulted, then the kind's own C{defaults}; validated as
    every workload (L{validate_workload}), then by the kind's own C{validate}.
    """

    def default(obj: Object) -> None:
        spec = child(obj, "spec")
        default_template(spec)
        if replicas:
            fill(spec, replicas=1)
        if defaults is not None and spec is not None:
            defaults(obj)

    strategy = Strategy(
        printer=printer,
        merge_rules=rules,
        counts_generation=True,
        default=default,
        validate=validate_workload
        if validate is None
        else lambda obj: validate_workload(obj) + validate(obj),
        validate_update=immutable_selector,
    )
    if prepare_create is not None:
        strategy = replace(strategy, prepare_create=prepare_create)
    if prepare_update is not None:
        strategy = replace(strategy, prepare_update=prepare_update)
    return ResourceType(
        "apps",
        "v1",
        kind,
        kind.lower() + "s",
        kind.lower(),
        namespaced=True,
        short_names=(short_name,),
        categories=("all",),
        subresources=("status", "scale") if replicas else ("status",),
        strategy=strategy,
    )


# Validation of pod specs, as kube-apiserver's ValidatePodSpec words it (the rules users
# hit most; a pod's and every template's).

#: The restart policies a pod may have, in kube-apiserver's order.
RESTART_POLICIES = ("Always", "OnFailure", "Never")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
#: The resources a container may ask for without a domain prefix.
CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def _volume_causes(volumes: Any, path: str) -> tuple[list[Cause], set[str]]:
    """The volumes' names (DNS labels, each once) and sources; and the names declared."""
    causes: list[Cause] = []
    names: set[str] = set()
    for at, volume in items_at(volumes, path):
        name = volume.get("name")
        causes += label_causes(f"{at}.name", name) + once(f"{at}.name", name, names)
        if not any(key != "name" and value is not None for key, value in volume.items()):
            causes.append(required(at, "must specify a volume type"))
    return causes, names


def _port_causes(ports: Any, path: str) -> list[Cause]:
    causes: list[Cause] = []
    names: set[str] = set()
    for at, port in items_at(ports, path):
        name = port.get("name")
        if isinstance(name, str) and name:
            errors = port_name_errors(name)
            causes += [invalid(f"{at}.name", name, m) for m in errors]
            causes += [] if errors else once(f"{at}.name", name, names)
        number = port.get("containerPort")
        if not number:
            causes.append(required(f"{at}.containerPort"))
        causes += port_number_causes(f"{at}.containerPort", number)
        if port.get("hostPort"):
            causes += port_number_causes(f"{at}.hostPort", port["hostPort"])
        protocol = port.get("protocol")
        if protocol is not None and protocol not in PROTOCOLS:
            causes.append(not_supported(f"{at}.protocol", protocol, PROTOCOLS))
    return causes


def _quantity(amount: Any) -> Quantity | None:
    try:
        return parse_quantity(amount)
    except QuantityError:
        return None  # The decoder's concern (400), where a client's body has it.


def _amount_causes(amounts: Any, path: str) -> list[Cause]:
    """A requests or limits map: standard resources, none negative."""
    causes: list[Cause] = []
    for name, amount in amounts.items() if isinstance(amounts, dict) else ():
        at = f"{path}[{name}]"
        if (
            "/" not in name
            and name not in CONTAINER_RESOURCES
            and not name.startswith("hugepages-")
        ):
            causes.append(invalid(at, name, "must be a standard resource for containers"))
        negative = amount < 0 if isinstance(amount, int | float) else str(amount)[:1] == "-"
        quantity = _quantity(amount) if negative else None
        if quantity is not None and quantity.value < 0:
            causes.append(invalid(at, str(quantity), NEGATIVE))
    return causes


def _resource_causes(resources: Any, path: str) -> list[Cause]:
    """Requests and limits: standard names, not negative, each request within its limit."""
    if not isinstance(resources, dict):
        return []
    limits, requests = resources.get("limits"), resources.get("requests")
    causes = _amount_causes(limits, f"{path}.limits")
    causes += _amount_causes(requests, f"{path}.requests")
    if not isinstance(limits, dict) or not isinstance(requests, dict):
        return causes
    for name in [name for name in requests if name in limits]:
        request, limit = _quantity(requests[name]), _quantity(limits[name])
        if request is not None and limit is not None and request.value > limit.value:
            detail = f"must be less than or equal to {name} limit of {limit}"
            causes.append(invalid(f"{path}.requests", str(request), detail))
    return causes


def _container_causes(
    containers: Any, path: str, volumes: set[str], seen: set[str], pod: bool
) -> list[Cause]:
    causes: list[Cause] = []
    for at, container in items_at(containers, path):
        name = container.get("name")
        if name:  # A missing name is the schema check's (Required value).
            causes += label_causes(f"{at}.name", name)
        causes += once(f"{at}.name", name, seen)
        if pod and not container.get("image"):
            causes.append(required(f"{at}.image"))
        policy = container.get("imagePullPolicy")
        if policy is not None and policy not in PULL_POLICIES:
            causes.append(not_supported(f"{at}.imagePullPolicy", policy, PULL_POLICIES))
        causes += _port_causes(container.get("ports"), f"{at}.ports")
        paths: set[str] = set()
        for mount_at, mount in items_at(container.get("volumeMounts"), f"{at}.volumeMounts"):
            volume = mount.get("name")
            if isinstance(volume, str) and volume not in volumes:
                causes.append(not_found(f"{mount_at}.name", volume))
            target = mount.get("mountPath")
            if isinstance(target, str) and target in paths:
                causes.append(invalid(f"{mount_at}.mountPath", target, "must be unique"))
            if isinstance(target, str):
                paths.add(target)
        causes += _resource_causes(container.get("resources"), f"{at}.resources")
    return causes


#: What, of the init containers, only sidecars (``restartPolicy: Always``) may have.
_SIDECAR_ONLY = ("lifecycle", "livenessProbe", "readinessProbe", "startupProbe")


def _restart_policy_causes(containers: Any, path: str, init: bool) -> list[Cause]:
    """A container's own restart policy: ``Always`` on init containers (sidecars) only."""
    causes: list[Cause] = []
    for at, container in items_at(containers, path):
        policy = container.get("restartPolicy")
        if not init:
            if policy is not None:
                causes.append(
                    forbidden(f"{at}.restartPolicy", "may not be set for non-init containers")
                )
            continue
        if policy is not None and policy != "Always":
            causes.append(not_supported(f"{at}.restartPolicy", policy, ("Always",)))
        if policy != "Always":
            detail = "may not be set for init containers without restartPolicy=Always"
            causes += [
                forbidden(f"{at}.{key}", detail) for key in _SIDECAR_ONLY if container.get(key)
            ]
    return causes


def _sleep_causes(containers: Any, path: str, grace: Any) -> list[Cause]:
    """A hook's ``sleep`` lasts more than 0 seconds and no longer than the grace period."""
    if not isinstance(grace, int):
        return []  # An unset or wrong grace period is flagged as such, not here.
    causes: list[Cause] = []
    for at, container in items_at(containers, path):
        for hook in ("postStart", "preStop"):
            seconds = get_path(container, "lifecycle", hook, "sleep", "seconds")
            if isinstance(seconds, int) and not 0 < seconds <= grace:
                detail = (
                    f"must be greater than 0 and less than terminationGracePeriodSeconds ({grace})"
                )
                causes.append(invalid(f"{at}.lifecycle.{hook}.sleep", seconds, detail))
    return causes


def pod_spec_causes(
    spec: Any, path: str, pod: bool = False, claims: frozenset[str] | set[str] = frozenset()
) -> list[Cause]:
    """
    What is wrong with a ``PodSpec`` at C{path}: volumes, containers (names,
    ports, mounts, resources) and restart policy.

    :param pod: a pod's own spec, which must name its images (a template's need not).
    :param claims: the volumes a StatefulSet's claim templates add.
    """
    if not isinstance(spec, Mapping):
        return []
    causes, volumes = _volume_causes(spec.get("volumes"), f"{path}.volumes")
    volumes |= claims
    if not spec.get("containers"):
        causes.append(required(f"{path}.containers"))
    seen: set[str] = set()
    for key in ("initContainers", "containers"):
        causes += _container_causes(spec.get(key), f"{path}.{key}", volumes, seen, pod)
        causes += _restart_policy_causes(spec.get(key), f"{path}.{key}", key == "initContainers")
        causes += _sleep_causes(
            spec.get(key), f"{path}.{key}", spec.get("terminationGracePeriodSeconds")
        )
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in RESTART_POLICIES:
        causes.append(not_supported(f"{path}.restartPolicy", policy, RESTART_POLICIES))
    return causes


def template_restart_causes(spec: Any, path: str, allowed: tuple[str, ...]) -> list[Cause]:
    """A template's restart policy, one of C{allowed} (a controller's own rule)."""
    policy = get_path(spec, "restartPolicy") if isinstance(spec, Mapping) else None
    if policy in allowed or policy not in RESTART_POLICIES:
        return []  # An unknown one is pod_spec_causes'.
    return [not_supported(f"{path}.restartPolicy", policy, allowed)]


def go_label_selector(selector: Any) -> str:
    """A ``LabelSelector`` as Go's ``%#v`` prints it in an immutable-field error."""
    spec = selector if isinstance(selector, Mapping) else {}
    labels = spec.get("matchLabels")
    shown = (
        "map[string]string{"
        + ", ".join(f"{go_quote(str(k))}:{go_quote(str(v))}" for k, v in sorted(labels.items()))
        + "}"
        if isinstance(labels, Mapping)
        else "map[string]string(nil)"
    )
    expressions = [e for e in spec.get("matchExpressions") or [] if isinstance(e, Mapping)]
    requirements = (
        "[]v1.LabelSelectorRequirement{"
        + ", ".join(
            f"v1.LabelSelectorRequirement{{Key:{go_quote(str(e.get('key', '')))}, "
            f"Operator:{go_quote(str(e.get('operator', '')))}, Values:"
            + (
                "[]string{" + ", ".join(go_quote(str(v)) for v in e["values"]) + "}"
                if isinstance(e.get("values"), list)
                else "[]string(nil)"
            )
            + "}"
            for e in expressions
        )
        + "}"
        if expressions
        else "[]v1.LabelSelectorRequirement(nil)"
    )
    return f"v1.LabelSelector{{MatchLabels:{shown}, MatchExpressions:{requirements}}}"


def immutable_selector_causes(new: Object, old: Object, path: str = "spec.selector") -> list[Cause]:
    """A selector that may not change once set, in kube-apiserver's words."""
    parts = path.split(".")
    before, after = get_path(old, *parts), get_path(new, *parts)
    if before is None or after == before:
        return []
    return [(path, f"Invalid value: {go_label_selector(after)}: {IMMUTABLE}")]
