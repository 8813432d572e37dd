"""
Node enrolment on the supervisor, on the real object store over the in-memory
datastore: node passwords kept as k3s keeps them, the kubelet certificates
signed from agents' CSRs, and k3s's answers to everything else.
"""

from __future__ import annotations

import base64
import datetime
import io
from collections.abc import Callable
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from k3stw.apiserver.status import StatusError
from k3stw.machinery.objects import Object
from k3stw.pki.certs import load_pem_certificates, new_ca
from k3stw.supervisor.nodepassword import SECRET_TYPE, secret_name, verify_password
from k3stw.supervisor.nodes import NodeEnrollment, NodePasswords
from tests.support.apiserver import START, MemoryServer

NOW = datetime.datetime.fromtimestamp(START, datetime.UTC)
PASSWORDS = {"node": "agent-secret", "server": "server-secret"}


def in_line(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run scrypt at once: a unit test has no reactor thread to spare it from."""
    return succeed(function(*args))


def csr(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


class EnrolmentRequest(DummyRequest):
    """A L{DummyRequest} with what enrolment reads beyond it: a body, and a TLS transport."""

    content: io.BytesIO
    transport: object


def as_request(made: DummyRequest) -> IRequest:
    """C{made} where a request is taken: it has what enrolment reads, undeclared."""
    return cast(IRequest, made)


def request(
    node: str = "n1",
    password: str = "p1",
    user: str = "node",
    secret: str = "agent-secret",
    addresses: str = "192.0.2.7",
) -> EnrolmentRequest:
    made = EnrolmentRequest([b"v1-k3s", b"client-kubelet.crt"])
    made.method = b"POST"
    credentials = base64.b64encode(f"{user}:{secret}".encode()).decode()
    for name, value in (
        ("authorization", f"Basic {credentials}"),
        ("k3s-node-name", node),
        ("k3s-node-password", password),
        ("k3s-node-ip", addresses),
    ):
        if value:
            made.requestHeaders.setRawHeaders(name, [value])
    made.content = io.BytesIO(csr(f"system:node:{node}"))
    return made


class PeerCertificate:
    """A TLS transport whose peer presented C{certificate}."""

    def __init__(self, certificate: x509.Certificate) -> None:
        self.certificate = crypto.X509.from_cryptography(certificate)

    def getPeerCertificate(self) -> crypto.X509:
        return self.certificate


class NodeEnrolmentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.ready = True
        self.server_ca = new_ca("k3s-server-ca@1", NOW)
        self.client_ca = new_ca("k3s-client-ca@1", NOW)
        self.passwords = NodePasswords(self.server.store, self.server.clock, in_line)
        self.enrolment = NodeEnrollment(
            self.server_ca,
            self.server_ca.certificate_pem,
            self.client_ca,
            PASSWORDS,
            self.passwords,
            lambda: self.ready,
            self.server.clock,
            {"ClusterDomain": "cluster.local"},
        )

    def certificate(self, made: EnrolmentRequest, serving: bool = False) -> x509.Certificate:
        sign = self.enrolment.serving_kubelet if serving else self.enrolment.client_kubelet
        pem = self.server.run(sign(as_request(made)))
        return load_pem_certificates(pem)[0]

    def refused(self, made: EnrolmentRequest) -> StatusError:
        return self.server.fails(self.enrolment.client_kubelet(as_request(made)))

    def secret(self, node: str) -> Object:
        return self.server.get("", "secrets", secret_name(node), "kube-system")

    def test_first_join_keeps_the_password_as_an_immutable_scrypt_secret(self) -> None:
        certificate = self.certificate(request())
        secret = self.secret("n1")
        self.assertEqual((secret["type"], secret["immutable"]), (SECRET_TYPE, True))
        stored = base64.b64decode(secret["data"]["hash"]).decode()
        self.assertTrue(stored.startswith("$1:"))
        self.assertTrue(verify_password("p1", stored))
        subject = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.assertEqual(subject, "system:node:n1")
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(usages), [ExtendedKeyUsageOID.CLIENT_AUTH])

    def test_the_serving_certificate_names_the_node_and_its_addresses(self) -> None:
        certificate = self.certificate(request(addresses="192.0.2.7,192.0.2.8"), serving=True)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn("n1", names.get_values_for_type(x509.DNSName))
        self.assertEqual(
            [str(a) for a in names.get_values_for_type(x509.IPAddress)],
            ["127.0.0.1", "192.0.2.7", "192.0.2.8"],
        )

    def test_the_same_password_joins_again_and_another_is_refused_in_k3s_words(self) -> None:
        self.certificate(request())
        self.certificate(request())
        error = self.refused(request(password="other"))
        self.assertEqual(
            (error.code, error.message),
            (403, "unable to verify password for node n1: hash does not match"),
        )

    def test_a_node_identity_needs_its_node(self) -> None:
        self.certificate(request())
        made = request(user="system:node:n1")
        self.passwords_by_identity(made)
        error = self.refused(made)
        self.assertEqual(
            (error.code, error.message),
            (401, 'unable to verify node identity: nodes "n1" not found'),
        )

    def passwords_by_identity(self, made: EnrolmentRequest) -> None:
        """Present C{made} as carrying the node's own client certificate."""
        certificate = self.certificate(request())
        from OpenSSL import crypto

        peer = crypto.X509.from_cryptography(certificate)

        class Transport:
            def getPeerCertificate(self) -> Any:
                return peer

        made.transport = Transport()
        made.requestHeaders.removeHeader("authorization")

    def test_k3s_answers_to_bad_requests(self) -> None:
        cases = {
            "no credentials": (request(secret="wrong"), 401, "not authorized"),
            "no node name": (request(node=""), 400, "node name not set"),
            "no password": (request(password=""), 400, "node password not set"),
        }
        for what, (made, code, message) in cases.items():
            error = self.refused(made)
            self.assertEqual((error.code, error.message), (code, message), what)

    def test_not_ready_is_503(self) -> None:
        self.ready = False
        error = self.refused(request())
        self.assertEqual((error.code, error.message), (503, "runtime core not ready"))
        self.assertFalse(self.server.exists("", "secrets", secret_name("n1"), "kube-system"))

    def test_configuration_for_agents(self) -> None:
        body = self.server.run(self.enrolment.config(as_request(request())))
        self.assertEqual(body, b'{"ClusterDomain": "cluster.local"}')
        self.assertEqual(
            self.server.run(self.enrolment.server_ca_file(as_request(request()))),
            self.server_ca.certificate_pem,
        )
