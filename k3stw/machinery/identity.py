"""
Who a client certificate names: its CN is the user, its Os the groups, as
every Kubernetes component reads them.  The servers (API, supervisor, tunnel
server) and the node's kubelet API all authenticate this way; what each lets
a user do is theirs to decide.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

#: The group that may do everything.
MASTERS = "system:masters"
#: The group of every kubelet's identity.
NODES = "system:nodes"
#: A kubelet's user name is this prefix and its node's name.
NODE_PREFIX = "system:node:"
#: The users of a node's network components, as k3s certifies them for every node.
KUBE_PROXY_USER = "system:kube-proxy"
K3S_CONTROLLER_USER = "system:k3s-controller"
#: The group every authenticated user is in.
AUTHENTICATED = "system:authenticated"
#: The user's ``extra`` key naming the credential it authenticated with.
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


@dataclass(frozen=True)
class User:
    """
    An authenticated user: a name, the groups it belongs to, and what a
    token may add (its uid, and ``extra`` facts such as its pod).
    """

    name: str
    groups: tuple[str, ...]
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    @property
    def node_name(self) -> str | None:
        """The node of a kubelet's identity (``system:node:<name>`` in ``system:nodes``)."""
        if NODES in self.groups and self.name.startswith(NODE_PREFIX):
            return self.name[len(NODE_PREFIX) :]
        return None


def user_of_certificate(certificate: crypto.X509) -> User | None:
    """
    The user a verified client certificate names, or None without a CN; its
    credential is the certificate's SHA-256, as kube-apiserver names it.
    """
    parsed = certificate.to_cryptography()
    names = parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    groups = parsed.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    fingerprint = hashlib.sha256(parsed.public_bytes(Encoding.DER)).hexdigest()
    return User(
        str(names[0].value),
        tuple(str(g.value) for g in groups),
        extra={CREDENTIAL_ID: (f"X509SHA256={fingerprint}",)},
    )


def authenticated(user: User) -> User:
    """C{user} in ``system:authenticated``, as every API request's user is."""
    if AUTHENTICATED in user.groups:
        return user
    return replace(user, groups=(*user.groups, AUTHENTICATED))
