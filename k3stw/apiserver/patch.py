"""The four Kubernetes patch forms, as pure functions over JSON values.

* :func:`apply_json_patch`: RFC 6902 JSON patch (``application/json-patch+json``).
* :func:`apply_merge_patch`: RFC 7386 JSON merge patch (``application/merge-patch+json``).
* :func:`apply_strategic_merge_patch`: Kubernetes strategic merge patch
  (``application/strategic-merge-patch+json``), driven by :data:`FIELD_RULES`.
* :func:`apply_server_side`: server-side apply (``application/apply-patch+yaml``), with
  ``metadata.managedFields`` ownership and conflicts; :func:`record_update` keeps ownership for
  every other write.

Nothing here does I/O or touches Twisted. Inputs are never mutated; every result is a new value
that shares no containers with the inputs. Failures raise :class:`PatchError` subclasses that
carry the HTTP code, ``reason`` and message kube-apiserver answers with.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

JSONValue: TypeAlias = "dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None"
JSONObject: TypeAlias = "dict[str, JSONValue]"

#: What the public functions return: a Kubernetes object, indexable without narrowing.
KubeObject: TypeAlias = dict[str, Any]

#: A field path in managedFields notation: one ``f:<name>``, ``k:<json>`` or ``v:<json>``
#: element per step, exactly the keys a ``fieldsV1`` document nests.
FieldPath: TypeAlias = tuple[str, ...]

#: kube-apiserver refuses JSON patches with more operations than this (413).
MAX_JSON_PATCH_OPERATIONS = 10000

#: The patch content types kube-apiserver accepts for custom resources.
CUSTOM_RESOURCE_PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
)


# -- errors -------------------------------------------------------------------------------------


class PatchError(Exception):
    """A patch could not be applied.

    :ivar code: the HTTP status kube-apiserver answers with.
    :ivar reason: the ``Status`` reason for that code.
    :ivar message: the ``Status`` message.
    :ivar details: the ``Status`` details (``{}`` unless a subclass says otherwise).
    """

    code = 422
    reason = "Invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def details(self) -> dict[str, Any]:
        """The ``details`` member of the ``Status`` answer."""
        return {}


class InvalidPatch(PatchError):
    """The patch document itself is malformed (400 BadRequest)."""

    code = 400
    reason = "BadRequest"


class PatchNotApplicable(PatchError):
    """A well-formed patch does not apply to this document (422)."""


class PatchTestFailed(PatchNotApplicable):
    """A JSON patch ``test`` operation found a different value (422)."""


class PatchTooLarge(PatchError):
    """A JSON patch has more than :data:`MAX_JSON_PATCH_OPERATIONS` operations (413)."""

    code = 413
    reason = "RequestEntityTooLarge"


class StrategicMergeError(PatchError):
    """A strategic merge patch failure kube-apiserver does not classify.

    kube-apiserver passes these through unconverted, so clients see a 500 with the message
    prefixed by ``Internal error occurred:``; ``message`` already carries that prefix.
    """

    code = 500
    reason = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(f"Internal error occurred: {message}")


class UnsupportedPatchType(PatchError):
    """The patch type is not available for this kind (415), e.g. strategic merge for CRs."""

    code = 415
    reason = "UnsupportedMediaType"

    def __init__(self, accepted: Iterable[str] = CUSTOM_RESOURCE_PATCH_TYPES) -> None:
        super().__init__(
            "the body of the request was in an unknown format - accepted media types include: "
            + ", ".join(accepted)
        )


@dataclass(frozen=True)
class FieldConflict:
    """One field another manager owns with a different value.

    :ivar manager: the other manager, as kube-apiserver prints it (``"kubectl-edit" using v1 at
        2025-01-02T03:04:05Z``).
    :ivar field: the field in structured-merge-diff notation
        (``.spec.containers[name="nginx"].image``).
    """

    manager: str
    field: str


class ApplyConflict(PatchError):
    """Server-side apply would change fields other managers own (409 Conflict).

    :ivar conflicts: every conflicting field, in a stable order.
    """

    code = 409
    reason = "Conflict"

    def __init__(self, conflicts: list[FieldConflict]) -> None:
        self.conflicts = conflicts
        super().__init__(_conflict_message(conflicts))

    @property
    def details(self) -> dict[str, Any]:
        """``details.causes``: one ``FieldManagerConflict`` per field."""
        return {
            "causes": [
                {
                    "type": "FieldManagerConflict",
                    "message": f"conflict with {conflict.manager}",
                    "field": conflict.field,
                }
                for conflict in self.conflicts
            ]
        }


def _conflict_message(conflicts: list[FieldConflict]) -> str:
    if len(conflicts) == 1:
        only = conflicts[0]
        return f"Apply failed with 1 conflict: conflict with {only.manager}: {only.field}"
    by_manager: dict[str, list[str]] = {}
    for conflict in conflicts:
        by_manager.setdefault(conflict.manager, []).append(conflict.field)
    lines: list[str] = []
    for manager in sorted(by_manager):
        lines.append(f"conflicts with {manager}:")
        lines.extend(f"- {path}" for path in by_manager[manager])
    return f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)


# -- shared JSON helpers ------------------------------------------------------------------------


def json_equal(left: JSONValue, right: JSONValue) -> bool:
    """JSON equality: numbers compare by value, booleans are not numbers, order of keys is free."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(v, right[k]) for k, v in left.items())
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    return type(left) is type(right) and left == right


def _go_kind(value: JSONValue) -> str:
    """The Go kind encoding/json would decode ``value`` to, for type comparisons."""
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "slice"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "nil"
    return "number"


