"""
What a server on embedded etcd does before the reactor runs (blocking, as
C{prepare_server} is): a joining server validates the token against the
cluster's CA, compares its critical configuration with the server it joins
through, takes the bootstrap data (the CAs, etcd's included) and has its
member added as a learner; every server then writes its member's
certificates and config.  The messages are k3s's.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from k3stw.agent.cacerts import CAHashMismatch
from k3stw.datastore.etcd import EtcdError, EtcdKeys
from k3stw.datastore.interface import DatastoreUnavailable
from k3stw.datastore.location import DatastoreTLS, EtcdEndpoint
from k3stw.etcd.config import (
    EtcdLayout,
    MemberConfig,
    config_document,
    member_name,
    node_of_member,
    render,
)
from k3stw.files import write_atomically
from k3stw.lifecycle import StartupError
from k3stw.logs import Logger
from k3stw.pki.certs import SubjectAltNames
from k3stw.pki.store import (
    ServerCredentials,
    load_or_create_etcd_certificates,
    load_or_create_server_credentials,
)
from k3stw.pki.token import Token, ca_hash
from k3stw.server import bootstrapdata
from k3stw.server.config import ServerConfig

_log = Logger(namespace="k3stw.etcd")

#: ``config.Control``'s critical fields (as ``/v1-k3s/config`` names them) and their flags.
CRITICAL = {
    "ClusterIPRange": "cluster-cidr",
    "ServiceIPRange": "service-cidr",
    "ClusterDNS": "cluster-dns",
    "ClusterDomain": "cluster-domain",
    "DisableCCM": "disable-cloud-controller",
    "DisableNPC": "disable-network-policy",
    "DisableServiceLB": "disable-service-lb",
    "EgressSelectorMode": "egress-selector-mode",
    "FlannelBackend": "flannel-backend",
    "EncryptSecrets": "secrets-encryption",
    "EncryptProvider": "secrets-encryption-provider",
}
MISMATCH = (
    "failed to validate server configuration: critical configuration value mismatch between servers"
)
DUPLICATE_NAME = "duplicate node name found, please use a unique name for this node"
#: etcd's refusals that end when the members before us finish joining.
_WAIT_FOR_OTHERS = ("too many learner members", "unhealthy")


def critical_values(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The critical fields of a server's settings, networks in one spelling."""
    values: dict[str, Any] = {}
    for field in CRITICAL:
        if field == "DisableServiceLB":
            values[field] = "servicelb" in (settings.get("Disables") or ())
            continue
        value = settings.get(field)
        if field in ("ClusterIPRange", "ServiceIPRange", "ClusterDNS") and value:
            value = _networks(str(value))
        values[field] = value
    return values


def _networks(text: str) -> tuple[str, ...]:
    try:
        return tuple(str(ipaddress.ip_network(p.strip(), strict=False)) for p in text.split(","))
    except ValueError:
        return (text,)


def critical_mismatches(local: Mapping[str, Any], remote: Mapping[str, Any]) -> list[str]:
    """The flags whose values differ between this server and the one it joins (k3s's check)."""
    mine, theirs = critical_values(local), critical_values(remote)
    if not theirs["EgressSelectorMode"]:
        theirs["EgressSelectorMode"] = mine["EgressSelectorMode"]
    return [CRITICAL[field] for field in CRITICAL if mine[field] != theirs[field]]


#: Tries of one request to the server a new server joins through.  A load
#: balancer in front of several servers (the fixed registration address) may
#: hand the connection to a peer still starting, which drops it.
ATTEMPTS = 3


class Supervisor:
    """Blocking requests to the supervisor of the server a new server joins through."""

    def __init__(self, url: str, token: Token, retry_delay: float = 1.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.ca_bundle = b""
        self._retry_delay = retry_delay

    def _read(self, request: str | urllib.request.Request, context: ssl.SSLContext) -> bytes:
        """The body of C{request}, tried again after a failed connection (not after an answer)."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with urllib.request.urlopen(request, timeout=15, context=context) as answer:
                    body: bytes = answer.read()
                    return body
            except urllib.error.HTTPError:
                raise
            except OSError as e:
                if attempt == ATTEMPTS:
                    raise
                _log.info("Waiting to reach {url}: {error}", url=self.url, error=str(e))
                time.sleep(self._retry_delay)
        raise AssertionError("unreachable")

    def validate(self) -> None:
        """Fetch ``/cacerts`` unverified and check it against the token's CA hash."""
        insecure = ssl._create_unverified_context()
        try:
            bundle = self._read(self.url + "/cacerts", insecure)
            server_hash = ca_hash(bundle)
        except (OSError, ValueError) as e:
            raise StartupError(f"failed to validate token: {self.url}/cacerts: {e}") from None
        if self.token.ca_hash and self.token.ca_hash != server_hash:
            raise StartupError(
                f"failed to validate token: {CAHashMismatch(self.token.ca_hash, server_hash)}"
            )
        self.ca_bundle = bundle

    def get(self, path: str, user: str, password: str) -> Any:
        """The JSON answer of C{path}, over TLS verified with the cluster CA."""
        context = ssl.create_default_context(cadata=self.ca_bundle.decode())
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": "Basic " + pair}
        )
        return json.loads(self._read(request, context))


