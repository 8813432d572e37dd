"""
In-memory fakes of k3stw's own interfaces, shared by the unit tests.

L{FakeKubeClient} stands in for L{k3stw.kubeclient.KubeClient}: the same
methods over a dictionary of objects, with the API server's rules that the
callers depend on (409 on create of an existing name, resourceVersion
checks, the status subresource, 404, lists and watches of a collection) and
switches to make it fail.  L{FakeListWatch} is a scriptable informer source.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from k3stw.apiserver.patch import apply_merge_patch
from k3stw.kubeclient import APIVerbs, KubeAPIError, Object
from k3stw.kubelet.volumes.mounter import MountError
from k3stw.machinery.source import EventSink, IListWatch, IWatchStream, Listed
from k3stw.machinery.times import rfc3339

#: Kinds whose status only the status subresource writes.
_STATUS_KINDS = {"Node"}


def api_error(method: str, path: str, code: int, reason: str, message: str) -> KubeAPIError:
    """The error L{KubeClient} raises for an answer with this Status."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }
    return KubeAPIError(method, path, code, status)


class FakeKubeClient(APIVerbs):
    """
    A Kubernetes API in memory, behind L{KubeClient}'s methods.

    :ivar objects: stored objects by their item path (``/api/v1/nodes/n1``).
    :ivar requests: every call as ``(method, path)``, in order.
    :ivar bodies: every call's body, by ``(method, path)``, in order.
    :ivar down: every call fails as a refused connection.
    :ivar hang: every call waits until it is cancelled (a server that never answers).
    :ivar failures: errors the next calls raise, one each, before anything else.
    """

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self.server_url = "https://127.0.0.1:6443"
        self.clock = clock
        self.objects: dict[str, Object] = {}
        self.raw: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.bodies: dict[tuple[str, str], list[Any]] = {}
        self.hang = False
        self.failures: list[Exception] = []
        self._down = False
        self._revisions = itertools.count(1)
        self._version = 0
        self._watches: list[_FakeWatch] = []

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, down: bool) -> None:
        """A server that goes down breaks every watch, as a lost connection does."""
        self._down = down
        if down:
            watches, self._watches = self._watches, []
            for watch in watches:
                watch.ended.errback(ConnectionRefusedError("Connection was refused by other side"))

    # Test controls

    def fail_next(self, code: int, count: int = 1) -> None:
        """Answer the next C{count} calls with a C{code} Status."""
        for _ in range(count):
            self.failures.append(api_error("", "", code, "InternalError", f"fake {code}"))

    def put_object(self, path: str, obj: Object) -> Object:
        """Store C{obj} at C{path} as another writer would: a new resourceVersion, a uid."""
        stored = copy.deepcopy(obj)
        metadata = stored.setdefault("metadata", {})
        metadata.setdefault("uid", str(uuid.uuid4()))
        self._version = next(self._revisions)
        metadata["resourceVersion"] = str(self._version)
        kind = "MODIFIED" if path in self.objects else "ADDED"
        self.objects[path] = stored
        self._notify(kind, path, stored)
        return copy.deepcopy(stored)

    def remove_object(self, path: str) -> Object:
        """Delete the object at C{path} as another writer would."""
        removed = self.objects.pop(path)
        self._version = next(self._revisions)
        self._notify("DELETED", path, removed)
        return removed

    def _notify(self, kind: str, path: str, obj: Object) -> None:
        collection, _, name = path.rpartition("/")
        for watch in list(self._watches):
            if _in(collection, watch.collection) and watch.selects(name, obj):
                watch.on_event(kind, copy.deepcopy(obj))

    def count(self, method: str, path: str) -> int:
        return sum(1 for request in self.requests if request == (method, path))

    # KubeClient's interface

    async def call(
        self,
        method: str,
        path: str,
        body: Object | list[Any] | None = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> Object:
        self.requests.append((method, path))
        self.bodies.setdefault((method, path), []).append(copy.deepcopy(body))
        if self.hang:
            await Deferred()
        if self.down:
            raise ConnectionRefusedError("Connection was refused by other side")
        if self.failures:
            raise self.failures.pop(0)
        assert body is None or isinstance(body, dict)
        if method == "GET" and params is not None:
            return self._list(path, params)
        if method == "GET":
            return self._get(method, path)
        if method == "POST":
            assert body is not None
            return self._create(method, path, body)
        if method in ("PUT", "PATCH"):
            assert body is not None
            return self._update(method, path, body, content_type)
        if method == "DELETE":
            self._get(method, path)
            return self.remove_object(path)
        raise api_error(method, path, 405, "MethodNotAllowed", "method not allowed")

    async def watch(
        self, path: str, params: dict[str, str], on_event: Callable[[str, Object], None]
    ) -> None:
        """Follow the collection at C{path} (one name, with a ``metadata.name`` selector)."""
        self.requests.append(("WATCH", path))
        if self.hang:
            await Deferred()
        if self.down:
            raise ConnectionRefusedError("Connection was refused by other side")
        watch = _FakeWatch(path, params.get("fieldSelector", ""), on_event)
        self._watches.append(watch)
        try:
            await watch.ended
        finally:
            if watch in self._watches:
                self._watches.remove(watch)

    def end_watches(self) -> None:
        """The server ends every watch (its timeout): clients watch again."""
        watches, self._watches = self._watches, []
        for watch in watches:
            watch.ended.callback(None)

    async def fetch_raw(self, path: str) -> bytes:
        """The supervisor's paths: whatever the test put in L{raw}."""
        self.requests.append(("GET", path))
        if self.down:
            raise ConnectionRefusedError("Connection was refused by other side")
        if path not in self.raw:
            raise api_error("GET", path, 404, "NotFound", "404 page not found")
        return self.raw[path]

    # The rules

    def _get(self, method: str, path: str) -> Object:
        stored = self.objects.get(path)
        if stored is None:
            name = path.rsplit("/", 1)[-1]
            raise api_error(method, path, 404, "NotFound", f'"{name}" not found')
        return copy.deepcopy(stored)

    def _list(self, collection: str, params: dict[str, str]) -> Object:
        selector = params.get("fieldSelector", "")
        items = [
            copy.deepcopy(obj)
            for path, obj in sorted(self.objects.items())
            if _in(path.rpartition("/")[0], collection)
            and _selected(selector, path.rpartition("/")[2], obj)
        ]
        return {"items": items, "metadata": {"resourceVersion": str(self._version)}}

    def _create(self, method: str, collection: str, body: Object) -> Object:
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {})
        name = metadata["name"]
        path = f"{collection}/{name}"
        if path in self.objects:
            raise api_error(method, collection, 409, "AlreadyExists", f'"{name}" already exists')
        if "/namespaces/" in collection:
            metadata["namespace"] = collection.split("/namespaces/", 1)[1].split("/", 1)[0]
        metadata["uid"] = str(uuid.uuid4())
        metadata.pop("resourceVersion", None)
        if self.clock is not None:
            metadata["creationTimestamp"] = rfc3339(self.clock.seconds())
        return self.put_object(path, obj)

    def _update(self, method: str, path: str, body: Object, content_type: str) -> Object:
        status_only = path.endswith("/status")
        item = path.removesuffix("/status") if status_only else path
        current = self._get(method, item)
        if method == "PATCH":
            assert content_type == "application/merge-patch+json"
            new = apply_merge_patch(current, body)
        else:
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise api_error(
                    method,
                    path,
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                )
            new = copy.deepcopy(body)
        if status_only:
            updated = copy.deepcopy(current)
            updated["status"] = new.get("status", {})
        else:
            updated = new
            updated.setdefault("metadata", {})
            for kept in ("uid", "name", "namespace", "creationTimestamp"):
                if kept in current["metadata"]:
                    updated["metadata"][kept] = current["metadata"][kept]
            if current.get("kind") in _STATUS_KINDS and "status" in current:
                updated["status"] = current["status"]
        return self.put_object(item, updated)


