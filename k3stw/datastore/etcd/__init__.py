"""
L{IDatastore} over a real etcd v3 cluster, through etcd's JSON gateway.

etcd already is a revisioned key-value log, so this backend translates rather
than emulates: revisions are etcd's C{mod_revision}/C{create_revision}, TTL
keys are attached to etcd leases, compare-and-swap is an etcd transaction that
compares C{mod_revision}, and a watch is one streaming C{POST /v3/watch}.

Everything goes over HTTP/1.1 with Twisted's L{Agent}.  Requests fail over
between the listed endpoints; a watch whose member dies resumes from its next
revision on another member.

The rooms of this package:

- C{gateway}: the JSON gateway client (calls with failover between members,
  streams, TLS, base64 and ranges, etcd's errors), and its blocking twin
  L{EtcdKeys}; it knows nothing of the datastore, so etcd members that k3stw
  runs itself can use it too;
- C{codec}: keys, values and lease IDs, L{KeyValue} and L{Event} from JSON (pure);
- C{watch}: one logical watch over successive streams, and its typed machine;
- C{store}: L{EtcdDatastore}, the service that ties them together.
"""

from __future__ import annotations

from k3stw.datastore.etcd.gateway import (
    EtcdError,
    EtcdGateway,
    EtcdKeys,
    EtcdTLS,
    b64,
    parse_etcd_endpoints,
    prefix_range,
)
from k3stw.datastore.etcd.store import EtcdDatastore
from k3stw.datastore.etcd.watch import EtcdWatch

__all__ = [
    "EtcdDatastore",
    "EtcdError",
    "EtcdGateway",
    "EtcdKeys",
    "EtcdTLS",
    "EtcdWatch",
    "b64",
    "parse_etcd_endpoints",
    "prefix_range",
]
