"""``twistd k3s-server``: options and service assembly for a server."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from twisted.application.service import IService

from k3stw.datastore.endpoint import DatastoreTLS, EndpointError
from k3stw.etcd.config import EtcdLayout, EtcdSettings, parse_etcd_args
from k3stw.kubelet import hostinfo
from k3stw.lifecycle import StartupError
from k3stw.logs import set_debug
from k3stw.server.config import ServerConfig
from k3stw.tap.options import (
    AGENT_FLAGS,
    CLUSTER_DNS_DEFAULT,
    SERVER_FLAGS,
    ConfigurationError,
    K3sOptions,
)

ROOT_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
USER_KUBECONFIG = "~/.kube/k3s.yaml"


class Options(K3sOptions):
    """Flags of ``k3s server``; see ``twistd k3s-server --help``."""

    flags = SERVER_FLAGS
    other_role_flags = AGENT_FLAGS
    command = "k3s-server"
    summary = "Run management server"

    def apply_defaults(self) -> None:
        super().apply_defaults()
        if self["write-kubeconfig"] is None:
            # k3s's: rootless, it goes where kubectl users look (~/.kube).
            self["write-kubeconfig"] = (
                ROOT_KUBECONFIG if os.geteuid() == 0 else os.path.expanduser(USER_KUBECONFIG)
            )


def server_config(options: Options) -> ServerConfig:
    """
    The validated settings of a server; reads ``--token-file`` if given.

    :raises ConfigurationError: a flag asks for what k3stw does not have yet.
    """
    data_dir = Path(options["data-dir"])
    etcd = _etcd_settings(options, data_dir)
    return ServerConfig(
        data_dir=data_dir,
        hostname=options["node-name"] or hostinfo.hostname(),
        bind_address=options["bind-address"],
        https_port=options["https-listen-port"],
        node_ips=options["node-ip"] or (hostinfo.primary_address(),),
        node_external_ips=options["node-external-ip"],
        advertise_address=options["advertise-address"],
        tls_sans=options["tls-san"],
        token=options.token("token"),
        agent_token=options.token("agent-token"),
        kubeconfig=Path(options["write-kubeconfig"]),
        kubeconfig_mode=options["write-kubeconfig-mode"],
        service_cidr=options["service-cidr"],
        cluster_domain=options["cluster-domain"],
        cluster_cidr=options["cluster-cidr"],
        cluster_dns=_cluster_dns(options["cluster-dns"], options["service-cidr"]),
        service_node_port_range=options["service-node-port-range"],
        api_checks=not options["unchecked-api"],
        disable=frozenset(options["disable"]),
        flannel_backend=options["flannel-backend"],
        disable_kube_proxy=options["disable-kube-proxy"],
        disable_network_policy=options["disable-network-policy"],
        secrets_encryption=options["secrets-encryption"],
        secrets_encryption_provider=options["secrets-encryption-provider"],
        default_local_storage_path=_absolute(options["default-local-storage-path"]),
        node=None if options["disable-agent"] else options.node_settings(),
        node_monitor_grace_period=options["node-monitor-grace-period"],
        node_cidr_mask_size=options["node-cidr-mask-size"],
        advertise_port=options["advertise-port"],
        datastore_endpoint=options["datastore-endpoint"],
        etcd=etcd,
        datastore_tls=DatastoreTLS(
            options["datastore-cafile"], options["datastore-certfile"], options["datastore-keyfile"]
        ),
    )


def _etcd_settings(options: Options, data_dir: Path) -> EtcdSettings | None:
    """
    Embedded etcd's settings if this server runs a member, by k3s's rules: a
    member already on disk, or no external datastore and ``--cluster-init``
    or ``--server`` (a join).
    """
    initialized = EtcdLayout(data_dir / "server").initialized
    wanted = options["cluster-init"] or options["server"] or options["cluster-reset"]
    if options["datastore-endpoint"] and not initialized:
        for flag in ("cluster-init", "server", "cluster-reset"):
            if options[flag]:
                raise ConfigurationError(
                    f"--{flag} (from {options.sources[flag]}) is for embedded etcd; servers on "
                    "--datastore-endpoint share it without joining each other: leave it out"
                )
        return None
    if not (initialized or wanted):
        return None
    try:
        extra = parse_etcd_args(options["etcd-arg"])
    except ValueError as e:
        raise ConfigurationError(str(e)) from None
    if options["cluster-reset-restore-path"] and not options["cluster-reset"]:
        raise ConfigurationError("--cluster-reset-restore-path requires --cluster-reset")
    return EtcdSettings(
        cluster_init=options["cluster-init"],
        join_url=options["server"],
        extra=extra,
        expose_metrics=options["etcd-expose-metrics"],
        cluster_reset=options["cluster-reset"],
        restore_path=_absolute(options["cluster-reset-restore-path"]),
        snapshot_cron=options["etcd-snapshot-schedule-cron"],
        snapshot_retention=options["etcd-snapshot-retention"],
        snapshot_dir=_absolute(options["etcd-snapshot-dir"]),
        snapshot_compress=options["etcd-snapshot-compress"],
        snapshot_name=options["etcd-snapshot-name"],
        disable_snapshots=options["etcd-disable-snapshots"],
    )


def _absolute(path: str | None) -> Path | None:
    return None if path is None else Path(path).absolute()


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    set_debug(options["debug"])
    # First, before any thread starts: the arenas a thread gets are fixed when it does.
    from k3stw.heap import process_heap_trimmer

    trimmer = process_heap_trimmer(reactor)
    from k3stw.lifecycle import settle_memory
    from k3stw.server.service import build_server, prepare_server

    try:
        config = server_config(options)
        server = build_server(config, prepare_server(config), reactor)
    except (StartupError, ConfigurationError, EndpointError) as e:
        raise SystemExit(f"k3s-server: {e}") from None
    server.readiness.when_ready().addCallback(lambda _: settle_memory())
    trimmer.setServiceParent(server)
    return server


def _cluster_dns(given: str, service_cidr: str) -> str:
    """
    ``--cluster-dns``; left at its default, the tenth address of the service
    CIDR, as k3s derives it (10.43.0.10 in the default range).
    """
    first = ipaddress.ip_network(service_cidr.split(",")[0].strip(), strict=False)
    if given == CLUSTER_DNS_DEFAULT and ipaddress.ip_address(given) not in first:
        return str(first.network_address + 10)
    return given
