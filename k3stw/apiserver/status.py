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


def status(code: int, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``v1.Status`` failure object."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": REASONS.get(code, HTTPStatus(code).phrase.replace(" ", "")),
        "details": details or {},
        "code": code,
    }


def send_status(
    request: IRequest, code: int, message: str, details: dict[str, Any] | None = None
) -> bytes:
    """Set C{request}'s code and headers for a Status; return the body to write."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-cache, private")
    return json.dumps(status(code, message, details)).encode("utf-8")
