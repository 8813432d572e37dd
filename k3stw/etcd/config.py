"""
An embedded etcd member's name, files and config, as k3s writes them (pure).

k3s keeps the member under ``<data-dir>/server/db/etcd``: the name in
``name`` (``<node>-<8 hex>``), etcd's YAML config in ``config`` (rewritten
before every start), and its certificates under ``server/tls/etcd``.  The
config's keys are k3s's, minus the ones etcd 3.4 (Debian's) does not know
(``listen-client-http-urls``), plus ``enable-grpc-gateway`` (k3stw's etcd
client is the JSON gateway, which k3s's gRPC client does not need).

One deviation: when the node address is itself a loopback address (several
servers on one host, as in tests) the member listens on that address only,
not also on ``127.0.0.1``, which the other members would need too.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k3stw.hostport import join_host_port
from k3stw.pki.store import EtcdCertificates

CLIENT_PORT = 2379
PEER_PORT = 2380
METRICS_PORT = 2381

_GO_DURATION = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+$")
_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9}
_DURATION_UNITS["h"] = 3600 * 10**9


@dataclass(frozen=True)
class EtcdSettings:
    """
    A server's embedded-etcd flags.

    :ivar join_url: ``--server``: the supervisor a new server joins through.
    :ivar extra: ``--etcd-arg``, typed (L{parse_etcd_args}).
    """

    cluster_init: bool = False
    join_url: str | None = None
    extra: Mapping[str, Any] | None = None
    expose_metrics: bool = False
    cluster_reset: bool = False
    restore_path: Path | None = None
    snapshot_cron: str = "0 */12 * * *"
    snapshot_retention: int = 5
    snapshot_dir: Path | None = None
    snapshot_compress: bool = False
    snapshot_name: str = "etcd-snapshot"
    disable_snapshots: bool = False


@dataclass(frozen=True)
class EtcdLayout:
    """The paths of a member below ``<data-dir>/server``."""

    server_dir: Path

    @property
    def db(self) -> Path:
        return self.server_dir / "db"

    @property
    def data_dir(self) -> Path:
        return self.db / "etcd"

    @property
    def name_file(self) -> Path:
        return self.data_dir / "name"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config"

    @property
    def tombstone(self) -> Path:
        """Written when this member was removed from the cluster."""
        return self.data_dir / "tombstone"

    @property
    def reset_flag(self) -> Path:
        return self.db / "reset-flag"

    @property
    def snapshots(self) -> Path:
        """The default ``--etcd-snapshot-dir``."""
        return self.db / "snapshots"

    @property
    def initialized(self) -> bool:
        """Whether this server already holds a member (its write-ahead log exists)."""
        return (self.data_dir / "member" / "wal").is_dir()

    @property
    def certificates(self) -> EtcdCertificates:
        return EtcdCertificates(self.server_dir / "tls" / "etcd")


def member_name(node_name: str, suffix: str | None = None) -> str:
    """k3s's member name: the node name and the first 8 characters of a random UUID."""
    if not node_name:
        raise ValueError("server node name not set")
    return f"{node_name}-{(suffix or str(uuid.uuid4()))[:8]}"


def node_of_member(name: str) -> str:
    """The node name in a member name (all but the last ``-suffix``)."""
    return name.rpartition("-")[0]


def url(address: str, port: int) -> str:
    return "https://" + join_host_port(address, port)


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


@dataclass(frozen=True)
class MemberConfig:
    """
    What a member's config says, beyond its files.

    :ivar address: the node address the member serves and advertises.
    :ivar initial_cluster: ``(name, peer URL)`` of every member, for a new
        cluster or a join; empty when the member restarts from its data.
    :ivar state: ``new`` or ``existing`` (with C{initial_cluster}).
    :ivar reset: start as the one member of the data (``--cluster-reset``).
    """

    name: str
    address: str
    initial_cluster: tuple[tuple[str, str], ...] = ()
    state: str | None = None
    reset: bool = False
    expose_metrics: bool = False
    extra: Mapping[str, Any] | None = None

    @property
    def peer_url(self) -> str:
        return url(self.address, PEER_PORT)

    @property
    def client_url(self) -> str:
        return url(self.address, CLIENT_PORT)


