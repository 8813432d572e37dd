"""
From etcd's answers to the datastore's types: keys, values, lease IDs, and
L{KeyValue} and L{Event} from the gateway's JSON (pure, no I/O).
"""

from __future__ import annotations

import random
from typing import Any

from k3stw.datastore.etcd.gateway import as_int, unb64
from k3stw.datastore.interface import Event, EventType, KeyValue

# Lease IDs are chosen by us and carry the TTL they were granted with, so a
# KeyValue can report its TTL without a round trip per key and two k3stw
# servers sharing one etcd agree on it.  Layout of the positive int64:
# 8 bits tag | 31 random bits | 24 bits TTL in seconds.
_LEASE_TAG = 0x6B
_LEASE_TTL_BITS = 24
_LEASE_RANDOM_BITS = 31
LEASE_MAX_TTL = (1 << _LEASE_TTL_BITS) - 1


def lease_ttl(lease_id: int) -> int:
    """The TTL encoded in one of our lease IDs, or 0 for a lease someone else made."""
    if lease_id >> (_LEASE_TTL_BITS + _LEASE_RANDOM_BITS) != _LEASE_TAG:
        return 0
    return lease_id & LEASE_MAX_TTL


def new_lease_id(ttl: int) -> int:
    """A fresh lease ID of ours that carries C{ttl}."""
    salt = random.getrandbits(_LEASE_RANDOM_BITS)
    return (_LEASE_TAG << (_LEASE_TTL_BITS + _LEASE_RANDOM_BITS)) | (salt << _LEASE_TTL_BITS) | ttl


def decode_key(text: str | None) -> str:
    """A key as the gateway spells it, as the datastore's C{str}."""
    return unb64(text).decode("utf-8", "surrogateescape")


def decode_kv(obj: dict[str, Any]) -> KeyValue:
    """One C{mvccpb.KeyValue} of an answer."""
    return KeyValue(
        key=decode_key(obj.get("key")),
        value=unb64(obj.get("value")),
        create_revision=as_int(obj.get("create_revision")),
        mod_revision=as_int(obj.get("mod_revision")),
        lease=lease_ttl(as_int(obj.get("lease"))),
    )


def decode_event(obj: dict[str, Any]) -> Event:
    """One C{mvccpb.Event} of a watch answer (asked for with C{prev_kv})."""
    raw_kv = obj.get("kv", {})
    prev = decode_kv(obj["prev_kv"]) if obj.get("prev_kv") else None
    revision = as_int(raw_kv.get("mod_revision"))
    if obj.get("type") == "DELETE":
        key = decode_key(raw_kv.get("key"))
        if prev is None:  # the previous version was compacted away
            kv = KeyValue(key, b"", 0, revision)
        else:
            kv = KeyValue(key, prev.value, prev.create_revision, revision, prev.lease)
        return Event(EventType.DELETE, revision, kv, prev)
    kv = decode_kv(raw_kv)
    if as_int(raw_kv.get("version")) == 1:
        return Event(EventType.CREATE, revision, kv, None)
    return Event(EventType.UPDATE, revision, kv, prev)
