"""TLS contexts for the supervisor and kubelet ports, and for clients that pin the cluster CA."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from k3stw.pki.certs import KeyPair, load_pem_certificates


def _x509(pem: bytes) -> crypto.X509:
    return crypto.load_certificate(crypto.FILETYPE_PEM, pem)


def _serving_options(
    serving: KeyPair, extra_chain: list[crypto.X509], **verification: Any
) -> ssl.CertificateOptions:
    """Serve with C{serving}, TLS 1.2 or later; C{verification} says what to ask of clients."""
    return ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(serving.key),
        certificate=_x509(serving.certificate_pem),
        extraCertChain=extra_chain,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        **verification,
    )


def server_tls_options(
    serving: KeyPair, ca_bundle: bytes, client_ca: KeyPair
) -> ssl.CertificateOptions:
    """
    Serve with C{serving} (chained to the server CA) and ask, without
    requiring, for a client certificate signed by C{client_ca}: kubectl's
    admin certificate authenticates, an agent's token-only request still gets
    through to be checked by password.
    """
    return _serving_options(
        serving,
        [_x509(ca_bundle)],
        verify=True,
        caCerts=[_x509(client_ca.certificate_pem)],
        requireCertificate=False,
    )


def _accept_any_client(
    connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
) -> bool:
    return True


def client_certificate_requesting_options(
    serving: KeyPair, client_ca: bytes
) -> ssl.CertificateOptions:
    """
    Serve with C{serving} and ask every client for a certificate from one of
    the CAs in the PEM bundle C{client_ca}, but let the handshake succeed
    whatever it sends: the application verifies the certificate itself, so
    that a missing or foreign one is answered with an HTTP 401, as Go servers
    with ``tls.RequestClientCert`` (the kubelet) answer, not a failed handshake.
    """
    options = _serving_options(serving, [])
    context = options.getContext()
    context.set_verify(SSL.VERIFY_PEER, _accept_any_client)
    # The CA names tell clients holding several certificates which to send.
    context.set_client_ca_list(
        [crypto.X509.from_cryptography(ca).get_subject() for ca in load_pem_certificates(client_ca)]
    )
    return options


@implementer(IPolicyForHTTPS)
class PinnedCAPolicy:
    """
    Verify servers against the cluster CA bundle only, never the host's trust
    store; present C{client}'s certificate when given (a node's identity).
    """

    def __init__(self, ca_bundle: bytes, client: KeyPair | None = None) -> None:
        roots = [
            ssl.Certificate(crypto.X509.from_cryptography(c))
            for c in load_pem_certificates(ca_bundle)
        ]
        self._trust = ssl.trustRootFromCertificates(roots)
        self._client = (
            ssl.PrivateCertificate.loadPEM(client.certificate_pem + client.key_pem)
            if client is not None
            else None
        )

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return ssl.optionsForClientTLS(
            hostname.decode("ascii"), trustRoot=self._trust, clientCertificate=self._client
        )


@implementer(IPolicyForHTTPS)
class UnverifiedPolicy:
    """
    Accept any server certificate.  Only for downloading ``/cacerts``, whose
    content is then checked against the CA hash in the join token.
    """

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return _UnverifiedCreator(hostname)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    def __init__(self, hostname: bytes) -> None:
        self._hostname = hostname
        self._context = ssl.CertificateOptions(verify=False).getContext()

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self._hostname)
        return connection
