"""RFC 7386 JSON merge patch (``application/merge-patch+json``)."""

from __future__ import annotations

import copy
from typing import Any

from k3stw.apiserver.patch.values import JSONValue


def apply_merge_patch(document: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch.

    A patch that is not an object replaces the document whole, as the RFC says; kube-apiserver
    answers a ``null`` patch, and a result that is not an object, with 400 BadRequest, which is
    the caller's check.

    :return: the patched document, a new value.
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
