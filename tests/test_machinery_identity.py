"""Who a client certificate names, as servers and kubelets both read it."""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto
from twisted.trial.unittest import SynchronousTestCase

from k3stw.machinery.identity import (
    AUTHENTICATED,
    CREDENTIAL_ID,
    NODES,
    User,
    authenticated,
    user_of_certificate,
)
from k3stw.pki.certs import Usage, new_ca, new_key, new_leaf

NOW = datetime.datetime(2025, 3, 1, tzinfo=datetime.UTC)


class UserOfCertificateTests(SynchronousTestCase):
    def test_common_name_and_organizations(self) -> None:
        """CN is the user; every O, in order, a group."""
        ca = new_ca("k3s-client-ca@1", NOW)
        leaf = new_leaf(ca, "system:node:a", Usage.CLIENT, NOW, ["system:nodes", "k3s:agent"])
        user = user_of_certificate(crypto.X509.from_cryptography(leaf.certificate))
        assert user is not None
        self.assertEqual((user.name, user.groups), ("system:node:a", ("system:nodes", "k3s:agent")))

    def test_credential_is_the_certificate_digest(self) -> None:
        """As kube-apiserver: ``X509SHA256=<sha256 of the DER certificate>``."""
        ca = new_ca("k3s-client-ca@1", NOW)
        leaf = new_leaf(ca, "alice", Usage.CLIENT, NOW, [])
        user = user_of_certificate(crypto.X509.from_cryptography(leaf.certificate))
        assert user is not None
        digest = hashlib.sha256(leaf.certificate.public_bytes(Encoding.DER)).hexdigest()
        self.assertEqual(user.extra, {CREDENTIAL_ID: (f"X509SHA256={digest}",)})

    def test_no_common_name_is_no_user(self) -> None:
        """A certificate without a CN names nobody."""
        key = new_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(x509.Name([]))
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.assertIsNone(user_of_certificate(crypto.X509.from_cryptography(certificate)))


class NodeNameTests(SynchronousTestCase):
    def test_kubelet_identity(self) -> None:
        """system:node:<name> in system:nodes is the kubelet of <name>."""
        self.assertEqual(User("system:node:a", (NODES,)).node_name, "a")

    def test_name_or_group_alone_is_no_node(self) -> None:
        """The prefix without the group, or the group without the prefix, names no node."""
        self.assertIsNone(User("system:node:a", ()).node_name)
        self.assertIsNone(User("kube-proxy", (NODES,)).node_name)


class AuthenticatedTests(SynchronousTestCase):
    def test_group_added_once(self) -> None:
        """Every authenticated user is in system:authenticated, listed once."""
        user = authenticated(User("alice", ("team",)))
        self.assertEqual(user.groups, ("team", AUTHENTICATED))
        self.assertIs(authenticated(user), user)
