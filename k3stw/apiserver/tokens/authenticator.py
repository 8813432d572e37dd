"""
Bearer-token authentication of service-account tokens, as kube-apiserver's
service-account authenticators do it: a token of one of this cluster's
issuers, signed by one of its keys, within its times, for one of the API's
audiences, whose service account (and pod, secret or node) still exists with
the uid it names.  A legacy token is good while its Secret holds it.

The objects are read through the object store (the datastore, off the
reactor); a token that authenticated is remembered for ten seconds, as
kube-apiserver's token cache does, so a busy client costs no reads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from k3stw.apiserver.kinds import nodes, pods, secrets, serviceaccounts
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.apiserver.tokens.claims import (
    LEEWAY,
    LEGACY_ISSUER,
    Claimed,
    Ref,
    TokenError,
    check_times,
    read_bound,
    read_legacy,
)
from k3stw.apiserver.tokens.keys import BadSignature, ServiceAccountKeys, unverified_claims
from k3stw.logs import Logger
from k3stw.machinery.identity import User
from k3stw.machinery.objects import Object
from k3stw.machinery.times import parse_time, utc

#: How long a token that authenticated is trusted without a look (kube-apiserver: 10 s).
CACHE_SECONDS = 10.0
#: At most this many authenticated tokens are remembered.
CACHE_SIZE = 4096
#: Refused tokens are reported at most this often (the count in between is kept).
REPORT_SECONDS = 60.0
#: What a Secret's token says, and when it was last used (at most one write a day).
TOKEN_KEY = "token"
LAST_USED = "kubernetes.io/legacy-token-last-used"
INVALID_SINCE = "kubernetes.io/legacy-token-invalid-since"
#: What a token none of this cluster's authenticators know is refused with.
INVALID_BEARER_TOKEN = "invalid bearer token"


@dataclass(frozen=True)
class Authentication:
    """Who a token authenticates, and for which of the audiences asked about."""

    user: User
    audiences: tuple[str, ...]


def _go_quoted(values: Sequence[str]) -> str:
    """A list of strings as Go's ``%q`` writes it: ``["a" "b"]``."""
    return "[" + " ".join(json.dumps(value) for value in values) + "]"


