"""
The service-account key (``server/tls/service.key``): its first private key
signs every token (RS256, as kube-apiserver signs with an RSA key), and every
key in the file verifies them, so a key being rotated out still verifies the
tokens it signed.  Each key is known by kube-apiserver's key id: the unpadded
base64url SHA-256 of its DER public key, in the token's ``kid`` header.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ALGORITHM = "RS256"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


class BadSignature(Exception):
    """A token that is not a JWS, or that none of the keys signed."""


def key_id(public: rsa.RSAPublicKey) -> str:
    """kube-apiserver's ``kid``: base64url (unpadded) SHA-256 of the PKIX DER public key."""
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class ServiceAccountKeys:
    """The key that signs tokens and the keys that verify them, by key id."""

    signing: rsa.RSAPrivateKey
    verifying: Mapping[str, rsa.RSAPublicKey]

    @classmethod
    def from_pem(cls, pem: bytes) -> ServiceAccountKeys:
        """
        The keys of a PEM file: RSA private keys (the first signs) and public keys.

        :raises ValueError: no RSA private key, or a block that is no RSA key.
        """
        private: list[rsa.RSAPrivateKey] = []
        public: list[rsa.RSAPublicKey] = []
        for block in _PEM_BLOCK.finditer(pem):
            text = block.group(0)
            key: Any
            if block.group(1).endswith(b"PUBLIC KEY"):
                key = serialization.load_pem_public_key(text)
            else:
                key = serialization.load_pem_private_key(text, None)
            if isinstance(key, rsa.RSAPrivateKey):
                private.append(key)
                public.append(key.public_key())
            elif isinstance(key, rsa.RSAPublicKey):
                public.append(key)
            else:
                raise ValueError(f"{block.group(1).decode()} is not an RSA key")
        if not private:
            raise ValueError("no RSA private key")
        return cls(private[0], {key_id(key): key for key in public})

    def sign(self, claims: Mapping[str, Any]) -> str:
        """C{claims} as a compact JWS, headed as kube-apiserver heads it (alg and kid)."""
        return jwt.encode(
            dict(claims),
            self.signing,
            ALGORITHM,
            headers={"kid": key_id(self.signing.public_key()), "typ": None},
        )

    def verify(self, token: str) -> dict[str, Any]:
        """
        The claims of C{token} once one of the keys verifies its signature
        (the key its ``kid`` names first); no claim is checked here.

        :raises BadSignature: not a JWS, or no key verifies it.
        """
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as e:
            raise BadSignature(str(e)) from None
        named = self.verifying.get(kid) if isinstance(kid, str) else None
        keys = [named] if named is not None else list(self.verifying.values())
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key, [ALGORITHM], options=_SIGNATURE_ONLY
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError as e:
                raise BadSignature(str(e)) from None
            return claims
        raise BadSignature("no service-account key verifies the signature")


#: Claims are checked by L{k3stw.apiserver.tokens.claims}, on the server's clock.
_SIGNATURE_ONLY: Any = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}
_NOTHING: Any = {**_SIGNATURE_ONLY, "verify_signature": False}


def unverified_claims(token: str) -> dict[str, Any] | None:
    """What C{token} claims before any check (to tell whose it is), or None if no JWT."""
    try:
        claims: Any = jwt.decode(token, options=_NOTHING)
    except jwt.InvalidTokenError:
        return None
    return claims if isinstance(claims, dict) else None
