"""
Bootstrap tokens (``<id>.<secret>``) as credentials for joining nodes, as
k3s accepts them: a Secret ``kube-system/bootstrap-token-<id>`` of type
``bootstrap.kubernetes.io/token`` whose ``token-secret`` matches, with
``usage-bootstrap-authentication: "true"`` and an ``expiration`` not passed,
authenticates its bearer as ``system:bootstrap:<id>`` in
``system:bootstrappers`` and the token's ``auth-extra-groups``, as kube's
bootstrap token authenticator does.  ``k3s token create`` makes them.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import re

from twisted.web.iweb import IRequest

from k3stw.apiserver.kinds import secrets
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.machinery.identity import User
from k3stw.machinery.times import parse_datetime

NAMESPACE = "kube-system"
SECRET_TYPE = "bootstrap.kubernetes.io/token"
BOOTSTRAPPERS = "system:bootstrappers"
_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")


def secret_name(token_id: str) -> str:
    return f"bootstrap-token-{token_id}"


def bearer_token(request: IRequest) -> str | None:
    """The bootstrap token of an ``Authorization: Bearer <id>.<secret>`` header, if any."""
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not _TOKEN.match(credentials):
        return None
    return credentials


def _field(data: dict[str, str], name: str) -> str:
    try:
        return base64.b64decode(data.get(name) or "").decode()
    except (ValueError, UnicodeDecodeError):
        return ""


def token_user(secret: dict[str, object], token: str, now: datetime.datetime) -> User | None:
    """Who C{token} is, if C{secret} is its valid bootstrap token Secret."""
    match = _TOKEN.match(token)
    if match is None or secret.get("type") != SECRET_TYPE:
        return None
    token_id, token_secret = match.groups()
    data = secret.get("data")
    if not isinstance(data, dict):
        return None
    if _field(data, "token-id") != token_id:
        return None
    if not hmac.compare_digest(_field(data, "token-secret").encode(), token_secret.encode()):
        return None
    if _field(data, "usage-bootstrap-authentication") != "true":
        return None
    expiration = _field(data, "expiration")
    if expiration:
        expires = parse_datetime(expiration)
        if expires is None or expires <= now:
            return None
    extra = [g.strip() for g in _field(data, "auth-extra-groups").split(",") if g.strip()]
    return User(f"system:bootstrap:{token_id}", (BOOTSTRAPPERS, *extra))


async def bootstrap_user(
    store: ObjectStore, request: IRequest, now: datetime.datetime
) -> User | None:
    """The bootstrap token's user of a request, or None (no such token, or not valid)."""
    token = bearer_token(request)
    if token is None:
        return None
    try:
        secret = await store.get(secrets.RESOURCE, NAMESPACE, secret_name(token.split(".")[0]))
    except StatusError as e:
        if e.code == 404:
            return None
        raise
    return token_user(secret, token, now)
