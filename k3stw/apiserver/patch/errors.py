"""The errors the patch forms raise, each carrying the answer kube-apiserver gives.

Every error is a L{PatchError} with the HTTP code, ``Status`` reason, message and details
kube-apiserver answers the same failure with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from k3stw.apiserver.patch.values import JSONValue, json_type_name

#: The patch content types kube-apiserver accepts for custom resources.
CUSTOM_RESOURCE_PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
)


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
    """A JSON patch has too many operations (413).

    See L{k3stw.apiserver.patch.jsonpatch.MAX_JSON_PATCH_OPERATIONS}.
    """

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


def cannot_unmarshal(value: JSONValue, go_type: str) -> InvalidPatch:
    """The error Go's ``encoding/json`` gives when ``value`` does not decode into ``go_type``."""
    return InvalidPatch(
        f"json: cannot unmarshal {json_type_name(value)} into Go value of type {go_type}"
    )