def _go_format(value: JSONValue) -> str:
    """``value`` as Go's ``%v`` prints a decoded JSON value, for error messages."""
    if isinstance(value, dict):
        inner = " ".join(f"{key}:{_go_format(value[key])}" for key in sorted(value))
        return f"map[{inner}]"
    if isinstance(value, list):
        return "[" + " ".join(_go_format(item) for item in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_GO_TYPE_NAMES = {
    "map": "map[string]interface {}",
    "slice": "[]interface {}",
    "bool": "bool",
    "string": "string",
    "number": "float64",
    "nil": "<nil>",
}


def _bad_arg(expected: str, actual: JSONValue) -> StrategicMergeError:
    return StrategicMergeError(
        f"expected a {_GO_TYPE_NAMES[expected]}, but received a {_GO_TYPE_NAMES[_go_kind(actual)]}"
    )


def _canonical(value: JSONValue) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- RFC 6902 JSON patch ------------------------------------------------------------------------


def _pointer_tokens(pointer: str) -> list[str] | None:
    """Split an RFC 6901 pointer into unescaped tokens; ``None`` when it is not a pointer."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        return None
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def _array_index(token: str, length: int, *, appending: bool) -> int | None:
    """The list index ``token`` names, or ``None``; ``-`` only names the end when ``appending``."""
    if appending and token == "-":
        return length
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        return None
    index = int(token)
    limit = length if appending else length - 1
    return index if index <= limit else None


def _resolve_parent(document: JSONValue, tokens: list[str]) -> JSONValue | _Missing:
    node = document
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            index = _array_index(token, len(node), appending=False)
            if index is None:
                return MISSING
            node = node[index]
        else:
            return MISSING
    return node


class _Missing:
    """Marks an absent value where ``None`` is a legitimate JSON null."""


MISSING = _Missing()


class _JSONPatch:
    """One application of a JSON patch; owns (and mutates) its private copy of the document."""

    def __init__(self, document: JSONValue) -> None:
        self.document = copy.deepcopy(document)

    def get(self, pointer: str, op: str, role: str) -> JSONValue:
        tokens = _pointer_tokens(pointer)
        if tokens == []:
            return self.document
        parent = self.parent(pointer, tokens, op, role)
        key = tokens[-1] if tokens else ""
        if isinstance(parent, dict):
            if key not in parent:
                if op == "test":
                    raise PatchTestFailed(f"testing value {pointer} failed: test failed")
                missing = "key" if op == "replace" else f"{role}path"
                raise PatchNotApplicable(
                    f"{op} operation does not apply: doc is missing {missing}: {pointer}: "
                    "missing value"
                )
            return parent[key]
        assert isinstance(parent, list)
        index = _array_index(key, len(parent), appending=False)
        if index is None:
            raise PatchNotApplicable(
                f"error in {op} for path: '{pointer}': Unable to access invalid index: {key}: "
                "invalid index referenced"
            )
        return parent[index]

    def parent(
        self, pointer: str, tokens: list[str] | None, op: str, role: str = ""
    ) -> dict[str, JSONValue] | list[JSONValue]:
        parent = MISSING if tokens is None else _resolve_parent(self.document, tokens)
        if not isinstance(parent, dict | list):
            missing = "is missing path" if op == "test" else f"doc is missing {role}path"
            quoted = f'"{pointer}"' if op in ("add", "remove") else pointer
            raise PatchNotApplicable(
                f"{op} operation does not apply: {missing}: {quoted}: missing value"
            )
        return parent

    def add(self, pointer: str, value: JSONValue, op: str = "add") -> None:
        tokens = _pointer_tokens(pointer)
        if tokens == []:
            self.document = value
            return
        parent = self.parent(
            pointer, tokens, op, "" if op in ("add", "replace") else "destination "
        )
        assert tokens is not None
        key = tokens[-1]
        if isinstance(parent, dict):
            parent[key] = value
            return
        index = _array_index(key, len(parent), appending=True)
        if index is None:
            raise PatchNotApplicable(
                f"error in {op} for path: '{pointer}': Unable to access invalid index: {key}: "
                "invalid index referenced"
            )
        parent.insert(index, value)

    def remove(self, pointer: str, op: str = "remove") -> JSONValue:
        tokens = _pointer_tokens(pointer)
        if tokens == []:
            raise PatchNotApplicable(
                f'{op} operation does not apply: doc is missing path: "": missing value'
            )
        role = "from " if op != "remove" else ""
        parent = self.parent(pointer, tokens, op, role)
        assert tokens is not None
        key = tokens[-1]
        if isinstance(parent, dict):
            if key not in parent:
                raise PatchNotApplicable(
                    f"error in {op} for path: '{pointer}': Unable to remove nonexistent key: "
                    f"{key}: missing value"
                )
            return parent.pop(key)
        index = _array_index(key, len(parent), appending=False)
        if index is None:
            raise PatchNotApplicable(
                f"error in {op} for path: '{pointer}': Unable to access invalid index: {key}: "
                "invalid index referenced"
            )
        return parent.pop(index)


def _operation_member(operation: dict[str, JSONValue], name: str, op: str) -> str:
    value = operation.get(name)
    if not isinstance(value, str):
        raise PatchNotApplicable(f"{op} operation failed to decode {name}: missing value")
    return value


def apply_json_patch(document: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch.

    Follows RFC 6902 strictly (no negative indices, ``replace`` needs an existing target), with
    kube-apiserver's (evanphx/json-patch's) error messages.

    :param document: the current object.
    :param operations: the decoded patch: a list of operation objects.
    :returns: the patched document, a new value.
    :raises InvalidPatch: the patch is not a list of objects (400).
    :raises PatchTooLarge: more than :data:`MAX_JSON_PATCH_OPERATIONS` operations (413).
    :raises PatchTestFailed: a ``test`` operation failed (422).
    :raises PatchNotApplicable: an operation does not apply to the document (422).
    """
    if not isinstance(operations, list):
        raise InvalidPatch(
            f"json: cannot unmarshal {_json_type_name(operations)} into Go value of type "
            "jsonpatch.Patch"
        )
    if len(operations) > MAX_JSON_PATCH_OPERATIONS:
        raise PatchTooLarge(
            "The allowed maximum operations in a JSON patch is "
            f"{MAX_JSON_PATCH_OPERATIONS}, got {len(operations)}"
        )
    state = _JSONPatch(document)
    for operation in operations:
        if not isinstance(operation, dict):
            raise InvalidPatch(
                f"json: cannot unmarshal {_json_type_name(operation)} into Go value of type "
                "jsonpatch.Operation"
            )
        op = operation.get("op")
        if op not in ("add", "remove", "replace", "move", "copy", "test"):
            raise PatchNotApplicable(f"Unexpected kind: {op if isinstance(op, str) else 'unknown'}")
        path = _operation_member(operation, "path", op)
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchNotApplicable("operation, missing value field: missing value")
        value = copy.deepcopy(operation.get("value"))
        if op == "add":
            state.add(path, value)
        elif op == "remove":
            state.remove(path)
        elif op == "replace":
            state.get(path, op, "")
            if path == "":
                state.document = value
            else:
                state.remove(path, op)
                state.add(path, value, op)
        elif op == "test":
            if not json_equal(state.get(path, op, ""), value):
                raise PatchTestFailed(f"testing value {path} failed: test failed")
        else:
            source = _operation_member(operation, "from", op)
            if op == "move":
                if path.startswith(source + "/"):
                    raise PatchNotApplicable(
                        f"move operation does not apply: from {source} is a prefix of path {path}"
                    )
                state.get(source, op, "from ")
                state.add(path, state.remove(source, op), op)
            else:
                state.add(path, copy.deepcopy(state.get(source, op, "from ")), op)
    return state.document


def _json_type_name(value: JSONValue) -> str:
    return {
        "map": "object",
        "slice": "array",
        "bool": "bool",
        "string": "string",
        "number": "number",
        "nil": "null",
    }[_go_kind(value)]


# -- RFC 7386 JSON merge patch ------------------------------------------------------------------


def apply_merge_patch(document: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch.

    A patch that is not an object replaces the document whole, as the RFC says; kube-apiserver
    answers a ``null`` patch, and a result that is not an object, with 400 BadRequest, which is
    the caller's check.

    :returns: the patched document, a new value.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, JSONValue] = (
        {key: copy.deepcopy(value) for key, value in document.items()}
        if isinstance(document, dict)
        else {}
    )
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# -- the merge rules of the built-in types ------------------------------------------------------


@dataclass(frozen=True)
class FieldRule:
    """How one field of a built-in type merges, from its Go tags and markers.

    :ivar strategy: the ``patchStrategy`` tag: ``"merge"``, ``"replace"``, ``"retainKeys"``, or
        ``"merge,retainKeys"``; ``""`` when absent (lists are then replaced whole).
    :ivar merge_key: the ``patchMergeKey`` tag, for lists of objects merged by key.
    :ivar list_type: the ``+listType`` marker server-side apply uses: ``"map"``, ``"set"``, or
        ``""`` for atomic.
    :ivar map_keys: the ``+listMapKey`` markers (may differ from ``merge_key``: container ports
        are keyed by ``containerPort`` and ``protocol``).
    :ivar key_defaults: defaults the API server gives to map keys (``protocol: TCP``), so an
        applied item without them names the same item as the stored one.
    :ivar atomic: ``+structType=atomic`` or ``+mapType=atomic``: server-side apply owns and
        replaces the value whole. Strategic merge patch ignores this marker.
    """

    strategy: str = ""
    merge_key: str = ""
    list_type: str = ""
    map_keys: tuple[str, ...] = ()
    key_defaults: tuple[tuple[str, JSONValue], ...] = ()
    atomic: bool = False

    @property
    def strategies(self) -> frozenset[str]:
        """The ``patchStrategy`` values as a set."""
        return frozenset(part for part in self.strategy.split(",") if part)


#: Rules for one kind: dotted field path (list levels add no segment) to rule.
RuleTable: TypeAlias = Mapping[str, FieldRule]

_NO_RULE = FieldRule()
_ATOMIC = FieldRule(atomic=True)


def _merge_list(key: str, *map_keys: str, strategy: str = "merge") -> FieldRule:
    return FieldRule(
        strategy=strategy,
        merge_key=key,
        list_type="map",
        map_keys=map_keys or (key,),
        key_defaults=(("protocol", "TCP"),) if "protocol" in map_keys else (),
    )


_MERGED_SET = FieldRule(strategy="merge", list_type="set")
_APPLY_MAP_BY_NAME = FieldRule(list_type="map", map_keys=("name",))


def _under(prefix: str, table: Mapping[str, FieldRule]) -> dict[str, FieldRule]:
    return {f"{prefix}.{path}": rule for path, rule in table.items()}


# Transcribed from the patchStrategy/patchMergeKey tags and +listType/+listMapKey/+structType
# markers of k8s.io/api v0.32 (core/v1, apps/v1) and k8s.io/apimachinery meta/v1. Lists not
# listed here are atomic: strategic merge patch and server-side apply replace them whole
# (tolerations, taints, args, command, envFrom, containerStatuses, Endpoints subsets, ...).
_OBJECT_META = {
    "ownerReferences": _merge_list("uid"),
    "finalizers": _MERGED_SET,
}

_LABEL_SELECTOR_OWNERS = (
    "requiredDuringSchedulingIgnoredDuringExecution",
    "preferredDuringSchedulingIgnoredDuringExecution.podAffinityTerm",
)

_CONTAINER = {
    "ports": _merge_list("containerPort", "containerPort", "protocol"),
    "env": _merge_list("name"),
    "env.valueFrom.fieldRef": _ATOMIC,
    "env.valueFrom.resourceFieldRef": _ATOMIC,
    "env.valueFrom.configMapKeyRef": _ATOMIC,
    "env.valueFrom.secretKeyRef": _ATOMIC,
    "resources.claims": _APPLY_MAP_BY_NAME,
    "volumeMounts": _merge_list("mountPath"),
    "volumeDevices": _merge_list("devicePath"),
}

_VOLUME = {
    **{
        f"{source}.secretRef": _ATOMIC
        for source in ("iscsi", "rbd", "flexVolume", "cinder", "cephfs", "scaleIO", "storageos")
    },
    "csi.nodePublishSecretRef": _ATOMIC,
    "downwardAPI.items.fieldRef": _ATOMIC,
    "downwardAPI.items.resourceFieldRef": _ATOMIC,
    "projected.sources.downwardAPI.items.fieldRef": _ATOMIC,
    "projected.sources.downwardAPI.items.resourceFieldRef": _ATOMIC,
    "projected.sources.clusterTrustBundle.labelSelector": _ATOMIC,
    **_under("ephemeral.volumeClaimTemplate.metadata", _OBJECT_META),
    "ephemeral.volumeClaimTemplate.spec.selector": _ATOMIC,
    "ephemeral.volumeClaimTemplate.spec.dataSource": _ATOMIC,
}

_POD_SPEC = {
    "volumes": _merge_list("name", strategy="merge,retainKeys"),
    **_under("volumes", _VOLUME),
    "initContainers": _merge_list("name"),
    **_under("initContainers", _CONTAINER),
    "containers": _merge_list("name"),
    **_under("containers", _CONTAINER),
    "ephemeralContainers": _merge_list("name"),
    **_under("ephemeralContainers", _CONTAINER),
    "nodeSelector": _ATOMIC,
    "imagePullSecrets": _merge_list("name"),
    "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution": _ATOMIC,
    "affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution.preference": _ATOMIC,
    **{
        f"affinity.{affinity}.{term}.{selector}": _ATOMIC
        for affinity in ("podAffinity", "podAntiAffinity")
        for term in _LABEL_SELECTOR_OWNERS
        for selector in ("labelSelector", "namespaceSelector")
    },
    "hostAliases": _merge_list("ip"),
    "topologySpreadConstraints": _merge_list("topologyKey", "topologyKey", "whenUnsatisfiable"),
    "topologySpreadConstraints.labelSelector": _ATOMIC,
    "schedulingGates": _merge_list("name"),
    "resourceClaims": _merge_list("name", strategy="merge,retainKeys"),
    "resources.claims": _APPLY_MAP_BY_NAME,
}

_CONTAINER_STATUS = {
    "resources.claims": _APPLY_MAP_BY_NAME,
    "volumeMounts": _merge_list("mountPath"),
    "allocatedResourcesStatus": _merge_list("name"),
    "allocatedResourcesStatus.resources": FieldRule(list_type="map", map_keys=("resourceID",)),
}

_POD_STATUS = {
    "conditions": _merge_list("type"),
    # Merged by ip for strategic merge patch, yet atomic for server-side apply.
    "hostIPs": FieldRule(strategy="merge", merge_key="ip"),
    "podIPs": _merge_list("ip"),
    **_under("initContainerStatuses", _CONTAINER_STATUS),
    **_under("containerStatuses", _CONTAINER_STATUS),
    **_under("ephemeralContainerStatuses", _CONTAINER_STATUS),
    "resourceClaimStatuses": _merge_list("name", strategy="merge,retainKeys"),
}

_POD_TEMPLATE_SPEC = {**_under("metadata", _OBJECT_META), **_under("spec", _POD_SPEC)}

_CONDITIONS = {"status.conditions": _merge_list("type")}


def _workload(extra: Mapping[str, FieldRule] | None = None) -> dict[str, FieldRule]:
    return {
        **_under("metadata", _OBJECT_META),
        "spec.selector": _ATOMIC,
        **_under("spec.template", _POD_TEMPLATE_SPEC),
        **_CONDITIONS,
        **(extra or {}),
    }


_METADATA_ONLY = _under("metadata", _OBJECT_META)

#: Merge rules per kind, keyed by dotted field path. kube-apiserver answers strategic merge
#: patches only for kinds compiled into it; :func:`apply_strategic_merge_patch` answers 415 for
#: any kind missing here. The API server may add kinds (or paths) at start-up.
FIELD_RULES: dict[str, dict[str, FieldRule]] = {
    "Pod": {**_METADATA_ONLY, **_under("spec", _POD_SPEC), **_under("status", _POD_STATUS)},
    "PodTemplate": {**_METADATA_ONLY, **_under("template", _POD_TEMPLATE_SPEC)},
    "Deployment": _workload({"spec.strategy": FieldRule(strategy="retainKeys")}),
    "ReplicaSet": _workload(),
    "DaemonSet": _workload(),
    "Service": {
        **_METADATA_ONLY,
        "spec.ports": _merge_list("port", "port", "protocol"),
        "spec.selector": _ATOMIC,
        **_CONDITIONS,
    },
    "Node": {
        **_METADATA_ONLY,
        "spec.podCIDRs": _MERGED_SET,
        **_CONDITIONS,
        "status.addresses": _merge_list("type"),
    },
    "Namespace": {**_METADATA_ONLY, **_CONDITIONS},
    "Endpoints": dict(_METADATA_ONLY),
    "ConfigMap": dict(_METADATA_ONLY),
    "Secret": dict(_METADATA_ONLY),
    "Event": {**_METADATA_ONLY, "involvedObject": _ATOMIC, "related": _ATOMIC},
    "ServiceAccount": {**_METADATA_ONLY, "secrets": _merge_list("name")},
    "Lease": dict(_METADATA_ONLY),
    "EndpointSlice": dict(_METADATA_ONLY),
    # A compiled-in type, so strategic merge patch works on it; its lists carry no merge keys.
    "CustomResourceDefinition": dict(_METADATA_ONLY),
}


# -- strategic merge patch ----------------------------------------------------------------------

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_SET_ELEMENT_ORDER = "$setElementOrder/"
_DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList/"


def _clean(value: JSONValue) -> tuple[JSONValue, bool]:
    """Drop directives and null members from a value the patch adds; ``False``: drop it whole.

    kube-apiserver decodes the merged map into a typed object, which loses nulls and directive
    keys; stored as plain JSON here, they must go explicitly.
    """
    if isinstance(value, dict):
        if _DIRECTIVE in value:
            return None, False
        cleaned: dict[str, JSONValue] = {}
        for key, member in value.items():
            if member is None or key == _RETAIN_KEYS:
                continue
            if key.startswith((_SET_ELEMENT_ORDER, _DELETE_FROM_PRIMITIVE_LIST)):
                continue
            member, keep = _clean(member)
            if keep:
                cleaned[key] = member
        return cleaned, True
    if isinstance(value, list):
        items = []
        for item in value:
            item, keep = _clean(item)
            if keep:
                items.append(item)
        return items, True
    return value, True


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _StrategicMerge:
    """One strategic merge; mutates the private copies it is given."""

    def __init__(self, rules: RuleTable) -> None:
        self.rules = rules

    def rule(self, path: str) -> FieldRule:
        return self.rules.get(path, _NO_RULE)

    def merge_map(
        self, original: dict[str, JSONValue], patch: dict[str, JSONValue], path: str
    ) -> dict[str, JSONValue]:
        if _DIRECTIVE in patch:
            directive = patch[_DIRECTIVE]
            if directive == "replace":
                replaced, _ = _clean({k: v for k, v in patch.items() if k != _DIRECTIVE})
                assert isinstance(replaced, dict)
                return replaced
            if directive == "delete":
                return {}
            raise StrategicMergeError(
                f"unknown patch type: {_go_format(directive)} in map: {_go_format(patch)}"
            )
        if _RETAIN_KEYS in patch:
            self.retain_keys(original, patch)
        self.set_element_orders(original, patch, path)
        for key, value in patch.items():
            if key.startswith(_DELETE_FROM_PRIMITIVE_LIST[:-1]) and not key.startswith(
                _DELETE_FROM_PRIMITIVE_LIST
            ):
                raise InvalidPatch("invalid patch format of primitive list")
            delete_list = key.startswith(_DELETE_FROM_PRIMITIVE_LIST)
            name = key[len(_DELETE_FROM_PRIMITIVE_LIST) :] if delete_list else key
            if value is None:
                original.pop(name, None)
                continue
            if name not in original:
                if not delete_list:
                    self.take(original, name, value)
                continue
            current = original[name]
            child = _join(path, name)
            if _go_kind(current) != _go_kind(value):
                if not delete_list:
                    self.take(original, name, value)
            elif isinstance(current, dict) and isinstance(value, dict):
                if "replace" in self.rule(child).strategies:
                    self.take(original, name, value)
                else:
                    original[name] = self.merge_map(current, value, child)
            elif isinstance(current, list) and isinstance(value, list):
                original[name] = self.merge_list_field(current, value, child, delete_list)
            else:
                original[name] = value
        return original

    @staticmethod
    def take(original: dict[str, JSONValue], name: str, value: JSONValue) -> None:
        cleaned, keep = _clean(value)
        if keep:
            original[name] = cleaned
        else:
            original.pop(name, None)

    @staticmethod
    def retain_keys(original: dict[str, JSONValue], patch: dict[str, JSONValue]) -> None:
        retained = patch.pop(_RETAIN_KEYS)
        if not isinstance(retained, list):
            raise InvalidPatch("invalid patch format of retainKeys")
        keep = {key for key in retained if isinstance(key, str)}
        for key, value in patch.items():
            if value is None or key.startswith((_SET_ELEMENT_ORDER, _DELETE_FROM_PRIMITIVE_LIST)):
                continue
            if key not in keep:
                raise InvalidPatch("invalid patch format of retainKeys")
        for key in [key for key in original if key not in keep]:
            del original[key]

    def merge_list_field(
        self, current: list[JSONValue], value: list[JSONValue], path: str, delete_list: bool
    ) -> list[JSONValue]:
        rule = self.rule(path)
        if "merge" in rule.strategies or delete_list:
            return self.merge_list(current, value, path, rule, delete_list)
        cleaned, _ = _clean(value)
        assert isinstance(cleaned, list)
        return cleaned

    def set_element_orders(
        self, original: dict[str, JSONValue], patch: dict[str, JSONValue], path: str
    ) -> None:
        for key in [key for key in patch if key.startswith(_SET_ELEMENT_ORDER[:-1])]:
            if not key.startswith(_SET_ELEMENT_ORDER):
                raise InvalidPatch("invalid patch format of setElementOrder list")
            order = patch.pop(key)
            if not isinstance(order, list):
                raise _bad_arg("slice", order)
            name = key[len(_SET_ELEMENT_ORDER) :]
            child = _join(path, name)
            rule = self.rule(child)
            found_original, found_patch = name in original, name in patch
            original_list = original.get(name, [])
            patch_list = patch.get(name, [])
            if not isinstance(original_list, list):
                raise _bad_arg("slice", original_list)
            if not isinstance(patch_list, list):
                raise _bad_arg("slice", patch_list)
            self.validate_order(patch_list, order, rule.merge_key)
            if found_original and found_patch:
                merged = self.merge_list_field(original_list, patch_list, child, False)
            elif found_patch:
                cleaned, _ = _clean(patch_list)
                assert isinstance(cleaned, list)
                merged = cleaned
            elif found_original:
                merged = original_list
            else:
                continue
            is_map = any(isinstance(item, dict) for item in original_list + patch_list)
            ordered, server_only = self.partition(merged, order, rule.merge_key)
            original[name] = self.normalize_order(
                ordered, server_only, order, original_list, rule.merge_key, is_map
            )
            patch.pop(name, None)

    def validate_order(self, patch_list: list[JSONValue], order: list[JSONValue], key: str) -> None:
        if not order or not patch_list:
            return
        items = patch_list
        if key:
            for item in patch_list:
                if not isinstance(item, dict):
                    raise _bad_arg("map", item)
            items = [item for item in patch_list if _directive(item) != "delete"]
        at_patch = at_order = 0
        while at_patch < len(items) and at_order < len(order):
            if _directive(items[at_patch]) is not None:
                at_patch += 1
                continue
            if self.same_item(items[at_patch], order[at_order], key):
                at_patch += 1
            at_order += 1
        if at_patch < len(items) and at_order >= len(order):
            raise StrategicMergeError(
                f"The order in patch list:\n{_go_format(patch_list)}\n doesn't match "
                f"{_SET_ELEMENT_ORDER[:-1]} list:\n{_go_format(order)}\n"
            )

    @staticmethod
    def same_item(left: JSONValue, right: JSONValue, key: str) -> bool:
        if not key:
            return json_equal(left, right)
        if not isinstance(left, dict):
            raise _bad_arg("map", left)
        if not isinstance(right, dict):
            raise _bad_arg("map", right)
        for item in (left, right):
            if key not in item:
                raise _no_merge_key(item, key)
        return json_equal(left[key], right[key])

    def merge_list(
        self,
        original: list[JSONValue],
        patch: list[JSONValue],
        path: str,
        rule: FieldRule,
        delete_list: bool,
    ) -> list[JSONValue]:
        if not original and not patch:
            return original
        kinds = {_go_kind(item) for item in original + patch} - {"nil"}
        if "slice" in kinds:
            raise PatchNotApplicable("lists of lists are not supported")
        if len(kinds) > 1:
            raise StrategicMergeError(
                f"list element types are not identical: {_go_format(original)} {_go_format(patch)}"
            )
        key = rule.merge_key
        if kinds != {"map"}:
            if delete_list:
                return [item for item in original if not any(json_equal(item, d) for d in patch)]
            merged: list[JSONValue] = []
            for item in original + patch:
                if not any(json_equal(item, seen) for seen in merged):
                    merged.append(item)
            ordered, server_only = self.partition(merged, patch, "")
            return self.normalize_order(ordered, server_only, patch, original, "", False)
        if not key:
            raise StrategicMergeError(f"cannot merge lists without merge key for {path}")
        original, patch = self.list_directives(original, patch, key)
        merged = list(original)
        for item in patch:
            assert isinstance(item, dict)
            if key not in item:
                raise _no_merge_key(item, key)
            at = _find_by_key(merged, key, item[key])
            if at is None:
                cleaned, _ = _clean(item)
                merged.append(cleaned)
            else:
                existing = merged[at]
                assert isinstance(existing, dict)
                merged[at] = self.merge_map(existing, item, path)
        ordered, server_only = self.partition(merged, patch, key)
        return self.normalize_order(ordered, server_only, patch, original, key, True)

    @staticmethod
    def list_directives(
        original: list[JSONValue], patch: list[JSONValue], key: str
    ) -> tuple[list[JSONValue], list[JSONValue]]:
        """Apply ``$patch`` items of a keyed list; return the new original and the plain items."""
        plain: list[JSONValue] = []
        replace = False
        for item in patch:
            assert isinstance(item, dict)
            directive = _directive(item)
            if directive is None:
                plain.append(item)
            elif directive == "delete":
                if key not in item:
                    raise _no_merge_key(item, key)
                while (at := _find_by_key(original, key, item[key])) is not None:
                    original = original[:at] + original[at + 1 :]
            elif directive == "replace":
                replace = True
            elif directive == "merge":
                raise StrategicMergeError("merging lists cannot yet be specified in the patch")
            else:
                raise StrategicMergeError(
                    f"unknown patch type: {_go_format(directive)} in map: {_go_format(item)}"
                )
        if replace:
            cleaned, _ = _clean(plain)
            assert isinstance(cleaned, list)
            return cleaned, []
        return original, plain

    @staticmethod
    def partition(
        merged: list[JSONValue], order: list[JSONValue], key: str
    ) -> tuple[list[JSONValue], list[JSONValue]]:
        """Split ``merged`` into the items ``order`` names and the rest, keeping their order."""
        named: list[JSONValue] = []
        rest: list[JSONValue] = []
        for item in merged:
            if key:
                if not isinstance(item, dict):
                    raise _bad_arg("map", item)
                if key not in item:
                    raise _no_merge_key(item, key)
                found = _find_by_key(order, key, item[key]) is not None
            else:
                found = any(json_equal(item, other) for other in order)
            (named if found else rest).append(item)
        return named, rest

    @staticmethod
    def normalize_order(
        from_patch: list[JSONValue],
        server_only: list[JSONValue],
        patch_order: list[JSONValue],
        server_order: list[JSONValue],
        key: str,
        is_map: bool,
    ) -> list[JSONValue]:
        """Order a merged list: patch order first, live order for the rest, interleaved.

        Patch items follow ``patch_order``; server-only items follow the live list; then each
        server-only item goes before the first patch item that comes after it in the live list.
        """
        field_key = key if is_map else ""

        def position(order: list[JSONValue], item: JSONValue) -> int | None:
            for at, other in enumerate(order):
                if field_key:
                    mine = item.get(field_key) if isinstance(item, dict) else None
                    theirs = other.get(field_key) if isinstance(other, dict) else None
                    if json_equal(mine, theirs):
                        return at
                elif json_equal(item, other):
                    return at
            return None

        def sort(items: list[JSONValue], order: list[JSONValue]) -> list[JSONValue]:
            deletions = [item for item in items if is_map and _directive(item) == "delete"]
            kept = [item for item in items if not (is_map and _directive(item) == "delete")]
            unranked = len(order)
            ranks = [position(order, item) for item in kept]
            ranked = sorted(
                range(len(kept)),
                key=lambda at: (unranked if ranks[at] is None else ranks[at], at),
            )
            return [kept[at] for at in ranked] + deletions

        right = sort(from_patch, patch_order)
        left = sort(server_only, server_order)
        result: list[JSONValue] = []
        i = j = 0
        while i < len(left) or j < len(right):
            if j >= len(right):
                result.append(left[i])
                i += 1
            elif i >= len(left):
                result.append(right[j])
                j += 1
            else:
                li, ri = position(server_order, left[i]), position(server_order, right[j])
                if li is not None and ri is not None and li < ri:
                    result.append(left[i])
                    i += 1
                else:
                    result.append(right[j])
                    j += 1
        return result


def _directive(item: JSONValue) -> JSONValue | None:
    return item.get(_DIRECTIVE) if isinstance(item, dict) else None


def _find_by_key(items: list[JSONValue], key: str, value: JSONValue) -> int | None:
    for at, item in enumerate(items):
        if not isinstance(item, dict):
            raise StrategicMergeError(f"value for key {at} is not a map")
        if key in item and json_equal(item[key], value):
            return at
    return None


def _no_merge_key(item: dict[str, JSONValue], key: str) -> StrategicMergeError:
    return StrategicMergeError(
        f"map: {_go_format(item)} does not contain declared merge key: {key}"
    )


def apply_strategic_merge_patch(
    document: Any,
    patch: Any,
    kind: str,
    *,
    rules: Mapping[str, RuleTable] = FIELD_RULES,
) -> KubeObject:
    """Apply a Kubernetes strategic merge patch, as kube-apiserver does for built-in kinds.

    Lists merge by the key :data:`FIELD_RULES` gives for their path; other lists are replaced.
    Directives: ``$patch: replace|delete`` (in maps and list items), ``$retainKeys``,
    ``$setElementOrder/<list>``, ``$deleteFromPrimitiveList/<list>``; ``null`` deletes a key.

    :param document: the current object.
    :param patch: the decoded patch object.
    :param kind: the object's kind; selects the rule table.
    :param rules: the rule tables by kind (default :data:`FIELD_RULES`).
    :returns: the patched object, a new value.
    :raises UnsupportedPatchType: ``kind`` has no rule table: a custom resource (415).
    :raises InvalidPatch: the patch is not an object, or a directive is malformed (400).
    :raises PatchNotApplicable: lists of lists (422).
    :raises StrategicMergeError: what kube-apiserver answers with a 500 (a list item without its
        merge key, ``$patch: merge``, an unknown directive, a ``$setElementOrder`` list that
        disagrees with the patch).
    """
    table = rules.get(kind)
    if table is None:
        raise UnsupportedPatchType()
    if not isinstance(patch, dict):
        raise InvalidPatch(
            f"json: cannot unmarshal {_json_type_name(patch)} into Go value of type "
            "map[string]interface {}"
        )
    if not isinstance(document, dict):
        raise InvalidPatch("invalid JSON document")
    return _StrategicMerge(table).merge_map(copy.deepcopy(document), copy.deepcopy(patch), "")


# -- field sets (managedFields) -----------------------------------------------------------------

#: Fields no manager owns (structured-merge-diff's strip set in kube-apiserver).
_UNOWNED_METADATA = (
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "clusterName",
    "generation",
    "managedFields",
    "resourceVersion",
)

_ITEM: Any = object()  # the value recorded for a keyed list item: compared by its members


def _ownable(obj: JSONObject) -> JSONObject:
    """``obj`` without the fields field ownership ignores."""
    owned = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind")}
    metadata = owned.get("metadata")
    if isinstance(metadata, dict):
        owned["metadata"] = {k: v for k, v in metadata.items() if k not in _UNOWNED_METADATA}
        if not owned["metadata"]:
            del owned["metadata"]
    return owned


def _item_element(item: dict[str, JSONValue], rule: FieldRule) -> str | None:
    key: dict[str, JSONValue] = {}
    defaults = dict(rule.key_defaults)
    for name in rule.map_keys:
        if name in item:
            key[name] = item[name]
        elif name in defaults:
            key[name] = defaults[name]
    return "k:" + _canonical(key) if key else None


def _element_of(item: JSONValue, rule: FieldRule) -> str | None:
    """The path element naming ``item`` in a map- or set-typed list."""
    if rule.list_type == "set":
        return "v:" + _canonical(item)
    return _item_element(item, rule) if isinstance(item, dict) else None


def _members(
    value: JSONObject, rules: RuleTable, *, strict: bool = False
) -> dict[FieldPath, JSONValue]:
    """Every owned path in ``value`` with its leaf value (:data:`_ITEM` for keyed list items).

    :param strict: raise when a keyed list item lacks its keys (applied configurations).
    """
    found: dict[FieldPath, JSONValue] = {}

    def walk_object(obj: dict[str, JSONValue], dotted: str, path: FieldPath) -> None:
        for name, member in obj.items():
            child = _join(dotted, name)
            walk_value(member, rules.get(child, _NO_RULE), child, (*path, "f:" + name))

    def walk_value(value: JSONValue, rule: FieldRule, dotted: str, path: FieldPath) -> None:
        if isinstance(value, dict) and value and not rule.atomic:
            walk_object(value, dotted, path)
        elif isinstance(value, list) and rule.list_type in ("map", "set"):
            for item in value:
                element = _element_of(item, rule)
                if element is None:
                    if strict:
                        raise PatchNotApplicable(
                            ".".join(("", *dotted.split("."))) + ": associative list with keys "
                            "has an element that omits key field "
                            + ", ".join(f'"{key}"' for key in rule.map_keys)
                        )
                    found[path] = value
                    return
                if rule.list_type == "set":
                    found[(*path, element)] = item
                else:
                    assert isinstance(item, dict)
                    found[(*path, element)] = _ITEM
                    walk_object(item, dotted, (*path, element))
        else:
            found[path] = value

    walk_object(value, "", ())
    return found


def _encode_fields(paths: Iterable[FieldPath]) -> JSONObject:
    """A field set as a ``fieldsV1`` document."""
    tree: dict[str, Any] = {}
    members: set[FieldPath] = set(paths)
    for path in members:
        node = tree
        for element in path:
            node = node.setdefault(element, {})

    def encode(node: dict[str, Any], path: FieldPath) -> JSONObject:
        out: JSONObject = {}
        if node and path in members:
            out["."] = {}
        for element in sorted(node):
            out[element] = encode(node[element], (*path, element))
        return out

    return encode(tree, ())


def _decode_fields(document: JSONValue) -> set[FieldPath]:
    """The field set a ``fieldsV1`` document describes."""
    found: set[FieldPath] = set()

    def decode(node: JSONValue, path: FieldPath) -> None:
        if not isinstance(node, dict):
            return
        for element, child in node.items():
            if element == ".":
                found.add(path)
            elif isinstance(child, dict) and child:
                decode(child, (*path, element))
            else:
                found.add((*path, element))

    decode(document, ())
    return found


def _path_string(path: FieldPath) -> str:
    """``path`` in structured-merge-diff's notation: ``.spec.ports[port=80,protocol="TCP"]``."""
    parts = []
    for element in path:
        kind, text = element[:2], element[2:]
        if kind == "f:":
            parts.append("." + text)
        elif kind == "k:":
            key = json.loads(text)
            inner = ",".join(f"{name}={_canonical(key[name])}" for name in sorted(key))
            parts.append(f"[{inner}]")
        else:
            parts.append(f"[={text}]")
    return "".join(parts)


def _prefixes(paths: Iterable[FieldPath]) -> set[FieldPath]:
    """Every proper ancestor of every path."""
    return {path[:end] for path in paths for end in range(len(path))}


@dataclass
class _Manager:
    """One ``managedFields`` entry, decoded."""

    manager: str
    operation: str
    api_version: str
    time: str | None
    subresource: str
    fields: set[FieldPath] = field(default_factory=set)

    @property
    def identity(self) -> tuple[str, str, str, str]:
        # Appliers keep one entry whatever apiVersion they apply with; updaters get one per
        # apiVersion, as kube-apiserver's manager identifiers do.
        version = "" if self.operation == "Apply" else self.api_version
        return (self.manager, self.operation, version, self.subresource)

    def printed(self) -> str:
        """The manager as kube-apiserver names it in conflict messages."""
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
            if self.time:
                text += f" at {self.time}"
        return text

    def encode(self) -> JSONObject:
        entry: JSONObject = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
        }
        if self.time is not None:
            entry["time"] = self.time
        entry["fieldsType"] = "FieldsV1"
        entry["fieldsV1"] = _encode_fields(self.fields)
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


