"""Kubernetes ``Status`` objects: how every error leaves a k3stw server."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from twisted.web.iweb import IRequest

#: Kubernetes' StatusReason for each HTTP code it uses.
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status(
    code: int, message: str, details: dict[str, Any] | None = None, reason: str | None = None
) -> dict[str, Any]:
    """A ``v1.Status`` failure object."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, HTTPStatus(code).phrase.replace(" ", "")),
        "details": details or {},
        "code": code,
    }


def send_status(
    request: IRequest, code: int, message: str, details: dict[str, Any] | None = None
) -> bytes:
    """Set C{request}'s code and headers for a Status; return the body to write."""
    return send_json(request, code, status(code, message, details))


def send_json(request: IRequest, code: int, document: object) -> bytes:
    """Set C{request}'s code and the API's headers; return C{document} as the body."""
    return send_encoded(request, code, json.dumps(document, separators=(",", ":")).encode())


def send_encoded(request: IRequest, code: int, body: bytes) -> bytes:
    """L{send_json} of a document already encoded."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-cache, private")
    return body


class StatusError(Exception):
    """
    A failure the API answers with a ``Status`` object.

    :ivar reason: overrides the reason of C{code} (``AlreadyExists`` is a 409 too).
    :ivar details: ``name``, ``group``, ``kind`` (the resource) and ``causes``.
    """

    def __init__(
        self,
        code: int,
        message: str,
        details: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}
        self.reason = reason

    def status(self) -> dict[str, Any]:
        return status(self.code, self.message, self.details, self.reason)


def _details(resource: str, group: str, name: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name is not None:
        details["name"] = name
    if group:
        details["group"] = group
    details["kind"] = resource
    return details


def _named(resource: str, group: str, name: str) -> str:
    qualified = f"{resource}.{group}" if group else resource
    return f'{qualified} "{name}"'


def not_found(resource: str, group: str, name: str) -> StatusError:
    """``configmaps "x" not found``, as kube-apiserver words it."""
    return StatusError(
        404, f"{_named(resource, group, name)} not found", _details(resource, group, name)
    )


def forbidden(resource: str, group: str, name: str, message: str) -> StatusError:
    """``pods "x" is forbidden: <why>``, as an admission plugin refuses an object."""
    return StatusError(
        403,
        f"{_named(resource, group, name)} is forbidden: {message}",
        _details(resource, group, name),
    )


def already_exists(resource: str, group: str, name: str) -> StatusError:
    return StatusError(
        409,
        f"{_named(resource, group, name)} already exists",
        _details(resource, group, name),
        reason="AlreadyExists",
    )


def conflict(resource: str, group: str, name: str) -> StatusError:
    """The optimistic-concurrency 409 that update loops retry on."""
    return StatusError(
        409,
        f"Operation cannot be fulfilled on {_named(resource, group, name)}: the object has "
        "been modified; please apply your changes to the latest version and try again",
        _details(resource, group, name),
    )


#: kube-apiserver's 405 message.
NOT_ALLOWED = "the server does not allow this method on the requested resource"
NAMESPACE_MISMATCH = (
    "the namespace of the provided object does not match the namespace sent on the request"
)


def invalid(kind: str, name: str, causes: list[tuple[str, str]], group: str = "") -> StatusError:
    """
    A 422 listing each C{(field, message)}, as kube-apiserver's validation
    does (``Deployment.apps "web" is invalid: ...``; kubectl prints the kind).
    """
    text = "; ".join(f"{field}: {message}" for field, message in causes)
    qualified = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    return StatusError(
        422,
        f'{qualified} "{name}" is invalid: {text}',
        {
            **details,
            "causes": [
                {"reason": "FieldValueInvalid", "message": message, "field": field}
                for field, message in causes
            ],
        },
    )


def gone(message: str) -> StatusError:
    return StatusError(410, message)


def bad_request(message: str) -> StatusError:
    return StatusError(400, message)
