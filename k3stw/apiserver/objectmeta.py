"""
The rules of every object's ``metadata``, as kube-apiserver's
``ValidateObjectMeta`` states them: a name (or ``generateName``) each kind
checks with its own rule, label keys and values, annotation keys and their
total size, and finalizer names.  The object store applies them to every
write, before the kind's own validation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from k3stw.apiserver.fielderrors import Cause, invalid
from k3stw.machinery.labels import (
    dns1035_label_errors,
    dns_label_errors,
    dns_subdomain_errors,
    label_key_errors,
    label_value_errors,
)
from k3stw.machinery.objects import Object

#: A kind's name rule: what is wrong with a name (``prefix``: a ``generateName``).
NameRule = Callable[[str, bool], list[str]]

#: kube-apiserver's limit on the annotations of one object, keys and values together.
TOTAL_ANNOTATION_SIZE = 256 * 1024


def _mask_trailing_dash(name: str, prefix: bool) -> str:
    # A generateName may end in "-": the generated suffix follows it.
    return name[:-1] if prefix and len(name) > 1 and name.endswith("-") else name


def dns_subdomain_name(name: str, prefix: bool) -> list[str]:
    """Most kinds' names: a DNS-1123 subdomain."""
    return dns_subdomain_errors(_mask_trailing_dash(name, prefix))


def dns_label_name(name: str, prefix: bool) -> list[str]:
    """A DNS-1123 label (namespaces)."""
    return dns_label_errors(_mask_trailing_dash(name, prefix))


def dns1035_label_name(name: str, prefix: bool) -> list[str]:
    """A DNS-1035 label (services)."""
    return dns1035_label_errors(_mask_trailing_dash(name, prefix))


def path_segment_name(name: str, prefix: bool) -> list[str]:
    """Anything that fits in a URL path segment (RBAC's kinds: ``system:node``)."""
    errors = []
    if not prefix and name in (".", ".."):
        errors.append(f"may not be '{name}'")
    errors.extend(f"may not contain '{c}'" for c in "/%" if c in name)
    return errors


def name_causes(metadata: Mapping[str, Any], rule: NameRule) -> list[Cause]:
    """``metadata.name`` and ``metadata.generateName`` by the kind's C{rule}."""
    causes = []
    generate = metadata.get("generateName")
    if isinstance(generate, str) and generate:
        causes += [invalid("metadata.generateName", generate, m) for m in rule(generate, True)]
    name = metadata.get("name")
    if not name:
        if not generate:
            causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif isinstance(name, str):
        causes += [invalid("metadata.name", name, m) for m in rule(name, False)]
    return causes


def metadata_causes(obj: Object, rule: NameRule | None) -> list[Cause]:
    """
    Everything wrong with C{obj}'s metadata, in kube-apiserver's order and words.

    :param rule: the kind's name rule; None on an update (a name never changes).
    """
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return []
    causes = [] if rule is None else name_causes(metadata, rule)
    labels = metadata.get("labels")
    if isinstance(labels, Mapping):
        for key, value in labels.items():
            causes += [invalid("metadata.labels", key, m) for m in label_key_errors(key)]
            if isinstance(value, str):
                causes += [invalid("metadata.labels", value, m) for m in label_value_errors(value)]
    annotations = metadata.get("annotations")
    if isinstance(annotations, Mapping):
        size = 0
        for key, value in annotations.items():
            errors = label_key_errors(key.lower())
            causes += [invalid("metadata.annotations", key, m) for m in errors]
            size += len(key) + (len(value) if isinstance(value, str) else 0)
        if size > TOTAL_ANNOTATION_SIZE:
            causes.append(
                (
                    "metadata.annotations",
                    f"Too long: may not be more than {TOTAL_ANNOTATION_SIZE} bytes",
                )
            )
    finalizers = metadata.get("finalizers")
    if isinstance(finalizers, list):
        for finalizer in finalizers:
            if isinstance(finalizer, str):
                errors = label_key_errors(finalizer)
                causes += [invalid("metadata.finalizers", finalizer, m) for m in errors]
    return causes