def _decode_managers(obj: JSONObject) -> dict[tuple[str, str, str, str], _Manager]:
    metadata = obj.get("metadata")
    entries = metadata.get("managedFields") if isinstance(metadata, dict) else None
    managers: dict[tuple[str, str, str, str], _Manager] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        decoded = _Manager(
            manager=str(entry.get("manager", "")),
            operation=str(entry.get("operation", "")),
            api_version=str(entry.get("apiVersion", "")),
            time=_string_or_none(entry.get("time")),
            subresource=str(entry.get("subresource", "")),
            fields=_decode_fields(entry.get("fieldsV1")),
        )
        managers[decoded.identity] = decoded
    return managers


def _string_or_none(value: JSONValue) -> str | None:
    return value if isinstance(value, str) else None


def _with_managers(obj: JSONObject, managers: Iterable[_Manager]) -> JSONObject:
    """``obj`` (modified in place and returned) carrying ``managers`` as its managedFields."""
    kept = [manager for manager in managers if manager.fields]
    kept.sort(key=lambda m: (m.operation, m.time or "", m.manager, m.api_version, m.subresource))
    metadata = obj.setdefault("metadata", {})
    assert isinstance(metadata, dict)
    if kept:
        metadata["managedFields"] = [manager.encode() for manager in kept]
    else:
        metadata.pop("managedFields", None)
    return obj