def prepare_member(config: ServerConfig, now: datetime.datetime) -> ServerCredentials:
    """
    Credentials and the etcd member's files for a server on embedded etcd:
    a new cluster (``--cluster-init``), a join (``--server`` and the token),
    or a restart of the member already in the data directory.

    :raises StartupError: with k3s's message when the join is refused.
    """
    settings = config.etcd
    assert settings is not None
    layout = EtcdLayout(config.server_dir)
    if layout.tombstone.exists():
        if not settings.join_url:
            raise StartupError(
                f"this server's etcd member was removed from the cluster ({layout.tombstone}); "
                "start it with --server https://<server>:6443 and the token to join again"
            )
        _back_up_removed_member(layout)
    supervisor = None
    if not layout.initialized and settings.join_url and not settings.cluster_init:
        _log.info("Managed etcd cluster not yet initialized")
        if config.token is None:
            raise StartupError("token is required to join a cluster")
        supervisor = Supervisor(settings.join_url, config.token)
        supervisor.validate()
        _check_critical_config(config, supervisor)
        try:
            document = supervisor.get("/v1-k3s/server-bootstrap", "server", config.token.password)
        except (OSError, ValueError) as e:
            raise StartupError(f"failed to get bootstrap data from {supervisor.url}: {e}") from None
        bootstrapdata.reconcile(config.server_dir, document, supervisor.url)
    credentials = load_or_create_server_credentials(
        config.server_dir, config.serving_alt_names(), now, config.token, config.agent_token
    )
    address = member_address(config)
    names = config.serving_alt_names()
    load_or_create_etcd_certificates(
        config.server_dir,
        SubjectAltNames.of([*map(str, names.ip_addresses), address, *names.dns_names]),
        now,
    )
    layout.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = _name(layout, config.hostname, new=settings.cluster_reset)
    member = MemberConfig(
        name, address, expose_metrics=settings.expose_metrics, extra=settings.extra
    )
    if settings.cluster_reset:
        from k3stw.etcd.snapshots import prepare_reset

        member = MemberConfig(
            name, address, ((name, member.peer_url),), "new", reset=True,
            expose_metrics=settings.expose_metrics, extra=settings.extra,
        )  # fmt: skip
        prepare_reset(layout, settings, member)
        _log.info("Starting etcd for new cluster, cluster-reset=true")
    elif layout.initialized:
        # The first normal start after a reset (k3s deletes the flag then too).
        layout.reset_flag.unlink(missing_ok=True)
        _log.info("Managed etcd cluster bootstrap already complete and initialized")
        _log.info("Starting etcd for existing cluster member")
    elif supervisor is not None:
        initial = _add_member(supervisor, layout, config, credentials, member)
        member = MemberConfig(
            name, address, initial, "existing",
            expose_metrics=settings.expose_metrics, extra=settings.extra,
        )  # fmt: skip
    else:
        _log.info("Managed etcd cluster initializing")
        _log.info("Starting etcd for new cluster, cluster-reset=false")
        member = MemberConfig(
            name, address, ((name, member.peer_url),), "new",
            expose_metrics=settings.expose_metrics, extra=settings.extra,
        )  # fmt: skip
    write_atomically(layout.config_file, render(config_document(layout, member)).encode(), 0o600)
    return credentials


#: How many data dirs of removed members are kept (k3s: 5).
BACKUPS_KEPT = 5


def _back_up_removed_member(layout: EtcdLayout) -> None:
    """k3s's answer to a tombstone: move the removed member's data aside (keeping 5)."""
    _log.info("tombstone file has been detected, removing data dir to rejoin the cluster")
    layout.data_dir.rename(layout.db / f"etcd-backup-{int(time.time())}")
    backups = sorted(layout.db.glob("etcd-backup-*"), key=lambda p: p.name)
    for old in backups[:-BACKUPS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)


