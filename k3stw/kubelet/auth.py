"""
Who may use the kubelet's API, as the kubelet's x509 authenticator and its
authorizer decide.

A client certificate is asked for but not required by TLS, then checked here
against the client CA (L{verified_user}), so that a missing or foreign
certificate gets the kubelet's plain ``Unauthorized`` (401) and a known user
who may not use the kubelet its ``Forbidden (user=..., verb=..., resource=nodes,
subresource(s)=[...])`` (403, L{forbidden_message}).  L{allow_apiserver}
decides who may.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import crypto
from twisted.web.iweb import IRequest

from k3stw.machinery.identity import MASTERS, User, user_of_certificate
from k3stw.pki.certs import is_signed_by

#: The common names of the apiserver's client certificates for kubelets
#: (kubeadm's and kube-apiserver's own); k3s's, ``system:apiserver`` in
#: ``system:masters``, passes by its group.
APISERVER_USERS = frozenset({"kube-apiserver-kubelet-client", "system:kube-apiserver"})

#: The kubelet's HTTP methods and the API verbs its authorizer sees.
_VERBS = {
    b"POST": "create",
    b"GET": "get",
    b"PUT": "update",
    b"PATCH": "patch",
    b"DELETE": "delete",
}


@dataclass(frozen=True)
class RequestAttributes:
    """A request to the kubelet as its authorizer sees it (``resource=nodes``)."""

    verb: str
    subresources: tuple[str, ...]
    path: str


def request_attributes(method: bytes, path: bytes) -> RequestAttributes:
    """
    The attributes the kubelet derives from a request: the verb from the
    method (HEAD and others get none, as in Go) and the subresource from the
    path: ``stats``, ``metrics``, ``log``, ``checkpoint``, otherwise ``proxy``.
    (Kubernetes 1.32's ``KubeletFineGrainedAuthz`` gate, off by default,
    would put ``pods``/``healthz`` first.)
    """
    text = path.decode("utf-8", "replace")
    subresource = "proxy"
    for prefix, name in (
        ("/stats", "stats"),
        ("/metrics", "metrics"),
        ("/logs", "log"),
        ("/checkpoint", "checkpoint"),
    ):
        if text == prefix or text.startswith(prefix + "/"):
            subresource = name
            break
    return RequestAttributes(_VERBS.get(method, ""), (subresource,), text)


#: Decides whether an authenticated user may make a request.
Authorizer = Callable[[User, RequestAttributes], bool]


def allow_apiserver(user: User, attributes: RequestAttributes) -> bool:
    """
    The kubelet's authorizer, reduced to what a k3s cluster needs: the
    apiserver (by name, or in ``system:masters``) may do anything; nobody
    else, nodes included, may do anything.
    """
    return MASTERS in user.groups or user.name in APISERVER_USERS


def forbidden_message(user: User, attributes: RequestAttributes) -> str:
    """The kubelet's 403 body, Go's ``%v`` of the subresource list included."""
    return (
        f"Forbidden (user={user.name}, verb={attributes.verb}, resource=nodes, "
        f"subresource(s)=[{' '.join(attributes.subresources)}])\n"
    )


def verified_user(
    certificate: x509.Certificate, client_cas: list[x509.Certificate], now: datetime
) -> User | None:
    """
    The user a client certificate names (CN, O as groups) if one of
    C{client_cas} issued it directly, it is valid at C{now} and allowed for
    client authentication; None otherwise.
    """
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        return None
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and not {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    }.intersection(usages):
        return None
    if not any(
        ca.not_valid_before_utc <= now <= ca.not_valid_after_utc and is_signed_by(certificate, ca)
        for ca in client_cas
    ):
        return None
    return user_of_certificate(crypto.X509.from_cryptography(certificate))


def peer_certificate(request: IRequest) -> x509.Certificate | None:
    """The certificate the client presented on the request's TLS connection, if any."""
    transport = getattr(request, "transport", None)
    getter = getattr(transport, "getPeerCertificate", None)
    presented = getter() if getter is not None else None
    return presented.to_cryptography() if presented is not None else None
