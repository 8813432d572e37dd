"""
What goes into a configMap, secret, downwardAPI or projected volume: the
files, from the objects the kubelet read, in kube's words when it cannot
(``configmap references non-existent config key: k``).  Pure code; the
manager reads the objects and writes the files.
"""

from __future__ import annotations

import base64
import json
import math
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from k3stw.kubelet.volumes.atomic import FileProjection
from k3stw.machinery.objects import Object
from k3stw.machinery.quantity import QuantityError, parse_quantity

#: Volumes' file mode when the pod gives none (``defaultMode``).
DEFAULT_MODE = 0o644

_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")
_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")
#: Pod fields an env var may name besides metadata, by where they are in the pod.
_POD_FIELDS = {
    "spec.nodeName": ("spec", "nodeName"),
    "spec.serviceAccountName": ("spec", "serviceAccountName"),
    "status.hostIP": ("status", "hostIP"),
    "status.podIP": ("status", "podIP"),
}


class SourceError(Exception):
    """A volume's contents cannot be made; the message is the kubelet's."""


def _items(source: Mapping[str, Any]) -> list[Object]:
    return list(source.get("items") or [])


def key_payload(
    source: Mapping[str, Any],
    values: Mapping[str, bytes],
    default_mode: int,
    missing_key: str,
) -> dict[str, FileProjection]:
    """
    The files of a configMap or secret (kube's ``MakePayload``): every key, or
    the items' keys at their paths; a key the items name that is not there
    fails with C{missing_key} and the key, unless the source is optional.
    """
    items = _items(source)
    if not items:
        return {key: FileProjection(data, default_mode) for key, data in values.items()}
    payload: dict[str, FileProjection] = {}
    for item in items:
        key = str(item.get("key", ""))
        if key not in values:
            if source.get("optional"):
                continue
            raise SourceError(f"{missing_key}{key}")
        mode = item.get("mode")
        payload[str(item.get("path", key))] = FileProjection(
            values[key], default_mode if mode is None else int(mode)
        )
    return payload


def configmap_values(configmap: Mapping[str, Any]) -> dict[str, bytes]:
    """A ConfigMap's keys: ``data`` as UTF-8, ``binaryData`` decoded."""
    values = {k: str(v).encode() for k, v in (configmap.get("data") or {}).items()}
    for key, encoded in (configmap.get("binaryData") or {}).items():
        values[key] = base64.b64decode(encoded)
    return values


def secret_values(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's keys, decoded."""
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def configmap_payload(
    source: Mapping[str, Any], configmap: Mapping[str, Any] | None, default_mode: int
) -> dict[str, FileProjection]:
    """A configMap source's files (none for a missing optional ConfigMap)."""
    values = configmap_values(configmap) if configmap is not None else {}
    return key_payload(
        source, values, default_mode, "configmap references non-existent config key: "
    )


def secret_payload(
    source: Mapping[str, Any], secret: Mapping[str, Any] | None, default_mode: int
) -> dict[str, FileProjection]:
    """A secret source's files (none for a missing optional Secret)."""
    values = secret_values(secret) if secret is not None else {}
    return key_payload(source, values, default_mode, "references non-existent secret key: ")


def format_map(values: Mapping[str, str]) -> str:
    """Labels or annotations as the downward API writes them: sorted ``key="value"`` lines."""
    return "\n".join(
        f"{key}={json.dumps(values[key], ensure_ascii=False)}" for key in sorted(values)
    )


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """A pod's ``fieldRef`` value in a downwardAPI volume (kube's ``ExtractFieldPathAsString``)."""
    meta = pod.get("metadata") or {}
    subscript = _SUBSCRIPT.match(field_path)
    if subscript is not None:
        return str((meta.get(subscript.group(1)) or {}).get(subscript.group(2), ""))
    if field_path in ("metadata.labels", "metadata.annotations"):
        return format_map(meta.get(field_path.split(".", 1)[1]) or {})
    if field_path in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(meta.get(field_path.split(".", 1)[1], ""))
    raise SourceError(f"unsupported fieldPath: {field_path}")


#: Resources a resourceFieldRef may name, and whether they count in CPU cores.
_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def resource_value(
    pod: Mapping[str, Any], reference: Mapping[str, Any], allocatable: Mapping[str, Any]
) -> str:
    """
    A container's limit or request as a ``resourceFieldRef`` gives it, divided
    by its divisor and rounded up; a limit the container does not set is the
    node's allocatable amount.
    """
    name = str(reference.get("containerName", ""))
    resource = str(reference.get("resource", ""))
    spec = pod.get("spec") or {}
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    found = [c for c in containers if c.get("name") == name]
    if not found:
        raise SourceError(f"container {name} not found")
    kind, _, what = resource.partition(".")
    if kind not in ("limits", "requests") or not (
        what in _RESOURCES or what.startswith("hugepages-")
    ):
        raise SourceError(f"unsupported container resource : {resource}")
    amounts = dict((found[0].get("resources") or {}).get(kind) or {})
    if kind == "limits":
        for key, value in allocatable.items():
            amounts.setdefault(key, value)
    try:
        amount = parse_quantity(amounts.get(what, "0")).value
        divisor = parse_quantity(reference.get("divisor") or "1").value
    except QuantityError as e:
        raise SourceError(str(e)) from None
    if what == "cpu":
        millis, divisor_millis = math.ceil(amount * 1000), math.ceil(divisor * 1000)
        return str(math.ceil(millis / divisor_millis))
    return str(math.ceil(math.ceil(amount) / math.ceil(divisor)))


def downward_payload(
    items: list[Object],
    pod: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    default_mode: int,
) -> dict[str, FileProjection]:
    """A downwardAPI source's files; every item's error, aggregated as kube does."""
    payload: dict[str, FileProjection] = {}
    errors: list[str] = []
    for item in items:
        mode = item.get("mode")
        data = b""
        try:
            if item.get("fieldRef"):
                data = field_value(pod, str(item["fieldRef"].get("fieldPath", ""))).encode()
            elif item.get("resourceFieldRef"):
                data = resource_value(pod, item["resourceFieldRef"], allocatable).encode()
        except SourceError as e:
            errors.append(str(e))
        payload[posixpath.normpath(str(item.get("path", "")))] = FileProjection(
            data, default_mode if mode is None else int(mode)
        )
    if errors:
        raise SourceError(aggregate(errors))
    return payload


def aggregate(messages: list[str]) -> str:
    """Several errors in one message, as kube's ``NewAggregate`` prints them."""
    return messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"


def needs_allocatable(items: list[Object]) -> bool:
    """Whether a downwardAPI source needs the node's allocatable resources."""
    return any(item.get("resourceFieldRef") for item in items)


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
    """
    The variables of a container a ``subPathExpr`` may use: plain values and
    pod fields, each expanded with those before it as the kubelet does;
    variables from ConfigMaps, Secrets and resources are not resolved here.
    """
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        name = str(var.get("name", ""))
        if "value" in var:
            env[name] = expand(str(var["value"]), env)
            continue
        path = str(((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", ""))
        if path in _POD_FIELDS:
            part, key = _POD_FIELDS[path]
            env[name] = str((pod.get(part) or {}).get(key) or "")
        elif path:
            try:
                env[name] = field_value(pod, path)
            except SourceError:
                continue
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """kube's ``$(VAR)`` expansion: known names replaced, others kept, ``$$`` an escaped ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)
