"""
The kubelet's token manager: service-account tokens for projected volumes,
asked of the TokenRequest API (``serviceaccounts/<name>/token``) bound to the
pod, cached, and asked again once 80% of their lifetime has passed or they
are a day old.  While a refresh fails, an unexpired token keeps being served.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime

from k3stw.logs import Logger
from k3stw.machinery.objects import Object
from k3stw.machinery.times import parse_time

if TYPE_CHECKING:
    from k3stw.kubelet.volumes.manager import VolumeAPI

#: A token this old is asked for again, whatever its expiry (kube's ``maxTTL``).
MAX_TTL = 24 * 60 * 60
#: At most this much earlier, at random, so that pods do not refresh in step.
MAX_JITTER = 10


@dataclass(frozen=True)
class TokenKey:
    """What makes two token requests the same (kube's ``keyFunc``)."""

    namespace: str
    account: str
    audiences: tuple[str, ...]
    expiration: int
    pod_name: str
    pod_uid: str


@dataclass(frozen=True)
class Token:
    """A token the API issued, with what the refresh rule needs."""

    token: str
    expires: float
    expiration: int


def token_path(namespace: str, account: str) -> str:
    return f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"


class TokenManager:
    """
    Pod-bound service-account tokens, cached per request.

    :param chance: a number in [0, 1) for each refresh's jitter.
    """

    _log = Logger()

    def __init__(
        self, client: VolumeAPI, clock: IReactorTime, chance: Callable[[], float] = random.random
    ) -> None:
        self.client = client
        self.clock = clock
        self.chance = chance
        self._tokens: dict[TokenKey, Token] = {}

    async def token(self, key: TokenKey) -> str:
        """
        The token for C{key}: the cached one, unless it needs a refresh.

        :raises KubeAPIError: the API refused and no unexpired token is cached.
        """
        cached = self._tokens.get(key)
        if cached is not None and not self.requires_refresh(cached):
            return cached.token
        spec: Object = {
            "expirationSeconds": key.expiration,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": key.pod_name,
                "uid": key.pod_uid,
            },
        }
        if key.audiences:
            spec["audiences"] = list(key.audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        try:
            answer = await self.client.create(token_path(key.namespace, key.account), body)
        except Exception:
            if cached is not None and self.clock.seconds() < cached.expires:
                self._log.warn(
                    "Couldn't update token for {namespace}/{account}; serving the cached one",
                    namespace=key.namespace,
                    account=key.account,
                )
                return cached.token
            raise
        status = answer.get("status") or {}
        expires = parse_time(status.get("expirationTimestamp"))
        issued = Token(
            str(status.get("token", "")),
            expires if expires is not None else self.clock.seconds() + key.expiration,
            int((answer.get("spec") or {}).get("expirationSeconds") or key.expiration),
        )
        self._tokens[key] = issued
        return issued.token

    def requires_refresh(self, token: Token) -> bool:
        """kube's rule: a day old, or within 20% of its lifetime (less a jitter) of expiring."""
        now = self.clock.seconds()
        jitter = int(self.chance() * MAX_JITTER)
        issued = token.expires - token.expiration
        if now > issued + MAX_TTL - jitter:
            return True
        return now > token.expires - token.expiration * 20 // 100 - jitter

    def forget(self, pod_uid: str) -> None:
        """Drop the tokens bound to a pod that is gone."""
        for key in [key for key in self._tokens if key.pod_uid == pod_uid]:
            del self._tokens[key]
