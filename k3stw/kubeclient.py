"""
A small Kubernetes API client for k3stw's own components (kubelet, agent):
JSON objects in, JSON objects out, failures as the server's ``Status``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from k3stw.httpclient import HTTPSClient

Object = dict[str, Any]


class KubeAPIError(Exception):
    """A non-2xx answer; C{status} is the server's Status object (if it sent one)."""

    def __init__(self, method: str, path: str, code: int, status: Object) -> None:
        message = status.get("message") or f"{code}"
        super().__init__(f"{method} {path}: {code} {status.get('reason', '')}: {message}")
        self.code = code
        self.status = status
        self.reason = str(status.get("reason", ""))


class KubeClient:
    """
    Requests to one API server URL through an L{HTTPSClient} (whose TLS policy
    carries the caller's identity).
    """

    def __init__(self, http: HTTPSClient, server_url: str) -> None:
        self.http = http
        self.server_url = server_url.rstrip("/")

    async def call(
        self,
        method: str,
        path: str,
        body: Object | list[Any] | None = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> Object:
        """One API call; the decoded answer, or L{KubeAPIError}."""
        url = self.server_url + path + (f"?{urlencode(params)}" if params else "")
        headers = {b"accept": b"application/json"}
        data = None
        if body is not None:
            headers[b"content-type"] = content_type.encode("ascii")
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        response = await self.http.request(method.encode("ascii"), url, headers, data)
        try:
            document = json.loads(response.body) if response.body else {}
        except ValueError:
            document = {"message": response.body[:200].decode("utf-8", "replace")}
        if not 200 <= response.code < 300:
            raise KubeAPIError(method, path, response.code, document)
        result: Object = document
        return result

    async def get(self, path: str) -> Object:
        return await self.call("GET", path)

    async def create(self, path: str, obj: Object) -> Object:
        """POST C{obj} to the collection at C{path}."""
        return await self.call("POST", path, obj)

    async def replace(self, path: str, obj: Object) -> Object:
        return await self.call("PUT", path, obj)

    async def merge_patch(self, path: str, patch: Object) -> Object:
        return await self.call("PATCH", path, patch, "application/merge-patch+json")

    async def delete(self, path: str) -> Object:
        return await self.call("DELETE", path)