def config_document(layout: EtcdLayout, member: MemberConfig) -> dict[str, Any]:
    """etcd's config for C{member}, with k3s's keys and values."""
    certificates = layout.certificates
    address = member.address
    local = "127.0.0.1"
    if ipaddress.ip_address(address).version == 6:
        local = "::1"
    # Loopback-only while resetting, as k3s; the node address alone when it is loopback itself.
    hosts = [local] if member.reset else _unique([local, address])
    if is_loopback(address):
        hosts = [address]
    metrics = [url(hosts[0], METRICS_PORT).replace("https://", "http://")]
    if member.expose_metrics and not member.reset and not is_loopback(address):
        metrics.append(url(address, METRICS_PORT).replace("https://", "http://"))
    document: dict[str, Any] = {
        "name": member.name,
        "data-dir": str(layout.data_dir),
        "listen-client-urls": ",".join(url(h, CLIENT_PORT) for h in hosts),
        "advertise-client-urls": url(hosts[0] if member.reset else address, CLIENT_PORT),
        "listen-peer-urls": ",".join(url(h, PEER_PORT) for h in hosts),
        "listen-metrics-urls": ",".join(metrics),
        "snapshot-count": 10000,
        "heartbeat-interval": 500,
        "election-timeout": 5000,
        "logger": "zap",
        "log-outputs": ["stderr"],
        "experimental-initial-corrupt-check": True,
        # k3stw speaks etcd's JSON gateway, which etcd serves from a config file only if asked.
        "enable-grpc-gateway": True,
        "experimental-watch-progress-notify-interval": 5_000_000_000,
        "client-transport-security": {
            "cert-file": certificates.path("server-client.crt"),
            "key-file": certificates.path("server-client.key"),
            "client-cert-auth": True,
            "trusted-ca-file": certificates.server_ca,
        },
        "peer-transport-security": {
            "cert-file": certificates.path("peer-server-client.crt"),
            "key-file": certificates.path("peer-server-client.key"),
            "client-cert-auth": True,
            "trusted-ca-file": certificates.peer_ca,
        },
    }
    if member.initial_cluster:
        document["initial-advertise-peer-urls"] = member.peer_url
        document["initial-cluster"] = ",".join(f"{n}={u}" for n, u in member.initial_cluster)
        document["initial-cluster-state"] = member.state or "new"
    if member.reset:
        document["force-new-cluster"] = True
    document.update(member.extra or {})
    return document


def render(document: Mapping[str, Any]) -> str:
    """The YAML k3s writes: keys sorted."""
    import yaml  # about a megabyte: only servers on embedded etcd need it

    return yaml.safe_dump(dict(document), sort_keys=True, default_flow_style=False)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def parse_etcd_args(args: Sequence[str]) -> dict[str, Any]:
    """
    ``--etcd-arg key=value`` as k3s types the values: integers, Go durations
    (as nanoseconds) for keys about time, lists, booleans, else strings.

    :raises ValueError: an argument without ``=``.
    """
    parsed: dict[str, Any] = {}
    for arg in args:
        key, equals, value = arg.partition("=")
        key = key.lstrip("-")
        if not equals or not key:
            raise ValueError(f"--etcd-arg {arg!r}: expected key=value")
        parsed[key] = _typed(key, value)
    return parsed


def _typed(key: str, value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        pass
    timed = any(word in key for word in ("time", "duration", "interval", "retention"))
    if timed and _GO_DURATION.match(value):
        return _nanoseconds(value)
    if value.startswith("["):
        import yaml

        try:
            loaded = yaml.safe_load(value)
        except yaml.YAMLError:
            loaded = None
        if isinstance(loaded, list):
            return [str(item) for item in loaded]
    if value in ("true", "false"):
        return value == "true"
    return value


def _nanoseconds(text: str) -> int:
    total = 0.0
    for number, unit in re.findall(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)", text):
        total += float(number) * _DURATION_UNITS[unit]
    return int(total)
