"""
Node passwords as k3s keeps them: an scrypt hash in the immutable secret
``kube-system/<node>.node-password.k3s``, compared on every certificate request.

The hash format is k3s's (``pkg/authenticator/hash/scrypt.go``):
``$1:<salt hex>:<log2 N>:<r>:<p>:<base64 key, unpadded>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SECRET_TYPE = "k3s.cattle.io/node-password"
SECRET_NAMESPACE = "kube-system"
SECRET_SUFFIX = ".node-password.k3s"
VERSION = "1"
LOG2_N = 15
R = 8
P = 1
KEY_LENGTH = 64
SALT_LENGTH = 8
# scrypt needs 128 * r * N bytes; leave room above that for OpenSSL's bookkeeping.
_MAX_MEMORY = 128 * R * (1 << LOG2_N) * 2


def secret_name(node: str) -> str:
    """The secret that holds C{node}'s password hash (in L{SECRET_NAMESPACE})."""
    return f"{node.lower()}{SECRET_SUFFIX}"


class BadHash(ValueError):
    """A stored hash that is not in k3s's scrypt format."""


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=1 << log2_n,
        r=r,
        p=p,
        dklen=KEY_LENGTH,
        maxmem=max(_MAX_MEMORY, 128 * r * (1 << log2_n) * 2),
    )


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A new hash of C{password} (CPU-heavy: call it off the reactor thread)."""
    salt = os.urandom(SALT_LENGTH) if salt is None else salt
    key = _derive(password, salt, LOG2_N, R, P)
    encoded = base64.b64encode(key).decode("ascii").rstrip("=")
    return f"${VERSION}:{salt.hex()}:{LOG2_N}:{R}:{P}:{encoded}"


def verify_password(password: str, stored: str) -> bool:
    """
    Whether C{password} matches C{stored}, in constant time (CPU-heavy).

    :raises BadHash: C{stored} is not a k3s scrypt hash.
    """
    fields = stored.split(":")
    if len(fields) != 6 or fields[0] != f"${VERSION}":
        raise BadHash("unknown password hash format")
    try:
        salt = bytes.fromhex(fields[1])
        log2_n, r, p = int(fields[2]), int(fields[3]), int(fields[4])
        key = base64.b64decode(fields[5] + "=" * (-len(fields[5]) % 4))
    except ValueError:
        raise BadHash("malformed password hash") from None
    if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise BadHash("password hash parameters out of range")
    return hmac.compare_digest(_derive(password, salt, log2_n, r, p), key)
