"""
Certificates and keys: ECDSA P-256 CAs and the leaves they sign, as k3s makes them.

Pure functions over ``cryptography`` objects; reading and writing files is
L{k3stw.pki.store}'s job.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=365)
# Backdating absorbs clock skew between a server and the agents that verify it.
BACKDATE = datetime.timedelta(hours=1)

PrivateKey = ec.EllipticCurvePrivateKey
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Usage(Enum):
    SERVER = "server"
    CLIENT = "client"
    #: Both (etcd's member certificates: each member is a server and a client of its peers).
    SERVER_CLIENT = "server-client"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: PrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return private_pem(self.key)


def private_pem(key: PrivateKey | rsa.RSAPrivateKey) -> bytes:
    """An unencrypted private key in the PEM k3s writes (SEC1 for ECDSA, PKCS#1 for RSA)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class SubjectAltNames:
    """The DNS names and IP addresses a serving certificate is valid for."""

    dns_names: frozenset[str] = frozenset()
    ip_addresses: frozenset[IPAddress] = frozenset()

    @classmethod
    def of(cls, names: Iterable[str]) -> SubjectAltNames:
        """Sort each name into DNS or IP, as ``--tls-san`` takes both."""
        dns: set[str] = set()
        ips: set[IPAddress] = set()
        for name in names:
            try:
                ips.add(ipaddress.ip_address(name))
            except ValueError:
                dns.add(name.lower())
        return cls(frozenset(dns), frozenset(ips))

    @classmethod
    def of_certificate(cls, certificate: x509.Certificate) -> SubjectAltNames:
        try:
            extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return cls()
        names = extension.value
        ips = names.get_values_for_type(x509.IPAddress)
        return cls(
            frozenset(names.get_values_for_type(x509.DNSName)),
            frozenset(ip for ip in ips if isinstance(ip, IPAddress)),
        )

    def extension(self) -> x509.SubjectAlternativeName:
        general: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(self.dns_names)]
        general += [x509.IPAddress(ip) for ip in sorted(self.ip_addresses, key=_ip_sort_key)]
        return x509.SubjectAlternativeName(general)


def _ip_sort_key(ip: IPAddress) -> tuple[int, int]:
    return (ip.version, int(ip))


_EXTENDED_USAGES = {
    Usage.SERVER: [ExtendedKeyUsageOID.SERVER_AUTH],
    Usage.CLIENT: [ExtendedKeyUsageOID.CLIENT_AUTH],
    Usage.SERVER_CLIENT: [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
}


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def new_ca(common_name: str, now: datetime.datetime) -> KeyPair:
    """A self-signed CA, valid for ten years."""
    key = new_key()
    subject = _name(common_name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(certificate, key)


def issue(
    ca: KeyPair,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    usage: Usage,
    now: datetime.datetime,
    organizations: Iterable[str] = (),
    alt_names: SubjectAltNames | None = None,
) -> x509.Certificate:
    """
    Sign a leaf certificate for C{public_key} (a new key's, or a CSR's) with
    C{ca}, valid for a year but never past the CA.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organizations))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + LEAF_VALIDITY, ca.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(_EXTENDED_USAGES[usage]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if alt_names is not None:
        builder = builder.add_extension(alt_names.extension(), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def new_leaf(
    ca: KeyPair,
    common_name: str,
    usage: Usage,
    now: datetime.datetime,
    organizations: Iterable[str] = (),
    alt_names: SubjectAltNames | None = None,
) -> KeyPair:
    """A new key and a certificate for it signed by C{ca}."""
    key = new_key()
    certificate = issue(ca, key.public_key(), common_name, usage, now, organizations, alt_names)
    return KeyPair(certificate, key)


def is_signed_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether C{ca} issued C{certificate} (signature and issuer name)."""
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; ValueError if there is none or one is corrupt."""
    certificates = x509.load_pem_x509_certificates(data)
    if not certificates:
        raise ValueError("no certificate found")
    return certificates


def load_pem_key(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an ECDSA private key")
    return key
