"""
k3s cluster tokens: ``K10<ca hash>::<username>:<password>`` and their short forms.

The CA hash lets a joining node trust the cluster CA it downloads from
``/cacerts`` before it trusts anything else.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from k3stw.pki.certs import is_signed_by, load_pem_certificates

PREFIX = "K10"
_BOOTSTRAP_TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")


class InvalidToken(ValueError):
    """A token that cannot be parsed; the message is k3s's."""


@dataclass(frozen=True)
class Token:
    """
    A parsed token.

    :ivar ca_hash: 64 lowercase hex digits, or "" when the token has none.
    :ivar username: the user inside the token (callers usually override it:
        agents are always ``node``, joining servers ``server``).
    :ivar password: the secret, or a kubeadm bootstrap token ``id.secret``.
    """

    ca_hash: str
    username: str
    password: str

    @property
    def is_bootstrap(self) -> bool:
        return not self.username and bool(_BOOTSTRAP_TOKEN.match(self.password))

    def __str__(self) -> str:
        credentials = self.password if self.is_bootstrap else f"{self.username}:{self.password}"
        return f"{PREFIX}{self.ca_hash}::{credentials}"

    def authorization(self, user: str) -> bytes:
        """The ``Authorization`` header value that presents this token as C{user}."""
        if self.is_bootstrap:
            return b"Bearer " + self.password.encode("ascii")
        pair = f"{user}:{self.password}".encode()
        return b"Basic " + base64.b64encode(pair)


def parse_token(text: str) -> Token:
    """
    Parse a full, short, or bootstrap token, as k3s does.

    :raises InvalidToken: with k3s's wording (``token must not be empty``,
        ``invalid token CA hash length``, ``invalid token format``).
    """
    text = text.strip()
    if not text:
        raise InvalidToken("token must not be empty")
    if not text.startswith(PREFIX):
        # A bare password has an empty hash and an empty username.
        text = f"{PREFIX}::{text}" if _BOOTSTRAP_TOKEN.match(text) else f"{PREFIX}:::{text}"
    rest = text[len(PREFIX) :]
    ca_hash = ""
    head, separator, tail = rest.partition("::")
    if separator:
        if head and len(head) != 64:
            raise InvalidToken("invalid token CA hash length")
        ca_hash, rest = head, tail
    if _BOOTSTRAP_TOKEN.match(rest):
        return Token(ca_hash, "", rest)
    username, separator, password = rest.partition(":")
    if not separator or not password:
        raise InvalidToken("invalid token format")
    return Token(ca_hash, username, password)


def ca_hash(bundle: bytes) -> str:
    """
    The CA hash of a PEM bundle, as k3s computes it.

    One certificate: SHA-256 of the PEM bytes exactly as served.  Several: the
    SHA-256 of the DER of the root that the first certificate chains to, so
    that intermediates can rotate under a stable root.

    :raises ValueError: the bundle has no certificate, or its chain does not verify.
    """
    certificates = load_pem_certificates(bundle)
    if len(certificates) == 1:
        return hashlib.sha256(bundle).hexdigest()
    root = _chain_root(certificates)
    return hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()


def _chain_root(certificates: list[x509.Certificate]) -> x509.Certificate:
    current, others = certificates[0], certificates[1:]
    for _ in range(len(certificates)):
        issuer = next((c for c in others if is_signed_by(current, c)), None)
        if issuer is None:
            break
        if issuer.subject == issuer.issuer:
            return issuer
        current = issuer
    raise ValueError("failed to verify CA bundle: no chain from the first certificate to a root")


def random_secret() -> str:
    """A new password, as k3s makes them: 16 random bytes in hex."""
    return secrets.token_hex(16)
