"""
``namespaces/<name>/finalize``: the one way to change a namespace's
``spec.finalizers``, which hold a terminating namespace until its contents
are gone.  The namespace controller clears its own this way, and an admin
clears a finalizer whose controller is gone (``kubectl replace --raw
/api/v1/namespaces/x/finalize -f ns.json``), which lets the namespace go.
"""

from __future__ import annotations

import re
from typing import Any

from k3stw.apiserver.kinds import namespaces
from k3stw.apiserver.status import invalid
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.objects import Object

#: A finalizer is a qualified name: ``[prefix/]name`` (kube's IsQualifiedName).
_QUALIFIED = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def _finalizers(name: str, body: Any) -> list[str]:
    spec = body.get("spec") if isinstance(body, dict) else None
    finalizers = (spec or {}).get("finalizers") if isinstance(spec, dict) else None
    if finalizers is None:
        return []
    if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
        raise invalid("Namespace", name, [("spec.finalizers", "Invalid value: must be a list")])
    causes = [
        (
            f"spec.finalizers[{index}]",
            f'Invalid value: "{finalizer}": name part must consist of alphanumeric '
            "characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        )
        for index, finalizer in enumerate(finalizers)
        if not _QUALIFIED.match(finalizer) or len(finalizer.rpartition("/")[0]) > 253
    ]
    if causes:
        raise invalid("Namespace", name, causes)
    return list(dict.fromkeys(finalizers))


async def finalize(store: ObjectStore, name: str, body: Any, manager: str | None) -> Object:
    """Set namespace C{name}'s ``spec.finalizers`` to C{body}'s; the namespace, as stored."""
    finalizers = _finalizers(name, body)

    def replace(namespace: Object) -> Object:
        spec = namespace.setdefault("spec", {})
        if finalizers:
            spec["finalizers"] = finalizers
        else:
            spec.pop("finalizers", None)
        return namespace

    return await store.guaranteed_update(
        namespaces.RESOURCE, None, name, replace, manager, subresource="finalize"
    )
