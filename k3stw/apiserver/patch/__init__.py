"""The four Kubernetes patch forms, as pure functions over JSON values.

* L{apply_json_patch}: RFC 6902 JSON patch (``application/json-patch+json``).
* L{apply_merge_patch}: RFC 7386 JSON merge patch (``application/merge-patch+json``).
* L{apply_strategic_merge_patch}: Kubernetes strategic merge patch
  (``application/strategic-merge-patch+json``), driven by a kind's L{RuleTable}.
* L{apply_server_side}: server-side apply (``application/apply-patch+yaml``), with
  ``metadata.managedFields`` ownership and conflicts; L{record_update} keeps ownership for
  every other write.

Merge rules are always passed in by the caller, which knows the resource (group and kind); a
kind declares them with the pieces of :mod:`k3stw.apiserver.patch.rules`.

Nothing here does I/O, reads a clock or touches Twisted. Inputs are never mutated; every result
is a new value that shares no containers with the inputs. Failures raise L{PatchError}
subclasses that carry the HTTP code, ``reason`` and message kube-apiserver answers with.
"""

from __future__ import annotations

from k3stw.apiserver.patch.apply import apply_server_side, record_update
from k3stw.apiserver.patch.errors import (
    CUSTOM_RESOURCE_PATCH_TYPES,
    ApplyConflict,
    FieldConflict,
    InvalidPatch,
    PatchError,
    PatchNotApplicable,
    PatchTestFailed,
    PatchTooLarge,
    StrategicMergeError,
    UnsupportedPatchType,
)
from k3stw.apiserver.patch.jsonpatch import MAX_JSON_PATCH_OPERATIONS, apply_json_patch
from k3stw.apiserver.patch.merge import apply_merge_patch
from k3stw.apiserver.patch.rules import FieldRule, RuleTable
from k3stw.apiserver.patch.strategic import apply_strategic_merge_patch
from k3stw.apiserver.patch.values import JSONObject, JSONValue, KubeObject, json_equal

__all__ = [
    "CUSTOM_RESOURCE_PATCH_TYPES",
    "MAX_JSON_PATCH_OPERATIONS",
    "ApplyConflict",
    "FieldConflict",
    "FieldRule",
    "InvalidPatch",
    "JSONObject",
    "JSONValue",
    "KubeObject",
    "PatchError",
    "PatchNotApplicable",
    "PatchTestFailed",
    "PatchTooLarge",
    "RuleTable",
    "StrategicMergeError",
    "UnsupportedPatchType",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_server_side",
    "apply_strategic_merge_patch",
    "json_equal",
    "record_update",
]
