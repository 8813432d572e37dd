"""
The ``scale`` subresource (``kubectl scale``, autoscalers): an
``autoscaling/v1`` Scale that reads and writes an object's ``spec.replicas``,
for Deployments, ReplicaSets, StatefulSets and ReplicationControllers.
"""

from __future__ import annotations

from typing import Any

from k3stw.apiserver import patch as patching
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError, bad_request, conflict, invalid
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.labels import format_labels, label_selector_from_spec
from k3stw.machinery.objects import Object


def scale_of(obj: Object) -> Object:
    """The Scale of C{obj}: its replicas wanted and seen, and its pods' selector as text."""
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    selector = spec.get("selector")
    if isinstance(selector, dict) and ("matchLabels" in selector or "matchExpressions" in selector):
        text = str(label_selector_from_spec(selector))
    else:
        # A ReplicationController's selector is a plain label map.
        text = format_labels(selector) if selector else ""
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in metadata
        },
        "spec": {"replicas": spec.get("replicas", 0)},
        "status": {
            "replicas": (obj.get("status") or {}).get("replicas", 0),
            "selector": text,
        },
    }


def _replicas(scale: Any, name: str) -> int:
    replicas = (scale.get("spec") or {}).get("replicas", 0) if isinstance(scale, dict) else None
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise invalid(
            "Scale.autoscaling",
            name,
            [("spec.replicas", f"Invalid value: {replicas!r}: must be an integer")],
        )
    if replicas < 0:
        raise invalid(
            "Scale.autoscaling",
            name,
            [("spec.replicas", f"Invalid value: {replicas}: must be greater than or equal to 0")],
        )
    return replicas


async def write_scale(
    store: ObjectStore,
    resource: ResourceType,
    namespace: str | None,
    name: str,
    change: Any,
    manager: str | None = None,
) -> Object:
    """
    Set the object's replicas from the Scale C{change} makes of the current one:
    C{change} is the new Scale (PUT) or a function of the current Scale (PATCH).
    A PUT's ``metadata.resourceVersion``, if given, must be the object's.
    """

    def scaled(current: Object) -> Object:
        wanted = change(scale_of(current)) if callable(change) else change
        version = ((wanted or {}).get("metadata") or {}).get("resourceVersion")
        if version and version != current["metadata"].get("resourceVersion"):
            raise conflict(resource.plural, resource.group, name)
        current.setdefault("spec", {})["replicas"] = _replicas(wanted, name)
        return current

    try:
        updated = await store.guaranteed_update(resource, namespace, name, scaled, manager)
    except patching.PatchError as e:
        raise StatusError(getattr(e, "code", 400), str(e)) from None
    return scale_of(updated)


def patched_scale(media: str, body: Any) -> Any:
    """The function of the current Scale that a PATCH of C{media} makes."""

    def apply(current: Object) -> Object:
        if media == "application/json-patch+json":
            result = patching.apply_json_patch(current, body)
        elif media == "application/merge-patch+json":
            result = patching.apply_merge_patch(current, body)
        elif media == "application/strategic-merge-patch+json":
            result = patching.apply_strategic_merge_patch(current, body, {})
        else:
            raise StatusError(415, f"the patch type {media} is not supported on scale")
        if not isinstance(result, dict):
            raise bad_request("the patch did not produce an object")
        return result

    return apply
