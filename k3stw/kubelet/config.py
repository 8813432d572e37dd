"""
The kubelet's settings and the node flags they come from (``--node-label``,
``--node-taint``), validated as the kubelet validates them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from k3stw.machinery.nodes import KUBELET_PORT, TAINT_EFFECTS, Taint

#: The kubelet's ``containerLogMaxSize`` (10Mi) and ``containerLogMaxFiles`` defaults.
CONTAINER_LOG_MAX_SIZE = 10 * 1024 * 1024
CONTAINER_LOG_MAX_FILES = 5

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

#: Labels in the kubernetes.io and k8s.io namespaces a kubelet may set itself.
_ALLOWED_KUBERNETES_PREFIXES = ("kubelet.kubernetes.io/", "node.kubernetes.io/")
_ALLOWED_KUBERNETES_LABELS = frozenset(
    {
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "beta.kubernetes.io/os",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "kubernetes.io/arch",
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    }
)


class NodeFlagError(ValueError):
    """A ``--node-label``, ``--node-taint`` or ``--kubelet-arg`` that the kubelet would refuse."""


def _check_key(key: str, what: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if not slash:
        prefix, name = "", key
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise NodeFlagError(
            f"invalid {what} key {key!r}: prefix part must be a lowercase RFC 1123 subdomain"
        )
    if not name or len(name) > 63 or not _NAME.match(name):
        raise NodeFlagError(
            f"invalid {what} key {key!r}: name part must consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character "
            "(at most 63 characters)"
        )


def _check_value(value: str, key: str, what: str) -> None:
    if value and (len(value) > 63 or not _NAME.match(value)):
        raise NodeFlagError(
            f"invalid {what} value {value!r} for {key!r}: a valid label value must be 63 "
            "characters or less and must be empty or begin and end with an alphanumeric "
            "character, with '-', '_' or '.' between"
        )


def _kubernetes_namespace(key: str) -> bool:
    domain = key.rpartition("/")[0]
    return any(
        domain == suffix or domain.endswith("." + suffix) for suffix in ("kubernetes.io", "k8s.io")
    )


def parse_node_labels(flags: Iterable[str]) -> dict[str, str]:
    """
    ``--node-label key=value`` flags as a label map, refusing what the kubelet
    refuses: malformed keys and values, and labels in the ``kubernetes.io``
    namespace outside the few a node may set on itself.

    :raises NodeFlagError: naming the offending flag.
    """
    labels: dict[str, str] = {}
    refused: list[str] = []
    for flag in flags:
        key, equals, value = flag.partition("=")
        key, value = key.strip(), value.strip()
        if not equals:
            raise NodeFlagError(f"invalid node label {flag!r}: expected key=value")
        _check_key(key, "label")
        _check_value(value, key, "label")
        if _kubernetes_namespace(key) and not (
            key in _ALLOWED_KUBERNETES_LABELS or key.startswith(_ALLOWED_KUBERNETES_PREFIXES)
        ):
            refused.append(key)
        labels[key] = value
    if refused:
        raise NodeFlagError(
            "unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: "
            f"[{' '.join(refused)}]\n--node-labels in the 'kubernetes.io' namespace must begin "
            "with an allowed prefix (kubelet.kubernetes.io, node.kubernetes.io) or be in the "
            f"specifically allowed set ({', '.join(sorted(_ALLOWED_KUBERNETES_LABELS))})"
        )
    return labels


def parse_node_taint(flag: str) -> Taint:
    """
    One ``--node-taint`` (``key=value:Effect`` or ``key:Effect``).

    :raises NodeFlagError: for a malformed taint or an unknown effect.
    """
    spec, colon, effect = flag.strip().rpartition(":")
    if not colon or not spec:
        raise NodeFlagError(f"invalid taint spec: {flag}: expected key=value:Effect")
    if effect not in TAINT_EFFECTS:
        raise NodeFlagError(
            f"invalid taint effect: {effect}, unsupported taint effect "
            f"(one of {', '.join(TAINT_EFFECTS)})"
        )
    key, _, value = spec.partition("=")
    _check_key(key, "taint")
    _check_value(value, key, "taint")
    return Taint(key, value, effect)


def parse_node_taints(flags: Iterable[str]) -> tuple[Taint, ...]:
    """Every ``--node-taint``, in order, without duplicates of a key and effect."""
    taints: dict[tuple[str, str], Taint] = {}
    for flag in flags:
        taint = parse_node_taint(flag)
        taints.setdefault((taint.key, taint.effect), taint)
    return tuple(taints.values())


@dataclass(frozen=True)
class KubeletConfig:
    """
    What the kubelet needs to know about its node and its timing.

    :ivar node_name: the Node's name (already lowercased, with any node id suffix).
    :ivar node_ips: ``--node-ip`` values: the node's InternalIP addresses.
    :ivar external_ips: ``--node-external-ip`` values: its ExternalIP addresses.
    :ivar labels: parsed ``--node-label``s (L{parse_node_labels}).
    :ivar taints: parsed ``--node-taint``s (L{parse_node_taints}), set when the Node is created.
    :ivar is_server: the node runs the control plane (it gets the role labels).
    :ivar port: the kubelet API's port on loopback (``--kubelet-arg=port=``),
        reported as the Node's ``daemonEndpoints``.
    :ivar data_dir: where ephemeral storage is measured (the agent's data dir).
    :ivar lease_duration: the Lease's ``leaseDurationSeconds``.
    :ivar lease_interval: seconds between Lease renewals.
    :ivar status_interval: seconds between node status checks (``nodeStatusUpdateFrequency``).
    :ivar status_report_interval: seconds after which an unchanged status is posted
        anyway (``nodeStatusReportFrequency``); the Lease is the heartbeat.
    :ivar timeout: longest one registration, renewal or status post may take.
    :ivar retry_initial: first wait after a failure; it doubles with each failure in a row...
    :ivar retry_max: ...up to this.
    :ivar retry_jitter: fraction of a wait added at random, so nodes do not retry in step.
    :ivar cluster_dns: ``--cluster-dns``: the resolvers ClusterFirst pods use.
    :ivar cluster_domain: ``--cluster-domain``: the cluster's DNS domain.
    :ivar cgroup_root: ``--cgroup-root``: where the pods' cgroups go.
    :ivar container_log_max_size: ``containerLogMaxSize`` in bytes (negative: no rotation).
    :ivar container_log_max_files: ``containerLogMaxFiles``.
    """

    node_name: str
    node_ips: tuple[str, ...]
    data_dir: str
    external_ips: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    taints: tuple[Taint, ...] = ()
    is_server: bool = False
    port: int = KUBELET_PORT
    lease_duration: int = 40
    lease_interval: float = 10.0
    status_interval: float = 10.0
    status_report_interval: float = 300.0
    timeout: float = 30.0
    retry_initial: float = 0.5
    retry_max: float = 10.0
    retry_jitter: float = 0.2
    cluster_dns: tuple[str, ...] = ("10.43.0.10",)
    cluster_domain: str = "cluster.local"
    cgroup_root: str = "/"
    container_log_max_size: int = CONTAINER_LOG_MAX_SIZE
    container_log_max_files: int = CONTAINER_LOG_MAX_FILES


@dataclass(frozen=True)
class KubeletArgs:
    """The ``--kubelet-arg`` values k3stw's kubelet honours; the others, to warn about."""

    port: int = KUBELET_PORT
    ignored: tuple[str, ...] = ()
    #: ``cgroup-root``: the cgroup the pods' QoS cgroups (``kubepods``) go under.
    cgroup_root: str = "/"
    #: ``container-log-max-size`` in bytes: a container log this big is rotated.
    container_log_max_size: int = CONTAINER_LOG_MAX_SIZE
    #: ``container-log-max-files``: the most log files a container keeps.
    container_log_max_files: int = CONTAINER_LOG_MAX_FILES


def parse_kubelet_args(args: Iterable[str]) -> KubeletArgs:
    """
    ``--kubelet-arg`` values (``name=value``, with or without leading dashes).

    :raises NodeFlagError: a value without ``=``, or a port that is not one.
    """
    port = KUBELET_PORT
    cgroup_root = "/"
    log_size, log_files = CONTAINER_LOG_MAX_SIZE, CONTAINER_LOG_MAX_FILES
    ignored: list[str] = []
    for arg in args:
        name, equals, value = arg.lstrip("-").partition("=")
        if not equals:
            raise NodeFlagError(f"invalid kubelet-arg {arg!r}: expected name=value")
        if name == "port":
            if not value.isdigit() or not 1 <= int(value) <= 65535:
                raise NodeFlagError(f"invalid kubelet-arg {arg!r}: port must be 1-65535")
            port = int(value)
        elif name == "cgroup-root":
            if not value.startswith("/"):
                raise NodeFlagError(f"invalid kubelet-arg {arg!r}: cgroup-root must be absolute")
            cgroup_root = value
        elif name == "container-log-max-size":
            log_size = _log_size(arg, value)
        elif name == "container-log-max-files":
            if not value.lstrip("-").isdigit() or int(value) <= 1:
                raise NodeFlagError(
                    f"invalid kubelet-arg {arg!r}: containerLogMaxFiles "
                    f"(--container-log-max-files) {value} must be greater than 1"
                )
            log_files = int(value)
        else:
            ignored.append(arg)
    return KubeletArgs(port, tuple(ignored), cgroup_root, log_size, log_files)


def _log_size(arg: str, value: str) -> int:
    """A ``container-log-max-size`` quantity in bytes (kube's ``parseMaxSize``)."""
    from k3stw.machinery.quantity import QuantityError, parse_quantity

    try:
        size = parse_quantity(value).value
    except QuantityError as e:
        raise NodeFlagError(
            f'invalid kubelet-arg {arg!r}: failed to parse container log max size "{value}": {e}'
        ) from None
    if size.denominator != 1 or not -(2**63) <= size < 2**63:
        raise NodeFlagError(f"invalid kubelet-arg {arg!r}: invalid max log size")
    return int(size)