def _in(collection: str, asked: str) -> bool:
    """Whether items of C{collection} are in the collection C{asked} (all namespaces' too)."""
    if collection == asked:
        return True
    prefix, _, plural = asked.rpartition("/")
    start, _, rest = collection.partition("/namespaces/")
    return start == prefix and rest.count("/") == 1 and rest.endswith("/" + plural)


def _selected(selector: str, name: str, obj: Object) -> bool:
    """A ``metadata.name=``, ``spec.nodeName=`` or (Secrets') ``type=`` field selector's verdict."""
    if not selector:
        return True
    field, _, value = selector.partition("=")
    if field == "spec.nodeName":
        return bool((obj.get("spec") or {}).get("nodeName") == value)
    if field == "type":
        return bool(obj.get("type") == value)
    return name == value


class _FakeWatch:
    def __init__(
        self, collection: str, selector: str, on_event: Callable[[str, Object], None]
    ) -> None:
        self.collection = collection
        self.selector = selector
        self.on_event = on_event
        self.ended: Deferred[None] = Deferred()

    def selects(self, name: str, obj: Object) -> bool:
        return _selected(self.selector, name, obj)


@implementer(IWatchStream)
class FakeWatchStream:
    """A watch the test drives: L{FakeListWatch.send} delivers, L{end} and L{fail} finish it."""

    def __init__(self, resource_version: str, sink: EventSink) -> None:
        self.resource_version = resource_version
        self.sink = sink
        self.ended: Deferred[None] = Deferred()
        self.cancelled = False

    def end(self) -> None:
        self.ended.callback(None)

    def fail(self, error: Exception) -> None:
        self.ended.errback(error)

    def cancel(self) -> None:
        self.cancelled = True
        if not self.ended.called:
            self.ended.errback(CancelledError())


