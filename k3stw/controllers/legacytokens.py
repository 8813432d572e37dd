"""
kube-controller-manager's tokens controller as 1.32 runs it: it no longer
makes a Secret per ServiceAccount, but fills in each
``kubernetes.io/service-account-token`` Secret a user makes (``token``,
``ca.crt``, ``namespace``, and the account's uid annotation) once the
account its ``kubernetes.io/service-account.name`` annotation names exists.
A Secret whose account is gone (or is another account of that name, by uid)
is deleted, and with it the token it held.
"""

from __future__ import annotations

import base64

from k3stw.apiserver.informers import Selection, ServerInformers
from k3stw.apiserver.kinds import secrets, serviceaccounts
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.apiserver.tokens.claims import legacy_claims
from k3stw.apiserver.tokens.keys import ServiceAccountKeys
from k3stw.controllers import TRANSIENT
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change
from k3stw.machinery.objects import Object, join_key, namespace_of, object_key, split_key

SECRET_TYPE = "kubernetes.io/service-account-token"
NAME_ANNOTATION = "kubernetes.io/service-account.name"
UID_ANNOTATION = "kubernetes.io/service-account.uid"
TOKEN_SECRETS = Selection(
    "service-account-tokens", predicate=lambda secret: secret.get("type") == SECRET_TYPE
)
#: The token Secrets' index by the account they name (``<namespace>/<name>``).
BY_ACCOUNT = "service-account"


def _account_key(secret: Object) -> list[str]:
    name = (secret["metadata"].get("annotations") or {}).get(NAME_ANNOTATION)
    return [join_key(namespace_of(secret), name)] if name else []


def _encoded(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


class LegacyTokenController(Controller):
    """Fills in service-account token Secrets, and deletes those whose account is gone."""

    label = "service-account token controller"
    expected = TRANSIENT

    def __init__(
        self,
        informers: ServerInformers,
        store: ObjectStore,
        keys: ServiceAccountKeys,
        ca_bundle: bytes,
    ) -> None:
        """:param ca_bundle: the cluster CA, written into each Secret as ``ca.crt``."""
        self.accounts = informers.for_resource(serviceaccounts.RESOURCE)
        self.secrets = informers.for_resource(secrets.RESOURCE, TOKEN_SECRETS)
        self.secrets.add_index(BY_ACCOUNT, _account_key)
        super().__init__(store.clock, [self.accounts, self.secrets])
        self.store = store
        self.keys = keys
        self.ca = _encoded(ca_bundle)
        self.add_handler(self.secrets, each_change(lambda s: self.enqueue(object_key(s)), False))
        self.add_handler(self.accounts, each_change(self._account_changed))

    def _account_changed(self, account: Object) -> None:
        for key in self.secrets.cache.index_keys(BY_ACCOUNT, object_key(account)):
            self.enqueue(key)

    async def sync(self, key: str) -> None:
        secret = self.secrets.get(key)
        if secret is None:
            return
        namespace, name = split_key(key)
        assert namespace is not None
        annotations = secret["metadata"].get("annotations") or {}
        account_name = annotations.get(NAME_ANNOTATION)
        if not account_name:
            # Invalid (kube-apiserver refuses it): never this loop's to delete.
            return
        account = self.accounts.get(join_key(namespace, account_name))
        wanted_uid = annotations.get(UID_ANNOTATION)
        if account is None or (wanted_uid and wanted_uid != account["metadata"].get("uid")):
            await self._delete(namespace, name, secret["metadata"].get("uid"))
            return
        if not _needs_filling(secret, self.ca):
            return
        token = self.keys.sign(legacy_claims(account, secret))

        def fill(current: Object) -> Object:
            data = current.get("data") or {}
            current["data"] = data
            data["ca.crt"] = self.ca
            if not data.get("namespace"):
                data["namespace"] = _encoded(namespace)
            if not data.get("token"):
                data["token"] = _encoded(token)
            current["metadata"].setdefault("annotations", {}).update(
                {
                    NAME_ANNOTATION: account["metadata"]["name"],
                    UID_ANNOTATION: account["metadata"]["uid"],
                }
            )
            return current

        try:
            await self.store.guaranteed_update(secrets.RESOURCE, namespace, name, fill)
        except StatusError as e:
            if e.code != 404:
                raise

    async def _delete(self, namespace: str, name: str, uid: str | None) -> None:
        try:
            await self.store.delete(
                secrets.RESOURCE, namespace, name, {"uid": uid} if uid else None
            )
        except StatusError as e:
            # Gone already, or replaced by another Secret of that name (its own sync follows).
            if e.code not in (404, 409):
                raise


def _needs_filling(secret: Object, ca: str) -> bool:
    data = secret.get("data") or {}
    return data.get("ca.crt") != ca or not data.get("namespace") or not data.get("token")
