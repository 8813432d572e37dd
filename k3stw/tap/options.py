"""
The k3s command-line surface shared by ``k3s-server`` and ``k3s-agent``.

Each flag is declared once, as a L{Flag}, and may be set from three places,
with k3s's precedence: the command line, then a ``K3S_*`` environment
variable, then the YAML config file (``/etc/rancher/k3s/config.yaml`` and the
``config.yaml.d/*.yaml`` drop-ins next to it), then the default.  Every value
goes through the same parser whichever place it came from, so a bad value is
always one line that names the flag and where the value was found.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from twisted.python import usage

from k3stw.pki.token import InvalidToken, Token, parse_token

if TYPE_CHECKING:
    from k3stw.agent.service import NodeSettings

DEFAULT_CONFIG_FILE = "/etc/rancher/k3s/config.yaml"
ROOT_NODE_IDENTITY_DIR = "/etc/rancher/node"


class ConfigurationError(usage.UsageError):
    """A flag, environment variable or config file entry that cannot be used."""


# Value parsers: each takes what the user wrote (a string, or a YAML scalar)
# and returns the typed value or raises ValueError saying what was expected.


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("expected a single string")
    return str(value)


def _integer(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    try:
        return int(str(value), 10)
    except ValueError:
        raise ValueError("expected a whole number") from None


def _port(value: object) -> int:
    port = _integer(value)
    if not 1 <= port <= 65535:
        raise ValueError("expected a TCP port number from 1 to 65535")
    return port


def _optional_port(value: object) -> int:
    port = _integer(value)
    if not 0 <= port <= 65535:
        raise ValueError("expected 0 (off) or a TCP port number from 1 to 65535")
    return port


def _boolean(value: object) -> bool:
    # The spellings Go's strconv.ParseBool accepts, as k3s reads K3S_* booleans.
    if isinstance(value, bool):
        return value
    text = str(value)
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError("expected true or false")


def _file_mode(value: object) -> int:
    try:
        mode = int(_text(value), 8)
    except ValueError:
        raise ValueError("expected an octal file mode such as 0600 or 0644") from None
    if not 0 <= mode <= 0o777:
        raise ValueError("expected an octal file mode such as 0600 or 0644")
    return mode


def _seconds(value: object) -> float:
    text = _text(value).strip()
    try:
        seconds = float(text[:-1] if text.endswith("s") else text)
    except ValueError:
        raise ValueError("expected a number of seconds such as 40 or 40s") from None
    if seconds <= 0:
        raise ValueError("expected a positive number of seconds")
    return seconds


def _ip_address(value: object) -> str:
    text = _text(value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError("expected an IPv4 or IPv6 address") from None


def _https_url(value: object) -> str:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("expected an https:// URL such as https://myserver:6443")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("expected an https:// URL with a valid port") from None
    return text.rstrip("/")


def _cron(value: object) -> str:
    from k3stw.apiserver.kinds.cronjobs import Schedule, ScheduleError

    text = _text(value)
    try:
        Schedule.parse(text)
    except ScheduleError as e:
        raise ValueError(f"expected a cron spec such as '0 */12 * * *': {e}") from None
    return text


def _cidrs(value: object) -> str:
    text = _text(value)
    try:
        for part in text.split(","):
            ipaddress.ip_network(part.strip(), strict=False)
    except ValueError:
        raise ValueError("expected a network in CIDR form such as 10.42.0.0/16") from None
    return text


def _port_range(value: object) -> str:
    text = _text(value).strip()
    low, dash, high = text.partition("-")
    try:
        first, last = int(low), int(high)
    except ValueError:
        raise ValueError("expected a port range such as 30000-32767") from None
    if not dash or not 1 <= first <= last <= 65535:
        raise ValueError("expected a port range such as 30000-32767") from None
    return text


def _runtime(value: object) -> str:
    text = _text(value).strip()
    if text not in ("containerd", "none"):
        raise ValueError("expected containerd or none")
    return text


def _flannel_backend(value: object) -> str:
    text = _text(value).strip()
    if text not in ("none", "vxlan", "host-gw", "wireguard-native"):
        raise ValueError("expected one of 'none', 'vxlan', 'host-gw', 'wireguard-native'")
    return text


def _encryption_provider(value: object) -> str:
    text = _text(value).strip()
    if text not in ("aescbc", "secretbox"):
        raise ValueError("expected one of 'aescbc', 'secretbox'")
    return text


def _runtime_endpoint(value: object) -> str:
    text = _text(value).strip()
    if not (text.startswith("/") or text.startswith("unix:///")):
        raise ValueError("expected a CRI socket: unix:///path/to/socket or /path/to/socket")
    return text


def _path(value: object) -> str:
    text = _text(value)
    if not text:
        raise ValueError("expected a path")
    return os.path.expanduser(text)


@dataclass(frozen=True)
class Flag:
    """
    One k3s flag.

    :ivar name: the long flag name, which is also the config file key.
    :ivar parse: turns one user-written value into the typed value.
    :ivar repeatable: the flag may be given several times (a list in YAML,
        comma-separated values in one argument or an environment variable).
    :ivar switch: a flag without an argument (``--cluster-init``).
    """

    name: str
    help: str
    parse: Callable[[object], Any] = _text
    short: str | None = None
    env: str | None = None
    default: Any = None
    repeatable: bool = False
    switch: bool = False


def switch(name: str, help: str, env: str | None = None) -> Flag:
    """A boolean flag that takes no argument on the command line."""
    return Flag(name, help, _boolean, env=env, default=False, switch=True)


def repeatable(
    name: str, help: str, parse: Callable[[object], Any] = _text, short: str | None = None
) -> Flag:
    """A flag that may be given several times; its value is a list."""
    return Flag(name, help, parse, short=short, default=(), repeatable=True)


CONFIG = Flag(
    "config",
    "Load configuration from FILE",
    _path,
    short="c",
    env="K3S_CONFIG_FILE",
    default=DEFAULT_CONFIG_FILE,
)
DEBUG = switch("debug", "Turn on debug logs", env="K3S_DEBUG")
DATA_DIR = Flag(
    "data-dir",
    "Folder to hold state (default: /var/lib/rancher/k3s, or ~/.rancher/k3s if not root)",
    _path,
    short="d",
    env="K3S_DATA_DIR",
)
TOKEN = Flag(
    "token", "Shared secret used to join a server or agent to a cluster", short="t", env="K3S_TOKEN"
)
TOKEN_FILE = Flag("token-file", "File containing the token", _path, env="K3S_TOKEN_FILE")
#: ``--cluster-dns`` in k3s's default service CIDR (else that CIDR's tenth address).
CLUSTER_DNS_DEFAULT = "10.43.0.10"
NODE_NAME = Flag("node-name", "Node name", env="K3S_NODE_NAME")
WITH_NODE_ID = switch("with-node-id", "Append id to node name")
NODE_IP = repeatable("node-ip", "IPv4/IPv6 addresses to advertise for node", _ip_address, short="i")
NODE_EXTERNAL_IP = repeatable(
    "node-external-ip", "IPv4/IPv6 external IP addresses to advertise for node", _ip_address
)
FLANNEL_IFACE = Flag("flannel-iface", "Override default flannel interface")
NODE_LABEL = repeatable("node-label", "Registering and starting kubelet with set of labels")
NODE_TAINT = repeatable("node-taint", "Registering kubelet with set of taints")
KUBELET_ARG = repeatable(
    "kubelet-arg",
    "Customized flag for kubelet process (k3stw honours port, cgroup-root, "
    "container-log-max-size, container-log-max-files)",
)
KUBE_PROXY_ARG = repeatable(
    "kube-proxy-arg",
    "Customized flag for kube-proxy process (k3stw honours proxy-mode: iptables, nftables)",
)
CONTAINER_RUNTIME = Flag(
    "container-runtime",
    "(k3stw) Run containerd as k3s does (containerd, the default), or no container runtime "
    "(none: nodes register but run no pods); --container-runtime-endpoint implies a runtime",
    _runtime,
    env="K3S_CONTAINER_RUNTIME",
    default="containerd",
)
CONTAINER_RUNTIME_ENDPOINT = Flag(
    "container-runtime-endpoint",
    "Disable embedded containerd and use the CRI socket at the given path",
    _runtime_endpoint,
)
PAUSE_IMAGE = Flag(
    "pause-image",
    "Customized pause image for containerd sandbox",
    default="rancher/mirrored-pause:3.6",
)
PRIVATE_REGISTRY = Flag(
    "private-registry",
    "Private registry configuration file",
    _path,
    default="/etc/rancher/k3s/registries.yaml",
)
NODE_IDENTITY_DIR = Flag(
    "node-identity-dir",
    "Folder of the node's password and id files (k3stw; several agents on one host need one "
    "each) (default: /etc/rancher/node, or <data-dir>/agent/etc/rancher/node if not root)",
    _path,
    env="K3S_NODE_IDENTITY_DIR",
)

#: Flags that both roles accept (a k3s server also runs an agent).
NODE_FLAGS: tuple[Flag, ...] = (
    CONFIG,
    DEBUG,
    DATA_DIR,
    TOKEN,
    TOKEN_FILE,
    NODE_NAME,
    WITH_NODE_ID,
    NODE_IP,
    NODE_EXTERNAL_IP,
    FLANNEL_IFACE,
    NODE_LABEL,
    NODE_TAINT,
    KUBELET_ARG,
    KUBE_PROXY_ARG,
    NODE_IDENTITY_DIR,
    CONTAINER_RUNTIME,
    CONTAINER_RUNTIME_ENDPOINT,
    PAUSE_IMAGE,
    PRIVATE_REGISTRY,
)

SERVER_FLAGS: tuple[Flag, ...] = (
    *NODE_FLAGS,
    Flag(
        "server",
        "Server to connect to, used to join a cluster",
        _https_url,
        short="s",
        env="K3S_URL",
    ),
    Flag(
        "agent-token",
        "Shared secret used to join agents to the cluster, but not servers",
        env="K3S_AGENT_TOKEN",
    ),
    Flag("agent-token-file", "File containing the agent secret", _path, env="K3S_AGENT_TOKEN_FILE"),
    switch("cluster-init", "Initialize a new cluster using embedded Etcd", env="K3S_CLUSTER_INIT"),
    switch(
        "cluster-reset",
        "Forget all peers and become sole member of a new cluster",
        env="K3S_CLUSTER_RESET",
    ),
    Flag("cluster-reset-restore-path", "Path to snapshot file to be restored", _path),
    repeatable("etcd-arg", "Customized flag for etcd process"),
    switch("etcd-expose-metrics", "Expose etcd metrics to client interface"),
    switch("etcd-disable-snapshots", "Disable automatic etcd snapshots"),
    Flag("etcd-snapshot-name", "Set the base name of etcd snapshots", default="etcd-snapshot"),
    Flag(
        "etcd-snapshot-schedule-cron",
        "Snapshot interval time in cron spec. eg. every 5 hours '0 */5 * * *'",
        _cron,
        default="0 */12 * * *",
    ),
    Flag(
        "etcd-snapshot-retention",
        "Number of snapshots to retain",
        _integer,
        default=5,
    ),
    Flag(
        "etcd-snapshot-dir",
        "Directory to save db snapshots (default: ${data-dir}/server/db/snapshots)",
        _path,
    ),
    switch("etcd-snapshot-compress", "Compress etcd snapshot"),
    Flag(
        "datastore-endpoint",
        "Specify etcd, MySQL, Postgres, or SQLite (default) data source name",
        env="K3S_DATASTORE_ENDPOINT",
    ),
    Flag(
        "datastore-cafile",
        "TLS Certificate Authority file used to secure datastore backend communication",
        _path,
        env="K3S_DATASTORE_CAFILE",
    ),
    Flag(
        "datastore-certfile",
        "TLS certification file used to secure datastore backend communication",
        _path,
        env="K3S_DATASTORE_CERTFILE",
    ),
    Flag(
        "datastore-keyfile",
        "TLS key file used to secure datastore backend communication",
        _path,
        env="K3S_DATASTORE_KEYFILE",
    ),
    Flag("bind-address", "k3s bind address", _ip_address, default="0.0.0.0"),
    Flag("https-listen-port", "HTTPS listen port", _port, default=6443),
    Flag(
        "advertise-address",
        "IPv4/IPv6 address that apiserver uses to advertise to members "
        "of the cluster (default: node-external-ip/node-ip)",
        _ip_address,
    ),
    Flag(
        "advertise-port",
        "Port that apiserver uses to advertise to members of the cluster (default: listen-port)",
        _port,
    ),
    repeatable(
        "tls-san",
        "Add additional hostnames or IPv4/IPv6 addresses as Subject "
        "Alternative Names on the server TLS cert",
    ),
    Flag(
        "write-kubeconfig",
        "Write kubeconfig for admin client to this file (default: "
        "/etc/rancher/k3s/k3s.yaml as root)",
        _path,
        short="o",
        env="K3S_KUBECONFIG_OUTPUT",
    ),
    Flag(
        "write-kubeconfig-mode",
        "Write kubeconfig with this mode",
        _file_mode,
        env="K3S_KUBECONFIG_MODE",
        default=0o600,
    ),
    switch("disable-agent", "Do not run a local agent and register a local kubelet"),
    repeatable(
        "disable",
        "Do not deploy packaged components and delete any deployed components (valid "
        "items: coredns, servicelb, traefik, local-storage, metrics-server, runtimes; "
        "k3stw deploys coredns, servicelb, traefik and local-storage)",
    ),
    switch("disable-kube-proxy", "Disable running kube-proxy"),
    switch("disable-network-policy", "Disable K3s default network policy controller"),
    switch("secrets-encryption", "Enable secret encryption at rest"),
    Flag(
        "secrets-encryption-provider",
        "Encryption provider to use (valid values: 'aescbc', 'secretbox')",
        _encryption_provider,
        default="aescbc",
    ),
    Flag(
        "default-local-storage-path",
        "Default local storage path for local provisioner storage class",
        _path,
    ),
    Flag(
        "cluster-cidr", "IPv4/IPv6 network CIDRs to use for pod IPs", _cidrs, default="10.42.0.0/16"
    ),
    Flag(
        "flannel-backend",
        "Backend (valid values: 'none', 'vxlan', 'host-gw', 'wireguard-native'); k3stw writes "
        "a bridge CNI config and routes pods between nodes unless none",
        _flannel_backend,
        default="vxlan",
    ),
    Flag(
        "service-cidr",
        "IPv4/IPv6 network CIDRs to use for service IPs",
        _cidrs,
        default="10.43.0.0/16",
    ),
    Flag(
        "service-node-port-range",
        "Port range to reserve for services with NodePort visibility",
        _port_range,
        default="30000-32767",
    ),
    Flag(
        "cluster-dns",
        "IPv4 Cluster IP for coredns service",
        _ip_address,
        default=CLUSTER_DNS_DEFAULT,
    ),
    Flag("cluster-domain", "Cluster Domain", default="cluster.local"),
    switch(
        "unchecked-api",
        "Serve the API without validation, defaulting and authorization, so that any "
        "authenticated user may store anything: only to measure what they cost, never "
        "on a cluster in use (k3stw)",
    ),
    Flag(
        "node-monitor-grace-period",
        "Seconds without a node Lease renewal before the node is "
        "marked Ready=Unknown (kube-controller-manager's flag)",
        _seconds,
        default=40.0,
    ),
    Flag(
        "node-cidr-mask-size",
        "Mask size for node cidr in cluster. Default is 24 for IPv4 and 64 for IPv6 "
        "(kube-controller-manager's flag)",
        _integer,
    ),
)

AGENT_FLAGS: tuple[Flag, ...] = (
    *NODE_FLAGS,
    Flag("server", "Server to connect to", _https_url, short="s", env="K3S_URL"),
    Flag(
        "lb-server-port",
        "Local port for supervisor client load-balancer. If the supervisor "
        "and apiserver are not colocated an additional port 1 less than this port will also be "
        "used for the apiserver client load-balancer.",
        _port,
        env="K3S_LB_SERVER_PORT",
        default=6444,
    ),
    Flag(
        "lb-status-port",
        "Loopback port of a read-only page of the load balancer's servers (GET /) and its "
        "Prometheus metrics (GET /metrics); 0 disables it (k3stw)",
        _optional_port,
        default=0,
    ),
)


#: ``--help``'s groups, in k3s's order, each flag tagged with its group as k3s's help does.
HELP_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("config", ("config",)),
    ("logging", ("debug",)),
    (
        "listener",
        ("bind-address", "advertise-address", "advertise-port", "https-listen-port", "tls-san"),
    ),
    ("data", ("data-dir",)),
    (
        "networking",
        (
            "cluster-cidr",
            "service-cidr",
            "service-node-port-range",
            "cluster-dns",
            "cluster-domain",
            "flannel-backend",
        ),
    ),
    ("client", ("write-kubeconfig", "write-kubeconfig-mode")),
    (
        "cluster",
        ("token", "token-file", "agent-token", "agent-token-file", "server", "cluster-init"),
    ),
    (
        "db",
        (
            "cluster-reset",
            "cluster-reset-restore-path",
            "etcd-arg",
            "etcd-expose-metrics",
            "etcd-disable-snapshots",
            "etcd-snapshot-name",
            "etcd-snapshot-schedule-cron",
            "etcd-snapshot-retention",
            "etcd-snapshot-dir",
            "etcd-snapshot-compress",
            "datastore-endpoint",
            "datastore-cafile",
            "datastore-certfile",
            "datastore-keyfile",
        ),
    ),
    ("controller", ("node-monitor-grace-period", "node-cidr-mask-size")),
    (
        "experimental",
        ("unchecked-api", "secrets-encryption", "secrets-encryption-provider"),
    ),
    ("storage", ("default-local-storage-path",)),
    (
        "components",
        ("disable", "disable-agent", "disable-kube-proxy", "disable-network-policy"),
    ),
    (
        "agent/node",
        ("node-name", "with-node-id", "node-label", "node-taint", "node-identity-dir"),
    ),
    (
        "agent/networking",
        ("node-ip", "node-external-ip", "flannel-iface", "lb-server-port", "lb-status-port"),
    ),
    (
        "agent/runtime",
        ("container-runtime", "container-runtime-endpoint", "pause-image", "private-registry"),
    ),
    ("agent/flags", ("kubelet-arg", "kube-proxy-arg")),
)


def help_text(flags: Iterable[Flag], width: int = 100) -> str:
    """
    The flags as k3s's ``--help`` lists them: grouped, each with its group,
    its default and its variable (``[$K3S_TOKEN]``).
    """
    by_name = {flag.name: flag for flag in flags}
    lines: list[str] = []
    for group, names in HELP_GROUPS:
        for name in names:
            flag = by_name.get(name)
            if flag is None:
                continue
            form = f"--{name}" + ("" if flag.switch else " value")
            if flag.short:
                form += f", -{flag.short}" + ("" if flag.switch else " value")
            text = f"({group}) {flag.help}"
            if flag.repeatable:
                text += " (repeatable)"
            if flag.default not in (None, (), False) and "default" not in flag.help:
                shown = oct(flag.default)[2:].zfill(4) if name.endswith("-mode") else flag.default
                text += (
                    f' (default: "{shown}")' if isinstance(shown, str) else f" (default: {shown:g})"
                )
            if flag.env:
                text += f" [${flag.env}]"
            lines += _hanging(form, text, width)
    lines += _hanging("--help", "Display this help and exit.", width)
    return "\n".join(lines) + "\n"


def _hanging(form: str, text: str, width: int, column: int = 40) -> list[str]:
    import textwrap

    wrapped = textwrap.wrap(text, max(width - column, 30))
    first = f"   {form}".ljust(column)
    if len(first) > column:
        return [first.rstrip(), *(" " * column + line for line in wrapped)]
    return [first + wrapped[0], *(" " * column + line for line in wrapped[1:])]


def _config_files(main: Path) -> list[Path]:
    """The config file and its ``config.yaml.d`` drop-ins, in the order they apply."""
    dropins = main.parent / (main.name + ".d")
    found = [main] if main.exists() else []
    if dropins.is_dir():
        found += sorted(p for p in dropins.iterdir() if p.suffix in (".yaml", ".yml"))
    return found


def _parse_config(text: str, path: Path) -> object:
    """
    A config file's YAML, without implicit numbers: ``0644`` stays the text a
    file mode needs (YAML 1.1 would read it as 420) and every value is parsed
    by its flag.  PyYAML (a megabyte of memory) loads only for a file that
    says something.
    """
    if not text.strip():
        return None
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        pass

    ConfigLoader.yaml_implicit_resolvers = {
        first: [(tag, regex) for tag, regex in resolvers if not tag.endswith((":int", ":float"))]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigurationError(f"config file {path} is not valid YAML{line}") from None


def load_config_file(path: Path, required: bool) -> dict[str, tuple[object, str]]:
    """
    Read a k3s config file and its drop-ins.

    :param required: the user named the file, so it must exist.
    :return: each key with its value and the file it came from; a later
        drop-in replaces what an earlier file said.
    :raises ConfigurationError: the file is missing (when required),
        unreadable, not YAML, or not a mapping of flag names.
    """
    if required and not path.exists():
        raise ConfigurationError(f"config file {path} does not exist")
    merged: dict[str, tuple[object, str]] = {}
    for each in _config_files(path):
        try:
            text = each.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigurationError(f"cannot read config file {each}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigurationError(f"config file {each} is not valid YAML") from None
        document = _parse_config(text, each)
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ConfigurationError(
                f"config file {each} must be a mapping of flag names to values"
            )
        for key, value in document.items():
            merged[str(key)] = (value, str(each))
    return merged


class K3sOptions(usage.Options):
    """
    Options built from a table of L{Flag}s, resolved with k3s's precedence.

    After parsing, ``self[name]`` holds the typed value of each flag and
    ``self.sources[name]`` says where it came from.  Subclasses set
    C{flags}, C{command} and C{other_role_flags} (keys of the other role, which
    a shared config file may hold and which are ignored, not errors).
    """

    optFlags: ClassVar[list[list[str | None]]] = []
    optParameters: ClassVar[list[list[str | None]]] = []
    flags: ClassVar[tuple[Flag, ...]] = ()
    other_role_flags: ClassVar[tuple[Flag, ...]] = ()
    command: ClassVar[str] = "k3s"
    #: ``--help``'s first line, k3s's words for the role.
    summary: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # usage.Options finds parameters in optFlags/optParameters and opt_* methods;
        # repeatable flags need a method so that each occurrence appends.
        cls.optFlags = [[f.name, f.short, f.help] for f in cls.flags if f.switch]
        cls.optParameters = [
            [f.name, f.short, None, f.help] for f in cls.flags if not f.switch and not f.repeatable
        ]
        for flag in cls.flags:
            if flag.repeatable:
                method = _appender(flag)
                setattr(cls, "opt_" + flag.name.replace("-", "_"), method)
                if flag.short:
                    setattr(cls, "opt_" + flag.short, method)

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self.given_lists: dict[str, list[str]] = {}
        self.sources: dict[str, str] = {}
        self.ignored_keys: list[str] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse, then turn any usage error into one line and a non-zero exit."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"{self.command}: {e}") from None

    def postOptions(self) -> None:
        cli = {f.name: self._from_command_line(f) for f in self.flags}
        config_path = cli["config"] or self.environ.get("K3S_CONFIG_FILE")
        explicit = config_path is not None
        path = Path(os.path.expanduser(config_path or DEFAULT_CONFIG_FILE))
        file_values = load_config_file(path, required=explicit)
        self._check_keys(file_values)
        for flag in self.flags:
            value, source = self._resolve(flag, cli[flag.name], file_values)
            self[flag.name] = value
            self.sources[flag.name] = source
        self.apply_defaults()
        self.check_required()
        parent = getattr(self, "parent", None)
        if parent is not None:
            self.twistd_defaults(parent)

    def twistd_defaults(self, twistd: usage.Options) -> None:
        """
        Settle twistd's own options that k3s users should not have to know:

        - the pidfile, unless ``--pidfile`` was given, is ``<data-dir>/k3stw.pid``
          (twistd's default, ``twistd.pid`` in the working directory, made a
          second server in the same directory fail and left two servers on one
          data dir free to corrupt it);
        - under systemd, when the output goes to the journal, lines carry the
          journal's priority prefix and no timestamp of their own.

        :raises ConfigurationError: the data dir cannot be created, or another
            live k3stw process holds it.
        """
        if twistd.get("pidfile") == DEFAULT_TWISTD_PIDFILE:
            data_dir = Path(self["data-dir"])
            try:
                data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigurationError(
                    f"cannot create --data-dir {data_dir}: {e.strerror}; run as root or "
                    "choose a --data-dir you can write"
                ) from None
            pidfile = data_dir / PIDFILE
            holder = _live_pid(pidfile)
            if holder is not None:
                raise ConfigurationError(
                    f"data dir {data_dir} is in use by another k3stw process (PID {holder}): "
                    "stop it, or give this one its own --data-dir (a server and an agent on "
                    "one host need one each)"
                )
            twistd["pidfile"] = str(pidfile)
        if twistd.get("logger") is None and not twistd.get("logfile") and _journal_is_stdout():
            twistd["logger"] = "k3stw.logs.journal_observer"

    def _from_command_line(self, flag: Flag) -> Any:
        if flag.repeatable:
            return self.given_lists.get(flag.name) or None
        given = self.get(flag.name)
        if flag.switch:
            return True if given else None
        return given

    def _check_keys(self, file_values: Mapping[str, tuple[object, str]]) -> None:
        mine = {f.name for f in self.flags}
        theirs = {f.name for f in self.other_role_flags}
        for key, (_, where) in file_values.items():
            if key in mine:
                continue
            if key in theirs:
                self.ignored_keys.append(key)
                continue
            raise ConfigurationError(
                f"unknown key {key!r} in config file {where}: {self.command} has no flag --{key}"
            )

    def _resolve(
        self, flag: Flag, given: Any, file_values: Mapping[str, tuple[object, str]]
    ) -> tuple[Any, str]:
        if given is not None:
            return self._parse(flag, given, "the command line"), "command line"
        if flag.env and flag.env in self.environ:
            return self._parse(flag, self.environ[flag.env], flag.env), flag.env
        if flag.name in file_values:
            value, where = file_values[flag.name]
            return self._parse(flag, value, where), where
        return flag.default, "default"

    def _parse(self, flag: Flag, raw: object, where: str) -> Any:
        values: Iterable[object]
        if flag.repeatable:
            values = _split_list(raw)
        elif isinstance(raw, list | dict):
            raise ConfigurationError(
                f"invalid value for --{flag.name} in {where}: expected a single value, not a "
                f"{'list' if isinstance(raw, list) else 'mapping'}"
            )
        else:
            values = [raw]
        parsed = []
        for value in values:
            try:
                parsed.append(flag.parse(value))
            except ValueError as e:
                raise ConfigurationError(
                    f"invalid value {_show(value)} for --{flag.name} in {where}: {e}"
                ) from None
        return tuple(parsed) if flag.repeatable else parsed[0]

    def apply_defaults(self) -> None:
        """Fill defaults that depend on other flags or on the user running us."""
        if self["data-dir"] is None:
            self["data-dir"] = default_data_dir()
        if self["node-identity-dir"] is None:
            # k3s's rootless mode keeps the node's password under the data dir.
            self["node-identity-dir"] = (
                ROOT_NODE_IDENTITY_DIR
                if os.geteuid() == 0
                else os.path.join(self["data-dir"], "agent", "etc", "rancher", "node")
            )

    def check_required(self) -> None:
        """Fail when a value this role cannot run without is missing."""

    def token(self, flag: str = "token") -> Token | None:
        """
        The token from ``--token``, else from the file ``--token-file`` names
        (likewise ``agent-token``), parsed.

        :raises ConfigurationError: the token is malformed, or its file cannot
            be read or is empty.
        """
        text = self[flag]
        if not text and self[f"{flag}-file"]:
            path = self[f"{flag}-file"]
            try:
                text = Path(path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                reason = getattr(e, "strerror", None) or "not text"
                raise ConfigurationError(f"cannot read --{flag}-file {path}: {reason}") from None
            if not text:
                raise ConfigurationError(f"--{flag}-file {path} is empty")
        if not text:
            return None
        try:
            return parse_token(text)
        except InvalidToken as e:
            raise ConfigurationError(f"invalid --{flag}: {e}") from None

    def node_settings(self) -> NodeSettings:
        """
        The node flags both roles share, validated as the kubelet validates them.

        :raises ConfigurationError: a ``--node-label`` or ``--node-taint`` the
            kubelet would refuse.
        """
        from k3stw.agent.service import NodeSettings
        from k3stw.kubelet import hostinfo
        from k3stw.kubelet.config import (
            NodeFlagError,
            parse_kubelet_args,
            parse_node_labels,
            parse_node_taints,
        )
        from k3stw.kubelet.containerd import RuntimeSettings
        from k3stw.kubelet.registries import Registries, RegistriesError, load_registries
        from k3stw.network.node import KubeProxyArgError, proxy_mode

        try:
            labels = parse_node_labels(self["node-label"])
            taints = parse_node_taints(self["node-taint"])
            kubelet_args = parse_kubelet_args(self["kubelet-arg"])
            mode = proxy_mode(self["kube-proxy-arg"])
        except (NodeFlagError, KubeProxyArgError) as e:
            raise ConfigurationError(str(e)) from None
        with_runtime = self["container-runtime"] == "containerd" or bool(
            self["container-runtime-endpoint"]
        )
        registries = Registries()
        if with_runtime:
            try:
                registries = load_registries(Path(self["private-registry"]))
            except RegistriesError as e:
                raise ConfigurationError(f"invalid --private-registry: {e}") from None
        return NodeSettings(
            data_dir=Path(self["data-dir"]),
            identity_dir=Path(self["node-identity-dir"]),
            node_name=(self["node-name"] or hostinfo.hostname()).lower(),
            with_node_id=self["with-node-id"],
            node_ips=self["node-ip"] or (hostinfo.primary_address(),),
            node_external_ips=self["node-external-ip"],
            node_labels=labels,
            node_taints=taints,
            kubelet_args=kubelet_args,
            flannel_iface=self["flannel-iface"],
            proxy_mode=mode,
            runtime=(
                RuntimeSettings(
                    self["container-runtime-endpoint"] or "",
                    self["pause-image"],
                    # A server's flag; agents write the config (k3stw's agents are not told).
                    cni=self.get("flannel-backend") != "none",
                    registries=registries,
                )
                if with_runtime
                else None
            ),
        )

    def getSynopsis(self) -> str:
        return f"Usage: twistd [options] {self.command} [{self.command} options]"

    def getUsage(self, width: int | None = None) -> str:
        return (
            f"{self.summary}. Flags, K3S_* variables and config.yaml keys are k3s's; "
            f"twistd's own options (--pidfile, --logfile) go before {self.command}.\n\n"
            + help_text(self.flags, width or 100)
        )


def _appender(flag: Flag) -> Callable[[K3sOptions, str], None]:
    def append(self: K3sOptions, value: str) -> None:
        self.given_lists.setdefault(flag.name, []).append(value)

    append.__doc__ = flag.help + " (repeatable)"
    return append


def _split_list(raw: object) -> list[object]:
    # k3s accepts a YAML list, repeated flags, or comma-separated values.
    items = raw if isinstance(raw, list | tuple) else [raw]
    out: list[object] = []
    for item in items:
        if isinstance(item, str):
            out.extend(part.strip() for part in item.split(",") if part.strip())
        else:
            out.append(item)
    return out


def _show(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


#: twistd's own default ``--pidfile``, which means the user gave none.
DEFAULT_TWISTD_PIDFILE = "twistd.pid"
#: The pidfile in the data dir: one k3stw process per data dir.
PIDFILE = "k3stw.pid"


def _live_pid(pidfile: Path) -> int | None:
    """The process id in C{pidfile}, if that process is alive (twistd removes stale ones)."""
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _journal_is_stdout() -> bool:
    """Whether systemd connected our standard output to the journal (``JOURNAL_STREAM``)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        status = os.fstat(1)
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def default_data_dir() -> str:
    """k3s's default: ``/var/lib/rancher/k3s`` for root, ``~/.rancher/k3s`` otherwise."""
    if os.geteuid() == 0:
        return "/var/lib/rancher/k3s"
    return os.path.expanduser("~/.rancher/k3s")
