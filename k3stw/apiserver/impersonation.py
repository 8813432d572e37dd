"""
Impersonation (``kubectl --as``): a request carrying ``Impersonate-User``,
``Impersonate-Group``, ``Impersonate-Uid`` or ``Impersonate-Extra-<key>``
headers acts as that user, once the authorizer lets the caller
``impersonate`` each of them, as kube-apiserver's impersonation filter does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from k3stw.apiserver.auth import UNAUTHENTICATED, Attributes, Authorizer, forbidden
from k3stw.apiserver.rbac import SERVICE_ACCOUNT_PREFIX
from k3stw.apiserver.status import StatusError
from k3stw.machinery.identity import AUTHENTICATED, User

USER = "impersonate-user"
GROUP = "impersonate-group"
UID = "impersonate-uid"
EXTRA_PREFIX = "impersonate-extra-"
AUTHENTICATION = "authentication.k8s.io"
ANONYMOUS = "system:anonymous"


@dataclass(frozen=True)
class Impersonation:
    """What a request's headers ask to act as; C{asked} is each thing to authorize, in order."""

    user: str
    groups: tuple[str, ...]
    uid: str
    extra: tuple[tuple[str, tuple[str, ...]], ...]
    asked: tuple[Attributes, ...]


def requested(headers: Iterable[tuple[bytes, Sequence[bytes]]]) -> Impersonation | None:
    """
    The impersonation the headers ask for, or None.

    :raises StatusError: groups, extras or a uid without a user (kube's 500).
    """
    found: dict[str, list[str]] = {}
    extra: dict[str, list[str]] = {}
    for raw_name, raw_values in headers:
        name = raw_name.decode("latin-1").lower()
        decoded = [value.decode("utf-8", "replace") for value in raw_values]
        if name in (USER, GROUP, UID):
            found.setdefault(name, []).extend(decoded)
        elif name.startswith(EXTRA_PREFIX):
            extra.setdefault(unquote(name[len(EXTRA_PREFIX) :]), []).extend(decoded)
    user = (found.get(USER) or [""])[0]
    groups = tuple(found.get(GROUP, ()))
    uid = (found.get(UID) or [""])[0]
    if not (user or groups or extra or uid):
        return None
    asked: list[Attributes] = []
    namespace, _, account = user.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
    if user.startswith(SERVICE_ACCOUNT_PREFIX) and namespace and account and ":" not in account:
        asked.append(Attributes("impersonate", "", "serviceaccounts", namespace, account))
    elif user:
        asked.append(Attributes("impersonate", "", "users", None, user))
    asked += [Attributes("impersonate", "", "groups", None, group) for group in groups]
    for key, values in extra.items():
        asked += [
            Attributes("impersonate", AUTHENTICATION, "userextras", None, value, key)
            for value in values
        ]
    if uid:
        asked.append(Attributes("impersonate", AUTHENTICATION, "uids", None, uid))
    if not user:
        listed = ", ".join(f"{a.resource} {a.name!r}" for a in asked)
        raise StatusError(
            500, f"Internal error occurred: requested [{listed}] without impersonating a user"
        )
    extras = tuple((key, tuple(values)) for key, values in extra.items())
    return Impersonation(user, groups, uid, extras, tuple(asked))


async def impersonate(authorizer: Authorizer, caller: User, asked: Impersonation) -> User:
    """
    The user C{caller} acts as, once allowed to impersonate each part.

    :raises StatusError: 403 in kube's words for the first part refused.
    """
    for attributes in asked.asked:
        decision = await authorizer.decide(caller, attributes)
        if not decision.allowed:
            raise forbidden(caller, attributes, decision.reason)
    groups = list(asked.groups)
    if not groups and asked.asked[0].resource == "serviceaccounts":
        namespace = asked.asked[0].namespace
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    if asked.user != ANONYMOUS:
        if AUTHENTICATED not in groups and UNAUTHENTICATED not in groups:
            groups.append(AUTHENTICATED)
    elif UNAUTHENTICATED not in groups:
        groups.append(UNAUTHENTICATED)
    return User(asked.user, tuple(groups), asked.uid, dict(asked.extra))
