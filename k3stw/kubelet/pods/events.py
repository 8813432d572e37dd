"""
The kubelet's Events about pods and their containers (``source.component``
kubelet, ``source.host`` the node; L{k3stw.machinery.events}), written
through the API.  Repeats closer than ten seconds apart are not written at
all, so a pod in back-off, synced every second, does not flood the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from k3stw.kubeclient import KubeAPI
from k3stw.machinery.events import NORMAL, WARNING, APIEvents, EventRecorder

__all__ = ["NORMAL", "QUIET", "WARNING", "PodEvents"]

#: A repeat sooner than this is not written.
QUIET = 10.0


class PodEvents(EventRecorder):
    """Writes the kubelet's Events for one node."""

    def __init__(self, client: KubeAPI, clock: IReactorTime, node: str) -> None:
        super().__init__(APIEvents(client), clock, "kubelet", node, quiet=QUIET)

    def emit(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str, field_path: str = ""
    ) -> Deferred[None]:
        # Pods from a list carry no kind of their own.
        return super().emit(
            {**obj, "kind": "Pod", "apiVersion": "v1"}, kind, reason, message, field_path
        )