class ServiceAccountTokens:
    """
    The API's bearer-token authenticator (a
    L{TokenAuthenticator<k3stw.apiserver.routing.TokenAuthenticator>}), and
    what a ``TokenReview`` asks.
    """

    _log = Logger()

    def __init__(
        self,
        keys: ServiceAccountKeys,
        store: ObjectStore,
        clock: IReactorTime,
        issuer: str,
        audiences: Sequence[str],
    ) -> None:
        """
        :param issuer: the bound tokens' ``iss`` (``--service-account-issuer``).
        :param audiences: the API's own (``--api-audiences``).
        """
        self.keys = keys
        self.store = store
        self.clock = clock
        self.issuer = issuer
        self.audiences = tuple(audiences)
        self._cache: OrderedDict[tuple[bytes, tuple[str, ...]], tuple[float, Authentication]] = (
            OrderedDict()
        )
        self._refused = 0
        self._next_report = 0.0

    async def __call__(self, token: str) -> User | None:
        """The user of a request's bearer token, or None (401) for any other token."""
        try:
            found = await self.authenticate(token)
        except TokenError as e:
            self._report_refusal(str(e))
            return None
        if found is None:
            self._report_refusal(INVALID_BEARER_TOKEN)
            return None
        return found.user

    async def authenticate(
        self, token: str, audiences: Sequence[str] = ()
    ) -> Authentication | None:
        """
        Who C{token} authenticates for C{audiences} (by default the API's).

        :return: None for a token that is no service-account token of this cluster.
        :raises TokenError: one of this cluster's tokens that does not authenticate.
        :raises StatusError: the datastore could not be read (503).
        """
        requested = tuple(audiences) or self.audiences
        now = self.clock.seconds()
        key = (hashlib.sha256(token.encode()).digest(), requested)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        self._cache.pop(key, None)
        claims = unverified_claims(token)
        issuer = claims.get("iss") if claims is not None else None
        if issuer not in (self.issuer, LEGACY_ISSUER):
            return None
        try:
            verified = self.keys.verify(token)
        except BadSignature as e:
            raise TokenError(str(e)) from None
        legacy = issuer == LEGACY_ISSUER
        claimed = read_legacy(verified) if legacy else read_bound(verified)
        # A token without an audience (a legacy one) is for the API's.
        token_audiences = claimed.audiences or self.audiences
        matched = tuple(a for a in token_audiences if a in requested)
        if not matched:
            raise TokenError(
                f"token audiences {_go_quoted(token_audiences)} is invalid for the target "
                f"audiences {_go_quoted(requested)}"
            )
        if legacy:
            await self._check_legacy(claimed, token, now)
        else:
            check_times(verified, now)
            await self._check_bound(claimed, now)
        found = Authentication(claimed.user(), matched)
        expiry = verified.get("exp")
        until = now + CACHE_SECONDS
        if isinstance(expiry, int | float):
            until = min(until, expiry + LEEWAY)
        self._cache[key] = (until, found)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return found

    async def _get(self, resource: ResourceType, namespace: str | None, name: str) -> Object | None:
        try:
            return await self.store.get(resource, namespace, name)
        except StatusError as e:
            if e.code != 404:
                raise
            return None

    async def _service_account(self, claimed: Claimed, now: float, legacy: bool) -> None:
        namespace, ref = claimed.namespace, claimed.service_account
        account = await self._get(serviceaccounts.RESOURCE, namespace, ref.name)
        if account is None:
            raise TokenError(f'serviceaccounts "{ref.name}" not found')
        uid = account["metadata"].get("uid", "")
        # Legacy tokens go at the deletion mark; bound ones a leeway after it.
        if _deleted(account, now if legacy else now - LEEWAY):
            if legacy:
                raise TokenError(f"ServiceAccount {namespace}/{ref.name} has been deleted")
            raise TokenError(f"service account {namespace}/{ref.name} has been deleted")
        if uid != ref.uid:
            if legacy:
                raise TokenError(f"ServiceAccount UID ({uid}) does not match claim ({ref.uid})")
            raise TokenError(f"service account UID ({uid}) does not match claim ({ref.uid})")

    async def _check_bound(self, claimed: Claimed, now: float) -> None:
        await self._service_account(claimed, now, legacy=False)
        bound = (
            ("secret", secrets.RESOURCE, claimed.secret, claimed.namespace),
            ("pod", pods.RESOURCE, claimed.pod, claimed.namespace),
            # A pod-bound token names its pod's node for information only.
            ("node", nodes.RESOURCE, None if claimed.pod else claimed.node, None),
        )
        for kind, resource, ref, namespace in bound:
            if ref is None:
                continue
            await self._check_bound_object(kind, resource, ref, namespace, now)

    async def _check_bound_object(
        self, kind: str, resource: ResourceType, ref: Ref, namespace: str | None, now: float
    ) -> None:
        obj = await self._get(resource, namespace, ref.name)
        if obj is None or _deleted(obj, now - LEEWAY):
            raise TokenError("service account token has been invalidated")
        uid = obj["metadata"].get("uid", "")
        if uid != ref.uid:
            raise TokenError(
                f"{kind} UID ({uid}) does not match service account {kind} ref claim ({ref.uid})"
            )

    async def _check_legacy(self, claimed: Claimed, token: str, now: float) -> None:
        namespace, name = claimed.namespace, claimed.legacy_secret
        assert name is not None
        secret = await self._get(secrets.RESOURCE, namespace, name)
        if secret is None or secret["metadata"].get("deletionTimestamp"):
            raise TokenError("Token has been invalidated")
        held = ((secret.get("data") or {}).get(TOKEN_KEY)) or ""
        try:
            held_token = base64.b64decode(held)
        except ValueError:
            held_token = b""
        if not hmac.compare_digest(held_token, token.encode()):
            raise TokenError("Token does not match server's copy")
        await self._service_account(claimed, now, legacy=True)
        labels = secret["metadata"].get("labels") or {}
        if labels.get(INVALID_SINCE):
            raise TokenError(
                f"the token in secret {namespace}/{name} for service account "
                f"{namespace}/{claimed.service_account.name} has been marked invalid. Use tokens "
                "from the TokenRequest API or manually created secret-based tokens, or remove "
                f"the '{INVALID_SINCE}' label from the secret to temporarily allow use of this "
                "token"
            )
        today = utc(now).date().isoformat()
        if labels.get(LAST_USED) != today:
            self._mark_used(namespace, name, today)

    def _mark_used(self, namespace: str, name: str, today: str) -> None:
        """Label the Secret with the day its token was used, as kube-apiserver does."""

        def label(secret: Object) -> Object:
            secret["metadata"].setdefault("labels", {})[LAST_USED] = today
            return secret

        marking = Deferred.fromCoroutine(
            self.store.guaranteed_update(secrets.RESOURCE, namespace, name, label)
        )
        marking.addErrback(
            lambda failure: self._log.warn(
                "Could not mark when the token of secret {namespace}/{name} was used: {error}",
                namespace=namespace,
                name=name,
                error=failure.getErrorMessage(),
            )
        )

    def _report_refusal(self, reason: str) -> None:
        """Log refused tokens at most once every L{REPORT_SECONDS}, with the count."""
        self._refused += 1
        now = self.clock.seconds()
        if now < self._next_report:
            return
        self._log.info(
            "Unable to authenticate the request: {reason} ({count} bearer tokens refused "
            "since the last report)",
            reason=reason,
            count=self._refused,
        )
        self._refused = 0
        self._next_report = now + REPORT_SECONDS


def _deleted(obj: Object, before: float) -> bool:
    """Whether C{obj} was marked for deletion before C{before}."""
    marked = parse_time(obj["metadata"].get("deletionTimestamp"))
    return marked is not None and marked < before