@implementer(IListWatch)
class FakeListWatch:
    """
    An L{IListWatch} whose objects the test sets, and whose lists and watch
    streams it can fail, end and expire.

    :ivar objects: what the next list returns, by key.
    :ivar list_failures: errors the next lists raise, one each.
    :ivar watches: every watch opened, in order.
    """

    description = "fakes"

    def __init__(self) -> None:
        self.objects: dict[str, Object] = {}
        self.version = 0
        self.list_failures: list[Exception] = []
        self.lists = 0
        self.watches: list[FakeWatchStream] = []

    def watch(self, resource_version: str, sink: EventSink) -> Deferred[IWatchStream]:
        stream = FakeWatchStream(resource_version, sink)
        self.watches.append(stream)
        return succeed(stream)

    @property
    def stream(self) -> FakeWatchStream:
        """The newest watch."""
        return self.watches[-1]

    def list(self) -> Deferred[Listed]:
        self.lists += 1
        if self.list_failures:
            failed: Deferred[Listed] = Deferred()
            failed.errback(self.list_failures.pop(0))
            return failed
        items = [copy.deepcopy(self.objects[key]) for key in sorted(self.objects)]
        return succeed(Listed(items, str(self.version)))

    def put(self, name: str, namespace: str = "", **fields: Any) -> Object:
        """Store an object (a new resourceVersion) without telling any watch."""
        self.version += 1
        obj: Object = {"metadata": {"name": name, "resourceVersion": str(self.version)}, **fields}
        if namespace:
            obj["metadata"]["namespace"] = namespace
        key = f"{namespace}/{name}" if namespace else name
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def send(self, kind: str, name: str, namespace: str = "", **fields: Any) -> Object:
        """Change an object and deliver the event to the newest watch."""
        if kind == "DELETED":
            key = f"{namespace}/{name}" if namespace else name
            obj = self.objects.pop(key)
            self.version += 1
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}
        else:
            obj = self.put(name, namespace, **fields)
        self.stream.sink(kind, copy.deepcopy(obj))
        return obj


class FakePodMetrics:
    """
    The autoscaler's pod metrics (L{k3stw.controllers.horizontal.PodMetricsSource}):
    each pod's containers' usage as a test sets it, sampled now over C{window}.
    """

    def __init__(self, clock: IReactorTime, window: str = "15s") -> None:
        self.clock = clock
        self.window = window
        #: (namespace, pod) -> container -> resource -> quantity.
        self.usage: dict[tuple[str, str], dict[str, dict[str, str]]] = {}

    def set(self, namespace: str, pod: str, container: str = "c", **usage: str) -> None:
        self.usage.setdefault((namespace, pod), {})[container] = dict(usage)

    async def pod_metrics_of(self, listed: list[Object]) -> list[Object]:
        found = []
        for pod in listed:
            meta = pod["metadata"]
            containers = self.usage.get((meta.get("namespace", ""), meta["name"]))
            if containers is None:
                continue
            found.append(
                {
                    "metadata": {"name": meta["name"], "namespace": meta.get("namespace", "")},
                    "timestamp": rfc3339(self.clock.seconds()),
                    "window": self.window,
                    "containers": [
                        {"name": name, "usage": usage} for name, usage in containers.items()
                    ],
                }
            )
        return found


class FakeMounter:
    """
    The volume manager's L{k3stw.kubelet.volumes.Mounter} without mounting
    anything: it remembers what is "mounted" (the directory stays a plain one)
    and, with C{refuse}, fails as mount(8) does without privileges.
    """

    def __init__(self) -> None:
        #: Mounted paths and the size each tmpfs was given.
        self.mounted: dict[str, int | None] = {}
        self.refuse = False

    def is_mounted(self, path: str) -> bool:
        return path in self.mounted

    async def mount_tmpfs(self, path: str, size: int | None) -> None:
        if self.refuse:
            options = f"-o size={size} " if size is not None else ""
            raise MountError(
                "mount failed: exit status 32\nMounting command: mount\n"
                f"Mounting arguments: -t tmpfs {options}tmpfs {path}\n"
                'Output: mount: only root can use "--options" option'
            )
        self.mounted[path] = size

    async def unmount(self, path: str) -> None:
        del self.mounted[path]
