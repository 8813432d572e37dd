"""
k3s's node controller (``pkg/node``), in part: node-password secrets follow
their Nodes.  Each secret gets an ownerReference to its Node once the Node
exists (so ``kubectl delete node`` takes the secret with it, letting the host
join again), and the secret of a node that never registered is deleted once
it is ten minutes old.
"""

from __future__ import annotations

from k3stw.apiserver.informers import Selection, ServerInformers
from k3stw.apiserver.kinds import nodes, secrets
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change
from k3stw.machinery.objects import Object, join_key, name_of, owner_references
from k3stw.machinery.times import parse_time
from k3stw.supervisor.nodepassword import (
    SECRET_NAMESPACE,
    SECRET_SUFFIX,
    SECRET_TYPE,
    secret_name,
)

#: The node-password secrets: this loop holds no other secret.
PASSWORD_SECRETS = Selection(
    "node-passwords",
    namespace=SECRET_NAMESPACE,
    predicate=lambda secret: secret.get("type") == SECRET_TYPE,
)
#: How old a password secret of a node that never registered must be before it goes.
MIN_ORPHAN_AGE = 600.0


class NodePasswordController(Controller):
    """Owner references for node-password secrets, and the removal of orphaned ones."""

    label = "node-password controller"
    expected = TRANSIENT

    def __init__(
        self, informers: ServerInformers, store: ObjectStore, min_orphan_age: float = MIN_ORPHAN_AGE
    ) -> None:
        self.nodes = informers.for_resource(nodes.RESOURCE)
        self.secrets = informers.for_resource(secrets.RESOURCE, PASSWORD_SECRETS)
        super().__init__(store.clock, [self.nodes, self.secrets])
        self.store = store
        self.min_orphan_age = min_orphan_age
        self.add_handler(self.nodes, self.enqueue_handler())
        self.add_handler(self.secrets, each_change(self._secret_changed, deletions=False))

    def _secret_changed(self, secret: Object) -> None:
        name = name_of(secret)
        if name.endswith(SECRET_SUFFIX):
            self.enqueue(name.removesuffix(SECRET_SUFFIX))

    async def sync(self, key: str) -> None:
        secret = self.secrets.get(join_key(SECRET_NAMESPACE, secret_name(key)))
        if secret is None:
            return
        node = self.nodes.get(key)
        if node is not None:
            await self._own(secret, node)
            return
        created = parse_time(secret["metadata"].get("creationTimestamp"))
        age = self.clock.seconds() - (created or 0.0)
        if age < self.min_orphan_age:
            self.queue.add_after(key, self.min_orphan_age - age)
            return
        # The cache may not have seen a Node that registered just now: ask the store.
        try:
            await self.store.get(nodes.RESOURCE, None, key)
            return
        except StatusError as e:
            if e.code != 404:
                raise
        self._log.info("Deleting orphaned node password secret {name}", name=name_of(secret))
        try:
            await self.store.delete(secrets.RESOURCE, SECRET_NAMESPACE, name_of(secret))
        except StatusError as e:
            if e.code != 404:
                raise

    async def _own(self, secret: Object, node: Object) -> None:
        reference = {
            "apiVersion": "v1",
            "kind": "Node",
            "name": name_of(node),
            "uid": node["metadata"].get("uid"),
        }
        if reference in owner_references(secret):
            return

        def owned(current: Object) -> Object:
            owners = [o for o in owner_references(current) if o.get("kind") != "Node"]
            current["metadata"]["ownerReferences"] = [*owners, reference]
            return current

        try:
            await self.store.guaranteed_update(
                secrets.RESOURCE, SECRET_NAMESPACE, name_of(secret), owned
            )
        except StatusError as e:
            if e.code != 404:
                raise