def member_address(config: ServerConfig) -> str:
    """Where the member serves: the node IP (k3s's ``--node-ip`` or private IP)."""
    return config.node_ips[0]


def _name(layout: EtcdLayout, node_name: str, *, new: bool) -> str:
    if layout.name_file.exists() and not new:
        return layout.name_file.read_text().strip()
    try:
        name = member_name(node_name)
    except ValueError as e:
        raise StartupError(str(e)) from None
    write_atomically(layout.name_file, name.encode(), 0o600)
    return name


def _check_critical_config(config: ServerConfig, supervisor: Supervisor) -> None:
    token = config.agent_token or config.token
    assert token is not None
    try:
        remote = supervisor.get("/v1-k3s/config", "node", token.password)
    except (OSError, ValueError) as e:
        _log.warn("Skipping cluster configuration validation: {error}", error=str(e))
        return
    mismatched = critical_mismatches(config.agent_settings(), remote)
    if mismatched:
        # k3s warns once per flag, then fails; the log is not up yet, so all go in the error.
        lines = [f"critical configuration mismatched: {flag}" for flag in mismatched]
        raise StartupError("\n".join([*lines, MISMATCH]))


def _add_member(
    supervisor: Supervisor,
    layout: EtcdLayout,
    config: ServerConfig,
    credentials: ServerCredentials,
    member: MemberConfig,
) -> tuple[tuple[str, str], ...]:
    """
    Have this member added as a learner (k3s's join), waiting while others
    finish joining; the cluster's members with this one.
    """
    assert config.token is not None
    certificates = layout.certificates
    cert, key = certificates.client
    tls = DatastoreTLS(certificates.server_ca, cert, key)
    join_host = urlsplit(supervisor.url).hostname
    while True:
        try:
            info = supervisor.get("/db/info", "server", config.token.password)
            urls = _client_urls(info.get("members") or [], join_host, member.client_url)
            keys = EtcdKeys(EtcdEndpoint(tuple(urls), tls))
            members = keys.call("/v3/cluster/member/list", {}).get("members") or []
        except (OSError, ValueError, DatastoreUnavailable) as e:
            _log.info("Waiting to retrieve etcd cluster member list: {error}", error=str(e))
            time.sleep(1.0)
            continue
        initial: list[tuple[str, str]] = []
        added = False
        for existing in members:
            name = existing.get("name", "")
            peers = existing.get("peerURLs") or [""]
            ours = member.peer_url in peers
            if ours and name in ("", member.name):
                added = True
                name = member.name
            elif node_of_member(name) == config.hostname:
                layout.name_file.unlink(missing_ok=True)
                raise StartupError(f"etcd cluster join failed: {DUPLICATE_NAME}")
            initial.append((name, peers[0]))
        if not added:
            _log.info(
                "Adding member {name}={url} to etcd cluster {members}",
                name=member.name,
                url=member.peer_url,
                members=[f"{n}={u}" for n, u in initial],
            )
            try:
                keys.call(
                    "/v3/cluster/member/add", {"peerURLs": [member.peer_url], "isLearner": True}
                )
            except EtcdError as e:
                if any(text in e.message for text in _WAIT_FOR_OTHERS):
                    _log.info(
                        "Waiting for other members to finish joining etcd cluster: {error}",
                        error=e.message,
                    )
                    time.sleep(1.0)
                    continue
                raise StartupError(f"etcd cluster join failed: {e.message}") from None
            except DatastoreUnavailable as e:
                _log.info("Waiting to retrieve etcd cluster member list: {error}", error=str(e))
                time.sleep(1.0)
                continue
            initial.append((member.name, member.peer_url))
        _log.info(
            "Starting etcd to join cluster with members {members}",
            members=[f"{n}={u}" for n, u in initial],
        )
        return tuple(initial)


def _client_urls(members: list[dict[str, Any]], join_host: str | None, own: str) -> list[str]:
    """Voting members' client URLs but ours, the one on the join URL's host first."""
    urls = [
        url
        for m in members
        if not m.get("isLearner")
        for url in m.get("clientURLs") or []
        if url != own
    ]
    urls.sort(key=lambda url: urlsplit(url).hostname != join_host)
    if not urls:
        raise ValueError("no voting etcd member with a client URL")
    return urls
