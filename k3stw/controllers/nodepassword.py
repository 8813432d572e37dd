"""
Node-password secrets follow their Nodes, as k3s's ``pkg/nodepassword``
controller does: each secret gets an ownerReference to its Node once the
Node exists (so ``kubectl delete node`` takes the secret with it, letting
the host rejoin), and secrets of nodes that never registered are swept
once they are ten minutes old.
"""

from __future__ import annotations

import datetime

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from k3stw.apiserver.registry import Registry
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import Object, ObjectStore
from k3stw.controllers.loop import ControllerLoop
from k3stw.supervisor.nodes import SECRET_TYPE, secret_name

SUFFIX = ".node-password.k3s"
SWEEP_SECONDS = 60.0
MIN_ORPHAN_AGE = 600.0


class NodePasswordController(ControllerLoop):
    """Owner references for node-password secrets, and the orphan sweep."""

    label = "node-password controller"

    def __init__(
        self,
        store: ObjectStore,
        registry: Registry,
        clock: IReactorTime,
        min_orphan_age: float = MIN_ORPHAN_AGE,
    ) -> None:
        super().__init__(clock)
        self.store = store
        self.min_orphan_age = min_orphan_age
        self.nodes = registry.require("", "v1", "nodes")
        self.secrets = registry.require("", "v1", "secrets")
        sweep = TimerService(SWEEP_SECONDS, self._sweep_safely)
        sweep.clock = clock
        sweep.setServiceParent(self)

    async def run_once(self) -> None:
        """Follow every Node (the existing ones first) until the watch ends."""
        self.watch = await self.store.watch(self.nodes, None, "", None, self._node_seen)
        await self.watch.ended

    def _node_seen(self, kind: str, node: Object) -> None:
        if kind in ("ADDED", "MODIFIED"):
            Deferred.fromCoroutine(self._own(node)).addErrback(
                lambda f: self._log.failure("owning the password secret of a node", f)
            )

    async def _own(self, node: Object) -> None:
        name, uid = node["metadata"]["name"], node["metadata"].get("uid")
        reference = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}

        def owned(secret: Object) -> Object:
            owners = [
                o
                for o in secret["metadata"].get("ownerReferences") or []
                if o.get("kind") != "Node"
            ]
            secret["metadata"]["ownerReferences"] = [*owners, reference]
            return secret

        try:
            await self.store.guaranteed_update(
                self.secrets, "kube-system", secret_name(name), owned
            )
        except StatusError as e:
            if e.code != 404:
                raise

    def _sweep_safely(self) -> Deferred[None]:
        sweeping = Deferred.fromCoroutine(self.sweep())
        sweeping.addErrback(self._sweep_failed)
        return sweeping

    def _sweep_failed(self, failure: Failure) -> None:
        if isinstance(failure.value, StatusError) and failure.value.code == 503:
            # The datastore is not up yet (or away); the next sweep tries again.
            return
        self._log.failure("node-password sweep failed", failure)

    async def sweep(self) -> None:
        """Delete password secrets older than the minimum age whose Node does not exist."""
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        secrets = await self.store.list(
            self.secrets, "kube-system", lambda s: s.get("type") == SECRET_TYPE
        )
        for secret in secrets.items:
            name = secret["metadata"]["name"]
            if not name.endswith(SUFFIX):
                continue
            created = datetime.datetime.strptime(
                secret["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"
            ).replace(tzinfo=datetime.UTC)
            if (now - created).total_seconds() < self.min_orphan_age:
                continue
            try:
                await self.store.get(self.nodes, None, name[: -len(SUFFIX)])
                continue
            except StatusError as e:
                if e.code != 404:
                    raise
            self._log.info("Deleting orphaned node password secret {name}", name=name)
            try:
                await self.store.delete(self.secrets, "kube-system", name)
            except StatusError as e:
                if e.code != 404:
                    raise