@dataclass(frozen=True)
class _Comparison:
    modified: set[FieldPath]
    added: set[FieldPath]
    removed: set[FieldPath]


def _compare(old: JSONObject | None, new: JSONObject, rules: RuleTable) -> _Comparison:
    before = _members(_ownable(old), rules) if old is not None else {}
    after = _members(_ownable(new), rules)
    return _Comparison(
        modified={
            path
            for path in before.keys() & after.keys()
            if before[path] is not after[path] and not json_equal(before[path], after[path])
        },
        added=set(after.keys() - before.keys()),
        removed=set(before.keys() - after.keys()),
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rules_for(obj: JSONObject, rules: Mapping[str, RuleTable]) -> RuleTable:
    kind = obj.get("kind")
    # Custom resources: without their schema's list types every list is atomic.
    return rules.get(kind, _METADATA_ONLY) if isinstance(kind, str) else _METADATA_ONLY


# -- server-side apply --------------------------------------------------------------------------


class _ApplyMerge:
    """structured-merge-diff's merge of an applied configuration into a live object."""

    def __init__(self, rules: RuleTable) -> None:
        self.rules = rules

    def merge_object(
        self, live: dict[str, JSONValue], applied: dict[str, JSONValue], dotted: str
    ) -> dict[str, JSONValue]:
        out = dict(live)
        for name, value in applied.items():
            if value is None:
                out.pop(name, None)
                continue
            child = _join(dotted, name)
            out[name] = self.merge_value(
                out.get(name), value, self.rules.get(child, _NO_RULE), child
            )
        return out

    def merge_value(
        self, live: JSONValue, applied: JSONValue, rule: FieldRule, dotted: str
    ) -> JSONValue:
        if isinstance(live, dict) and isinstance(applied, dict) and not rule.atomic:
            return self.merge_object(live, applied, dotted)
        if isinstance(live, list) and isinstance(applied, list) and rule.list_type:
            return self.merge_list(live, applied, rule, dotted)
        cleaned, _ = _clean(applied)
        return cleaned

    def merge_list(
        self, live: list[JSONValue], applied: list[JSONValue], rule: FieldRule, dotted: str
    ) -> list[JSONValue]:
        """Merge keyed (or set) lists, ordering the result the way structured-merge-diff does.

        Live-only items keep their place; items in both appear in the applied order; applied-only
        items appear where the applied configuration puts them.
        """
        left = [(_element_of(item, rule), item) for item in live]
        right = [(_element_of(item, rule), item) for item in applied]
        left_keys = {element for element, _ in left}
        right_keys = {element for element, _ in right}
        by_left = {element: item for element, item in left}
        shared = [element for element, _ in right if element in left_keys]
        done: set[str | None] = set()
        out: list[JSONValue] = []

        def merged(element: str | None, item: JSONValue) -> JSONValue:
            done.add(element)
            previous = by_left.get(element) if element in left_keys else None
            if rule.list_type == "map" and isinstance(previous, dict) and isinstance(item, dict):
                return self.merge_object(previous, item, dotted)
            cleaned, _ = _clean(item)
            return cleaned

        i = j = 0
        while i < len(left) or j < len(right):
            if i < len(left) and j < len(right):
                element = left[i][0]
                if element == right[j][0]:
                    out.append(merged(element, right[j][1]))
                    i += 1
                    j += 1
                    if shared and shared[0] == element:
                        shared.pop(0)
                    continue
                if element in right_keys and shared and shared[0] != element:
                    i += 1
                    continue
            if i < len(left):
                element = left[i][0]
                if element not in right_keys:
                    out.append(copy.deepcopy(left[i][1]))
                    i += 1
                    continue
                if element in done:
                    i += 1
            if j < len(right):
                element = right[j][0]
                out.append(merged(element, right[j][1]))
                j += 1
                if shared and shared[0] == element:
                    shared.pop(0)
        return out


def _child(container: dict[str, JSONValue] | list[JSONValue], key: str | int) -> JSONValue:
    if isinstance(container, dict):
        assert isinstance(key, str)
        return container[key]
    assert isinstance(key, int)
    return container[key]


def _remove_path(obj: JSONObject, path: FieldPath, rules: RuleTable, keep: set[FieldPath]) -> None:
    """Remove the field or list item at ``path``, then containers it leaves empty and unowned."""
    steps: list[tuple[dict[str, JSONValue] | list[JSONValue], str | int]] = []
    node: JSONValue = obj
    dotted = ""
    for element in path:
        if element.startswith("f:"):
            name = element[2:]
            if not isinstance(node, dict) or name not in node:
                return
            steps.append((node, name))
            dotted = _join(dotted, name)
            node = node[name]
        else:
            rule = rules.get(dotted, _NO_RULE)
            if not isinstance(node, list):
                return
            at = next(
                (i for i, item in enumerate(node) if _element_of(item, rule) == element), None
            )
            if at is None:
                return
            steps.append((node, at))
            node = node[at]
    for depth in range(len(steps) - 1, -1, -1):
        container, key = steps[depth]
        if depth < len(steps) - 1 and (_child(container, key) or path[: depth + 1] in keep):
            break
        if isinstance(container, dict):
            assert isinstance(key, str)
            del container[key]
        else:
            assert isinstance(key, int)
            del container[key]


def apply_server_side(
    live: KubeObject | None,
    applied: Any,
    manager: str,
    force: bool,
    *,
    now: str | None = None,
    subresource: str = "",
    rules: Mapping[str, RuleTable] = FIELD_RULES,
) -> KubeObject:
    """Server-side apply ``applied`` for ``manager``; create the object when ``live`` is ``None``.

    Merges the applied configuration into the live object (keyed lists by their
    ``+listMapKey``\\ s, sets as sets, atomic lists and structs whole), removes fields this manager
    applied before and no longer applies unless another manager owns them, and records
    ownership in ``metadata.managedFields`` (operation ``Apply``, ``fieldsV1`` in ``f:``/``k:``/
    ``v:`` notation). A live object without managedFields is first attributed whole to
    ``before-first-apply``, as kube-apiserver does.

    :param live: the stored object, or ``None`` to create.
    :param applied: the decoded apply patch (a full or partial object with apiVersion and kind).
    :param manager: the ``fieldManager`` query parameter.
    :param force: the ``force`` query parameter: take fields from other managers.
    :param now: the RFC 3339 time to record; the current UTC time when ``None``.
    :param subresource: the subresource applied to (``"status"``), if any.
    :param rules: rule tables by kind; unknown kinds (custom resources) get metadata rules only.
    :returns: the new object, with managedFields; the caller sets name, uid, resourceVersion.
    :raises InvalidPatch: the configuration is not an object or sets managedFields (400).
    :raises PatchNotApplicable: a keyed list item lacks its keys (422).
    :raises ApplyConflict: without ``force``, fields owned by others would change (409).
    """
    if not isinstance(applied, dict):
        raise InvalidPatch(
            f"json: cannot unmarshal {_json_type_name(applied)} into Go value of type "
            "map[string]interface {}"
        )
    metadata = applied.get("metadata")
    if isinstance(metadata, dict) and metadata.get("managedFields"):
        raise InvalidPatch("metadata.managedFields must be nil")
    stamp = now if now is not None else _now()
    table = _rules_for(applied if "kind" in applied else (live or {}), rules)
    version = applied.get("apiVersion")
    api_version = version if isinstance(version, str) else ""
    fields = set(_members(_ownable(applied), table, strict=True))
    merger = _ApplyMerge(table)
    mine = _Manager(manager, "Apply", api_version, stamp, subresource, fields)
    if live is None:
        created = merger.merge_object({}, applied, "")
        return _with_managers(created, [mine])

    managers = _decode_managers(live)
    base = copy.deepcopy(live)
    if not managers:
        live_version = live.get("apiVersion")
        before = _Manager(
            "before-first-apply",
            "Update",
            live_version if isinstance(live_version, str) else api_version,
            stamp,
            "",
        )
        before.fields = set(_members(_ownable(live), table))
        managers[before.identity] = before
    previous = managers.get(mine.identity)
    last = previous.fields if previous is not None else set()
    others = [m for key, m in managers.items() if key != mine.identity]

    result = merger.merge_object(base, applied, "")
    owned_elsewhere = set().union(*(m.fields for m in others)) if others else set()
    keep = fields | owned_elsewhere
    keep_with_ancestors = keep | _prefixes(keep)
    for path in sorted(last - keep_with_ancestors, key=len):
        _remove_path(result, path, table, keep_with_ancestors)

    comparison = _compare(live, result, table)
    changed = comparison.modified | comparison.added
    conflicts = [
        FieldConflict(other.printed(), _path_string(path))
        for other in others
        for path in sorted(other.fields & changed)
    ]
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    for other in others:
        other.fields -= changed | comparison.removed

    if (
        previous is not None
        and previous.fields == fields
        and previous.api_version == api_version
        and not (comparison.modified or comparison.added or comparison.removed)
    ):
        # A no-op apply leaves the entry (and its time) alone, so nothing needs writing.
        mine = previous
    return _with_managers(result, [*others, mine])


def record_update(
    live: KubeObject | None,
    new: KubeObject,
    manager: str,
    *,
    now: str | None = None,
    subresource: str = "",
    rules: Mapping[str, RuleTable] = FIELD_RULES,
) -> KubeObject:
    """Record field ownership for a write that is not an apply (create, update, patch).

    ``manager`` (the ``fieldManager`` parameter, or the user agent's program name as
    kube-apiserver defaults it, e.g. ``kubectl-edit``) takes the fields the write changed or
    added, as an ``Update`` entry; other managers lose them. Like kube-apiserver, an existing
    object that has no managedFields stays untracked until its first apply.

    :param live: the stored object, or ``None`` for a create.
    :param new: the object about to be stored; its own managedFields are ignored.
    :returns: ``new``'s copy with managedFields set.
    """
    result = copy.deepcopy(new)
    metadata = result.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    managers = _decode_managers(live) if live is not None else {}
    if live is not None and not managers:
        return result
    table = _rules_for(new, rules)
    version = new.get("apiVersion")
    me = _Manager(
        manager,
        "Update",
        version if isinstance(version, str) else "",
        now if now is not None else _now(),
        subresource,
    )
    comparison = _compare(live, result, table)
    changed = comparison.modified | comparison.added
    if not (changed or comparison.removed) and me.identity in managers:
        return _with_managers(result, managers.values())
    for other in managers.values():
        other.fields -= changed | comparison.removed
    previous = managers.pop(me.identity, None)
    me.fields = ((previous.fields if previous else set()) - comparison.removed) | changed
    return _with_managers(result, [*managers.values(), me])
