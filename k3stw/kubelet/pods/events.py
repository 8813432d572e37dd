"""
The kubelet's Events about pods and their containers (``source.component``
kubelet, ``source.host`` the node), written through the API.  A repeat of
the same Event within ten minutes counts on the first one; repeats closer
than ten seconds apart are not written at all, so a pod in back-off, synced
every second, does not flood the API.  A write that fails is logged and
dropped, as client-go's broadcaster drops it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from k3stw.kubeclient import KubeAPI, KubeAPIError
from k3stw.logs import Logger
from k3stw.machinery.objects import Object, metadata
from k3stw.machinery.times import rfc3339

NORMAL = "Normal"
WARNING = "Warning"
#: A repeat within this many seconds counts on the same Event.
REPEAT_WINDOW = 600.0
#: A repeat sooner than this is not written.
QUIET = 10.0


@dataclass
class _Written:
    path: str
    count: int
    last: float
    first: float


class PodEvents:
    """Writes the kubelet's Events for one node."""

    _log = Logger()

    def __init__(self, client: KubeAPI, clock: IReactorTime, node: str) -> None:
        self.client = client
        self.clock = clock
        self.node = node
        self._written: dict[tuple[str, ...], _Written] = {}

    async def emit(
        self, pod: Mapping[str, Any], kind: str, reason: str, message: str, field_path: str = ""
    ) -> None:
        meta = metadata(pod)
        namespace = str(meta.get("namespace") or "default")
        involved: Object = {
            "kind": "Pod",
            "namespace": namespace,
            "name": meta.get("name", ""),
            "uid": meta.get("uid", ""),
            "apiVersion": "v1",
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if field_path:
            involved["fieldPath"] = field_path
        key = (str(meta.get("uid", "")), field_path, kind, reason, message)
        now = self.clock.seconds()
        seen = self._written.get(key)
        try:
            if seen is not None and now - seen.first < REPEAT_WINDOW:
                if now - seen.last < QUIET:
                    return
                seen.count += 1
                seen.last = now
                patch = {"count": seen.count, "lastTimestamp": rfc3339(now)}
                await self.client.call("PATCH", seen.path, patch, "application/merge-patch+json")
                return
            stamp = rfc3339(now)
            name = f"{meta.get('name', 'pod')}.{int(now * 1e9) + len(self._written):x}"
            event: Object = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": involved,
                "reason": reason,
                "message": message,
                "type": kind,
                "source": {"component": "kubelet", "host": self.node},
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
                "reportingComponent": "kubelet",
                "reportingInstance": self.node,
            }
            path = f"/api/v1/namespaces/{namespace}/events"
            await self.client.create(path, event)
            self._written[key] = _Written(f"{path}/{name}", 1, now, now)
        except (KubeAPIError, OSError) as e:
            self._log.warn(
                "could not record event {reason} for {name}: {error}",
                reason=reason,
                name=meta.get("name"),
                error=str(e),
            )

    def forget(self, uid: str) -> None:
        for key in [k for k in self._written if k[0] == uid]:
            del self._written[key]
