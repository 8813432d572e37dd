"""
A small Kubernetes API client for k3stw's own components (kubelet, agent):
JSON objects in, JSON objects out, failures as the server's ``Status``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlencode

from k3stw.httpclient import HTTPSClient

Object = dict[str, Any]


#: Strings up to this long are shared between decoded objects (names, images,
#: timestamps, conditions); longer ones (certificates, scripts) rarely repeat.
SHARED_STRING = 64


def _shared_strings(pairs: list[tuple[str, Any]]) -> Object:
    # A node caches the same objects over and over (every pod has the same
    # field names, images, conditions): interned, they are held once, which
    # halves a cached pod.  Interned strings go when the last object does.
    intern = sys.intern
    return {
        intern(key): intern(value) if type(value) is str and len(value) <= SHARED_STRING else value
        for key, value in pairs
    }


def decode(text: bytes | str) -> Any:
    """JSON from the API, its field names and short strings shared with every other object's."""
    return json.loads(text, object_pairs_hook=_shared_strings)


def _document(body: bytes) -> Object:
    """A JSON answer; a body that is not JSON becomes a Status-like message."""
    try:
        document: Object = decode(body) if body else {}
    except ValueError:
        document = {"message": body[:200].decode("utf-8", "replace")}
    return document


class KubeAPIError(Exception):
    """A non-2xx answer; C{status} is the server's Status object (if it sent one)."""

    def __init__(self, method: str, path: str, code: int, status: Object) -> None:
        message = status.get("message") or f"{code}"
        super().__init__(f"{method} {path}: {code} {status.get('reason', '')}: {message}")
        self.code = code
        self.status = status
        self.reason = str(status.get("reason", ""))


class KubeAPI(Protocol):
    """The API as k3stw's own components use it (L{KubeClient}, or a test's fake)."""

    server_url: str

    async def call(
        self,
        method: str,
        path: str,
        body: Object | list[Any] | None = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> Object: ...

    async def watch(
        self, path: str, params: dict[str, str], on_event: Callable[[str, Object], None]
    ) -> None: ...

    async def get(self, path: str) -> Object: ...

    async def fetch_raw(self, path: str) -> bytes: ...

    async def create(self, path: str, obj: Object) -> Object: ...

    async def replace(self, path: str, obj: Object) -> Object: ...


class APIVerbs:
    """The REST verbs of a client, each one L{call}: shared by every client of the API."""

    async def call(
        self,
        method: str,
        path: str,
        body: Object | list[Any] | None = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> Object:
        raise NotImplementedError

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


class KubeClient(APIVerbs):
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
        document = _document(response.body)
        if not 200 <= response.code < 300:
            raise KubeAPIError(method, path, response.code, document)
        return document

    async def watch(
        self, path: str, params: dict[str, str], on_event: Callable[[str, Object], None]
    ) -> None:
        """
        Follow a watch of the collection at C{path} until the server ends it,
        handing each event to C{on_event(type, object)}.  An C{ERROR} event
        (such as 410 Gone: the resourceVersion is too old) or an answer that
        is not a watch raises L{KubeAPIError} once the stream has ended.
        """
        query = urlencode({**params, "watch": "1"})
        errors: list[Object] = []

        def on_line(line: bytes) -> None:
            try:
                event = decode(line)
                kind, obj = str(event["type"]), event["object"]
            except (ValueError, KeyError, TypeError):
                errors.append({"message": f"malformed watch event: {line[:200]!r}"})
                return
            if kind == "ERROR":
                errors.append(obj if isinstance(obj, dict) else {"message": str(obj)})
            else:
                on_event(kind, obj)

        url = f"{self.server_url}{path}?{query}"
        response = await self.http.stream_lines(url, on_line, {b"accept": b"application/json"})
        if not 200 <= response.code < 300:
            raise KubeAPIError("WATCH", path, response.code, _document(response.body))
        if errors:
            raise KubeAPIError("WATCH", path, int(errors[0].get("code", 500)), errors[0])

    async def fetch_raw(self, path: str) -> bytes:
        """The body of a GET of a path that is not the Kubernetes API (the supervisor's)."""
        return await self.http.fetch(self.server_url + path)
