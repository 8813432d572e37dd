"""
Who a client certificate names: its CN is the user, its Os the groups, as
every Kubernetes component reads them.  The servers (API, supervisor, tunnel
server) and the node's kubelet API all authenticate this way; what each lets
a user do is theirs to decide.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.x509.oid import NameOID
from OpenSSL import crypto

#: The group that may do everything.
MASTERS = "system:masters"
#: The group of every kubelet's identity.
NODES = "system:nodes"
#: A kubelet's user name is this prefix and its node's name.
NODE_PREFIX = "system:node:"


@dataclass(frozen=True)
class User:
    """An authenticated user: a name and the groups it belongs to."""

    name: str
    groups: tuple[str, ...]

    @property
    def node_name(self) -> str | None:
        """The node of a kubelet's identity (``system:node:<name>`` in ``system:nodes``)."""
        if NODES in self.groups and self.name.startswith(NODE_PREFIX):
            return self.name[len(NODE_PREFIX) :]
        return None


def user_of_certificate(certificate: crypto.X509) -> User | None:
    """The user a verified client certificate names, or None without a CN."""
    subject = certificate.to_cryptography().subject
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    groups = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return User(str(names[0].value), tuple(str(g.value) for g in groups))
